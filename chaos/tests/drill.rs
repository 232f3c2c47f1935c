//! Drills as CI plays them on every run, with real QUIC clients and every invariant
//! checked from the ledger:
//! - the short mass migration against the embedded local cluster (a signup wave, a node
//!   killed and a fresh one started);
//! - backend stalls and a partition, shortened, against the embedded cluster;
//! - the autoscale drill, shortened: one node, a wave, the HPA adding a second and draining
//!   it after;
//! - faults through the admin API against a cluster the drill did not start (the
//!   "running cluster" target), and refused when the nodes do not allow fault injection.
//!
//! The full drills are documented commands (`cargo run --release -p levee-chaos -- run
//! mass-migration`, `... run backend-stall`, `... run partition`, `... run autoscale`). Drills run one at a
//! time: two at once on a small CI machine would measure each other.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use levee_chaos::cluster::TargetSpec;
use levee_chaos::drill;
use levee_chaos::proxy::Proxy;
use levee_chaos::record::{DrillRecord, EventKind, RunRecord};
use levee_chaos::report;
use levee_chaos::scenario::Scenario;
use levee_client::Trust;
use levee_client::{Client, ClientConfig, ClientError};
use levee_relay::local_cluster::LocalCluster;
use levee_relay::{Identity, NodeConfig};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn assert_all_pass(run: &RunRecord) {
    for v in &run.verdicts {
        assert!(v.pass, "{}: {}", v.name, v.detail);
    }
    // The checks were about something: people messaged, and what was acknowledged arrived.
    let s = &run.summary;
    assert!(s.sends_acked > 0 && s.delivered >= s.sends_acked, "{s:?}");
}

/// Plays `scenario` on the embedded cluster, admission on.
async fn play_embedded(scenario: &Scenario) -> RunRecord {
    drill::run(scenario, &TargetSpec::Embedded, true, None)
        .await
        .unwrap()
}

