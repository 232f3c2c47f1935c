//! Conformance: the protocol's rules that a third-party client relies on (the header of
//! `protocol/proto/levee/v1/levee.proto`), each checked over real QUIC against a real node
//! with raw frames (no client library), so a change in what the node answers shows up here
//! before it surprises an implementer.
#![allow(clippy::unwrap_used)]

mod common;

use common::{RawConnection, TestNode, bytes, error_code};
use levee_protocol::identity::{Purpose, transcript};
use levee_protocol::wire::pb::{self, ErrorCode, client_frame::Body, response::Result as R};
use levee_relay::Identity;

/// `Register` or `Authenticate` (as `purpose` says) for `me`, carrying `signature`.
fn proof(purpose: Purpose, me: &Identity, signature: &[u8]) -> Body {
    let public_key = bytes(me.account().as_bytes());
    let signature = bytes(signature);
    match purpose {
        Purpose::Register => Body::Register(pb::Register {
            public_key,
            signature,
            ..Default::default()
        }),
        Purpose::Authenticate => Body::Authenticate(pb::Authenticate {
            public_key,
            signature,
            unreachable: String::new(),
        }),
    }
}

/// A raw connection authenticated as a newly registered `me`.
async fn registered(node: &TestNode, me: &Identity) -> RawConnection {
    let mut raw = RawConnection::open(node).await;
    let nonce = raw.hello().await;
    let signature = me.sign(&transcript(Purpose::Register, &raw.exporter, &nonce));
    raw.request(2, proof(Purpose::Register, me, &signature))
        .await;
    let r = raw.response().await.unwrap();
    assert!(
        matches!(r.result, Some(R::Authenticated(_))),
        "registered: {r:?}"
    );
    raw
}

fn send_to(me: &Identity, text: &str, message_id: u8) -> Body {
    Body::Send(pb::Send {
        recipient: bytes(me.account().as_bytes()),
        ciphertext: bytes(text.as_bytes()),
        client_message_id: bytes(&[message_id; 16]),
    })
}

/// Before `Hello`: `Ping` is answered, requests that need a session get
/// `UNAUTHENTICATED`, and a proof (`Register`/`Authenticate`) gets `PROTOCOL_VIOLATION`
/// (no challenge to sign).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_hello() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let me = Identity::generate().unwrap();
    let mut raw = RawConnection::open(&node).await;
    raw.request(1, Body::Ping(pb::Ping {})).await;
    let pong = raw.response().await.unwrap();
    assert!(matches!(pong.result, Some(R::Pong(_))), "{pong:?}");
    for (id, body) in [
        (2, send_to(&me, "x", 1)),
        (3, Body::Subscribe(pb::Subscribe { window: 0 })),
        (
            4,
            Body::Ack(pb::Ack {
                envelope_ids: vec![0],
            }),
        ),
    ] {
        raw.request(id, body).await;
        let r = raw.response().await.unwrap();
        assert_eq!(
            (r.request_id, error_code(&r)),
            (id, Some(ErrorCode::Unauthenticated))
        );
    }
    raw.request(5, proof(Purpose::Authenticate, &me, &[0; 64]))
        .await;
    let r = raw.response().await.unwrap();
    assert_eq!(error_code(&r), Some(ErrorCode::ProtocolViolation));
    node.stop().await;
}

/// A failed proof uses up its challenge: the right signature over the same nonce is then
/// refused (`PROTOCOL_VIOLATION`), and a new `Hello` gives a new challenge that works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_proof_uses_up_the_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let me = Identity::generate().unwrap();
    let mut raw = RawConnection::open(&node).await;
    let nonce = raw.hello().await;
    let register = |signature: &[u8]| proof(Purpose::Register, &me, signature);
    raw.request(2, register(&[7; 64])).await;
    assert_eq!(
        error_code(&raw.response().await.unwrap()),
        Some(ErrorCode::BadSignature)
    );
    let good = me.sign(&transcript(Purpose::Register, &raw.exporter, &nonce));
    raw.request(3, register(&good)).await;
    assert_eq!(
        error_code(&raw.response().await.unwrap()),
        Some(ErrorCode::ProtocolViolation)
    );
    let nonce = raw.hello().await;
    let good = me.sign(&transcript(Purpose::Register, &raw.exporter, &nonce));
    raw.request(4, register(&good)).await;
    assert_eq!(error_code(&raw.response().await.unwrap()), None);
    node.stop().await;
}

