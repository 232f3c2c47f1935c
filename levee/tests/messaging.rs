//! End-to-end messaging over real QUIC on loopback against a real node with its real
//! embedded store.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{RawConnection, TestNode, assert_nothing_arrives, bytes, error_code, receive};
use levee_client::{Client, Delivery};
use levee_protocol::identity::{Purpose, transcript};
use levee_protocol::wire::pb::{self, ErrorCode, client_frame::Body};
use levee_relay::Identity;

const QUIET: Duration = Duration::from_secs(3);

/// A node with two registered users; Bob's identity is kept so the test can reconnect as him.
async fn alice_and_bob(dir: &std::path::Path) -> (TestNode, Client, Identity, Client) {
    let node = TestNode::start(dir);
    let alice = node.new_user().await;
    let bob_id = Identity::generate().unwrap();
    let bob = node.user(&bob_id).await;
    (node, alice, bob_id, bob)
}

/// Sends `n` numbered envelopes from `from` to `to`, `window` at a time in flight.
async fn send_numbered(
    from: Arc<Client>,
    to: levee_relay::AccountId,
    prefix: &str,
    n: usize,
    window: usize,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= window {
            tasks.join_next().await.unwrap().unwrap();
        }
        let (from, payload) = (from.clone(), format!("{prefix}-{i}"));
        tasks.spawn(async move {
            from.send(&to, payload.into_bytes())
                .await
                .expect("send acknowledged");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Receives `n` envelopes, acknowledging them in batches as an application would.
async fn drain_and_ack(
    client: &Client,
    inbox: &mut levee_client::Deliveries,
    n: usize,
) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = receive(inbox, (n - got.len()).min(100), QUIET).await;
        if batch.is_empty() {
            break;
        }
        let ids: Vec<u64> = batch.iter().map(|d| d.envelope_id).collect();
        let receipt = client.ack(&ids).await.unwrap();
        assert_eq!(
            receipt.deleted as usize,
            ids.len(),
            "every delivered envelope is deletable once"
        );
        got.extend(batch);
    }
    got
}

fn texts(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8(d.ciphertext.to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_exchange_a_thousand_envelopes_each_way_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let (alice_id, bob_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let alice = Arc::new(node.connect(&alice_id).await);
    let bob = Arc::new(node.connect(&bob_id).await);
    alice.register().await.unwrap();
    bob.register().await.unwrap();
    let mut alice_inbox = alice.subscribe().await.unwrap();
    let mut bob_inbox = bob.subscribe().await.unwrap();
    const N: usize = 1000;

    let a_to_b = tokio::spawn(send_numbered(alice.clone(), bob.account(), "a2b", N, 64));
    let b_to_a = tokio::spawn(send_numbered(bob.clone(), alice.account(), "b2a", N, 64));
    let (at_bob, at_alice) = tokio::join!(
        drain_and_ack(&bob, &mut bob_inbox, N),
        drain_and_ack(&alice, &mut alice_inbox, N)
    );
    a_to_b.await.unwrap();
    b_to_a.await.unwrap();

    for (got, prefix) in [(&at_bob, "a2b"), (&at_alice, "b2a")] {
        let texts = texts(got);
        let unique: BTreeSet<_> = texts.iter().cloned().collect();
        assert_eq!(texts.len(), N, "{prefix}: every envelope arrived");
        assert_eq!(unique.len(), N, "{prefix}: none arrived twice");
        assert_eq!(
            unique,
            (0..N).map(|i| format!("{prefix}-{i}")).collect(),
            "{prefix}: exactly the ones sent"
        );
        let ids: Vec<u64> = got.iter().map(|d| d.envelope_id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{prefix}: delivered oldest first"
        );
    }

    // After the acks, a new session of either account sees nothing again.
    for id in [&alice_id, &bob_id] {
        let (_again, mut inbox) = node.resume(id).await;
        assert_nothing_arrives(&mut inbox).await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_envelopes_are_not_redelivered_and_unacknowledged_ones_are() {
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob_id, bob) = alice_and_bob(dir.path()).await;
    for i in 0..10 {
        alice
            .send(&bob.account(), format!("m{i}").into_bytes())
            .await
            .unwrap();
    }
    let mut inbox = bob.subscribe().await.unwrap();
    let first = receive(&mut inbox, 10, QUIET).await;
    assert_eq!(
        texts(&first),
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    // Acknowledge only the first six.
    let ids: Vec<u64> = first[..6].iter().map(|d| d.envelope_id).collect();
    assert_eq!(bob.ack(&ids).await.unwrap().deleted, 6);
    bob.close().await;

    let (_bob, mut inbox) = node.resume(&bob_id).await;
    let again = receive(&mut inbox, 10, Duration::from_secs(1)).await;
    assert_eq!(
        texts(&again),
        vec!["m6", "m7", "m8", "m9"],
        "only the unacknowledged come back, in order"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_the_same_client_message_id_stores_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob_id, bob) = alice_and_bob(dir.path()).await;
    let id = [42u8; 16];
    for _ in 0..3 {
        alice
            .send_with_id(&bob.account(), b"once".to_vec(), id)
            .await
            .unwrap();
    }
    // Another sender using the same client message id is a different message.
    let carol = node.new_user().await;
    carol
        .send_with_id(&bob.account(), b"carol".to_vec(), id)
        .await
        .unwrap();
    let mut inbox = bob.subscribe().await.unwrap();
    let got = receive(&mut inbox, 10, Duration::from_secs(1)).await;
    assert_eq!(texts(&got), vec!["once", "carol"]);
    bob.ack(&got.iter().map(|d| d.envelope_id).collect::<Vec<_>>())
        .await
        .unwrap();
    // A re-send after the recipient acknowledged is still recognised.
    alice
        .send_with_id(&bob.account(), b"once".to_vec(), id)
        .await
        .unwrap();
    bob.close().await;
    // No second copy, ever.
    let (_bob, mut inbox) = node.resume(&bob_id).await;
    assert_nothing_arrives(&mut inbox).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob) = TestNode::with_pair(dir.path(), |_| {}).await;
    let mut bob_inbox = bob.subscribe().await.unwrap();

    // Oversized envelope: the client library refuses locally, and the node refuses too when
    // a client skips that check.
    let big = vec![0u8; 64 * 1024 + 1];
    assert!(alice.send(&bob.account(), big.clone()).await.is_err());
    let raw = alice
        .request(Body::Send(pb::Send {
            recipient: bytes(bob.account().as_bytes()),
            ciphertext: big.into(),
            client_message_id: bytes(&[1; 16]),
        }))
        .await;
    assert_eq!(raw.unwrap_err().code(), Some(ErrorCode::TooLarge));

    // Malformed fields.
    let short = alice
        .request(Body::Send(pb::Send {
            recipient: bytes(&[1; 31]),
            ciphertext: bytes(b"x"),
            client_message_id: bytes(&[1; 16]),
        }))
        .await;
    assert_eq!(short.unwrap_err().code(), Some(ErrorCode::Malformed));
    let nobody = alice
        .send(&levee_relay::AccountId([9; 32]), b"x".to_vec())
        .await;
    assert_eq!(
        nobody.unwrap_err().code(),
        Some(ErrorCode::UnknownRecipient)
    );

    // Unauthenticated receive and send.
    let stranger = node.connect(&Identity::generate().unwrap()).await;
    assert_eq!(
        stranger.subscribe().await.unwrap_err().code(),
        Some(ErrorCode::Unauthenticated)
    );
    let unauth_send = stranger.send(&bob.account(), b"x".to_vec()).await;
    assert_eq!(
        unauth_send.unwrap_err().code(),
        Some(ErrorCode::Unauthenticated)
    );
    // Logging in to an account that was never registered.
    assert_eq!(
        stranger.authenticate().await.unwrap_err().code(),
        Some(ErrorCode::UnknownAccount)
    );

    // Acknowledging someone else's envelope does nothing to it.
    let eve = node.new_user().await;
    let envelope_id = alice
        .send(&bob.account(), b"for bob".to_vec())
        .await
        .unwrap();
    let receipt = eve.ack(&[envelope_id]).await.unwrap();
    assert_eq!(
        (receipt.deleted, receipt.unknown_ids),
        (0, vec![envelope_id])
    );
    let got = receive(&mut bob_inbox, 1, QUIET).await;
    assert_eq!(texts(&got), vec!["for bob"], "bob still gets it");

    // Wrong-key authentication: a signature by one key presented for another.
    let mut raw = RawConnection::open(&node).await;
    let nonce = raw.hello().await;
    let signer = Identity::generate().unwrap();
    let claimed = bob.account();
    let signature = signer.sign(&transcript(Purpose::Authenticate, &raw.exporter, &nonce));
    raw.request(
        2,
        Body::Authenticate(pb::Authenticate {
            public_key: bytes(claimed.as_bytes()),
            signature: bytes(&signature),
            unreachable: String::new(),
        }),
    )
    .await;
    assert_eq!(
        error_code(&raw.response().await.unwrap()),
        Some(ErrorCode::BadSignature)
    );

    // A valid signature captured on one connection is useless on another.
    let mut first = RawConnection::open(&node).await;
    let me = Identity::generate().unwrap();
    let nonce = first.hello().await;
    let captured = me.sign(&transcript(Purpose::Register, &first.exporter, &nonce));
    let register = Body::Register(pb::Register {
        public_key: bytes(me.account().as_bytes()),
        signature: bytes(&captured),
        ..Default::default()
    });
    let mut second = RawConnection::open(&node).await;
    second.hello().await;
    second.request(2, register.clone()).await;
    assert_eq!(
        error_code(&second.response().await.unwrap()),
        Some(ErrorCode::BadSignature)
    );
    // ... while on its own connection it works.
    first.request(2, register).await;
    assert_eq!(error_code(&first.response().await.unwrap()), None);

    // A frame that is not protobuf: MALFORMED on request 0, and the session goes on.
    let mut raw = RawConnection::open(&node).await;
    raw.write_bytes(&[3, 0xff, 0xff, 0xff]).await;
    assert_eq!(
        error_code(&raw.response().await.unwrap()),
        Some(ErrorCode::Malformed)
    );
    raw.request(7, Body::Ping(pb::Ping {})).await;
    let pong = raw.response().await.unwrap();
    assert_eq!((pong.request_id, error_code(&pong)), (7, None));
    // An empty request body.
    raw.write_bytes(&levee_protocol::wire::encode_frame(&pb::ClientFrame {
        request_id: 8,
        body: None,
    }))
    .await;
    assert_eq!(
        error_code(&raw.response().await.unwrap()),
        Some(ErrorCode::Malformed)
    );

    // A frame over the node's frame limit: TOO_LARGE on request 0, then the node closes.
    let mut raw = RawConnection::open(&node).await;
    raw.write_bytes(&[0xff, 0xff, 0xff, 0xff, 0x0f]).await;
    assert_eq!(
        error_code(&raw.response().await.unwrap()),
        Some(ErrorCode::TooLarge)
    );
    assert!(raw.next().await.is_none(), "the stream ends");

    // Garbage in the length prefix itself.
    let mut raw = RawConnection::open(&node).await;
    raw.write_bytes(&[0x80; 12]).await;
    let r = raw.response().await.unwrap();
    assert!(matches!(
        error_code(&r),
        Some(ErrorCode::Malformed | ErrorCode::TooLarge)
    ));

    // After all that, ordinary clients are served as before.
    alice
        .send(&bob.account(), b"still here".to_vec())
        .await
        .unwrap();
    assert_eq!(
        texts(&receive(&mut bob_inbox, 1, QUIET).await),
        vec!["still here"]
    );
    let late = node.new_user().await;
    late.ping().await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_clearly_until_drained() {
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob) = TestNode::with_pair(dir.path(), |c| c.mailbox_max_envelopes = 3).await;
    for i in 0..3 {
        alice
            .send(&bob.account(), format!("m{i}").into_bytes())
            .await
            .unwrap();
    }
    // The quota counts stored envelopes; give the delivery worker a moment to store them.
    let mut refused = None;
    for _ in 0..50 {
        match alice.send(&bob.account(), b"one too many".to_vec()).await {
            Err(e) => {
                refused = e.code();
                break;
            }
            Ok(_) => {
                // Accepted before the first three were counted: it is a real envelope now.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(refused, Some(ErrorCode::MailboxFull));
    let mut inbox = bob.subscribe().await.unwrap();
    let got = receive(&mut inbox, 10, Duration::from_secs(1)).await;
    assert!(got.len() >= 3, "nothing accepted was dropped");
    bob.ack(&got.iter().map(|d| d.envelope_id).collect::<Vec<_>>())
        .await
        .unwrap();
    alice
        .send(&bob.account(), b"room again".to_vec())
        .await
        .unwrap();
    assert_eq!(
        texts(&receive(&mut inbox, 1, QUIET).await),
        vec!["room again"]
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_envelopes_are_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob) = TestNode::with_pair(dir.path(), |c| c.envelope_ttl_secs = 1).await;
    alice.send(&bob.account(), b"stale".to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut inbox = bob.subscribe().await.unwrap();
    assert_nothing_arrives(&mut inbox).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_idempotent_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let me = Identity::generate().unwrap();
    let node = TestNode::start(dir.path());
    let fingerprint = node.fingerprint;
    let c = node.connect(&me).await;
    assert!(c.register().await.unwrap(), "created");
    c.close().await;
    let c = node.connect(&me).await;
    assert!(!c.register().await.unwrap(), "already there");
    c.close().await;
    node.stop().await;

    let node = TestNode::start(dir.path());
    assert_eq!(
        node.fingerprint, fingerprint,
        "the certificate is kept in the data directory"
    );
    let c = node.connect(&me).await;
    c.authenticate().await.unwrap();
    node.stop().await;
}

/// A caller may connect well before its first request (the surge test connects hundreds of
/// newcomers, then has them all register at once). The node closes a connection whose session
/// stream it has not seen within its handshake timeout (10 s), so the client announces the
/// stream when it connects; before it did, this registration failed with "open the session
/// stream first".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_after_connecting_keeps_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let c = node.connect(&Identity::generate().unwrap()).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        c.register().await.unwrap(),
        "registered on the first connection"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let alice = Arc::new(node.new_user().await);
    let bob = node.new_user().await;
    // 200 sends issued at once on one connection; each gets its own answer.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let (alice, to) = (alice.clone(), bob.account());
        tasks.spawn(async move { (i, alice.send(&to, i.to_be_bytes().to_vec()).await.unwrap()) });
    }
    let mut ids = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, id) = r.unwrap();
        ids.insert(i, id);
    }
    let unique: BTreeSet<_> = ids.values().collect();
    assert_eq!(unique.len(), 200, "distinct envelope ids");
    node.stop().await;
}

/// A patient connection attempt ends at its deadline, not `connect_timeout` after it: a
/// newcomer (or a drill's) that set a deadline gets its answer then. Against a socket that
/// never answers, with a deadline far inside the connect timeout, the first attempt can
/// only end by being cut short, which is not counted as a refusal by the node. Before, it
/// ran its whole 5 s, was counted as turned away, and ended with "timed out".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_connection_gives_up_at_its_deadline() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = levee_client::ClientConfig::new(
        silent.local_addr().unwrap(),
        levee_client::Trust::Fingerprint(levee_client::Fingerprint([0; 32])),
    );
    config.connect_timeout = Duration::from_secs(5);
    let connector = levee_client::Connector::new(&config).unwrap();
    let give_up = std::time::Instant::now() + Duration::from_millis(300);
    let mut refused = 0;
    let result = connector
        .connect_patiently(Identity::generate().unwrap(), give_up, || refused += 1)
        .await;
    match result {
        Err(levee_client::ClientError::Unreachable { reason, .. }) => {
            assert_eq!(reason, "no answer before the deadline");
        }
        Err(e) => panic!("expected the deadline, got {e}"),
        Ok(_) => panic!("nothing answers there"),
    }
    assert_eq!(
        refused, 0,
        "the attempt cut short is not counted as turned away"
    );
}

/// Acknowledgements are never shed, so one `Ack` may carry at most `MAX_ACK_IDS` ids; more
/// is refused as a whole with `TOO_LARGE`. The client library splits a longer list, and the
/// receipt adds up the parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_over_the_id_cap_is_refused_and_the_client_splits_long_lists() {
    use levee_protocol::wire::MAX_ACK_IDS;
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob) = TestNode::with_pair(dir.path(), |_| {}).await;
    let mut inbox = bob.subscribe().await.unwrap();
    for i in 0..3 {
        alice
            .send(&bob.account(), format!("m{i}").into_bytes())
            .await
            .unwrap();
    }
    let got = receive(&mut inbox, 3, QUIET).await;
    let delivered: Vec<u64> = got.iter().map(|d| d.envelope_id).collect();

    // Over the cap, raw: refused, and nothing is deleted.
    let mut too_many: Vec<u64> = delivered.clone();
    too_many.extend((0..MAX_ACK_IDS as u64).map(|i| 1_000_000 + i));
    let refused = bob
        .request(Body::Ack(pb::Ack {
            envelope_ids: too_many.clone(),
        }))
        .await;
    assert_eq!(refused.unwrap_err().code(), Some(ErrorCode::TooLarge));

    // The same list through the library: two requests, every delivered envelope deleted.
    let receipt = bob.ack(&too_many).await.unwrap();
    assert_eq!(receipt.deleted, 3);
    assert_eq!(receipt.unknown_ids.len(), MAX_ACK_IDS);
    bob.close().await;
    node.stop().await;
}

