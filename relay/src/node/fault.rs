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
//!   The roster can be stalled too: its reads only (`roster`: the node cannot refresh its
//!   view, but its heartbeats go on), or its reads and writes with the store (`database`:
//!   the node loses the database it shares with the others, but keeps its clients and the
//!   log).
//! - a **crash** is handled by the admin port (the node's task is aborted, or the process).
//! - a **pause** (`levee node` only) stops the whole process with SIGSTOP for a while and
//!   lets it go on with SIGCONT, as a long GC pause or a frozen VM would: a zombie that
//!   wakes up believing it still owns what it owned.
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

use crate::cluster::{
    Lease, LeaseError, LeaseRow, NodeInfo, Roster, RosterError, RosterSnapshot, ShardLeases,
};

/// Longest stall one request may ask for: a drill rehearses an outage, not a dead node.
pub(crate) const MAX_STALL: Duration = Duration::from_secs(300);

/// Which backends a stall holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The mailbox store (ScyllaDB, or the embedded store).
    Store,
    /// The delivery log (Kafka, or the embedded log).
    Log,
    /// Store and log.
    All,
    /// Roster reads only: the node's view cannot be refreshed; heartbeats go on.
    Roster,
    /// The shared database: the store and every roster call (reads and heartbeats).
    Database,
}

impl Backend {
    /// `store`, `log`, `all`, `roster` or `database`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "store" => Some(Self::Store),
            "log" => Some(Self::Log),
            "all" => Some(Self::All),
            "roster" => Some(Self::Roster),
            "database" => Some(Self::Database),
            _ => None,
        }
    }
}

/// A node's stall switches, one per backend.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    pub store: Arc<Stall>,
    pub log: Arc<Stall>,
    pub roster_reads: Arc<Stall>,
    pub roster_writes: Arc<Stall>,
}

/// How long each backend is stalled for from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stalled {
    pub store: Duration,
    pub log: Duration,
    pub roster_reads: Duration,
    pub roster_writes: Duration,
}

impl Stalls {
    /// Stalls `backend` for `d` from now; how long each switch is now stalled.
    pub(crate) fn begin(&self, backend: Backend, d: Duration) -> Stalled {
        use Backend::{All, Database, Log, Roster, Store};
        if matches!(backend, Store | All | Database) {
            self.store.begin(d);
        }
        if matches!(backend, Log | All) {
            self.log.begin(d);
        }
        if matches!(backend, Roster | Database) {
            self.roster_reads.begin(d);
        }
        if matches!(backend, Database) {
            self.roster_writes.begin(d);
        }
        Stalled {
            store: self.store.remaining(),
            log: self.log.remaining(),
            roster_reads: self.roster_reads.remaining(),
            roster_writes: self.roster_writes.remaining(),
        }
    }
}

/// Stops this process with SIGSTOP for `d` (at most [`MAX_STALL`]) and lets it go on with
/// SIGCONT, through a detached shell: a stopped process cannot wake itself. Returns once
/// the shell is started; the stop comes a moment later, so the caller's answer gets out.
pub(crate) fn pause_process(d: Duration) -> std::io::Result<()> {
    let secs = d.min(MAX_STALL).as_secs_f64();
    let pid = std::process::id();
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 0.2; kill -STOP {pid}; sleep {secs}; kill -CONT {pid}"
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
}

/// A roster whose reads wait out one [`Stall`] and whose writes wait out another.
pub(crate) struct StallingRoster {
    pub inner: Arc<dyn Roster>,
    pub reads: Arc<Stall>,
    pub writes: Arc<Stall>,
}

#[async_trait]
impl Roster for StallingRoster {
    async fn join(&self, node: NodeInfo) -> Result<(), RosterError> {
        self.writes.pass().await;
        self.inner.join(node).await
    }
    async fn heartbeat(&self, name: &str) -> Result<(), RosterError> {
        self.writes.pass().await;
        self.inner.heartbeat(name).await
    }
    async fn drain(&self, name: &str) -> Result<(), RosterError> {
        self.writes.pass().await;
        self.inner.drain(name).await
    }
    async fn leave(&self, name: &str) -> Result<(), RosterError> {
        self.writes.pass().await;
        self.inner.leave(name).await
    }
    async fn publish_line(&self, name: &str, report: Vec<u8>) -> Result<(), RosterError> {
        self.writes.pass().await;
        self.inner.publish_line(name, report).await
    }
    async fn line_board(&self) -> Result<Vec<(String, Vec<u8>)>, RosterError> {
        self.reads.pass().await;
        self.inner.line_board().await
    }
    async fn expire(&self, timeout: Duration) -> Result<Vec<String>, RosterError> {
        self.writes.pass().await;
        self.inner.expire(timeout).await
    }
    async fn snapshot(&self) -> Result<RosterSnapshot, RosterError> {
        self.reads.pass().await;
        self.inner.snapshot().await
    }
    fn rows_unreadable(&self) -> u64 {
        self.inner.rows_unreadable()
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.changes()
    }
}

/// Shard leases whose every call waits out a [`Stall`] (the store's: they share its
/// database).
pub(crate) struct StallingLeases {
    pub inner: Arc<dyn ShardLeases>,
    pub stall: Arc<Stall>,
}

#[async_trait]
impl ShardLeases for StallingLeases {
    async fn read(&self, shard: ShardId) -> Result<LeaseRow, LeaseError> {
        self.stall.pass().await;
        self.inner.read(shard).await
    }
    async fn take(
        &self,
        shard: ShardId,
        holder: &str,
        seen: &LeaseRow,
    ) -> Result<Option<Lease>, LeaseError> {
        self.stall.pass().await;
        self.inner.take(shard, holder, seen).await
    }
    async fn commit(&self, lease: &Lease, next: u64) -> Result<(), LeaseError> {
        self.stall.pass().await;
        self.inner.commit(lease, next).await
    }
    async fn release(&self, lease: &Lease, next: Option<u64>) -> Result<(), LeaseError> {
        self.stall.pass().await;
        self.inner.release(lease, next).await
    }
    async fn history(&self, shard: ShardId) -> Result<Vec<(u64, String)>, LeaseError> {
        self.stall.pass().await;
        self.inner.history(shard).await
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
    async fn assign_from(
        &mut self,
        shards: &[ShardId],
        starts: &std::collections::BTreeMap<ShardId, u64>,
    ) -> Result<(), LogError> {
        self.stall.pass().await;
        self.inner.assign_from(shards, starts).await
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
