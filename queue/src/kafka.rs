//! The delivery log in Apache Kafka: one topic, one partition per shard.
//!
//! - Appends go through an idempotent producer (`enable.idempotence=true`, `acks=all`) to
//!   the recipient's shard's partition; `append` returns only after Kafka's delivery report,
//!   so an envelope is acknowledged to its sender only once the broker has it.
//! - Consumers assign partitions by hand (placement decides who delivers a shard, not
//!   Kafka's group protocol) and commit offsets to the consumer group only when the caller
//!   says the records are stored, so a restart or a new owner resumes after the last
//!   committed record.
//! - Records are not deleted on commit: the topic's retention removes them. Retention is
//!   set from [`KafkaConfig::retention_ms`] when the topic is created; an existing topic
//!   whose retention differs is reported at start, not changed (it is the operator's).
//! - Nothing is skipped silently. A record that is not Levee's (no valid key) is reported
//!   and stepped over on its own, and the records around it are handed out as usual. A
//!   consumer that finds its next record gone (retention deleted it before it was
//!   delivered, or the group's committed offset expired) counts the records it lost, in
//!   [`LogConsumer::skipped`], and logs an error: that is data loss, and an operator must
//!   hear of it.
//! - A consumer with records waiting that receives none for [`STALL_LIMIT`] is rebuilt and
//!   re-assigned where it was. librdkafka's manually assigned consumers sometimes stop
//!   fetching for good after a broker restart (confluentinc/librdkafka#5153,
//!   fede1024/rust-rdkafka#597); our broker-restart test hit it on most partitions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use levee_sharding::{MailboxId, ShardId};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::KafkaConfig;
use crate::{DeliveryLog, LogConsumer, LogError, LogPosition, LogRecord, LoggedRecord, Skipped};

/// Longest a broker request made while opening or assigning may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times opening reads a topic's metadata before trusting "no partitions" (every
/// 250 ms: 10 s).
const METADATA_ATTEMPTS: u32 = 40;
/// How often a consumer re-reads the partitions' high watermarks for its lag estimate.
const WATERMARK_REFRESH: Duration = Duration::from_secs(2);
/// How long a consumer may see records waiting (by the watermarks) without receiving one
/// before it is presumed stuck and rebuilt. Several watermark refreshes, so a consumer that
/// is merely catching up after a pause is never mistaken for a stuck one.
const STALL_LIMIT: Duration = Duration::from_secs(10);

fn backend(e: KafkaError) -> LogError {
    LogError::Backend(format!("kafka: {e}"))
}

/// The delivery log in Kafka; see the module docs.
#[derive(Clone)]
pub struct KafkaLog {
    config: KafkaConfig,
    shards: u32,
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("config", &self.config)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Connects, creates the topic with one partition per shard if it is missing, and
    /// checks that an existing topic has exactly `shards` partitions.
    pub async fn open(config: KafkaConfig, shards: u32) -> Result<Self, LogError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .create()
            .map_err(backend)?;
        if config.retention_ms == 0 || config.retention_ms > i64::MAX as u64 {
            return Err(LogError::Backend(format!(
                "kafka: retention_ms must be between 1 and {}",
                i64::MAX
            )));
        }
        let retention = config.retention_ms.to_string();
        let topic = NewTopic::new(
            &config.topic,
            shards as i32,
            TopicReplication::Fixed(config.replication),
        )
        .set("retention.ms", &retention);
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let mut existed = false;
        for result in admin
            .create_topics([&topic], &options)
            .await
            .map_err(backend)?
        {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => existed = true,
                Err((t, code)) => {
                    return Err(LogError::Backend(format!(
                        "kafka: cannot create topic {t}: {code}"
                    )));
                }
            }
        }
        if existed {
            report_retention(&admin, &config, &options).await;
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            // Under the client's 30 s request timeout (levee-client's default), so that a
            // send stuck in the producer (a broker paused or restarting) is answered with
            // the node's retryable UNAVAILABLE before the client stops waiting; at 30 s the
            // two raced and the client saw only silence.
            .set("message.timeout.ms", "20000")
            .create()
            .map_err(backend)?;
        // A topic just created (or a broker just restarted) may show no partitions in the
        // metadata for a moment; ask again for a while before calling it a mismatch.
        let mut attempts = 0;
        let partitions = loop {
            let producer = producer.clone();
            let topic = config.topic.clone();
            let partitions = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), ADMIN_TIMEOUT)
                    .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
            })
            .await
            .map_err(|e| LogError::Backend(format!("metadata task: {e}")))?
            .map_err(backend)?;
            attempts += 1;
            if partitions > 0 || attempts >= METADATA_ATTEMPTS {
                break partitions;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if partitions != shards as usize {
            return Err(LogError::Backend(format!(
                "kafka topic {} has {partitions} partitions but the configuration says {shards} shards",
                config.topic
            )));
        }
        Ok(Self {
            config,
            shards,
            producer,
        })
    }
}