/// Flow control: a subscriber is sent at most its delivery window of unacknowledged
/// envelopes, each ack makes room for as many more, and nothing is lost on the way. A
/// window asked above the node's limit is cut to it; asking 0 gets the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_sent_at_most_its_window_until_it_acknowledges() {
    use levee_client::ClientConfig;
    use levee_protocol::wire::pb::response::Result as R;
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, dave) = TestNode::with_pair(dir.path(), |c| c.delivery_window = 5).await;
    let user_asking = |window: u32| {
        let config = ClientConfig {
            delivery_window: window,
            ..node.client_config()
        };
        async move {
            let client = Client::connect(&config, Identity::generate().unwrap())
                .await
                .unwrap();
            client.register().await.unwrap();
            client
        }
    };
    let (bob, carol) = (user_asking(3).await, user_asking(100).await);
    for i in 0..8 {
        for to in [&bob, &carol] {
            alice
                .send(&to.account(), format!("m{i}").into_bytes())
                .await
                .unwrap();
        }
    }

    let mut inbox = bob.subscribe().await.unwrap();
    let mut got = receive(&mut inbox, 3, QUIET).await;
    assert_eq!(got.len(), 3);
    assert_nothing_arrives(&mut inbox).await;
    // Two acknowledged: two more, and no more than that.
    let first_two: Vec<u64> = got[..2].iter().map(|d| d.envelope_id).collect();
    assert_eq!(bob.ack(&first_two).await.unwrap().deleted, 2);
    got.extend(receive(&mut inbox, 2, QUIET).await);
    assert_eq!(got.len(), 5);
    assert_nothing_arrives(&mut inbox).await;
    // An id this session was never sent makes no room.
    assert_eq!(bob.ack(&[u64::MAX]).await.unwrap().unknown_ids, [u64::MAX]);
    assert_nothing_arrives(&mut inbox).await;
    // The rest, as acks make room.
    while got.len() < 8 {
        let held: Vec<u64> = got[got.len() - 3..].iter().map(|d| d.envelope_id).collect();
        bob.ack(&held).await.unwrap();
        let more = receive(&mut inbox, 8 - got.len(), QUIET).await;
        assert!(!more.is_empty(), "acks made room, yet nothing came");
        got.extend(more);
    }
    let payloads: Vec<Vec<u8>> = got.iter().map(|d| d.ciphertext.to_vec()).collect();
    let sent: Vec<Vec<u8>> = (0..8).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(payloads, sent, "all eight, once each, in order");

    // Asked for 100, granted the node's 5.
    let mut inbox = carol.subscribe().await.unwrap();
    assert_eq!(receive(&mut inbox, 8, QUIET).await.len(), 5);
    // Asking 0 gets the node's limit, which the answer says.
    match dave
        .request(Body::Subscribe(pb::Subscribe { window: 0 }))
        .await
        .unwrap()
    {
        R::SubscribeOk(ok) => assert_eq!(ok.window, 5),
        other => panic!("unexpected {other:?}"),
    }
    node.stop().await;
}

