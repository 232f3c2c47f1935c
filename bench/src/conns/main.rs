//! `levee-conns`: many concurrent QUIC connections held by one relay node.
//!
//! The node runs in a child process (so its memory and CPU are its own); worker processes
//! (this executable again) hold the connections, each a real client session: connected,
//! registered, subscribed. The driver opens them in steps, and at each step reads the
//! node's resident memory. With all of them held it measures the node's idle CPU and the
//! latency of a trickle of messages across them, the same trickle it first measured with
//! only `--baseline` connections. Then it kills the node (SIGKILL) and restarts it on the
//! same port and data: every client reconnects, as after a crash (at most
//! `--reconnect-concurrency` under way per worker: see `worker`), and the driver reports
//! how long until 99% and all are back, the node's and the clients' CPU and the node's peak
//! memory meanwhile, and the trickle's latency afterwards.
//!
//! The workers run under `nice -n 10`: on one machine they stand for devices elsewhere,
//! and must not take the node's cores. QUIC needs no file descriptor per connection (one
//! UDP socket carries them all on each side), so no descriptor limits need raising: each
//! worker opens one socket per 5,000 connections.

mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use levee_bench::child_node::{self, ChildNode, CpuMeter, resident_bytes};
use levee_bench::{latency_histogram, quantile_ms, record};
use levee_client::{ClientConfig, Fingerprint, Trust};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use worker::{Command, Reply, Status, Trickle};

/// The node's name, by which its series are found on its metrics page.
const NODE_NAME: &str = "node-1";

#[derive(Parser, Debug)]
#[command(
    name = "levee-conns",
    about = "Hold many QUIC connections to one relay node: memory per connection, idle CPU, \
             messaging latency while holding them, and a mass reconnect after a crash"
)]
struct Args {
    /// Connections to hold at the end.
    #[arg(long, short = 'c', default_value_t = 100_000)]
    connections: usize,
    /// Steps on the way, at which the node's memory is read (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    steps: Vec<usize>,
    /// Connections the trickle's baseline latency is measured with.
    #[arg(long, default_value_t = 100)]
    baseline: usize,
    /// Client processes sharing the connections.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Connection set-ups each worker has under way at once.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// Reconnects each worker has under way at once after the crash (see the worker's
    /// notes: more than its share of two cores can handshake within the client's connect
    /// timeout collapses the load generator, not the node). The default, 256 per worker
    /// (1,024 in all), is four times the node's handshake budget.
    #[arg(long, default_value_t = 256)]
    reconnect_concurrency: usize,
    /// Messages per second in the trickle.
    #[arg(long, default_value_t = 200.0)]
    trickle_rate: f64,
    /// Seconds each trickle lasts.
    #[arg(long, default_value_t = 20.0)]
    trickle_secs: f64,
    /// Seconds over which the node's idle CPU is measured with every connection held.
    #[arg(long, default_value_t = 20.0)]
    idle_secs: f64,
    /// Seconds to wait after each step before reading memory.
    #[arg(long, default_value_t = 5.0)]
    settle_secs: f64,
    /// Skip the crash and mass reconnect.
    #[arg(long)]
    no_reconnect: bool,
    /// Seconds the mass reconnect may take before the run gives up waiting.
    #[arg(long, default_value_t = 180.0)]
    reconnect_timeout_secs: f64,
    /// Print one JSON object after the table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(clap::Subcommand, Debug)]
enum Role {
    /// The node, in its own process.
    #[command(hide = true)]
    Node {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        max_connections: u32,
    },
    /// A process holding a share of the connections.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        fingerprint: Fingerprint,
        #[arg(long)]
        concurrency: usize,
        #[arg(long)]
        reconnect_concurrency: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.role {
        Some(Role::Node {
            data_dir,
            listen,
            max_connections,
        }) => runtime.block_on(child_node::serve(|c| {
            c.data_dir = data_dir;
            c.listen = listen;
            c.max_connections = max_connections;
            c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            c.node_name = NODE_NAME.into();
        })),
        Some(Role::Worker {
            server,
            fingerprint,
            concurrency,
            reconnect_concurrency,
        }) => {
            let mut config = ClientConfig::new(server, Trust::Fingerprint(fingerprint));
            // A held connection takes a trickle at most: a small window keeps the
            // workers' memory down without limiting anything measured.
            config.delivery_window = 16;
            runtime.block_on(worker::run(config, concurrency, reconnect_concurrency))
        }
        None => {
            if args.workers == 0 || args.connections < 2 * args.workers.max(args.baseline) {
                bail!("need --workers >= 1 and --connections of at least twice --baseline");
            }
            runtime.block_on(drive(args))
        }
    }
}

/// A worker process and its command channel.
struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    replies: Lines<BufReader<ChildStdout>>,
}

