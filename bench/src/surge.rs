//! `levee-surge`: a signup wave against one node, with admission control on and off, side
//! by side in one run.
//!
//! Three processes, all this same binary: the node (`levee-surge node`), held to a CPU
//! budget of `--node-cpus` cores by a control group; the established users, in the parent;
//! the newcomers (`levee-surge wave`), at a lower CPU priority (`nice`). On a real deployment
//! the people signing up bring their own CPUs, and a wave is many times larger than one
//! node. On one shared machine a new connection costs the load side about what it costs the
//! node, so a node given the whole machine could never be offered ten times what it absorbs;
//! a node given a fraction of a core can. The lower priority of the newcomers keeps them from
//! slowing the established users' own clients.
//!
//! First it measures, on a node with admission off, the node's messaging capacity (sends/s
//! acknowledged, closed loop); then the baseline: the established users' open-loop send
//! rate that keeps the node half busy (its CPU time, measured), at most half the messaging
//! capacity; then its registration capacity *beside the baseline*: new connection +
//! registration per second, 64 at a time — what the node can absorb on top of the users it
//! already has; and the same on a node with no baseline (its registration capacity alone).
//! The capacity alone times the share of CPU the baseline leaves is a second yardstick for
//! goodput: what the node can absorb without its users' messages costing it less because
//! they wait (see `Row::left_by_baseline_per_s`). Then, for each multiplier and each mode,
//! on a fresh node: the same baseline, `--warmup` seconds for the node to learn its usual
//! write latency, 3 s unloaded, then a wave of new registrations offered at multiplier ×
//! SLO capacity (below) for `--duration` seconds, then a drain period in which newcomers
//! still in line may finish.
//!
//! Waves are offered in multiples of the node's **SLO capacity**, measured in the same run
//! after the registration capacity: the highest steady registration rate (open loop,
//! smooth, admission off) at which the established users' message p99 stays within the SLO
//! of `levee_bench::slo` (1.25 × the unloaded p99, or 20 ms over it, whichever is larger) and
//! the node admits what is offered; found by bisection below the registration capacity,
//! one probe of `--slo-probe-secs` at a time on one node carrying the baseline.
//!
//! Admissions in ticket order are judged by the chaos drills' rule
//! (`levee_chaos::ledger::overtakes`): a newcomer admitted while someone with an earlier
//! place was still being told to wait overtook them. The time an attempt told to wait was
//! sent is taken at its earliest (the client's retry is due then), so an overtake within
//! the client's own scheduling delay can be missed, never one that did not happen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use levee_bench::child_node::{self, ChildNode, CpuMeter};
use levee_bench::cpu_budget::{self, CpuBudget};
use levee_bench::slo::{RateSearch, message_p99_slo_ms, probe_within};
use levee_bench::{latency_histogram, quantile_ms, record};
use levee_chaos::ledger::{Ending, Newcomer, overtakes};
use levee_client::{Client, ClientConfig, ClientError, Connector};
use levee_client::{Fingerprint, Trust};
use levee_relay::admission::{Place, TicketKey};
use levee_relay::{AccountId, Identity, now_ms};
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
    /// Seconds each fresh node carries the baseline alone before the wave (then 3 s more,
    /// measured as "unloaded"). A node judges its durable writes slow against the latency
    /// it usually sees, learnt over minutes; a node only seconds old has learnt that from
    /// the wave itself. Longer than the wave and drain together, so that most of what the
    /// node has seen is usual traffic, as on a node that has been running.
    #[arg(long, default_value_t = 40.0)]
    warmup: f64,
    /// Wave sizes, as multiples of the measured SLO capacity.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    multipliers: Vec<f64>,
    /// Admission settings to compare, in order (`on`, `off`).
    #[arg(long, value_delimiter = ',', default_value = "on,off", value_parser = parse_mode)]
    modes: Vec<bool>,
    /// Established users.
    #[arg(long, default_value_t = 8)]
    established: usize,
    /// Most newcomers in progress at once on the load side (this machine's own limit).
    #[arg(long, default_value_t = 50_000)]
    max_in_flight: u64,
    /// CPU the node may use, in cores, enforced by a cgroup (needs root or a delegated
    /// cgroup); 0 gives it the whole machine, shared with the load.
    #[arg(long, default_value_t = 0.25)]
    node_cpus: f64,
    /// CPU niceness of the newcomers' process (0 = same priority as the node).
    #[arg(long, default_value_t = 10)]
    wave_nice: i32,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// The node's `admission_backend_latency_ms` (default: the node's own default). A node
    /// held to a fraction of a core writes more slowly when idle than a whole machine does,
    /// and a limit within its idle latency reads as overload.
    #[arg(long)]
    node_backend_latency_ms: Option<u64>,
    /// The node's `admission_line_lag_ms` (default: the node's own default; 0 turns the
    /// line's own limit off): how late the scheduler may run before newcomers wait, the
    /// setting that trades registration goodput for message latency.
    #[arg(long)]
    node_line_lag_ms: Option<u64>,
    /// Admission-on waves' nodes seat at most the SLO capacity this run measured
    /// (`registration_max_per_s`), as an operator who measured it would configure them:
    /// what is left over the SLO then is the cost of the crowd itself, not of the
    /// registrations the line seats.
    #[arg(long)]
    line_ceiling_at_slo: bool,
    /// Probes of the SLO-capacity search (each halves the interval).
    #[arg(long, default_value_t = 6)]
    slo_probes: usize,
    /// Seconds each probe of the SLO-capacity search offers registrations for.
    #[arg(long, default_value_t = 6.0)]
    slo_probe_secs: f64,
    /// Print the node's admission metrics every second during each wave (to stderr).
    #[arg(long)]
    trace: bool,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// Measures what each kind of request costs a node in CPU time (on a node held to
    /// --node-cpus, as the waves run): a handshake, a registration served, a registration
    /// told to wait, an established user's envelope. Prints them as `levee-wave --costs`
    /// reads them.
    Costs {
        /// Newcomers per measurement.
        #[arg(long, default_value_t = 2000)]
        newcomers: usize,
    },
    /// Internal: the newcomers' side of a wave, run as a child process; prints its counts
    /// as one JSON object.
    #[command(hide = true)]
    Wave(WaveSpec),
    /// Internal: the node under test, run as a child process; prints where it listens and
    /// runs until its standard input closes.
    #[command(hide = true)]
    Node {
        /// Admission control on.
        #[arg(long)]
        admission: bool,
        /// Control group to join before starting (the node's CPU budget).
        #[arg(long)]
        cgroup: Option<std::path::PathBuf>,
        /// Serve `/metrics` on a loopback port.
        #[arg(long)]
        metrics: bool,
        /// The node's `admission_backend_latency_ms`.
        #[arg(long)]
        backend_latency_ms: Option<u64>,
        /// The node's `admission_line_lag_ms`.
        #[arg(long)]
        line_lag_ms: Option<u64>,
        /// The node's `registration_max_per_s`.
        #[arg(long)]
        registration_max_per_s: Option<f64>,
        /// Runtime worker threads (default: one per CPU of the machine).
        #[arg(long)]
        workers: Option<usize>,
    },
}

