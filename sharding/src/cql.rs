//! The ScyllaDB mailbox store: mailboxes in any Cassandra-compatible CQL cluster.
//!
//! # Schema (created at start if missing; see [`schema`])
//!
//! - `accounts (mailbox PRIMARY KEY, created_at_ms)`: one row per registered key, no TTL.
//! - `envelopes ((mailbox), id)`: partitioned by mailbox, clustered by envelope id (the
//!   delivery-log offset, so delivery order). Table-level TTL as a backstop; every row is
//!   written with its own TTL from `expires_at_ms`.
//! - `dedupe ((mailbox), dedupe_key) → id`: "this message was stored", kept until the
//!   envelope would have expired, so a re-send or a replayed log record after the recipient
//!   acknowledged (deleted) the envelope is still recognised.
//! - `mailbox_heads (mailbox PRIMARY KEY, live_from)`: the id below which everything in the
//!   mailbox was acknowledged (see below).
//!
//! # Queues and tombstones
//!
//! Deleting from the head of a partition is the classic queue anti-pattern in
//! Cassandra-family stores: each acknowledgement leaves a tombstone that a read from the
//! start of the mailbox must step over until compaction purges it, after `gc_grace_seconds`.
//! Levee never reads over them on purpose:
//! - every read is a slice `id >= start`; a subscription starts after its own cursor, and a
//!   reconnect starts at the mailbox's `live_from`, which an acknowledgement that empties the
//!   mailbox moves past everything it deleted. The slice begins past the tombstones, so the
//!   read does not see them.
//! - envelopes and dedupe records all carry TTLs, so expiry costs no deletes at all:
//!   [`MailboxStore::expire`] has nothing to do.
//! - compaction is TimeWindowCompactionStrategy with one-day windows, made for data written
//!   in time order that expires by TTL: an SSTable whose rows have all expired is dropped
//!   whole instead of being rewritten. `unchecked_tombstone_compaction` lets a window
//!   compact away the acknowledgement tombstones once they are past `gc_grace_seconds`.
//!
//! # Idempotence without lightweight transactions
//!
//! A log record may be stored twice (a node dies after the store write and before the
//! offset commit; two owners overlap in a handoff). Both copies write the same primary key,
//! *and the same write timestamp* — the time the relay accepted the envelope — so the second
//! write is the same cell version as the first. An acknowledgement deletes with a later
//! timestamp, so a replay arriving after it stays shadowed: an acknowledged envelope never
//! comes back. The dedupe record additionally turns a replay (or a re-send) into
//! [`InsertOutcome::Duplicate`] without writing.
//!
//! Only account creation uses a lightweight transaction (`IF NOT EXISTS`), to report
//! whether the account is new; it is rare next to message traffic.
//!
//! Every statement is prepared (so the driver routes it to a replica owning the partition:
//! token-aware) and runs at LOCAL_QUORUM.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::try_join_all;
use metrics::Counter;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use crate::cql_config::{MAX_TTL_SECS, ScyllaConfig, config_error, schema};
use crate::store::{AckOutcome, InsertOutcome, MailboxStore, MailboxUsage, StoreError};
use crate::{EnvelopeId, MailboxId, NewEnvelope, StoredEnvelope};