/// Says so if an existing topic keeps records for another time than the configuration asks:
/// shorter risks losing undelivered records, and Levee does not change an operator's topic.
async fn report_retention(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
    options: &AdminOptions,
) {
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&config.topic)], options)
        .await;
    let actual = described.ok().and_then(|results| {
        let resource = results.into_iter().next()?.ok()?;
        resource
            .get("retention.ms")?
            .value
            .as_deref()?
            .parse::<i64>()
            .ok()
    });
    match actual {
        Some(ms) if ms == config.retention_ms as i64 => {}
        Some(ms) => tracing::warn!(
            topic = config.topic,
            topic_retention_ms = ms,
            configured_retention_ms = config.retention_ms,
            "the delivery topic's retention differs from the configuration; records not \
             delivered within the topic's retention are lost (kafka-configs.sh --alter sets it)"
        ),
        None => tracing::warn!(
            topic = config.topic,
            "cannot read the delivery topic's retention.ms"
        ),
    }
}

#[async_trait]
impl DeliveryLog for KafkaLog {
    fn shards(&self) -> u32 {
        self.shards
    }

    async fn append(&self, records: Vec<LogRecord>) -> Result<Vec<LogPosition>, LogError> {
        // Hand every record to the producer first, then wait for the reports, so a batch
        // costs one round trip rather than one per record.
        let mut reports = Vec::with_capacity(records.len());
        for r in &records {
            if r.shard >= self.shards {
                return Err(LogError::NoSuchShard {
                    shard: r.shard,
                    shards: self.shards,
                });
            }
            let record = FutureRecord::to(&self.config.topic)
                .partition(r.shard as i32)
                .key(r.mailbox.as_bytes().as_slice())
                .payload(r.payload.as_ref());
            let report = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| backend(e))?;
            reports.push(report);
        }
        let mut positions = Vec::with_capacity(reports.len());
        for report in reports {
            let delivery = report
                .await
                .map_err(|_| LogError::Backend("kafka: producer went away".into()))?
                .map_err(|(e, _)| backend(e))?;
            positions.push(LogPosition {
                shard: delivery.partition as ShardId,
                offset: delivery.offset as u64,
            });
        }
        Ok(positions)
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let config = consumer_config(&self.config.brokers, group);
        let consumer: StreamConsumer = config.create().map_err(backend)?;
        Ok(Box::new(KafkaConsumer {
            config,
            consumer: Arc::new(consumer),
            watermarks: self.producer.clone(),
            topic: self.config.topic.clone(),
            shards: self.shards,
            next: BTreeMap::new(),
            committed: BTreeMap::new(),
            high: BTreeMap::new(),
            high_read: None,
            stalled_since: None,
            skipped: Skipped::default(),
        }))
    }
}

/// A delivery consumer: offsets stored and committed only when the caller says so.
fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    config
}

struct KafkaConsumer {
    /// How `consumer` was made, to make another if it gets stuck.
    config: ClientConfig,
    consumer: Arc<StreamConsumer>,
    /// Reads the high watermarks. Not `consumer`: its broker connection carries long-poll
    /// fetches, and the broker answers one request per connection at a time, so every
    /// ListOffsets would wait out a fetch (`fetch.wait.max.ms`, 500 ms on quiet partitions)
    /// — one per assigned shard, tens of seconds per refresh, all inside `poll`.
    watermarks: FutureProducer,
    topic: String,
    shards: u32,
    /// Assigned shard → next offset to hand out.
    next: BTreeMap<ShardId, u64>,
    /// Assigned shard → next offset after the last commit (for lag).
    committed: BTreeMap<ShardId, u64>,
    /// Assigned shard → its high watermark when last read, and when that was.
    high: BTreeMap<ShardId, u64>,
    high_read: Option<std::time::Instant>,
    /// Since when every `poll` has come back empty-handed although records were waiting,
    /// or with an error; `None` while the consumer makes progress or has nothing to do.
    stalled_since: Option<std::time::Instant>,
    /// Records stepped over since the consumer was made.
    skipped: Skipped,
}

