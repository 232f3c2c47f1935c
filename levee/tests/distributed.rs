//! The distributed deployment end to end: three `levee node` processes sharing real
//! Apache Cassandra (mailboxes and roster; ScyllaDB speaks the same CQL) and real Apache
//! Kafka (the delivery log), both started by `scripts/services.sh up`. `./scripts/test.sh`
//! starts the services and runs these; by hand:
//!
//! ```sh
//! scripts/services.sh up && cargo test -p levee --test distributed -- --ignored
//! ```
//!
//! `LEVEE_CQL` and `LEVEE_KAFKA` override the addresses (127.0.0.1:19042, 127.0.0.1:19092).
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{NodeProcess, PrintedNode, admin_request, assert_nothing_arrives, metric, unique};
use levee_client::{Client, ClientConfig, ClientError};
use levee_relay::{AccountId, Identity};

const SHARDS: u32 = 16;
const USERS: usize = 6;
const MESSAGES_PER_USER: u64 = 40;

/// `n` node configurations of one fresh cluster (its own roster partition and Kafka topic,
/// in a keyspace shared by test runs).
fn write_configs(dir: &Path, extra: &str, n: usize) -> Vec<PathBuf> {
    let cql = std::env::var("LEVEE_CQL").unwrap_or_else(|_| "127.0.0.1:19042".into());
    let kafka = std::env::var("LEVEE_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let (cluster, topic) = (unique("dist"), unique("levee-dist"));
    (1..=n)
        .map(|k| {
            let data = dir.join(format!("node-{k}"));
            let text = format!(
                r#"
node_name = "node-{k}"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "{data}"
cluster_key = "{key}"
shards = {SHARDS}
cluster_name = "{cluster}"
heartbeat_ms = 250
failure_timeout_ms = 2000
{extra}

[scylla]
nodes = ["{cql}"]
keyspace = "levee_dist"

[scylla.replication]
class = "simple"
factor = 1

[kafka]
brokers = "{kafka}"
topic = "{topic}"
replication = 1
"#,
                data = data.display(),
                key = "ab".repeat(32),
            );
            let path = dir.join(format!("node-{k}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// The relay processes, by node number (1-based); `None` while one is down.
struct Cluster {
    configs: Vec<PathBuf>,
    nodes: Vec<Option<(NodeProcess, PrintedNode)>>,
}

impl Cluster {
    /// Three nodes.
    fn start(dir: &Path, extra: &str) -> Self {
        Self::with_spares(dir, extra, 0)
    }

    /// Three nodes, and configurations for `spares` more (nodes 4, 5, ...) that
    /// [`restart`](Self::restart) starts later, as an autoscaler would.
    fn with_spares(dir: &Path, extra: &str, spares: usize) -> Self {
        let configs = write_configs(dir, extra, 3 + spares);
        let nodes = configs
            .iter()
            .enumerate()
            .map(|(i, c)| (i < 3).then(|| NodeProcess::start_distributed(c)))
            .collect();
        Self { configs, nodes }
    }

    fn live(&self) -> Vec<PrintedNode> {
        self.nodes
            .iter()
            .flatten()
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn entries(&self) -> Vec<ClientConfig> {
        self.live().iter().map(PrintedNode::client_config).collect()
    }

    fn sigkill(&mut self, k: usize) {
        let (process, _) = self.nodes[k - 1].take().unwrap();
        process.sigkill();
    }

    /// Starts node `k` (again, after a kill; or for the first time, a spare).
    fn restart(&mut self, k: usize) {
        self.nodes[k - 1] = Some(NodeProcess::start_distributed(&self.configs[k - 1]));
    }

    /// Waits until every live node lists exactly the live nodes at one common epoch.
    async fn settle(&self) -> u64 {
        let live = self.live();
        let want: BTreeSet<String> = live.iter().map(|p| p.name.clone()).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut epochs = BTreeSet::new();
            let mut agree = true;
            for node in &live {
                let (status, body) =
                    admin_request(node.admin.unwrap(), "GET", "/admin/cluster").await;
                assert!(status.contains("200"), "{status}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let names: BTreeSet<String> = v["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n["name"].as_str().unwrap().to_owned())
                    .collect();
                agree &= names == want;
                epochs.insert(v["epoch"].as_u64().unwrap());
            }
            if agree && epochs.len() == 1 {
                return epochs.into_iter().next().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not agree on {want:?} (epochs {epochs:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Logs `identity` in through any of `entries` (the library follows the redirect to the
/// owner), retrying while the cluster still points at a node that is gone.
async fn log_in(entries: &[ClientConfig], identity: &Identity, register: bool) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0usize;
    loop {
        let entry = &entries[attempt % entries.len()];
        attempt += 1;
        let result = async {
            let c = Client::connect(entry, identity.clone()).await?;
            if register {
                c.register().await?;
            } else {
                c.authenticate().await?;
            }
            Ok::<_, ClientError>(c)
        }
        .await;
        match result {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "could not log in: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// What senders were told: message id → recipient, for every acknowledged send.
type Acked = Arc<Mutex<BTreeMap<[u8; 16], AccountId>>>;

/// Sends `count` messages to `to`, each with a stable id; a failed send (its node died) is
/// repeated with the same id after logging in again through a live node, so it is stored
/// once whatever happened to the first try.
async fn send_all(
    identity: Identity,
    to: AccountId,
    entries: Arc<Mutex<Vec<ClientConfig>>>,
    count: u64,
    acked: Acked,
) {
    let current = || entries.lock().unwrap().clone();
    let mut client = log_in(&current(), &identity, false).await;
    for n in 0..count {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[8..].copy_from_slice(&identity.account().as_bytes()[..8]);
        // Patient for two minutes: what is judged is that nothing acknowledged is lost, not
        // how fast the services come back. In one CI run a restarted Kafka answered its
        // readiness probe, yet the nodes' clients were refused connections after that and
        // their producers got no acknowledgement for about a minute (the idempotent
        // producer's id still refused, "coordinator load in progress", a minute after the
        // restart); a 60 s limit failed the test there. Locally, under two busy loops, it
        // passed 6 of 6 with that limit.
        let give_up = Instant::now() + Duration::from_secs(120);
        loop {
            match client.send_with_id(&to, format!("m{n}"), id).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < give_up, "a send kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    client = log_in(&current(), &identity, false).await;
                }
            }
        }
        acked.lock().unwrap().insert(id, to);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs each user in, drains its mailbox and acknowledges everything; returns, per user,
/// the message ids received (with repeats, if any).
async fn drain_all(
    entries: &[ClientConfig],
    users: &[Identity],
    expected: &BTreeMap<[u8; 16], AccountId>,
) -> BTreeMap<AccountId, Vec<(u64, [u8; 16])>> {
    let mut got = BTreeMap::new();
    for user in users {
        let want = expected
            .values()
            .filter(|to| **to == user.account())
            .count();
        let client = log_in(entries, user, false).await;
        let mut inbox = client.subscribe().await.unwrap();
        let deliveries = common::receive(&mut inbox, want, Duration::from_secs(15)).await;
        let ids: Vec<u64> = deliveries.iter().map(|d| d.envelope_id).collect();
        if !ids.is_empty() {
            client.ack(&ids).await.unwrap();
        }
        got.insert(
            user.account(),
            deliveries
                .iter()
                .map(|d| (d.envelope_id, d.client_message_id))
                .collect(),
        );
        client.close().await;
    }
    got
}

/// The services are shared: tests that restart or freeze them must not overlap with others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `scripts/services.sh ARGS` (faults on the services it started), waiting for it.
fn services_now(args: &[String]) -> std::io::Result<std::process::ExitStatus> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    std::process::Command::new(script).args(args).status()
}

/// [`services_now`] off the runtime's threads; it must succeed.
async fn services(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let status = tokio::task::spawn_blocking(move || services_now(&args))
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "scripts/services.sh failed");
}

/// A service frozen with `scripts/services.sh pause`, thawed when this is dropped: a test
/// that fails while the service is frozen must not leave it frozen for the tests after it
/// (they then all failed at start-up, the database not answering).
struct Paused(Option<&'static str>);

impl Paused {
    async fn freeze(name: &'static str) -> Self {
        services(&["pause", name]).await;
        Self(Some(name))
    }

    /// Thaws it now; it must succeed.
    async fn thaw(mut self) {
        if let Some(name) = self.0.take() {
            services(&["resume", name]).await;
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            let _ = services_now(&["resume".into(), name.into()]);
        }
    }
}

/// Three settled processes (no extra configuration) and `USERS` registered users: the
/// start of most tests here.
async fn settled_with_users(dir: &Path) -> (Cluster, Vec<Identity>) {
    let cluster = Cluster::start(dir, "");
    cluster.settle().await;
    let (users, _) = register_users(&cluster).await;
    (cluster, users)
}

/// Registers `USERS` users through different nodes; returns them and the nodes they ended on.
async fn register_users(cluster: &Cluster) -> (Vec<Identity>, BTreeSet<SocketAddr>) {
    let users: Vec<Identity> = (0..USERS).map(|_| Identity::generate().unwrap()).collect();
    let entries = cluster.entries();
    let mut servers = BTreeSet::new();
    for (i, user) in users.iter().enumerate() {
        let c = log_in(&entries[i % entries.len()..], user, true).await;
        servers.insert(c.server());
        c.close().await;
    }
    (users, servers)
}

/// Every user sends `MESSAGES_PER_USER` to the next one; `fault` runs once a third of the
/// sends are acknowledged. Returns every acknowledged send.
async fn send_through<F: std::future::Future<Output = ()>>(
    cluster: &mut Cluster,
    users: &[Identity],
    fault: impl FnOnce(&mut Cluster) -> F,
) -> BTreeMap<[u8; 16], AccountId> {
    let acked: Acked = Arc::default();
    let live_entries = Arc::new(Mutex::new(cluster.entries()));
    let mut senders = tokio::task::JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let to = users[(i + 1) % users.len()].account();
        senders.spawn(send_all(
            user.clone(),
            to,
            live_entries.clone(),
            MESSAGES_PER_USER,
            acked.clone(),
        ));
    }
    let total = users.len() * MESSAGES_PER_USER as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < total / 3 {
        assert!(Instant::now() < deadline, "sends did not get going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_fault = acked.lock().unwrap().len();
    fault(cluster).await;
    *live_entries.lock().unwrap() = cluster.entries();
    while let Some(done) = senders.join_next().await {
        done.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), total);
    assert!(at_fault < total, "the fault happened mid-stream");
    acked
}

/// Every acknowledged send arrives exactly once, and once acknowledged by its recipient
/// nothing comes back, on a fresh session through another node.
async fn assert_delivered_once(
    cluster: &Cluster,
    users: &[Identity],
    acked: &BTreeMap<[u8; 16], AccountId>,
) {
    let got = drain_all(&cluster.entries(), users, acked).await;
    for user in users {
        let want: BTreeSet<[u8; 16]> = acked
            .iter()
            .filter(|(_, to)| **to == user.account())
            .map(|(id, _)| *id)
            .collect();
        // On failure, say which sends are missing and which came twice (with their envelope
        // ids): "not delivered" and "delivered twice" have different causes.
        let received = &got[&user.account()];
        let distinct: BTreeSet<[u8; 16]> = received.iter().map(|(_, m)| *m).collect();
        let missing: Vec<_> = want.difference(&distinct).collect();
        let twice: Vec<_> = received
            .iter()
            .filter(|(_, m)| received.iter().filter(|(_, n)| n == m).count() > 1)
            .collect();
        assert!(
            missing.is_empty() && twice.is_empty() && distinct == want,
            "every acknowledged send delivered exactly once: missing {missing:?}, \
             repeated (envelope id, message id) {twice:?}, {} received of {}",
            received.len(),
            want.len()
        );
    }
    let entries = cluster.entries();
    for user in users {
        let c = log_in(&entries[entries.len() - 1..], user, false).await;
        let mut inbox = c.subscribe().await.unwrap();
        assert_nothing_arrives(&mut inbox).await;
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Cassandra: scripts/services.sh up"]
async fn three_processes_lose_nothing_acknowledged_when_one_is_killed_mid_stream() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), "");
    let first_epoch = cluster.settle().await;
    let (users, servers) = register_users(&cluster).await;
    assert!(
        servers.len() > 1,
        "users were spread over several nodes: {servers:?}"
    );

    // node-2 is killed while everyone sends.
    let victim: SocketAddr = cluster.live()[1].addr;
    let acked = send_through(&mut cluster, &users, |c| {
        c.sigkill(2);
        std::future::ready(())
    })
    .await;

    // The survivors agree on a newer epoch without node-2, and deliver everything.
    let epoch = cluster.settle().await;
    assert!(epoch > first_epoch, "epoch {epoch} after {first_epoch}");
    assert!(cluster.live().iter().all(|n| n.addr != victim));
    assert_delivered_once(&cluster, &users, &acked).await;

    // node-2 comes back with its certificate and rejoins; the cluster serves on.
    cluster.restart(2);
    let back = cluster.settle().await;
    assert!(back > epoch);
    let (alice, bob) = (&users[0], &users[1]);
    let entries = cluster.entries();
    let a = log_in(&entries, alice, false).await;
    a.send(&bob.account(), "after the restart").await.unwrap();
    let b = log_in(&entries, bob, false).await;
    let mut inbox = b.subscribe().await.unwrap();
    let got = common::receive(&mut inbox, 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].ciphertext[..], b"after the restart");
}

/// Scale-out and scale-in as an autoscaler does them: a fourth `levee node` process with
/// the cluster's pre-shared key joins the running cluster and takes shards; then, while
/// everyone sends, it gets SIGTERM — what Kubernetes and systemd send — drains (shards
/// handed over, clients told to move) and exits cleanly within the bound the deployment
/// gives it (60 s: `TimeoutStopSec`, `terminationGracePeriodSeconds`). Nothing acknowledged
/// is lost or delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Cassandra: scripts/services.sh up"]
async fn a_joining_node_takes_shards_and_sigterm_drains_it_within_the_bound() {
    const BOUND: Duration = Duration::from_secs(60);
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::with_spares(dir.path(), "", 1);
    let before = cluster.settle().await;
    cluster.restart(4);
    let joined = cluster.settle().await;
    assert!(joined > before, "epoch {joined} after {before}");
    let fourth = cluster.live()[3].clone();
    assert_eq!(fourth.name, "node-4");
    let (status, body) = admin_request(fourth.admin.unwrap(), "GET", "/admin/cluster").await;
    assert!(status.contains("200"), "{status}: {body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let owned = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-4")
        .and_then(|n| n["shards"].as_u64())
        .unwrap_or_default();
    assert!(owned > 0, "node-4 owns shards once it joined: {view}");
    let (users, _) = register_users(&cluster).await;

    let (tx, exited) = std::sync::mpsc::channel();
    let acked = send_through(&mut cluster, &users, |c| {
        let (mut process, _) = c.nodes[3].take().unwrap();
        std::thread::spawn(move || {
            let pid = process.child.id().to_string();
            let asked = Instant::now();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            let status = process.child.wait();
            let _ = tx.send((sent, status, asked.elapsed()));
        });
        std::future::ready(())
    })
    .await;
    let (sent, status, took) = exited.recv_timeout(BOUND).expect("node-4 exits on SIGTERM");
    assert!(sent.unwrap().success(), "kill -TERM ran");
    assert!(
        status.unwrap().success(),
        "a drained node exits with status 0"
    );
    assert!(took < BOUND, "drained in {took:?}");
    eprintln!("node-4 drained and exited {took:?} after SIGTERM");

    let epoch = cluster.settle().await;
    assert!(epoch > joined, "epoch {epoch} after {joined}");
    assert_delivered_once(&cluster, &users, &acked).await;
}

/// A send that the log cannot take (the broker frozen past the producer's timeout) is
/// answered with the node's retryable `UNAVAILABLE` before the client stops waiting, not
/// with silence; the same message sent again once the broker is back is acknowledged and
/// delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Cassandra: scripts/services.sh up"]
async fn a_frozen_broker_is_answered_with_a_retryable_refusal_not_silence() {
    use levee_protocol::wire::pb::ErrorCode;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, users) = settled_with_users(dir.path()).await;
    let entries = cluster.entries();
    let (alice, bob) = (&users[0], &users[1]);
    let sender = log_in(&entries, alice, false).await;
    let id = [42u8; 16];
    let frozen = Paused::freeze("kafka").await;
    let refused = sender
        .send_with_id(&bob.account(), "while the log is frozen", id)
        .await
        .expect_err("a send went through a frozen broker");
    frozen.thaw().await;
    assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
    // The same message again, on the same connection, once the broker answers.
    let give_up = Instant::now() + Duration::from_secs(120);
    while let Err(e) = sender
        .send_with_id(&bob.account(), "while the log is frozen", id)
        .await
    {
        assert!(Instant::now() < give_up, "the send kept failing: {e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sender.close().await;
    assert_delivered_once(&cluster, &users, &BTreeMap::from([(id, bob.account())])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Cassandra: scripts/services.sh up"]
async fn a_kafka_broker_restart_mid_stream_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, users) = settled_with_users(dir.path()).await;
    let acked = send_through(&mut cluster, &users, |_| services(&["restart", "kafka"])).await;
    cluster.settle().await;
    assert_delivered_once(&cluster, &users, &acked).await;
}

/// The lowest admission level any node at `admins` reports, read every 200 ms while
/// `watching` holds.
async fn lowest_level(admins: Vec<SocketAddr>, watching: Arc<AtomicBool>) -> f64 {
    let mut lowest = f64::MAX;
    while watching.load(Ordering::Relaxed) {
        for &admin in &admins {
            if let Some(level) = metric(admin, "levee_admission_level").await {
                lowest = lowest.min(level);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Cassandra: scripts/services.sh up"]
async fn a_frozen_store_is_buffered_by_the_log_and_admission_sheds_before_messaging() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, users) = settled_with_users(dir.path()).await;
    let entries = cluster.entries();
    let mut clients = Vec::new();
    for user in &users {
        clients.push(log_in(&entries, user, false).await);
    }
    let next = |i: usize| users[(i + 1) % USERS].account();
    let message_id = |i: usize, n: u8| {
        let mut id = [n; 16];
        id[15] = i as u8;
        id
    };
    let mut acked = BTreeMap::new();
    // One send each first: every node learns the recipients exist while the store answers.
    for (i, c) in clients.iter().enumerate() {
        let id = message_id(i, 0);
        c.send_with_id(&next(i), "m0", id).await.unwrap();
        acked.insert(id, next(i));
    }

    let frozen = Paused::freeze("cassandra").await;
    let frozen_at = Instant::now();
    // The nodes' levels are read all through the stall, not once at its end: a write stuck
    // in the frozen store is the evidence, and once a node's tenure runs out its delivery
    // worker stops writing, so nothing is in flight and its level is back at 1 within a
    // window. A single reading after 8 s came after that in 3 of 4 runs on a loaded
    // machine (most likely CI's one failure of this test too: it failed as soon after the
    // thaw as these did).
    let watching = Arc::new(AtomicBool::new(true));
    let admins: Vec<SocketAddr> = cluster.live().iter().map(|n| n.admin.unwrap()).collect();
    let watcher = tokio::spawn(lowest_level(admins.clone(), watching.clone()));
    // While the store is frozen, established sessions keep sending and every send is
    // acknowledged: the log buffers them.
    for n in 1..=10u8 {
        for (i, c) in clients.iter().enumerate() {
            let id = message_id(i, n);
            c.send_with_id(&next(i), format!("m{n}"), id)
                .await
                .unwrap_or_else(|e| panic!("a send during the stall failed: {e}"));
            acked.insert(id, next(i));
        }
    }
    let during = frozen_at.elapsed();
    // Slow writes and a growing backlog lower the admission level: registrations first.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(during)).await;
    watching.store(false, Ordering::Relaxed);
    let lowest = watcher.await.unwrap();
    for admin in admins {
        let shed = metric(admin, "levee_admission_shed_total{class=\"messaging\"").await;
        assert_eq!(shed.unwrap_or(0.0), 0.0, "messaging was shed on {admin}");
    }
    frozen.thaw().await;
    let stalled = frozen_at.elapsed();
    assert!(
        lowest < 1.0,
        "no node lowered its admission level during a {stalled:?} stall"
    );
    assert!(
        lowest > 1.0 / 3.0,
        "the level fell into messaging: {lowest}"
    );
    for c in clients {
        c.close().await;
    }

    // Delivered after the stall, each once, nothing back after acknowledgement.
    cluster.settle().await;
    assert_delivered_once(&cluster, &users, &acked).await;
}

/// The core messaging contract through three processes: a message re-sent with the same
/// id through another node is stored once; what the recipient acknowledged is never
/// delivered again, what it did not is, on a fresh session through another node; a send
/// to nobody is refused with its error code; a mailbox over its quota refuses clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Cassandra: scripts/services.sh up"]
async fn the_core_messaging_contract_holds_across_processes() {
    use levee_protocol::wire::pb::ErrorCode;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), "mailbox_max_envelopes = 4");
    cluster.settle().await;
    let entries = cluster.entries();
    let (alice_id, bob_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let bob = bob_id.account();
    // Each logs in first through a different node; the login is redirected to the owner.
    let alice_1 = log_in(&entries[0..], &alice_id, true).await;
    log_in(&entries[1..], &bob_id, true).await.close().await;
    let alice_3 = log_in(&entries[2..], &alice_id, false).await;

    // The same message id through two nodes: one copy.
    let once = [7u8; 16];
    alice_1.send_with_id(&bob, "once", once).await.unwrap();
    alice_3.send_with_id(&bob, "once", once).await.unwrap();
    alice_1.send_with_id(&bob, "two", [8; 16]).await.unwrap();
    alice_3.send_with_id(&bob, "three", [9; 16]).await.unwrap();

    let b = log_in(&entries[1..], &bob_id, false).await;
    let mut inbox = b.subscribe().await.unwrap();
    let got = common::receive(&mut inbox, 3, Duration::from_secs(15)).await;
    let ids: BTreeSet<[u8; 16]> = got.iter().map(|d| d.client_message_id).collect();
    assert_eq!(ids, BTreeSet::from([[7; 16], [8; 16], [9; 16]]));
    assert_nothing_arrives(&mut inbox).await;
    // Acknowledge only the first; the others must come back on the next session.
    let first = got.iter().find(|d| d.client_message_id == once).unwrap();
    b.ack(&[first.envelope_id]).await.unwrap();
    b.close().await;

    // A full mailbox (4 envelopes: two waiting + two more) refuses clearly.
    alice_1.send(&bob, "four").await.unwrap();
    alice_1.send(&bob, "five").await.unwrap();
    let full = loop {
        match alice_3.send(&bob, "six").await {
            // The quota counts what the store holds; the last sends may still be in the log.
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => break e,
        }
    };
    assert_eq!(full.code(), Some(ErrorCode::MailboxFull), "{full}");
    // A send to nobody is refused with its code, and the node goes on serving.
    let nobody = alice_1.send(&AccountId([3; 32]), "x").await.unwrap_err();
    assert_eq!(nobody.code(), Some(ErrorCode::UnknownRecipient));

    let b = log_in(&entries[2..], &bob_id, false).await;
    let mut inbox = b.subscribe().await.unwrap();
    let again = common::receive(&mut inbox, 64, Duration::from_secs(3)).await;
    assert!(
        again.iter().all(|d| d.client_message_id != once),
        "an acknowledged envelope came back"
    );
    let again_ids: BTreeSet<[u8; 16]> = again.iter().map(|d| d.client_message_id).collect();
    assert!(again_ids.contains(&[8; 16]) && again_ids.contains(&[9; 16]));
    let all: Vec<u64> = again.iter().map(|d| d.envelope_id).collect();
    b.ack(&all).await.unwrap();
    b.close().await;
    let b = log_in(&entries[0..], &bob_id, false).await;
    let mut inbox = b.subscribe().await.unwrap();
    assert_nothing_arrives(&mut inbox).await;
}
