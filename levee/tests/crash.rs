//! Nothing acknowledged is lost when the node process is killed with SIGKILL mid-stream.
//!
//! Runs the real `levee up` binary, kills it with SIGKILL while envelopes are in flight in
//! both directions (sends and acknowledgements), restarts it on the same data directory and
//! checks the ledger. And a restarted node tells the clients of its lost connections so.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{NodeProcess, assert_nothing_arrives, receive};
use levee_client::Client;
use levee_relay::Identity;

/// What each side was told.
#[derive(Default)]
struct Ledger {
    /// Payloads whose send the node acknowledged.
    acked_sends: BTreeSet<String>,
    /// Payloads whose deletion the node confirmed (the recipient's ack was answered).
    confirmed_deleted: BTreeSet<String>,
    /// Every delivery seen, payload → count.
    delivered: HashMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let (alice_id, bob_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut next = 0usize;

    for round in 0..3 {
        let node = NodeProcess::start(dir.path());
        let alice = Arc::new(node.login(&alice_id).await);
        let bob = Arc::new(node.login(&bob_id).await);
        let mut inbox = bob.subscribe().await.unwrap();

        // Bob receives and acknowledges as fast as envelopes arrive.
        let receiver = {
            let (bob, ledger) = (bob.clone(), ledger.clone());
            tokio::spawn(async move {
                while let Some(d) = inbox.next().await {
                    let text = String::from_utf8(d.ciphertext.to_vec()).unwrap();
                    *ledger
                        .lock()
                        .unwrap()
                        .delivered
                        .entry(text.clone())
                        .or_default() += 1;
                    if bob.ack(&[d.envelope_id]).await.is_ok() {
                        ledger.lock().unwrap().confirmed_deleted.insert(text);
                    }
                }
            })
        };
        // Alice keeps 32 sends in flight.
        let sender = {
            let (alice, ledger, to) = (alice.clone(), ledger.clone(), bob.account());
            let start = next;
            tokio::spawn(async move {
                let mut tasks: tokio::task::JoinSet<Result<(), levee_client::ClientError>> =
                    tokio::task::JoinSet::new();
                for i in start.. {
                    if tasks.len() >= 32 && tasks.join_next().await.unwrap().unwrap().is_err() {
                        break; // the node is gone
                    }
                    let (alice, ledger) = (alice.clone(), ledger.clone());
                    tasks.spawn(async move {
                        let text = format!("r{round}-m{i}");
                        alice.send(&to, text.clone().into_bytes()).await.map(|_| {
                            ledger.lock().unwrap().acked_sends.insert(text);
                        })
                    });
                }
            })
        };
        // Let traffic build up, then kill the node mid-stream.
        let target = (round + 1) * 400;
        while ledger.lock().unwrap().acked_sends.len() < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        node.sigkill();
        // The clients would only notice the dead node at their idle timeout; whatever was
        // not answered by now was not acknowledged, which is what the ledger records.
        sender.abort();
        receiver.abort();
        let _ = tokio::join!(sender, receiver);
        next += 1_000_000;
    }

    // Restart and drain everything that is left.
    let node = NodeProcess::start(dir.path());
    let bob = node.login(&bob_id).await;
    let mut inbox = bob.subscribe().await.unwrap();
    // Acknowledging as it goes: the node sends at most the delivery window unacknowledged.
    let mut after_restart: Vec<String> = Vec::new();
    loop {
        let batch = receive(&mut inbox, 512, Duration::from_secs(3)).await;
        if batch.is_empty() {
            break;
        }
        after_restart.extend(
            batch
                .iter()
                .map(|d| String::from_utf8(d.ciphertext.to_vec()).unwrap()),
        );
        bob.ack(&batch.iter().map(|d| d.envelope_id).collect::<Vec<_>>())
            .await
            .unwrap();
    }

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let mut seen: BTreeSet<String> = ledger.delivered.keys().cloned().collect();
    seen.extend(after_restart.iter().cloned());
    let lost: Vec<_> = ledger.acked_sends.difference(&seen).collect();
    assert!(
        ledger.acked_sends.len() >= 1200,
        "the test exercised enough traffic"
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged envelopes lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    let resurrected: Vec<_> = after_restart
        .iter()
        .filter(|t| ledger.confirmed_deleted.contains(*t))
        .collect();
    assert!(
        resurrected.is_empty(),
        "deleted envelopes came back: {resurrected:?}"
    );
    let unique: BTreeSet<_> = after_restart.iter().collect();
    assert_eq!(
        unique.len(),
        after_restart.len(),
        "no duplicates within one session"
    );

    // And once acknowledged, the mailbox is empty for good.
    bob.close().await;
    let bob = Client::connect(&node.config, bob_id.clone()).await.unwrap();
    bob.authenticate().await.unwrap();
    let mut inbox = bob.subscribe().await.unwrap();
    assert_nothing_arrives(&mut inbox).await;
    node.sigkill();
}

/// A node killed and restarted on the same address tells each client of a connection it
/// lost at the client's next keep-alive (10 s), with a QUIC stateless reset under a key kept
/// across restarts; the client no longer waits out the idle timeout (30 s) in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resets_the_connections_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate().unwrap();
    let node = NodeProcess::start(dir.path());
    let addr = node.config.server;
    let client = node.login(&id).await;
    let mut inbox = client.subscribe().await.unwrap();
    node.sigkill();
    let node = NodeProcess::start_on(dir.path(), addr);
    // Bounded below the idle timeout: ending at it would be the failure this is about.
    let ended = tokio::time::timeout(Duration::from_secs(25), inbox.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the subscription should end before the idle timeout"
    );
    let err = client.ping().await.unwrap_err().to_string();
    assert!(
        err.contains("reset"),
        "the node reset the connection: {err}"
    );
    // The account carries on over a new connection, its pass in hand.
    let again = Client::connect(&node.config, id.clone()).await.unwrap();
    again.authenticate().await.unwrap();
    again.ping().await.unwrap();
    node.sigkill();
}
