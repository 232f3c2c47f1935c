//! The cluster a drill plays against, and how faults reach it.
//!
//! - [`Embedded`] (the default): a local cluster the drill starts in its own process and
//!   stops at the end; kills and starts go through the cluster's API, stalls through the
//!   nodes' fault-injection admin endpoint, partitions through a [`Proxy`](crate::proxy)
//!   in front of each node.
//! - [`Remote`]: a cluster already running, given by its nodes' admin addresses (a
//!   distributed cluster of `levee node` processes, or a `levee up` elsewhere); every fault
//!   goes through the admin API, guarded by the admin token and refused unless the nodes
//!   were configured with `fault_injection = true`.

mod embedded;
mod remote;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use levee_relay::admission::TicketKey;
use levee_relay::local_cluster::NodeSummary;

pub use embedded::Embedded;
pub use remote::Remote;

use crate::scenario::Scenario;

/// Where a drill plays, as asked on the command line.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// A local cluster the drill starts itself, shaped by the scenario's `[cluster]`.
    Embedded,
    /// A running cluster.
    Remote {
        /// Every node's admin address, in the order the scenario numbers them (node 1 first).
        admins: Vec<SocketAddr>,
        /// The admin token, when the nodes have one.
        token: Option<String>,
        /// The cluster key (hex), to verify the tickets newcomers are handed.
        cluster_key: String,
        /// Shell command starting one more node process (`{node}`: its number), for
        /// `start_node` on clusters of `levee node` processes.
        start_command: Option<String>,
    },
}

impl TargetSpec {
    /// One line for the report: what is drilled.
    pub fn describe(&self, scenario: &Scenario) -> String {
        match self {
            TargetSpec::Embedded => format!(
                "embedded local cluster, {} nodes, {} shards{}",
                scenario.cluster.nodes,
                scenario.cluster.shards,
                if embedded::needs_proxies(scenario) {
                    ", clients through a fault-injecting UDP proxy per node"
                } else {
                    ""
                }
            ),
            TargetSpec::Remote { admins, .. } => format!(
                "running cluster, admin ports {}",
                admins
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Starts (embedded) or reaches (remote) the target for one run.
    pub async fn open(
        &self,
        scenario: &Scenario,
        admission: bool,
    ) -> anyhow::Result<Box<dyn Target>> {
        Ok(match self {
            TargetSpec::Embedded => Box::new(Embedded::start(scenario, admission).await?),
            TargetSpec::Remote {
                admins,
                token,
                cluster_key,
                start_command,
            } => Box::new(
                Remote::connect(admins, token.clone(), cluster_key, start_command.clone()).await?,
            ),
        })
    }
}

/// A cluster under drill. Nodes are numbered 1, 2, ... in the order they were started (or
/// listed), as scenarios name them.
#[async_trait]
pub trait Target: Send + Sync {
    /// The nodes up now, with the addresses clients should use.
    fn nodes(&self) -> Vec<NodeSummary>;

    /// The key tickets are signed with, to check what newcomers hold.
    fn ticket_key(&self) -> &TicketKey;

    /// Stops node `node` abruptly, as a crash would; its name.
    async fn kill(&self, node: u32) -> anyhow::Result<String>;

    /// Starts one more node.
    async fn start(&self) -> anyhow::Result<NodeSummary>;

    /// Drains node `name` as a scale-in does: its shards go to the others, its clients are
    /// told to move, and it leaves. Returns once it has left.
    async fn drain(&self, name: &str) -> anyhow::Result<()>;

    /// Holds `backend` (`store`, `log` or `all`) on node `node`, or on every node, for `d`;
    /// the names of the nodes stalled.
    async fn stall(
        &self,
        node: Option<u32>,
        backend: &str,
        d: Duration,
    ) -> anyhow::Result<Vec<String>>;

    /// Stops node `node`'s process for `d` (SIGSTOP, then SIGCONT); its name.
    async fn pause(&self, node: u32, d: Duration) -> anyhow::Result<String>;

    /// Cuts node `node` off from its clients for `d`; its name.
    async fn partition(&self, node: u32, d: Duration) -> anyhow::Result<String>;

    /// Stops whatever the drill started.
    async fn shutdown(&self) -> anyhow::Result<()>;
}

/// How long an admin call may take before the fault counts as not applied.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST path` on a node's admin port, which must answer 2xx; the body.
async fn admin_post(admin: SocketAddr, token: Option<&str>, path: &str) -> anyhow::Result<String> {
    let (status, body) =
        levee_relay::admin_client::request(admin, token, "POST", path, ADMIN_TIMEOUT).await?;
    if !(200..300).contains(&status) {
        bail!("{admin} answered {status} to POST {path}: {}", body.trim());
    }
    Ok(body)
}

/// Stalls `backend` for `d` on each of `nodes` through their admin ports.
async fn stall_through_admin(
    nodes: &[NodeSummary],
    token: Option<&str>,
    backend: &str,
    d: Duration,
) -> anyhow::Result<Vec<String>> {
    // The endpoint takes whole seconds; a fraction rounds up rather than to nothing.
    let secs = d.as_secs_f64().ceil().max(1.0) as u64;
    let path = format!("/admin/faults/stall?secs={secs}&backend={backend}");
    let mut stalled = Vec::new();
    for n in nodes {
        let admin = n
            .admin
            .ok_or_else(|| anyhow!("{} has no admin port to stall it through", n.name))?;
        admin_post(admin, token, &path)
            .await
            .with_context(|| format!("stalling {}", n.name))?;
        stalled.push(n.name.clone());
    }
    Ok(stalled)
}

/// The 1-based `node` among `nodes`, with a clear error when there is none.
fn numbered<'a>(
    nodes: &'a [NodeSummary],
    node: u32,
    what: &str,
) -> anyhow::Result<&'a NodeSummary> {
    node.checked_sub(1)
        .and_then(|i| nodes.get(i as usize))
        .ok_or_else(|| anyhow!("{what}: there is no node {node} ({} known)", nodes.len()))
}
