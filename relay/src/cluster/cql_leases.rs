//! Shard leases in the CQL database the nodes share (see [`super::lease`]).
//!
//! One row per shard in `shard_leases ((scope, shard))`: epoch, holder, committed position.
//! A row per partition, so takes and commits of different shards never contend. Every
//! change is a lightweight transaction conditional on the epoch (Paxos in the database):
//! taking moves it from the epoch read to the next, committing and releasing require it
//! unchanged. Reads are LOCAL_SERIAL, so they see every completed transaction. A take also
//! appends `(epoch, holder)` to `shard_lease_history ((scope, shard), epoch, holder)`, kept
//! a week, where a checker can see that no epoch ever had two holders.
//!
//! `scope` names the cluster and its log (`cluster/topic`): positions are offsets in one
//! topic, and two clusters may share a keyspace.

use std::sync::Arc;

use async_trait::async_trait;
use levee_sharding::ShardId;
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use super::cql;
use super::lease::{Lease, LeaseError, LeaseRow, ShardLeases};

/// How long the take history is kept (seconds): a week, enough for any drill or incident.
const HISTORY_TTL_SECS: i32 = 7 * 24 * 3600;

fn backend(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Backend(format!("cql leases: {e}"))
}

/// Leases in a CQL keyspace; see the module docs.
pub struct CqlLeases {
    session: Arc<Session>,
    scope: String,
    read: PreparedStatement,
    first: PreparedStatement,
    next: PreparedStatement,
    commit: PreparedStatement,
    release: PreparedStatement,
    release_at: PreparedStatement,
    record: PreparedStatement,
    history: PreparedStatement,
}

impl std::fmt::Debug for CqlLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlLeases")
            .field("scope", &self.scope)
            .finish()
    }
}

impl CqlLeases {
    /// Creates the lease tables in `keyspace` if missing (the keyspace must exist: the
    /// mailbox store creates it) and prepares the statements. `scope` names the cluster and
    /// its delivery log (see the module docs).
    pub async fn connect(
        session: Arc<Session>,
        keyspace: &str,
        scope: &str,
    ) -> Result<Self, LeaseError> {
        let ks = keyspace;
        let ddl = [
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.shard_leases (scope text, shard int, \
                 epoch bigint, holder text, position bigint, PRIMARY KEY ((scope, shard)))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.shard_lease_history (scope text, shard int, \
                 epoch bigint, holder text, taken_at_ms bigint, \
                 PRIMARY KEY ((scope, shard), epoch, holder))"
            ),
        ];
        cql::create_tables(&session, &ddl).await.map_err(backend)?;
        session.await_schema_agreement().await.map_err(backend)?;
        let prepare = |cql: String| {
            let session = session.clone();
            async move { cql::prepare(&session, cql).await.map_err(backend) }
        };
        let key = "WHERE scope = ? AND shard = ?";
        let mut read = prepare(format!(
            "SELECT epoch, holder, position FROM {ks}.shard_leases {key}"
        ))
        .await?;
        read.set_consistency(Consistency::LocalSerial);
        let mut record = prepare(format!(
            "INSERT INTO {ks}.shard_lease_history (scope, shard, epoch, holder, taken_at_ms) \
             VALUES (?, ?, ?, ?, ?) USING TTL {HISTORY_TTL_SECS}"
        ))
        .await?;
        record.set_is_idempotent(true);
        Ok(Self {
            scope: scope.to_owned(),
            read,
            first: prepare(format!(
                "INSERT INTO {ks}.shard_leases (scope, shard, epoch, holder) \
                 VALUES (?, ?, 1, ?) IF NOT EXISTS"
            ))
            .await?,
            next: prepare(format!(
                "UPDATE {ks}.shard_leases SET epoch = ?, holder = ? {key} IF epoch = ?"
            ))
            .await?,
            commit: prepare(format!(
                "UPDATE {ks}.shard_leases SET position = ? {key} IF epoch = ?"
            ))
            .await?,
            release: prepare(format!(
                "UPDATE {ks}.shard_leases SET holder = null {key} IF epoch = ?"
            ))
            .await?,
            release_at: prepare(format!(
                "UPDATE {ks}.shard_leases SET holder = null, position = ? {key} IF epoch = ?"
            ))
            .await?,
            record,
            history: prepare(format!(
                "SELECT epoch, holder FROM {ks}.shard_lease_history {key}"
            ))
            .await?,
            session,
        })
    }

    fn fenced(lease: &Lease) -> LeaseError {
        LeaseError::Fenced {
            shard: lease.shard,
            epoch: lease.epoch,
        }
    }
}

