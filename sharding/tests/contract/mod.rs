//! The `MailboxStore` contract, checked the same way against every implementation
//! (`tests/embedded.rs`, `tests/scylla.rs`). Mailbox ids are random, so runs against a
//! long-lived database do not see each other's data.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use levee_sharding::{
    AckOutcome, InsertOutcome, MailboxId, MailboxStore, MailboxUsage, NewEnvelope,
};
use ring::rand::{SecureRandom, SystemRandom};

/// An hour from now: what "not expired" means in these tests.
pub fn in_an_hour() -> u64 {
    now_ms() + 3_600_000
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn random_mailbox() -> MailboxId {
    let mut id = [0u8; 32];
    SystemRandom::new().fill(&mut id).unwrap();
    MailboxId(id)
}

pub fn envelope(mailbox: MailboxId, id: u64, dedupe: u8, expires_at_ms: u64) -> NewEnvelope {
    NewEnvelope {
        mailbox,
        id,
        dedupe_key: [dedupe; 16],
        client_message_id: [dedupe; 16],
        accepted_at_ms: now_ms(),
        expires_at_ms,
        ciphertext: Bytes::from(vec![id as u8; 10]),
    }
}

/// Envelopes `0..n` for `mailbox`, each with its own dedupe key, expiring in an hour.
pub fn numbered(mailbox: MailboxId, n: u64) -> Vec<NewEnvelope> {
    (0..n)
        .map(|i| {
            let mut e = envelope(mailbox, i, 0, in_an_hour());
            e.dedupe_key = u128::from(i).to_be_bytes();
            e
        })
        .collect()
}

pub async fn read_ids(s: &impl MailboxStore, m: &MailboxId, after: Option<u64>) -> Vec<u64> {
    s.read(m, after, 10_000, now_ms())
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect()
}

/// Accounts: created once, then reported existing.
pub async fn accounts(s: &impl MailboxStore) {
    let a = random_mailbox();
    assert!(!s.mailbox_exists(&a).await.unwrap());
    assert!(s.create_mailbox(&a).await.unwrap(), "new account");
    assert!(!s.create_mailbox(&a).await.unwrap(), "existing account");
    assert!(s.mailbox_exists(&a).await.unwrap());
}

/// Stored once per log record and per message, read in order, acknowledged only by owner,
/// and a re-send of an acknowledged message is still recognised.
pub async fn insert_read_ack(s: &impl MailboxStore) {
    let (a, b) = (random_mailbox(), random_mailbox());
    let later = in_an_hour();
    let outcomes = s
        .insert(vec![
            envelope(a, 5, 1, later),
            envelope(a, 6, 2, later),
            envelope(a, 6, 2, later), // replayed record
            envelope(a, 7, 1, later), // re-sent message: same dedupe key
            envelope(b, 8, 1, later), // same dedupe bytes, other mailbox
        ])
        .await
        .unwrap();
    use InsertOutcome::*;
    assert_eq!(outcomes, vec![Stored, Stored, Duplicate, Duplicate, Stored]);
    assert_eq!(read_ids(s, &a, None).await, vec![5, 6]);
    let after_five = s.read(&a, Some(5), 10, now_ms()).await.unwrap();
    assert_eq!(after_five.len(), 1);
    assert_eq!(after_five[0].ciphertext, Bytes::from(vec![6u8; 10]));
    assert_eq!(after_five[0].client_message_id, [2; 16]);
    assert_eq!(
        s.usage(&a).await.unwrap(),
        MailboxUsage {
            envelopes: 2,
            bytes: 20
        }
    );
    // b's envelope cannot be acknowledged through a.
    assert_eq!(
        s.ack(&a, &[5, 8]).await.unwrap(),
        AckOutcome {
            deleted: 1,
            unknown: vec![8]
        }
    );
    assert_eq!(read_ids(s, &b, None).await, vec![8]);
    assert_eq!(read_ids(s, &a, None).await, vec![6]);
    // Acknowledged, yet a re-send of it is still recognised...
    let again = s.insert(vec![envelope(a, 9, 1, later)]).await.unwrap();
    assert_eq!(again, vec![Duplicate]);
    // ...and so is a replay of the very record (same id): it does not come back.
    let replay = s.insert(vec![envelope(a, 5, 1, later)]).await.unwrap();
    assert_eq!(replay, vec![Duplicate]);
    assert_eq!(read_ids(s, &a, None).await, vec![6]);
    assert_eq!(
        s.usage(&a).await.unwrap(),
        MailboxUsage {
            envelopes: 1,
            bytes: 10
        }
    );
    // Acknowledging twice: the second time it is unknown.
    assert_eq!(s.ack(&a, &[6, 6]).await.unwrap().deleted, 1);
    assert_eq!(s.ack(&a, &[6]).await.unwrap().unknown, vec![6]);
    assert_eq!(s.usage(&a).await.unwrap(), MailboxUsage::default());
}

/// A reader is never shown an envelope past its expiry, whatever the store has yet swept.
pub async fn expired_envelopes_are_not_read(s: &impl MailboxStore) {
    let a = random_mailbox();
    let soon = now_ms() + 60_000;
    s.insert(vec![
        envelope(a, 1, 1, soon),
        envelope(a, 2, 2, in_an_hour()),
    ])
    .await
    .unwrap();
    let ids: Vec<u64> = s
        .read(&a, None, 10, soon + 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![2]);
}

/// Draining a mailbox lets later reads start past what was deleted, and still misses
/// nothing stored afterwards, even below the old head.
pub async fn drained_mailbox_misses_nothing(s: &impl MailboxStore) {
    let a = random_mailbox();
    let later = in_an_hour();
    let batch: Vec<_> = (10..20).map(|i| envelope(a, i, i as u8, later)).collect();
    s.insert(batch).await.unwrap();
    let acked = s.ack(&a, &(10..20).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(acked.deleted, 10);
    assert_eq!(read_ids(s, &a, None).await, Vec::<u64>::new());
    s.insert(vec![envelope(a, 25, 50, later)]).await.unwrap();
    // An id below the drained head (a replayed log record after a crash elsewhere) still shows.
    s.insert(vec![envelope(a, 5, 51, later)]).await.unwrap();
    assert_eq!(read_ids(s, &a, None).await, vec![5, 25]);
    assert_eq!(read_ids(s, &a, Some(5)).await, vec![25]);
}

/// A replayed batch, larger than one dedupe lookup takes, is recognised whole, and a batch
/// mixing replays with new messages stores exactly the new ones.
pub async fn a_replayed_batch_is_recognised_whole(s: &impl MailboxStore) {
    use InsertOutcome::*;
    let (a, b) = (random_mailbox(), random_mailbox());
    let first: Vec<_> = numbered(a, 600).into_iter().chain(numbered(b, 3)).collect();
    assert!(
        s.insert(first.clone())
            .await
            .unwrap()
            .iter()
            .all(|o| *o == Stored)
    );
    let replay = s.insert(first).await.unwrap();
    assert_eq!(replay.len(), 603);
    assert!(replay.iter().all(|o| *o == Duplicate), "{replay:?}");
    // Half of a's old messages again (new log records: other ids, same dedupe keys), with
    // new ones between them.
    let mixed: Vec<_> = (0..600u64)
        .step_by(2)
        .flat_map(|i| {
            let mut old = envelope(a, 1_000 + 2 * i, 0, in_an_hour());
            old.dedupe_key = u128::from(i).to_be_bytes();
            let mut new = envelope(a, 1_001 + 2 * i, 0, in_an_hour());
            new.dedupe_key = u128::from(10_000 + i).to_be_bytes();
            [old, new]
        })
        .collect();
    let outcomes = s.insert(mixed).await.unwrap();
    assert_eq!(
        outcomes,
        (0..300)
            .flat_map(|_| [Duplicate, Stored])
            .collect::<Vec<_>>()
    );
    assert_eq!(s.usage(&a).await.unwrap().envelopes, 900);
}

/// Acknowledgements out of order, in a mailbox that never empties: everything still
/// unacknowledged is read from the start and counted, whatever the store does to start its
/// reads past what was deleted.
pub async fn acknowledgements_out_of_order_hide_nothing(s: &impl MailboxStore) {
    let a = random_mailbox();
    s.insert(numbered(a, 10)).await.unwrap();
    assert_eq!(s.ack(&a, &[0, 1, 2, 3, 4]).await.unwrap().deleted, 5);
    assert_eq!(read_ids(s, &a, None).await, vec![5, 6, 7, 8, 9]);
    assert_eq!(s.ack(&a, &[7]).await.unwrap().deleted, 1);
    assert_eq!(read_ids(s, &a, None).await, vec![5, 6, 8, 9]);
    assert_eq!(s.ack(&a, &[5, 6]).await.unwrap().deleted, 2);
    assert_eq!(read_ids(s, &a, None).await, vec![8, 9]);
    assert_eq!(read_ids(s, &a, Some(3)).await, vec![8, 9]);
    let mut later = envelope(a, 10, 0, in_an_hour());
    later.dedupe_key = u128::from(10u64).to_be_bytes();
    s.insert(vec![later]).await.unwrap();
    assert_eq!(read_ids(s, &a, None).await, vec![8, 9, 10]);
    assert_eq!(s.usage(&a).await.unwrap().envelopes, 3);
    assert_eq!(s.ack(&a, &[9]).await.unwrap().deleted, 1);
    assert_eq!(read_ids(s, &a, None).await, vec![8, 10]);
    assert_eq!(s.usage(&a).await.unwrap().envelopes, 2);
}

/// A large backlog comes back in order, `max` at a time.
pub async fn large_backlog_pages_in_order(s: &impl MailboxStore) {
    let a = random_mailbox();
    let outcomes = s.insert(numbered(a, 1_500)).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == InsertOutcome::Stored));
    let first = s.read(&a, None, 1_000, now_ms()).await.unwrap();
    assert_eq!(first.len(), 1_000);
    assert!(first.windows(2).all(|w| w[0].id + 1 == w[1].id));
    let rest = s
        .read(&a, Some(first[999].id), 1_000, now_ms())
        .await
        .unwrap();
    assert_eq!(rest.len(), 500);
    assert_eq!(rest[0].id, 1_000);
    assert_eq!(rest[499].id, 1_499);
    assert_eq!(s.usage(&a).await.unwrap().envelopes, 1_500);
}

