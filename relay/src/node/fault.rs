//! Fault injection for chaos drills, off unless `fault_injection = true` is configured.
//!
//! A drill against a cluster it did not start (or whose processes it cannot signal) needs
//! the nodes themselves to misbehave on request, through the token-guarded admin port:
//!
//! - a **stall**: for a while, every call this node makes to its mailbox store and
//!   delivery log waits before it goes out, as when the database and the log stop
//!   answering (a GC pause, a saturated disk, a network path to the backends that went
//!   quiet). Calls already in flight finish; the node itself keeps serving, so what a
//!   drill sees is the node's own overload handling (buffering, shedding, timeouts).
//! - a **crash** is handled by the admin port (the node's task is aborted, or the process).
//!
//! The stall wraps the store and log the node was given, so the backends under it are the
//! real ones; with fault injection off, nothing is wrapped and nothing costs anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use levee_queue::{
    DeliveryLog, LogConsumer, LogError, LogPosition, LogRecord, LoggedRecord, Skipped,
};
use levee_sharding::{
    AckOutcome, EnvelopeId, InsertOutcome, MailboxId, MailboxStore, MailboxUsage, NewEnvelope,
    ShardId, StoreError, StoredEnvelope,
};
use tokio::time::Instant;

/// Longest stall one request may ask for: a drill rehearses an outage, not a dead node.
pub(crate) const MAX_STALL: Duration = Duration::from_secs(300);

/// Which backends a stall holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The mailbox store (ScyllaDB, or the embedded store).
    Store,
    /// The delivery log (Kafka, or the embedded log).
    Log,
    /// Both.
    All,
}

impl Backend {
    /// `store`, `log` or `all`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "store" => Some(Self::Store),
            "log" => Some(Self::Log),
            "all" => Some(Self::All),
            _ => None,
        }
    }
}

/// A node's stall switches, one per backend.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    pub store: Arc<Stall>,
    pub log: Arc<Stall>,
}

impl Stalls {
    /// Stalls `backend` for `d` from now; how long each of store and log is now stalled.
    pub(crate) fn begin(&self, backend: Backend, d: Duration) -> (Duration, Duration) {
        if matches!(backend, Backend::Store | Backend::All) {
            self.store.begin(d);
        }
        if matches!(backend, Backend::Log | Backend::All) {
            self.log.begin(d);
        }
        (self.store.remaining(), self.log.remaining())
    }
}

/// When the current stall ends, if there is one.
#[derive(Debug, Default)]
pub(crate) struct Stall {
    until: Mutex<Option<Instant>>,
}

impl Stall {
    /// Stalls backend calls for `d` from now (a later end than the current one wins, so
    /// overlapping requests never shorten a stall).
    pub(crate) fn begin(&self, d: Duration) -> Instant {
        let end = Instant::now() + d.min(MAX_STALL);
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let end = until.map_or(end, |u| u.max(end));
        *until = Some(end);
        end
    }

    /// Seconds left of the current stall (0 when there is none).
    pub(crate) fn remaining(&self) -> Duration {
        let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        until.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        })
    }

    /// Returns once no stall is in force.
    async fn pass(&self) {
        loop {
            let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(end) if end > Instant::now() => tokio::time::sleep_until(end).await,
                _ => return,
            }
        }
    }
}

/// A mailbox store whose calls wait out a [`Stall`].
pub(crate) struct StallingStore {
    pub inner: Arc<dyn MailboxStore>,
    pub stall: Arc<Stall>,
}

#[async_trait]
impl MailboxStore for StallingStore {
    async fn create_mailbox(&self, mailbox: &MailboxId) -> Result<bool, StoreError> {
        self.stall.pass().await;
        self.inner.create_mailbox(mailbox).await
    }

    async fn mailbox_exists(&self, mailbox: &MailboxId) -> Result<bool, StoreError> {
        self.stall.pass().await;
        self.inner.mailbox_exists(mailbox).await
    }

    async fn usage(&self, mailbox: &MailboxId) -> Result<MailboxUsage, StoreError> {
        self.stall.pass().await;
        self.inner.usage(mailbox).await
    }

    async fn insert(&self, envelopes: Vec<NewEnvelope>) -> Result<Vec<InsertOutcome>, StoreError> {
        self.stall.pass().await;
        self.inner.insert(envelopes).await
    }

    async fn read(
        &self,
        mailbox: &MailboxId,
        after: Option<EnvelopeId>,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        self.stall.pass().await;
        self.inner.read(mailbox, after, max, now_ms).await
    }

    async fn ack(&self, mailbox: &MailboxId, ids: &[EnvelopeId]) -> Result<AckOutcome, StoreError> {
        self.stall.pass().await;
        self.inner.ack(mailbox, ids).await
    }

    async fn expire(&self, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        self.stall.pass().await;
        self.inner.expire(now_ms, max).await
    }
}

/// A delivery log whose appends and consumers wait out a [`Stall`].
pub(crate) struct StallingLog {
    pub inner: Arc<dyn DeliveryLog>,
    pub stall: Arc<Stall>,
}

#[async_trait]
impl DeliveryLog for StallingLog {
    fn shards(&self) -> u32 {
        self.inner.shards()
    }

    async fn append(&self, records: Vec<LogRecord>) -> Result<Vec<LogPosition>, LogError> {
        self.stall.pass().await;
        self.inner.append(records).await
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        self.stall.pass().await;
        Ok(Box::new(StallingConsumer {
            inner: self.inner.consumer(group).await?,
            stall: self.stall.clone(),
        }))
    }
}

struct StallingConsumer {
    inner: Box<dyn LogConsumer>,
    stall: Arc<Stall>,
}

#[async_trait]
impl LogConsumer for StallingConsumer {
    async fn assign(&mut self, shards: &[ShardId]) -> Result<(), LogError> {
        self.stall.pass().await;
        self.inner.assign(shards).await
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LoggedRecord>, LogError> {
        self.stall.pass().await;
        self.inner.poll(max, wait).await
    }

    async fn commit(&mut self, done: &[LogPosition]) -> Result<(), LogError> {
        self.stall.pass().await;
        self.inner.commit(done).await
    }

    fn skipped(&self) -> Skipped {
        self.inner.skipped()
    }

    fn lag(&self) -> u64 {
        self.inner.lag()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stall_holds_calls_until_it_ends_and_never_shortens() {
        let stall = Stall::default();
        let start = Instant::now();
        stall.pass().await;
        assert_eq!(start.elapsed(), Duration::ZERO, "no stall, no wait");
        stall.begin(Duration::from_secs(5));
        stall.begin(Duration::from_secs(2));
        assert_eq!(stall.remaining(), Duration::from_secs(5));
        stall.pass().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(stall.remaining(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_capped() {
        let stall = Stall::default();
        stall.begin(Duration::from_secs(100_000));
        assert_eq!(stall.remaining(), MAX_STALL);
    }
}
