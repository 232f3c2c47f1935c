//! `levee-load`: end-to-end load against a relay node.
//!
//! C clients connect, register and subscribe; client i sends to client i+1 with W sends in
//! flight each. An envelope counts once its recipient has received it and the node has
//! answered the recipient's acknowledgement, so one count is the whole path: send → durable
//! in the delivery log → stored in the mailbox → pushed → acknowledged (deleted durably).
//! Latency is from the start of the send to the push arriving at the recipient.
//!
//! Two ways to offer load:
//! - closed loop (the default): W sends in flight per connection, each slot sending again
//!   once the last send was answered. Finds the most the node sustains, but its latency is
//!   flattered: a slow answer also delays the sends behind it (coordinated omission).
//! - open loop (`--rate R`): R sends per second in all, each started at its scheduled time
//!   whatever happened to the ones before, and its latency counted from that time. This is
//!   the latency a user sees at a given load.
//!
//! With `--node-process` the in-process node runs in a child process instead, so the node's
//! CPU time is measured apart from the load's (`node_cpu_s`, `load_cpu_s`): on a shared
//! machine, envelopes per CPU-second compare where envelopes per second cannot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use levee_bench::child_node::{self, ChildNode, CpuMeter};
use levee_bench::{LocalNode, latency_histogram, quantile_ms, record};
use levee_client::{Client, ClientConfig};
use levee_client::{Fingerprint, Trust};
use levee_relay::Identity;
use tokio::sync::{Mutex, Semaphore};

/// Sends one connection may have started and not yet had answered in open-loop mode. A
/// node that falls this far behind is overloaded; further sends are counted as missed
/// rather than piling up in the load tool's memory.
const OPEN_LOOP_OUTSTANDING: usize = 20_000;

#[derive(Parser, Debug)]
#[command(
    name = "levee-load",
    about = "End-to-end load generator for a Levee relay node"
)]
struct Args {
    /// Target an existing node; by default a node with embedded storage is started in this
    /// process, in a temporary directory.
    #[arg(long, requires = "fingerprint")]
    server: Option<SocketAddr>,
    /// The target node's certificate fingerprint (with --server).
    #[arg(long)]
    fingerprint: Option<Fingerprint>,
    /// Client connections.
    #[arg(long, short = 'c', default_value_t = 8)]
    connections: usize,
    /// Sends in flight per connection.
    #[arg(long, short = 'w', default_value_t = 64)]
    window: usize,
    /// Envelope size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Deliveries a recipient may hold unacknowledged (the client's `delivery_window`, and
    /// the in-process node's limit); to compare flow-control settings.
    #[arg(long, default_value_t = levee_client::DEFAULT_DELIVERY_WINDOW)]
    delivery_window: u32,
    /// Open loop: offer this many envelopes per second in all (spread evenly over the
    /// connections), each send started on schedule and timed from its scheduled start.
    /// Without it, the load is closed-loop with --window sends in flight per connection.
    #[arg(long)]
    rate: Option<f64>,
    /// Run the node in a child process, to measure its CPU time apart from the load's.
    #[arg(long, conflicts_with = "server")]
    node_process: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also report latency over time: envelopes bucketed by the time their send started,
    /// in buckets of this many milliseconds (count, p50, p99, max each), to see when a
    /// tail happened rather than only that it did.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    timeline: Option<u64>,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(clap::Subcommand, Debug)]
enum Role {
    /// The node of `--node-process`, in the child.
    #[command(hide = true)]
    Node {
        #[arg(long)]
        delivery_window: u32,
    },
}

struct Shared {
    epoch: Instant,
    measuring: AtomicBool,
    stop: AtomicBool,
    completed: AtomicU64,
    sent: AtomicU64,
    /// Open loop: sends not started because the connection had too many outstanding.
    missed: AtomicU64,
    /// Sends the node refused or that failed (not retried in open loop; the slot waits
    /// 10 ms and sends again in closed loop).
    refused: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    /// `--timeline`: one histogram per bucket of send start times since `epoch`.
    timeline: Option<Mutex<Timeline>>,
}

/// Latency by when the send started (`--timeline`).
struct Timeline {
    bucket_ns: u64,
    buckets: Vec<Histogram<u64>>,
}

impl Timeline {
    fn record(&mut self, sent_ns: u64, latency: Duration) {
        let i = (sent_ns / self.bucket_ns) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, latency_histogram);
        }
        record(&mut self.buckets[i], latency);
    }

    /// The non-empty buckets, in order.
    fn rows(&self) -> Vec<TimelineRow> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(i, h)| TimelineRow {
                at_s: (i as u64 * self.bucket_ns) as f64 / 1e9,
                envelopes: h.len(),
                p50_ms: quantile_ms(h, 0.5),
                p99_ms: quantile_ms(h, 0.99),
                max_ms: h.max() as f64 / 1000.0,
            })
            .collect()
    }
}