/// A reader that reads while an insert runs sees each mailbox's envelopes of it as a
/// prefix, in id order: never one before a lower one of the same mailbox. A session's pump
/// moves its cursor past the highest id it read, so a lower id appearing later would be
/// skipped until the next session.
pub async fn a_reader_during_an_insert_sees_no_gaps(s: &impl MailboxStore) {
    const N: u64 = 64;
    for round in 0..10 {
        let (a, b) = (random_mailbox(), random_mailbox());
        let later = in_an_hour();
        let batch: Vec<_> = (0..N)
            .flat_map(|i| {
                [a, b].map(|m| {
                    let mut e = envelope(m, 2 * i + u64::from(m == b), 0, later);
                    e.dedupe_key = (u128::from(i) << 1 | u128::from(m == b)).to_be_bytes();
                    e
                })
            })
            .collect();
        let insert = s.insert(batch);
        let watch = async {
            loop {
                let ids = read_ids(s, &a, None).await;
                assert!(
                    ids.iter().zip(0..).all(|(id, i)| *id == 2 * i),
                    "round {round}: a reader saw {ids:?}"
                );
                if ids.len() as u64 == N {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        let (inserted, ()) = tokio::join!(insert, watch);
        assert!(
            inserted
                .unwrap()
                .iter()
                .all(|o| *o == InsertOutcome::Stored)
        );
        assert_eq!(read_ids(s, &b, None).await.len() as u64, N);
    }
}

/// Envelopes at the relay's default size limit (64 KiB), more of them for one mailbox in
/// one insert than a single database write takes, all come back, in order.
pub async fn a_large_insert_for_one_mailbox_is_stored_whole(s: &impl MailboxStore) {
    let a = random_mailbox();
    let mut batch = numbered(a, 40);
    for e in &mut batch {
        e.ciphertext = bytes::Bytes::from(vec![e.id as u8; 64 * 1024]);
    }
    let outcomes = s.insert(batch).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == InsertOutcome::Stored));
    let stored = s.read(&a, None, 100, now_ms()).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.id).collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>()
    );
    assert!(
        stored
            .iter()
            .all(|e| e.ciphertext.len() == 64 * 1024
                && e.ciphertext.iter().all(|b| *b == e.id as u8))
    );
}

/// Every contract check, one after another.
pub async fn all(s: &impl MailboxStore) {
    accounts(s).await;
    insert_read_ack(s).await;
    expired_envelopes_are_not_read(s).await;
    drained_mailbox_misses_nothing(s).await;
    a_replayed_batch_is_recognised_whole(s).await;
    acknowledgements_out_of_order_hide_nothing(s).await;
    large_backlog_pages_in_order(s).await;
    a_reader_during_an_insert_sees_no_gaps(s).await;
    a_large_insert_for_one_mailbox_is_stored_whole(s).await;
}