impl WorkerProcess {
    fn start(config: &ClientConfig, args: &Args) -> anyhow::Result<Self> {
        let Trust::Fingerprint(fingerprint) = &config.trust else {
            bail!("the node is pinned by fingerprint");
        };
        // At a lower priority than the node: on one machine the clients would otherwise
        // take the cores the node needs (four client processes have four times its
        // threads), and a mass reconnect would measure the load generator, not the node.
        let mut child = tokio::process::Command::new("nice")
            .args(["-n", "10"])
            .arg(std::env::current_exe()?)
            .args(["worker", "--server", &config.server.to_string()])
            .args(["--fingerprint", &fingerprint.to_string()])
            .args(["--concurrency", &args.open_concurrency.to_string()])
            .args([
                "--reconnect-concurrency",
                &args.reconnect_concurrency.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let stdin = child.stdin.take().context("a worker's standard input")?;
        let stdout = child.stdout.take().context("a worker's standard output")?;
        Ok(Self {
            child,
            stdin,
            replies: BufReader::new(stdout).lines(),
        })
    }

    async fn send(&mut self, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        Ok(self.stdin.flush().await?)
    }

    async fn reply(&mut self) -> anyhow::Result<Reply> {
        match self.replies.next_line().await? {
            Some(line) => Ok(serde_json::from_str(&line)?),
            None => bail!("a worker ended: {:?}", self.child.try_wait()?),
        }
    }
}

/// All workers: a command to each (`command(i)`), then each one's reply.
async fn ask(
    workers: &mut [WorkerProcess],
    command: impl Fn(usize) -> Command,
) -> anyhow::Result<Vec<Reply>> {
    for (i, w) in workers.iter_mut().enumerate() {
        w.send(&command(i)).await?;
    }
    let mut replies = Vec::with_capacity(workers.len());
    for w in workers.iter_mut() {
        match w.reply().await? {
            Reply::Failed(why) => bail!("a worker failed: {why}"),
            reply => replies.push(reply),
        }
    }
    Ok(replies)
}

async fn statuses(
    workers: &mut [WorkerProcess],
    command: impl Fn(usize) -> Command,
) -> anyhow::Result<Status> {
    let mut total = Status::default();
    for reply in ask(workers, command).await? {
        let Reply::Status(s) = reply else {
            bail!("a worker answered with the wrong reply");
        };
        total.live += s.live;
        total.failed += s.failed;
        total.lost += s.lost;
        total.lost_again += s.lost_again;
        total.back += s.back;
        total.turned_away += s.turned_away;
        total.errors += s.errors;
        total.outages_ms.extend(s.outages_ms);
    }
    Ok(total)
}

/// One trickle over all workers' connections, `rate` shared between them.
async fn trickle(workers: &mut [WorkerProcess], args: &Args) -> anyhow::Result<TrickleResult> {
    let n = workers.len() as f64;
    let replies = ask(workers, |_| Command::Trickle {
        rate: args.trickle_rate / n,
        seconds: args.trickle_secs,
    })
    .await?;
    let mut result = TrickleResult {
        latency_us: latency_histogram(),
        sent: 0,
        refused: 0,
        skipped: 0,
    };
    for reply in replies {
        let Reply::Trickle(Trickle {
            sent,
            refused,
            skipped,
            latencies_us,
        }) = reply
        else {
            bail!("a worker answered with the wrong reply");
        };
        result.sent += sent;
        result.refused += refused;
        result.skipped += skipped;
        for us in latencies_us {
            record(&mut result.latency_us, Duration::from_micros(us));
        }
    }
    Ok(result)
}

struct TrickleResult {
    latency_us: Histogram<u64>,
    sent: u64,
    refused: u64,
    skipped: u64,
}

impl TrickleResult {
    fn p50_ms(&self) -> f64 {
        quantile_ms(&self.latency_us, 0.5)
    }

    fn p99_ms(&self) -> f64 {
        quantile_ms(&self.latency_us, 0.99)
    }

    fn delivered(&self) -> u64 {
        self.latency_us.len()
    }

    fn line(&self, what: &str) -> String {
        format!(
            "trickle {what}: {} sent, {} delivered in time, {} refused, {} skipped (no live \
             sender); p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.sent,
            self.delivered(),
            self.refused,
            self.skipped,
            self.p50_ms(),
            self.p99_ms(),
            self.latency_us.max() as f64 / 1000.0
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent, "delivered": self.delivered(), "refused": self.refused,
            "skipped": self.skipped, "p50_ms": self.p50_ms(), "p99_ms": self.p99_ms(),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
        })
    }
}

/// The node's memory with a number of connections held.
struct Step {
    connections: usize,
    failed: usize,
    open_seconds: f64,
    per_second: f64,
    rss: u64,
}

fn start_node_command(
    data_dir: &std::path::Path,
    listen: SocketAddr,
    max: u32,
) -> std::process::Command {
    let mut command = std::process::Command::new(
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("levee-conns")),
    );
    command
        .arg("node")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &listen.to_string()])
        .args(["--max-connections", &max.to_string()]);
    command
}

