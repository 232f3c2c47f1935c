//! `levee-wave`: the signup-wave simulator and capacity planner (see
//! `levee_bench::wave` for the model).
//!
//! ```sh
//! levee-wave                          # 40 million newcomers over 72 h on 100 nodes
//! levee-wave --nodes 300 --failures 5 # more nodes, five of them dying during the wave
//! levee-wave --plan                   # the fewest nodes that keep the median wait ≤ 10 min
//! levee-wave --rig                    # the 2-core machine's levee-surge run, simulated
//! ```

use anyhow::{Context, bail};
use clap::Parser;
use levee_bench::slo::{RateSearch, probe_within};
use levee_bench::wave::{Costs, Failure, Outcome, Scenario, Wave, simulate};
use levee_relay::NodeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "levee-wave",
    about = "Simulates a signup wave on a Levee cluster, driving the nodes' real admission code",
    long_about = "Simulates a signup wave on a Levee cluster: a deterministic discrete-event \
                  simulation in which every simulated node runs the node's own admission \
                  decisions (controller, waiting line, signed tickets, door) and every \
                  newcomer follows the real client's retry rules, with per-request CPU costs \
                  measured on a real node. Reports the time to admission, ticket-order \
                  violations, requests per admission and the established users' shed rate \
                  and p99; --plan finds the node count that keeps the median wait under a \
                  target; --rig simulates the levee-surge run of the development machine."
)]
struct Args {
    /// Nodes at the start.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// CPU cores per node.
    #[arg(long, default_value_t = 2.0)]
    node_cores: f64,
    /// Share of each node's CPU its established users' messages take.
    #[arg(long, default_value_t = 0.5)]
    baseline: f64,
    /// The established users' message p99 with no newcomers, ms.
    #[arg(long, default_value_t = 10.0)]
    unloaded_p99_ms: f64,
    /// Newcomers in all (the default: Signal's January 2021 weekend, in round numbers).
    #[arg(long, default_value_t = 40e6)]
    newcomers: f64,
    /// Hours the wave lasts.
    #[arg(long, default_value_t = 72.0)]
    hours: f64,
    /// The highest arrival rate, as a multiple of the mean.
    #[arg(long, default_value_t = 20.0)]
    peak: f64,
    /// Instead of surges: newcomers per second, evenly spaced, for --steady-secs.
    #[arg(long)]
    steady_per_s: Option<f64>,
    /// Seconds a steady wave lasts.
    #[arg(long, default_value_t = 10.0)]
    steady_secs: f64,
    /// Seconds after the wave in which those still waiting may finish (default: 6 h after
    /// surges, 20 s after a steady wave).
    #[arg(long)]
    drain_s: Option<f64>,
    /// Most registrations a node seats per second (the node's `registration_max_per_s`; 0:
    /// no ceiling): what a shared account store or verification gateway behind the nodes
    /// allows each, which the simulator does not otherwise model.
    #[arg(long, default_value_t = 0.0)]
    registration_max_per_s: f64,
    /// Run with admission control off (every node takes every connection and request).
    #[arg(long)]
    admission_off: bool,
    /// Each node's line on its own, without the cluster's line board (what nodes did
    /// before the cluster-wide line): for comparison.
    #[arg(long)]
    independent_lines: bool,
    /// Nodes that die during the wave (node 0, 1, ...), evenly spaced in time across a steady
    /// wave or across the two busiest hours of surges (around the first evening's peak).
    #[arg(long, default_value_t = 0)]
    failures: usize,
    /// Per-request CPU costs, a JSON file as `levee-surge costs` prints (default:
    /// the costs measured on the development machine, in docs/PERFORMANCE.md).
    #[arg(long)]
    costs: Option<std::path::PathBuf>,
    /// CPU µs of one established user's envelope, instead of the costs' (what the users'
    /// messages cost at their own rate: at a low rate an envelope is not batched with
    /// others and costs several times what it does at a node's full capacity).
    #[arg(long)]
    message_us: Option<f64>,
    /// Multiply every cost (a node this many times slower per core).
    #[arg(long, default_value_t = 1.0)]
    cost_scale: f64,
    /// Simulate this share of the cluster: nodes and newcomers both scaled by it (nodes
    /// rounded, newcomers by the same ratio), so each node sees the same arrivals. Newcomers
    /// pick nodes at random, so the waits, requests and shares come out the same at a tenth
    /// of the cost; counts are of the part simulated. Node failures scale too.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Seed of every random choice; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds between points of the time series (default: an hour for surges, a second
    /// for a steady wave).
    #[arg(long)]
    series_every_s: Option<f64>,
    /// Find the fewest nodes (from --nodes up) that keep the wait (--target-percentile,
    /// the median by default) within --target-wait-s.
    #[arg(long)]
    plan: bool,
    /// The wait --plan aims for, seconds.
    #[arg(long, default_value_t = 600.0)]
    target_wait_s: f64,
    /// Which wait --plan holds to the target: the median (50), or the 90th or 99th
    /// percentile of the time to admission.
    #[arg(long, default_value_t = 50, value_parser = parse_percentile)]
    target_percentile: u8,
    /// Simulate the development machine's `levee-surge` run instead: one node of
    /// --node-cores (0.25 unless given), its SLO capacity found by the same bisection, then
    /// waves of 10× and 50× of it with admission on and off.
    #[arg(long)]
    rig: bool,
    /// Print JSON lines instead of tables.
    #[arg(long)]
    json: bool,
}