/// One bucket of `--timeline`: the envelopes whose send started in it.
#[derive(serde::Serialize)]
struct TimelineRow {
    /// Start of the bucket, in seconds since the run began.
    at_s: f64,
    envelopes: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Where the node under load runs.
enum Target {
    Remote,
    InProcess(LocalNode),
    Child(ChildNode),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Role::Node { delivery_window }) = args.role {
        return tokio::runtime::Runtime::new()?.block_on(child_node::serve(|c| {
            c.delivery_window = delivery_window;
        }));
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of envelopes per second");
    }
    if args.connections < 2 || args.window == 0 || args.size < 8 || args.delivery_window == 0 {
        bail!("need --connections >= 2, --window >= 1, --size >= 8 and --delivery-window >= 1");
    }
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (target, mut config) = match (args.server, args.fingerprint) {
        (Some(server), Some(fp)) => (
            Target::Remote,
            ClientConfig::new(server, Trust::Fingerprint(fp)),
        ),
        _ if args.node_process => {
            let mut command = std::process::Command::new(std::env::current_exe()?);
            command.args([
                "node",
                "--delivery-window",
                &args.delivery_window.to_string(),
            ]);
            let node = ChildNode::start(command).await?;
            let config = node.client.clone();
            (Target::Child(node), config)
        }
        _ => {
            let node = LocalNode::start(|c| c.delivery_window = args.delivery_window)?;
            let config = node.client.clone();
            (Target::InProcess(node), config)
        }
    };
    let node_pid = match &target {
        Target::Child(node) => Some(node.pid()?),
        _ => None,
    };
    config.delivery_window = args.delivery_window;

    let mut clients = Vec::new();
    for _ in 0..args.connections {
        let c = Client::connect(&config, Identity::generate()?)
            .await
            .context("connecting")?;
        c.register().await.context("registering")?;
        clients.push(Arc::new(c));
    }
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        missed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        latency_us: Mutex::new(latency_histogram()),
        timeline: args.timeline.map(|ms| {
            Mutex::new(Timeline {
                bucket_ns: ms * 1_000_000,
                buckets: Vec::new(),
            })
        }),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let inbox = client.subscribe().await?;
        tasks.spawn(receive(client.clone(), inbox, shared.clone()));
        let to = clients[(i + 1) % clients.len()].account();
        if let Some(rate) = args.rate {
            let per_connection = rate / args.connections as f64;
            tasks.spawn(open_loop(
                client.clone(),
                to,
                args.size,
                per_connection,
                shared.clone(),
            ));
        } else {
            for _ in 0..args.window {
                tasks.spawn(send_loop(client.clone(), to, args.size, shared.clone()));
            }
        }
    }

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let start_completed = shared.completed.load(Ordering::Relaxed);
    let start_missed = shared.missed.load(Ordering::Relaxed);
    let start_refused = shared.refused.load(Ordering::Relaxed);
    // The node's CPU when it has a process of its own, and this process's.
    let mut node_cpu = node_pid.map(|pid| CpuMeter::new(pid, 1.0));
    let mut load_cpu = CpuMeter::new(std::process::id(), 1.0);
    shared.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let completed = shared.completed.load(Ordering::Relaxed) - start_completed;
    let missed = shared.missed.load(Ordering::Relaxed) - start_missed;
    let refused = shared.refused.load(Ordering::Relaxed) - start_refused;
    let node_cpu = node_cpu
        .as_mut()
        .and_then(CpuMeter::used)
        .map(|d| d.as_secs_f64());
    let load_cpu = load_cpu.used().unwrap_or_default().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let h = shared.latency_us.lock().await;
    let rate = completed as f64 / elapsed;
    let ms = |q: f64| quantile_ms(&h, q);
    let timeline = match &shared.timeline {
        Some(t) => t.lock().await.rows(),
        None => Vec::new(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "connections": args.connections, "window": args.window, "size": args.size,
                "delivery_window": args.delivery_window, "offered_per_sec": args.rate,
                "seconds": elapsed, "envelopes": completed, "envelopes_per_sec": rate,
                "missed": missed, "refused": refused,
                "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0,
                "node_cpu_s": node_cpu, "load_cpu_s": load_cpu, "timeline": timeline,
            })
        );
    } else {
        match args.rate {
            Some(offered) => println!(
                "connections {} × {} B envelopes, open loop at {offered:.0}/s, {:.1} s measured",
                args.connections, args.size, elapsed
            ),
            None => println!(
                "connections {} × window {} × {} B envelopes, {:.1} s measured",
                args.connections, args.window, args.size, elapsed
            ),
        }
        println!(
            "end-to-end (send → durable → pushed → acked): {completed} envelopes, {rate:.0} envelopes/s"
        );
        println!(
            "latency send → push: p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
        if refused > 0 {
            println!("refused: {refused} sends refused by the node or failed");
        }
        if missed > 0 {
            println!(
                "missed: {missed} sends not started ({OPEN_LOOP_OUTSTANDING} outstanding on a connection)"
            );
        }
        if !timeline.is_empty() {
            println!(
                "latency by when the send started (s since start: envelopes, p50, p99, max ms):"
            );
            for row in &timeline {
                println!(
                    "  {:8.2}  {:7}  {:8.2}  {:8.2}  {:8.2}",
                    row.at_s, row.envelopes, row.p50_ms, row.p99_ms, row.max_ms
                );
            }
        }
        if let Some(node_cpu) = node_cpu {
            println!(
                "CPU: node {node_cpu:.2} s ({:.0} envelopes per node CPU-second), load {load_cpu:.2} s",
                completed as f64 / node_cpu.max(f64::MIN_POSITIVE)
            );
        }
    }
    drop(h);
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    match target {
        Target::Remote => {}
        Target::InProcess(node) => node.stop().await?,
        Target::Child(node) => node.stop().await?,
    }
    Ok(())
}

