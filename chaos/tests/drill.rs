//! The short mass migration against the embedded local cluster, as CI plays it on every
//! run: real QUIC clients, a real signup wave, a node killed and a fresh one started, and
//! every invariant checked from the ledger. The full drill is a documented command:
//! `cargo run --release -p levee-chaos -- run mass-migration`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use levee_chaos::drill;
use levee_chaos::record::{DrillRecord, EventKind};
use levee_chaos::report;
use levee_chaos::scenario::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_mass_migration_keeps_every_invariant() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/mass-migration-short.toml");
    let scenario = Scenario::load(&path).unwrap();
    let run = drill::run(&scenario, true, None).await.unwrap();

    for v in &run.verdicts {
        assert!(v.pass, "{}: {}", v.name, v.detail);
    }
    // The invariants were about something: people messaged, a wave came, the fault hit.
    let s = &run.summary;
    assert!(s.sends_acked > 0 && s.delivered >= s.sends_acked, "{s:?}");
    assert!(s.registrations_offered > 100, "{s:?}");
    assert!(s.registrations_admitted > 0, "{s:?}");
    let kinds: Vec<EventKind> = run.events.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::NodeDown) && kinds.contains(&EventKind::NodeUp));
    assert!(
        run.seconds.len() as f64 >= scenario.duration_s,
        "a row per second of play"
    );
    assert!(
        run.seconds
            .iter()
            .any(|s| s.nodes_up < scenario.cluster.nodes),
        "the timeline shows the node down"
    );

    // The record round-trips as JSON and renders.
    let record = DrillRecord {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        runs: vec![run],
        ..DrillRecord::default()
    };
    let json = serde_json::to_string(&record).unwrap();
    let back: DrillRecord = serde_json::from_str(&json).unwrap();
    assert!(back.passed());
    let html = report::html(&back);
    assert!(html.contains("mass-migration-short") && html.contains("<svg"));
}
