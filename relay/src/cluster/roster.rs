//! The roster: which relay nodes exist, where they listen, and whether they are alive.
//!
//! Every node writes its own row (join, heartbeat, drain, leave) and reads everyone's.
//! Liveness is decided from heartbeats: a row not refreshed within the failure-detection
//! timeout is removed by whichever node notices first. Every change bumps the roster's
//! epoch, and placement is a pure function of (epoch, rows), so nodes that read the same
//! roster compute the same placement without talking to each other.
//!
//! [`LocalRoster`] keeps the rows in memory, for the nodes of one process (`levee up
//! --nodes N`). A roster shared by separate processes (rows with a TTL in the distributed
//! store) implements the same trait.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::tls::Fingerprint;

/// Whether a node takes shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Serving; placement gives it shards.
    Active,
    /// Handing its shards over before it leaves; placement gives it none.
    Draining,
}

impl NodeState {
    /// Lower-case name for metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
        }
    }
}

/// One node's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Unique, stable name.
    pub name: String,
    /// Where clients reach it.
    pub address: SocketAddr,
    /// Its certificate, for clients that pin.
    pub fingerprint: Fingerprint,
    /// Where it runs (placement honours region pins).
    pub region: String,
    /// Relative capacity (placement gives it shards in proportion).
    pub weight: u32,
    /// Active or draining.
    pub state: NodeState,
}

/// The roster at one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterSnapshot {
    /// Bumped by every change of the rows (not by heartbeats).
    pub epoch: u64,
    /// The rows, by name.
    pub nodes: Vec<NodeInfo>,
}

/// Why a roster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    /// No row has this name (never joined, left, or removed as dead).
    #[error("node {0:?} is not in the roster")]
    Unknown(String),
    /// The backend failed.
    #[error("roster backend: {0}")]
    Backend(String),
    /// The rows changed between every read of them and of their epoch, this many times.
    #[error("the roster changed under each of {0} reads; the view stays as it was")]
    Unsettled(usize),
    /// Another live process runs under this node's name: names must be unique in a
    /// cluster, or two processes would share one row and one set of shard leases.
    #[error(
        "another process ({by}) is running as node {name:?} in this cluster; give each \
         node its own node_name"
    )]
    NameInUse {
        /// The name.
        name: String,
        /// The other process's incarnation (start time in ms, and a random tag).
        by: String,
    },
}

/// Reading and writing the roster. See the module docs.
#[async_trait]
pub trait Roster: Send + Sync + 'static {
    /// Adds (or replaces) `node`'s row as active and alive.
    async fn join(&self, node: NodeInfo) -> Result<(), RosterError>;
    /// Refreshes `name`'s liveness.
    async fn heartbeat(&self, name: &str) -> Result<(), RosterError>;
    /// Marks `name` as draining.
    async fn drain(&self, name: &str) -> Result<(), RosterError>;
    /// Removes `name`'s row.
    async fn leave(&self, name: &str) -> Result<(), RosterError>;
    /// Removes rows whose last heartbeat is older than `timeout`; returns their names.
    async fn expire(&self, timeout: Duration) -> Result<Vec<String>, RosterError>;
    /// The current rows and epoch.
    async fn snapshot(&self) -> Result<RosterSnapshot, RosterError>;
    /// Writes `name`'s report to the cluster's line board: its line's latest samples,
    /// encoded (`admission::encode_report`). A report stays readable for
    /// [`LINE_REPORT_LIFE`] after it was written, longer than any node counts it, so a
    /// node that starts reading knows what a node that died just before still holds.
    async fn publish_line(&self, name: &str, report: Vec<u8>) -> Result<(), RosterError>;
    /// Every report on the line board, by node name.
    async fn line_board(&self) -> Result<Vec<(String, Vec<u8>)>, RosterError>;
    /// Rows left out of the last snapshot because they could not be read (for metrics).
    fn rows_unreadable(&self) -> u64 {
        0
    }
    /// A channel that changes with the epoch, when the backend can tell at once; nodes
    /// then re-read without waiting for their next heartbeat.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// How long a line report stays on the board after it was written.
pub const LINE_REPORT_LIFE: Duration = Duration::from_secs(60);

/// The roster of the nodes of one process, in memory.
pub struct LocalRoster {
    inner: Mutex<Rows>,
    epoch: watch::Sender<u64>,
}

impl Default for LocalRoster {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            epoch: watch::Sender::new(0),
        }
    }
}

#[derive(Default)]
struct Rows {
    epoch: u64,
    rows: BTreeMap<String, (NodeInfo, Instant)>,
    /// The line board: each node's last report and when it was written.
    lines: BTreeMap<String, (Vec<u8>, Instant)>,
}

impl std::fmt::Debug for LocalRoster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = self.lock();
        f.debug_struct("LocalRoster")
            .field("epoch", &rows.epoch)
            .field("nodes", &rows.rows.len())
            .finish()
    }
}

