//! Mailbox quotas on the send path without a store read per send.
//!
//! A quota check used to read the recipient's usage from the store on every send. With the
//! CQL store that is an aggregate over the recipient's live envelopes, one per envelope, and
//! a large share of what the database did per envelope. The node now keeps each recipient's
//! last reading for [`FRESH_FOR`] and adds every envelope it accepts for it since; a send
//! the reading says fits goes ahead without a read. Only a stale reading, or one that says
//! the mailbox is (nearly) full, asks the store again — so a refusal is always the store's
//! own answer, never an old one: a drained mailbox takes sends again at once.
//!
//! One send at a time asks when a reading grows stale; the others go on by the old reading
//! until the answer comes (or for another [`FRESH_FOR`], should the asking send be dropped
//! mid-read). Without that, every send that found the reading stale asked too, and the
//! sends in flight to a busy recipient asked all at once each second.
//!
//! A store that does not answer in time (or fails) is not asked about that recipient again
//! for [`FRESH_FOR`]: its sends go ahead unenforced meanwhile, as the one that timed out
//! did. That is a safeguard, not a measured gain: a read that times out still runs to the
//! end in the database, so asking again on every send would add load to a store already
//! too slow (in the distributed runs the repeated reads turned out to come from stale
//! readings, fixed above, not from timeouts; docs/PERFORMANCE-LOG.md).
//!
//! Quotas were already approximate (envelopes on their way through the log are not stored
//! yet); what this adds is bounded: envelopes accepted by *other* nodes for the same
//! recipient within one reading's lifetime are not counted here.
//!
//! Pure bookkeeping: the caller reads the store and passes the clock in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use levee_sharding::{MailboxId, MailboxUsage};

/// How long a reading of a mailbox's usage is trusted, with what this node accepted since.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);
/// Most recipients remembered; beyond it, stale readings go, then (if all are fresh) all.
const CAPACITY: usize = 65_536;

/// A mailbox's limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_envelopes: u64,
    pub max_bytes: u64,
}

impl Limits {
    /// Whether one more envelope of `bytes` fits beside `usage`.
    pub fn fits(&self, usage: MailboxUsage, bytes: u64) -> bool {
        usage.envelopes < self.max_envelopes && usage.bytes.saturating_add(bytes) <= self.max_bytes
    }
}

/// What the node knows of a recipient's usage, and since when.
struct Reading {
    /// `None`: the store was asked and did not answer.
    usage: Option<MailboxUsage>,
    read_at: Instant,
    /// When a send found this reading stale and went to ask the store.
    asked_at: Option<Instant>,
}

/// Each recent recipient's usage: the store's last answer plus what this node accepted since.
pub(crate) struct QuotaBook {
    limits: Limits,
    readings: Mutex<HashMap<MailboxId, Reading>>,
}