/// One wave, as the parent asks the child to play it.
#[derive(clap::Args, Debug, Clone)]
struct WaveSpec {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long)]
    fingerprint: Fingerprint,
    /// Newcomers per second (open loop); 0 with --closed.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Instead of a rate: this many newcomers at a time, back to back (closed loop).
    #[arg(long)]
    closed: Option<usize>,
    #[arg(long)]
    duration: f64,
    #[arg(long, default_value_t = 0.0)]
    drain: f64,
    #[arg(long, default_value_t = 50_000)]
    max_in_flight: u64,
}

fn parse_mode(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: expected on or off")),
    }
}

/// The nodes' cluster key, known to the wave so that it can read newcomers' places from
/// their tickets (for the order check).
const SURGE_CLUSTER_KEY: &[u8; 32] = b"levee-surge bench cluster key 01";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Role::Node {
        cgroup: Some(dir), ..
    }) = &args.role
    {
        // Before the runtime starts its threads, so that all of them are inside the budget.
        cpu_budget::join(dir)?;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(Role::Node {
        workers: Some(n), ..
    }) = &args.role
    {
        builder.worker_threads(*n);
    }
    let runtime = builder.build()?;
    match args.role {
        Some(Role::Node {
            admission,
            metrics,
            backend_latency_ms,
            line_lag_ms,
            registration_max_per_s,
            ..
        }) => runtime.block_on(child_node::serve(|c| {
            c.admission = admission;
            c.cluster_key = Some(hex::encode(SURGE_CLUSTER_KEY));
            if metrics {
                c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            }
            if let Some(ms) = backend_latency_ms {
                c.admission_backend_latency_ms = ms;
            }
            if let Some(ms) = line_lag_ms {
                c.admission_line_lag_ms = ms;
            }
            if let Some(per_s) = registration_max_per_s {
                c.registration_max_per_s = per_s;
            }
        })),
        Some(Role::Wave(spec)) => {
            let counts = runtime.block_on(play_wave(spec))?;
            println!("{}", serde_json::to_string(&counts)?);
            Ok(())
        }
        Some(Role::Costs { newcomers }) => runtime.block_on(costs(&args, newcomers)),
        None => runtime.block_on(run(args)),
    }
}