async fn drive(args: Args) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    // Room above the target for reconnects overlapping the connections they replace.
    let max_connections = u32::try_from(args.connections + args.connections / 5 + 100)?;
    let any_port: SocketAddr = "127.0.0.1:0".parse()?;
    let mut node =
        ChildNode::start(start_node_command(data.path(), any_port, max_connections)).await?;
    let server = node.client.server;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty = resident_bytes(node.pid()?)?;
    println!(
        "node {} (pid {}, metrics on {:?}), {:.1} MiB resident with no connections",
        server,
        node.pid()?,
        node.admin,
        mib(rss_empty)
    );
    let mut workers = (0..args.workers)
        .map(|_| WorkerProcess::start(&node.client, &args))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut levels = vec![args.baseline];
    levels.extend(
        args.steps
            .iter()
            .copied()
            .filter(|&s| s > args.baseline && s < args.connections),
    );
    levels.push(args.connections);
    levels.sort_unstable();
    levels.dedup();

    let mut steps = Vec::new();
    let mut baseline = None;
    let mut held = 0;
    for &level in &levels {
        let started = Instant::now();
        let w = args.workers;
        let status = statuses(&mut workers, |i| Command::Open {
            total: level / w + usize::from(i < level % w),
        })
        .await?;
        let open_seconds = started.elapsed().as_secs_f64();
        let opened = status.live.saturating_sub(held);
        held = status.live;
        tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
        let step = Step {
            connections: status.live,
            failed: status.failed,
            open_seconds,
            per_second: opened as f64 / open_seconds.max(1e-3),
            rss: resident_bytes(node.pid()?)?,
        };
        println!(
            "{:>7} held ({} failed): opened in {:.1} s ({:.0}/s: connect, register, subscribe); \
             node {:.1} MiB, {:.1} KiB per connection",
            step.connections,
            step.failed,
            step.open_seconds,
            step.per_second,
            mib(step.rss),
            per_connection_kib(step.rss, rss_empty, step.connections)
        );
        steps.push(step);
        if level == args.baseline {
            let t = trickle(&mut workers, &args).await?;
            println!("{}", t.line(&format!("with {level} connections")));
            baseline = Some(t);
        }
    }
    let baseline = baseline.context("the baseline trickle")?;

    let mut cpu = CpuMeter::new(node.pid()?, 1.0);
    tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
    let idle_cpu = cpu.busy().context("the node's CPU time")?;
    println!(
        "idle with {held} connections: node uses {:.1}% of one core",
        idle_cpu * 100.0
    );
    let loaded = trickle(&mut workers, &args).await?;
    println!("{}", loaded.line(&format!("with {held} connections")));
    println!(
        "trickle p99 with {held} connections / with {}: {:.2}",
        args.baseline,
        loaded.p99_ms() / baseline.p99_ms().max(1e-3)
    );

    let reconnect = if args.no_reconnect {
        None
    } else {
        let crash = Crash {
            data: data.path(),
            server,
            max_connections,
            held,
        };
        let (restarted, report) = crash.and_reconnect(node, &mut workers, &args).await?;
        node = restarted;
        Some(report)
    };

    if args.json {
        let steps_json: Vec<_> = steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "connections": s.connections, "failed": s.failed,
                    "open_seconds": s.open_seconds, "opened_per_sec": s.per_second,
                    "rss_bytes": s.rss,
                    "kib_per_connection": per_connection_kib(s.rss, rss_empty, s.connections),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "rss_empty_bytes": rss_empty, "steps": steps_json,
                "idle_cpu_share_of_core": idle_cpu,
                "trickle_baseline": baseline.json(), "trickle_held": loaded.json(),
                "p99_ratio": loaded.p99_ms() / baseline.p99_ms().max(1e-3),
                "reconnect": reconnect,
            })
        );
    }
    drop(workers);
    node.stop().await
}

