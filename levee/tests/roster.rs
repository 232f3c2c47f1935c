//! The distributed roster and shard leases against real Apache Cassandra
//! (`scripts/services.sh up`): the epoch and rows every node computes its view from, and
//! the leases that say which node delivers each shard. A test binary of its own, because it
//! loads the database as hard as it can, and the other distributed tests must not run
//! beside it. `./scripts/test.sh` runs it; by hand:
//!
//! ```sh
//! scripts/services.sh up && cargo test -p levee --test roster -- --ignored
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
use levee_relay::cluster::{
    Claim, CqlLeases, CqlRoster, Lease, LeaseError, LeaseRow, NodeInfo, NodeState, Roster,
    RosterError, ShardLeases, Taking, claim,
};
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

/// A roster handle on `cluster` in the test keyspace; rows live `failure_timeout`.
async fn roster(
    session: &Arc<scylla::client::session::Session>,
    cluster: &str,
    failure_timeout: Duration,
) -> CqlRoster {
    CqlRoster::connect(session.clone(), "levee_dist", cluster, failure_timeout)
        .await
        .unwrap()
}

/// An active roster row for `name`.
fn row(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.to_owned(),
        address: "127.0.0.1:4433".parse().unwrap(),
        fingerprint: levee_client::Fingerprint([7; 32]),
        region: "local".to_owned(),
        weight: 1,
        state: NodeState::Active,
    }
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
    let open = || roster(&session, &cluster, Duration::from_secs(60));
    let stable = open().await;
    stable.join(row("stable")).await.unwrap();

    let churner = open().await;
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
        let roster = open().await;
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
    let roster = roster(&session, &cluster, Duration::from_secs(60)).await;
    roster.join(row("good")).await.unwrap();
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

/// The shard leases: a holder that lost its lease while it was away (a zombie: paused past
/// the failure timeout, its shard taken by a node that saw it gone) can neither move the
/// shard's position nor release the lease, and the new holder starts from the position the
/// zombie last committed. Without the epoch condition on commits, the zombie's late commit
/// would move the position backwards or past records nobody stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn a_holder_whose_lease_was_taken_cannot_commit_or_release() {
    let session = session().await;
    let scope = unique("leases-zombie");
    let open = || CqlLeases::connect(session.clone(), "levee_dist", &scope);
    let (zombie, taker) = (open().await.unwrap(), open().await.unwrap());
    const SHARD: u32 = 5;

    let row = zombie.read(SHARD).await.unwrap();
    assert_eq!(row, LeaseRow::default(), "never taken");
    let old = zombie.take(SHARD, "a", &row).await.unwrap().unwrap();
    assert_eq!((old.epoch, old.position), (1, None));
    zombie.commit(&old, 10).await.unwrap();

    // b does not see a in the roster any more: the lease is taken at once.
    let row = taker.read(SHARD).await.unwrap();
    assert_eq!(row.holder.as_deref(), Some("a"));
    let live = |n: &str| n == "b";
    let how = claim(&row, "b", live, Duration::ZERO, Duration::from_secs(6));
    assert_eq!(how, Claim::Take(Taking::Absent));
    let new = taker.take(SHARD, "b", &row).await.unwrap().unwrap();
    assert_eq!((new.epoch, new.position), (2, Some(10)));

    // The zombie wakes up with a batch stored up to 20.
    assert!(matches!(
        zombie.commit(&old, 20).await,
        Err(LeaseError::Fenced {
            shard: SHARD,
            epoch: 1
        })
    ));
    assert!(matches!(
        zombie.release(&old, Some(20)).await,
        Err(LeaseError::Fenced { .. })
    ));
    let row = taker.read(SHARD).await.unwrap();
    assert_eq!(
        (row.epoch, row.holder.as_deref(), row.position),
        (2, Some("b"), Some(10))
    );

    taker.commit(&new, 15).await.unwrap();
    taker.release(&new, Some(16)).await.unwrap();
    let row = zombie.read(SHARD).await.unwrap();
    assert_eq!((row.epoch, row.holder, row.position), (2, None, Some(16)));
    assert_eq!(
        taker.history(SHARD).await.unwrap(),
        [(1, "a".to_owned()), (2, "b".to_owned())]
    );
}