/// The CPU budget of the nodes under test, if any (`--node-cpus`).
fn budget(args: &Args) -> anyhow::Result<Option<CpuBudget>> {
    Ok(if args.node_cpus > 0.0 {
        Some(CpuBudget::create(args.node_cpus)?)
    } else {
        None
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let budget = budget(&args)?;
    let mut nodes = Nodes {
        budget: budget.as_ref(),
        metrics: args.trace,
        backend_latency_ms: args.node_backend_latency_ms,
        line_lag_ms: args.node_line_lag_ms,
        line_ceiling: None,
    };
    let cores = match &budget {
        Some(b) => b.cores(),
        None => std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
    };
    let msg_capacity = messaging_capacity(&nodes, args.established).await?;
    let (baseline_rate, busy) =
        baseline_rate(&nodes, args.established, msg_capacity, cores).await?;
    let reg = registration_capacity(&args, &nodes, baseline_rate).await?;
    let reg_capacity = reg.per_s;
    eprintln!(
        "capacity of a node with {}: {msg_capacity:.0} envelopes/s end to end (closed loop); \
         baseline {baseline_rate:.0} envelopes/s (open loop, node {:.0}% busy); beside it, \
         {reg_capacity:.0} registrations/s (64 at a time, admission off; the baseline's \
         messages meanwhile: p50 {:.1} ms, p99 {:.1} ms); with no baseline, {:.0} \
         registrations/s",
        match &budget {
            Some(b) => format!("{} cores", b.cores()),
            None => "the whole machine".into(),
        },
        100.0 * busy,
        reg.messaging_ms[0],
        reg.messaging_ms[1],
        reg.alone_per_s,
    );
    let slo = slo_capacity(&args, &nodes, baseline_rate, reg_capacity).await?;
    eprintln!(
        "SLO capacity: {:.0} registrations/s (messages unloaded p99 {:.1} ms, SLO {:.1} ms); \
         probes (offered/s → admitted/s, p99): {}",
        slo.per_s,
        slo.unloaded_p99_ms,
        slo.slo_ms,
        slo.probes
            .iter()
            .map(|p| format!(
                "{:.0} → {:.0}, {:.1} ms{}",
                p.offered_per_s,
                p.admitted_per_s,
                p.p99_ms,
                if p.within { "" } else { " ✗" }
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if slo.per_s < 1.0 {
        bail!("no registration rate probed kept the users' p99 within the SLO");
    }
    if args.line_ceiling_at_slo {
        nodes.line_ceiling = Some(slo.per_s.round());
    }
    let yardsticks = Yardsticks {
        baseline_rate,
        cores,
        reg,
        slo,
    };
    let mut rows = Vec::new();
    for &m in &args.multipliers {
        for &admission in &args.modes {
            eprintln!(
                "wave {m}x, admission {}",
                if admission { "on" } else { "off" }
            );
            rows.push(scenario(&args, &nodes, admission, m, &yardsticks).await?);
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

/// Starts nodes under test, each in its own process within the CPU budget.
struct Nodes<'a> {
    budget: Option<&'a CpuBudget>,
    /// Serve `/metrics` (for `--trace`).
    metrics: bool,
    backend_latency_ms: Option<u64>,
    line_lag_ms: Option<u64>,
    /// `registration_max_per_s` of the nodes with admission on (`--line-ceiling-at-slo`).
    line_ceiling: Option<f64>,
}

impl Nodes<'_> {
    async fn start(&self, admission: bool) -> anyhow::Result<ChildNode> {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.arg("node");
        if admission {
            command.arg("--admission");
        }
        if let Some(budget) = self.budget {
            command.arg("--cgroup").arg(budget.path());
            // As many worker threads as whole cores in the budget, like a node on a machine
            // that size: with more workers than CPU, one worker stays free to run the
            // node's scheduling-lag probe on time while the others are saturated, and
            // admission control never sees the node congested.
            let workers = budget.cores().ceil().max(1.0) as usize;
            command.arg(format!("--workers={workers}"));
        }
        if self.metrics {
            command.arg("--metrics");
        }
        if let Some(ms) = self.backend_latency_ms {
            command.arg(format!("--backend-latency-ms={ms}"));
        }
        if let Some(ms) = self.line_lag_ms {
            command.arg(format!("--line-lag-ms={ms}"));
        }
        if let Some(per_s) = self.line_ceiling.filter(|_| admission) {
            command.arg(format!("--registration-max-per-s={per_s}"));
        }
        ChildNode::start(command).await
    }
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
async fn messaging_capacity(nodes: &Nodes<'_>, n: usize) -> anyhow::Result<f64> {
    Ok(messaging_capacity_and_cost(nodes, n).await?.0)
}

/// [`messaging_capacity`], and the node's CPU per envelope meanwhile (µs).
async fn messaging_capacity_and_cost(nodes: &Nodes<'_>, n: usize) -> anyhow::Result<(f64, f64)> {
    let node = nodes.start(false).await?;
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
    let mut meter = CpuMeter::new(node.pid()?, 1.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let envelopes = done.load(Ordering::Relaxed) - start;
    let cpu = meter.used().unwrap_or_default();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    node.stop().await?;
    Ok((
        envelopes as f64 / 3.0,
        cpu.as_secs_f64() * 1e6 / envelopes.max(1) as f64,
    ))
}

/// `levee-surge costs`: what each kind of request costs a node (see [`Role::Costs`]). The
/// node's CPU is read from `/proc` around each step, less what it spends idle in as long.
async fn costs(args: &Args, newcomers: usize) -> anyhow::Result<()> {
    let budget = budget(args)?;
    let mut nodes = Nodes {
        budget: budget.as_ref(),
        metrics: false,
        backend_latency_ms: None,
        line_lag_ms: None,
        line_ceiling: None,
    };
    let mut costs = levee_bench::wave::Costs::default();
    let node = nodes.start(false).await?;
    let connector = Arc::new(Connector::new(&node.client)?);
    let mut cpu = NodeCpu::new(node.pid()?).await;
    let clients = for_each_newcomer(newcomers, {
        let connector = connector.clone();
        move |_| {
            let connector = connector.clone();
            async move {
                let give_up = Instant::now() + Duration::from_secs(60);
                let c = connector
                    .connect_patiently(Identity::generate()?, give_up, || {})
                    .await?;
                Ok(Arc::new(c))
            }
        }
    })
    .await?;
    costs.handshake_us = cpu.per(newcomers);
    let clients = Arc::new(clients);
    for_each_newcomer(newcomers, {
        let clients = clients.clone();
        move |i| {
            let c = clients[i].clone();
            async move { Ok(c.register().await?) }
        }
    })
    .await?;
    costs.register_us = cpu.per(newcomers);
    drop(clients);
    node.stop().await?;

    // Told to wait: a line that seats almost nobody, every newcomer coming back with its
    // ticket a few times. All connect first: once people wait, the door narrows.
    nodes.line_ceiling = Some(1.0);
    let node = nodes.start(true).await?;
    let connector = Arc::new(Connector::new(&node.client)?);
    let connected = Arc::new(
        for_each_newcomer(newcomers, move |_| {
            let connector = connector.clone();
            async move {
                let give_up = Instant::now() + Duration::from_secs(60);
                let c = connector
                    .connect_patiently(Identity::generate()?, give_up, || {})
                    .await?;
                Ok(Arc::new(c))
            }
        })
        .await?,
    );
    let clients = Arc::new(
        for_each_newcomer(newcomers, move |i| {
            let c = connected[i].clone();
            async move {
                let first = c.register_once(None).await?;
                Ok((c, first))
            }
        })
        .await?,
    );
    const ROUNDS: usize = 3;
    let mut cpu = NodeCpu::new(node.pid()?).await;
    let answers = for_each_newcomer(newcomers, move |i| {
        let (c, first) = clients[i].clone();
        async move {
            let levee_client::Registration::Queued(mut place) = first else {
                return Ok(0);
            };
            for round in 0..ROUNDS {
                match c.register_once(Some(place.ticket.clone())).await? {
                    levee_client::Registration::Queued(p) => place = p,
                    levee_client::Registration::Registered { .. } => return Ok(round + 1),
                }
            }
            Ok(ROUNDS)
        }
    })
    .await?;
    costs.queued_us = cpu.per(answers.iter().sum());
    node.stop().await?;

    let (_, message_us) = messaging_capacity_and_cost(&nodes, args.established).await?;
    costs.message_us = message_us;
    println!("{}", serde_json::to_string(&costs)?);
    eprintln!(
        "node CPU per request ({}): handshake {:.0} µs, registration served {:.0} µs, told to wait {:.0} µs, envelope {:.1} µs",
        match &budget {
            Some(b) => format!("node held to {} cores", b.cores()),
            None => "node on the whole machine".into(),
        },
        costs.handshake_us,
        costs.register_us,
        costs.queued_us,
        costs.message_us,
    );
    Ok(())
}

/// A node's CPU time since the last reading, less its idle rate over as long.
struct NodeCpu {
    meter: CpuMeter,
    idle_per_s: f64,
    since: Instant,
}

impl NodeCpu {
    /// Measures the node's idle CPU for 2 s, then starts counting.
    async fn new(pid: u32) -> Self {
        let mut meter = CpuMeter::new(pid, 1.0);
        let since = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = meter.used().unwrap_or_default().as_secs_f64();
        Self {
            meter,
            idle_per_s: idle / since.elapsed().as_secs_f64(),
            since: Instant::now(),
        }
    }

    /// Busy CPU µs per one of `n` requests since the last reading.
    fn per(&mut self, n: usize) -> f64 {
        let used = self.meter.used().unwrap_or_default().as_secs_f64();
        let idle = self.idle_per_s * self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        (used - idle).max(0.0) * 1e6 / n.max(1) as f64
    }
}

/// Runs `f(i)` for every newcomer `i` in `0..n`, 64 at a time; their results in order.
async fn for_each_newcomer<T, F, Fut>(n: usize, f: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let mut tasks = tokio::task::JoinSet::new();
        for &i in chunk {
            let fut = f(i);
            tasks.spawn(async move { (i, fut.await) });
        }
        let mut results = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (i, r) = done?;
            results.push((i, r?));
        }
        results.sort_by_key(|(i, _)| *i);
        out.extend(results.into_iter().map(|(_, r)| r));
    }
    Ok(out)
}

/// The established users' send rate for the baseline: half the closed-loop capacity, or
/// less if that keeps the node more than half busy, and returns it with how busy the node
/// was at it (of `cores`). Closed loop, with hundreds of sends in flight, the node batches
/// packets, acknowledgements and writes; at an even open-loop rate it does not, and half
/// the closed-loop rate came to three to five times what keeps a quarter-core node half
/// busy (docs/PERFORMANCE-LOG.md, "Fourth pass"). A baseline that leaves no room measures
/// queueing, not admission control. Found by measuring the node's CPU at a rate and
/// scaling, at most three times.
async fn baseline_rate(
    nodes: &Nodes<'_>,
    established: usize,
    closed_loop: f64,
    cores: f64,
) -> anyhow::Result<(f64, f64)> {
    const TARGET: f64 = 0.5;
    let most = closed_loop * 0.5;
    let mut rate = most;
    let mut busy = 0.0;
    for _ in 0..3 {
        let baseline = Baseline::start(nodes, false, established, rate).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        busy = baseline.node_busy(Duration::from_secs(3), cores).await?;
        baseline.stop().await?;
        if (busy - TARGET).abs() < 0.05 || (rate >= most && busy <= TARGET) {
            break;
        }
        rate = (rate * TARGET / busy.max(0.05)).min(most);
    }
    Ok((rate, busy))
}

/// What the registration capacity measurement found.
struct RegistrationCapacity {
    per_s: f64,
    /// The same on a node with no baseline: what a node doing nothing else absorbs.
    alone_per_s: f64,
    /// The baseline's message latency p50 and p99 (ms) while it was measured: what a node
    /// with admission off, taking registrations as fast as they come, does to its users.
    messaging_ms: [f64; 2],
}

/// New connection + registration per second, 64 at a time for 4 s, from the wave process,
/// against a node with admission off carrying the messaging baseline.
async fn registration_capacity(
    args: &Args,
    nodes: &Nodes<'_>,
    baseline_rate: f64,
) -> anyhow::Result<RegistrationCapacity> {
    let baseline = Baseline::start(nodes, false, args.established, baseline_rate).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    baseline.next_period().await;
    let per_s = closed_registrations_per_s(args, &baseline.node.client).await?;
    let messaging = baseline.next_period().await;
    baseline.stop().await?;
    let alone = registrations_alone(args, nodes).await?;
    Ok(RegistrationCapacity {
        per_s,
        alone_per_s: alone,
        messaging_ms: [0.5, 0.99].map(|q| quantile_ms(&messaging, q)),
    })
}

/// Registrations per second, measured as in [`registration_capacity`] but on a node with no
/// messaging at all: all of its CPU on newcomers. Times the share of CPU the baseline
/// leaves, it is what a node whose established users' messages are not slowed could absorb
/// (see `Row::left_by_baseline_per_s`).
async fn registrations_alone(args: &Args, nodes: &Nodes<'_>) -> anyhow::Result<f64> {
    let node = nodes.start(false).await?;
    let per_s = closed_registrations_per_s(args, &node.client).await;
    node.stop().await?;
    per_s
}

/// New connection + registration per second against `target`: 64 newcomers back to back
/// for 4 s, from the wave process.
async fn closed_registrations_per_s(args: &Args, target: &ClientConfig) -> anyhow::Result<f64> {
    const SECS: f64 = 4.0;
    let counts = spawn_wave(args, target, WaveSpecRate::Closed(64), SECS, 0.0, None).await?;
    Ok(counts.admitted_in_wave as f64 / SECS)
}

/// What the SLO-capacity search found.
struct SloCapacity {
    per_s: f64,
    unloaded_p99_ms: f64,
    slo_ms: f64,
    probes: Vec<SloProbe>,
}

/// One probe of the search.
struct SloProbe {
    offered_per_s: f64,
    admitted_per_s: f64,
    p99_ms: f64,
    within: bool,
}

/// The node's SLO capacity (see the module documentation): on one node with admission off
/// carrying the baseline, the unloaded p99 over 5 s, then `--slo-probes` probes bisecting
/// the rates below `upper` (the registration capacity), each an open-loop stream of
/// newcomers for `--slo-probe-secs` (and 2 s for the last to finish), the users' p99
/// measured over it; a rate over the SLO is tried twice.
async fn slo_capacity(
    args: &Args,
    nodes: &Nodes<'_>,
    baseline_rate: f64,
    upper: f64,
) -> anyhow::Result<SloCapacity> {
    let baseline = Baseline::start(nodes, false, args.established, baseline_rate).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    baseline.next_period().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let unloaded_p99_ms = quantile_ms(&baseline.next_period().await, 0.99);
    let slo_ms = message_p99_slo_ms(unloaded_p99_ms);
    let mut search = RateSearch::new(upper);
    let mut probes = Vec::new();
    for _ in 0..args.slo_probes {
        let rate = search.next();
        // A rate over the SLO is tried once more before the search takes it as beyond: on
        // this shared machine one probe in a few saw a spike of hundreds of ms at a rate
        // far below the others' limit, and one such spike sent a whole search down to a
        // fifth of what its other probes found.
        let mut within = false;
        for _ in 0..2 {
            let counts = spawn_wave(
                args,
                &baseline.node.client,
                WaveSpecRate::Open(rate),
                args.slo_probe_secs,
                2.0,
                None,
            )
            .await?;
            let p99_ms = quantile_ms(&baseline.next_period().await, 0.99);
            let admitted_per_s = counts.admitted_in_wave as f64 / args.slo_probe_secs;
            within = probe_within(rate, admitted_per_s, p99_ms, slo_ms);
            probes.push(SloProbe {
                offered_per_s: rate,
                admitted_per_s,
                p99_ms,
                within,
            });
            // Let the node settle before the next probe.
            tokio::time::sleep(Duration::from_secs(1)).await;
            baseline.next_period().await;
            if within {
                break;
            }
        }
        search.record(rate, within);
    }
    baseline.stop().await?;
    Ok(SloCapacity {
        per_s: search.best(),
        unloaded_p99_ms,
        slo_ms,
        probes,
    })
}

/// What the established users saw.
#[derive(Default)]
struct Messaging {
    ok: AtomicU64,
    failed: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
    /// Latency since `--trace` last looked (recorded only while tracing).
    recent: Mutex<Option<Histogram<u64>>>,
    /// Failed sends since `--trace` last looked.
    recent_failed: AtomicU64,
}

/// A node with established users sending to each other at a steady rate (open loop: a slow
/// answer does not slow the offered rate), recording send → push latency.
struct Baseline {
    node: ChildNode,
    messaging: Arc<Messaging>,
    sending: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Baseline {
    async fn start(
        nodes: &Nodes<'_>,
        admission: bool,
        established: usize,
        rate: f64,
    ) -> anyhow::Result<Self> {
        let node = nodes.start(admission).await?;
        let connector = Connector::new(&node.client)?;
        let established = users(&connector, established.max(2))
            .await
            .context("established users")?;
        let epoch = Instant::now();
        let messaging = Arc::new(Messaging::default());
        let mut tasks = tokio::task::JoinSet::new();
        for c in &established {
            let mut inbox = c.subscribe().await?;
            let (c, m) = (c.clone(), messaging.clone());
            tasks.spawn(async move {
                while let Some(first) = inbox.next().await {
                    let mut batch = vec![first];
                    while let Some(d) = inbox.try_next() {
                        batch.push(d);
                    }
                    let now = epoch.elapsed().as_nanos() as u64;
                    let took = |d: &levee_client::Delivery| {
                        let sent =
                            u64::from_be_bytes(d.ciphertext[..8].try_into().unwrap_or_default());
                        Duration::from_nanos(now.saturating_sub(sent))
                    };
                    for histogram in [&m.latency, &m.recent] {
                        if let Some(h) = histogram.lock().await.as_mut() {
                            batch.iter().for_each(|d| record(h, took(d)));
                        }
                    }
                    let _ = c
                        .ack(&batch.iter().map(|d| d.envelope_id).collect::<Vec<_>>())
                        .await;
                }
            });
        }
        let per_client = (rate / established.len() as f64).max(1.0);
        let sending = Arc::new(AtomicBool::new(true));
        for (i, c) in established.iter().enumerate() {
            let to: AccountId = established[(i + 1) % established.len()].account();
            let (c, m, sending) = (c.clone(), messaging.clone(), sending.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_client));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while sending.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (c, m) = (c.clone(), m.clone());
                    tokio::spawn(async move {
                        let mut payload = vec![0u8; 256];
                        payload[..8]
                            .copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                        if c.send(&to, payload).await.is_ok() {
                            m.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            m.failed.fetch_add(1, Ordering::Relaxed);
                            m.recent_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
        }
        Ok(Self {
            node,
            messaging,
            sending,
            tasks,
        })
    }

    /// How busy the node is over the next `period` (see [`CpuMeter`]).
    async fn node_busy(&self, period: Duration, cores: f64) -> anyhow::Result<f64> {
        let mut meter = CpuMeter::new(self.node.pid()?, cores);
        tokio::time::sleep(period).await;
        meter.busy().context("the node's CPU time")
    }

    /// Starts a fresh latency histogram and success count, returning the previous histogram.
    async fn next_period(&self) -> Histogram<u64> {
        self.messaging.ok.store(0, Ordering::Relaxed);
        self.messaging.failed.store(0, Ordering::Relaxed);
        self.messaging
            .latency
            .lock()
            .await
            .replace(latency_histogram())
            .unwrap_or_else(latency_histogram)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.sending.store(false, Ordering::Relaxed);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.node.stop().await
    }
}

/// How the newcomers arrive.
enum WaveSpecRate {
    /// This many per second.
    Open(f64),
    /// This many at a time, back to back.
    Closed(usize),
}

/// Runs the newcomers' side against `target` in a child process at `--wave-nice` and
/// returns its counts; its pid goes into `pid` while it runs, for the trace to meter.
async fn spawn_wave(
    args: &Args,
    target: &ClientConfig,
    rate: WaveSpecRate,
    duration: f64,
    drain: f64,
    pid: Option<Arc<AtomicU32>>,
) -> anyhow::Result<Counts> {
    let Trust::Fingerprint(fingerprint) = &target.trust else {
        bail!("the local node is pinned by fingerprint");
    };
    let mut cmd = std::process::Command::new("nice");
    cmd.arg("-n")
        .arg(args.wave_nice.to_string())
        .arg(std::env::current_exe()?)
        .arg("wave")
        .arg(format!("--server={}", target.server))
        .arg(format!("--fingerprint={fingerprint}"))
        .arg(format!("--duration={duration}"))
        .arg(format!("--drain={drain}"))
        .arg(format!("--max-in-flight={}", args.max_in_flight));
    match rate {
        WaveSpecRate::Open(r) => cmd.arg(format!("--rate={r}")),
        WaveSpecRate::Closed(n) => cmd.arg(format!("--closed={n}")),
    };
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    // `nice` replaces itself with the wave, so the child's pid is the wave's.
    let child = cmd
        .spawn()
        .context("cannot run the wave process (is `nice` installed?)")?;
    if let Some(pid) = &pid {
        pid.store(child.id(), Ordering::Relaxed);
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await?
        .context("the wave process")?;
    if !out.status.success() {
        bail!("the wave process failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("the wave process's report")
}

/// What happened to the newcomers of one wave.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Counts {
    offered: u64,
    not_offered: u64,
    admitted_in_wave: u64,
    admitted_in_drain: u64,
    waiting_at_end: u64,
    /// Registering at the end, the request sent within the node's hold
    /// (`registration_hold_ms`, and a second) of the end: a place due soon, held by the
    /// node, not an error.
    held_at_end: u64,
    /// Still refused or unanswered at the door at the end, or through it less than a
    /// second before giving up ("still at the door").
    refused_at_end: u64,
    hard_failures: u64,
    /// The hard failures by what ended them (`stage: error kind`).
    failures: std::collections::BTreeMap<String, u64>,
    requests: u64,
    admitted_requests: u64,
    /// Of those, connection attempts turned away at the door.
    admitted_door_attempts: u64,
    /// Newcomers admitted while someone earlier in line was still told to wait (the
    /// drills' rule, `levee_chaos::ledger::overtakes`).
    overtakes: u64,
}

/// The same, counted concurrently.
#[derive(Default)]
struct Wave {
    offered: AtomicU64,
    not_offered: AtomicU64,
    admitted_in_wave: AtomicU64,
    admitted_in_drain: AtomicU64,
    waiting_at_end: AtomicU64,
    held_at_end: AtomicU64,
    refused_at_end: AtomicU64,
    hard_failures: AtomicU64,
    failures: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    requests: AtomicU64,
    /// Requests of the newcomers who were admitted, counted once they were.
    admitted_requests: AtomicU64,
    /// Of those, connection attempts turned away at the door.
    admitted_door_attempts: AtomicU64,
    /// Every newcomer that was given a place in line: its place, when it was last told to
    /// wait and when it was admitted, for the order check.
    line: std::sync::Mutex<Vec<Newcomer>>,
}

impl Wave {
    /// A newcomer ended in an error the person would see: counted, by kind.
    fn hard_failure(&self, stage: &str, error: Option<&ClientError>) {
        self.hard_failures.fetch_add(1, Ordering::Relaxed);
        let kind = match error {
            Some(e) => format!("{stage}: {}", error_kind(e)),
            None => format!("{stage}: unanswered for longer than the hold"),
        };
        *self
            .failures
            .lock()
            .expect("not poisoned")
            .entry(kind)
            .or_default() += 1;
    }

    fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            offered: get(&self.offered),
            not_offered: get(&self.not_offered),
            admitted_in_wave: get(&self.admitted_in_wave),
            admitted_in_drain: get(&self.admitted_in_drain),
            waiting_at_end: get(&self.waiting_at_end),
            held_at_end: get(&self.held_at_end),
            refused_at_end: get(&self.refused_at_end),
            hard_failures: get(&self.hard_failures),
            failures: self.failures.lock().expect("not poisoned").clone(),
            requests: get(&self.requests),
            admitted_requests: get(&self.admitted_requests),
            admitted_door_attempts: get(&self.admitted_door_attempts),
            // One node: every two places are compared, however close.
            overtakes: overtakes(&self.line.lock().expect("not poisoned"), 0),
        }
    }
}

/// The child process: newcomers arriving at a rate (or back to back) for `duration`, each
/// waiting as told until the end of the drain period.
async fn play_wave(spec: WaveSpec) -> anyhow::Result<Counts> {
    let mut config = ClientConfig::new(spec.server, Trust::Fingerprint(spec.fingerprint));
    config.connect_timeout = Duration::from_secs(10);
    let connectors: Vec<Connector> = (0..4)
        .map(|_| Connector::new(&config))
        .collect::<Result<_, _>>()?;
    let wave = Arc::new(Wave::default());
    let start = Instant::now();
    let wave_end = start + Duration::from_secs_f64(spec.duration);
    let give_up = wave_end + Duration::from_secs_f64(spec.drain);
    let mut newcomers = tokio::task::JoinSet::new();
    if let Some(n) = spec.closed {
        for i in 0..n {
            let (connector, wave) = (connectors[i % connectors.len()].clone(), wave.clone());
            newcomers.spawn(async move {
                while Instant::now() < wave_end {
                    wave.offered.fetch_add(1, Ordering::Relaxed);
                    newcomer(&connector, &wave, start, wave_end, wave_end).await;
                }
            });
        }
    } else {
        let in_flight = Arc::new(AtomicU64::new(0));
        let mut spawned = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while Instant::now() < wave_end {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * spec.rate) as u64;
            while spawned < due {
                spawned += 1;
                if in_flight.load(Ordering::Relaxed) >= spec.max_in_flight {
                    wave.not_offered.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                wave.offered.fetch_add(1, Ordering::Relaxed);
                in_flight.fetch_add(1, Ordering::Relaxed);
                let connector = connectors[spawned as usize % connectors.len()].clone();
                let (wave, in_flight) = (wave.clone(), in_flight.clone());
                newcomers.spawn(async move {
                    newcomer(&connector, &wave, start, wave_end, give_up).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            while newcomers.try_join_next().is_some() {}
        }
    }
    while newcomers.join_next().await.is_some() {}
    Ok(wave.counts())
}

#[derive(serde::Serialize)]
struct Row {
    admission: &'static str,
    multiplier: f64,
    /// What the waves are multiples of (see the module documentation).
    slo_capacity_per_s: f64,
    goodput_of_slo_capacity: f64,
    /// This row's SLO on the users' message p99, from its own unloaded p99.
    slo_ms: f64,
    p99_within_slo: bool,
    registration_capacity_per_s: f64,
    offered_per_s: f64,
    goodput_per_s: f64,
    goodput_of_capacity: f64,
    /// Registrations per second a node doing nothing else absorbs.
    registration_capacity_alone_per_s: f64,
    /// What the CPU the baseline leaves could absorb: the capacity alone times the share of
    /// the node's CPU the baseline left unused before the wave. Registration capacity
    /// measured beside the baseline is more than this, because a saturated node's messages
    /// wait ~100 ms and cost it less CPU each (most likely batched; measured as CPU, not as
    /// batches); a node that keeps them fast cannot have that CPU.
    left_by_baseline_per_s: f64,
    goodput_of_left: f64,
    admitted_after_wave: u64,
    still_waiting_with_ticket: u64,
    /// Registering at the end, sent within the node's hold of it (see `Counts`).
    still_held: u64,
    still_refused: u64,
    hard_failures: u64,
    hard_failures_by_kind: std::collections::BTreeMap<String, u64>,
    /// Newcomers admitted while someone earlier in line was still told to wait.
    overtakes: u64,
    not_offered: u64,
    requests_per_admitted: f64,
    requests_per_admitted_newcomer: f64,
    /// Of those, connection attempts turned away at the door.
    door_attempts_per_admitted_newcomer: f64,
    send_success: f64,
    unloaded_p99_ms: f64,
    /// How busy the node was (of its CPU budget) with the baseline alone, before the wave.
    unloaded_node_busy: f64,
    p50_ms: f64,
    p99_ms: f64,
    p99_vs_unloaded: f64,
}

/// What a run measured before its waves, which every wave is played and judged against.
struct Yardsticks {
    /// The established users' open-loop send rate.
    baseline_rate: f64,
    /// The node's CPU budget, in cores.
    cores: f64,
    reg: RegistrationCapacity,
    slo: SloCapacity,
}

async fn scenario(
    args: &Args,
    nodes: &Nodes<'_>,
    admission: bool,
    multiplier: f64,
    yardsticks: &Yardsticks,
) -> anyhow::Result<Row> {
    let Yardsticks {
        baseline_rate,
        cores,
        reg,
        slo,
    } = yardsticks;
    let (baseline_rate, cores) = (*baseline_rate, *cores);
    let reg_cap = reg.per_s;
    let baseline = Baseline::start(nodes, admission, args.established, baseline_rate).await?;
    tokio::time::sleep(Duration::from_secs_f64(args.warmup.max(1.0))).await;
    baseline.next_period().await;
    let unloaded_busy = baseline.node_busy(Duration::from_secs(3), cores).await?;
    let unloaded = baseline.next_period().await;

    let pid = baseline.node.pid()?;
    let wave_pid = Arc::new(AtomicU32::new(0));
    let trace = baseline.node.admin.map(|admin| {
        tokio::spawn(trace_metrics(
            admin,
            baseline.messaging.clone(),
            pid,
            cores,
            wave_pid.clone(),
        ))
    });
    let counts = spawn_wave(
        args,
        &baseline.node.client,
        WaveSpecRate::Open(slo.per_s * multiplier),
        args.duration,
        args.drain,
        Some(wave_pid),
    )
    .await;
    if let Some(trace) = trace {
        trace.abort();
    }
    let counts = counts?;
    // The baseline kept sending through the drain period too: latency and success cover
    // the whole time newcomers were arriving or waiting.
    let (ok, failed) = (
        baseline.messaging.ok.load(Ordering::Relaxed),
        baseline.messaging.failed.load(Ordering::Relaxed),
    );
    let surge = baseline.next_period().await;
    baseline.stop().await?;

    let admitted = counts.admitted_in_wave + counts.admitted_in_drain;
    let goodput = counts.admitted_in_wave as f64 / args.duration;
    let unloaded_p99 = quantile_ms(&unloaded, 0.99);
    let left = reg.alone_per_s * (1.0 - unloaded_busy).max(0.0);
    let p99_ms = quantile_ms(&surge, 0.99);
    let slo_ms = message_p99_slo_ms(unloaded_p99);
    Ok(Row {
        admission: if admission { "on" } else { "off" },
        multiplier,
        slo_capacity_per_s: slo.per_s,
        goodput_of_slo_capacity: goodput / slo.per_s.max(1e-9),
        slo_ms,
        p99_within_slo: p99_ms <= slo_ms,
        registration_capacity_per_s: reg_cap,
        offered_per_s: counts.offered as f64 / args.duration,
        goodput_per_s: goodput,
        goodput_of_capacity: goodput / reg_cap,
        registration_capacity_alone_per_s: reg.alone_per_s,
        left_by_baseline_per_s: left,
        goodput_of_left: goodput / left.max(1e-9),
        admitted_after_wave: counts.admitted_in_drain,
        still_waiting_with_ticket: counts.waiting_at_end,
        still_held: counts.held_at_end,
        still_refused: counts.refused_at_end,
        hard_failures: counts.hard_failures,
        hard_failures_by_kind: counts.failures.clone(),
        overtakes: counts.overtakes,
        not_offered: counts.not_offered,
        requests_per_admitted: counts.requests as f64 / admitted.max(1) as f64,
        requests_per_admitted_newcomer: counts.admitted_requests as f64 / admitted.max(1) as f64,
        door_attempts_per_admitted_newcomer: counts.admitted_door_attempts as f64
            / admitted.max(1) as f64,
        send_success: ok as f64 / (ok + failed).max(1) as f64,
        unloaded_p99_ms: unloaded_p99,
        unloaded_node_busy: unloaded_busy,
        p50_ms: quantile_ms(&surge, 0.5),
        p99_ms,
        p99_vs_unloaded: p99_ms / unloaded_p99.max(1e-3),
    })
}

/// The node's admission metrics and the established users' last second of messaging, once
/// a second, on stderr (`--trace`): enough to see what the controller saw and did during a
/// wave, and when messages were slow — and how busy the node was that second (of `cores`),
/// which tells a node short of CPU from one whose line is shut while it has CPU to spare.
/// And how much CPU the newcomers' process used (`wave_cpu`, in cores): on this machine
/// the load side is the larger, and when it runs flat out its newcomers make progress in
/// bursts, which the node sees as bursts of registrations.
async fn trace_metrics(
    admin: SocketAddr,
    messaging: Arc<Messaging>,
    pid: u32,
    cores: f64,
    wave_pid: Arc<AtomicU32>,
) {
    const SHOWN: &[&str] = &[
        "levee_admission_level",
        "levee_waiting_room_length",
        "levee_waiting_room_admission_rate",
        "levee_connections",
        "levee_backend_write_latency_seconds",
        "levee_backend_write_latency_limit_seconds",
        "levee_delivery_lag_records",
        "levee_admission_shed_total",
        "levee_admission_admitted_total",
        "levee_connections_dropped_at_door_total",
        "levee_door_kernel_share",
        // Cumulative: the mean over a second is the difference of two lines' sums over
        // that of their counts.
        "levee_scheduling_lag_seconds_sum",
        "levee_scheduling_lag_seconds_count",
        "levee_queue_wait_seconds_sum",
        "levee_queue_wait_seconds_count",
    ];
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut cpu = CpuMeter::new(pid, cores);
    let mut wave_cpu: Option<CpuMeter> = None;
    loop {
        tick.tick().await;
        let busy = cpu.busy().unwrap_or(f64::NAN);
        let wave_cores = match wave_pid.load(Ordering::Relaxed) {
            0 => f64::NAN,
            pid => wave_cpu
                .get_or_insert_with(|| CpuMeter::new(pid, 1.0))
                .busy()
                .unwrap_or(f64::NAN),
        };
        let Ok((200, text)) = levee_relay::admin_client::request(
            admin,
            None,
            "GET",
            "/metrics",
            Duration::from_secs(2),
        )
        .await
        else {
            continue;
        };
        let values: Vec<String> = text
            .lines()
            .filter(|l| SHOWN.iter().any(|m| l.starts_with(m)))
            .map(|l| without_node_label(l.trim_start_matches("levee_")))
            .collect();
        let recent = messaging
            .recent
            .lock()
            .await
            .replace(latency_histogram())
            .unwrap_or_else(latency_histogram);
        eprintln!(
            "t={:>3.0}s busy={:.0}% wave_cpu={:.2} msgs={} p50={:.0}ms p99={:.0}ms failed={} | {}",
            start.elapsed().as_secs_f64(),
            100.0 * busy,
            wave_cores,
            recent.len(),
            quantile_ms(&recent, 0.5),
            quantile_ms(&recent, 0.99),
            messaging.recent_failed.swap(0, Ordering::Relaxed),
            values.join(" ")
        );
    }
}

/// A metric line without its `node="..."` label: there is one node.
fn without_node_label(line: &str) -> String {
    let Some(start) = line.find("node=\"") else {
        return line.to_string();
    };
    let end = line[start + 6..]
        .find('"')
        .map_or(line.len(), |i| start + 6 + i + 1);
    let out = format!("{}{}", &line[..start], &line[end..]);
    out.replace("{,", "{").replace(",}", "}").replace("{}", "")
}

/// One newcomer: connect (patiently: a refusal is a delay, not the end), register, wait in
/// line as told until `give_up`. Requests counted are what the node saw: each connection
/// attempt it refused, and each registration request (the first, and every return with a
/// ticket).
async fn newcomer(
    connector: &Connector,
    wave: &Wave,
    epoch: Instant,
    wave_end: Instant,
    give_up: Instant,
) {
    let Ok(identity) = Identity::generate() else {
        return;
    };
    let account = identity.account();
    // What the node saw of this newcomer, added to the wave's total at the end.
    let mut door_attempts = 0u64;
    // An attempt under way at `give_up` is dropped then, and the newcomer counted as still
    // at the door: the wave ends on time instead of knocking for seconds more.
    let connected = connector
        .connect_patiently(identity, give_up, || door_attempts += 1)
        .await;
    let mut requests = door_attempts;
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            wave.requests.fetch_add(requests, Ordering::Relaxed);
            if matches!(e, ClientError::Busy | ClientError::Unreachable { .. }) {
                // Still being turned away (refused, or dropped at the node's door unanswered)
                // at the end: not an error the person saw, but not a place in line either;
                // counted on its own.
                wave.refused_at_end.fetch_add(1, Ordering::Relaxed);
            } else {
                wave.hard_failure("connect", Some(&e));
            }
            return;
        }
    };
    let connected_at = Instant::now();
    let mut held_ticket = false;
    // The earliest the registration request in flight can have been sent: the first right
    // after connecting, each return no sooner than the node said.
    let mut in_flight_since = connected_at;
    let at = |t: Instant| t.saturating_duration_since(epoch).as_secs_f64();
    // For the order check: the first place given, and when the last attempt told to wait
    // was sent — at the earliest (`in_flight_since`), so a newcomer told to wait just after
    // a later one got in may be missed, never one told to wait before it.
    let mut place = None;
    let mut last_told_to_wait = None;
    let tickets = TicketKey::new(SURGE_CLUSTER_KEY);
    let outcome = tokio::time::timeout_at(
        give_up.into(),
        client.register_waiting(|p| {
            held_ticket = true;
            requests += 1;
            if let Ok(t) = tickets.open(&p.ticket, account.as_bytes(), now_ms()) {
                place = Some(Place::of(&t));
            }
            last_told_to_wait = Some(at(in_flight_since));
            in_flight_since = Instant::now() + p.retry_after;
        }),
    )
    .await;
    let admitted = matches!(outcome, Ok(Ok(_)));
    if place.is_some() {
        wave.line.lock().expect("not poisoned").push(Newcomer {
            place,
            last_told_to_wait,
            admitted_at: admitted.then(|| at(Instant::now())),
            // One node: no other line to be kept away by; `overtakes` is what is judged.
            promised_at: None,
            ending: if admitted {
                Ending::Admitted
            } else {
                Ending::WaitingValid
            },
        });
    }
    requests += 1; // the attempt that ended it
    wave.requests.fetch_add(requests, Ordering::Relaxed);
    if admitted {
        wave.admitted_requests
            .fetch_add(requests, Ordering::Relaxed);
        wave.admitted_door_attempts
            .fetch_add(door_attempts, Ordering::Relaxed);
    }
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
        Ok(Err(e)) => wave.hard_failure("register", Some(&e)),
        // Through the door less than a second before giving up: no time for an answer.
        // Counted with those still at the door (every one of the 72 such "hard failures"
        // in a 10x run was this), not as an error the node gave.
        Err(_) if give_up.saturating_duration_since(connected_at) < Duration::from_secs(1) => {
            wave.refused_at_end.fetch_add(1, Ordering::Relaxed);
        }
        // Sent less than the node's hold (and a second) before giving up: the node may be
        // holding it for a place due within the hold, as it does (495 of the 506 "still
        // unanswered" hard failures of one 50x run came in the last seconds, around a
        // stall). Unanswered for longer than that is the node's fault: a hard failure.
        Err(_) if give_up.saturating_duration_since(in_flight_since) <= hold_at_most() => {
            wave.held_at_end.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => wave.hard_failure("register", None),
    }
    client.close().await;
}

/// The longest a node under test may hold a registration before answering it, and a second
/// for the answer's way back. The bench's nodes run with the default hold.
fn hold_at_most() -> Duration {
    Duration::from_millis(levee_relay::NodeConfig::default().registration_hold_ms)
        + Duration::from_secs(1)
}

/// The name of an error's kind, without the details that differ between occurrences: a
/// refusal by its code; a closed connection with why it closed — a node's silence, QUIC's
/// idle timeout and a close by the node are told apart, with numbers (durations, codes)
/// masked so that alike reasons count together.
fn error_kind(e: &ClientError) -> String {
    let kind = match e {
        ClientError::Refused { code, .. } => code.as_str_name(),
        ClientError::Closed(why) => {
            let why: String = why
                .chars()
                .take(70)
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            return format!("connection closed ({why})");
        }
        ClientError::Unreachable { .. } => "unreachable",
        ClientError::CertificateMismatch => "certificate mismatch",
        ClientError::Tls(_) => "TLS/QUIC",
        ClientError::Busy => "busy",
        ClientError::Protocol(_) => "protocol error",
        ClientError::Timeout(_) => "request timeout",
        ClientError::Invalid(_) => "invalid",
    };
    kind.to_owned()
}

/// Goodput against what the baseline leaves, or that it left nothing: a node its users
/// already kept fully busy before the wave would otherwise read as billions of percent.
fn of_what_is_left(r: &Row) -> String {
    if r.left_by_baseline_per_s < 1.0 {
        "the baseline left nothing".into()
    } else {
        format!(
            "{:.0}% of {:.0}",
            100.0 * r.goodput_of_left,
            r.left_by_baseline_per_s
        )
    }
}

/// The wave targets a row is judged by (admission on), each with whether it was met.
/// Admissions in ticket order are not among them: this bench does not see tickets' order
/// (the chaos drill's ledger checks it).
fn targets(r: &Row) -> [(&'static str, bool); 6] {
    [
        ("send success ≥ 99.9%", r.send_success >= 0.999),
        ("message p99 within the SLO", r.p99_within_slo),
        (
            "goodput ≥ 90% of SLO capacity",
            r.goodput_of_slo_capacity >= 0.9,
        ),
        ("0 hard failures", r.hard_failures == 0),
        ("admissions in ticket order", r.overtakes == 0),
        // Every request an admitted newcomer made, its connection attempts turned away at
        // the door included; the crowd's requests that never got in are the "all" column.
        (
            "≤ 2 requests per admitted newcomer",
            r.requests_per_admitted_newcomer <= 2.0,
        ),
    ]
}

fn print_table(rows: &[Row]) {
    println!(
        "| wave (× SLO capacity) | admission | offered/s (not offered) | goodput/s (of SLO capacity; of capacity; of what the baseline leaves) | admitted after wave | waiting: with ticket + held | still at the door | hard failures | requests per admitted: all (their own: at the door + registering) | send success | msg p50 | msg p99 (× unloaded; SLO) | node busy before the wave |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {}× of {:.0}/s | {} | {:.0} ({}) | {:.0} ({:.0}%; {:.0}%; {}) | {} | {} + {} | {} | {} | {:.2} ({:.2}: {:.2} + {:.2}) | {:.2}% | {:.1} ms | {:.1} ms ({:.2}×; {} {:.1} ms) | {:.0}% |",
            r.multiplier,
            r.slo_capacity_per_s,
            r.admission,
            r.offered_per_s,
            r.not_offered,
            r.goodput_per_s,
            100.0 * r.goodput_of_slo_capacity,
            100.0 * r.goodput_of_capacity,
            of_what_is_left(r),
            r.admitted_after_wave,
            r.still_waiting_with_ticket,
            r.still_held,
            r.still_refused,
            r.hard_failures,
            r.requests_per_admitted,
            r.requests_per_admitted_newcomer,
            r.door_attempts_per_admitted_newcomer,
            r.requests_per_admitted_newcomer - r.door_attempts_per_admitted_newcomer,
            100.0 * r.send_success,
            r.p50_ms,
            r.p99_ms,
            r.p99_vs_unloaded,
            if r.p99_within_slo { "within" } else { "over" },
            r.slo_ms,
            100.0 * r.unloaded_node_busy,
        );
    }
    for r in rows.iter().filter(|r| r.admission == "on") {
        let verdicts: Vec<String> = targets(r)
            .iter()
            .map(|(what, met)| format!("{what} {}", if *met { "met" } else { "NOT met" }))
            .collect();
        println!(
            "\ntargets, {}× admission on: {}",
            r.multiplier,
            verdicts.join("; ")
        );
    }
    for r in rows.iter().filter(|r| r.hard_failures > 0) {
        let kinds: Vec<String> = r
            .hard_failures_by_kind
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        println!(
            "\nhard failures, {}× admission {}: {}",
            r.multiplier,
            r.admission,
            kinds.join("; ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::without_node_label;

    #[test]
    fn the_trace_drops_only_the_node_label() {
        assert_eq!(without_node_label(r#"level{node="node-1"} 1"#), "level 1");
        assert_eq!(
            without_node_label(r#"shed_total{class="login",node="node-1"} 3"#),
            r#"shed_total{class="login"} 3"#
        );
        assert_eq!(
            without_node_label(r#"shed_total{node="n",class="login"} 3"#),
            r#"shed_total{class="login"} 3"#
        );
        assert_eq!(without_node_label("plain 2"), "plain 2");
    }
}
