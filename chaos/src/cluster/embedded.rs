//! The default target: an embedded local cluster the drill starts and stops itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;
use levee_relay::NodeConfig;
use levee_relay::admission::TicketKey;
use levee_relay::local_cluster::{LocalCluster, NodeSummary};
use ring::rand::{SecureRandom, SystemRandom};

use super::{Target, stall_through_admin};
use crate::proxy::Proxy;
use crate::scenario::{FaultAction, Scenario};

/// Whether clients go through proxies: only when a node is to be cut off, since they cost
/// CPU the drill shares with the cluster.
pub(super) fn needs_proxies(scenario: &Scenario) -> bool {
    scenario
        .faults
        .iter()
        .any(|f| matches!(f.action, FaultAction::Partition { .. }))
}

/// See the [module docs](super).
pub struct Embedded {
    cluster: Arc<LocalCluster>,
    /// Node name → the proxy clients reach it through, when the scenario cuts nodes off.
    proxies: Option<Mutex<BTreeMap<String, Proxy>>>,
    key: TicketKey,
    /// `registration_max_per_s` of the nodes in the order they start, where the scenario
    /// sets one per node (`ClusterShape::registration_max_per_s_by_node`).
    ceilings: Vec<f64>,
    /// Nodes started so far.
    started: std::sync::atomic::AtomicUsize,
    _dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts `scenario.cluster.nodes` nodes in a fresh temporary directory, admission
    /// control on or off, fault injection on.
    pub async fn start(scenario: &Scenario, admission: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a temporary directory for the cluster")?;
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| anyhow!("no randomness"))?;
        let base = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            admin_listen: Some("127.0.0.1:0".parse().expect("a literal address")),
            shards: scenario.cluster.shards,
            admission,
            cluster_key: Some(hex::encode(key)),
            // Every client of the drill comes from 127.0.0.1; a real crowd comes from many
            // networks, so the per-prefix connection limit would measure the wrong thing.
            connections_per_prefix_per_sec: 1_000_000,
            fault_injection: true,
            registration_max_per_s: scenario.cluster.registration_max_per_s,
            load_target_wait_s: scenario.cluster.load_target_wait_s,
            registration_hold_ms: scenario
                .cluster
                .registration_hold_ms
                .unwrap_or(NodeConfig::default().registration_hold_ms),
            registration_line_sync_ms: if scenario.cluster.one_line {
                NodeConfig::default().registration_line_sync_ms
            } else {
                0
            },
            ..NodeConfig::default()
        };
        let cluster = LocalCluster::open(base).context("opening the drill's cluster")?;
        let target = Self {
            cluster,
            proxies: needs_proxies(scenario).then(Mutex::default),
            key: TicketKey::new(&key),
            ceilings: scenario.cluster.registration_max_per_s_by_node.clone(),
            started: std::sync::atomic::AtomicUsize::new(0),
            _dir: dir,
        };
        for _ in 0..scenario.cluster.nodes {
            target.start().await?;
        }
        Ok(target)
    }

    fn proxies(&self) -> Option<MutexGuard<'_, BTreeMap<String, Proxy>>> {
        // Proxies only; a panic elsewhere cannot leave the map torn.
        self.proxies
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `node` as clients reach it: through its proxy, if it has one.
    fn as_reached(&self, mut node: NodeSummary) -> NodeSummary {
        if let Some(p) = self
            .proxies()
            .and_then(|m| m.get(&node.name).map(Proxy::addr))
        {
            node.address = p;
        }
        node
    }

    fn live(&self, node: u32) -> anyhow::Result<NodeSummary> {
        let name = format!("node-{node}");
        self.nodes()
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("{name} is not running"))
    }
}

#[async_trait]
impl Target for Embedded {
    fn nodes(&self) -> Vec<NodeSummary> {
        self.cluster
            .nodes()
            .into_iter()
            .map(|n| self.as_reached(n))
            .collect()
    }

    fn ticket_key(&self) -> &TicketKey {
        &self.key
    }

    async fn kill(&self, node: u32) -> anyhow::Result<String> {
        let name = format!("node-{node}");
        self.cluster.kill(&name)?;
        if let Some(mut proxies) = self.proxies() {
            proxies.remove(&name);
        }
        Ok(name)
    }

    async fn drain(&self, name: &str) -> anyhow::Result<()> {
        self.cluster
            .drain(name)
            .await
            .with_context(|| format!("draining {name}"))?;
        if let Some(mut proxies) = self.proxies() {
            proxies.remove(name);
        }
        Ok(())
    }

    async fn start(&self) -> anyhow::Result<NodeSummary> {
        let index = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ceiling = self.ceilings.get(index).copied();
        let tune = |c: &mut NodeConfig| {
            if let Some(per_s) = ceiling {
                c.registration_max_per_s = per_s;
            }
        };
        let Some(proxies) = &self.proxies else {
            return self
                .cluster
                .add_node_with(tune)
                .await
                .context("starting a node");
        };
        // The node advertises the proxy, so redirects lead clients through it too.
        let proxy = Proxy::bind().context("a proxy for the node")?;
        let node = self
            .cluster
            .add_node_with(|c| {
                tune(c);
                c.advertise_address = Some(proxy.addr());
            })
            .await
            .context("starting a node")?;
        proxy.forward_to(node.address);
        proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.name.clone(), proxy);
        Ok(self.as_reached(node))
    }

    async fn stall(
        &self,
        node: Option<u32>,
        backend: &str,
        d: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let nodes = match node {
            Some(n) => vec![self.live(n)?],
            None => self.nodes(),
        };
        // Loopback admin ports take changes without a token.
        stall_through_admin(&nodes, None, backend, d).await
    }

    async fn pause(&self, _node: u32, _d: Duration) -> anyhow::Result<String> {
        anyhow::bail!(
            "pause_node stops a node's whole process, and the embedded cluster's nodes share \
             the drill's: run it against levee node processes (chaos/distributed.sh)"
        )
    }

    async fn partition(&self, node: u32, d: Duration) -> anyhow::Result<String> {
        let name = self.live(node)?.name;
        let proxies = self
            .proxies()
            .ok_or_else(|| anyhow!("no proxies: the scenario planned no partition"))?;
        proxies
            .get(&name)
            .ok_or_else(|| anyhow!("{name} has no proxy"))?
            .cut(d);
        Ok(name)
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.cluster
            .shutdown()
            .await
            .context("stopping the drill's cluster")
    }
}
