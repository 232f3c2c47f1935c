//! A multi-node cluster in one process (`LocalCluster`, as `levee up --nodes N` runs it),
//! over real QUIC on loopback: redirects to the mailbox's owner, a join and a drain while
//! clients send, an abrupt node loss, region pins, a registration held in line while its
//! mailbox moves, and a handoff in the worst order. Every acknowledged envelope must be
//! delivered, and none again after its acknowledgement.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin_request, test_config};
use levee_client::Trust;
use levee_client::{Client, ClientConfig, ClientError};
use levee_protocol::wire::pb::ErrorCode;
use levee_relay::local_cluster::{LocalCluster, NodeSummary};
use levee_relay::{AccountId, Identity, NodeConfig, RegionPin};
use levee_sharding::{Member, Membership, Placement, shard_of};

const SHARDS: u32 = 32;

fn cluster_config(dir: &Path) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_owned(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        shards: SHARDS,
        heartbeat_ms: 100,
        failure_timeout_ms: 1000,
        drain_grace_ms: 5000,
        // Four busy senders share one account limit per account; keep it out of the way.
        account_requests_per_sec: 100_000,
        ..test_config()
    }
}

/// [`cluster_config`] with fault injection on (the admin port's `/admin/faults/...`).
fn with_faults(dir: &Path) -> NodeConfig {
    NodeConfig {
        fault_injection: true,
        ..cluster_config(dir)
    }
}

async fn start(config: NodeConfig, regions: &[&str]) -> Arc<LocalCluster> {
    let cluster = LocalCluster::open(config).unwrap();
    for region in regions {
        cluster
            .add_node_with(|c| c.region = (*region).to_owned())
            .await
            .unwrap();
    }
    cluster
}

/// The placement the library computes for these (name, region) members.
fn predict(config: &NodeConfig, members: &[(&str, &str)]) -> Placement {
    let members = members.iter().map(|(n, r)| Member::new(*n, *r)).collect();
    Placement::compute(&Membership::new(0, members).unwrap(), &config.placement())
}

fn owner_of(placement: &Placement, account: &AccountId) -> String {
    placement
        .owner(shard_of(account, SHARDS))
        .unwrap()
        .name
        .clone()
}

fn node(cluster: &LocalCluster, name: &str) -> NodeSummary {
    cluster
        .nodes()
        .into_iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("{name} is not running"))
}

fn client_config(node: &NodeSummary) -> ClientConfig {
    let mut config = ClientConfig::new(node.address, Trust::Fingerprint(node.fingerprint));
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(10);
    config
}

/// The node's own view from its admin port: (epoch, nodes listed, shards it owns).
async fn view_of(node: &NodeSummary) -> (u64, usize, BTreeSet<u32>) {
    let (status, body) = admin_request(node.admin.unwrap(), "GET", "/admin/cluster").await;
    assert!(status.contains("200"), "{status}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let owned = v["owned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap() as u32)
        .collect();
    (
        v["epoch"].as_u64().unwrap(),
        v["nodes"].as_array().unwrap().len(),
        owned,
    )
}