impl LocalRoster {
    fn lock(&self) -> MutexGuard<'_, Rows> {
        // Every change below is a single insert/remove plus an epoch bump; a panic cannot
        // leave the rows half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn change(&self, name: &str, f: impl FnOnce(&mut NodeInfo)) -> Result<(), RosterError> {
        let mut rows = self.lock();
        let (info, _) = rows
            .rows
            .get_mut(name)
            .ok_or_else(|| RosterError::Unknown(name.to_owned()))?;
        f(info);
        rows.epoch += 1;
        self.epoch.send_replace(rows.epoch);
        Ok(())
    }
}

#[async_trait]
impl Roster for LocalRoster {
    async fn join(&self, mut node: NodeInfo) -> Result<(), RosterError> {
        let mut rows = self.lock();
        node.state = NodeState::Active;
        rows.rows.insert(node.name.clone(), (node, Instant::now()));
        rows.epoch += 1;
        self.epoch.send_replace(rows.epoch);
        Ok(())
    }

    async fn heartbeat(&self, name: &str) -> Result<(), RosterError> {
        let mut rows = self.lock();
        let (_, seen) = rows
            .rows
            .get_mut(name)
            .ok_or_else(|| RosterError::Unknown(name.to_owned()))?;
        *seen = Instant::now();
        Ok(())
    }

    async fn drain(&self, name: &str) -> Result<(), RosterError> {
        self.change(name, |info| info.state = NodeState::Draining)
    }

    async fn leave(&self, name: &str) -> Result<(), RosterError> {
        let mut rows = self.lock();
        if rows.rows.remove(name).is_some() {
            rows.epoch += 1;
            self.epoch.send_replace(rows.epoch);
        }
        Ok(())
    }

    async fn expire(&self, timeout: Duration) -> Result<Vec<String>, RosterError> {
        let mut rows = self.lock();
        let dead: Vec<String> = rows
            .rows
            .iter()
            .filter(|(_, (_, seen))| seen.elapsed() > timeout)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &dead {
            rows.rows.remove(name);
        }
        if !dead.is_empty() {
            rows.epoch += 1;
            self.epoch.send_replace(rows.epoch);
        }
        Ok(dead)
    }

    async fn snapshot(&self) -> Result<RosterSnapshot, RosterError> {
        let rows = self.lock();
        Ok(RosterSnapshot {
            epoch: rows.epoch,
            nodes: rows.rows.values().map(|(info, _)| info.clone()).collect(),
        })
    }

    async fn publish_line(&self, name: &str, report: Vec<u8>) -> Result<(), RosterError> {
        let mut rows = self.lock();
        rows.lines.insert(name.to_owned(), (report, Instant::now()));
        rows.lines
            .retain(|_, (_, written)| written.elapsed() < LINE_REPORT_LIFE);
        Ok(())
    }

    async fn line_board(&self) -> Result<Vec<(String, Vec<u8>)>, RosterError> {
        let rows = self.lock();
        Ok(rows
            .lines
            .iter()
            .filter(|(_, (_, written))| written.elapsed() < LINE_REPORT_LIFE)
            .map(|(name, (report, _))| (name.clone(), report.clone()))
            .collect())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.epoch.subscribe())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn info(name: &str, port: u16) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            fingerprint: Fingerprint([port as u8; 32]),
            region: "local".into(),
            weight: 1,
            state: NodeState::Active,
        }
    }

    #[tokio::test]
    async fn every_change_bumps_the_epoch_and_heartbeats_do_not() {
        let roster = LocalRoster::default();
        roster.join(info("a", 1)).await.unwrap();
        roster.join(info("b", 2)).await.unwrap();
        let e = roster.snapshot().await.unwrap().epoch;
        roster.heartbeat("a").await.unwrap();
        assert_eq!(roster.snapshot().await.unwrap().epoch, e);
        roster.drain("b").await.unwrap();
        let s = roster.snapshot().await.unwrap();
        assert_eq!(s.epoch, e + 1);
        assert_eq!(s.nodes[1].state, NodeState::Draining);
        roster.leave("b").await.unwrap();
        assert_eq!(roster.snapshot().await.unwrap().nodes.len(), 1);
        // Unknown names are errors, not no-ops: a node learns it was given up for dead.
        assert!(matches!(
            roster.heartbeat("zed").await,
            Err(RosterError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn silent_rows_expire() {
        let roster = LocalRoster::default();
        roster.join(info("a", 1)).await.unwrap();
        roster.join(info("b", 2)).await.unwrap();
        std::thread::sleep(Duration::from_millis(300));
        roster.heartbeat("a").await.unwrap();
        let e = roster.snapshot().await.unwrap().epoch;
        assert_eq!(
            roster.expire(Duration::from_millis(150)).await.unwrap(),
            vec!["b".to_string()]
        );
        let s = roster.snapshot().await.unwrap();
        assert_eq!(s.epoch, e + 1);
        assert_eq!(s.nodes.len(), 1);
        assert!(
            roster
                .expire(Duration::from_millis(150))
                .await
                .unwrap()
                .is_empty()
        );
    }
}
