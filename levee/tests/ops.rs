//! The operators' files in `ops/` against a real node: every metric the Grafana dashboard
//! and the Prometheus alert rules name is one a node really exports on its admin port.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestNode, admin_request, metric, receive};
use levee_relay::NodeConfig;

/// The test node's name, which every series it exports carries.
const NODE: &str = "ops-node";

/// Every series name a scrape can contain: each `# TYPE` family, with a histogram's
/// `_bucket`, `_sum` and `_count`.
fn exported(metrics_page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics_page.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The `levee_*` names in a PromQL expression.
fn metrics_named(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("levee_"))
        .map(str::to_owned)
        .collect()
}

/// Every query in the dashboard: panel targets (`expr`) and query variables (`definition`).
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The alert rules' expressions. The file keeps each `expr:` on one line, so reading lines
/// suffices here; promtool checks the YAML itself (`scripts/check-ops.sh`).
fn alert_exprs(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .map(|expr| expr.trim().to_owned())
        .collect()
}

fn ops_file(path: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::read_to_string(format!("{root}/{path}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_name_only_metrics_a_node_exports() {
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob) = TestNode::with_pair(dir.path(), |c: &mut NodeConfig| {
        c.node_name = NODE.into();
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    // Some traffic, so that histograms have samples (names are exported either way).
    alice.send(&bob.account(), b"hello".to_vec()).await.unwrap();
    let mut inbox = bob.subscribe().await.unwrap();
    assert_eq!(
        receive(&mut inbox, 1, Duration::from_secs(5)).await.len(),
        1
    );
    let (status, page) = admin_request(node.admin.unwrap(), "GET", "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let exported = exported(&page);
    assert!(
        exported.contains("levee_send_seconds_bucket"),
        "{exported:?}"
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&ops_file("ops/grafana/levee-dashboard.json")).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let alerts = alert_exprs(&ops_file("ops/prometheus/levee-alerts.yml"));
    assert_eq!(alerts.len(), 6, "{alerts:?}");

    // Exported only by a node on the CQL store (the distributed deployment, which this
    // embedded node is not); `bench/distributed.sh` reads it from real nodes' pages.
    const DISTRIBUTED_ONLY: [&str; 1] = ["levee_store_statements_total"];
    let mut unknown = BTreeSet::new();
    let mut used = BTreeSet::new();
    for expr in queries.iter().chain(&alerts) {
        let named = metrics_named(expr);
        assert!(
            !named.is_empty(),
            "a query that names no Levee metric: {expr}"
        );
        for name in named {
            if !exported.contains(&name) && !DISTRIBUTED_ONLY.contains(&name.as_str()) {
                unknown.insert(name.clone());
            }
            used.insert(name);
        }
    }
    assert!(unknown.is_empty(), "not exported by a node: {unknown:?}");
    // The line board's metrics move: the node (one line by default) exchanges with the
    // board every heartbeat, and its age is that of the last read, not "never" (+Inf, set
    // when the node joined the cluster's line).
    let admin = node.admin.unwrap();
    let rounds =
        format!("levee_roster_rounds_total{{node=\"{NODE}\",op=\"line_board\",outcome=\"ok\"}}");
    let mut counted = None;
    for _ in 0..50 {
        counted = metric(admin, &rounds).await;
        if counted.is_some_and(|n| n >= 2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        counted.is_some_and(|n| n >= 2.0),
        "no line board rounds counted in 5 s: {counted:?}"
    );
    let age = metric(
        admin,
        &format!("levee_line_board_age_seconds{{node=\"{NODE}\"}}"),
    )
    .await
    .unwrap();
    assert!((0.0..5.0).contains(&age), "line board age {age}");
    // What the dashboard is for (issue: per-node messaging rate and latency, admission,
    // shedding, the waiting line, tickets, connections, placement, delivery lag).
    for needed in [
        "levee_envelopes_accepted_total",
        "levee_send_seconds_bucket",
        "levee_admission_level",
        "levee_admission_shed_total",
        "levee_waiting_room_length",
        "levee_waiting_room_admission_rate",
        "levee_waiting_room_estimated_wait_seconds",
        "levee_tickets_rejected_total",
        "levee_connections",
        "levee_placement_epoch",
        "levee_shards_owned",
        "levee_delivery_lag_records",
        "levee_store_statements_total",
        "levee_line_board_age_seconds",
        "levee_cluster_line_behind_seconds",
    ] {
        assert!(used.contains(needed), "nothing shows {needed}");
    }
    node.stop().await;
}