/// `BacklogDone`: a subscriber learns its backlog is drained without waiting for quiet —
/// after the envelopes that waited for it, and at once for an empty mailbox — and live
/// deliveries follow on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_ends_with_a_marker_and_live_deliveries_follow() {
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob_id, bob) = alice_and_bob(dir.path()).await;
    // Three envelopes stored (seen by a first session) and not acknowledged.
    let mut first = bob.subscribe().await.unwrap();
    for i in 0..3 {
        alice
            .send(&bob.account(), format!("old{i}").into_bytes())
            .await
            .unwrap();
    }
    assert_eq!(receive(&mut first, 3, QUIET).await.len(), 3);
    bob.close().await;

    let (bob, mut inbox) = node.resume(&bob_id).await;
    let mut backlog = Vec::new();
    loop {
        match tokio::time::timeout(QUIET, inbox.backlog()).await {
            Ok(Some(d)) => backlog.push(String::from_utf8(d.ciphertext.to_vec()).unwrap()),
            Ok(None) => break,
            Err(_) => panic!("no end of the backlog after {backlog:?}"),
        }
    }
    assert_eq!(backlog, ["old0", "old1", "old2"]);
    alice.send(&bob.account(), b"live".to_vec()).await.unwrap();
    let live = receive(&mut inbox, 1, QUIET).await;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].ciphertext.as_ref(), b"live");
    assert_eq!(
        tokio::time::timeout(QUIET, inbox.backlog()).await,
        Ok(None),
        "the backlog stays drained"
    );

    // An empty mailbox says so at once.
    let carol = node.new_user().await;
    let mut empty = carol.subscribe().await.unwrap();
    assert_eq!(tokio::time::timeout(QUIET, empty.backlog()).await, Ok(None));
    node.stop().await;
}
