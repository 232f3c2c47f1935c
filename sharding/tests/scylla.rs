//! The mailbox-store contract against a real CQL database: Apache Cassandra started by
//! `scripts/services.sh up` (ScyllaDB speaks the same protocol). `./scripts/test.sh` starts
//! the services and runs these; by hand:
//!
//! ```sh
//! scripts/services.sh up && cargo test -p levee-sharding --test scylla -- --ignored
//! ```
//!
//! `LEVEE_CQL` overrides the address (default 127.0.0.1:19042).
#![allow(clippy::unwrap_used)]

mod contract;

use std::time::Duration;

use levee_sharding::InsertOutcome::Stored;
use levee_sharding::{MailboxStore, MailboxUsage, Replication, ScyllaConfig, ScyllaMailboxStore};

fn config() -> ScyllaConfig {
    ScyllaConfig {
        nodes: vec![std::env::var("LEVEE_CQL").unwrap_or_else(|_| "127.0.0.1:19042".into())],
        keyspace: "levee_test".into(),
        replication: Replication::Simple { factor: 1 },
        ..ScyllaConfig::default()
    }
}

#[tokio::test]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn the_scylla_store_meets_the_contract() {
    let store = ScyllaMailboxStore::connect(&config()).await.unwrap();
    contract::all(&store).await;
    // Connecting again finds the schema in place and the data still there.
    let again = ScyllaMailboxStore::connect(&config()).await.unwrap();
    let a = contract::random_mailbox();
    store
        .insert(vec![contract::envelope(a, 1, 1, contract::in_an_hour())])
        .await
        .unwrap();
    assert_eq!(contract::read_ids(&again, &a, None).await, vec![1]);
}

#[tokio::test]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn envelopes_expire_by_ttl_without_a_sweep() {
    let store = ScyllaMailboxStore::connect(&config()).await.unwrap();
    let a = contract::random_mailbox();
    // Three seconds, not one: Cassandra counts a TTL from the whole second the write landed
    // in, so a 1 s TTL can expire a millisecond after the write, and on a busy CI machine
    // the envelope was gone before the next line counted it (a flake at 9fc6379).
    let soon = contract::now_ms() + 3_000;
    store
        .insert(vec![contract::envelope(a, 1, 1, soon)])
        .await
        .unwrap();
    assert_eq!(store.usage(&a).await.unwrap().envelopes, 1);
    // The row's TTL is what removes it; reading with an old "now" proves the database, not
    // the reader's filter, dropped it.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(store.read(&a, None, 10, 0).await.unwrap(), vec![]);
    assert_eq!(store.usage(&a).await.unwrap(), MailboxUsage::default());
    assert_eq!(store.expire(contract::now_ms(), 100).await.unwrap(), 0);
}

/// The fence a zombie's late write meets without a lease check on the write: a node that
/// lost a shard (paused past the failure timeout) may still have a batch in flight, read
/// "not seen" before the new owner stored the same log records. By the time its write lands
/// the recipient may have acknowledged them. The write carries the envelope's acceptance
/// time as its timestamp and the acknowledgement's tombstone is later, so it stays deleted.
#[tokio::test]
#[ignore = "needs Cassandra: scripts/services.sh up"]
async fn a_late_write_of_an_acknowledged_envelope_stays_deleted() {
    let store = ScyllaMailboxStore::connect(&config()).await.unwrap();
    let a = contract::random_mailbox();
    let e = contract::envelope(a, 1, 1, contract::in_an_hour());
    assert_eq!(store.insert(vec![e.clone()]).await.unwrap(), vec![Stored]);
    assert_eq!(store.ack(&a, &[1]).await.unwrap().deleted, 1);
    // The zombie looked for the dedupe record before the owner wrote it: take it away, so
    // its insert goes through to the write as the zombie's did.
    store
        .session()
        .query_unpaged(
            "DELETE FROM levee_test.dedupe WHERE mailbox = ? AND dedupe_key = ?",
            (a.as_bytes().as_slice(), e.dedupe_key.as_slice()),
        )
        .await
        .unwrap();
    assert_eq!(store.insert(vec![e]).await.unwrap(), vec![Stored]);
    assert_eq!(
        contract::read_ids(&store, &a, None).await,
        Vec::<u64>::new()
    );
    assert_eq!(store.usage(&a).await.unwrap(), MailboxUsage::default());
}

#[tokio::test]
async fn a_bad_configuration_is_refused_before_connecting() {
    for (config, expected) in [
        (
            ScyllaConfig {
                keyspace: "levee; DROP".into(),
                ..ScyllaConfig::default()
            },
            "keyspace",
        ),
        (
            ScyllaConfig {
                replication: Replication::Simple { factor: 0 },
                ..ScyllaConfig::default()
            },
            "replication factor",
        ),
        (
            ScyllaConfig {
                replication: Replication::NetworkTopology {
                    factors: [("eu'x".to_owned(), 3)].into(),
                },
                ..ScyllaConfig::default()
            },
            "data centre",
        ),
        (
            ScyllaConfig {
                nodes: vec![],
                ..ScyllaConfig::default()
            },
            "contact point",
        ),
    ] {
        let error = ScyllaMailboxStore::connect(&config)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(expected), "{error}");
    }
    let statements = levee_sharding::schema(&ScyllaConfig {
        replication: Replication::NetworkTopology {
            factors: [("eu-west".to_owned(), 3), ("us-east".to_owned(), 2)].into(),
        },
        ..ScyllaConfig::default()
    })
    .unwrap();
    assert!(
        statements[0].contains("'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us-east': 2"),
        "{}",
        statements[0]
    );
    assert!(
        statements
            .iter()
            .any(|s| s.contains("TimeWindowCompactionStrategy"))
    );
}
