//! One node's view of the cluster at one roster epoch: the placement, and where to send a
//! client whose mailbox lives elsewhere. Pure: built from a roster snapshot.

use std::collections::BTreeMap;

use levee_sharding::{
    MailboxId, Member, Membership, Placement, PlacementConfig, ShardId, shard_of,
};

use super::roster::{NodeInfo, NodeState, RosterSnapshot};

/// Where a mailbox is served, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Here.
    Local,
    /// On another node.
    Elsewhere(&'a NodeInfo),
    /// Nowhere: its shard is pinned to regions with no live node.
    Unavailable,
}

/// The placement at one epoch, from one node's side.
#[derive(Clone, Debug)]
pub struct ClusterView {
    me: String,
    placement: Placement,
    nodes: BTreeMap<String, NodeInfo>,
}

impl ClusterView {
    /// The view of node `me` from `snapshot`. Only active nodes get shards; a draining node
    /// is still listed (it answers its last clients) but owns nothing.
    pub fn compute(me: &str, snapshot: &RosterSnapshot, config: &PlacementConfig) -> Self {
        let members: Vec<Member> = snapshot
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Active)
            .map(|n| Member {
                name: n.name.clone(),
                weight: n.weight.max(1),
                region: n.region.clone(),
            })
            .collect();
        // Names are unique in a roster and weights are at least 1, so the list is valid;
        // should a backend ever break that, owning nothing is the safe reading.
        let membership = Membership::new(snapshot.epoch, members)
            .unwrap_or_else(|_| Membership::new(snapshot.epoch, Vec::new()).expect("empty"));
        Self {
            me: me.to_owned(),
            placement: Placement::compute(&membership, config),
            nodes: snapshot
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.clone()))
                .collect(),
        }
    }

    /// The roster epoch this view was computed from.
    pub fn epoch(&self) -> u64 {
        self.placement.epoch()
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The nodes in the roster (active and draining).
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    /// A short fingerprint of the placement (epoch and every shard's owner), the same on
    /// every node that computed the same placement: nodes whose digests differ disagree on
    /// who owns what. 48 bits, so it fits a metric's float exactly.
    pub fn digest(&self) -> u64 {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.epoch().to_be_bytes());
        for shard in 0..self.placement.shards() {
            let owner = self.placement.owner(shard).map_or("", |m| m.name.as_str());
            ctx.update(&(owner.len() as u32).to_be_bytes());
            ctx.update(owner.as_bytes());
        }
        let hash = ctx.finish();
        let mut first = [0u8; 8];
        first[2..].copy_from_slice(&hash.as_ref()[..6]);
        u64::from_be_bytes(first)
    }

    /// The shards this node owns.
    pub fn owned(&self) -> Vec<ShardId> {
        self.placement.owned_by(&self.me)
    }

    /// Where `mailbox` is served.
    pub fn route(&self, mailbox: &MailboxId) -> Route<'_> {
        self.route_shard(shard_of(mailbox, self.placement.shards()))
    }

    /// Where `shard` is served.
    pub fn route_shard(&self, shard: ShardId) -> Route<'_> {
        match self.placement.owner(shard) {
            Err(_) => Route::Unavailable,
            Ok(owner) if owner.name == self.me => Route::Local,
            Ok(owner) => match self.nodes.get(&owner.name) {
                Some(info) => Route::Elsewhere(info),
                // Placement only uses roster rows, so the owner is always listed.
                None => Route::Unavailable,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    use super::*;
    use crate::tls::Fingerprint;

    fn node(name: &str, region: &str, state: NodeState) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            fingerprint: Fingerprint([0; 32]),
            region: region.into(),
            weight: 1,
            state,
        }
    }

    fn config(shards: u32) -> PlacementConfig {
        PlacementConfig {
            shards,
            ..PlacementConfig::default()
        }
    }

    #[test]
    fn every_shard_has_exactly_one_local_view() {
        let snapshot = RosterSnapshot {
            epoch: 7,
            nodes: vec![
                node("a", "eu", NodeState::Active),
                node("b", "eu", NodeState::Active),
                node("c", "us", NodeState::Active),
            ],
        };
        let views: Vec<ClusterView> = ["a", "b", "c"]
            .iter()
            .map(|me| ClusterView::compute(me, &snapshot, &config(64)))
            .collect();
        for shard in 0..64 {
            let local = views
                .iter()
                .filter(|v| v.route_shard(shard) == Route::Local)
                .count();
            assert_eq!(local, 1, "shard {shard}");
        }
        assert_eq!(views[0].epoch(), 7);
        // Every node computes the same placement, whose digest is therefore the same; a
        // different epoch or owner gives another.
        assert!(views.iter().all(|v| v.digest() == views[0].digest()));
        assert!(views[0].digest() < 1 << 48);
        let later = RosterSnapshot {
            epoch: 8,
            ..snapshot.clone()
        };
        assert_ne!(
            ClusterView::compute("a", &later, &config(64)).digest(),
            views[0].digest()
        );
        let fewer = RosterSnapshot {
            nodes: snapshot.nodes[..2].to_vec(),
            ..snapshot.clone()
        };
        assert_ne!(
            ClusterView::compute("a", &fewer, &config(64)).digest(),
            views[0].digest()
        );
        let owned: usize = views.iter().map(|v| v.owned().len()).sum();
        assert_eq!(owned, 64);
    }

    #[test]
    fn draining_nodes_own_nothing_and_pins_make_shards_unavailable() {
        let mut cfg = config(16);
        cfg.pins.insert(3, BTreeSet::from(["eu".to_string()]));
        let snapshot = RosterSnapshot {
            epoch: 1,
            nodes: vec![
                node("a", "eu", NodeState::Draining),
                node("b", "us", NodeState::Active),
            ],
        };
        let a = ClusterView::compute("a", &snapshot, &cfg);
        assert!(a.owned().is_empty());
        assert_eq!(a.route_shard(3), Route::Unavailable);
        match a.route_shard(4) {
            Route::Elsewhere(info) => assert_eq!(info.name, "b"),
            other => panic!("expected b, got {other:?}"),
        }
        let b = ClusterView::compute("b", &snapshot, &cfg);
        assert_eq!(b.owned().len(), 15);
        assert_eq!(b.route_shard(3), Route::Unavailable);
    }

    #[test]
    fn a_node_missing_from_the_roster_owns_nothing() {
        let snapshot = RosterSnapshot {
            epoch: 2,
            nodes: vec![node("b", "us", NodeState::Active)],
        };
        let gone = ClusterView::compute("a", &snapshot, &config(8));
        assert!(gone.owned().is_empty());
        assert!(matches!(gone.route_shard(0), Route::Elsewhere(_)));
    }
}