/// Four nodes race for one lease from the same epoch, round after round: exactly one wins
/// each round, and the history holds one holder per epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn racing_takers_get_one_holder_per_epoch() {
    let session = session().await;
    let scope = unique("leases-race");
    let mut handles = Vec::new();
    for _ in 0..4 {
        let leases = CqlLeases::connect(session.clone(), "levee_dist", &scope)
            .await
            .unwrap();
        handles.push(Arc::new(leases));
    }
    const SHARD: u32 = 0;
    const ROUNDS: u64 = 15;
    for round in 0..ROUNDS {
        let mut racers = tokio::task::JoinSet::new();
        for (i, leases) in handles.iter().enumerate() {
            let leases = leases.clone();
            let seen = LeaseRow {
                epoch: round,
                ..LeaseRow::default()
            };
            racers.spawn(async move { leases.take(SHARD, &format!("node-{i}"), &seen).await });
        }
        let won: Vec<Lease> = racers
            .join_all()
            .await
            .into_iter()
            .filter_map(|r| r.unwrap())
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        assert_eq!(won[0].epoch, round + 1);
    }
    let history = handles[0].history(SHARD).await.unwrap();
    let epochs: Vec<u64> = history.iter().map(|(e, _)| *e).collect();
    assert_eq!(epochs, (1..=ROUNDS).collect::<Vec<_>>(), "{history:?}");
}

/// Two processes must not run under one name: a second one joining while the first keeps
/// its row alive is refused; once the first stops, its row lapses and a restart under the
/// name joins (after waiting the lapse out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn a_name_in_use_by_a_live_process_is_refused_and_freed_when_it_stops() {
    let session = session().await;
    let cluster = unique("roster-name");
    let open = || roster(&session, &cluster, Duration::from_secs(1));
    let row = row("node-2");
    let first = Arc::new(open().await);
    first.join(row.clone()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let beating = tokio::spawn({
        let (first, stop) = (first.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                first.heartbeat("node-2").await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let second = open().await;
    match second.join(row.clone()).await {
        Err(RosterError::NameInUse { name, .. }) => assert_eq!(name, "node-2"),
        other => panic!("a second process joined under a live name: {other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    beating.await.unwrap();
    // The first process is gone (no goodbye, as after SIGKILL): its row lapses.
    let restarted = open().await;
    let started = Instant::now();
    restarted.join(row).await.unwrap();
    let names: Vec<String> = restarted
        .snapshot()
        .await
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["node-2"]);
    println!("the restart waited {:?} for the old row", started.elapsed());
}

/// A node's row stays in the roster for at least the failure timeout after its last write,
/// however late in a second that write landed: Cassandra counts a TTL from the whole second,
/// so a row written with the timeout itself as its TTL (1 s here) at x.95 s lapsed at
/// x+1 s, 50 ms later, and the others saw a live node leave between two heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn a_row_outlives_the_failure_timeout_however_late_in_its_second_it_was_written() {
    let session = session().await;
    let cluster = unique("roster-ttl");
    let timeout = Duration::from_secs(1);
    let roster = roster(&session, &cluster, timeout).await;
    // Late in a wall-clock second (the database's clock is this machine's).
    loop {
        let subsec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if subsec >= 900 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(u64::from(900 - subsec).max(1))).await;
    }
    let written = Instant::now();
    roster.join(row("node-1")).await.unwrap();
    // Just short of the timeout after the write: the node is still alive to the others.
    tokio::time::sleep(timeout.saturating_sub(written.elapsed() + Duration::from_millis(100)))
        .await;
    let names: Vec<String> = roster
        .snapshot()
        .await
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(
        names,
        ["node-1"],
        "the row lapsed before the failure timeout"
    );
}