/// Once authenticated, `Hello` and a second `Subscribe` on the session are refused with
/// `PROTOCOL_VIOLATION`, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_login_hello_and_a_second_subscribe_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let me = Identity::generate().unwrap();
    let mut raw = registered(&node, &me).await;
    raw.request(10, Body::Hello(pb::Hello::default())).await;
    let r = raw.response().await.unwrap();
    assert_eq!(
        (r.request_id, error_code(&r)),
        (10, Some(ErrorCode::ProtocolViolation))
    );
    raw.request(11, Body::Subscribe(pb::Subscribe { window: 0 }))
        .await;
    assert_eq!(error_code(&raw.response().await.unwrap()), None);
    raw.request(12, Body::Subscribe(pb::Subscribe { window: 0 }))
        .await;
    let r = raw.response().await.unwrap();
    assert_eq!(
        (r.request_id, error_code(&r)),
        (12, Some(ErrorCode::ProtocolViolation))
    );
    raw.request(13, Body::Ping(pb::Ping {})).await;
    assert_eq!(raw.response().await.unwrap().request_id, 13);
    node.stop().await;
}

/// Request id 0 is the id of errors the node cannot attribute; a request sent with id 0
/// is still answered, on id 0, so a client cannot tell the two apart: never use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_id_zero_is_answered_on_id_zero() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let mut raw = RawConnection::open(&node).await;
    raw.request(0, Body::Ping(pb::Ping {})).await;
    let r = raw.response().await.unwrap();
    assert_eq!(r.request_id, 0);
    assert!(matches!(r.result, Some(R::Pong(_))), "{r:?}");
    node.stop().await;
}

/// On a fresh node the first envelope's id is 0 — absent on the wire, as proto3 leaves
/// zero values out — and it is delivered and acknowledged like any other. A re-send with
/// the same `client_message_id` is answered `SendOk` with an id of its own, yet delivered
/// once. `SubscribeOk` comes before the first `Delivery`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_from_zero_resends_and_the_order_of_a_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path());
    let me = Identity::generate().unwrap();
    let mut raw = registered(&node, &me).await;
    let mut sent = Vec::new();
    for (id, body) in [
        (20, send_to(&me, "first", 1)),
        (21, send_to(&me, "first", 1)),
        (22, send_to(&me, "second", 2)),
    ] {
        raw.request(id, body).await;
        match raw.response().await.unwrap().result {
            Some(R::SendOk(ok)) => sent.push(ok.envelope_id),
            other => panic!("send {id}: {other:?}"),
        }
    }
    assert_eq!(sent[0], 0, "the first envelope of a fresh node is 0");
    assert_ne!(sent[1], sent[0], "a re-send gets an id of its own");
    // A new session, so the three are backlog by the time it subscribes.
    drop(raw);
    let mut raw = RawConnection::open(&node).await;
    let nonce = raw.hello().await;
    let signature = me.sign(&transcript(Purpose::Authenticate, &raw.exporter, &nonce));
    raw.request(30, proof(Purpose::Authenticate, &me, &signature))
        .await;
    assert_eq!(error_code(&raw.response().await.unwrap()), None);
    // The delivery worker may still be storing them, so `BacklogDone` may come before
    // them: read until both deliveries and the marker are in.
    let mut frames = Vec::new();
    raw.request(31, Body::Subscribe(pb::Subscribe { window: 0 }))
        .await;
    while frames.len() < 16 {
        let Some(frame) = raw.next().await else { break };
        let done = matches!(frame.body, Some(pb::server_frame::Body::BacklogDone(_)));
        frames.push(frame.body.unwrap());
        let deliveries = frames
            .iter()
            .filter(|b| matches!(b, pb::server_frame::Body::Delivery(_)))
            .count();
        if done && deliveries >= 2 {
            break;
        }
    }
    assert!(
        matches!(&frames[0], pb::server_frame::Body::Response(r) if r.request_id == 31
            && matches!(r.result, Some(R::SubscribeOk(_)))),
        "SubscribeOk first: {frames:?}"
    );
    let delivered: Vec<(u64, Vec<u8>)> = frames
        .iter()
        .filter_map(|b| match b {
            pb::server_frame::Body::Delivery(d) => Some((d.envelope_id, d.ciphertext.to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        [(0, b"first".to_vec()), (sent[2], b"second".to_vec())],
        "the re-send delivered once: {frames:?}"
    );
    raw.request(
        32,
        Body::Ack(pb::Ack {
            envelope_ids: vec![0],
        }),
    )
    .await;
    match raw.response().await.unwrap().result {
        Some(R::AckOk(ok)) => assert_eq!(ok.deleted, 1, "envelope 0 acknowledged"),
        other => panic!("ack: {other:?}"),
    }
    node.stop().await;
}