fn parse_percentile(s: &str) -> Result<u8, String> {
    match s {
        "50" => Ok(50),
        "90" => Ok(90),
        "99" => Ok(99),
        _ => Err(format!("`{s}`: expected 50, 90 or 99")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let costs = match &args.costs {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<Costs>(&text)
                .with_context(|| format!("{} is not a costs file", path.display()))?
        }
        None => Costs::default(),
    }
    .scaled(args.cost_scale);
    let costs = Costs {
        message_us: args.message_us.unwrap_or(costs.message_us),
        ..costs
    };
    if !(args.baseline >= 0.0 && args.baseline < 1.0) {
        bail!("--baseline must be in [0, 1)");
    }
    if !(args.scale > 0.0 && args.scale <= 1.0) {
        bail!("--scale must be in (0, 1]");
    }
    if args.rig {
        return rig(&args, costs);
    }
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let scenario = scenario(&args, costs, args.nodes);
    scenario
        .node
        .validate()
        .map_err(|e| anyhow::anyhow!("node configuration: {e}"))?;
    if args.plan {
        return plan(&args, costs);
    }
    let started = std::time::Instant::now();
    let outcome = simulate(&scenario);
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        print_outcome(&args, &scenario, &outcome);
        eprintln!(
            "simulated in {:.1} s of wall time",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The scenario for `nodes` nodes, of which `--scale` is simulated.
fn scenario(args: &Args, costs: Costs, nodes: usize) -> Scenario {
    let simulated = ((nodes as f64 * args.scale).round() as usize).max(1);
    let ratio = simulated as f64 / nodes as f64;
    let wave = match args.steady_per_s {
        Some(per_s) => Wave::Steady {
            per_s: per_s * ratio,
            secs: args.steady_secs,
        },
        None => Wave::Surges {
            newcomers: args.newcomers * ratio,
            hours: args.hours,
            peak: args.peak,
        },
    };
    let nodes = simulated;
    let failures = (args.failures as f64 * ratio).round() as usize;
    let steady = matches!(wave, Wave::Steady { .. });
    let secs = wave.secs();
    // Nodes die through a steady wave, or through the two busiest hours of surges (around
    // the first evening's peak), when their lines are longest.
    let (failing_from, failing_for) = if steady {
        (0.0, secs)
    } else {
        let peak = secs.min(86_400.0) * 20.0 / 24.0;
        ((peak - 3600.0).max(0.0), 7200.0f64.min(secs))
    };
    Scenario {
        nodes,
        node_cores: args.node_cores,
        baseline: args.baseline,
        unloaded_p99_ms: args.unloaded_p99_ms,
        drain_s: args
            .drain_s
            .unwrap_or(if steady { 20.0 } else { 6.0 * 3600.0 }),
        wave,
        node: NodeConfig {
            admission: !args.admission_off,
            registration_max_per_s: args.registration_max_per_s,
            ..NodeConfig::default()
        },
        costs,
        one_line: !args.independent_lines,
        failures: (0..failures.min(nodes.saturating_sub(1)))
            .map(|i| Failure {
                at_s: failing_from + failing_for * (i + 1) as f64 / (failures + 1) as f64,
                node: i,
            })
            .collect(),
        round_trip: std::time::Duration::from_millis(50),
        seed: args.seed,
        series_every_s: args
            .series_every_s
            .unwrap_or(if steady { 1.0 } else { 3600.0 }),
    }
}

fn print_outcome(args: &Args, s: &Scenario, o: &Outcome) {
    let w = o.admission_wait_s;
    if s.nodes != args.nodes {
        println!(
            "simulated: {} of {} nodes and as large a share of the newcomers (--scale {})",
            s.nodes, args.nodes, args.scale
        );
    }
    println!(
        "{} nodes × {} cores, users at {:.0}% of each ({:.0} messages/s per node); admission {}; {} node deaths",
        s.nodes,
        s.node_cores,
        100.0 * s.baseline,
        s.user_messages_per_node_s(),
        if s.node.admission { "on" } else { "off" },
        o.node_deaths,
    );
    println!("| measure | value |\n|---|---|");
    let rows = [
        ("newcomers arrived", o.arrived.to_string()),
        (
            "admitted",
            format!(
                "{} ({:.1}%)",
                o.admitted,
                100.0 * o.admitted as f64 / o.arrived.max(1) as f64
            ),
        ),
        (
            "still waiting at the end: with a ticket / at the door",
            format!("{} / {}", o.waiting_with_ticket, o.at_door),
        ),
        ("hard failures", o.hard_failures.to_string()),
        (
            "time to admission p50 / p90 / p99 / max",
            format!(
                "{} / {} / {} / {}",
                duration(w[0]),
                duration(w[1]),
                duration(w[2]),
                duration(w[3])
            ),
        ),
        (
            "requests per admitted: all (their own)",
            format!(
                "{:.2} ({:.2})",
                o.requests_per_admitted, o.own_requests_per_admitted
            ),
        ),
        (
            "overtaken in the cluster's line: places ≥1 s apart / any two",
            format!("{} / {}", o.overtakes, o.strict_overtakes),
        ),
        (
            "kept away while a later place got in (told to wait past it by over 2 s)",
            o.kept_away.to_string(),
        ),
        (
            "tickets refused (expired: the holder starts over at the back)",
            o.tickets_rejected.to_string(),
        ),
        (
            "established users' messages shed",
            format!("{:.3}%", 100.0 * o.users_shed),
        ),
        (
            "established users' p99 (SLO)",
            format!("{:.1} ms ({:.1} ms)", o.users_p99_ms, o.users_slo_ms),
        ),
        (
            "handshakes / door drops / told to wait / connections lost",
            format!(
                "{} / {} / {} / {}",
                o.handshakes, o.door_drops, o.queued, o.connections_lost
            ),
        ),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    chart(o);
}

/// An hour or a second per line: arrived and admitted so far, and how many wait.
fn chart(o: &Outcome) {
    let Some(top) = o.series.iter().map(|p| p.arrived).max().filter(|&t| t > 0) else {
        return;
    };
    const WIDTH: f64 = 50.0;
    println!(
        "\n  time    admitted ('#') of arrived ('.')                      waiting: in line + at the door"
    );
    for p in &o.series {
        let admitted = (WIDTH * p.admitted as f64 / top as f64).round() as usize;
        let arrived = (WIDTH * p.arrived as f64 / top as f64).round() as usize;
        println!(
            "{:>7} |{}{}{}| {} + {}",
            duration(p.at_s),
            "#".repeat(admitted),
            ".".repeat(arrived.saturating_sub(admitted)),
            " ".repeat(WIDTH as usize - arrived.max(admitted)),
            p.in_line,
            p.at_door
        );
    }
}

fn duration(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1} h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{secs:.1} s")
    }
}

/// Doubles the node count until the median wait is within the target, then bisects (to
/// within 5%, or the node count one simulated node stands for at `--scale`).
fn plan(args: &Args, costs: Costs) -> anyhow::Result<()> {
    let target = args.target_wait_s;
    let which = match args.target_percentile {
        50 => 0,
        90 => 1,
        _ => 2,
    };
    let mut tried: Vec<(usize, Outcome)> = Vec::new();
    let mut run = |nodes: usize| {
        let outcome = simulate(&scenario(args, costs, nodes));
        // Everyone must be admitted too: a wait measured over those admitted says nothing of
        // those still waiting at the end.
        let ok = outcome.admitted == outcome.arrived && outcome.admission_wait_s[which] <= target;
        eprintln!(
            "{nodes} nodes: p{} wait {}, {} of {} admitted",
            args.target_percentile,
            duration(outcome.admission_wait_s[which]),
            outcome.admitted,
            outcome.arrived
        );
        tried.push((nodes, outcome));
        ok
    };
    let (mut low, mut high) = (0, args.nodes.max(1));
    let step = (1.0 / args.scale).ceil() as usize;
    while !run(high) {
        low = high;
        high *= 2;
        if high > 100_000 {
            bail!(
                "no node count up to 100,000 keeps the p{} wait within {target} s",
                args.target_percentile
            );
        }
    }
    while high - low > (high / 20).max(step) {
        let mid = (low + high) / 2;
        if run(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    tried.sort_by_key(|(n, _)| *n);
    if args.json {
        for (n, o) in &tried {
            println!("{}", serde_json::json!({ "nodes": n, "outcome": o }));
        }
        return Ok(());
    }
    println!(
        "| nodes | wait p50 | p90 | p99 | admitted | requests per admitted: all (own) | overtaken: ≥1 s apart / any | users shed | users p99 |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (n, o) in &tried {
        println!(
            "| {n} | {} | {} | {} | {:.1}% | {:.2} ({:.2}) | {} / {} | {:.3}% | {:.1} ms |",
            duration(o.admission_wait_s[0]),
            duration(o.admission_wait_s[1]),
            duration(o.admission_wait_s[2]),
            100.0 * o.admitted as f64 / o.arrived.max(1) as f64,
            o.requests_per_admitted,
            o.own_requests_per_admitted,
            o.overtakes,
            o.strict_overtakes,
            100.0 * o.users_shed,
            o.users_p99_ms
        );
    }
    println!(
        "\nfewest nodes with the p{} wait within {}: {high} (to within 5%, or {step})",
        args.target_percentile,
        duration(target)
    );
    Ok(())
}

/// The development machine's `levee-surge` run, simulated: one node, its SLO capacity by
/// the same bisection (admission off, steady rates, `--slo-probes 6` of 6 s), then 10× and
/// 50× waves of 10 s with a 20 s drain, admission on and off.
fn rig(args: &Args, costs: Costs) -> anyhow::Result<()> {
    let cores = if args.node_cores == 2.0 {
        0.25
    } else {
        args.node_cores
    };
    let base = |per_s: f64, secs: f64, admission: bool, drain_s: f64| Scenario {
        nodes: 1,
        node_cores: cores,
        baseline: args.baseline,
        unloaded_p99_ms: args.unloaded_p99_ms,
        wave: Wave::Steady { per_s, secs },
        drain_s,
        node: NodeConfig {
            admission,
            ..NodeConfig::default()
        },
        costs,
        failures: Vec::new(),
        one_line: true,
        round_trip: std::time::Duration::from_millis(1),
        seed: args.seed,
        series_every_s: 1.0,
    };
    let capacity = base(0.0, 0.0, false, 0.0).node_registration_capacity();
    let mut search = RateSearch::new(capacity);
    for _ in 0..6 {
        let rate = search.next();
        let o = simulate(&base(rate, 6.0, false, 0.0));
        search.record(
            rate,
            probe_within(rate, o.goodput_per_s, o.users_p99_ms, o.users_slo_ms),
        );
    }
    let slo = search.best();
    eprintln!(
        "one node of {cores} cores, users at {:.0}% of it: registration capacity {capacity:.0}/s, SLO capacity {slo:.0}/s",
        100.0 * args.baseline
    );
    if !args.json {
        println!(
            "| wave | admission | offered/s | goodput/s (of SLO capacity) | admitted after wave | waiting with ticket | at the door | hard failures | requests per admitted: all (own) | users shed | users p99 (SLO) | overtakes |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
    }
    for multiplier in [10.0, 50.0] {
        for admission in [true, false] {
            let o = simulate(&base(slo * multiplier, 10.0, admission, 20.0));
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"multiplier": multiplier, "admission": admission, "slo_capacity": slo, "outcome": o})
                );
                continue;
            }
            let in_wave = (o.goodput_per_s * 10.0).round() as u64;
            println!(
                "| {multiplier}× | {} | {:.0} | {:.0} ({:.0}%) | {} | {} | {} | {} | {:.2} ({:.2}) | {:.2}% | {:.1} ms ({:.1}) | {} |",
                if admission { "on" } else { "off" },
                slo * multiplier,
                o.goodput_per_s,
                100.0 * o.goodput_per_s / slo.max(1e-9),
                o.admitted - in_wave.min(o.admitted),
                o.waiting_with_ticket,
                o.at_door,
                o.hard_failures,
                o.requests_per_admitted,
                o.own_requests_per_admitted,
                100.0 * o.users_shed,
                o.users_p99_ms,
                o.users_slo_ms,
                o.overtakes
            );
        }
    }
    Ok(())
}