/// One connection's open-loop sender: starts a send every `1 / rate` seconds, each stamped
/// with (and later timed from) its scheduled start, however late the ones before are.
async fn open_loop(
    client: Arc<Client>,
    to: levee_relay::AccountId,
    size: usize,
    rate: f64,
    shared: Arc<Shared>,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let outstanding = Arc::new(Semaphore::new(OPEN_LOOP_OUTSTANDING));
    // Dropping the set (this task aborted) aborts the sends it still holds.
    let mut sends = tokio::task::JoinSet::new();
    let begin = tokio::time::Instant::now();
    for k in 0u32.. {
        let due = begin + period * k;
        tokio::time::sleep_until(due).await;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        while sends.try_join_next().is_some() {}
        let Ok(permit) = outstanding.clone().try_acquire_owned() else {
            shared.missed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let scheduled = due.into_std().saturating_duration_since(shared.epoch);
        let mut payload = vec![0u8; size];
        payload[..8].copy_from_slice(&(scheduled.as_nanos() as u64).to_be_bytes());
        let (client, shared) = (client.clone(), shared.clone());
        sends.spawn(async move {
            // A refused send is not retried: the schedule moves on, and the envelope never
            // reaches the recipient; it is counted as refused.
            if client.send(&to, payload).await.is_ok() {
                shared.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.refused.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}

/// One send slot: sends, waits for the durable answer, sends again.
async fn send_loop(
    client: Arc<Client>,
    to: levee_relay::AccountId,
    size: usize,
    shared: Arc<Shared>,
) {
    let mut payload = vec![0u8; size];
    while !shared.stop.load(Ordering::Relaxed) {
        let t = shared.epoch.elapsed().as_nanos() as u64;
        payload[..8].copy_from_slice(&t.to_be_bytes());
        if client.send(&to, payload.clone()).await.is_err() {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Acknowledgements one connection may have in flight. The receiver goes on reading while
/// they are answered, as a messaging client would: timing a delivery only after the last
/// acknowledgement came back would add that round trip (a durable delete) to its latency.
const ACKS_IN_FLIGHT: usize = 4;

/// Receives, records latency, acknowledges whatever has arrived in one request.
async fn receive(client: Arc<Client>, mut inbox: levee_client::Deliveries, shared: Arc<Shared>) {
    let acks = Arc::new(Semaphore::new(ACKS_IN_FLIGHT));
    // Dropping the set (this task aborted) aborts the acknowledgements still in flight.
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(first) = inbox.next().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match inbox.try_next() {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        let now = shared.epoch.elapsed().as_nanos() as u64;
        if shared.measuring.load(Ordering::Relaxed) {
            let mut h = shared.latency_us.lock().await;
            let mut timeline = match &shared.timeline {
                Some(t) => Some(t.lock().await),
                None => None,
            };
            for d in &batch {
                let sent = u64::from_be_bytes(d.ciphertext[..8].try_into().unwrap_or_default());
                let latency = Duration::from_nanos(now.saturating_sub(sent));
                record(&mut h, latency);
                if let Some(t) = timeline.as_mut() {
                    t.record(sent, latency);
                }
            }
        }
        let ids: Vec<u64> = batch.iter().map(|d| d.envelope_id).collect();
        while in_flight.try_join_next().is_some() {}
        let Ok(permit) = acks.clone().acquire_owned().await else {
            return;
        };
        let (client, shared) = (client.clone(), shared.clone());
        in_flight.spawn(async move {
            if client.ack(&ids).await.is_ok() {
                shared
                    .completed
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}
