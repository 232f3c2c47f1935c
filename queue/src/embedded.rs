//! The delivery log inside the embedded database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fjall::Keyspace;
use levee_sharding::{EmbeddedStore, MailboxId, ShardId};
use tokio::sync::watch;

use crate::{DeliveryLog, LogConsumer, LogError, LogPosition, LogRecord, LoggedRecord, Skipped};

/// The delivery log in the embedded database (see `levee_sharding::EmbeddedStore`).
///
/// Keyspaces:
/// - `log`: shard ‖ offset → mailbox ‖ payload.
/// - `log_heads`: shard → next offset to assign; written in the same atomic batch as the
///   records, so offsets are never reused even after every record was consumed and deleted.
/// - `log_commits`: group ‖ 0 ‖ shard → next offset to read.
/// - `log_meta`: the shard count, checked at open.
///
/// With a single consumer group (the embedded cluster has one) a record is deleted once that
/// group commits past it.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

struct Inner {
    store: EmbeddedStore,
    records: Keyspace,
    heads: Keyspace,
    commits: Keyspace,
    shards: u32,
    /// Next offset to assign per shard. The lock orders appends within a shard.
    next: Mutex<Vec<u64>>,
    /// Bumped after every durable append; consumers wait on it.
    appended: watch::Sender<u64>,
}

fn record_key(shard: ShardId, offset: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&shard.to_be_bytes());
    key[4..].copy_from_slice(&offset.to_be_bytes());
    key
}

fn commit_key(group: &str, shard: ShardId) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + 5);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

fn read_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

impl EmbeddedLog {
    /// Opens the log in `store` with `shards` partitions.
    ///
    /// The shard count is recorded on first open; opening with a different count fails,
    /// because envelope ids are per-shard offsets and cannot be re-sharded in place.
    pub fn open(store: &EmbeddedStore, shards: u32) -> Result<Self, LogError> {
        if shards == 0 {
            return Err(LogError::Backend(
                "the shard count must be at least 1".into(),
            ));
        }
        let meta = store.keyspace("log_meta")?;
        match meta.get("shards").map_err(backend)? {
            Some(v) => {
                let recorded = read_u64(&v).ok_or(LogError::Backend("corrupt log_meta".into()))?;
                if recorded != u64::from(shards) {
                    return Err(LogError::Backend(format!(
                        "this data directory was created with {recorded} shards, not {shards}; \
                         the shard count cannot change"
                    )));
                }
            }
            None => meta
                .insert("shards", u64::from(shards).to_be_bytes())
                .map_err(backend)?,
        }
        let heads = store.keyspace("log_heads")?;
        let mut next = Vec::with_capacity(shards as usize);
        for shard in 0..shards {
            let head = heads.get(shard.to_be_bytes()).map_err(backend)?;
            next.push(head.as_deref().and_then(read_u64).unwrap_or(0));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                records: store.keyspace("log")?,
                heads,
                commits: store.keyspace("log_commits")?,
                shards,
                next: Mutex::new(next),
                appended: watch::Sender::new(0),
            }),
        })
    }
}

fn backend(e: fjall::Error) -> LogError {
    LogError::Backend(e.to_string())
}

impl Inner {
    fn lock_next(&self) -> MutexGuard<'_, Vec<u64>> {
        // Offsets are only advanced after their batch committed, so a poisoned lock holds
        // consistent values.
        self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_shard(&self, shard: ShardId) -> Result<(), LogError> {
        if shard < self.shards {
            Ok(())
        } else {
            Err(LogError::NoSuchShard {
                shard,
                shards: self.shards,
            })
        }
    }
}

#[async_trait]
impl DeliveryLog for EmbeddedLog {
    fn shards(&self) -> u32 {
        self.inner.shards
    }

    async fn append(&self, records: Vec<LogRecord>) -> Result<Vec<LogPosition>, LogError> {
        for r in &records {
            self.inner.check_shard(r.shard)?;
        }
        let positions = {
            let mut next = self.inner.lock_next();
            let mut batch = self.inner.store.batch();
            let mut positions = Vec::with_capacity(records.len());
            let mut heads = next.clone();
            for r in &records {
                let offset = heads[r.shard as usize];
                heads[r.shard as usize] += 1;
                let mut value = Vec::with_capacity(32 + r.payload.len());
                value.extend_from_slice(r.mailbox.as_bytes());
                value.extend_from_slice(&r.payload);
                batch.insert(
                    &self.inner.records,
                    record_key(r.shard, offset).to_vec(),
                    value,
                );
                positions.push(LogPosition {
                    shard: r.shard,
                    offset,
                });
            }
            // One head per shard the batch touched (not one per record: each insert is a
            // memtable write, and a batch is mostly one shard's records).
            let touched: BTreeSet<ShardId> = records.iter().map(|r| r.shard).collect();
            for shard in touched {
                batch.insert(
                    &self.inner.heads,
                    shard.to_be_bytes().to_vec(),
                    heads[shard as usize].to_be_bytes().to_vec(),
                );
            }
            self.inner.store.commit(batch)?;
            *next = heads;
            positions
        };
        self.inner.store.sync().await?;
        self.inner.appended.send_modify(|n| *n += 1);
        Ok(positions)
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        Ok(Box::new(EmbeddedConsumer {
            log: self.inner.clone(),
            group: group.to_owned(),
            reading: BTreeMap::new(),
            committed: BTreeMap::new(),
            appended: self.inner.appended.subscribe(),
            rotate: 0,
            skipped: Skipped::default(),
        }))
    }
}

