//! `levee-surge`: a signup wave against one node, with admission control on and off, side
//! by side in one run.
//!
//! First it measures, on a node with admission off, the node's messaging capacity (sends/s
//! acknowledged, closed loop) and registration capacity (new connection + registration per
//! second, closed loop). Then, for each mode and each multiplier, on a fresh node:
//! established users send at half the messaging capacity (open loop: a slow answer does not
//! slow the offered rate), 3 s unloaded, then a wave of new registrations offered at
//! multiplier × registration capacity for `--duration` seconds, then a drain period in
//! which newcomers still in line may finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use levee_bench::{LocalNode, latency_histogram, quantile_ms, record};
use levee_relay::client::{Client, Connector};
use levee_relay::{AccountId, Identity};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(
    name = "levee-surge",
    about = "Signup-wave benchmark: admission control on vs off"
)]
struct Args {
    /// Seconds the wave lasts.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds after the wave in which newcomers still in line may finish.
    #[arg(long, default_value_t = 20.0)]
    drain: f64,
    /// Wave sizes, as multiples of the measured registration capacity.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    multipliers: Vec<f64>,
    /// Established users.
    #[arg(long, default_value_t = 8)]
    established: usize,
    /// Most newcomers in progress at once on the load side (this machine's own limit).
    #[arg(long, default_value_t = 4000)]
    max_in_flight: u64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let msg_capacity = messaging_capacity(args.established).await?;
    let reg_capacity = registration_capacity().await?;
    eprintln!(
        "capacity: {msg_capacity:.0} envelopes/s end to end, {reg_capacity:.0} registrations/s"
    );
    let mut rows = Vec::new();
    for &m in &args.multipliers {
        for admission in [true, false] {
            eprintln!(
                "wave {m}x, admission {}",
                if admission { "on" } else { "off" }
            );
            rows.push(scenario(&args, admission, m, msg_capacity, reg_capacity).await?);
        }
    }
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// Registered, subscribed users of a node, all on one socket.
async fn users(connector: &Connector, n: usize) -> anyhow::Result<Vec<Arc<Client>>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let c = connector.connect(Identity::generate()?).await?;
        c.register().await?;
        out.push(Arc::new(c));
    }
    Ok(out)
}