/// Whether a conditional statement applied: its answer's first column.
fn applied(result: QueryResult) -> Result<bool, LeaseError> {
    let row = result
        .into_rows_result()
        .map_err(backend)?
        .first_row::<Row>()
        .map_err(backend)?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        _ => Err(backend("a conditional write answered without [applied]")),
    }
}

fn to_cql(n: u64) -> Result<i64, LeaseError> {
    i64::try_from(n).map_err(|_| backend(format!("{n} beyond bigint")))
}

#[async_trait]
impl ShardLeases for CqlLeases {
    async fn read(&self, shard: ShardId) -> Result<LeaseRow, LeaseError> {
        let row = self
            .session
            .execute_unpaged(&self.read, (&self.scope, shard as i32))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<i64>, Option<String>, Option<i64>)>()
            .map_err(backend)?;
        Ok(match row {
            None => LeaseRow::default(),
            Some((epoch, holder, position)) => LeaseRow {
                epoch: epoch.unwrap_or(0).max(0) as u64,
                holder,
                position: position.map(|p| p.max(0) as u64),
            },
        })
    }

    async fn take(
        &self,
        shard: ShardId,
        holder: &str,
        seen: &LeaseRow,
    ) -> Result<Option<Lease>, LeaseError> {
        let seen_position = seen.position;
        let seen = seen.epoch;
        let key = (&self.scope, shard as i32);
        let result = if seen == 0 {
            self.session
                .execute_unpaged(&self.first, (key.0, key.1, holder))
                .await
        } else {
            let values = (to_cql(seen + 1)?, holder, key.0, key.1, to_cql(seen)?);
            self.session.execute_unpaged(&self.next, values).await
        };
        if !applied(result.map_err(backend)?)? {
            return Ok(None);
        }
        let epoch = seen + 1;
        let taken_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let record = (key.0, key.1, to_cql(epoch)?, holder, taken_at_ms);
        if let Err(e) = self.session.execute_unpaged(&self.record, record).await {
            // Evidence only: the lease itself is taken.
            tracing::warn!(shard, epoch, error = %e, "could not record a lease take");
        }
        Ok(Some(Lease {
            shard,
            epoch,
            position: seen_position,
        }))
    }

    async fn commit(&self, lease: &Lease, next: u64) -> Result<(), LeaseError> {
        let values = (
            to_cql(next)?,
            &self.scope,
            lease.shard as i32,
            to_cql(lease.epoch)?,
        );
        let result = self.session.execute_unpaged(&self.commit, values).await;
        if applied(result.map_err(backend)?)? {
            Ok(())
        } else {
            Err(Self::fenced(lease))
        }
    }

    async fn release(&self, lease: &Lease, next: Option<u64>) -> Result<(), LeaseError> {
        let (shard, epoch) = (lease.shard as i32, to_cql(lease.epoch)?);
        let result = match next {
            Some(next) => {
                let values = (to_cql(next)?, &self.scope, shard, epoch);
                self.session.execute_unpaged(&self.release_at, values).await
            }
            None => {
                let values = (&self.scope, shard, epoch);
                self.session.execute_unpaged(&self.release, values).await
            }
        };
        if applied(result.map_err(backend)?)? {
            Ok(())
        } else {
            Err(Self::fenced(lease))
        }
    }

    /// Kept a week (`HISTORY_TTL_SECS`).
    async fn history(&self, shard: ShardId) -> Result<Vec<(u64, String)>, LeaseError> {
        let rows = self
            .session
            .execute_unpaged(&self.history, (&self.scope, shard as i32))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?;
        rows.rows::<(i64, String)>()
            .map_err(backend)?
            .map(|r| r.map(|(e, h)| (e.max(0) as u64, h)).map_err(backend))
            .collect()
    }
}
