//! A cluster that is already running, reached through its nodes' admin ports.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use levee_relay::admission::TicketKey;
use levee_relay::local_cluster::NodeSummary;
use serde_json::Value;

use super::{ADMIN_TIMEOUT, Target, admin_post, numbered, stall_through_admin};

/// See the [module docs](super).
pub struct Remote {
    token: Option<String>,
    /// Shell command that starts one more node process (`{node}`: its number), if given.
    start_command: Option<String>,
    /// The node processes started through it, by name; killed when the drill ends.
    started: Mutex<Vec<(String, std::process::Child)>>,
    key: TicketKey,
    /// Every node known, in scenario numbering (the given ones, then those started).
    known: Mutex<Vec<NodeSummary>>,
    /// Names of the nodes the drill crashed.
    down: Mutex<BTreeSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Lists only; a panic elsewhere cannot leave them torn.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Remote {
    /// Asks each admin port who it is (`GET /admin/cluster`); `cluster_key` is the hex key
    /// in the nodes' configuration.
    /// With `start_command`, `start_node` runs it (through `sh -c`, `{node}` replaced by the
    /// new node's number) and reads the node's block from its output, as `levee node`
    /// prints it; otherwise it asks a node's admin port, which only `levee up` can do.
    pub async fn connect(
        admins: &[SocketAddr],
        token: Option<String>,
        cluster_key: &str,
        start_command: Option<String>,
    ) -> anyhow::Result<Self> {
        if admins.is_empty() {
            bail!("a running cluster needs at least one node's admin address");
        }
        let key = hex::decode(cluster_key.trim())
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| anyhow!("the cluster key must be 64 hex digits (32 bytes)"))?;
        let mut known = Vec::new();
        for &admin in admins {
            known.push(whoami(admin, token.as_deref()).await?);
        }
        Ok(Self {
            token,
            start_command,
            started: Mutex::default(),
            key: TicketKey::new(&key),
            known: Mutex::new(known),
            down: Mutex::default(),
        })
    }

    fn live(&self, node: u32, what: &str) -> anyhow::Result<NodeSummary> {
        let n = numbered(&lock(&self.known), node, what)?.clone();
        if lock(&self.down).contains(&n.name) {
            bail!("{what}: {} is down", n.name);
        }
        Ok(n)
    }
}

