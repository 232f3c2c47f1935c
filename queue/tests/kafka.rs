//! The Kafka delivery log against a real broker, started by `scripts/services.sh up`.
//! `./scripts/test.sh` starts the services and runs these; by hand:
//! `scripts/services.sh up && cargo test -p levee-queue --test kafka -- --ignored`
//! (`LEVEE_KAFKA` overrides the broker address, default 127.0.0.1:19092).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use levee_queue::{
    DeliveryLog, KafkaConfig, KafkaLog, LogConsumer, LogPosition, LogRecord, LoggedRecord, Skipped,
};
use levee_sharding::MailboxId;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// One test at a time: one of them restarts the broker, which the others must not see.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: std::env::var("LEVEE_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into()),
        topic: topic.into(),
        ..KafkaConfig::default()
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos}")
}

fn record(shard: u32, n: u8) -> LogRecord {
    LogRecord {
        shard,
        mailbox: MailboxId([n; 32]),
        payload: Bytes::from(vec![n; 10]),
    }
}

fn at(shard: u32, offset: u64) -> LogPosition {
    LogPosition { shard, offset }
}

/// Polls until `n` records came (each poll must bring some); returns them in log order.
async fn poll_until(c: &mut dyn LogConsumer, n: usize) -> Vec<LoggedRecord> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = c.poll(100, Duration::from_secs(10)).await.unwrap();
        assert!(!batch.is_empty(), "records arrive");
        got.extend(batch);
    }
    got.sort_by_key(|r| r.position);
    got
}

