//! The roster of separate relay processes, kept in the CQL database they already share.
//!
//! No home-made consensus and no extra service: liveness and epochs come from two things
//! Cassandra-family databases already do well.
//!
//! - **Liveness is a TTL.** Each node writes its own row in `roster` with a TTL from the
//!   failure-detection timeout ([`row_ttl_secs`]) and rewrites it on every heartbeat. A
//!   node that stops (SIGKILL, power loss, partition) stops rewriting; its row disappears
//!   by itself after the timeout. Nobody has to notice and delete it, so
//!   [`Roster::expire`] has nothing to do.
//! - **Epochs are a compare-and-set.** `roster_epoch` holds one row per cluster: the epoch
//!   and a digest of the rows it describes. A node whose read of the rows gives another
//!   digest advances the epoch with a lightweight transaction (`IF epoch = e`, Paxos in the
//!   database); if another node won the race it reads again. Every node thus reports the
//!   same epoch for the same rows, and epochs only grow — what placement and the client's
//!   redirect chain need.
//!
//! Reads of the epoch use LOCAL_SERIAL so they see the latest transaction; row reads and
//! writes use the session's LOCAL_QUORUM.
//!
//! **One process per name.** Each process writes a fresh *incarnation* (its start time in
//! milliseconds and a random tag) into its rows. A process joining under a name whose row
//! another incarnation keeps rewriting is refused ([`RosterError::NameInUse`]); a row left
//! by a predecessor that died lapses within the TTL, which a restart waits out. Two that
//! joined at the same moment see each other's incarnation in the row: the later one gives
//! way at its next heartbeat.
//!
//! A row that does not parse (written by a newer or broken version, or by hand) is left
//! out of the snapshot and counted ([`Roster::rows_unreadable`]), with a warning when the set
//! of such rows changes. It used to fail every node's snapshot, which froze every view.
//! Every node skips the same rows, so they still agree on the rows an epoch describes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::cql;
use super::roster::{LINE_REPORT_LIFE, NodeInfo, NodeState, Roster, RosterError, RosterSnapshot};
use crate::tls::Fingerprint;

/// How many times a snapshot tries to settle the epoch before giving up.
const EPOCH_ATTEMPTS: usize = 5;

fn backend(e: impl std::fmt::Display) -> RosterError {
    RosterError::Backend(format!("cql roster: {e}"))
}

/// A roster in the CQL keyspace of the mailbox store; see the module docs.
pub struct CqlRoster {
    session: Arc<Session>,
    cluster: String,
    ttl_secs: i32,
    /// The rows this process wrote, so a heartbeat can rewrite them whole.
    mine: Mutex<HashMap<String, NodeInfo>>,
    /// Rows left out of the last read because they do not parse: how many, and why (to
    /// warn once per change, not once per read).
    skipped: AtomicU64,
    skipped_last: Mutex<Vec<String>>,
    write: PreparedStatement,
    delete: PreparedStatement,
    rows: PreparedStatement,
    /// This process's incarnation (see the module docs).
    incarnation: String,
    /// A name of this process's that an older incarnation also writes: it gives way.
    usurped: Mutex<Option<(String, String)>>,
    /// One row's incarnation and the write time of its state.
    writer: PreparedStatement,
    epoch: PreparedStatement,
    first_epoch: PreparedStatement,
    next_epoch: PreparedStatement,
    /// The line board (see [`Roster::publish_line`]): one row per node, with a TTL.
    write_line: PreparedStatement,
    lines: PreparedStatement,
}