struct EmbeddedConsumer {
    log: Arc<Inner>,
    group: String,
    /// Assigned shard → next offset to hand out.
    reading: BTreeMap<ShardId, u64>,
    /// Assigned shard → next offset after the last commit.
    committed: BTreeMap<ShardId, u64>,
    appended: watch::Receiver<u64>,
    /// Where the next poll starts, so a busy low shard cannot starve the others.
    rotate: usize,
    /// Records stepped over since the consumer was made.
    skipped: Skipped,
}

impl EmbeddedConsumer {
    fn committed_offset(&self, shard: ShardId) -> Result<u64, LogError> {
        let value = self
            .log
            .commits
            .get(commit_key(&self.group, shard))
            .map_err(backend)?;
        Ok(value.as_deref().and_then(read_u64).unwrap_or(0))
    }

    fn read_available(&mut self, max: usize) -> Result<Vec<LoggedRecord>, LogError> {
        let heads = self.log.lock_next().clone();
        let shards: Vec<ShardId> = self.reading.keys().copied().collect();
        let mut out = Vec::new();
        if shards.is_empty() {
            return Ok(out);
        }
        let start = self.rotate % shards.len();
        self.rotate = self.rotate.wrapping_add(1);
        for shard in shards[start..].iter().chain(&shards[..start]) {
            let from = self.reading[shard];
            let head = heads[*shard as usize];
            if from >= head || out.len() >= max {
                continue;
            }
            let range = record_key(*shard, from)..record_key(*shard, head);
            for kv in self.log.records.range(range).take(max - out.len()) {
                let (key, value) = kv.into_inner().map_err(backend)?;
                // Keys are written by `record_key`; one that does not hold an offset means
                // the keyspace itself is damaged, and reading on would guess. What was read
                // before it is handed out first (`reading` is past it), the error next time.
                let Some(offset) = key.get(4..).and_then(read_u64) else {
                    if out.is_empty() {
                        return Err(LogError::Corrupt {
                            shard: *shard,
                            offset: self.reading[shard],
                        });
                    }
                    return Ok(out);
                };
                self.reading.insert(*shard, offset + 1);
                // A damaged value is stepped over on its own; the records already in `out`
                // are handed out (`reading` is past them).
                let Some(mailbox) = value.get(..32).and_then(MailboxId::from_slice) else {
                    self.skipped.corrupt += 1;
                    tracing::error!(
                        shard,
                        offset,
                        "delivery log record without a mailbox skipped"
                    );
                    continue;
                };
                out.push(LoggedRecord {
                    position: LogPosition {
                        shard: *shard,
                        offset,
                    },
                    mailbox,
                    payload: Bytes::copy_from_slice(&value[32..]),
                });
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn assign_from(
        &mut self,
        shards: &[ShardId],
        starts: &BTreeMap<ShardId, u64>,
    ) -> Result<(), LogError> {
        let mut reading = BTreeMap::new();
        let mut committed = BTreeMap::new();
        for &shard in shards {
            self.log.check_shard(shard)?;
            let done = match (self.committed.get(&shard), starts.get(&shard)) {
                (Some(&c), _) => c,
                (None, Some(&start)) => start,
                (None, None) => self.committed_offset(shard)?,
            };
            // A shard we keep goes on where it was; uncommitted records already handed out
            // are not handed out twice.
            reading.insert(shard, self.reading.get(&shard).copied().unwrap_or(done));
            committed.insert(shard, done);
        }
        self.reading = reading;
        self.committed = committed;
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LoggedRecord>, LogError> {
        self.appended.borrow_and_update();
        let records = self.read_available(max)?;
        if !records.is_empty() || wait.is_zero() {
            return Ok(records);
        }
        // Appends that landed between the read and now have bumped the watch, so this
        // cannot miss a wake-up.
        if let Ok(Ok(())) = tokio::time::timeout(wait, self.appended.changed()).await {
            return self.read_available(max);
        }
        Ok(Vec::new())
    }

    fn skipped(&self) -> Skipped {
        self.skipped
    }

    fn lag(&self) -> u64 {
        let heads = self.log.lock_next();
        self.committed
            .iter()
            .map(|(shard, done)| heads[*shard as usize].saturating_sub(*done))
            .sum()
    }

    async fn commit(&mut self, done: &[LogPosition]) -> Result<(), LogError> {
        let mut upto = BTreeMap::<ShardId, u64>::new();
        for p in done {
            let e = upto.entry(p.shard).or_insert(0);
            *e = (*e).max(p.offset + 1);
        }
        let mut batch = self.log.store.batch();
        let mut changed = false;
        for (shard, next) in upto {
            let Some(prev) = self.committed.get(&shard).copied() else {
                continue;
            };
            if next <= prev {
                continue;
            }
            batch.insert(
                &self.log.commits,
                commit_key(&self.group, shard),
                next.to_be_bytes().to_vec(),
            );
            for offset in prev..next {
                batch.remove(&self.log.records, record_key(shard, offset).to_vec());
            }
            self.committed.insert(shard, next);
            changed = true;
        }
        if changed {
            // Not synced: a commit lost in a crash only means the records are read and
            // stored again, which the mailbox store recognises as duplicates.
            self.log.store.commit(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(shard: ShardId, n: u8) -> LogRecord {
        LogRecord {
            shard,
            mailbox: MailboxId([n; 32]),
            payload: Bytes::from(vec![n; 3]),
        }
    }

    #[tokio::test]
    async fn append_consume_commit_and_resume() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = EmbeddedStore::open(dir.path()).expect("open");
            let log = EmbeddedLog::open(&store, 4).expect("log");
            let pos = log
                .append(vec![record(1, 1), record(1, 2), record(3, 3)])
                .await
                .expect("append");
            assert_eq!(
                pos.iter().map(|p| (p.shard, p.offset)).collect::<Vec<_>>(),
                vec![(1, 0), (1, 1), (3, 0)]
            );
            let mut c = log.consumer("g").await.expect("consumer");
            c.assign(&[1]).await.expect("assign");
            let got = c.poll(10, Duration::ZERO).await.expect("poll");
            assert_eq!(got.len(), 2);
            assert_eq!(got[1].payload, Bytes::from(vec![2; 3]));
            c.commit(&[got[0].position]).await.expect("commit");
            assert!(
                c.poll(10, Duration::from_millis(10))
                    .await
                    .expect("poll")
                    .is_empty()
            );
            assert!(matches!(
                log.append(vec![record(9, 9)]).await,
                Err(LogError::NoSuchShard { .. })
            ));
        }
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        assert!(
            EmbeddedLog::open(&store, 8).is_err(),
            "shard count is fixed"
        );
        let log = EmbeddedLog::open(&store, 4).expect("log");
        let mut c = log.consumer("g").await.expect("consumer");
        c.assign(&[1, 3]).await.expect("assign");
        let got = c.poll(10, Duration::ZERO).await.expect("poll");
        // Offset 0 of shard 1 was committed; offset 1 and shard 3 come again.
        let mut at: Vec<_> = got
            .iter()
            .map(|r| (r.position.shard, r.position.offset))
            .collect();
        at.sort();
        assert_eq!(at, vec![(1, 1), (3, 0)]);
        assert_eq!(c.lag(), 2, "two read, none committed yet");
        c.commit(&got.iter().map(|r| r.position).collect::<Vec<_>>())
            .await
            .expect("commit");
        assert_eq!(c.lag(), 0);
        // Offsets are not reused after everything was consumed and deleted.
        let pos = log.append(vec![record(1, 4)]).await.expect("append");
        assert_eq!(pos[0].offset, 2);
        // A waiting poll wakes up for a new append.
        let log2 = log.clone();
        let appender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            log2.append(vec![record(3, 5)]).await.expect("append")
        });
        let mut seen = c.poll(10, Duration::from_secs(5)).await.expect("poll");
        if seen.len() < 2 {
            seen.extend(c.poll(10, Duration::from_secs(5)).await.expect("poll"));
        }
        appender.await.expect("join");
        assert_eq!(seen.len(), 2);
    }

    /// A damaged record used to fail the poll that met it, losing the records read before
    /// it in that poll (the consumer had moved past them; a later commit passed them by).
    #[tokio::test]
    async fn a_damaged_record_is_skipped_alone_and_its_neighbours_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let log = EmbeddedLog::open(&store, 1).expect("log");
        log.append(vec![record(0, 1), record(0, 2), record(0, 3)])
            .await
            .expect("append");
        // Offset 1's value loses its mailbox.
        log.inner
            .records
            .insert(record_key(0, 1), b"short".as_slice())
            .expect("damage");
        let mut c = log.consumer("g").await.expect("consumer");
        c.assign(&[0]).await.expect("assign");
        let mut got = Vec::new();
        for _ in 0..3 {
            got.extend(c.poll(10, Duration::ZERO).await.expect("poll"));
        }
        let offsets: Vec<u64> = got.iter().map(|r| r.position.offset).collect();
        assert_eq!(offsets, [0, 2]);
        assert_eq!(
            c.skipped(),
            Skipped {
                corrupt: 1,
                lost: 0
            }
        );
    }
}
