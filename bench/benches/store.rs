//! Which embedded engine suits a mailbox: fjall (LSM tree, write-ahead journal) against redb
//! (copy-on-write B-tree), side by side on the mailbox workload.
//!
//! Keys are laid out as Levee lays them out (mailbox id ‖ big-endian envelope id) and every
//! write is made durable (fsync) before it counts, as Levee does before acknowledging.
//!
//! Run: `cargo bench -p levee-bench --bench store`

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use redb::ReadableDatabase;

const MAILBOXES: u64 = 100;
const BATCH: u64 = 64;
const ENVELOPE: usize = 256;

fn key(mailbox: u64, id: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&mailbox.to_be_bytes());
    k[32..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The operations a mailbox needs, each durable on return where it writes.
trait Engine {
    fn name(&self) -> &'static str;
    fn append(&mut self, rows: &[([u8; 40], &[u8])]);
    /// Reads one mailbox oldest first from envelope id `from`; returns how many it saw.
    fn read_from(&self, mailbox: u64, from: u64) -> usize;
    fn delete(&mut self, keys: &[[u8; 40]]);
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .open()
            .expect("open fjall");
        let ks = db
            .keyspace("mailboxes", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        Self { db, ks }
    }
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn append(&mut self, rows: &[([u8; 40], &[u8])]) {
        let mut batch = self.db.batch();
        for (k, v) in rows {
            batch.insert(&self.ks, k.to_vec(), v.to_vec());
        }
        batch.commit().expect("commit");
        self.db
            .persist(fjall::PersistMode::SyncData)
            .expect("fsync");
    }

    fn read_from(&self, mailbox: u64, from: u64) -> usize {
        let mut n = 0;
        for kv in self.ks.range(key(mailbox, from)..=key(mailbox, u64::MAX)) {
            black_box(kv.into_inner().expect("read"));
            n += 1;
        }
        n
    }

    fn delete(&mut self, keys: &[[u8; 40]]) {
        let mut batch = self.db.batch();
        for k in keys {
            batch.remove(&self.ks, k.to_vec());
        }
        batch.commit().expect("commit");
        self.db
            .persist(fjall::PersistMode::SyncData)
            .expect("fsync");
    }
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("mailboxes");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Self {
        Self {
            db: redb::Database::create(dir.join("db.redb")).expect("open redb"),
        }
    }
}

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn append(&mut self, rows: &[([u8; 40], &[u8])]) {
        // The default durability is Immediate: commit returns after fsync.
        let tx = self.db.begin_write().expect("begin");
        {
            let mut t = tx.open_table(TABLE).expect("table");
            for (k, v) in rows {
                t.insert(k.as_slice(), *v).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn read_from(&self, mailbox: u64, from: u64) -> usize {
        let tx = self.db.begin_read().expect("begin");
        let t = tx.open_table(TABLE).expect("table");
        let (from, to) = (key(mailbox, from), key(mailbox, u64::MAX));
        let mut n = 0;
        for kv in t.range(from.as_slice()..=to.as_slice()).expect("range") {
            let (k, v) = kv.expect("read");
            black_box((k.value().len(), v.value().len()));
            n += 1;
        }
        n
    }

    fn delete(&mut self, keys: &[[u8; 40]]) {
        let tx = self.db.begin_write().expect("begin");
        {
            let mut t = tx.open_table(TABLE).expect("table");
            for k in keys {
                t.remove(k.as_slice()).expect("remove");
            }
        }
        tx.commit().expect("commit");
    }
}

fn rows<'v>(keys: &[[u8; 40]], value: &'v [u8]) -> Vec<([u8; 40], &'v [u8])> {
    keys.iter().map(|k| (*k, value)).collect()
}

/// A key spread uniformly over the key space (like Levee's dedupe hashes), outside every
/// mailbox range the benchmarks read.
fn dedupe_key(k: &[u8; 40]) -> [u8; 40] {
    let mut h = [0xffu8; 40];
    let x = u64::from_be_bytes(k[32..].try_into().expect("8 bytes"))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h[1..9].copy_from_slice(&x.to_be_bytes());
    h
}

/// One batch through a mailbox: durable append, read from each recipient's cursor,
/// durable delete.
fn relay_cycle(e: &mut dyn Engine, seq: &mut u64, value: &[u8], with_dedupe: bool) {
    let first = *seq + 1;
    let keys = batch_keys(seq);
    let mut batch = rows(&keys, value);
    let dedupe: Vec<[u8; 40]> = keys.iter().map(dedupe_key).collect();
    if with_dedupe {
        batch.extend(rows(&dedupe, &value[..8]));
    }
    e.append(&batch);
    let mut read = 0;
    for mailbox in 0..MAILBOXES.min(BATCH) {
        read += e.read_from((first + mailbox) % MAILBOXES, first);
    }
    assert_eq!(read as u64, BATCH);
    e.delete(&keys);
}

/// Both engines, each in a fresh temporary directory.
fn engines() -> Vec<(tempfile::TempDir, Box<dyn Engine>)> {
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let fjall: Box<dyn Engine> = Box::new(Fjall::open(a.path()));
    let redb: Box<dyn Engine> = Box::new(Redb::open(b.path()));
    vec![(a, fjall), (b, redb)]
}

/// The next batch of keys: `BATCH` envelopes spread over the mailboxes.
fn batch_keys(seq: &mut u64) -> Vec<[u8; 40]> {
    (0..BATCH)
        .map(|_| {
            *seq += 1;
            key(*seq % MAILBOXES, *seq)
        })
        .collect()
}

fn mailbox_workload(c: &mut Criterion) {
    let value = vec![0xa5u8; ENVELOPE];

    let mut g = c.benchmark_group("durable_append");
    g.throughput(Throughput::Elements(BATCH));
    for (_dir, mut e) in engines() {
        let mut seq = 0;
        g.bench_function(BenchmarkId::from_parameter(e.name()), |b| {
            b.iter(|| e.append(&rows(&batch_keys(&mut seq), &value)));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("read_in_order");
    g.throughput(Throughput::Elements(1000));
    for (_dir, mut e) in engines() {
        let keys: Vec<_> = (0..1000).map(|i| key(7, i)).collect();
        for chunk in keys.chunks(250) {
            e.append(&rows(chunk, &value));
        }
        g.bench_function(BenchmarkId::from_parameter(e.name()), |b| {
            b.iter(|| assert_eq!(e.read_from(7, 0), 1000));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("delete_acked");
    g.throughput(Throughput::Elements(BATCH));
    for (_dir, mut e) in engines() {
        let mut seq = 0;
        g.bench_function(BenchmarkId::from_parameter(e.name()), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let keys = batch_keys(&mut seq);
                    e.append(&rows(&keys, &value));
                    let start = Instant::now();
                    e.delete(&keys);
                    spent += start.elapsed();
                }
                spent
            });
        });
    }
    g.finish();

    // The relay's steady state: a batch arrives, each recipient's subscription reads what
    // is new after its cursor, and the batch is acknowledged. Then the same with Levee's
    // de-duplication index: every envelope also leaves a record under a hash-like key that
    // lives for the envelope TTL (14 days), so unlike the mailbox rows it grows during a run.
    for (group, with_dedupe) in [("queue_cycle", false), ("relay_cycle_with_dedupe", true)] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(BATCH));
        for (_dir, mut e) in engines() {
            let mut seq = 0;
            g.bench_function(BenchmarkId::from_parameter(e.name()), |b| {
                b.iter(|| relay_cycle(e.as_mut(), &mut seq, &value, with_dedupe));
            });
        }
        g.finish();
    }

    // A reconnecting client reads its mailbox from the start, past everything it has
    // already acknowledged: the cost of deletes that an LSM tree keeps as tombstones until
    // compaction drops them.
    let mut g = c.benchmark_group("read_after_10k_acks");
    g.throughput(Throughput::Elements(100));
    for (_dir, mut e) in engines() {
        let acked: Vec<_> = (0..10_000).map(|i| key(3, i)).collect();
        for chunk in acked.chunks(500) {
            e.append(&rows(chunk, &value));
            e.delete(chunk);
        }
        let live: Vec<_> = (10_000..10_100).map(|i| key(3, i)).collect();
        e.append(&rows(&live, &value));
        g.bench_function(BenchmarkId::from_parameter(e.name()), |b| {
            b.iter(|| assert_eq!(e.read_from(3, 0), 100));
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // fsync-bound work has wide variance on shared machines; few, longer samples.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = mailbox_workload
}
criterion_main!(benches);
