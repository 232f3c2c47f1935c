//! The embedded multi-node deployment: N relay nodes in one process, each with its own
//! QUIC port, certificate, admission state and view of the placement, sharing one embedded
//! store and delivery log (like a database's multi-node demo mode). `levee up --nodes N`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use levee_queue::{DeliveryLog, EmbeddedLog};
use levee_sharding::{EmbeddedMailboxStore, EmbeddedStore, MailboxStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cluster::{LocalLeases, LocalRoster};
use crate::config::NodeConfig;
use crate::node::{ClusterAdmin, DrainHandle, Node, NodeError};
use crate::tls::Fingerprint;

/// What to tell people about a running node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSummary {
    /// Its name (`node-1`, `node-2`, ...).
    pub name: String,
    /// Its QUIC address.
    pub address: SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: Fingerprint,
    /// Its admin (metrics) address, if it has one.
    pub admin: Option<SocketAddr>,
    /// Its region.
    pub region: String,
    /// Whether this start generated its certificate.
    pub generated_certificate: bool,
}

impl NodeSummary {
    /// What to tell people about `node`, which runs in `region`.
    pub fn of(node: &Node, region: &str) -> Self {
        Self {
            name: node.name(),
            address: node.local_addr(),
            fingerprint: node.fingerprint(),
            admin: node.admin_addr(),
            region: region.to_owned(),
            generated_certificate: node.generated_certificate(),
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No running node has this name.
    #[error("no running node is named {0:?}")]
    NoSuchNode(String),
    /// A node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
}

struct Running {
    summary: NodeSummary,
    drain: DrainHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

/// N nodes in one process; see the module docs.
pub struct LocalCluster {
    base: NodeConfig,
    store: Arc<dyn MailboxStore>,
    log: Arc<dyn DeliveryLog>,
    roster: Arc<LocalRoster>,
    leases: Arc<LocalLeases>,
    nodes: Mutex<BTreeMap<String, Running>>,
    /// Nodes started so far, running or not: names are never reused.
    started: Mutex<u32>,
    me: Weak<LocalCluster>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("nodes", &self.lock().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// Opens the shared store and log in `base.data_dir`. No node runs yet: call
    /// [`add_node`](Self::add_node).
    ///
    /// Node `k` is named `node-k`; it listens on `base.listen` with the port raised by
    /// `k − 1` (or any free port when the base port is 0), likewise for the admin port, and
    /// keeps its certificate in `data_dir/tls` (node 1) or `data_dir/nodes/node-k/tls`.
    /// All nodes share the cluster key (ticket signatures), so any of them verifies any
    /// ticket.
    pub fn open(mut base: NodeConfig) -> Result<Arc<Self>, NodeError> {
        base.validate().map_err(NodeError::Config)?;
        let key = crate::node::cluster_key(&base).map_err(NodeError::Config)?;
        base.cluster_key = Some(hex::encode(key));
        let db = EmbeddedStore::open(&base.data_dir.join("db"))?;
        let store = Arc::new(EmbeddedMailboxStore::open(&db)?);
        let log = Arc::new(EmbeddedLog::open(&db, base.shards)?);
        Ok(Arc::new_cyclic(|me| Self {
            base,
            store,
            log,
            roster: Arc::new(LocalRoster::default()),
            leases: Arc::new(LocalLeases::default()),
            nodes: Mutex::new(BTreeMap::new()),
            started: Mutex::new(0),
            me: me.clone(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Running>> {
        // Holds handles only; a panic elsewhere cannot leave it inconsistent.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The roster the nodes share (for tests and tools that want to predict placement).
    pub fn roster(&self) -> Arc<LocalRoster> {
        self.roster.clone()
    }

    /// Starts the next node with the defaults described in [`open`](Self::open).
    pub async fn add_node(&self) -> Result<NodeSummary, NodeError> {
        self.add_node_with(|_| {}).await
    }

    /// Starts the next node with its configuration changed by `tune` (e.g. its region).
    pub async fn add_node_with(
        &self,
        tune: impl FnOnce(&mut NodeConfig),
    ) -> Result<NodeSummary, NodeError> {
        let k = {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            *started += 1;
            *started
        };
        let mut config = self.base.clone();
        config.node_name = format!("node-{k}");
        config.listen = offset_port(self.base.listen, k);
        config.admin_listen = self.base.admin_listen.map(|a| offset_port(a, k));
        if k > 1 {
            config.data_dir = self.base.data_dir.join("nodes").join(&config.node_name);
        }
        tune(&mut config);
        let node = Node::in_cluster(
            config.clone(),
            self.store.clone(),
            self.log.clone(),
            self.roster.clone(),
            self.leases.clone(),
        )?;
        let cluster: Weak<dyn ClusterAdmin> = self.me.clone();
        node.set_cluster_admin(cluster);
        let summary = NodeSummary::of(&node, &config.region);
        let drain = node.drain_handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let (joined_tx, joined) = oneshot::channel();
        let task = tokio::spawn(async move {
            node.run_announcing(
                async {
                    let _ = stopped.await;
                },
                joined_tx,
            )
            .await
        });
        // Wait until it is in the roster, so whoever added it sees it in the placement.
        if joined.await.is_err() {
            // It stopped before joining; say why.
            return match task.await {
                Ok(Err(e)) => Err(e),
                _ => Err(NodeError::Config(format!(
                    "{} stopped before joining the cluster",
                    summary.name
                ))),
            };
        }
        self.lock().insert(
            summary.name.clone(),
            Running {
                summary: summary.clone(),
                drain,
                stop: Some(stop),
                task,
            },
        );
        Ok(summary)
    }

    /// The nodes still running, by name.
    pub fn nodes(&self) -> Vec<NodeSummary> {
        self.reap();
        self.lock().values().map(|r| r.summary.clone()).collect()
    }

    /// Forgets nodes whose task has ended (drained through the admin port, or failed).
    fn reap(&self) {
        self.lock().retain(|_, r| !r.task.is_finished());
    }

    /// Drains `name`: its shards go to the others, its clients are told to move, and it
    /// leaves. Returns once it has.
    pub async fn drain(&self, name: &str) -> Result<(), ClusterError> {
        let running = self
            .lock()
            .remove(name)
            .ok_or_else(|| ClusterError::NoSuchNode(name.to_owned()))?;
        running.drain.drain();
        finish(running).await
    }

    /// Stops `name` abruptly, as a crash would: no handover, no goodbye. Its connections
    /// drop and its roster row goes silent until the others time it out.
    pub fn kill(&self, name: &str) -> Result<(), ClusterError> {
        let running = self
            .lock()
            .remove(name)
            .ok_or_else(|| ClusterError::NoSuchNode(name.to_owned()))?;
        running.task.abort();
        Ok(())
    }

    /// Resolves when no node is running any more (each was drained or failed).
    pub async fn all_stopped(&self) {
        loop {
            if self.nodes().is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Stops every node cleanly (each leaves the roster and syncs).
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        let all: Vec<Running> = std::mem::take(&mut *self.lock()).into_values().collect();
        let mut first_error = None;
        for mut running in all {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(());
            }
            if let Err(e) = finish(running).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

async fn finish(running: Running) -> Result<(), ClusterError> {
    match running.task.await {
        Ok(result) => result.map_err(ClusterError::from),
        // Aborted or panicked: nothing more to wait for.
        Err(_) => Ok(()),
    }
}

/// `addr` with its port raised by `k − 1`; port 0 (any free port) stays 0.
fn offset_port(addr: SocketAddr, k: u32) -> SocketAddr {
    let mut addr = addr;
    if addr.port() != 0 {
        addr.set_port(addr.port().saturating_add((k - 1) as u16));
    }
    addr
}

#[async_trait]
impl ClusterAdmin for LocalCluster {
    async fn add_node(&self) -> Result<serde_json::Value, String> {
        let node = LocalCluster::add_node(self)
            .await
            .map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "name": node.name,
            "address": node.address.to_string(),
            "fingerprint": node.fingerprint.to_string(),
            "admin": node.admin.map(|a| a.to_string()),
            "region": node.region,
        }))
    }

    fn kill(&self, name: &str) -> Result<(), String> {
        LocalCluster::kill(self, name).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_node_number() {
        let base: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert_eq!(offset_port(base, 1), base);
        assert_eq!(offset_port(base, 3).port(), 4435);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(offset_port(any, 5), any);
    }
}