impl std::fmt::Debug for CqlRoster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlRoster")
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl CqlRoster {
    /// Creates the roster tables in `keyspace` if missing (the keyspace must exist: the
    /// mailbox store creates it) and prepares the statements. Rows live at least
    /// `failure_timeout` after their last heartbeat, and at most a second or two more
    /// (`row_ttl_secs`). `cluster` names the cluster within the keyspace.
    pub async fn connect(
        session: Arc<Session>,
        keyspace: &str,
        cluster: &str,
        failure_timeout: Duration,
    ) -> Result<Self, RosterError> {
        let ks = keyspace;
        let ddl = [
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.roster (cluster text, name text, address text, \
                 fingerprint blob, region text, weight int, state text, incarnation text, \
                 PRIMARY KEY ((cluster), name))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.roster_epoch (cluster text PRIMARY KEY, \
                 epoch bigint, digest blob)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.line_board (cluster text, name text, \
                 report blob, PRIMARY KEY ((cluster), name))"
            ),
        ];
        cql::create_tables(&session, &ddl).await.map_err(backend)?;
        add_incarnation_column(&session, ks).await?;
        session.await_schema_agreement().await.map_err(backend)?;
        let prepare = |cql: String| {
            let session = session.clone();
            async move { cql::prepare(&session, cql).await.map_err(backend) }
        };
        let mut epoch = prepare(format!(
            "SELECT epoch, digest FROM {ks}.roster_epoch WHERE cluster = ?"
        ))
        .await?;
        epoch.set_consistency(Consistency::LocalSerial);
        let mut write = prepare(format!(
            "INSERT INTO {ks}.roster (cluster, name, address, fingerprint, region, weight, \
             state, incarnation) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await?;
        write.set_is_idempotent(true);
        let mut write_line = prepare(format!(
            "INSERT INTO {ks}.line_board (cluster, name, report) VALUES (?, ?, ?) USING TTL {}",
            LINE_REPORT_LIFE.as_secs()
        ))
        .await?;
        write_line.set_is_idempotent(true);
        let ttl_secs = row_ttl_secs(failure_timeout);
        Ok(Self {
            cluster: cluster.to_owned(),
            ttl_secs,
            mine: Mutex::default(),
            skipped: AtomicU64::new(0),
            skipped_last: Mutex::default(),
            incarnation: new_incarnation(),
            usurped: Mutex::default(),
            writer: prepare(format!(
                "SELECT incarnation, WRITETIME(state) FROM {ks}.roster \
                 WHERE cluster = ? AND name = ?"
            ))
            .await?,
            write,
            delete: prepare(format!(
                "DELETE FROM {ks}.roster WHERE cluster = ? AND name = ?"
            ))
            .await?,
            rows: prepare(format!(
                "SELECT name, address, fingerprint, region, weight, state, incarnation \
                 FROM {ks}.roster \
                 WHERE cluster = ?"
            ))
            .await?,
            epoch,
            first_epoch: prepare(format!(
                "INSERT INTO {ks}.roster_epoch (cluster, epoch, digest) VALUES (?, 1, ?) \
                 IF NOT EXISTS"
            ))
            .await?,
            next_epoch: prepare(format!(
                "UPDATE {ks}.roster_epoch SET epoch = ?, digest = ? WHERE cluster = ? \
                 IF epoch = ?"
            ))
            .await?,
            write_line,
            lines: prepare(format!(
                "SELECT name, report FROM {ks}.line_board WHERE cluster = ?"
            ))
            .await?,
            session,
        })
    }

    fn mine(&self) -> MutexGuard<'_, HashMap<String, NodeInfo>> {
        // Plain inserts and removals; a panic elsewhere cannot leave it half-changed.
        self.mine.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn write_row(&self, node: &NodeInfo) -> Result<(), RosterError> {
        let values = (
            &self.cluster,
            &node.name,
            node.address.to_string(),
            node.fingerprint.0.as_slice(),
            &node.region,
            node.weight.min(i32::MAX as u32) as i32,
            node.state.as_str(),
            &self.incarnation,
            self.ttl_secs,
        );
        self.session
            .execute_unpaged(&self.write, values)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Changes this process's row for `name` and writes it.
    async fn rewrite(&self, name: &str, f: impl FnOnce(&mut NodeInfo)) -> Result<(), RosterError> {
        let node = {
            let mut mine = self.mine();
            let node = mine
                .get_mut(name)
                .ok_or_else(|| RosterError::Unknown(name.to_owned()))?;
            f(node);
            node.clone()
        };
        self.write_row(&node).await
    }

    async fn read_rows(&self) -> Result<Vec<NodeInfo>, RosterError> {
        type Columns = (String, String, Vec<u8>, String, i32, String, Option<String>);
        let result = self
            .session
            .execute_unpaged(&self.rows, (&self.cluster,))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?;
        let mut nodes = Vec::new();
        let mut bad = Vec::new();
        for row in result.rows::<Columns>().map_err(backend)? {
            let parsed = row.map_err(|e| e.to_string()).and_then(
                |(name, address, fingerprint, region, weight, state, incarnation)| {
                    self.check_incarnation(&name, incarnation);
                    parse_row(&name, &address, &fingerprint, region, weight, &state)
                        .map_err(|what| format!("row {name:?} has a bad {what}"))
                },
            );
            match parsed {
                Ok(node) => nodes.push(node),
                Err(why) => bad.push(why),
            }
        }
        self.skipped.store(bad.len() as u64, Ordering::Relaxed);
        let mut last = self.skipped_last.lock().unwrap_or_else(|p| p.into_inner());
        if *last != bad {
            if !bad.is_empty() {
                tracing::warn!(rows = ?bad, "roster rows that do not parse are left out");
            }
            *last = bad;
        }
        drop(last);
        // Clustering order is by name already; sorting keeps the digest independent of it.
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// Notes a row of this process's names written by another incarnation: an older one
    /// keeps the name (this process gives way at its next heartbeat); a newer one will.
    fn check_incarnation(&self, name: &str, incarnation: Option<String>) {
        let Some(other) = incarnation.filter(|i| *i != self.incarnation) else {
            return;
        };
        if !self.mine().contains_key(name) {
            return;
        }
        if other < self.incarnation {
            let mut usurped = self.usurped.lock().unwrap_or_else(|p| p.into_inner());
            usurped.get_or_insert((name.to_owned(), other));
        } else {
            tracing::warn!(
                name,
                other = %other,
                "a later process writes this node's row; it will give way"
            );
        }
    }

    /// Who last wrote `name`'s row (its incarnation, if the row has one) and when
    /// (microseconds); `None` if there is no row.
    async fn writer_of(&self, name: &str) -> Result<Option<(Option<String>, i64)>, RosterError> {
        let row = self
            .session
            .execute_unpaged(&self.writer, (&self.cluster, name))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?
            .maybe_first_row::<(Option<String>, Option<i64>)>()
            .map_err(backend)?;
        Ok(row.map(|(incarnation, at)| (incarnation, at.unwrap_or(0))))
    }

    /// Makes sure no other live process uses `name`: a row another incarnation wrote is
    /// watched for up to its TTL (and a second); if it is rewritten meanwhile, its writer
    /// is alive and the name is in use; if it lapses, its writer died and the name is free.
    async fn claim_name(&self, name: &str) -> Result<(), RosterError> {
        let Some((other, first)) = self.writer_of(name).await? else {
            return Ok(());
        };
        if other.as_deref() == Some(self.incarnation.as_str()) {
            return Ok(());
        }
        let by = other.unwrap_or_else(|| "an earlier version".to_owned());
        let until = tokio::time::Instant::now()
            + Duration::from_secs(self.ttl_secs as u64)
            + Duration::from_secs(1);
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match self.writer_of(name).await? {
                None => return Ok(()),
                Some((_, at)) if at > first => {
                    return Err(RosterError::NameInUse {
                        name: name.to_owned(),
                        by,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The stored epoch and the digest it describes, if any.
    async fn read_epoch(&self) -> Result<Option<(u64, Vec<u8>)>, RosterError> {
        let result = self
            .session
            .execute_unpaged(&self.epoch, (&self.cluster,))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?;
        let row = result
            .maybe_first_row::<(i64, Vec<u8>)>()
            .map_err(backend)?;
        Ok(row.map(|(epoch, digest)| (epoch.max(0) as u64, digest)))
    }

    /// Tries to move the epoch from `current` (none: no row yet) to describe `digest`.
    async fn advance(&self, current: Option<u64>, digest: &[u8]) -> Result<(), RosterError> {
        let result = match current {
            None => {
                self.session
                    .execute_unpaged(&self.first_epoch, (&self.cluster, digest))
                    .await
            }
            Some(epoch) => {
                let values = (epoch as i64 + 1, digest, &self.cluster, epoch as i64);
                self.session.execute_unpaged(&self.next_epoch, values).await
            }
        };
        // Whether it applied does not matter: the caller reads again either way.
        result.map_err(backend)?;
        Ok(())
    }
}

/// The TTL of a roster row (whole seconds) for a node `failure_timeout` may not outlive
/// silent: the timeout rounded up, and one second more.
///
/// Cassandra counts a TTL from the whole second the write landed in, so a row written with
/// a TTL of n seconds lapses between n − 1 and n seconds later. With n the timeout itself, a
/// row written late in a second could lapse almost a second early: with a 1 s timeout,
/// milliseconds after a heartbeat, so the others saw a live node come and go (a roster test
/// failed once in 18 runs: a row missing between two heartbeats 200 ms apart let a second
/// process take a live process's name). Worse, the others could take the leases of a node
/// still within its tenure (up to the timeout less a third after its last heartbeat),
/// which is what tenure exists to prevent. The extra second keeps every row alive for at
/// least the timeout.
fn row_ttl_secs(failure_timeout: Duration) -> i32 {
    let whole = failure_timeout.as_millis().div_ceil(1000).clamp(1, 3600);
    (whole + 1) as i32
}

/// A fresh incarnation: this moment in milliseconds (zero-padded, so that an earlier
/// start sorts first) and a random tag.
fn new_incarnation() -> String {
    use ring::rand::SecureRandom;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut tag = [0u8; 4];
    // Without randomness the start time alone still orders processes.
    let _ = ring::rand::SystemRandom::new().fill(&mut tag);
    format!("{now_ms:015}-{}", hex::encode(tag))
}

/// Whether `ks.roster` has the `incarnation` column.
async fn has_incarnation_column(session: &Session, ks: &str) -> Result<bool, RosterError> {
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? \
             AND table_name = 'roster' AND column_name = 'incarnation'",
            (ks,),
        )
        .await
        .map_err(backend)?
        .into_rows_result()
        .map_err(backend)?;
    Ok(rows.rows_num() > 0)
}

/// Adds the `incarnation` column to a roster table made before it existed.
async fn add_incarnation_column(session: &Session, ks: &str) -> Result<(), RosterError> {
    if has_incarnation_column(session, ks).await? {
        return Ok(());
    }
    let added = session
        .query_unpaged(format!("ALTER TABLE {ks}.roster ADD incarnation text"), ())
        .await;
    // Another node may have added it a moment ago.
    match added {
        Ok(_) => Ok(()),
        Err(_) if has_incarnation_column(session, ks).await? => Ok(()),
        Err(e) => Err(backend(e)),
    }
}

/// One roster row, or which of its columns is bad.
fn parse_row(
    name: &str,
    address: &str,
    fingerprint: &[u8],
    region: String,
    weight: i32,
    state: &str,
) -> Result<NodeInfo, &'static str> {
    let address: SocketAddr = address.parse().map_err(|_| "address")?;
    let fingerprint = Fingerprint(fingerprint.try_into().map_err(|_| "fingerprint")?);
    let state = match state {
        "active" => NodeState::Active,
        "draining" => NodeState::Draining,
        _ => return Err("state"),
    };
    let weight = u32::try_from(weight).map_err(|_| "weight")?;
    if name.is_empty() || region.is_empty() {
        return Err("name or region");
    }
    Ok(NodeInfo {
        name: name.to_owned(),
        address,
        fingerprint,
        region,
        weight,
        state,
    })
}

/// What an epoch describes: every field of every row, in name order.
pub(crate) fn digest(nodes: &[NodeInfo]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for n in nodes {
        for field in [
            n.name.as_bytes(),
            n.address.to_string().as_bytes(),
            &n.fingerprint.0,
            n.region.as_bytes(),
            &n.weight.to_be_bytes(),
            n.state.as_str().as_bytes(),
        ] {
            ctx.update(&(field.len() as u32).to_be_bytes());
            ctx.update(field);
        }
    }
    ctx.finish().as_ref().to_vec()
}

#[async_trait]
impl Roster for CqlRoster {
    async fn join(&self, mut node: NodeInfo) -> Result<(), RosterError> {
        if !self.mine().contains_key(&node.name) {
            self.claim_name(&node.name).await?;
        }
        node.state = NodeState::Active;
        self.mine().insert(node.name.clone(), node.clone());
        self.write_row(&node).await
    }

    /// Rewrites the row with a fresh TTL. A row that had already expired comes back, which
    /// is the same as joining again.
    async fn heartbeat(&self, name: &str) -> Result<(), RosterError> {
        let usurped = self
            .usurped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((taken, by)) = usurped.filter(|(n, _)| n == name) {
            return Err(RosterError::NameInUse { name: taken, by });
        }
        self.rewrite(name, |_| {}).await
    }

    async fn drain(&self, name: &str) -> Result<(), RosterError> {
        self.rewrite(name, |n| n.state = NodeState::Draining).await
    }

    async fn leave(&self, name: &str) -> Result<(), RosterError> {
        self.mine().remove(name);
        self.session
            .execute_unpaged(&self.delete, (&self.cluster, name))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn publish_line(&self, name: &str, report: Vec<u8>) -> Result<(), RosterError> {
        self.session
            .execute_unpaged(&self.write_line, (&self.cluster, name, report))
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn line_board(&self) -> Result<Vec<(String, Vec<u8>)>, RosterError> {
        let result = self
            .session
            .execute_unpaged(&self.lines, (&self.cluster,))
            .await
            .map_err(backend)?
            .into_rows_result()
            .map_err(backend)?;
        result
            .rows::<(String, Vec<u8>)>()
            .map_err(backend)?
            .map(|row| row.map_err(backend))
            .collect()
    }

    fn rows_unreadable(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Nothing to do: a silent node's row expires by its TTL.
    async fn expire(&self, _timeout: Duration) -> Result<Vec<String>, RosterError> {
        Ok(Vec::new())
    }

    /// The rows and the epoch that describes them, or [`RosterError::Unsettled`] if the rows
    /// kept changing. Never rows under an epoch that describes others: a node that took
    /// such a pair kept its view while every other node computed another one at the same
    /// epoch, and a view is recomputed only when the epoch moves, so two nodes could each
    /// send clients to the other, or leave a shard to nobody, until the next change.
    async fn snapshot(&self) -> Result<RosterSnapshot, RosterError> {
        for _ in 0..EPOCH_ATTEMPTS {
            let nodes = self.read_rows().await?;
            let digest = digest(&nodes);
            let stored = self.read_epoch().await?;
            if let Some((epoch, d)) = &stored
                && *d == digest
            {
                return Ok(RosterSnapshot {
                    epoch: *epoch,
                    nodes,
                });
            }
            self.advance(stored.as_ref().map(|(e, _)| *e), &digest)
                .await?;
        }
        // The rows keep changing under us (nodes joining at this very moment); the caller
        // keeps the view it has, and the next heartbeat tries again.
        Err(RosterError::Unsettled(EPOCH_ATTEMPTS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_lives_a_second_longer_than_the_timeout_rounded_up() {
        assert_eq!(row_ttl_secs(Duration::from_millis(1000)), 2);
        assert_eq!(row_ttl_secs(Duration::from_millis(1500)), 3);
        assert_eq!(row_ttl_secs(Duration::from_millis(3000)), 4);
        assert_eq!(row_ttl_secs(Duration::ZERO), 2);
    }
}