/// Envelopes per second end to end (sent, delivered, acknowledged by the recipient), closed
/// loop, 3 s: the same measure as `levee-load`.
async fn messaging_capacity(n: usize) -> anyhow::Result<f64> {
    let node = LocalNode::start(|c| c.admission = false)?;
    let connector = Connector::new(&node.client)?;
    let clients = users(&connector, n.max(2)).await?;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let mut inbox = c.subscribe().await?;
        let (receiver, done) = (c.clone(), done.clone());
        tasks.spawn(async move {
            while let Some(first) = inbox.next().await {
                let mut ids = vec![first.envelope_id];
                while let Some(d) = inbox.try_next() {
                    ids.push(d.envelope_id);
                }
                if receiver.ack(&ids).await.is_ok() {
                    done.fetch_add(ids.len() as u64, Ordering::Relaxed);
                }
            }
        });
        let to = clients[(i + 1) % clients.len()].account();
        for _ in 0..32 {
            let c = c.clone();
            tasks.spawn(async move {
                loop {
                    let _ = c.send(&to, vec![0u8; 256]).await;
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rate = (done.load(Ordering::Relaxed) - start) as f64 / 3.0;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    node.stop().await?;
    Ok(rate)
}

/// New connection + registration per second, 64 at a time, 4 s.
async fn registration_capacity() -> anyhow::Result<f64> {
    let node = LocalNode::start(|c| c.admission = false)?;
    let connector = Connector::new(&node.client)?;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (connector, done) = (connector.clone(), done.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let Ok(id) = Identity::generate() else { return };
                if let Ok(c) = connector.connect(id).await
                    && c.register().await.is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                    c.close().await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    node.stop().await?;
    Ok(done.load(Ordering::Relaxed) as f64 / 4.0)
}

#[derive(Default)]
struct Messaging {
    ok: AtomicU64,
    failed: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

#[derive(Default)]
struct Wave {
    offered: AtomicU64,
    not_offered: AtomicU64,
    admitted_in_wave: AtomicU64,
    admitted_in_drain: AtomicU64,
    waiting_at_end: AtomicU64,
    hard_failures: AtomicU64,
    requests: AtomicU64,
}

#[derive(serde::Serialize)]
struct Row {
    admission: &'static str,
    multiplier: f64,
    registration_capacity_per_s: f64,
    offered_per_s: f64,
    goodput_per_s: f64,
    goodput_of_capacity: f64,
    admitted_after_wave: u64,
    still_waiting_with_ticket: u64,
    hard_failures: u64,
    not_offered: u64,
    requests_per_admitted: f64,
    send_success: f64,
    unloaded_p99_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    p99_vs_unloaded: f64,
}

async fn scenario(
    args: &Args,
    admission: bool,
    multiplier: f64,
    msg_cap: f64,
    reg_cap: f64,
) -> anyhow::Result<Row> {
    let node = LocalNode::start(|c| c.admission = admission)?;
    let mut client_config = node.client.clone();
    client_config.connect_timeout = Duration::from_secs(10);
    let connector = Connector::new(&client_config)?;
    let established = users(&connector, args.established)
        .await
        .context("established users")?;
    let epoch = Instant::now();

    // Receivers: latency from send to push.
    let messaging = Arc::new(Messaging::default());
    let mut background = tokio::task::JoinSet::new();
    for c in &established {
        let mut inbox = c.subscribe().await?;
        let (c, m) = (c.clone(), messaging.clone());
        background.spawn(async move {
            while let Some(first) = inbox.next().await {
                let mut batch = vec![first];
                while let Some(d) = inbox.try_next() {
                    batch.push(d);
                }
                let now = epoch.elapsed().as_nanos() as u64;
                if let Some(h) = m.latency.lock().await.as_mut() {
                    for d in &batch {
                        let sent =
                            u64::from_be_bytes(d.ciphertext[..8].try_into().unwrap_or_default());
                        record(h, Duration::from_nanos(now.saturating_sub(sent)));
                    }
                }
                let _ = c
                    .ack(&batch.iter().map(|d| d.envelope_id).collect::<Vec<_>>())
                    .await;
            }
        });
    }
    // Senders: half the messaging capacity, open loop.
    let per_client = (msg_cap * 0.5 / established.len() as f64).max(1.0);
    let sending = Arc::new(AtomicBool::new(true));
    for (i, c) in established.iter().enumerate() {
        let to: AccountId = established[(i + 1) % established.len()].account();
        let (c, m, sending) = (c.clone(), messaging.clone(), sending.clone());
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_client));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while sending.load(Ordering::Relaxed) {
                tick.tick().await;
                let (c, m) = (c.clone(), m.clone());
                tokio::spawn(async move {
                    let mut payload = vec![0u8; 256];
                    payload[..8]
                        .copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                    let counter = if c.send(&to, payload).await.is_ok() {
                        &m.ok
                    } else {
                        &m.failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    }

    // Unloaded baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    *messaging.latency.lock().await = Some(latency_histogram());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unloaded = messaging
        .latency
        .lock()
        .await
        .replace(latency_histogram())
        .unwrap_or_else(latency_histogram);
    messaging.ok.store(0, Ordering::Relaxed);
    messaging.failed.store(0, Ordering::Relaxed);

    // The wave.
    let wave = Arc::new(Wave::default());
    let rate = reg_cap * multiplier;
    let wave_len = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let wave_end = start + wave_len;
    let give_up = wave_end + Duration::from_secs_f64(args.drain);
    let connectors: Vec<Connector> = (0..4)
        .map(|_| Connector::new(&client_config))
        .collect::<Result<_, _>>()?;
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut newcomers = tokio::task::JoinSet::new();
    let mut spawned = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while Instant::now() < wave_end {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while spawned < due {
            spawned += 1;
            if in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
                wave.not_offered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            wave.offered.fetch_add(1, Ordering::Relaxed);
            in_flight.fetch_add(1, Ordering::Relaxed);
            let connector = connectors[spawned as usize % connectors.len()].clone();
            let (wave, in_flight) = (wave.clone(), in_flight.clone());
            newcomers.spawn(async move {
                newcomer(connector, &wave, wave_end, give_up).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        while newcomers.try_join_next().is_some() {}
    }
    sending.store(false, Ordering::Relaxed);
    let surge = messaging
        .latency
        .lock()
        .await
        .take()
        .unwrap_or_else(latency_histogram);
    let (ok, failed) = (
        messaging.ok.load(Ordering::Relaxed),
        messaging.failed.load(Ordering::Relaxed),
    );
    while newcomers.join_next().await.is_some() {}
    background.abort_all();
    while background.join_next().await.is_some() {}
    node.stop().await?;

    let admitted = wave.admitted_in_wave.load(Ordering::Relaxed)
        + wave.admitted_in_drain.load(Ordering::Relaxed);
    let goodput = wave.admitted_in_wave.load(Ordering::Relaxed) as f64 / wave_len.as_secs_f64();
    let unloaded_p99 = quantile_ms(&unloaded, 0.99);
    Ok(Row {
        admission: if admission { "on" } else { "off" },
        multiplier,
        registration_capacity_per_s: reg_cap,
        offered_per_s: wave.offered.load(Ordering::Relaxed) as f64 / wave_len.as_secs_f64(),
        goodput_per_s: goodput,
        goodput_of_capacity: goodput / reg_cap,
        admitted_after_wave: wave.admitted_in_drain.load(Ordering::Relaxed),
        still_waiting_with_ticket: wave.waiting_at_end.load(Ordering::Relaxed),
        hard_failures: wave.hard_failures.load(Ordering::Relaxed),
        not_offered: wave.not_offered.load(Ordering::Relaxed),
        requests_per_admitted: wave.requests.load(Ordering::Relaxed) as f64
            / admitted.max(1) as f64,
        send_success: ok as f64 / (ok + failed).max(1) as f64,
        unloaded_p99_ms: unloaded_p99,
        p50_ms: quantile_ms(&surge, 0.5),
        p99_ms: quantile_ms(&surge, 0.99),
        p99_vs_unloaded: quantile_ms(&surge, 0.99) / unloaded_p99.max(1e-3),
    })
}

/// One newcomer: connect, register, wait in line as told until `give_up`.
async fn newcomer(connector: Connector, wave: &Wave, wave_end: Instant, give_up: Instant) {
    let Ok(identity) = Identity::generate() else {
        return;
    };
    wave.requests.fetch_add(1, Ordering::Relaxed); // the connection itself
    let Ok(client) = connector.connect(identity).await else {
        wave.hard_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut held_ticket = false;
    let outcome = tokio::time::timeout_at(
        give_up.into(),
        client.register_waiting(|_| {
            held_ticket = true;
            wave.requests.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .await;
    wave.requests.fetch_add(1, Ordering::Relaxed); // the attempt that ended it
    match outcome {
        Ok(Ok(_)) if Instant::now() <= wave_end => {
            wave.admitted_in_wave.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(_)) => {
            wave.admitted_in_drain.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) if held_ticket => {
            wave.waiting_at_end.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            wave.hard_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    client.close().await;
}

fn print_table(rows: &[Row]) {
    println!(
        "| wave | admission | offered/s (not offered) | goodput/s (of capacity) | admitted after wave | waiting with ticket | hard failures | requests per admitted | send success | msg p50 | msg p99 (× unloaded) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {}× | {} | {:.0} ({}) | {:.0} ({:.0}%) | {} | {} | {} | {:.2} | {:.2}% | {:.1} ms | {:.1} ms ({:.2}×) |",
            r.multiplier,
            r.admission,
            r.offered_per_s,
            r.not_offered,
            r.goodput_per_s,
            100.0 * r.goodput_of_capacity,
            r.admitted_after_wave,
            r.still_waiting_with_ticket,
            r.hard_failures,
            r.requests_per_admitted,
            100.0 * r.send_success,
            r.p50_ms,
            r.p99_ms,
            r.p99_vs_unloaded,
        );
    }
}
