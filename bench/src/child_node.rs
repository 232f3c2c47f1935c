//! A [`LocalNode`] in a child process of the load tool, so that the node can be given a CPU
//! budget of its own ([`crate::cpu_budget`]) while the load runs beside it unconstrained.
//!
//! The load tool re-runs its own executable with a hidden subcommand that calls
//! [`serve`]; the child prints one line saying where the node listens, then runs until its
//! standard input closes (so a parent that dies takes its node with it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context, bail};
use levee_client::ClientConfig;
use levee_client::{Fingerprint, Trust};

use crate::LocalNode;

/// What the child tells its parent once the node is up.
#[derive(serde::Serialize, serde::Deserialize)]
struct Ready {
    server: SocketAddr,
    fingerprint: String,
    admin: Option<SocketAddr>,
}

/// The child's side: starts a node with the configuration changed by `tune`, announces it
/// on standard output and stops it when standard input reaches its end.
pub async fn serve(tune: impl FnOnce(&mut levee_relay::NodeConfig)) -> anyhow::Result<()> {
    let node = LocalNode::start(tune)?;
    let Trust::Fingerprint(fingerprint) = &node.client.trust else {
        bail!("the local node is pinned by fingerprint");
    };
    let ready = Ready {
        server: node.client.server,
        fingerprint: fingerprint.to_string(),
        admin: node.admin,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&ready)?)?;
    out.flush()?;
    drop(out);
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    })
    .await?;
    node.stop().await
}

/// The parent's handle on a node running in a child process.
pub struct ChildNode {
    /// How clients reach it.
    pub client: ClientConfig,
    /// Where it serves `/metrics`, if asked to.
    pub admin: Option<SocketAddr>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl ChildNode {
    /// Runs `command` (this executable with the subcommand that calls [`serve`]) and waits
    /// until the node in it is ready.
    pub async fn start(mut command: Command) -> anyhow::Result<Self> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().context("cannot start the node process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the node's standard output")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let ready: Ready = match serde_json::from_str(&line) {
            Ok(ready) => ready,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("the node process did not start ({status}): {e}");
            }
        };
        let fingerprint: Fingerprint = ready.fingerprint.parse().map_err(anyhow::Error::msg)?;
        Ok(Self {
            client: ClientConfig::new(ready.server, Trust::Fingerprint(fingerprint)),
            admin: ready.admin,
            child: Some(child),
            stdin,
        })
    }

    /// The node's process id, while it runs.
    pub fn pid(&self) -> anyhow::Result<u32> {
        Ok(self.child.as_ref().context("the node has stopped")?.id())
    }

    /// Kills the node process at once (SIGKILL: a crash, nothing flushed or said goodbye)
    /// and waits for it to end.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            tokio::task::spawn_blocking(move || child.wait()).await??;
        }
        Ok(())
    }

    /// Stops the node (closing its standard input) and waits for the process to end.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = tokio::task::spawn_blocking(move || child.wait()).await??;
        if !status.success() {
            bail!("the node process ended with {status}");
        }
        Ok(())
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        // Stopped already, or the parent is unwinding: make sure no node outlives it.
        drop(self.stdin.take());
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How busy a process is: its CPU time between two readings over what `cores` give in
/// that time.
pub struct CpuMeter {
    pid: u32,
    cores: f64,
    last: Option<(std::time::Instant, std::time::Duration)>,
}

impl CpuMeter {
    /// Takes the first reading.
    pub fn new(pid: u32, cores: f64) -> Self {
        let last = process_cpu_time(pid)
            .ok()
            .map(|t| (std::time::Instant::now(), t));
        Self { pid, cores, last }
    }

    /// The share of `cores` the process used since the last reading (1.0: all of them), and
    /// takes a new reading; `None` if either reading failed or no time has passed.
    pub fn busy(&mut self) -> Option<f64> {
        let (wall, cpu) = self.since_last()?;
        let wall = wall.as_secs_f64();
        (wall > 1e-3).then(|| cpu.as_secs_f64() / (wall * self.cores))
    }

    /// The CPU time the process used since the last reading, and takes a new reading;
    /// `None` if either reading failed.
    pub fn used(&mut self) -> Option<std::time::Duration> {
        self.since_last().map(|(_, cpu)| cpu)
    }

    /// Wall time and CPU time since the last reading; takes a new one.
    fn since_last(&mut self) -> Option<(std::time::Duration, std::time::Duration)> {
        let now = process_cpu_time(self.pid)
            .ok()
            .map(|t| (std::time::Instant::now(), t));
        let (before, after) = (self.last, now);
        self.last = now;
        let ((t0, cpu0), (t1, cpu1)) = (before?, after?);
        Some((t1 - t0, cpu1.saturating_sub(cpu0)))
    }
}

/// Resident memory of process `pid` in bytes (Linux: `VmRSS` in `/proc/<pid>/status`).
pub fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS line in /proc/<pid>/status")?;
    Ok(kib * 1024)
}

/// CPU time process `pid` has used so far, all its threads together, including threads
/// that have ended (Linux: user and system time in `/proc/<pid>/stat`, in clock ticks).
///
/// Not the sum of `/proc/<pid>/task/*/schedstat`, which this used to be: it has nanosecond
/// resolution, but loses a thread's time when the thread ends, and tokio ends its blocking
/// threads after 10 s idle; with 30,000 connections opened, a node's idle CPU read as 0.
fn process_cpu_time(pid: u32) -> anyhow::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = stat.rsplit_once(')').context("/proc/<pid>/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `after_name` starts at field 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("/proc/<pid>/stat")?.parse()?)
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(std::time::Duration::from_millis(
        total * 1000 / CLOCK_TICKS_PER_SEC,
    ))
}

/// Linux's USER_HZ, the unit of `/proc/<pid>/stat` times: 100 on every architecture Linux
/// exports to user space (it is fixed, unlike the kernel's internal HZ).
const CLOCK_TICKS_PER_SEC: u64 = 100;
