//! Accounts this node has seen exist.
//!
//! Accounts are never deleted, so once the store said a mailbox exists, that stays true.
//! Remembering it takes one store read off every send, and lets sends to recipients already
//! seen go on while the mailbox store stalls: the delivery log buffers them until it is back.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use levee_sharding::MailboxId;

/// Most accounts remembered (32 bytes each plus the table's overhead: a few tens of MB).
/// Past it the set starts again empty: simpler than an LRU, and a miss only costs a read.
const CAPACITY: usize = 500_000;

/// See the module docs.
#[derive(Default)]
pub(crate) struct KnownAccounts {
    set: Mutex<HashSet<MailboxId>>,
}

impl KnownAccounts {
    fn lock(&self) -> MutexGuard<'_, HashSet<MailboxId>> {
        // A set of ids; a panic elsewhere cannot leave it inconsistent.
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `mailbox` is known to exist.
    pub fn contains(&self, mailbox: &MailboxId) -> bool {
        self.lock().contains(mailbox)
    }

    /// Remembers that `mailbox` exists.
    pub fn insert(&self, mailbox: MailboxId) {
        let mut set = self.lock();
        if set.len() >= CAPACITY {
            set.clear();
        }
        set.insert(mailbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_what_it_was_told_and_starts_over_when_full() {
        let known = KnownAccounts::default();
        assert!(!known.contains(&MailboxId([1; 32])));
        known.insert(MailboxId([1; 32]));
        assert!(known.contains(&MailboxId([1; 32])));
        for i in 0..CAPACITY as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id[4] = 9;
            known.insert(MailboxId(id));
        }
        assert!(!known.contains(&MailboxId([1; 32])), "forgotten when full");
        assert!(known.lock().len() <= CAPACITY);
    }
}