impl QuotaBook {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            readings: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MailboxId, Reading>> {
        // A panic elsewhere while holding the lock leaves only counts behind: still usable.
        self.readings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes an envelope of `bytes` for `mailbox` if a fresh reading says it fits (counting
    /// it) or the store recently failed to answer; `false` means "ask the store" (no
    /// reading, a stale one, or one that is full).
    pub fn take(&self, mailbox: &MailboxId, bytes: u64, now: Instant) -> bool {
        let mut readings = self.lock();
        let Some(r) = readings.get_mut(mailbox) else {
            return false;
        };
        if now.saturating_duration_since(r.read_at) >= FRESH_FOR {
            let asking = r
                .asked_at
                .is_some_and(|asked| now.saturating_duration_since(asked) < FRESH_FOR);
            if !asking {
                r.asked_at = Some(now);
                return false;
            }
        }
        match &mut r.usage {
            None => true,
            Some(usage) if self.limits.fits(*usage, bytes) => {
                usage.envelopes += 1;
                usage.bytes = usage.bytes.saturating_add(bytes);
                true
            }
            Some(_) => false,
        }
    }

    /// Records the store's answer for `mailbox` read at `now`, and whether an envelope of
    /// `bytes` fits beside it (counted if so).
    pub fn read(&self, mailbox: MailboxId, usage: MailboxUsage, bytes: u64, now: Instant) -> bool {
        let fits = self.limits.fits(usage, bytes);
        let mut usage = usage;
        if fits {
            usage.envelopes += 1;
            usage.bytes = usage.bytes.saturating_add(bytes);
        }
        self.remember(mailbox, Some(usage), now);
        fits
    }

    /// Records that the store did not answer for `mailbox` at `now` (too slow, or failed):
    /// its sends go ahead unenforced until the store is asked again, [`FRESH_FOR`] later.
    pub fn unanswered(&self, mailbox: MailboxId, now: Instant) {
        self.remember(mailbox, None, now);
    }

    fn remember(&self, mailbox: MailboxId, usage: Option<MailboxUsage>, now: Instant) {
        let mut readings = self.lock();
        if readings.len() >= CAPACITY && !readings.contains_key(&mailbox) {
            readings.retain(|_, r| now.saturating_duration_since(r.read_at) < FRESH_FOR);
            if readings.len() >= CAPACITY {
                readings.clear();
            }
        }
        readings.insert(
            mailbox,
            Reading {
                usage,
                read_at: now,
                asked_at: None,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_envelopes: 3,
        max_bytes: 1_000,
    };

    fn usage(envelopes: u64, bytes: u64) -> MailboxUsage {
        MailboxUsage { envelopes, bytes }
    }

    #[test]
    fn a_fresh_reading_answers_and_counts_what_it_lets_through() {
        let book = QuotaBook::new(LIMITS);
        let a = MailboxId([1; 32]);
        let t = Instant::now();
        // Nothing known: ask.
        assert!(!book.take(&a, 10, t));
        assert!(book.read(a, usage(0, 0), 10, t));
        // Counted: 1 after the reading's own, then 2, then the mailbox is full by the count.
        assert!(book.take(&a, 10, t));
        assert!(book.take(&a, 10, t));
        assert!(!book.take(&a, 10, t), "three counted: ask the store");
    }

    #[test]
    fn a_full_or_stale_reading_asks_the_store_again_and_only_the_store_refuses() {
        let book = QuotaBook::new(LIMITS);
        let a = MailboxId([1; 32]);
        let t = Instant::now();
        assert!(!book.read(a, usage(3, 30), 10, t), "the store says full");
        assert!(!book.take(&a, 10, t), "a full reading is never the answer");
        // Drained meanwhile: the store's new answer lets it through at once.
        assert!(book.read(a, usage(0, 0), 10, t));
        // Bytes count too.
        assert!(!book.take(&a, 995, t));
        // Stale: one send asks, however much room it showed; the others go on by the
        // old reading meanwhile, for as long as an answer may take.
        assert!(!book.take(&a, 10, t + FRESH_FOR));
        assert!(book.take(&a, 1, t + FRESH_FOR));
        assert!(book.take(&a, 1, t + FRESH_FOR * 2 - Duration::from_millis(1)));
        assert!(
            !book.take(&a, 1, t + FRESH_FOR * 2),
            "no answer came: ask again"
        );
        assert!(book.read(a, usage(1, 10), 1, t + FRESH_FOR * 2));
        assert!(book.take(&a, 1, t + FRESH_FOR * 2));
    }

    #[test]
    fn a_store_that_did_not_answer_is_not_asked_again_until_the_reading_would_be_stale() {
        let book = QuotaBook::new(LIMITS);
        let a = MailboxId([1; 32]);
        let t = Instant::now();
        book.unanswered(a, t);
        // Unenforced meanwhile, however many: the store could not say.
        for _ in 0..10 {
            assert!(book.take(&a, 10, t + FRESH_FOR / 2));
        }
        assert!(!book.take(&a, 10, t + FRESH_FOR), "then asked again");
        assert!(book.take(&a, 10, t + FRESH_FOR), "by one send");
        // An answer replaces it.
        assert!(!book.read(a, usage(3, 0), 10, t + FRESH_FOR));
        assert!(!book.take(&a, 10, t + FRESH_FOR));
    }

    #[test]
    fn the_book_stays_bounded() {
        let book = QuotaBook::new(LIMITS);
        let t = Instant::now();
        for i in 0..=CAPACITY as u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            book.read(MailboxId(key), usage(0, 0), 1, t);
        }
        assert!(book.lock().len() <= CAPACITY);
    }
}