/// How many statements of one insert run at once against the cluster.
const CONCURRENCY: usize = 64;
/// Most dedupe keys looked up in one read (`dedupe_key IN ?`): one partition's clustering
/// keys, which Cassandra and ScyllaDB read as that many slices of the partition. A delivery
/// batch rarely holds this many envelopes for one mailbox.
const DEDUPE_KEYS_PER_LOOKUP: usize = 256;
/// Rows fetched per page when reading a mailbox.
const PAGE_ROWS: i32 = 256;

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// The statements the store runs, each counted on its own once a counter is attached
/// ([`ScyllaMailboxStore::count_statements`]): what an envelope costs the database, by kind.
/// A batch counts once, as one statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreStatement {
    /// Registering an account (a lightweight transaction).
    CreateAccount,
    /// Whether an account exists.
    AccountExists,
    /// A mailbox's quota usage (an aggregate over its live envelopes).
    Usage,
    /// Which of a batch's dedupe keys one mailbox has seen (one per mailbox per batch).
    DedupeLookup,
    /// One mailbox's new envelopes and their dedupe records (a single-partition batch).
    StoreBatch,
    /// A mailbox's live-from hint read.
    ReadHead,
    /// A mailbox's live-from hint written.
    WriteHead,
    /// A slice of a mailbox read for delivery (counted per request, not per page).
    Read,
    /// The first live envelope at or after the hint (does an acknowledgement empty it?).
    FirstLive,
    /// Which acknowledged ids a mailbox holds.
    FindIds,
    /// An acknowledgement's deletes (a single-partition batch).
    DeleteBatch,
}

impl StoreStatement {
    /// Every kind, in the order of [`StoreStatement::as_str`]'s table.
    pub const ALL: [StoreStatement; 11] = [
        Self::CreateAccount,
        Self::AccountExists,
        Self::Usage,
        Self::DedupeLookup,
        Self::StoreBatch,
        Self::ReadHead,
        Self::WriteHead,
        Self::Read,
        Self::FirstLive,
        Self::FindIds,
        Self::DeleteBatch,
    ];

    /// Its name as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateAccount => "create_account",
            Self::AccountExists => "account_exists",
            Self::Usage => "usage",
            Self::DedupeLookup => "dedupe_lookup",
            Self::StoreBatch => "store_batch",
            Self::ReadHead => "read_head",
            Self::WriteHead => "write_head",
            Self::Read => "read",
            Self::FirstLive => "first_live",
            Self::FindIds => "find_ids",
            Self::DeleteBatch => "delete_batch",
        }
    }
}

struct Statements {
    create_account: PreparedStatement,
    account_exists: PreparedStatement,
    usage: PreparedStatement,
    dedupe_lookup: PreparedStatement,
    insert_envelope: PreparedStatement,
    insert_dedupe: PreparedStatement,
    read_head: PreparedStatement,
    write_head: PreparedStatement,
    read: PreparedStatement,
    first_live: PreparedStatement,
    find_ids: PreparedStatement,
    delete: PreparedStatement,
}

/// Mailboxes in a ScyllaDB (or any CQL) cluster. See the module documentation.
pub struct ScyllaMailboxStore {
    session: Arc<Session>,
    statements: Statements,
    /// One per [`StoreStatement`], in [`StoreStatement::ALL`]'s order; no-ops until
    /// [`ScyllaMailboxStore::count_statements`].
    counters: [Counter; StoreStatement::ALL.len()],
}

/// Envelope ids are log offsets; CQL's `bigint` is signed.
fn to_cql_id(id: EnvelopeId) -> Result<i64, StoreError> {
    i64::try_from(id).map_err(|_| StoreError::Engine(format!("envelope id {id} beyond bigint")))
}