impl KafkaConsumer {
    /// Re-reads the high watermarks every [`WATERMARK_REFRESH`], for [`lag`](LogConsumer::lag).
    async fn refresh_watermarks(&mut self) {
        if self
            .high_read
            .is_some_and(|t| t.elapsed() < WATERMARK_REFRESH)
        {
            return;
        }
        self.high_read = Some(std::time::Instant::now());
        let (client, topic) = (self.watermarks.clone(), self.topic.clone());
        let shards: Vec<ShardId> = self.next.keys().copied().collect();
        let read = tokio::task::spawn_blocking(move || {
            let mut high = BTreeMap::new();
            for s in shards {
                // A broker that does not answer for one partition will not for the next:
                // stop rather than wait out every timeout.
                match client
                    .client()
                    .fetch_watermarks(&topic, s as i32, Duration::from_secs(1))
                {
                    Ok((_, h)) => high.insert(s, h.max(0) as u64),
                    Err(_) => break,
                };
            }
            high
        })
        .await;
        // Keep the last known marks of partitions that did not answer: a watermark only
        // grows, so an old one understates what is waiting, never overstates it.
        if let Ok(high) = read {
            self.high.extend(high);
        }
        self.high.retain(|s, _| self.next.contains_key(s));
    }

    /// Records waiting in the assigned partitions, by the last watermarks read.
    fn waiting(&self) -> u64 {
        self.next
            .iter()
            .map(|(s, n)| self.high.get(s).map_or(0, |h| h.saturating_sub(*n)))
            .sum()
    }

