//! The embedded backend: one fjall database on local disk.
//!
//! fjall keeps one write-ahead journal per database, shared by all its keyspaces, and
//! recovers it in order after a crash. Levee relies on both facts: the delivery log (in
//! `levee-queue`) and the mailboxes live in the same database, and a single `fsync` of that
//! journal ([`EmbeddedStore::sync`]) makes every write before it durable, whichever
//! keyspace it went to.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};

use crate::background;
use crate::memtable_reaper::{self, Watched};
use crate::{
    AckOutcome, EnvelopeId, InsertOutcome, MailboxId, MailboxStore, MailboxUsage, NewEnvelope,
    StoreError, StoredEnvelope,
};

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

/// An open embedded database with group commit.
///
/// Cheap to clone; clones share the database and its commit group.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    db: Database,
    /// The keyspaces whose flushed memtables are freed off the write path
    /// (see `memtable_reaper`).
    reaped: Arc<Watched>,
    /// Bumped after every committed write; a sync covers every write counted before it began.
    written: AtomicU64,
    /// The value of `written` that the last completed sync covered.
    synced: AtomicU64,
    /// Held while an fsync runs, so waiters queue behind it and then usually find their
    /// write already covered: that is the group commit.
    sync_turn: tokio::sync::Mutex<()>,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        self.reaped.clear();
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir`, recovering its journal.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Engine(e.to_string()))?;
        // Journal persistence is our job (group commit before every acknowledgement); fjall's
        // own periodic flushing would only add fsyncs.
        let db = Database::builder(dir).manual_journal_persist(true).open()?;
        // fjall's flush and compaction threads are background work: at normal priority a
        // 64 MiB flush takes a core for half a second, and the runtime's workers, preempted
        // while holding the store's locks, stall every request behind them. The reaper looks
        // again every second for any started (or named) since.
        background::lower_priority_of_threads_named(background::FJALL_THREADS);
        let reaped = Arc::new(Watched::default());
        memtable_reaper::start(&reaped).map_err(|e| StoreError::Engine(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                db,
                reaped,
                written: AtomicU64::new(0),
                synced: AtomicU64::new(0),
                sync_turn: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Opens a keyspace of this database if it exists (one a newer version stopped
    /// writing, say), without creating it.
    pub fn existing_keyspace(&self, name: &str) -> Result<Option<Keyspace>, StoreError> {
        if self.inner.db.keyspace_exists(name) {
            self.keyspace(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Opens (or creates) a keyspace of this database.
    pub fn keyspace(&self, name: &str) -> Result<Keyspace, StoreError> {
        let keyspace = self
            .inner
            .db
            .keyspace(name, KeyspaceCreateOptions::default)?;
        self.inner.reaped.add(&keyspace);
        Ok(keyspace)
    }

    /// A keyspace the memtable reaper does not watch: for tests that need fjall's own
    /// reference counts.
    #[cfg(test)]
    pub(crate) fn unwatched_keyspace(&self, name: &str) -> Result<Keyspace, StoreError> {
        Ok(self
            .inner
            .db
            .keyspace(name, KeyspaceCreateOptions::default)?)
    }

    /// A new atomic write batch.
    pub fn batch(&self) -> OwnedWriteBatch {
        self.inner.db.batch()
    }

    /// Applies `batch` atomically. It is not durable until a later [`sync`](Self::sync).
    pub fn commit(&self, batch: OwnedWriteBatch) -> Result<(), StoreError> {
        batch.commit()?;
        self.inner.written.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Returns once every write committed before this call is on stable storage.
    ///
    /// Concurrent callers share fsyncs: one runs at a time, and a caller whose write was
    /// covered by the previous fsync returns without another.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let needed = self.inner.written.load(Ordering::Acquire);
        if self.inner.synced.load(Ordering::Acquire) >= needed {
            return Ok(());
        }
        let _turn = self.inner.sync_turn.lock().await;
        if self.inner.synced.load(Ordering::Acquire) >= needed {
            return Ok(());
        }
        // Everything counted by now was applied before it was counted, so this fsync
        // covers it too.
        let covers = self.inner.written.load(Ordering::Acquire);
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.persist(PersistMode::SyncData))
            .await
            .map_err(|e| StoreError::Engine(format!("sync task: {e}")))??;
        self.inner.synced.fetch_max(covers, Ordering::AcqRel);
        Ok(())
    }

    /// Commits `batch` and waits until it is durable.
    pub async fn commit_durable(&self, batch: OwnedWriteBatch) -> Result<(), StoreError> {
        self.commit(batch)?;
        self.sync().await
    }
}

/// Mailboxes in the embedded database.
///
/// Keyspaces (all keys big-endian so that byte order is numeric order):
/// - `accounts`: mailbox → created-at ms.
/// - `mailboxes`: mailbox ‖ envelope id → envelope record.
/// - `dedupe_v2`: dedupe key ‖ mailbox → envelope id. Outlives the envelope's
///   acknowledgement, until its expiry, so a late re-send is still recognised. The dedupe
///   key (a hash) comes first so that the lookup on every insert tells keys apart at their
///   first bytes: with the mailbox first, every key comparison in a busy mailbox walked the
///   32 bytes its keys share, and the lookup took a tenth of the node's CPU at 19,500
///   envelopes a second (docs/PERFORMANCE.md, "CPU per envelope").
/// - `dedupe`: the same records with the mailbox first, as versions before `dedupe_v2`
///   wrote them. Opened only if a store holds some; read and swept until they expire.
/// - `expiry`: expires-at ‖ mailbox ‖ envelope id → dedupe key; what the sweeper walks.
#[derive(Clone)]
pub struct EmbeddedMailboxStore {
    store: EmbeddedStore,
    accounts: Keyspace,
    mailboxes: Keyspace,
    dedupe: Keyspace,
    /// `dedupe` records of an earlier version, while there are any.
    legacy_dedupe: Option<Keyspace>,
    expiry: Keyspace,
    /// In-memory mailbox state. The lock also serialises read-check-write sequences
    /// (dedupe on insert, presence on ack).
    state: Arc<Mutex<Mailboxes>>,
}

#[derive(Default)]
struct Mailboxes {
    /// Quota usage per mailbox, rebuilt by a scan at open.
    usage: HashMap<MailboxId, MailboxUsage>,
    /// Per mailbox, an id below which nothing is stored: where a read from the start
    /// begins. Deleted rows stay in an LSM tree as tombstones until compaction, so without
    /// this a client reconnecting after acknowledging 10,000 envelopes would step over
    /// 10,000 tombstones to find its first live one (see docs/PERFORMANCE.md). Set when a
    /// mailbox is acknowledged empty, lowered by any insert below it; lost on restart, which
    /// only costs speed.
    live_from: HashMap<MailboxId, EnvelopeId>,
}

const ENVELOPE_HEADER: usize = 8 + 8 + 16;

fn envelope_key(mailbox: &MailboxId, id: EnvelopeId) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(mailbox.as_bytes());
    key[32..].copy_from_slice(&id.to_be_bytes());
    key
}

fn dedupe_key(mailbox: &MailboxId, dedupe: &[u8; 16]) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..16].copy_from_slice(dedupe);
    key[16..].copy_from_slice(mailbox.as_bytes());
    key
}

/// The key of an earlier version's `dedupe` keyspace.
fn legacy_dedupe_key(mailbox: &MailboxId, dedupe: &[u8; 16]) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..32].copy_from_slice(mailbox.as_bytes());
    key[32..].copy_from_slice(dedupe);
    key
}

fn expiry_key(expires_at_ms: u64, mailbox: &MailboxId, id: EnvelopeId) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..8].copy_from_slice(&expires_at_ms.to_be_bytes());
    key[8..40].copy_from_slice(mailbox.as_bytes());
    key[40..].copy_from_slice(&id.to_be_bytes());
    key
}

fn encode_envelope(e: &NewEnvelope) -> Vec<u8> {
    let mut v = Vec::with_capacity(ENVELOPE_HEADER + e.ciphertext.len());
    v.extend_from_slice(&e.accepted_at_ms.to_be_bytes());
    v.extend_from_slice(&e.expires_at_ms.to_be_bytes());
    v.extend_from_slice(&e.client_message_id);
    v.extend_from_slice(&e.ciphertext);
    v
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn decode_envelope(id: EnvelopeId, v: &[u8]) -> Result<StoredEnvelope, StoreError> {
    let corrupt = || StoreError::Corrupt { what: "envelope" };
    if v.len() < ENVELOPE_HEADER {
        return Err(corrupt());
    }
    let client_message_id: [u8; 16] = v[16..32].try_into().map_err(|_| corrupt())?;
    Ok(StoredEnvelope {
        id,
        accepted_at_ms: be_u64(&v[0..8]).ok_or_else(corrupt)?,
        expires_at_ms: be_u64(&v[8..16]).ok_or_else(corrupt)?,
        client_message_id,
        ciphertext: Bytes::copy_from_slice(&v[ENVELOPE_HEADER..]),
    })
}

fn decode_envelope_key(key: &[u8]) -> Result<(MailboxId, EnvelopeId), StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "envelope key",
    };
    let mailbox = MailboxId::from_slice(key.get(..32).ok_or_else(corrupt)?).ok_or_else(corrupt)?;
    let id = be_u64(key.get(32..).ok_or_else(corrupt)?).ok_or_else(corrupt)?;
    Ok((mailbox, id))
}

impl EmbeddedMailboxStore {
    /// Opens the mailbox keyspaces of `store` and rebuilds quota usage from them.
    pub fn open(store: &EmbeddedStore) -> Result<Self, StoreError> {
        let this = Self {
            store: store.clone(),
            accounts: store.keyspace("accounts")?,
            mailboxes: store.keyspace("mailboxes")?,
            dedupe: store.keyspace("dedupe_v2")?,
            legacy_dedupe: match store.existing_keyspace("dedupe")? {
                Some(k) if !k.is_empty()? => Some(k),
                _ => None,
            },
            expiry: store.keyspace("expiry")?,
            state: Arc::default(),
        };
        let mut usage = HashMap::<MailboxId, MailboxUsage>::new();
        for kv in this.mailboxes.iter() {
            let (key, value) = kv.into_inner()?;
            let (mailbox, _) = decode_envelope_key(&key)?;
            let u = usage.entry(mailbox).or_default();
            u.envelopes += 1;
            u.bytes += value.len().saturating_sub(ENVELOPE_HEADER) as u64;
        }
        this.lock_state().usage = usage;
        Ok(this)
    }

    /// Whether `mailbox` already holds a message with this dedupe key (`dkey` is its
    /// [`dedupe_key`], which the caller has already built).
    fn dedupe_recorded(
        &self,
        dkey: &[u8; 48],
        mailbox: &MailboxId,
        dedupe: &[u8; 16],
    ) -> Result<bool, StoreError> {
        if self.dedupe.contains_key(dkey)? {
            return Ok(true);
        }
        match &self.legacy_dedupe {
            Some(legacy) => Ok(legacy.contains_key(legacy_dedupe_key(mailbox, dedupe))?),
            None => Ok(false),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, Mailboxes> {
        // A panic while holding this lock leaves only counters and hints behind, never
        // half-written data (batches are atomic), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl MailboxStore for EmbeddedMailboxStore {
    async fn create_mailbox(&self, mailbox: &MailboxId) -> Result<bool, StoreError> {
        let created = {
            let _guard = self.lock_state();
            if self.accounts.contains_key(mailbox.as_bytes())? {
                false
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let mut batch = self.store.batch();
                batch.insert(
                    &self.accounts,
                    mailbox.as_bytes().to_vec(),
                    now.to_be_bytes().to_vec(),
                );
                self.store.commit(batch)?;
                true
            }
        };
        // Even an existing account may have been created by a commit not yet synced.
        self.store.sync().await?;
        Ok(created)
    }

    async fn mailbox_exists(&self, mailbox: &MailboxId) -> Result<bool, StoreError> {
        Ok(self.accounts.contains_key(mailbox.as_bytes())?)
    }

    async fn usage(&self, mailbox: &MailboxId) -> Result<MailboxUsage, StoreError> {
        Ok(self
            .lock_state()
            .usage
            .get(mailbox)
            .copied()
            .unwrap_or_default())
    }

    async fn insert(&self, envelopes: Vec<NewEnvelope>) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(envelopes.len());
        {
            let mut state = self.lock_state();
            let mut batch = self.store.batch();
            let mut seen = HashSet::new();
            let mut added: Vec<(MailboxId, EnvelopeId, u64)> = Vec::new();
            for e in &envelopes {
                let ekey = envelope_key(&e.mailbox, e.id);
                let dkey = dedupe_key(&e.mailbox, &e.dedupe_key);
                // The dedupe record alone decides: it is written in the same batch as its
                // envelope and removed only with it (`expire`), and a replayed log record
                // (same id) carries its message's dedupe key. A second lookup, by id, was
                // a measurable share of the node's CPU (docs/PERFORMANCE.md).
                let duplicate =
                    !seen.insert(dkey) || self.dedupe_recorded(&dkey, &e.mailbox, &e.dedupe_key)?;
                if duplicate {
                    outcomes.push(InsertOutcome::Duplicate);
                    continue;
                }
                batch.insert(&self.mailboxes, ekey.to_vec(), encode_envelope(e));
                batch.insert(&self.dedupe, dkey.to_vec(), e.id.to_be_bytes().to_vec());
                batch.insert(
                    &self.expiry,
                    expiry_key(e.expires_at_ms, &e.mailbox, e.id).to_vec(),
                    e.dedupe_key.to_vec(),
                );
                added.push((e.mailbox, e.id, e.ciphertext.len() as u64));
                outcomes.push(InsertOutcome::Stored);
            }
            if !added.is_empty() {
                self.store.commit(batch)?;
                for (mailbox, id, bytes) in added {
                    let u = state.usage.entry(mailbox).or_default();
                    u.envelopes += 1;
                    u.bytes += bytes;
                    if let Some(from) = state.live_from.get_mut(&mailbox) {
                        *from = (*from).min(id);
                    }
                }
            }
        }
        self.store.sync().await?;
        Ok(outcomes)
    }

    async fn read(
        &self,
        mailbox: &MailboxId,
        after: Option<EnvelopeId>,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let live_from = self
            .lock_state()
            .live_from
            .get(mailbox)
            .copied()
            .unwrap_or(0);
        let start = match after {
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(id) => (id + 1).max(live_from),
            None => live_from,
        };
        let from = envelope_key(mailbox, start);
        let to = envelope_key(mailbox, u64::MAX);
        let mut out = Vec::new();
        for kv in self.mailboxes.range(from..=to) {
            if out.len() >= max {
                break;
            }
            let (key, value) = kv.into_inner()?;
            let (_, id) = decode_envelope_key(&key)?;
            let envelope = decode_envelope(id, &value)?;
            if envelope.expires_at_ms > now_ms {
                out.push(envelope);
            }
        }
        Ok(out)
    }

    async fn ack(&self, mailbox: &MailboxId, ids: &[EnvelopeId]) -> Result<AckOutcome, StoreError> {
        let mut outcome = AckOutcome::default();
        {
            let mut state = self.lock_state();
            let mut batch = self.store.batch();
            let mut freed = MailboxUsage::default();
            let mut unique = HashSet::new();
            let mut highest = 0;
            for &id in ids {
                let key = envelope_key(mailbox, id);
                match self.mailboxes.size_of(key)? {
                    Some(size) if unique.insert(id) => {
                        batch.remove(&self.mailboxes, key.to_vec());
                        freed.envelopes += 1;
                        freed.bytes += u64::from(size).saturating_sub(ENVELOPE_HEADER as u64);
                        outcome.deleted += 1;
                        highest = highest.max(id);
                    }
                    Some(_) => {} // the same id twice in one ack
                    None => outcome.unknown.push(id),
                }
            }
            if outcome.deleted > 0 {
                self.store.commit(batch)?;
                if let Some(u) = state.usage.get_mut(mailbox) {
                    u.envelopes = u.envelopes.saturating_sub(freed.envelopes);
                    u.bytes = u.bytes.saturating_sub(freed.bytes);
                    if u.envelopes == 0 {
                        // Empty: everything up to the highest id just deleted is gone.
                        state.usage.remove(mailbox);
                        let from = state.live_from.entry(*mailbox).or_insert(0);
                        *from = (*from).max(highest.saturating_add(1));
                    }
                }
            }
        }
        if outcome.deleted > 0 {
            self.store.sync().await?;
        }
        Ok(outcome)
    }

    async fn expire(&self, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        let mut removed = 0;
        let mut state = self.lock_state();
        let usage = &mut state.usage;
        let mut batch = self.store.batch();
        let to = now_ms.to_be_bytes();
        for kv in self.expiry.range(..to.as_slice()).take(max) {
            let (key, dedupe) = kv.into_inner()?;
            let (mailbox, id) = decode_envelope_key(key.get(8..).unwrap_or_default())?;
            let dedupe: [u8; 16] = (&*dedupe)
                .try_into()
                .map_err(|_| StoreError::Corrupt { what: "expiry" })?;
            let ekey = envelope_key(&mailbox, id);
            if let Some(size) = self.mailboxes.size_of(ekey)? {
                batch.remove(&self.mailboxes, ekey.to_vec());
                if let Some(u) = usage.get_mut(&mailbox) {
                    u.envelopes = u.envelopes.saturating_sub(1);
                    u.bytes = u
                        .bytes
                        .saturating_sub(u64::from(size).saturating_sub(ENVELOPE_HEADER as u64));
                }
            }
            batch.remove(&self.dedupe, dedupe_key(&mailbox, &dedupe).to_vec());
            if let Some(legacy) = &self.legacy_dedupe {
                batch.remove(legacy, legacy_dedupe_key(&mailbox, &dedupe).to_vec());
            }
            batch.remove(&self.expiry, key);
            removed += 1;
        }
        usage.retain(|_, u| u.envelopes > 0);
        if removed > 0 {
            // Not synced: an expiry lost in a crash is simply redone by the next sweep, and an
            // expired envelope is never delivered in the meantime.
            self.store.commit(batch)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(mailbox: MailboxId, id: u64, dedupe: u8, expires_at_ms: u64) -> NewEnvelope {
        NewEnvelope {
            mailbox,
            id,
            dedupe_key: [dedupe; 16],
            client_message_id: [dedupe; 16],
            accepted_at_ms: 1,
            expires_at_ms,
            ciphertext: Bytes::from(vec![id as u8; 10]),
        }
    }

    async fn read_ids(s: &EmbeddedMailboxStore, m: &MailboxId, after: Option<u64>) -> Vec<u64> {
        s.read(m, after, 100, 0)
            .await
            .expect("read")
            .iter()
            .map(|e| e.id)
            .collect()
    }

    fn open(dir: &Path) -> EmbeddedMailboxStore {
        EmbeddedMailboxStore::open(&EmbeddedStore::open(dir).expect("open db")).expect("open store")
    }

    // The behaviour every store shares is checked by `tests/contract` (`tests/embedded.rs`);
    // these cover what is particular to this one: state rebuilt on reopen, the expiry sweep,
    // the in-memory live-from hint.

    #[tokio::test]
    async fn usage_survives_reopen_and_the_sweep_removes_expired_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = MailboxId([1; 32]);
        let b = MailboxId([2; 32]);
        {
            let s = open(dir.path());
            assert!(s.create_mailbox(&a).await.expect("create"));
            s.insert(vec![
                envelope(a, 5, 1, 100),
                envelope(a, 6, 2, 100),
                envelope(b, 8, 1, 50),
            ])
            .await
            .expect("insert");
            s.ack(&a, &[5]).await.expect("ack");
        }
        let s = open(dir.path());
        assert!(s.mailbox_exists(&a).await.expect("exists"));
        assert_eq!(
            s.usage(&a).await.expect("usage"),
            MailboxUsage {
                envelopes: 1,
                bytes: 10
            }
        );
        assert_eq!(s.expire(60, 100).await.expect("expire"), 1);
        assert_eq!(s.usage(&b).await.expect("usage"), MailboxUsage::default());
        assert_eq!(s.expire(200, 100).await.expect("expire"), 2);
        // After its dedupe record expired, the same key is a new message again.
        let fresh = s
            .insert(vec![envelope(a, 10, 1, 300)])
            .await
            .expect("insert");
        assert_eq!(fresh, vec![InsertOutcome::Stored]);
        assert_eq!(read_ids(&s, &a, None).await, vec![10]);
    }

    /// A store written before `dedupe_v2` keeps recognising its messages' re-sends until
    /// their dedupe records expire, and the sweep removes those records.
    #[tokio::test]
    async fn dedupe_records_of_the_earlier_layout_still_count_until_they_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = MailboxId([1; 32]);
        let old = envelope(a, 5, 7, 100);
        {
            // What an earlier version left: the envelope acknowledged, its dedupe record
            // (mailbox first) and its expiry entry kept.
            let db = EmbeddedStore::open(dir.path()).expect("open db");
            let legacy = db.keyspace("dedupe").expect("keyspace");
            let expiry = db.keyspace("expiry").expect("keyspace");
            let mut batch = db.batch();
            batch.insert(
                &legacy,
                legacy_dedupe_key(&a, &old.dedupe_key).to_vec(),
                old.id.to_be_bytes().to_vec(),
            );
            batch.insert(
                &expiry,
                expiry_key(old.expires_at_ms, &a, old.id).to_vec(),
                old.dedupe_key.to_vec(),
            );
            db.commit_durable(batch).await.expect("commit");
        }
        let s = open(dir.path());
        assert!(s.legacy_dedupe.is_some());
        let resent = envelope(a, 9, 7, 200);
        assert_eq!(
            s.insert(vec![resent.clone()]).await.expect("insert"),
            vec![InsertOutcome::Duplicate]
        );
        assert_eq!(s.expire(150, 100).await.expect("expire"), 1);
        assert_eq!(
            s.insert(vec![resent]).await.expect("insert"),
            vec![InsertOutcome::Stored]
        );
        drop(s);
        let s = open(dir.path());
        assert!(s.legacy_dedupe.is_none(), "swept empty: no longer read");
    }

    #[tokio::test]
    async fn draining_a_mailbox_moves_its_live_from_hint_past_the_deleted_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let a = MailboxId([1; 32]);
        let batch: Vec<_> = (10..20).map(|i| envelope(a, i, i as u8, 100)).collect();
        s.insert(batch).await.expect("insert");
        s.ack(&a, &(10..20).collect::<Vec<_>>()).await.expect("ack");
        assert_eq!(s.lock_state().live_from.get(&a), Some(&20));
        s.insert(vec![envelope(a, 5, 51, 100)])
            .await
            .expect("insert");
        assert_eq!(s.lock_state().live_from.get(&a), Some(&5));
    }

    /// Inserts, acknowledgements (the same ids from two tasks), reads and expiry all at once:
    /// each envelope is deleted once and counted in and out of its mailbox's usage exactly
    /// once. (A version with the state lock split in two, one for adding and one for
    /// removing, was measured and not kept; without its removing lock this failed 5 of 5.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn usage_stays_exact_while_inserts_acks_reads_and_expiry_run_at_once() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        // a's envelopes are acknowledged; b's expire (at 50, swept at 100).
        let (a, b) = (MailboxId([1; 32]), MailboxId([2; 32]));
        let rounds = 100u64;
        let inserted = Arc::new(AtomicBool::new(false));
        let inserter = {
            let (s, inserted) = (s.clone(), inserted.clone());
            tokio::spawn(async move {
                for r in 0..rounds {
                    let batch = (0..8)
                        .map(|k| {
                            let id = r * 8 + k;
                            let mut e = envelope(if k % 2 == 0 { a } else { b }, id, 0, 1_000);
                            e.dedupe_key[..8].copy_from_slice(&id.to_be_bytes());
                            if k % 2 == 1 {
                                e.expires_at_ms = 50;
                            }
                            e
                        })
                        .collect();
                    s.insert(batch).await.expect("insert");
                }
                inserted.store(true, Ordering::Release);
            })
        };
        let acker = |s: EmbeddedMailboxStore, inserted: Arc<AtomicBool>| {
            tokio::spawn(async move {
                let mut deleted = 0;
                loop {
                    // Read before looking at the flag, so an empty read after it is final.
                    let finished = inserted.load(Ordering::Acquire);
                    let page = s.read(&a, None, 64, 0).await.expect("read");
                    if page.is_empty() {
                        if finished {
                            return deleted;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    }
                    let ids: Vec<u64> = page.iter().map(|e| e.id).collect();
                    deleted += s.ack(&a, &ids).await.expect("ack").deleted;
                }
            })
        };
        let one = acker(s.clone(), inserted.clone());
        let two = acker(s.clone(), inserted.clone());
        let sweeper = {
            let (s, inserted) = (s.clone(), inserted.clone());
            tokio::spawn(async move {
                while !inserted.load(Ordering::Acquire) {
                    s.expire(100, 16).await.expect("expire");
                    tokio::task::yield_now().await;
                }
            })
        };
        inserter.await.expect("inserter");
        sweeper.await.expect("sweeper");
        let deleted = one.await.expect("acker") + two.await.expect("acker");
        s.expire(100, 10_000).await.expect("expire");
        assert_eq!(
            deleted as u64,
            rounds * 4,
            "each of a's envelopes deleted by exactly one acknowledgement"
        );
        assert_eq!(s.usage(&a).await.expect("usage"), MailboxUsage::default());
        assert_eq!(s.usage(&b).await.expect("usage"), MailboxUsage::default());
        assert!(s.read(&b, None, 10, 0).await.expect("read").is_empty());
    }
}
