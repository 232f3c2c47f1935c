//! The distributed roster against real Apache Cassandra (`scripts/services.sh up`): the
//! epoch and rows every node computes its view from. A test binary of its own, because it
//! loads the database as hard as it can, and the other distributed tests must not run
//! beside it. `./scripts/test.sh` runs it; by hand:
//!
//! ```sh
//! scripts/services.sh up && cargo test -p levee-relay --test roster -- --ignored
//! ```
//!
//! `LEVEE_CQL` overrides the database's address (127.0.0.1:19042).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::unique;
use levee_relay::cluster::{CqlRoster, NodeInfo, NodeState, Roster, RosterError};
use scylla::client::session_builder::SessionBuilder;

/// A session to the test database, with the keyspace the roster tables go in.
async fn session() -> Arc<scylla::client::session::Session> {
    let cql = std::env::var("LEVEE_CQL").unwrap_or_else(|_| "127.0.0.1:19042".into());
    let session = Arc::new(SessionBuilder::new().known_node(cql).build().await.unwrap());
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS levee_dist WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            (),
        )
        .await
        .unwrap();
    session
}

/// Every node computes its view from the roster's rows at an epoch and recomputes it only
/// when the epoch moves, so two snapshots at one epoch must hold the same rows, however
/// fast the rows change. Three observers take snapshots while a fourth handle adds and
/// removes a row as fast as the database lets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn roster_snapshots_during_churn_pair_each_epoch_with_one_set_of_rows() {
    let session = session().await;
    let cluster = unique("roster");
    let open = || {
        CqlRoster::connect(
            session.clone(),
            "levee_dist",
            &cluster,
            Duration::from_secs(60),
        )
    };
    let row = |name: &str| NodeInfo {
        name: name.to_owned(),
        address: "127.0.0.1:4433".parse().unwrap(),
        fingerprint: levee_relay::tls::Fingerprint([7; 32]),
        region: "local".to_owned(),
        weight: 1,
        state: NodeState::Active,
    };
    let stable = open().await.unwrap();
    stable.join(row("stable")).await.unwrap();

    let churner = open().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let churning = tokio::spawn({
        let stop = stop.clone();
        let churn = row("churn");
        async move {
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // A write the database timed out is simply tried again.
                if churner.join(churn.clone()).await.is_ok() && churner.leave("churn").await.is_ok()
                {
                    flips += 1;
                }
            }
            flips
        }
    });
    let mut observers = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let roster = open().await.unwrap();
        observers.spawn(async move {
            let (mut seen, mut unsettled, mut failed) = (Vec::new(), 0u32, 0u32);
            let until = Instant::now() + Duration::from_secs(8);
            while Instant::now() < until {
                match roster.snapshot().await {
                    Ok(s) => seen.push((s.epoch, s.nodes)),
                    Err(RosterError::Unsettled(_)) => unsettled += 1,
                    // The database falls behind this load now and then (its Paxos reads
                    // time out); a node keeps its view then, as here.
                    Err(RosterError::Backend(_)) => failed += 1,
                    Err(e) => panic!("snapshot failed: {e}"),
                }
            }
            (seen, unsettled, failed)
        });
    }
    let mut rows_at: BTreeMap<u64, Vec<NodeInfo>> = BTreeMap::new();
    let (mut snapshots, mut unsettled, mut failed) = (0, 0, 0);
    for (seen, n, f) in observers.join_all().await {
        unsettled += n;
        failed += f;
        for (epoch, nodes) in seen {
            snapshots += 1;
            let first = rows_at.entry(epoch).or_insert_with(|| nodes.clone());
            assert_eq!(
                *first, nodes,
                "two snapshots at epoch {epoch} hold different rows"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = churning.await.unwrap();
    println!(
        "{snapshots} snapshots at {} epochs, {unsettled} unsettled, {failed} failed, {flips} flips",
        rows_at.len()
    );
    assert!(
        rows_at.len() >= 2,
        "the rows changed under the observers ({flips} flips) but they saw one epoch"
    );
}

/// One row that does not parse (a bad address, here) used to fail every node's snapshot,
/// and so froze every view. It is left out and counted; the others are read as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn a_row_that_does_not_parse_is_left_out_and_counted() {
    let session = session().await;
    let cluster = unique("roster-bad-row");
    let roster = CqlRoster::connect(
        session.clone(),
        "levee_dist",
        &cluster,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    roster
        .join(NodeInfo {
            name: "good".to_owned(),
            address: "127.0.0.1:4433".parse().unwrap(),
            fingerprint: levee_relay::tls::Fingerprint([7; 32]),
            region: "local".to_owned(),
            weight: 1,
            state: NodeState::Active,
        })
        .await
        .unwrap();
    session
        .query_unpaged(
            "INSERT INTO levee_dist.roster (cluster, name, address, fingerprint, region, \
             weight, state) VALUES (?, 'bad', 'not an address', 0x07, 'local', 1, 'active') \
             USING TTL 60",
            (&cluster,),
        )
        .await
        .unwrap();

    let snapshot = roster.snapshot().await.unwrap();
    let names: Vec<&str> = snapshot.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["good"]);
    assert_eq!(roster.rows_unreadable(), 1);
    // Read again: the same rows, the same epoch.
    let again = roster.snapshot().await.unwrap();
    assert_eq!(again, snapshot);
    assert_eq!(roster.rows_unreadable(), 1);
}