/// The crash and what follows it.
struct Crash<'a> {
    data: &'a std::path::Path,
    server: SocketAddr,
    max_connections: u32,
    held: usize,
}

impl Crash<'_> {
    /// Kills `node`, restarts it where it was, waits for the clients to come back and
    /// measures them; the restarted node and the report, as JSON.
    async fn and_reconnect(
        &self,
        node: ChildNode,
        workers: &mut [WorkerProcess],
        args: &Args,
    ) -> anyhow::Result<(ChildNode, serde_json::Value)> {
        let before = statuses(workers, |_| Command::Status { outages: false }).await?;
        node.kill().await?;
        let killed = Instant::now();
        let mut clients_cpu = workers_cpu(workers);
        let command = start_node_command(self.data, self.server, self.max_connections);
        let node = ChildNode::start(command).await?;
        let mut node_cpu = CpuMeter::new(node.pid()?, 1.0);
        let restarted = killed.elapsed().as_secs_f64();
        println!("node restarted (metrics on {:?})", node.admin);
        let r = mass_reconnect(workers, &node, args, before.back, self.held, killed).await?;
        let node_busy = node_cpu.busy().unwrap_or_default();
        let clients_busy: f64 = clients_cpu.iter_mut().filter_map(CpuMeter::busy).sum();
        println!(
            "mass reconnect after SIGKILL (node back up after {restarted:.1} s): 99% back in \
             {} s, all in {} s; peak node memory {:.1} MiB; meanwhile the node used {:.0}% of \
             one core, the clients {:.0}%",
            seconds(r.t99),
            seconds(r.t100),
            mib(r.peak_rss),
            node_busy * 100.0,
            clients_busy * 100.0
        );
        let (dropped, passed) = door_counts(&node).await;
        println!(
            "the restarted node's door: {dropped} attempts dropped while its handshake budget \
             was spent, {passed} let through on a pass while it was limited"
        );
        let after = trickle(workers, args).await?;
        println!("{}", after.line("after the reconnect"));
        let status = statuses(workers, |_| Command::Status { outages: true }).await?;
        let (p50, p99, max) = outage_quantiles(&status.outages_ms);
        println!(
            "outages (lost → back): p50 {p50:.1} s, p99 {p99:.1} s, max {max:.1} s; lost again \
             after coming back: {}; attempts turned away: {}; failed requests retried: {}; gave \
             up: {}",
            status.lost_again, status.turned_away, status.errors, status.failed
        );
        let report = serde_json::json!({
            "node_restart_s": restarted, "t99_s": r.t99, "t100_s": r.t100,
            "node_cpu_share_of_core": node_busy, "clients_cpu_share_of_core": clients_busy,
            "door_dropped_budget_spent": dropped, "door_passed": passed,
            "peak_rss_bytes": r.peak_rss, "trickle_after": after.json(),
            "outage_p50_s": p50, "outage_p99_s": p99, "outage_max_s": max,
            "lost_again": status.lost_again, "turned_away": status.turned_away,
            "errors": status.errors, "failed": status.failed,
        });
        Ok((node, report))
    }
}