/// Waits until every running node sees the same epoch with `expected` nodes listed; returns
/// what each owns.
async fn settle(cluster: &LocalCluster, expected: usize) -> HashMap<String, BTreeSet<u32>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut epochs = BTreeSet::new();
        let mut owned = HashMap::new();
        let mut complete = true;
        for n in cluster.nodes() {
            let (epoch, listed, shards) = view_of(&n).await;
            epochs.insert(epoch);
            complete &= listed == expected;
            owned.insert(n.name.clone(), shards);
        }
        if epochs.len() == 1 && complete && owned.len() == expected {
            return owned;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never agreed: {epochs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the nodes own must be what the library predicts, shard for shard.
fn assert_matches(owned: &HashMap<String, BTreeSet<u32>>, predicted: &Placement) {
    for (name, shards) in owned {
        let expected: BTreeSet<u32> = predicted.owned_by(name).into_iter().collect();
        assert_eq!(shards, &expected, "{name} owns other shards than predicted");
    }
}

/// Three nodes in region "local", settled, owning what the library predicts.
async fn three_nodes(dir: &Path) -> (NodeConfig, Arc<LocalCluster>, Placement) {
    let config = cluster_config(dir);
    let cluster = start(config.clone(), &["local"; 3]).await;
    let placement = settled_as(&cluster, &config, &["node-1", "node-2", "node-3"]).await;
    (config, cluster, placement)
}

/// Waits until the running nodes (all in region "local") agree, and checks that each owns
/// exactly what the library predicts for `names`; returns that placement.
async fn settled_as(cluster: &LocalCluster, config: &NodeConfig, names: &[&str]) -> Placement {
    let owned = settle(cluster, names.len()).await;
    let members: Vec<(&str, &str)> = names.iter().map(|n| (*n, "local")).collect();
    let placement = predict(config, &members);
    assert_matches(&owned, &placement);
    placement
}

/// A fresh identity whose mailbox satisfies `wanted` (e.g. lives on a given node).
fn identity_where(wanted: impl Fn(&AccountId) -> bool) -> Identity {
    loop {
        let id = Identity::generate().unwrap();
        if wanted(&id.account()) {
            return id;
        }
    }
}

/// Asks a node's admin port for a fault (`path`) and checks it was accepted; the answer's body.
async fn fault(admin: SocketAddr, path: &str) -> String {
    let (status, body) = admin_request(admin, "POST", path).await;
    assert!(status.contains("202"), "{path}: {status} {body}");
    body
}

async fn user_via(entry: &NodeSummary, identity: &Identity) -> Client {
    let client = Client::connect(&client_config(entry), identity.clone())
        .await
        .unwrap();
    client.register().await.unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_any_node_end_on_their_owner_and_exchange_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cluster, placement) = three_nodes(dir.path()).await;

    // Six users, each entering through node (i mod 3); at least one through a node that is
    // not its owner, so a redirect is certain to be exercised.
    let nodes = cluster.nodes();
    let mut identities: Vec<Identity> = (0..5).map(|_| Identity::generate().unwrap()).collect();
    let first_owner = owner_of(&placement, &identities[0].account());
    let mut users = Vec::new();
    let mut redirected = 0;
    identities.insert(
        0,
        identity_where(|a| owner_of(&placement, a) != first_owner),
    );
    for (i, identity) in identities.iter().enumerate() {
        let entry = if i == 0 {
            node(&cluster, &first_owner)
        } else {
            nodes[i % 3].clone()
        };
        let client = user_via(&entry, identity).await;
        let owner = node(&cluster, &owner_of(&placement, &identity.account()));
        assert_eq!(client.server(), owner.address, "user {i} is on its owner");
        if entry.name != owner.name {
            redirected += 1;
        }
        users.push(client);
    }
    assert!(redirected >= 1);
    // The placement and the redirects are visible on the metrics page.
    let (_, metrics) = admin_request(nodes[0].admin.unwrap(), "GET", "/metrics").await;
    for expected in [
        "levee_shards_owned{node=\"node-1\"}",
        "levee_placement_epoch{node=\"node-1\"}",
        "levee_redirects_total{",
        "levee_shard_handoffs_total{",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }

    // Everyone sends to the next user; everyone receives from the previous one.
    let mut inboxes = Vec::new();
    for u in &users {
        inboxes.push(u.subscribe().await.unwrap());
    }
    for (i, u) in users.iter().enumerate() {
        let to = users[(i + 1) % users.len()].account();
        u.send(&to, format!("hello from {i}")).await.unwrap();
    }
    for (i, inbox) in inboxes.iter_mut().enumerate() {
        let got = common::receive(inbox, 1, Duration::from_secs(10)).await;
        let from = (i + users.len() - 1) % users.len();
        assert_eq!(got.len(), 1, "user {i} got its envelope");
        assert_eq!(got[0].ciphertext, format!("hello from {from}").as_bytes());
        users[i].ack(&[got[0].envelope_id]).await.unwrap();
    }
    cluster.shutdown().await.unwrap();
}

/// What senders had acknowledged and receivers saw, for the invariants.
#[derive(Default)]
struct Ledger {
    /// Acknowledged to the sender: message id → recipient.
    sent: Mutex<HashMap<[u8; 16], AccountId>>,
    /// Delivered and acknowledged, per recipient.
    received: Mutex<HashMap<AccountId, HashSet<[u8; 16]>>>,
    violations: Mutex<Vec<String>>,
}

async fn keep_sending(
    from: Arc<Client>,
    to: AccountId,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[8..].copy_from_slice(&from.account().as_bytes()[..8]);
        n += 1;
        // The same id until it is acknowledged: a retry is the same message. Even after
        // `stop`, so that no send is left half-known (possibly stored, never acknowledged).
        let mut tries = 0;
        loop {
            match from.send_with_id(&to, format!("m{n}"), id).await {
                Ok(_) => {
                    ledger.sent.lock().unwrap().insert(id, to);
                    break;
                }
                Err(e) => {
                    tries += 1;
                    if tries == 100 {
                        let msg = format!("a send kept failing: {e}");
                        ledger.violations.lock().unwrap().push(msg);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives and acknowledges everything. A copy that arrives after its ack was sent can be
/// legitimate (pushed by the old node before the ack, during a move); that nothing comes
/// back once acknowledged is checked at the end, on a fresh session.
async fn keep_receiving(client: Arc<Client>, ledger: Arc<Ledger>) {
    let me = client.account();
    let mut inbox = client.subscribe().await.unwrap();
    while let Some(d) = inbox.next().await {
        let mut tries = 0;
        while let Err(e) = client.ack(&[d.envelope_id]).await {
            tries += 1;
            if tries == 50 {
                ledger
                    .violations
                    .lock()
                    .unwrap()
                    .push(format!("ack failed: {e}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ledger
            .received
            .lock()
            .unwrap()
            .entry(me)
            .or_default()
            .insert(d.client_message_id);
    }
    ledger
        .violations
        .lock()
        .unwrap()
        .push(format!("{me}'s delivery stream ended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_drain_under_continuous_sends_lose_nothing_and_move_only_what_placement_says()
{
    let dir = tempfile::tempdir().unwrap();
    let (config, cluster, p3) = three_nodes(dir.path()).await;

    let entry = node(&cluster, "node-1");
    let mut users = Vec::new();
    let mut identity_of = HashMap::new();
    for _ in 0..4 {
        let identity = Identity::generate().unwrap();
        identity_of.insert(identity.account(), identity.clone());
        users.push(Arc::new(user_via(&entry, &identity).await));
    }
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (mut receivers, mut senders) = (Vec::new(), Vec::new());
    for (i, u) in users.iter().enumerate() {
        receivers.push(tokio::spawn(keep_receiving(u.clone(), ledger.clone())));
        let to = users[(i + 1) % users.len()].account();
        senders.push(tokio::spawn(keep_sending(
            u.clone(),
            to,
            ledger.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Join: shards move only to the new node, exactly those predicted.
    cluster.add_node().await.unwrap();
    let p4 = settled_as(&cluster, &config, &["node-1", "node-2", "node-3", "node-4"]).await;
    let moves = p3.moves(&p4);
    assert!(!moves.is_empty());
    assert!(moves.iter().all(|(_, _, to)| *to == Some("node-4")));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Drain: only the drained node's shards move.
    cluster.drain("node-2").await.unwrap();
    let p_after = settled_as(&cluster, &config, &["node-1", "node-3", "node-4"]).await;
    assert!(
        p4.moves(&p_after)
            .iter()
            .all(|(_, from, _)| *from == Some("node-2"))
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }

    // Every acknowledged envelope arrives (and is acknowledged by its recipient).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: usize = {
            let sent = ledger.sent.lock().unwrap();
            let received = ledger.received.lock().unwrap();
            sent.iter()
                .filter(|(id, to)| !received.get(to).is_some_and(|r| r.contains(*id)))
                .count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged envelopes never arrived; {:?}",
            ledger.violations.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = ledger.sent.lock().unwrap().len();
    assert!(sent > 100, "the senders kept sending ({sent})");
    assert_eq!(*ledger.violations.lock().unwrap(), Vec::<String>::new());
    // Each client followed its mailbox to the node that owns it now.
    let addresses: HashMap<String, SocketAddr> = cluster
        .nodes()
        .into_iter()
        .map(|n| (n.name, n.address))
        .collect();
    for u in &users {
        assert_eq!(
            u.server(),
            addresses[&owner_of(&p_after, &u.account())],
            "the client is on its mailbox's owner"
        );
    }
    for r in receivers {
        r.abort();
    }
    // Nothing acknowledged comes back: a fresh session on each mailbox finds it empty.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for u in &users {
        let owner = node(&cluster, &owner_of(&p_after, &u.account()));
        let fresh = log_in_eventually(&owner, &identity_of[&u.account()]).await;
        let mut inbox = fresh.subscribe().await.unwrap();
        common::assert_nothing_arrives(&mut inbox).await;
    }
    cluster.shutdown().await.unwrap();
}

/// Connects `identity` through `entry` and logs in, retrying while the cluster still
/// sends it to a node that is gone.
async fn log_in_eventually(entry: &NodeSummary, identity: &Identity) -> Client {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = async {
            let c = Client::connect(&client_config(entry), identity.clone()).await?;
            c.authenticate().await?;
            Ok::<_, ClientError>(c)
        };
        match attempt.await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "could not log in: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_is_replaced_after_the_timeout_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (config, cluster, p3) = three_nodes(dir.path()).await;
    let victim_id = identity_where(|a| owner_of(&p3, a) == "node-2");
    let sender_id = identity_where(|a| owner_of(&p3, a) == "node-1");
    let entry = node(&cluster, "node-1");
    let victim = user_via(&entry, &victim_id).await;
    assert_eq!(victim.server(), node(&cluster, "node-2").address);
    let sender = user_via(&entry, &sender_id).await;
    let mut inbox = victim.subscribe().await.unwrap();
    let mut sent = Vec::new();
    let send = |range: std::ops::Range<u8>, when: &'static str| {
        let (sender, to) = (&sender, victim_id.account());
        async move {
            let mut ids = Vec::new();
            for i in range {
                let id = [i; 16];
                let text = format!("{when} {i}");
                sender.send_with_id(&to, text, id).await.unwrap();
                ids.push(id);
            }
            ids
        }
    };
    sent.extend(send(0..10, "before").await);
    let got = common::receive(&mut inbox, 10, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 10);
    // Half are acknowledged before the crash; the other half must come again.
    let acked: Vec<[u8; 16]> = got[..5].iter().map(|d| d.client_message_id).collect();
    let ids: Vec<u64> = got[..5].iter().map(|d| d.envelope_id).collect();
    victim.ack(&ids).await.unwrap();

    cluster.kill("node-2").unwrap();
    // Sends go on through a live node while the dead one is not yet declared dead.
    sent.extend(send(10..20, "during").await);
    // Declared dead after the failure-detection timeout; its shards moved.
    let p2 = settled_as(&cluster, &config, &["node-1", "node-3"]).await;

    let victim = log_in_eventually(&entry, &victim_id).await;
    let new_owner = node(&cluster, &owner_of(&p2, &victim_id.account()));
    assert_eq!(victim.server(), new_owner.address);
    let mut inbox = victim.subscribe().await.unwrap();
    let got = common::receive(&mut inbox, 15, Duration::from_secs(10)).await;
    let got_ids: BTreeSet<[u8; 16]> = got.iter().map(|d| d.client_message_id).collect();
    let expected: BTreeSet<[u8; 16]> = sent
        .iter()
        .filter(|id| !acked.contains(id))
        .copied()
        .collect();
    assert_eq!(got_ids, expected, "every unacknowledged envelope, once");
    assert_eq!(got.len(), expected.len());
    common::assert_nothing_arrives(&mut inbox).await;
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_mailboxes_are_unavailable_without_their_region_and_never_placed_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let pinned: Vec<u32> = (0..SHARDS / 2).collect();
    let config = NodeConfig {
        region_pins: vec![RegionPin {
            shards: pinned.clone(),
            regions: vec!["eu".into()],
        }],
        ..cluster_config(dir.path())
    };
    let cluster = start(config.clone(), &["eu", "eu", "us"]).await;
    settle(&cluster, 3).await;
    let us = node(&cluster, "node-3");
    let euro = identity_where(|a| pinned.contains(&shard_of(a, SHARDS)));
    // Entering through the us node, the pinned mailbox lands on an eu node.
    let client = user_via(&us, &euro).await;
    let eu_addresses = [
        node(&cluster, "node-1").address,
        node(&cluster, "node-2").address,
    ];
    assert!(eu_addresses.contains(&client.server()));
    client.close().await;

    cluster.kill("node-1").unwrap();
    cluster.kill("node-2").unwrap();
    let owned = settle(&cluster, 1).await;
    let us_owns = &owned["node-3"];
    assert!(
        us_owns.iter().all(|s| !pinned.contains(s)),
        "a pinned shard was placed on the us node: {us_owns:?}"
    );
    assert_eq!(
        us_owns.len(),
        (SHARDS / 2) as usize,
        "it owns every unpinned shard"
    );

    let c = Client::connect(&client_config(&us), euro.clone())
        .await
        .unwrap();
    match c.authenticate().await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::MailboxUnavailable), "{e}"),
        Ok(()) => panic!("a pinned mailbox was served outside its region"),
    }
    // A send to it is still accepted (the log keeps it) and waits for its region.
    let local = identity_where(|a| !pinned.contains(&shard_of(a, SHARDS)));
    let sender = user_via(&us, &local).await;
    sender.send(&euro.account(), "kept for you").await.unwrap();

    // An eu node comes back: the mailbox is served again, with what was sent meanwhile.
    cluster
        .add_node_with(|c| c.region = "eu".into())
        .await
        .unwrap();
    settle(&cluster, 2).await;
    let back = log_in_eventually(&us, &euro).await;
    assert_eq!(back.server(), node(&cluster, "node-4").address);
    let mut inbox = back.subscribe().await.unwrap();
    let got = common::receive(&mut inbox, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ciphertext, "kept for you".as_bytes());
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_is_off_by_default_and_when_on_stalls_then_crashes_a_node_losing_nothing() {
    // Off: the endpoints refuse, and nothing happens to the node.
    let dir = tempfile::tempdir().unwrap();
    let off = start(cluster_config(dir.path()), &["local"]).await;
    let admin = off.nodes()[0].admin.unwrap();
    for path in ["/admin/faults/crash", "/admin/faults/stall?secs=5"] {
        let (status, body) = admin_request(admin, "POST", path).await;
        assert!(status.contains("403"), "{path}: {status} {body}");
        assert!(body.contains("fault_injection"), "{body}");
    }
    assert_eq!(off.nodes().len(), 1, "still running");
    off.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cluster = start(with_faults(dir.path()), &["local", "local"]).await;
    let nodes = cluster.nodes();
    let admin = nodes[0].admin.unwrap();
    let (status, body) = admin_request(admin, "POST", "/admin/faults/stall").await;
    assert!(
        status.contains("400"),
        "a stall needs its length: {status} {body}"
    );

    // Both users live on node-1 (one node of two owns their shards) so the stall holds them.
    let placement = settled_as(&cluster, &cluster_config(dir.path()), &["node-1", "node-2"]).await;
    let alice_id = identity_where(|a| owner_of(&placement, a) == "node-1");
    let bob_id = identity_where(|a| owner_of(&placement, a) == "node-1");
    let alice = user_via(&nodes[0], &alice_id).await;
    let bob = user_via(&nodes[0], &bob_id).await;
    let mut inbox = bob.subscribe().await.unwrap();

    // Longer than a client's silence check (2 × 2.5 s): a node whose backends stall still
    // acknowledges probes, so the waiting client must not take it for dead.
    fault(admin, "/admin/faults/stall?secs=8").await;
    // While node-1's backends stall, a send is not acknowledged (the append waits)...
    let held = tokio::time::timeout(
        Duration::from_millis(1000),
        alice.send_with_id(&bob_id.account(), "during the stall", [1; 16]),
    )
    .await;
    assert!(
        held.is_err(),
        "a send went through a stalled backend: {held:?}"
    );
    // ...and once it ends, the same message (same id) is acknowledged, on the same
    // connection, and delivered once.
    let server = alice.server();
    alice
        .send_with_id(&bob_id.account(), "during the stall", [1; 16])
        .await
        .unwrap();
    assert_eq!(alice.server(), server);
    let got = common::receive(&mut inbox, 1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].client_message_id, [1; 16]);
    bob.ack(&[got[0].envelope_id]).await.unwrap();

    // A crash takes node-1 out abruptly; an unacknowledged send is delivered by node-2.
    alice
        .send_with_id(&bob_id.account(), "before the crash", [2; 16])
        .await
        .unwrap();
    let body = fault(admin, "/admin/faults/crash").await;
    assert!(body.contains("node-1"), "{body}");
    assert_eq!(
        cluster
            .nodes()
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["node-2"]
    );
    let bob = log_in_eventually(&nodes[1], &bob_id).await;
    let mut inbox = bob.subscribe().await.unwrap();
    let got = common::receive(&mut inbox, 1, Duration::from_secs(15)).await;
    let ids: Vec<[u8; 16]> = got.iter().map(|d| d.client_message_id).collect();
    assert_eq!(
        ids,
        [[2; 16]],
        "the unacknowledged envelope, once; not the acked one"
    );
    common::assert_nothing_arrives(&mut inbox).await;
    cluster.shutdown().await.unwrap();
}

/// A node that cannot read the roster (demoted, after the failure timeout) does not send
/// clients to the owner its stale view names, which may be dead: it refuses the login with
/// `MAILBOX_UNAVAILABLE` and a short retry, and redirects again once it reads the roster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_node_refuses_logins_it_would_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(with_faults(dir.path()), &["local", "local"]).await;
    let nodes = cluster.nodes();
    let placement = settled_as(&cluster, &cluster_config(dir.path()), &["node-1", "node-2"]).await;
    let carol_id = identity_where(|a| owner_of(&placement, a) == "node-2");
    // Registered through node-1: redirected to node-2.
    let carol = user_via(&nodes[0], &carol_id).await;
    assert_eq!(carol.server(), nodes[1].address);
    drop(carol);

    let admin = nodes[0].admin.unwrap();
    fault(admin, "/admin/faults/stall?backend=roster&secs=4").await;
    // Past the 1 s failure timeout (and the read round that notices it).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let refused = async {
        let c = Client::connect(&client_config(&nodes[0]), carol_id.clone()).await?;
        c.authenticate().await
    }
    .await;
    match refused {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::MailboxUnavailable), "{e}"),
        Ok(()) => panic!("a demoted node logged carol in (redirected from its stale view)"),
    }

    // After the stall it reads the roster again and redirects as before.
    let carol = log_in_eventually(&nodes[0], &carol_id).await;
    assert_eq!(carol.server(), nodes[1].address);
    cluster.shutdown().await.unwrap();
}

/// A client that cannot reach its mailbox's owner while the node it came through can (a
/// gray failure: here node-2 advertises an address where nothing answers, and the cluster
/// reaches it in-process) is served where it is, as a guest: it logs in, receives what the
/// owner stores for it, acknowledges, and nothing comes back after acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_reach_its_owner_is_served_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path());
    let cluster = LocalCluster::open(config.clone()).unwrap();
    cluster.add_node().await.unwrap();
    let two = predict(&config, &[("node-1", "local"), ("node-2", "local")]);
    let carol_id = identity_where(|a| owner_of(&two, a) == "node-2");
    let dave_id = identity_where(|a| owner_of(&two, a) == "node-1");
    // Accounts first, while node-1 owns every shard.
    let node1 = node(&cluster, "node-1");
    drop(user_via(&node1, &carol_id).await);
    let dave = user_via(&node1, &dave_id).await;

    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    cluster
        .add_node_with(|c| c.advertise_address = Some(nowhere))
        .await
        .unwrap();
    settled_as(&cluster, &config, &["node-1", "node-2"]).await;

    let carol = log_in_eventually(&node1, &carol_id).await;
    assert_eq!(carol.server(), node1.address, "served where it came in");
    let mut inbox = carol.subscribe().await.unwrap();
    dave.send_with_id(&carol_id.account(), "to a guest", [5; 16])
        .await
        .unwrap();
    // Stored by node-2's delivery worker, read by the guest's pump on node-1.
    let got = common::receive(&mut inbox, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].client_message_id, [5; 16]);
    carol.ack(&[got[0].envelope_id]).await.unwrap();
    drop(inbox);
    drop(carol);

    let carol = log_in_eventually(&node1, &carol_id).await;
    let mut inbox = carol.subscribe().await.unwrap();
    common::assert_nothing_arrives(&mut inbox).await;
    cluster.shutdown().await.unwrap();
}

/// A registration the node holds in line (its place comes due within the hold) while its
/// mailbox moves to a node that joins meanwhile: it is still admitted where it waited — the
/// accounts are shared, so the place it waited for is honoured — and the session then
/// follows the mailbox to its new owner, where it messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_held_in_line_across_a_join_is_admitted_and_follows_its_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        // One newcomer a second to start with: the line forms at once.
        registration_initial_rate: 1.0,
        // A long hold, and no pause for a busy test machine's late scheduler: the place
        // must come due while the node holds the request, seconds after the join.
        registration_hold_ms: 10_000,
        admission_line_lag_ms: 0,
        ..cluster_config(dir.path())
    };
    let cluster = start(config.clone(), &["local"]).await;
    settled_as(&cluster, &config, &["node-1"]).await;
    let entry = node(&cluster, "node-1");
    let after_join = predict(&config, &[("node-1", "local"), ("node-2", "local")]);

    // Newcomers ahead in line, whose mailboxes stay on node-1.
    let mut ahead = Vec::new();
    for _ in 0..6 {
        let identity = identity_where(|a| owner_of(&after_join, a) == "node-1");
        let client = Client::connect(&client_config(&entry), identity)
            .await
            .unwrap();
        ahead.push(tokio::spawn(async move {
            client.register().await.unwrap();
            client
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Then one whose mailbox the join moves.
    let identity = identity_where(|a| owner_of(&after_join, a) == "node-2");
    let target = Client::connect(&client_config(&entry), identity.clone())
        .await
        .unwrap();
    let registering = tokio::spawn(async move {
        let mut tickets = 0;
        let created = target.register_waiting(|_| tickets += 1).await;
        (target, created, tickets)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.add_node().await.unwrap();
    settled_as(&cluster, &config, &["node-1", "node-2"]).await;
    assert!(
        !registering.is_finished(),
        "the registration must still be waiting when ownership changes; \
         the line moved faster than this test assumes"
    );

    let (target, created, tickets) = registering.await.unwrap();
    assert!(created.unwrap(), "the account was created");
    assert_eq!(
        tickets, 0,
        "held by the node, never sent away with a ticket"
    );
    let mut admitted = Vec::new();
    for a in ahead {
        admitted.push(a.await.unwrap());
    }
    let friend = &admitted[0];
    let mut inbox = friend.subscribe().await.unwrap();

    // The new account messages; its session ends up on the mailbox's new owner.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match target
            .send(&friend.account(), &b"hello from a newcomer"[..])
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "the newcomer cannot send: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let got = common::receive(&mut inbox, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the message arrived");
    assert_eq!(&got[0].ciphertext[..], b"hello from a newcomer");
    assert_eq!(
        target.server(),
        node(&cluster, "node-2").address,
        "the session followed its mailbox to node-2"
    );
    cluster.shutdown().await.unwrap();
}

/// A handoff in the worst order: the shard's old owner stores its last batch after the
/// recipient's session has moved and read its backlog on the new owner, and commits it
/// before the new owner's delivery worker reads where to resume. The new owner then never
/// reads those records from the log; the envelope must still reach the recipient once the
/// new owner has taken the shard, not only when the next envelope for that mailbox happens
/// to wake its session.
///
/// Stalls force the order: node-1's store holds its in-hand batch for 4 s, and node-2's
/// log holds its worker's take-over (`assign`) for 8 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_stored_by_the_old_owner_after_its_recipient_moved_is_delivered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        fault_injection: true,
        ..cluster_config(dir.path())
    };
    let cluster = start(config.clone(), &["local", "local"]).await;
    let placement = settled_as(&cluster, &config, &["node-1", "node-2"]).await;
    let (node_1, node_2) = (node(&cluster, "node-1"), node(&cluster, "node-2"));
    let alice_id = identity_where(|a| owner_of(&placement, a) == "node-2");
    let bob_id = identity_where(|a| owner_of(&placement, a) == "node-1");
    let alice = user_via(&node_2, &alice_id).await;
    let bob = user_via(&node_1, &bob_id).await;
    let mut inbox = bob.subscribe().await.unwrap();
    assert_eq!(bob.server(), node_1.address);

    // node-1's worker takes the envelope from the log and waits to store it...
    fault(
        node_1.admin.unwrap(),
        "/admin/faults/stall?backend=store&secs=4",
    )
    .await;
    alice
        .send_with_id(&bob_id.account(), "across the handoff", [7; 16])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...while node-1 drains: its shards go to node-2, whose worker waits to take them.
    fault(
        node_2.admin.unwrap(),
        "/admin/faults/stall?backend=log&secs=8",
    )
    .await;
    let draining = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.drain("node-1").await.unwrap() }
    });

    let got = common::receive(&mut inbox, 1, Duration::from_secs(20)).await;
    assert_eq!(
        got.iter().map(|d| d.client_message_id).collect::<Vec<_>>(),
        [[7; 16]],
        "the envelope reached Bob without another one to wake his session"
    );
    assert_eq!(
        bob.server(),
        node_2.address,
        "Bob's session moved to node-2"
    );
    draining.await.unwrap();
    cluster.shutdown().await.unwrap();
}