    /// Points the consumer at `self.next`: every assigned shard resumes at the next record
    /// not yet handed out.
    fn assign_at_next(&self) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        for (s, n) in &self.next {
            tpl.add_partition_offset(&self.topic, *s as i32, Offset::Offset(*n as i64))
                .map_err(backend)?;
        }
        self.consumer.assign(&tpl).map_err(backend)
    }

    /// Replaces a consumer that has made no progress for [`STALL_LIMIT`] although records
    /// were waiting (see the module docs), resuming where it was.
    async fn unstick(&mut self) -> Result<(), LogError> {
        if self.stalled_since.is_none_or(|t| t.elapsed() < STALL_LIMIT) {
            return Ok(());
        }
        tracing::warn!(
            waiting = self.waiting(),
            "kafka consumer made no progress for {STALL_LIMIT:?}; rebuilding it"
        );
        let fresh = Arc::new(self.config.create().map_err(backend)?);
        let old = std::mem::replace(&mut self.consumer, fresh);
        // Closing a consumer may wait on a broker that is not answering.
        drop(tokio::task::spawn_blocking(move || drop(old)));
        self.stalled_since = None;
        self.high_read = None;
        self.assign_at_next()
    }

    /// Takes up to `max` records, waiting at most `wait` for the first.
    ///
    /// Cancel-safe: it awaits only while it holds no record. After the first, it takes only
    /// what has already arrived, without suspending, so a caller that drops `poll` (the
    /// delivery worker does on a placement change) never drops records whose offsets
    /// `next` has already moved past.
    async fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<LoggedRecord>, LogError> {
        let mut out = Vec::new();
        while out.len() < max {
            let received = if out.is_empty() {
                match tokio::time::timeout(wait, self.consumer.recv()).await {
                    Err(_) => break,
                    Ok(r) => r,
                }
            } else {
                tokio::select! {
                    biased;
                    r = self.consumer.recv() => r,
                    () = std::future::ready(()) => break,
                }
            };
            let message = match received {
                Err(e) if out.is_empty() => return Err(backend(e)),
                // Hand over what came; the error (if it persists) shows on the next poll.
                Err(_) => break,
                Ok(m) => m,
            };
            let shard = message.partition() as ShardId;
            let offset = message.offset() as u64;
            let expected = self.next.insert(shard, offset + 1);
            // Offsets of a partition without transactions are consecutive: a record that
            // is further on than the next one means the ones between are gone from the log
            // (retention, or an expired group offset reset to the earliest record).
            if let Some(expected) = expected.filter(|e| offset > *e) {
                self.skipped.lost += offset - expected;
                tracing::error!(
                    shard,
                    from = expected,
                    to = offset,
                    "delivery log records deleted before they were delivered (retention); \
                     they are lost"
                );
            }
            // A record that is not ours is stepped over on its own: the records already in
            // `out` are handed out, since `next` is past them and nothing re-reads them.
            let Some(mailbox) = message.key().and_then(MailboxId::from_slice) else {
                self.skipped.corrupt += 1;
                tracing::error!(
                    shard,
                    offset,
                    "delivery log record without a mailbox key skipped"
                );
                continue;
            };
            out.push(LoggedRecord {
                position: LogPosition { shard, offset },
                mailbox,
                payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            });
        }
        Ok(out)
    }

    /// The group's committed offsets for `shards` (0 where none).
    async fn committed_offsets(&self, shards: &[ShardId]) -> Result<Vec<u64>, LogError> {
        let mut tpl = TopicPartitionList::new();
        for s in shards {
            tpl.add_partition(&self.topic, *s as i32);
        }
        // The group coordinator may still be loading (right after the broker started, or
        // when the offsets topic is first created): that passes, so try again for a while.
        let mut attempt = 0;
        let committed = loop {
            let (consumer, tpl) = (self.consumer.clone(), tpl.clone());
            let read =
                tokio::task::spawn_blocking(move || consumer.committed_offsets(tpl, ADMIN_TIMEOUT))
                    .await
                    .map_err(|e| LogError::Backend(format!("offsets task: {e}")))?;
            match read {
                Ok(committed) => break committed,
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "committed offsets not readable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(backend(e)),
            }
        };
        Ok(shards
            .iter()
            .map(|s| {
                match committed
                    .find_partition(&self.topic, *s as i32)
                    .map(|p| p.offset())
                {
                    Some(Offset::Offset(o)) if o >= 0 => o as u64,
                    _ => 0,
                }
            })
            .collect())
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    /// Changes the assignment incrementally: only the shards that leave are stopped and
    /// only those that come are started. A whole `assign()` stops and restarts every
    /// partition, and two of them in quick succession can abort the process inside
    /// librdkafka 2.12 (`rd_kafka_assignment_partition_stopped: Assertion
    /// rktp->rktp_started failed`, a duplicate stop of one partition: librdkafka issue
    /// 5573), which the relay's delivery worker hit when its shard leases came and went a
    /// few at a time.
    async fn assign_from(
        &mut self,
        shards: &[ShardId],
        starts: &BTreeMap<ShardId, u64>,
    ) -> Result<(), LogError> {
        if let Some(s) = shards.iter().find(|s| **s >= self.shards) {
            return Err(LogError::NoSuchShard {
                shard: *s,
                shards: self.shards,
            });
        }
        let new: Vec<ShardId> = shards
            .iter()
            .filter(|s| !self.next.contains_key(s))
            .copied()
            .collect();
        let from_group: Vec<ShardId> = new
            .iter()
            .filter(|s| !starts.contains_key(s))
            .copied()
            .collect();
        let group = if from_group.is_empty() {
            Vec::new()
        } else {
            self.committed_offsets(&from_group).await?
        };
        let gone: Vec<ShardId> = self
            .next
            .keys()
            .filter(|s| !shards.contains(s))
            .copied()
            .collect();
        if !gone.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for s in &gone {
                tpl.add_partition(&self.topic, *s as i32);
            }
            self.consumer.incremental_unassign(&tpl).map_err(backend)?;
            for s in &gone {
                self.next.remove(s);
                self.committed.remove(s);
                self.high.remove(s);
            }
        }
        if !new.is_empty() {
            let mut tpl = TopicPartitionList::new();
            let mut positions = Vec::with_capacity(new.len());
            for s in &new {
                let start = match starts.get(s) {
                    Some(start) => *start,
                    None => {
                        let i = from_group.iter().position(|x| x == s).unwrap_or(0);
                        group.get(i).copied().unwrap_or(0)
                    }
                };
                tpl.add_partition_offset(&self.topic, *s as i32, Offset::Offset(start as i64))
                    .map_err(backend)?;
                positions.push((*s, start));
            }
            self.consumer.incremental_assign(&tpl).map_err(backend)?;
            // A shard kept goes on where it was; records already handed out are not handed
            // out again.
            for (s, start) in positions {
                self.next.insert(s, start);
                self.committed.insert(s, start);
            }
        }
        self.stalled_since = None;
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LoggedRecord>, LogError> {
        self.refresh_watermarks().await;
        self.unstick().await?;
        if self.next.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let received = self.receive(max, wait).await;
        match &received {
            Ok(records) if !records.is_empty() || self.waiting() == 0 => self.stalled_since = None,
            _ => {
                self.stalled_since
                    .get_or_insert_with(std::time::Instant::now);
            }
        }
        received
    }

    async fn commit(&mut self, done: &[LogPosition]) -> Result<(), LogError> {
        let mut upto = BTreeMap::<ShardId, u64>::new();
        for p in done {
            let e = upto.entry(p.shard).or_insert(0);
            *e = (*e).max(p.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (shard, next) in &upto {
            if self.committed.get(shard).is_some_and(|c| next > c) {
                tpl.add_partition_offset(&self.topic, *shard as i32, Offset::Offset(*next as i64))
                    .map_err(backend)?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| LogError::Backend(format!("commit task: {e}")))?
            .map_err(backend)?;
        for (shard, next) in upto {
            if let Some(c) = self.committed.get_mut(&shard) {
                *c = (*c).max(next);
            }
        }
        Ok(())
    }

    fn skipped(&self) -> Skipped {
        self.skipped
    }

    fn lag(&self) -> u64 {
        // From the watermarks read at most a refresh period ago: an estimate is enough for
        // a health signal, and lag() must not wait on the broker.
        self.committed
            .iter()
            .map(|(s, c)| self.high.get(s).map_or(0, |h| h.saturating_sub(*c)))
            .sum()
    }
}
