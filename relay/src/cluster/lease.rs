//! Per-shard delivery leases with fencing tokens.
//!
//! Placement says which node *should* deliver a shard; a lease says which node *does*.
//! Each shard has one lease row: an epoch that only grows (the fencing token), the holder's
//! name, and the shard's committed log position (the next record to deliver). A node takes
//! the lease of a shard its view gives it by compare-and-set on the epoch; from then on its
//! commits of the shard's position are conditional on that epoch, so a node that lost the
//! lease (a zombie that slept through a failover, a node whose view lagged) cannot move the
//! position: its commit fails as [`LeaseError::Fenced`] and it stops reading the shard.
//!
//! When to take a lease someone else holds is [`claim`], a pure function: at once if the
//! holder released it or is gone from the roster (its heartbeats stopped, so its own tenure
//! ran out first: see `node::membership`), after a bounded wait if it is alive (it releases
//! as soon as its own view moves the shard away and its batch in hand is stored).
//!
//! [`LocalLeases`] keeps the leases of one process's nodes in memory (the embedded cluster);
//! [`CqlLeases`](super::CqlLeases) keeps them in the CQL database the nodes share.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use levee_sharding::ShardId;

/// A lease this node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The shard.
    pub shard: ShardId,
    /// The fencing token: the epoch this node took the lease at.
    pub epoch: u64,
    /// The shard's committed position as read just before the take (see
    /// [`ShardLeases::take`]): the next log offset to deliver. `None` if no holder ever
    /// committed one (the log's own committed offsets then say where to start).
    pub position: Option<u64>,
}

/// A shard's lease row as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRow {
    /// The latest epoch; 0 if the lease was never taken.
    pub epoch: u64,
    /// Who holds it; `None` once released (or never taken).
    pub holder: Option<String>,
    /// The committed position (see [`Lease::position`]).
    pub position: Option<u64>,
}

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node took the lease after this one: this holder must stop.
    #[error("the lease of shard {shard} at epoch {epoch} was taken by a later holder")]
    Fenced {
        /// The shard.
        shard: ShardId,
        /// The epoch this holder had.
        epoch: u64,
    },
    /// The backend failed.
    #[error("lease backend: {0}")]
    Backend(String),
}

/// Where the leases are kept. Every call is one round of the backend; the decision to take
/// a lease is the caller's ([`claim`]).
#[async_trait]
pub trait ShardLeases: Send + Sync + 'static {
    /// The lease row of `shard`, read linearizably (after every completed take or commit).
    async fn read(&self, shard: ShardId) -> Result<LeaseRow, LeaseError>;

    /// Takes the lease of `shard` for `holder` if its epoch is still `seen`'s (as read):
    /// the lease, at the next epoch, starting at `seen`'s position; `None` if someone else
    /// changed the epoch first. A commit the old holder made between the read and the take
    /// is not in that position: the new holder re-reads those records, which the store
    /// recognises as already stored. (Reading the position again after the take would be
    /// exact, at the cost of one more serial read per shard taken.)
    async fn take(
        &self,
        shard: ShardId,
        holder: &str,
        seen: &LeaseRow,
    ) -> Result<Option<Lease>, LeaseError>;

    /// Records that everything before `next` in the shard is stored, if `lease` is still
    /// current; [`LeaseError::Fenced`] if not.
    async fn commit(&self, lease: &Lease, next: u64) -> Result<(), LeaseError>;

    /// Gives the lease up (after a last commit of `next`, if given), if still current, so
    /// that the next owner need not wait for it. Fenced if not current: nothing to give up.
    async fn release(&self, lease: &Lease, next: Option<u64>) -> Result<(), LeaseError>;

    /// Every `(epoch, holder)` the shard's lease was taken at, in epoch order, as far back
    /// as it is kept (see each implementation): one holder per epoch, if leases work. For
    /// the drills' history check (`GET /admin/leases`), not for deciding anything.
    async fn history(&self, shard: ShardId) -> Result<Vec<(u64, String)>, LeaseError>;
}

/// What a node that placement gave a shard should do about its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Take it now: how it came free.
    Take(Taking),
    /// Its holder is alive and has not let go yet: ask again shortly.
    Wait,
}

/// Why a lease may be taken (for metrics and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taking {
    /// Never taken, or released.
    Free,
    /// This node held it (a restart under the same name, or it let go of its own copy
    /// when its tenure ran out).
    Own,
    /// The holder is gone from the roster.
    Absent,
    /// The holder is alive but did not let go within the patience: it is stuck or its view
    /// lags. Its commits fail from now on.
    Overdue,
}

impl Taking {
    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Taking::Free => "free",
            Taking::Own => "own",
            Taking::Absent => "absent",
            Taking::Overdue => "overdue",
        }
    }
}

/// Whether `me`, which placement gives the shard, takes its lease now.
///
/// `live` says whether a node is in this node's roster view; `waited` is how long this node
/// has been asking for this lease; `patience` bounds the wait for a live holder. A holder
/// that can read the roster releases within a batch of its view changing; one that cannot
/// demotes itself after the failure timeout and stops heartbeating, so its row lapses and
/// it is absent. A patience above the failure timeout therefore only overrides a holder
/// whose delivery is stuck, and the fencing token makes even that safe for the position.
pub fn claim(
    row: &LeaseRow,
    me: &str,
    live: impl Fn(&str) -> bool,
    waited: Duration,
    patience: Duration,
) -> Claim {
    match row.holder.as_deref() {
        None => Claim::Take(Taking::Free),
        Some(h) if h == me => Claim::Take(Taking::Own),
        Some(h) if !live(h) => Claim::Take(Taking::Absent),
        Some(_) if waited >= patience => Claim::Take(Taking::Overdue),
        Some(_) => Claim::Wait,
    }
}