#[tokio::test]
#[ignore = "needs Kafka: scripts/services.sh up"]
async fn append_consume_commit_resume_and_reassign() {
    let _serial = SERIAL.lock().await;
    let topic = unique("levee-test");
    let log = KafkaLog::open(config(&topic), 4).await.unwrap();
    // Opening again finds the topic and agrees with it; another shard count is refused.
    KafkaLog::open(config(&topic), 4).await.unwrap();
    assert!(KafkaLog::open(config(&topic), 8).await.is_err());

    let positions = log
        .append(vec![record(0, 1), record(1, 2), record(1, 3), record(3, 4)])
        .await
        .unwrap();
    assert_eq!(positions, [at(0, 0), at(1, 0), at(1, 1), at(3, 0),]);
    assert!(log.append(vec![record(4, 5)]).await.is_err(), "no shard 4");

    let mut c = log.consumer("delivery").await.unwrap();
    c.assign(&[0, 1, 2, 3]).await.unwrap();
    let got = poll_until(c.as_mut(), 4).await;
    assert_eq!(got[2].mailbox, MailboxId([3; 32]));
    assert_eq!(got[2].payload, Bytes::from(vec![3u8; 10]));
    assert!(
        c.poll(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
    // Commit shard 0 and the first record of shard 1 only.
    c.commit(&[got[0].position, got[1].position]).await.unwrap();
    drop(c);

    // A new consumer of the group (a restart, or a new owner) resumes after the commits.
    let mut again = log.consumer("delivery").await.unwrap();
    again.assign(&[1, 3]).await.unwrap();
    let rest = poll_until(again.as_mut(), 2).await;
    let positions: Vec<LogPosition> = rest.iter().map(|r| r.position).collect();
    assert_eq!(positions, [at(1, 1), at(3, 0),]);
    // Lag: two records read but not committed (watermarks are re-read every 2 s).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let _ = again.poll(1, Duration::from_millis(100)).await.unwrap();
    assert_eq!(again.lag(), 2);
    again.commit(&positions).await.unwrap();
    assert_eq!(again.lag(), 0);
    // Another group starts from the beginning.
    let mut other = log.consumer("audit").await.unwrap();
    other.assign(&[1]).await.unwrap();
    let first = other.poll(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(first[0].position, at(1, 0));
}

/// A chaos drill found this: with the watermark refresh on the consumer's own connection,
/// each of its per-shard requests waited behind a long-poll fetch (500 ms when the shards
/// are quiet), so once traffic stopped one `poll` took tens of seconds and the last
/// envelopes sat undelivered. Liveness, not speed: the bound is far above a working poll
/// and far below a stuck one (128 × 0.5 s).
#[tokio::test]
#[ignore = "needs Kafka: scripts/services.sh up"]
async fn a_poll_on_many_quiet_shards_is_not_held_up_by_the_watermark_refresh() {
    let _serial = SERIAL.lock().await;
    let topic = unique("levee-test");
    let shards = 128;
    let log = KafkaLog::open(config(&topic), shards).await.unwrap();
    let mut c = log.consumer("delivery").await.unwrap();
    c.assign(&(0..shards).collect::<Vec<_>>()).await.unwrap();
    // Quiet: every fetch is a long poll that waits out `fetch.wait.max.ms`.
    assert!(c.poll(10, Duration::from_secs(1)).await.unwrap().is_empty());
    // A watermark refresh is due at the next poll; a record arrives meanwhile.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    log.append(vec![record(shards - 1, 7)]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), c.poll(10, Duration::from_secs(10)))
        .await
        .expect("the poll is not stuck behind the watermark refresh")
        .unwrap();
    assert_eq!(got.len(), 1);
}

/// Runs `scripts/services.sh ARGS` (a fault on the broker the script started).
fn services(args: &[&str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    let status = std::process::Command::new(script)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/services.sh {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: scripts/services.sh up; restarts the broker"]
async fn consumption_resumes_after_a_broker_restart() {
    let _serial = SERIAL.lock().await;
    const SHARDS: u32 = 16;
    // The consumer says when it has to rebuild itself; show that if the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let topic = unique("levee-restart");
    let log = KafkaLog::open(config(&topic), SHARDS).await.unwrap();
    let mut consumer = log.consumer(&unique("group")).await.unwrap();
    let all: Vec<u32> = (0..SHARDS).collect();
    consumer.assign(&all).await.unwrap();
    let before: Vec<LogRecord> = all.iter().map(|s| record(*s, 1)).collect();
    log.append(before).await.unwrap();
    let got = poll_until(consumer.as_mut(), SHARDS as usize).await;
    consumer
        .commit(&got.iter().map(|r| r.position).collect::<Vec<_>>())
        .await
        .unwrap();

    tokio::task::spawn_blocking(|| services(&["restart", "kafka"]))
        .await
        .unwrap();

    // Appends may fail while the producer reconnects; the client would retry, so do we.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let after: Vec<LogRecord> = all.iter().map(|s| record(*s, 2)).collect();
        match log.append(after).await {
            Ok(_) => break,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "append after restart: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every shard delivers its second record, errors on the way notwithstanding.
    let mut second = std::collections::BTreeSet::new();
    while second.len() < SHARDS as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "shards still silent after the restart: {:?}",
            all.iter()
                .filter(|s| !second.contains(*s))
                .collect::<Vec<_>>()
        );
        match consumer.poll(100, Duration::from_millis(500)).await {
            Ok(batch) => second.extend(
                batch
                    .iter()
                    .filter(|r| r.position.offset >= 1)
                    .map(|r| r.position.shard),
            ),
            // Errors while the broker is away are expected; what matters is that they end.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls until a record of `position`'s shard at or past its offset came, tolerating errors (the old consumer
/// failed the poll that met a bad record); returns every record handed out, in log order.
async fn poll_past(c: &mut dyn LogConsumer, position: LogPosition) -> Vec<LoggedRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut got: Vec<LoggedRecord> = Vec::new();
    while !got
        .iter()
        .any(|r| r.position.shard == position.shard && r.position.offset >= position.offset)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no record at {position:?} yet"
        );
        if let Ok(batch) = c.poll(100, Duration::from_secs(1)).await {
            got.extend(batch);
        }
    }
    got.sort_by_key(|r| r.position);
    got
}

/// A record that is not Levee's (no mailbox key) used to fail the poll that met it, and the
/// records collected before it in that poll were dropped although the consumer had moved
/// past them: a later commit skipped them, and acknowledged envelopes were lost.
#[tokio::test]
#[ignore = "needs Kafka: scripts/services.sh up"]
async fn a_record_without_a_key_is_skipped_alone_and_its_neighbours_delivered() {
    let _serial = SERIAL.lock().await;
    let topic = unique("levee-corrupt");
    let log = KafkaLog::open(config(&topic), 1).await.unwrap();
    log.append(vec![record(0, 1), record(0, 2)]).await.unwrap();
    let stranger: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", config(&topic).brokers)
        .create()
        .unwrap();
    stranger
        .send(
            FutureRecord::<[u8], [u8]>::to(&topic)
                .partition(0)
                .payload(b"no key".as_slice()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    log.append(vec![record(0, 3)]).await.unwrap();

    let mut c = log.consumer(&unique("group")).await.unwrap();
    c.assign(&[0]).await.unwrap();
    let got = poll_past(c.as_mut(), at(0, 3)).await;
    let offsets: Vec<u64> = got.iter().map(|r| r.position.offset).collect();
    assert_eq!(
        offsets,
        [0, 1, 3],
        "every record of ours, the stranger's skipped"
    );
    assert_eq!(
        c.skipped(),
        Skipped {
            corrupt: 1,
            lost: 0
        }
    );
}

/// Records deleted before they were delivered (retention; here by DeleteRecords, which
/// moves the partition's start the same way) are lost: the consumer used to jump to the
/// earliest record it could find and say nothing. Now it counts them.
#[tokio::test]
#[ignore = "needs Kafka: scripts/services.sh up"]
async fn records_deleted_before_delivery_are_counted_as_lost() {
    let _serial = SERIAL.lock().await;
    let topic = unique("levee-retention");
    let log = KafkaLog::open(config(&topic), 2).await.unwrap();
    let written: Vec<LogRecord> = (1..=5).map(|n| record(0, n)).collect();
    log.append(written).await.unwrap();
    log.append(vec![record(1, 9)]).await.unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", config(&topic).brokers)
        .create()
        .unwrap();
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&topic, 0, Offset::Offset(3))
        .unwrap();
    let deleted = admin
        .delete_records(&upto, &AdminOptions::new())
        .await
        .unwrap();
    let low = deleted.find_partition(&topic, 0).unwrap();
    assert!(low.error().is_ok(), "delete records: {:?}", low.error());
    assert_eq!(
        low.offset(),
        Offset::Offset(3),
        "the partition now starts at 3"
    );

    let mut c = log.consumer(&unique("group")).await.unwrap();
    c.assign(&[0, 1]).await.unwrap();
    let got = poll_past(c.as_mut(), at(0, 4)).await;
    let offsets: Vec<(u32, u64)> = got
        .iter()
        .map(|r| (r.position.shard, r.position.offset))
        .collect();
    assert!(
        offsets.contains(&(1, 0)),
        "the untouched shard delivers: {offsets:?}"
    );
    assert!(
        !offsets.contains(&(0, 0)),
        "deleted records are not read: {offsets:?}"
    );
    assert_eq!(
        c.skipped(),
        Skipped {
            corrupt: 0,
            lost: 3
        },
        "offsets 0-2 of shard 0: {offsets:?}"
    );
}

/// The topic Levee creates keeps records for the configured time.
#[tokio::test]
#[ignore = "needs Kafka: scripts/services.sh up"]
async fn a_created_topic_has_the_configured_retention() {
    let _serial = SERIAL.lock().await;
    let topic = unique("levee-retention-config");
    let mut cfg = config(&topic);
    cfg.retention_ms = 3_600_000;
    KafkaLog::open(cfg.clone(), 1).await.unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
        .unwrap();
    let described = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(&topic)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    let retention = resource.get("retention.ms").and_then(|e| e.value.clone());
    assert_eq!(retention.as_deref(), Some("3600000"));
    cfg.retention_ms = 0;
    assert!(KafkaLog::open(cfg, 1).await.is_err(), "0 is refused");
}

/// The relay's shard leases keep positions of their own: a shard newly assigned with a
/// start begins there, not at the group's commit; a shard kept goes on where it was.
/// Assignments then change often, a few shards at a time (incrementally: see
/// `assign_from`); here they change 200 times as fast as the consumer takes them, and every
/// record still arrives. (The librdkafka abort that whole re-assignments caused in the
/// drills is not reproduced here: this test passed 3 of 3 runs with them too.)
#[tokio::test]
#[ignore = "needs Kafka: scripts/services.sh up"]
async fn assignments_from_given_starts_and_in_quick_succession() {
    let _serial = SERIAL.lock().await;
    let topic = unique("levee-test-starts");
    let log = KafkaLog::open(config(&topic), 4).await.unwrap();
    let batch: Vec<LogRecord> = (0..5).map(|n| record(0, n)).chain([record(2, 9)]).collect();
    log.append(batch).await.unwrap();

    let mut c = log.consumer("delivery").await.unwrap();
    let starts = std::collections::BTreeMap::from([(0, 3)]);
    c.assign_from(&[0, 2], &starts).await.unwrap();
    let got = poll_until(c.as_mut(), 3).await;
    let mut positions: Vec<LogPosition> = got.iter().map(|r| r.position).collect();
    positions.sort();
    assert_eq!(positions, [at(0, 3), at(0, 4), at(2, 0)]);
    // Kept: a start given again for shard 0 is ignored (records handed out stay handed out).
    c.assign_from(&[0, 2, 3], &std::collections::BTreeMap::from([(0, 0)]))
        .await
        .unwrap();
    assert!(
        c.poll(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );

    // Churn: shards 1 and 3 come and go while records keep arriving on shard 1.
    let mut churn = log.consumer("churn").await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..200u32 {
        if round % 10 == 0 {
            log.append(vec![record(1, (round / 10) as u8)])
                .await
                .unwrap();
        }
        let shards: &[u32] = if round % 2 == 0 { &[0, 1, 3] } else { &[0, 1] };
        churn.assign(shards).await.unwrap();
        for r in churn.poll(100, Duration::from_millis(5)).await.unwrap() {
            seen.insert(r.position);
        }
    }
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while seen.iter().filter(|p| p.shard == 1).count() < 20 && std::time::Instant::now() < until {
        for r in churn.poll(100, Duration::from_millis(200)).await.unwrap() {
            seen.insert(r.position);
        }
    }
    let shard1: Vec<u64> = seen
        .iter()
        .filter(|p| p.shard == 1)
        .map(|p| p.offset)
        .collect();
    assert_eq!(shard1, (0..20).collect::<Vec<_>>());
}