fn from_cql_id(id: i64) -> Result<EnvelopeId, StoreError> {
    u64::try_from(id).map_err(|_| StoreError::Corrupt {
        what: "envelope id",
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The TTL (whole seconds, at least 1) of something that expires at `expires_at_ms`.
fn ttl_secs(expires_at_ms: u64, now_ms: u64) -> i32 {
    let secs = expires_at_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
    secs.min(MAX_TTL_SECS) as i32
}

impl ScyllaMailboxStore {
    /// Connects, creates the keyspace and tables if missing (waiting for every node to
    /// agree on the schema), and prepares every statement.
    pub async fn connect(config: &ScyllaConfig) -> Result<Self, StoreError> {
        let statements = schema(config)?;
        if config.nodes.is_empty() {
            return Err(config_error("nodes must list at least one contact point"));
        }
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &config.local_datacenter {
            policy = policy.prefer_datacenter(dc.clone());
        }
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
            .load_balancing_policy(policy.build())
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(engine)?;
        for statement in &statements {
            session
                .query_unpaged(statement.as_str(), ())
                .await
                .map_err(|e| StoreError::Engine(format!("creating the schema: {e}")))?;
        }
        session.await_schema_agreement().await.map_err(engine)?;
        let statements = Statements::prepare(&session, &config.keyspace).await?;
        Ok(Self {
            session: Arc::new(session),
            statements,
            counters: StoreStatement::ALL.map(|_| Counter::noop()),
        })
    }

    /// Counts every statement the store runs from now on, by kind, on the counter
    /// `counter` gives for it (called once per kind, here).
    pub fn count_statements(mut self, counter: impl Fn(StoreStatement) -> Counter) -> Self {
        self.counters = StoreStatement::ALL.map(counter);
        self
    }

    fn count(&self, statement: StoreStatement) {
        self.counters[statement as usize].increment(1);
    }

    /// The driver session, for other tables in the same keyspace (the relay's roster):
    /// one connection pool per process.
    pub fn session(&self) -> Arc<Session> {
        self.session.clone()
    }

    /// The live-from hint of `mailbox` (0 if none).
    async fn live_from(&self, mailbox: &MailboxId) -> Result<i64, StoreError> {
        self.count(StoreStatement::ReadHead);
        let result = self
            .session
            .execute_unpaged(&self.statements.read_head, (mailbox.as_bytes().as_slice(),))
            .await
            .map_err(engine)?;
        let row = result
            .into_rows_result()
            .map_err(engine)?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(engine)?;
        Ok(row.and_then(|(from,)| from).unwrap_or(0))
    }

    async fn set_live_from(&self, mailbox: &MailboxId, from: i64) -> Result<(), StoreError> {
        self.count(StoreStatement::WriteHead);
        self.session
            .execute_unpaged(
                &self.statements.write_head,
                (mailbox.as_bytes().as_slice(), from),
            )
            .await
            .map_err(engine)?;
        Ok(())
    }

    /// Moves the live-from hint of `mailbox` down to `low` if it is above.
    async fn lower_live_from(&self, mailbox: &MailboxId, low: i64) -> Result<(), StoreError> {
        if self.live_from(mailbox).await? > low {
            self.set_live_from(mailbox, low).await?;
        }
        Ok(())
    }

    /// Which of `keys` (dedupe keys of `mailbox`, at most [`DEDUPE_KEYS_PER_LOOKUP`]) have
    /// a dedupe record: those messages are already stored (or were, and have been
    /// acknowledged). One single-partition read for them all, not one per envelope: the
    /// per-envelope reads were the largest share of the statements an envelope cost.
    async fn seen(
        &self,
        mailbox: &MailboxId,
        keys: &[&[u8]],
    ) -> Result<HashSet<[u8; 16]>, StoreError> {
        self.count(StoreStatement::DedupeLookup);
        let rows: Vec<(Vec<u8>,)> = self
            .session
            .execute_unpaged(
                &self.statements.dedupe_lookup,
                (mailbox.as_bytes().as_slice(), keys),
            )
            .await
            .map_err(engine)?
            .into_rows_result()
            .map_err(engine)?
            .rows::<(Vec<u8>,)>()
            .map_err(engine)?
            .collect::<Result<_, _>>()
            .map_err(engine)?;
        // A stored key of another length cannot be any envelope's: ignored.
        Ok(rows
            .into_iter()
            .filter_map(|(key,)| <[u8; 16]>::try_from(key.as_slice()).ok())
            .collect())
    }

    /// Writes one mailbox's new envelopes (`queue`, in id order) together with their dedupe
    /// records, all at their envelopes' acceptance times (see "Idempotence" in the module
    /// documentation), in batches of at most [`STORE_BATCH_BYTES`] of payload, one after
    /// another.
    ///
    /// - **Atomic dedupe.** An envelope and its dedupe record go in the same batch. Both
    ///   tables are keyed by the mailbox, so Cassandra applies the batch as one mutation of
    ///   one partition key, at once and in isolation on each replica (a logged batch of one
    ///   partition key skips the batch log there; ScyllaDB, which keeps a mutation per
    ///   table, uses the batch log and so still applies all or nothing). They used to go in
    ///   two batches, envelopes first: a node killed between them left an envelope without
    ///   its dedupe record, and a re-send of it read after that was stored a second time
    ///   under another id.
    /// - **Prefixes.** A reader sees a prefix of the queue, never an envelope before a lower
    ///   one. (A session's pump moves its cursor past the highest id it read; written one
    ///   statement each, concurrently, a distributed test saw envelopes 7 and 9 delivered
    ///   and 8 skipped.) One mutation per batch, not one per envelope, is also cheaper for
    ///   the database.
    async fn store_mailbox(&self, queue: &[&NewEnvelope], now_ms: u64) -> Result<(), StoreError> {
        for part in byte_bounded(queue, STORE_BATCH_BYTES) {
            let mut batch = Batch::new(BatchType::Logged);
            let mut values: Vec<StoreRow<'_>> = Vec::with_capacity(2 * part.len());
            for e in part {
                let id = to_cql_id(e.id)?;
                let ttl = ttl_secs(e.expires_at_ms, now_ms);
                let written_at =
                    i64::try_from(e.accepted_at_ms.saturating_mul(1000)).unwrap_or(i64::MAX);
                let mailbox = e.mailbox.as_bytes().as_slice();
                batch.append_statement(self.statements.insert_envelope.clone());
                values.push(StoreRow::Envelope((
                    mailbox,
                    id,
                    e.client_message_id.as_slice(),
                    e.accepted_at_ms as i64,
                    e.expires_at_ms as i64,
                    e.ciphertext.len() as i64,
                    e.ciphertext.as_ref(),
                    ttl,
                    written_at,
                )));
                batch.append_statement(self.statements.insert_dedupe.clone());
                values.push(StoreRow::Dedupe((
                    mailbox,
                    e.dedupe_key.as_slice(),
                    id,
                    ttl,
                    written_at,
                )));
            }
            batch.set_is_idempotent(true);
            self.count(StoreStatement::StoreBatch);
            self.session.batch(&batch, values).await.map_err(engine)?;
        }
        Ok(())
    }
}

/// The bound values of one statement of [`ScyllaMailboxStore::store_mailbox`]'s batches,
/// which mix envelope and dedupe inserts.
enum StoreRow<'a> {
    Envelope(EnvelopeRow<'a>),
    Dedupe(DedupeRow<'a>),
}

/// `insert_envelope`'s values: mailbox, id, client message id, accepted at, expires at,
/// size, ciphertext, TTL, write timestamp.
type EnvelopeRow<'a> = (&'a [u8], i64, &'a [u8], i64, i64, i64, &'a [u8], i32, i64);
/// `insert_dedupe`'s values: mailbox, dedupe key, id, TTL, write timestamp.
type DedupeRow<'a> = (&'a [u8], &'a [u8], i64, i32, i64);

impl SerializeRow for StoreRow<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            StoreRow::Envelope(v) => SerializeRow::serialize(v, ctx, writer),
            StoreRow::Dedupe(v) => SerializeRow::serialize(v, ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Most payload bytes in one batch of envelope writes (one envelope larger than this goes
/// alone): far under the largest mutation Cassandra takes (half a commit-log segment,
/// 16 MiB by default) and under ScyllaDB's batch-size warning (128 KiB) and failure (1 MiB)
/// thresholds, which may count single-partition batches too. At the relay's usual sizes it
/// still holds hundreds of envelopes.
const STORE_BATCH_BYTES: usize = 64 * 1024;

/// `queue` cut, in order, into runs of at most `max` payload bytes (at least one envelope
/// each, however large).
fn byte_bounded<'a>(
    queue: &'a [&'a NewEnvelope],
    max: usize,
) -> impl Iterator<Item = &'a [&'a NewEnvelope]> {
    let mut rest = queue;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && (n == 0 || bytes + rest[n].ciphertext.len() <= max) {
            bytes += rest[n].ciphertext.len();
            n += 1;
        }
        let (part, tail) = rest.split_at(n);
        rest = tail;
        Some(part)
    })
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String, idempotent: bool| async move {
            let mut statement = session
                .prepare(cql.as_str())
                .await
                .map_err(|e| StoreError::Engine(format!("preparing {cql:?}: {e}")))?;
            statement.set_is_idempotent(idempotent);
            Ok::<_, StoreError>(statement)
        };
        let mut read = prepare(
            format!(
                "SELECT id, client_message_id, accepted_at_ms, expires_at_ms, ciphertext \
                 FROM {ks}.envelopes WHERE mailbox = ? AND id >= ? LIMIT ?"
            ),
            true,
        )
        .await?;
        read.set_page_size(PAGE_ROWS);
        Ok(Self {
            // Not idempotent: a retry after a lost answer would report "exists" for an
            // account this very call created. Harmless either way, but honest.
            create_account: prepare(
                format!(
                    "INSERT INTO {ks}.accounts (mailbox, created_at_ms) VALUES (?, ?) \
                     IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            account_exists: prepare(
                format!("SELECT mailbox FROM {ks}.accounts WHERE mailbox = ?"),
                true,
            )
            .await?,
            usage: prepare(
                format!(
                    "SELECT COUNT(*), SUM(size) FROM {ks}.envelopes WHERE mailbox = ? AND id >= ?"
                ),
                true,
            )
            .await?,
            dedupe_lookup: prepare(
                format!("SELECT dedupe_key FROM {ks}.dedupe WHERE mailbox = ? AND dedupe_key IN ?"),
                true,
            )
            .await?,
            insert_envelope: prepare(
                format!(
                    "INSERT INTO {ks}.envelopes (mailbox, id, client_message_id, accepted_at_ms, \
                     expires_at_ms, size, ciphertext) VALUES (?, ?, ?, ?, ?, ?, ?) \
                     USING TTL ? AND TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            insert_dedupe: prepare(
                format!(
                    "INSERT INTO {ks}.dedupe (mailbox, dedupe_key, id) VALUES (?, ?, ?) \
                     USING TTL ? AND TIMESTAMP ?"
                ),
                true,
            )
            .await?,
            read_head: prepare(
                format!("SELECT live_from FROM {ks}.mailbox_heads WHERE mailbox = ?"),
                true,
            )
            .await?,
            write_head: prepare(
                format!("INSERT INTO {ks}.mailbox_heads (mailbox, live_from) VALUES (?, ?)"),
                true,
            )
            .await?,
            read,
            first_live: prepare(
                format!("SELECT id FROM {ks}.envelopes WHERE mailbox = ? AND id >= ? LIMIT 1"),
                true,
            )
            .await?,
            find_ids: prepare(
                format!(
                    "SELECT id, accepted_at_ms FROM {ks}.envelopes WHERE mailbox = ? AND id IN ?"
                ),
                true,
            )
            .await?,
            delete: prepare(
                format!(
                    "DELETE FROM {ks}.envelopes USING TIMESTAMP ? WHERE mailbox = ? AND id = ?"
                ),
                true,
            )
            .await?,
        })
    }
}

#[async_trait]
impl MailboxStore for ScyllaMailboxStore {
    async fn create_mailbox(&self, mailbox: &MailboxId) -> Result<bool, StoreError> {
        self.count(StoreStatement::CreateAccount);
        let result = self
            .session
            .execute_unpaged(
                &self.statements.create_account,
                (mailbox.as_bytes().as_slice(), now_ms() as i64),
            )
            .await
            .map_err(engine)?;
        // A conditional write answers `[applied]` first, then the existing row if not applied.
        let row = result
            .into_rows_result()
            .map_err(engine)?
            .first_row::<Row>()
            .map_err(engine)?;
        match row.columns.first() {
            Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
            _ => Err(StoreError::Corrupt {
                what: "conditional insert answer",
            }),
        }
    }

    async fn mailbox_exists(&self, mailbox: &MailboxId) -> Result<bool, StoreError> {
        self.count(StoreStatement::AccountExists);
        let result = self
            .session
            .execute_unpaged(
                &self.statements.account_exists,
                (mailbox.as_bytes().as_slice(),),
            )
            .await
            .map_err(engine)?;
        Ok(result.into_rows_result().map_err(engine)?.rows_num() > 0)
    }

    /// Counted from the stored rows at or after the mailbox's live-from hint (expired rows
    /// are already gone by TTL): a single-partition aggregate bounded by the quota.
    async fn usage(&self, mailbox: &MailboxId) -> Result<MailboxUsage, StoreError> {
        let from = self.live_from(mailbox).await?;
        self.count(StoreStatement::Usage);
        let result = self
            .session
            .execute_unpaged(
                &self.statements.usage,
                (mailbox.as_bytes().as_slice(), from),
            )
            .await
            .map_err(engine)?;
        let (count, bytes) = result
            .into_rows_result()
            .map_err(engine)?
            .maybe_first_row::<(i64, Option<i64>)>()
            .map_err(engine)?
            .unwrap_or((0, None));
        Ok(MailboxUsage {
            envelopes: count.max(0) as u64,
            bytes: bytes.unwrap_or(0).max(0) as u64,
        })
    }

    async fn insert(&self, envelopes: Vec<NewEnvelope>) -> Result<Vec<InsertOutcome>, StoreError> {
        let now = now_ms();
        // Each mailbox's envelopes (indexes into `envelopes`, in the order given): its
        // dedupe records are read, and its new envelopes stored, one mailbox at a time.
        let mut arrived: HashMap<MailboxId, Vec<usize>> = HashMap::new();
        for (i, e) in envelopes.iter().enumerate() {
            arrived.entry(e.mailbox).or_default().push(i);
        }
        let lookups: Vec<(&MailboxId, &[usize])> = arrived
            .iter()
            .flat_map(|(mailbox, queue)| {
                queue
                    .chunks(DEDUPE_KEYS_PER_LOOKUP)
                    .map(move |part| (mailbox, part))
            })
            .collect();
        let mut seen: HashSet<(MailboxId, [u8; 16])> = HashSet::new();
        for chunk in lookups.chunks(CONCURRENCY) {
            let found = try_join_all(chunk.iter().map(|&(mailbox, part)| {
                let keys: Vec<&[u8]> = part
                    .iter()
                    .map(|&i| envelopes[i].dedupe_key.as_slice())
                    .collect();
                async move { Ok::<_, StoreError>((mailbox, self.seen(mailbox, &keys).await?)) }
            }))
            .await?;
            for (mailbox, keys) in found {
                seen.extend(keys.into_iter().map(|key| (*mailbox, key)));
            }
        }
        // Within the batch too: a re-send in the same batch as the original is a duplicate.
        let mut keys = HashSet::new();
        let outcomes: Vec<InsertOutcome> = envelopes
            .iter()
            .map(|e| {
                let key = (e.mailbox, e.dedupe_key);
                if seen.contains(&key) || !keys.insert(key) {
                    InsertOutcome::Duplicate
                } else {
                    InsertOutcome::Stored
                }
            })
            .collect();
        // Each mailbox's new envelopes in id order, in batches that a reader sees whole or
        // not at all (see `store_mailbox`); mailboxes in parallel.
        let queues: Vec<Vec<&NewEnvelope>> = arrived
            .values()
            .map(|queue| {
                let mut fresh: Vec<&NewEnvelope> = queue
                    .iter()
                    .filter(|&&i| outcomes[i] == InsertOutcome::Stored)
                    .map(|&i| &envelopes[i])
                    .collect();
                fresh.sort_by_key(|e| e.id);
                fresh
            })
            .filter(|fresh| !fresh.is_empty())
            .collect();
        // Then each mailbox's live-from hint, which must never hide a stored envelope. Log
        // order makes this a no-op (an acknowledged id is always above what was stored
        // before it), but one read per mailbox keeps it true whatever order envelopes come
        // in. A queue is sorted, so its first envelope is its lowest.
        for chunk in queues.chunks(CONCURRENCY) {
            try_join_all(chunk.iter().map(|queue| async move {
                self.store_mailbox(queue, now).await?;
                let lowest = &queue[0];
                self.lower_live_from(&lowest.mailbox, to_cql_id(lowest.id)?)
                    .await
            }))
            .await?;
        }
        Ok(outcomes)
    }

    async fn read(
        &self,
        mailbox: &MailboxId,
        after: Option<EnvelopeId>,
        max: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        // A reader with a cursor starts right after it and needs no hint: the hint is only
        // ever above a cursor when another session acknowledged past it, and then the
        // slice merely steps over those tombstones once. A read from the start does.
        let start = match after {
            Some(id) if id >= i64::MAX as u64 => return Ok(Vec::new()),
            Some(id) => id as i64 + 1,
            None => self.live_from(mailbox).await?,
        };
        if max == 0 {
            return Ok(Vec::new());
        }
        self.count(StoreStatement::Read);
        let limit = i32::try_from(max).unwrap_or(i32::MAX);
        type Columns = (i64, Vec<u8>, i64, i64, Vec<u8>);
        let rows: Vec<Columns> = self
            .session
            .execute_iter(
                self.statements.read.clone(),
                (mailbox.as_bytes().as_slice(), start, limit),
            )
            .await
            .map_err(engine)?
            .rows_stream::<Columns>()
            .map_err(engine)?
            .try_collect()
            .await
            .map_err(engine)?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, client_message_id, accepted_at_ms, expires_at_ms, ciphertext) in rows {
            let expires_at_ms = expires_at_ms.max(0) as u64;
            if expires_at_ms <= now_ms {
                continue;
            }
            out.push(StoredEnvelope {
                id: from_cql_id(id)?,
                client_message_id: client_message_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt { what: "envelope" })?,
                accepted_at_ms: accepted_at_ms.max(0) as u64,
                expires_at_ms,
                ciphertext: Bytes::from(ciphertext),
            });
        }
        Ok(out)
    }

    async fn ack(&self, mailbox: &MailboxId, ids: &[EnvelopeId]) -> Result<AckOutcome, StoreError> {
        let mut outcome = AckOutcome::default();
        // Sorted and without repeats (the same id twice in one ack), in n log n: the
        // relay caps an ack's ids, but this store does not rely on it.
        let mut wanted: Vec<i64> = Vec::with_capacity(ids.len());
        for &id in ids {
            match i64::try_from(id) {
                Ok(cql) => wanted.push(cql),
                Err(_) => outcome.unknown.push(id),
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(outcome);
        }
        let key = mailbox.as_bytes().as_slice();
        self.count(StoreStatement::FindIds);
        let found: Vec<(i64, i64)> = self
            .session
            .execute_unpaged(&self.statements.find_ids, (key, &wanted))
            .await
            .map_err(engine)?
            .into_rows_result()
            .map_err(engine)?
            .rows::<(i64, i64)>()
            .map_err(engine)?
            .collect::<Result<_, _>>()
            .map_err(engine)?;
        let present: HashSet<i64> = found.iter().map(|(id, _)| *id).collect();
        outcome.unknown.extend(
            wanted
                .iter()
                .filter(|id| !present.contains(id))
                .map(|id| *id as u64),
        );
        if found.is_empty() {
            return Ok(outcome);
        }
        // One partition: an unlogged batch is applied atomically on each replica. Each delete
        // is stamped later than its envelope's write even if this node's clock is behind the
        // accepting node's, so a replayed insert can never shadow it.
        let now_us = now_ms() as i64 * 1000;
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(found.len());
        for (id, accepted_at_ms) in &found {
            batch.append_statement(self.statements.delete.clone());
            let stamp = now_us.max(accepted_at_ms.saturating_mul(1000).saturating_add(1));
            values.push((stamp, key, *id));
        }
        batch.set_is_idempotent(true);
        self.count(StoreStatement::DeleteBatch);
        self.session.batch(&batch, values).await.map_err(engine)?;
        outcome.deleted = found.len() as u32;
        // Let reads from the start, and the quota's count, begin past the tombstones just
        // written.
        let highest = found.iter().map(|(id, _)| *id).max().unwrap_or(0);
        let from = self.live_from(mailbox).await?;
        self.count(StoreStatement::FirstLive);
        let first_live = self
            .session
            .execute_unpaged(&self.statements.first_live, (key, from))
            .await
            .map_err(engine)?
            .into_rows_result()
            .map_err(engine)?
            .maybe_first_row::<(i64,)>()
            .map_err(engine)?
            .map(|(id,)| id);
        if let Some(to) = advanced_live_from(from, highest, first_live) {
            self.set_live_from(mailbox, to).await?;
        }
        Ok(outcome)
    }

    /// Nothing to do: envelopes and dedupe records carry TTLs and the database drops them.
    async fn expire(&self, _now_ms: u64, _max: usize) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// Where a mailbox's live-from hint moves after an acknowledgement whose highest id was
/// `highest`, given the hint `from` and the first live envelope at or after it: past
/// everything if the mailbox is empty, else up to that first live envelope — never below
/// where it was, and never past a live envelope.
///
/// Moving it up to the first live envelope, not only when the mailbox empties, is what keeps
/// the quota's count and a reconnecting reader off the acknowledgement tombstones of a
/// mailbox that is never quite empty (a busy recipient): they start at the hint. It is as
/// safe as moving it past an emptied mailbox: that envelope is stored, so the log (read in
/// order, shard by shard) has already handed over everything below it.
fn advanced_live_from(from: i64, highest: i64, first_live: Option<i64>) -> Option<i64> {
    match first_live {
        None if highest >= from => Some(highest.saturating_add(1)),
        None => None,
        Some(first) if first > from => Some(first),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: u64, size: usize) -> NewEnvelope {
        NewEnvelope {
            mailbox: MailboxId([1; 32]),
            id,
            dedupe_key: [0; 16],
            client_message_id: [0; 16],
            accepted_at_ms: 0,
            expires_at_ms: 0,
            ciphertext: Bytes::from(vec![0; size]),
        }
    }

    #[test]
    fn the_hint_moves_up_to_the_first_live_envelope_or_past_an_emptied_mailbox() {
        // Emptied: past the highest id acknowledged.
        assert_eq!(advanced_live_from(10, 14, None), Some(15));
        // Emptied earlier, and this acknowledgement was of ids below the hint: no change.
        assert_eq!(advanced_live_from(20, 14, None), None);
        // Not empty: up to the first envelope still live, wherever the acknowledged ids were.
        assert_eq!(advanced_live_from(10, 14, Some(15)), Some(15));
        assert_eq!(advanced_live_from(10, 14, Some(12)), Some(12));
        // An envelope at the hint is still live (acknowledged out of order): no change.
        assert_eq!(advanced_live_from(10, 14, Some(10)), None);
    }

    #[test]
    fn batches_keep_order_and_their_byte_bound_but_never_come_empty() {
        let envelopes: Vec<NewEnvelope> = [(1, 40), (2, 40), (3, 40), (4, 200), (5, 10)]
            .into_iter()
            .map(|(id, size)| envelope(id, size))
            .collect();
        let queue: Vec<&NewEnvelope> = envelopes.iter().collect();
        let parts: Vec<Vec<u64>> = byte_bounded(&queue, 100)
            .map(|part| part.iter().map(|e| e.id).collect())
            .collect();
        // 40 + 40 fit, a third would not; 200 alone exceeds the bound but goes on its own.
        assert_eq!(parts, vec![vec![1, 2], vec![3], vec![4], vec![5]]);
        assert_eq!(byte_bounded(&[], 100).count(), 0);
    }
}
