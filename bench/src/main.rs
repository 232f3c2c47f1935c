//! `levee-load`: end-to-end load against a relay node.
//!
//! C clients connect, register and subscribe; client i sends to client i+1 with W sends in
//! flight each. An envelope counts once its recipient has received it and the node has
//! answered the recipient's acknowledgement, so one count is the whole path: send → durable
//! in the delivery log → stored in the mailbox → pushed → acknowledged (deleted durably).
//! Latency is from the start of the send to the push arriving at the recipient.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use levee_bench::{LocalNode, latency_histogram, quantile_ms, record};
use levee_client::{Client, ClientConfig};
use levee_client::{Fingerprint, Trust};
use levee_relay::Identity;
use tokio::sync::Mutex;

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
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

struct Shared {
    epoch: Instant,
    measuring: AtomicBool,
    stop: AtomicBool,
    completed: AtomicU64,
    sent: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections < 2 || args.window == 0 || args.size < 8 || args.delivery_window == 0 {
        bail!("need --connections >= 2, --window >= 1, --size >= 8 and --delivery-window >= 1");
    }
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut local = None;
    let mut config = match (args.server, args.fingerprint) {
        (Some(server), Some(fp)) => ClientConfig::new(server, Trust::Fingerprint(fp)),
        _ => {
            let node = LocalNode::start(|c| c.delivery_window = args.delivery_window)?;
            let config = node.client.clone();
            local = Some(node);
            config
        }
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
        latency_us: Mutex::new(latency_histogram()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let inbox = client.subscribe().await?;
        tasks.spawn(receive(client.clone(), inbox, shared.clone()));
        let to = clients[(i + 1) % clients.len()].account();
        for _ in 0..args.window {
            tasks.spawn(send_loop(client.clone(), to, args.size, shared.clone()));
        }
    }

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let start_completed = shared.completed.load(Ordering::Relaxed);
    shared.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let completed = shared.completed.load(Ordering::Relaxed) - start_completed;
    shared.stop.store(true, Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let h = shared.latency_us.lock().await;
    let rate = completed as f64 / elapsed;
    let ms = |q: f64| quantile_ms(&h, q);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "connections": args.connections, "window": args.window, "size": args.size,
                "delivery_window": args.delivery_window,
                "seconds": elapsed, "envelopes": completed, "envelopes_per_sec": rate,
                "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0,
            })
        );
    } else {
        println!(
            "connections {} × window {} × {} B envelopes, {:.1} s measured",
            args.connections, args.window, args.size, elapsed
        );
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
    }
    drop(h);
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    if let Some(node) = local {
        node.stop().await?;
    }
    Ok(())
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
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Receives, records latency, acknowledges whatever has arrived in one request.
async fn receive(client: Arc<Client>, mut inbox: levee_client::Deliveries, shared: Arc<Shared>) {
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
            for d in &batch {
                let sent = u64::from_be_bytes(d.ciphertext[..8].try_into().unwrap_or_default());
                record(&mut h, Duration::from_nanos(now.saturating_sub(sent)));
            }
        }
        let ids: Vec<u64> = batch.iter().map(|d| d.envelope_id).collect();
        if client.ack(&ids).await.is_ok() {
            shared
                .completed
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
        }
    }
}