/// Leases in memory, for the nodes of one process (the embedded cluster). Positions are
/// left to the log's own committed offsets, which the process shares. The history keeps
/// each shard's last `LOCAL_HISTORY` takes.
#[derive(Debug, Default)]
pub struct LocalLeases {
    rows: Mutex<HashMap<ShardId, LeaseRow>>,
    history: Mutex<HashMap<ShardId, VecDeque<(u64, String)>>>,
}

/// Takes per shard [`LocalLeases`] remembers: far more than a drill makes, and bounded
/// however long the process runs.
const LOCAL_HISTORY: usize = 64;

/// The guard of `m`: every change under these locks is one assignment or push, so a panic
/// elsewhere cannot leave a value half-written.
fn unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalLeases {
    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<ShardId, LeaseRow>> {
        unpoisoned(&self.rows)
    }

    /// Applies `f` to the row of `lease` if its epoch is still the lease's.
    fn if_current(&self, lease: &Lease, f: impl FnOnce(&mut LeaseRow)) -> Result<(), LeaseError> {
        let mut rows = self.rows();
        match rows.get_mut(&lease.shard) {
            Some(row) if row.epoch == lease.epoch => {
                f(row);
                Ok(())
            }
            _ => Err(LeaseError::Fenced {
                shard: lease.shard,
                epoch: lease.epoch,
            }),
        }
    }
}

#[async_trait]
impl ShardLeases for LocalLeases {
    async fn read(&self, shard: ShardId) -> Result<LeaseRow, LeaseError> {
        Ok(self.rows().get(&shard).cloned().unwrap_or_default())
    }

    async fn take(
        &self,
        shard: ShardId,
        holder: &str,
        seen: &LeaseRow,
    ) -> Result<Option<Lease>, LeaseError> {
        let mut rows = self.rows();
        let row = rows.entry(shard).or_default();
        if row.epoch != seen.epoch {
            return Ok(None);
        }
        row.epoch += 1;
        row.holder = Some(holder.to_owned());
        let mut history = unpoisoned(&self.history);
        let takes = history.entry(shard).or_default();
        if takes.len() == LOCAL_HISTORY {
            takes.pop_front();
        }
        takes.push_back((row.epoch, holder.to_owned()));
        Ok(Some(Lease {
            shard,
            epoch: row.epoch,
            position: seen.position,
        }))
    }

    async fn commit(&self, lease: &Lease, next: u64) -> Result<(), LeaseError> {
        self.if_current(lease, |row| row.position = Some(next))
    }

    async fn release(&self, lease: &Lease, next: Option<u64>) -> Result<(), LeaseError> {
        self.if_current(lease, |row| {
            row.holder = None;
            if next.is_some() {
                row.position = next;
            }
        })
    }

    async fn history(&self, shard: ShardId) -> Result<Vec<(u64, String)>, LeaseError> {
        let history = unpoisoned(&self.history);
        Ok(history
            .get(&shard)
            .map(|takes| takes.iter().cloned().collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(6);

    fn held_by(h: &str) -> LeaseRow {
        LeaseRow {
            epoch: 4,
            holder: Some(h.into()),
            position: Some(10),
        }
    }

    #[test]
    fn a_live_holder_is_waited_for_until_the_patience_runs_out() {
        let live = |n: &str| n == "b";
        let row = held_by("b");
        assert_eq!(
            claim(&row, "a", live, Duration::ZERO, PATIENCE),
            Claim::Wait
        );
        assert_eq!(
            claim(
                &row,
                "a",
                live,
                PATIENCE - Duration::from_millis(1),
                PATIENCE
            ),
            Claim::Wait
        );
        assert_eq!(
            claim(&row, "a", live, PATIENCE, PATIENCE),
            Claim::Take(Taking::Overdue)
        );
    }

    #[test]
    fn free_own_and_absent_leases_are_taken_at_once() {
        let live = |n: &str| n == "b";
        let zero = Duration::ZERO;
        assert_eq!(
            claim(&LeaseRow::default(), "a", live, zero, PATIENCE),
            Claim::Take(Taking::Free)
        );
        assert_eq!(
            claim(&held_by("a"), "a", live, zero, PATIENCE),
            Claim::Take(Taking::Own)
        );
        assert_eq!(
            claim(&held_by("c"), "a", live, zero, PATIENCE),
            Claim::Take(Taking::Absent)
        );
    }

    #[tokio::test]
    async fn a_holder_that_lost_its_lease_can_neither_commit_nor_release() {
        let leases = LocalLeases::default();
        let a = leases
            .take(3, "a", &LeaseRow::default())
            .await
            .unwrap()
            .unwrap();
        leases.commit(&a, 7).await.unwrap();
        // b takes over without a's release (a is gone from b's view, say).
        let row = leases.read(3).await.unwrap();
        let b = leases.take(3, "b", &row).await.unwrap().unwrap();
        assert_eq!((b.epoch, b.position), (2, Some(7)));
        // The zombie wakes up.
        assert!(matches!(
            leases.commit(&a, 9).await,
            Err(LeaseError::Fenced { shard: 3, epoch: 1 })
        ));
        assert!(leases.release(&a, Some(9)).await.is_err());
        assert_eq!(leases.read(3).await.unwrap().position, Some(7));
        // A take with a stale epoch loses the race.
        let stale = LeaseRow { epoch: 1, ..row };
        assert_eq!(leases.take(3, "c", &stale).await.unwrap(), None);
        leases.release(&b, Some(8)).await.unwrap();
        let row = leases.read(3).await.unwrap();
        assert_eq!((row.holder, row.position), (None, Some(8)));
    }
}
