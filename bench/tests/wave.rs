//! The wave simulator drives the real admission code: what admission does in it must show.

use std::time::Duration;

use levee_bench::wave::{Costs, Failure, Outcome, Scenario, Wave, simulate};
use levee_relay::NodeConfig;

/// One quarter-core node, half of it the users', a steady wave of `per_s` for 10 s.
fn rig(per_s: f64, admission: bool) -> Scenario {
    Scenario {
        nodes: 1,
        node_cores: 0.25,
        baseline: 0.5,
        unloaded_p99_ms: 10.0,
        wave: Wave::Steady { per_s, secs: 10.0 },
        drain_s: 20.0,
        node: NodeConfig {
            admission,
            ..NodeConfig::default()
        },
        costs: Costs::default(),
        failures: Vec::new(),
        one_line: true,
        round_trip: Duration::from_millis(1),
        seed: 7,
        series_every_s: 1.0,
    }
}

fn summary(o: &Outcome) -> (u64, u64, u64, u64, u64, [u64; 4]) {
    (
        o.arrived,
        o.admitted,
        o.handshakes,
        o.door_drops,
        o.queued,
        o.admission_wait_s.map(|s| (s * 1000.0) as u64),
    )
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let scenario = Scenario {
        wave: Wave::Surges {
            newcomers: 20_000.0,
            hours: 1.0,
            peak: 3.0,
        },
        nodes: 2,
        drain_s: 600.0,
        series_every_s: 300.0,
        ..rig(0.0, true)
    };
    let (a, b) = (simulate(&scenario), simulate(&scenario));
    assert_eq!(summary(&a), summary(&b));
    assert!(a.arrived > 15_000, "about 20,000 arrive: {}", a.arrived);
    let other = simulate(&Scenario {
        seed: 8,
        ..scenario
    });
    assert_ne!(summary(&a), summary(&other));
}

#[test]
fn admission_keeps_the_users_within_their_slo_where_none_does_not() {
    let capacity = rig(0.0, true).node_registration_capacity();
    let on = simulate(&rig(10.0 * capacity, true));
    let off = simulate(&rig(10.0 * capacity, false));
    eprintln!("on: {on:?}\noff: {off:?}");
    assert!(
        on.users_p99_ms <= on.users_slo_ms && off.users_p99_ms > off.users_slo_ms,
        "users' p99: on {} ms, off {} ms, SLO {} ms",
        on.users_p99_ms,
        off.users_p99_ms,
        on.users_slo_ms
    );
    assert_eq!(on.hard_failures, 0);
    assert!(on.queued > 0, "the line handed out tickets");
    assert!(on.door_drops > 0, "the door held the crowd back");
    assert_eq!(off.queued, 0, "without admission nobody waits in line");
    assert_eq!(on.overtakes, 0, "one line, one order");
    assert!(on.admitted > 0 && on.admitted <= on.arrived);
}

#[test]
fn a_node_dying_mid_wave_loses_nobody_and_its_newcomers_start_over_elsewhere() {
    let scenario = Scenario {
        nodes: 3,
        failures: vec![Failure { at_s: 5.0, node: 0 }],
        drain_s: 120.0,
        ..rig(300.0, true)
    };
    let o = simulate(&scenario);
    assert_eq!(o.node_deaths, 1);
    assert!(o.connections_lost > 0, "{o:?}");
    assert_eq!(o.hard_failures, 0);
    assert_eq!(
        o.admitted, o.arrived,
        "everyone is admitted by the end of a long drain: {} at the door, {} with a ticket",
        o.at_door, o.waiting_with_ticket
    );
    assert_eq!(
        o.overtakes, 0,
        "one order for the cluster, through a node's death"
    );
}

#[test]
fn surges_bring_exactly_the_newcomers_asked_for_peaking_near_the_peak_asked_for() {
    let wave = Wave::Surges {
        newcomers: 1e6,
        hours: 72.0,
        peak: 20.0,
    };
    let profile = levee_bench::wave::Profile::new(&wave);
    let step = 10.0;
    let total: f64 = (0..(72.0 * 3600.0 / step) as usize)
        .map(|i| profile.rate((i as f64 + 0.5) * step) * step)
        .sum();
    assert!((total - 1e6).abs() < 1e4, "{total}");
    let mean = 1e6 / (72.0 * 3600.0);
    let first_peak = profile.rate(20.0 * 3600.0);
    assert!(
        (18.0 * mean..22.0 * mean).contains(&first_peak),
        "{first_peak} against a mean of {mean}"
    );
    assert!(
        profile.rate(44.0 * 3600.0) < first_peak,
        "the second day's is smaller"
    );
    assert!(
        profile.rate(8.0 * 3600.0) < mean / 100.0,
        "mornings are quiet"
    );
}