/// The node behind `admin`, from its own view of the cluster.
async fn whoami(admin: SocketAddr, token: Option<&str>) -> anyhow::Result<NodeSummary> {
    let (status, body) =
        levee_relay::admin_client::request(admin, token, "GET", "/admin/cluster", ADMIN_TIMEOUT)
            .await?;
    if status != 200 {
        bail!(
            "{admin} answered {status} to GET /admin/cluster: {}",
            body.trim()
        );
    }
    let view: Value =
        serde_json::from_str(&body).with_context(|| format!("{admin}: /admin/cluster"))?;
    let me = view["node"]
        .as_str()
        .ok_or_else(|| anyhow!("{admin}: /admin/cluster names no node"))?;
    let row = view["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == me))
        .ok_or_else(|| anyhow!("{admin}: {me} is not in its own view of the cluster"))?;
    summary(row, Some(admin)).with_context(|| format!("{admin}: {me}"))
}

/// A node row of `/admin/cluster` or the answer of `POST /admin/nodes`.
fn summary(row: &Value, admin: Option<SocketAddr>) -> anyhow::Result<NodeSummary> {
    let text = |field: &str| {
        row[field]
            .as_str()
            .ok_or_else(|| anyhow!("no {field} in {row}"))
    };
    Ok(NodeSummary {
        name: text("name")?.to_owned(),
        address: text("address")?.parse().context("its address")?,
        fingerprint: text("fingerprint")?
            .parse()
            .map_err(|e: String| anyhow!("its fingerprint: {e}"))?,
        admin: match admin {
            Some(a) => Some(a),
            None => row["admin"].as_str().and_then(|a| a.parse().ok()),
        },
        region: text("region").unwrap_or("local").to_owned(),
        generated_certificate: false,
    })
}

#[async_trait]
impl Target for Remote {
    fn nodes(&self) -> Vec<NodeSummary> {
        let down = lock(&self.down);
        lock(&self.known)
            .iter()
            .filter(|n| !down.contains(&n.name))
            .cloned()
            .collect()
    }

    fn ticket_key(&self) -> &TicketKey {
        &self.key
    }

    async fn kill(&self, node: u32) -> anyhow::Result<String> {
        let n = self.live(node, "kill_node")?;
        let admin = n
            .admin
            .ok_or_else(|| anyhow!("{} has no admin port", n.name))?;
        admin_post(admin, self.token.as_deref(), "/admin/faults/crash").await?;
        lock(&self.down).insert(n.name.clone());
        Ok(n.name)
    }

    async fn start(&self) -> anyhow::Result<NodeSummary> {
        if let Some(command) = &self.start_command {
            let n = lock(&self.known).len() + 1;
            let command = command.replace("{node}", &n.to_string());
            let (child, node) = tokio::task::spawn_blocking(move || spawn_node(&command))
                .await
                .context("starting a node process")??;
            lock(&self.started).push((node.name.clone(), child));
            lock(&self.known).push(node.clone());
            return Ok(node);
        }
        // Any live node of a `levee up` cluster can start one more; `levee node`
        // processes answer 501, and starting processes elsewhere is the operator's tooling.
        let entry = self
            .nodes()
            .into_iter()
            .find_map(|n| n.admin)
            .ok_or_else(|| anyhow!("start_node: no live node to ask"))?;
        let body = admin_post(entry, self.token.as_deref(), "/admin/nodes").await?;
        let row: Value = serde_json::from_str(&body).context("the new node")?;
        let node = summary(&row, None)?;
        lock(&self.known).push(node.clone());
        Ok(node)
    }

    /// A node process the drill started is sent SIGTERM, as Kubernetes stops a pod
    /// (`levee node` drains on it); any other node is asked through `POST /admin/drain`.
    /// Either way, returns once the node has left: its process exited, or its admin port
    /// stopped answering.
    async fn drain(&self, name: &str) -> anyhow::Result<()> {
        let child = {
            let mut started = lock(&self.started);
            started
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| started.remove(i).1)
        };
        if let Some(mut child) = child {
            let pid = child.id();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .context("running kill -TERM")?;
            if !sent.success() {
                bail!("kill -TERM {pid} failed ({sent})");
            }
            let waited = tokio::task::spawn_blocking(move || child.wait())
                .await
                .context("waiting for the node process")??;
            lock(&self.down).insert(name.to_owned());
            if !waited.success() {
                bail!("{name} exited with {waited} after SIGTERM");
            }
            return Ok(());
        }
        let node = lock(&self.known)
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| anyhow!("drain: no node {name}"))?;
        let admin = node
            .admin
            .ok_or_else(|| anyhow!("{name} has no admin port"))?;
        admin_post(admin, self.token.as_deref(), "/admin/drain").await?;
        while whoami(admin, self.token.as_deref()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lock(&self.down).insert(name.to_owned());
        Ok(())
    }

    async fn stall(
        &self,
        node: Option<u32>,
        backend: &str,
        d: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let nodes = match node {
            Some(n) => vec![self.live(n, "stall_backend")?],
            None => self.nodes(),
        };
        stall_through_admin(&nodes, self.token.as_deref(), backend, d).await
    }

    async fn pause(&self, node: u32, d: Duration) -> anyhow::Result<String> {
        let n = self.live(node, "pause_node")?;
        let admin = n
            .admin
            .ok_or_else(|| anyhow!("{} has no admin port", n.name))?;
        let secs = d.as_secs_f64().ceil().max(1.0) as u64;
        let path = format!("/admin/faults/pause?secs={secs}");
        admin_post(admin, self.token.as_deref(), &path).await?;
        Ok(n.name)
    }

    async fn partition(&self, _node: u32, _d: Duration) -> anyhow::Result<String> {
        bail!(
            "partition needs the drill's proxy in front of the node, which only the embedded \
             target has (a running cluster advertises its own addresses)"
        )
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        // The cluster is not ours to stop; node processes the drill started are.
        for (_, mut child) in std::mem::take(&mut *lock(&self.started)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }
}

/// Runs `command` and reads the node block it prints (`levee node ready: NAME`, then
/// `address:`, `fingerprint:`, `admin:` lines, up to `cluster:`); its output goes on being
/// read (and dropped) so the process never blocks on a full pipe.
fn spawn_node(command: &str) -> anyhow::Result<(std::process::Child, NodeSummary)> {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new("sh")
        // `exec`, so the child is the node itself and killing it stops the node.
        .args(["-c", &format!("exec {command}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = child.stdout.take().context("its output")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut row = serde_json::Map::new();
    let mut admin = None;
    for line in lines.by_ref() {
        let line = line?;
        let line = line.trim();
        if let Some(name) = line.strip_prefix("levee node ready:") {
            row.insert("name".into(), name.trim().into());
        } else if let Some((field, value)) = line.split_once(':')
            && matches!(field, "address" | "fingerprint")
        {
            row.insert(field.into(), value.trim().into());
        } else if let Some(a) = line.strip_prefix("admin:") {
            admin = a.trim().parse().ok();
        } else if line.starts_with("cluster:") {
            std::thread::spawn(move || lines.for_each(drop));
            let node = summary(&Value::Object(row), admin)?;
            return Ok((child, node));
        }
    }
    let status = child.wait()?;
    bail!("{command:?} ended ({status}) without printing a node that joined")
}