/// From the node's metrics: new connections its door dropped while the handshake budget
/// was spent, and those it let through on a pass (0 if the page cannot be read).
async fn door_counts(node: &ChildNode) -> (u64, u64) {
    let Some(admin) = node.admin else {
        return (0, 0);
    };
    let page =
        levee_relay::admin_client::request(admin, None, "GET", "/metrics", Duration::from_secs(5))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
    let value = |series| {
        levee_relay::admin_client::series_value(&page, NODE_NAME, series).unwrap_or(0.0) as u64
    };
    (
        value("levee_connections_dropped_handshakes_full_total"),
        value("levee_connections_passed_at_door_total"),
    )
}

/// A CPU meter on each worker process.
fn workers_cpu(workers: &[WorkerProcess]) -> Vec<CpuMeter> {
    workers
        .iter()
        .filter_map(|w| w.child.id())
        .map(|pid| CpuMeter::new(pid, 1.0))
        .collect()
}

/// How the crowd came back.
struct Reconnect {
    t99: Option<f64>,
    t100: Option<f64>,
    peak_rss: u64,
}

/// Polls the workers until every connection held before the crash is back (or the timeout),
/// timing from the kill.
async fn mass_reconnect(
    workers: &mut [WorkerProcess],
    node: &ChildNode,
    args: &Args,
    back_before: u64,
    held: usize,
    killed: Instant,
) -> anyhow::Result<Reconnect> {
    let mut r = Reconnect {
        t99: None,
        t100: None,
        peak_rss: 0,
    };
    let need99 = (held as f64 * 0.99).ceil() as u64;
    let mut next_line = 0.0;
    while killed.elapsed().as_secs_f64() < args.reconnect_timeout_secs {
        tokio::time::sleep(Duration::from_millis(250)).await;
        r.peak_rss = r.peak_rss.max(resident_bytes(node.pid()?)?);
        let s = statuses(workers, |_| Command::Status { outages: false }).await?;
        let back = s.back - back_before;
        let t = killed.elapsed().as_secs_f64();
        if t >= next_line {
            println!(
                "  {t:5.1} s after the kill: {back} back, {} live, {} attempts turned away, \
                 {} requests failed, node {:.0} MiB",
                s.live,
                s.turned_away,
                s.errors,
                mib(resident_bytes(node.pid()?)?)
            );
            next_line += 5.0;
        }
        if back >= need99 && r.t99.is_none() {
            r.t99 = Some(t);
        }
        if back >= held as u64 {
            r.t100 = Some(t);
            break;
        }
    }
    Ok(r)
}

/// p50, p99 and max of outages, in seconds (nearest rank; a latency histogram would clip
/// them at its 60 s bound, and a mass reconnect's can be longer).
fn outage_quantiles(outages_ms: &[u64]) -> (f64, f64, f64) {
    let mut sorted = outages_ms.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).map_or(0.0, |&ms| ms as f64 / 1000.0)
    };
    (at(0.5), at(0.99), at(1.0))
}

fn seconds(t: Option<f64>) -> String {
    t.map_or_else(|| "(not within the timeout)".into(), |t| format!("{t:.1}"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Memory the connections added, per connection.
fn per_connection_kib(rss: u64, empty: u64, connections: usize) -> f64 {
    rss.saturating_sub(empty) as f64 / 1024.0 / connections.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_ranked_without_a_ceiling() {
        let outages: Vec<u64> = (1..=100).map(|s| s * 1_000).collect();
        assert_eq!(outage_quantiles(&outages), (50.0, 99.0, 100.0));
        assert_eq!(outage_quantiles(&[90_000]), (90.0, 90.0, 90.0));
        assert_eq!(outage_quantiles(&[]), (0.0, 0.0, 0.0));
    }

    #[test]
    fn memory_per_connection_is_what_the_connections_added() {
        let empty = 20 * 1024 * 1024;
        assert_eq!(
            per_connection_kib(empty + 1_000 * 37 * 1024, empty, 1_000),
            37.0
        );
        // Less than with none (the allocator gave memory back) reads as nothing added.
        assert_eq!(per_connection_kib(empty - 1, empty, 1_000), 0.0);
    }
}
