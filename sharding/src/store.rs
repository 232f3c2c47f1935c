use async_trait::async_trait;

use crate::{EnvelopeId, MailboxId, NewEnvelope, StoredEnvelope};

/// How full a mailbox is: what counts against its quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxUsage {
    /// Envelopes stored and not yet acknowledged.
    pub envelopes: u64,
    /// Their ciphertext bytes.
    pub bytes: u64,
}

/// What happened to one envelope handed to [`MailboxStore::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Newly stored.
    Stored,
    /// Already stored (the same log record replayed, or the same message re-sent); nothing
    /// was written.
    Duplicate,
}

/// The result of acknowledging envelopes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Envelopes deleted by this call.
    pub deleted: u32,
    /// Ids not found in the mailbox (never there, someone else's, or already deleted).
    pub unknown: Vec<EnvelopeId>,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (disk full, I/O error, ...).
    #[error("storage engine: {0}")]
    Engine(String),
    /// Stored bytes do not decode; the store is damaged or from an incompatible version.
    #[error("corrupt record in {what}")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
    },
}

/// Durable mailboxes: the contract the embedded store and the ScyllaDB store both meet.
///
/// Every method that changes data returns only once the change is durable.
#[async_trait]
pub trait MailboxStore: Send + Sync + 'static {
    /// Creates the mailbox (registers the account). Returns `true` if it did not exist.
    async fn create_mailbox(&self, mailbox: &MailboxId) -> Result<bool, StoreError>;

    /// Whether the mailbox (account) exists.
    async fn mailbox_exists(&self, mailbox: &MailboxId) -> Result<bool, StoreError>;

    /// Current quota usage of a mailbox.
    async fn usage(&self, mailbox: &MailboxId) -> Result<MailboxUsage, StoreError>;

    /// Stores envelopes, skipping any whose dedupe key the mailbox has already seen
    /// (within the expiry window). A replayed log record is skipped by the same check: it
    /// carries its message's dedupe key, and ids (log positions) are never given to two
    /// messages. The outcomes are in the order of `envelopes`.
    async fn insert(&self, envelopes: Vec<NewEnvelope>) -> Result<Vec<InsertOutcome>, StoreError>;

    /// Up to `max` unexpired envelopes of `mailbox` with ids greater than `after` (all, if
    /// `None`), oldest first.
    async fn read(
        &self,
        mailbox: &MailboxId,
        after: Option<EnvelopeId>,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredEnvelope>, StoreError>;

    /// Deletes acknowledged envelopes from `mailbox` only; ids of other mailboxes are
    /// reported unknown and left alone.
    async fn ack(&self, mailbox: &MailboxId, ids: &[EnvelopeId]) -> Result<AckOutcome, StoreError>;

    /// Deletes envelopes and de-duplication records that expired before `now_ms`, at most
    /// `max` of them. Returns how many records were removed.
    async fn expire(&self, now_ms: u64, max: usize) -> Result<usize, StoreError>;
}
