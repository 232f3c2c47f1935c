use ring::digest;

use crate::MailboxId;

/// One of the fixed number of shards that mailboxes hash onto.
///
/// The shard count is fixed for the life of a cluster's data: envelope ids are delivery-log
/// offsets within a shard, so re-sharding would need a data migration.
pub type ShardId = u32;

/// The shard that holds `mailbox`, out of `shards`.
///
/// Account keys are uniformly random already, but anyone can grind keys; hashing first means
/// the public key's own bytes do not choose the shard directly.
///
/// # Panics
/// If `shards` is zero (a configuration error caught at start-up).
pub fn shard_of(mailbox: &MailboxId, shards: u32) -> ShardId {
    assert!(shards > 0, "the shard count is validated at start-up");
    let hash = digest::digest(&digest::SHA256, mailbox.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    (u64::from_be_bytes(first) % u64::from(shards)) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_in_range() {
        let a = MailboxId([7; 32]);
        assert_eq!(shard_of(&a, 256), shard_of(&a, 256));
        for i in 0..=255u8 {
            assert!(shard_of(&MailboxId([i; 32]), 16) < 16);
        }
    }
}