/// The seconds of `run` from `from` to `to` (s into the run).
fn window(
    run: &RunRecord,
    from: u32,
    to: u32,
) -> impl Iterator<Item = &levee_chaos::record::Second> {
    run.seconds.iter().filter(move |s| s.t >= from && s.t < to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_mass_migration_keeps_every_invariant() {
    let _one_at_a_time = SERIAL.lock().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/mass-migration-short.toml");
    let scenario = Scenario::load(&path).unwrap();
    let run = play_embedded(&scenario).await;

    assert_all_pass(&run);
    // A wave came and the fault hit.
    let s = &run.summary;
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

/// Issue 26 part 2: three nodes of unequal speed, a wave through all of them, one killed
/// mid-wave. Admissions follow ticket order across the cluster (the ledger's invariant),
/// and everyone who arrived is admitted by the end, the dead node's ticket holders too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_for_the_cluster_through_a_node_death() {
    let _one_at_a_time = SERIAL.lock().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/cluster-line.toml");
    let scenario = Scenario::load(&path).unwrap();
    let run = play_embedded(&scenario).await;

    assert_all_pass(&run);
    let s = &run.summary;
    assert!(
        run.seconds.iter().any(|second| second.waiting > 0),
        "newcomers were told to wait: a line stood"
    );
    assert!(run.events.iter().any(|e| e.kind == EventKind::NodeDown));
    assert_eq!(
        s.registrations_admitted, s.registrations_offered,
        "every newcomer admitted by the end: {s:?}"
    );
}

/// A store stall, a log stall and a partition, short: what `backend-stall` and
/// `partition` do, in one run.
const FAULTS: &str = r#"
name = "faults-short"
description = "Store stall, log stall, partition."
duration_s = 30
drain_s = 20

[cluster]
nodes = 3
shards = 32

[population]
established = 30
contacts = 3
send_interval_s = 0.5

[[faults]]
at_s = 4
kind = "stall_backend"
backend = "store"
for_s = 4

[[faults]]
at_s = 11
kind = "stall_backend"
backend = "log"
for_s = 4

[[faults]]
at_s = 18
kind = "partition"
node = 2
for_s = 4
"#;

/// The `autoscale` drill in half a minute: one node seating 2 registrations a second, a
/// wave of 4, the HPA between 1 and 2 nodes with 1 s periods.
const AUTOSCALE: &str = r#"
name = "autoscale-short"
description = "A short wave against one node, autoscaled to two and back."
duration_s = 35
drain_s = 10

[cluster]
nodes = 1
shards = 16
registration_max_per_s = 2.0
load_target_wait_s = 5.0

[population]
established = 6
contacts = 2
send_interval_s = 1.0
newcomer_messages = 1

[wave]
start_s = 3
ramp_s = 2
hold_s = 8
decay_s = 4
base_per_s = 0.2
capacity_per_s = 2
peak_multiplier = 2

[autoscale]
min_nodes = 1
max_nodes = 2
period_s = 1
down_window_s = 4
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_adds_a_node_in_a_wave_and_drains_it_after() {
    let _one_at_a_time = SERIAL.lock().await;
    let scenario = Scenario::parse(AUTOSCALE).unwrap();
    let run = play_embedded(&scenario).await;
    // What the autoscaler read, for a failure's sake.
    for p in &run.autoscale {
        println!("{p:?}");
    }
    assert_all_pass(&run);
    let most = run.autoscale.iter().map(|p| p.nodes).max().unwrap();
    assert_eq!(most, 2, "scaled out: {:?}", run.autoscale);
    assert_eq!(run.autoscale.last().unwrap().nodes, 1, "and back in");
    assert!(
        run.drained.iter().all(|d| d.took_s.is_some()),
        "{:?}",
        run.drained
    );
    // The verdicts above include the autoscaler's own.
    assert!(
        run.verdicts
            .iter()
            .any(|v| v.name.contains("scale-out began")),
        "{:?}",
        run.verdicts
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_backends_and_a_partition_lose_nothing() {
    let _one_at_a_time = SERIAL.lock().await;
    let scenario = Scenario::parse(FAULTS).unwrap();
    let run = play_embedded(&scenario).await;
    assert_all_pass(&run);
    let s = &run.summary;
    assert_eq!(
        s.sends_failed, 0,
        "every stall and cut is shorter than a send's patience"
    );
    // The faults hit. While the log is stalled no send can be acknowledged, so whole
    // seconds inside that stall acknowledge nothing.
    assert!(
        window(&run, 12, 15).any(|s| s.messaging.ok == 0 && s.messaging.offered > 0),
        "no second of the log stall went without acknowledgements"
    );
    // While node-2 is cut off, its users' sends hang: some seconds acknowledge less than
    // was offered.
    assert!(
        window(&run, 18, 22).any(|s| s.messaging.ok < s.messaging.offered),
        "the partition held nobody up"
    );
    let labels: Vec<&str> = run.events.iter().map(|e| e.label.as_str()).collect();
    for expected in [
        "stall store on every node for 4 s",
        "log back on node-1, node-2, node-3",
        "cut node-2 off from clients for 4 s",
        "node-2 reachable again",
    ] {
        assert!(
            labels.contains(&expected),
            "{expected} missing from {labels:?}"
        );
    }
}

/// Kill, start and stall through the admin API of a cluster the drill did not start.
const REMOTE: &str = r#"
name = "remote-short"
description = "Faults through the admin API."
duration_s = 22
drain_s = 15

[population]
established = 20
contacts = 3
send_interval_s = 0.5

[[faults]]
at_s = 5
kind = "kill_node"
node = 2

[[faults]]
at_s = 10
kind = "start_node"

[[faults]]
at_s = 14
kind = "stall_backend"
node = 1
for_s = 3
"#;

async fn running_cluster(
    dir: &Path,
    fault_injection: bool,
) -> (std::sync::Arc<LocalCluster>, TargetSpec) {
    let key = "cd".repeat(32);
    let cluster = LocalCluster::open(NodeConfig {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        shards: 32,
        cluster_key: Some(key.clone()),
        admin_token: Some("drill-token".into()),
        fault_injection,
        connections_per_prefix_per_sec: 1_000_000,
        ..NodeConfig::default()
    })
    .unwrap();
    for _ in 0..3 {
        cluster.add_node().await.unwrap();
    }
    let spec = TargetSpec::Remote {
        admins: cluster.nodes().iter().map(|n| n.admin.unwrap()).collect(),
        token: Some("drill-token".into()),
        cluster_key: key,
        start_command: None,
    };
    (cluster, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_reach_a_running_cluster_through_its_admin_api_only_when_it_allows_them() {
    let _one_at_a_time = SERIAL.lock().await;
    let scenario = Scenario::parse(REMOTE).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (cluster, spec) = running_cluster(dir.path(), true).await;
    let run = drill::run(&scenario, &spec, true, None).await.unwrap();
    assert_all_pass(&run);
    assert_eq!(run.label, "running cluster, as configured");
    let kinds: Vec<EventKind> = run.events.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::NodeDown) && kinds.contains(&EventKind::NodeUp));
    // The crash and the start happened in the cluster itself, through its admin port.
    let names: Vec<String> = cluster.nodes().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["node-1", "node-3", "node-4"]);
    cluster.shutdown().await.unwrap();

    // Without fault_injection the nodes refuse, the drill says so, and nobody is harmed.
    let dir = tempfile::tempdir().unwrap();
    let (cluster, spec) = running_cluster(dir.path(), false).await;
    let quick = r#"
        name = "refused"
        description = "Faults a cluster does not allow."
        duration_s = 4
        drain_s = 5
        [population]
        established = 4
        contacts = 1
        send_interval_s = 1
        [[faults]]
        at_s = 1
        kind = "kill_node"
        node = 2
        [[faults]]
        at_s = 2
        kind = "stall_backend"
        for_s = 3
    "#;
    let quick = Scenario::parse(quick).unwrap();
    let run = drill::run(&quick, &spec, true, None).await.unwrap();
    let faults = &run.verdicts[0];
    assert!(!faults.pass, "{faults:?}");
    assert!(
        faults.detail.contains("fault injection is off"),
        "{}",
        faults.detail
    );
    assert_eq!(cluster.nodes().len(), 3, "no node was harmed");
    cluster.shutdown().await.unwrap();
}

/// A node that goes silent (crashed, or cut off) is taken for dead by a waiting client
/// long before QUIC's 30 s idle timeout: the client probes, and nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_takes_a_silent_node_for_dead_instead_of_waiting_out_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::open(NodeConfig {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 32,
        ..NodeConfig::default()
    })
    .unwrap();
    let proxy = Proxy::bind().unwrap();
    let node = cluster
        .add_node_with(|c| c.advertise_address = Some(proxy.addr()))
        .await
        .unwrap();
    proxy.forward_to(node.address);
    let config = ClientConfig::new(proxy.addr(), Trust::Fingerprint(node.fingerprint));
    let alice = Client::connect(&config, Identity::generate().unwrap())
        .await
        .unwrap();
    alice.register().await.unwrap();
    let bob = Client::connect(&config, Identity::generate().unwrap())
        .await
        .unwrap();
    bob.register().await.unwrap();
    alice.send(&bob.account(), "before").await.unwrap();

    proxy.cut(Duration::from_secs(120));
    let err = alice
        .send(&bob.account(), "into the silence")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Closed(why) if why.contains("sent nothing")),
        "{err}"
    );
    cluster.shutdown().await.unwrap();
}
