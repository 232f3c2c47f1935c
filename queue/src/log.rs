use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use levee_sharding::{MailboxId, ShardId};

/// A record to append: the recipient it is for, and an opaque payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Which shard (log partition) it goes to. Computed by the caller from the recipient so
    /// that the log never needs to know the placement policy.
    pub shard: ShardId,
    /// The recipient; the record key.
    pub mailbox: MailboxId,
    /// The encoded envelope.
    pub payload: Bytes,
}

/// Where a record sits in the log: its shard and its offset there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogPosition {
    /// The shard (partition).
    pub shard: ShardId,
    /// Offset within the shard; offsets of a shard are assigned once and never reused.
    pub offset: u64,
}

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRecord {
    /// Where it is.
    pub position: LogPosition,
    /// The recipient.
    pub mailbox: MailboxId,
    /// The encoded envelope.
    pub payload: Bytes,
}

/// Records a consumer stepped over without handing them out, counted since it was made.
/// Both are reported (logged as errors) when they happen; these totals are for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Records that are not Levee's (their key or framing does not decode): damage, skipped
    /// one by one so that the records around them still flow.
    pub corrupt: u64,
    /// Records deleted from the log before this consumer could deliver them (retention ran
    /// out, or the group's committed position expired): acknowledged envelopes lost.
    pub lost: u64,
}

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The backend failed (disk, broker, ...).
    #[error("delivery log backend: {0}")]
    Backend(String),
    /// A record's bytes do not decode.
    #[error("corrupt delivery log record at shard {shard} offset {offset}")]
    Corrupt {
        /// Shard of the bad record.
        shard: ShardId,
        /// Its offset.
        offset: u64,
    },
    /// A shard outside `0..shards`.
    #[error("shard {shard} does not exist (the log has {shards})")]
    NoSuchShard {
        /// The shard asked for.
        shard: ShardId,
        /// How many there are.
        shards: u32,
    },
}

impl From<levee_sharding::StoreError> for LogError {
    fn from(e: levee_sharding::StoreError) -> Self {
        LogError::Backend(e.to_string())
    }
}

/// The durable, sharded log between accepting an envelope and storing it in a mailbox.
#[async_trait]
pub trait DeliveryLog: Send + Sync + 'static {
    /// How many shards (partitions) the log has.
    fn shards(&self) -> u32;

    /// Appends records and returns their positions, in order, once all of them are durable.
    async fn append(&self, records: Vec<LogRecord>) -> Result<Vec<LogPosition>, LogError>;

    /// A consumer for `group`. Committed positions are kept per group.
    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError>;
}

/// Reads assigned shards in order; see [`DeliveryLog::consumer`].
#[async_trait]
pub trait LogConsumer: Send {
    /// Replaces the assignment: from now on read exactly `shards`, each resuming after its
    /// last committed position.
    async fn assign(&mut self, shards: &[ShardId]) -> Result<(), LogError> {
        self.assign_from(shards, &BTreeMap::new()).await
    }

    /// [`assign`](Self::assign), except that a shard newly assigned here that is in
    /// `starts` begins at that offset instead of the group's committed position: for a
    /// caller that keeps positions elsewhere (the relay's shard leases, whose commits are
    /// fenced). Shards kept from the previous assignment go on where they were.
    async fn assign_from(
        &mut self,
        shards: &[ShardId],
        starts: &BTreeMap<ShardId, u64>,
    ) -> Result<(), LogError>;

    /// Up to `max` records from the assigned shards, each shard in order. Waits up to `wait`
    /// for the first record; returns an empty batch if none came.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LoggedRecord>, LogError>;

    /// Records that everything up to and including these positions has been handled, so a
    /// restart resumes after them. Call only once the records are durable downstream.
    async fn commit(&mut self, done: &[LogPosition]) -> Result<(), LogError>;

    /// What this consumer stepped over so far; see [`Skipped`].
    fn skipped(&self) -> Skipped;

    /// Records appended to the assigned shards and not yet committed: how far delivery is
    /// behind. A health signal, so an estimate from the last poll is good enough.
    fn lag(&self) -> u64;
}
