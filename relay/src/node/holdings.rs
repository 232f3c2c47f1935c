//! The shards whose leases this node's delivery worker holds, and how far it got in each:
//! the worker's bookkeeping, without I/O (see `delivery` and `cluster::lease`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use levee_sharding::ShardId;
use tokio::time::Instant;

use crate::cluster::Lease;

/// One held lease.
#[derive(Debug)]
pub(crate) struct Held {
    pub lease: Lease,
    /// The next offset after the last record stored, if any was (or the lease's position).
    pub next: Option<u64>,
    /// The position last committed to the lease, and when.
    committed: Option<(u64, Instant)>,
}

/// What the worker holds and what it is asking for; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    held: BTreeMap<ShardId, Held>,
    /// Shards placement gave this node whose lease it has not got yet: since when it asks.
    asking: HashMap<ShardId, Instant>,
}

impl Holdings {
    /// The shards held, in order (what the log consumer should read).
    pub fn shards(&self) -> Vec<ShardId> {
        self.held.keys().copied().collect()
    }

    /// The lease held for `shard`.
    pub fn lease(&self, shard: ShardId) -> Option<&Lease> {
        self.held.get(&shard).map(|h| &h.lease)
    }

    /// Which of `owned` (what placement gives this node) to ask for: those not held.
    /// Forgets requests for shards no longer owned.
    pub fn wanted(&mut self, owned: &[ShardId]) -> Vec<ShardId> {
        self.asking.retain(|s, _| owned.contains(s));
        owned
            .iter()
            .filter(|s| !self.held.contains_key(s))
            .copied()
            .collect()
    }

    /// Held shards that placement no longer gives this node.
    pub fn surplus(&self, owned: &[ShardId]) -> Vec<ShardId> {
        self.held
            .keys()
            .filter(|s| !owned.contains(s))
            .copied()
            .collect()
    }

    /// How long this node has been asking for `shard` (starting now if it was not).
    pub fn waited(&mut self, shard: ShardId, now: Instant) -> Duration {
        now - *self.asking.entry(shard).or_insert(now)
    }

    /// A lease taken.
    pub fn hold(&mut self, lease: Lease) {
        self.asking.remove(&lease.shard);
        let next = lease.position;
        self.held.insert(
            lease.shard,
            Held {
                next,
                committed: next.map(|n| (n, Instant::now())),
                lease,
            },
        );
    }

    /// Stops holding `shard`; what was held, to release.
    pub fn let_go(&mut self, shard: ShardId) -> Option<Held> {
        self.held.remove(&shard)
    }

    /// Stops holding everything (the node's tenure ran out: nothing is its to release).
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// A later holder took `shard`. If placement still gives it this node, it asks again,
    /// waiting afresh for the taker to let go (see `cluster::claim`): the two views
    /// disagreed for a moment, and the taker's next one settles it. (Not asking again at
    /// all until the view moved left a shard nobody delivered when the taker's view was
    /// the stale one: it released the shard, and the view had already settled.)
    pub fn fence(&mut self, shard: ShardId, now: Instant) {
        self.held.remove(&shard);
        self.asking.insert(shard, now);
    }

    /// The record at `offset` of `shard` is stored.
    pub fn stored(&mut self, shard: ShardId, offset: u64) {
        if let Some(h) = self.held.get_mut(&shard) {
            h.next = Some(h.next.map_or(offset + 1, |n| n.max(offset + 1)));
        }
    }

    /// Positions to commit now: shards that moved on since their last commit, at most once
    /// per `interval` each (a commit is a Paxos round; re-reading a second of records after
    /// a failover costs less, since the store recognises them).
    pub fn due(&self, now: Instant, interval: Duration) -> Vec<(Lease, u64)> {
        self.held
            .values()
            .filter_map(|h| {
                let next = h.next?;
                match h.committed {
                    Some((c, at)) if c >= next || now - at < interval => None,
                    _ => Some((h.lease.clone(), next)),
                }
            })
            .collect()
    }

    /// `next` was committed to `shard`'s lease at `now`.
    pub fn committed(&mut self, shard: ShardId, next: u64, now: Instant) {
        if let Some(h) = self.held.get_mut(&shard) {
            h.committed = Some((next, now));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lease(shard: ShardId, position: Option<u64>) -> Lease {
        Lease {
            shard,
            epoch: 1,
            position,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn positions_are_committed_once_per_interval_and_only_when_they_moved() {
        let second = Duration::from_secs(1);
        let mut h = Holdings::default();
        h.hold(lease(1, Some(5)));
        h.hold(lease(2, None));
        assert!(
            h.due(Instant::now(), second).is_empty(),
            "nothing moved yet"
        );
        h.stored(1, 9);
        h.stored(2, 0);
        // Shard 2 was never committed: due at once. Shard 1 was, as it was taken.
        let due = h.due(Instant::now(), second);
        assert_eq!(due, vec![(lease(2, None), 1)]);
        h.committed(2, 1, Instant::now());
        tokio::time::advance(second).await;
        let due = h.due(Instant::now(), second);
        assert_eq!(due, vec![(lease(1, Some(5)), 10)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_shard_is_asked_for_again_with_a_fresh_wait() {
        let mut h = Holdings::default();
        let start = Instant::now();
        assert_eq!(h.waited(3, start), Duration::ZERO);
        h.hold(lease(3, None));
        assert_eq!(h.wanted(&[3, 4]), vec![4]);
        tokio::time::advance(Duration::from_secs(10)).await;
        h.fence(3, Instant::now());
        assert_eq!(h.wanted(&[3, 4]), vec![3, 4]);
        assert_eq!(
            h.waited(3, Instant::now()),
            Duration::ZERO,
            "the wait starts again"
        );
        assert!(h.surplus(&[4]).is_empty());
    }
}
