//! Placement: which relay nodes serve which shards. Pure — no I/O, no clocks.
//!
//! Every node that sees the same [`Membership`] (same epoch, same members, in any order)
//! computes the same [`Placement`]:
//!
//! - **Weighted rendezvous hashing** ranks the members for each shard: member `m` scores
//!   `weight(m) / -ln(u)` with `u = hash(shard, m)` in (0, 1), highest first (the
//!   "logarithmic method" of weighted HRW). A member with twice the weight wins about twice
//!   as many shards, and adding or removing a member changes only the shards it wins or held.
//! - **Bounded loads** (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded
//!   Loads", as in HAProxy and Envoy): walking the shards in order, each goes to the first
//!   member in its ranking that holds fewer than `⌈(1+ε) · shards · weight / total weight⌉`
//!   shards. With `epsilon: None` there is no bound and placement is plain weighted HRW.
//! - **Replicas**: the owner and the next `replicas − 1` distinct members of the ranking.
//! - **Region rules**: a shard pinned to a set of regions ranks only members of those
//!   regions; if none is live the shard is [`Unavailable`], never placed elsewhere. When the
//!   members of a pinned region are all at their bound, a pinned shard still goes to the
//!   best of them: a pin is a rule, the bound is a preference.

use std::collections::{BTreeMap, BTreeSet};

use crate::ShardId;

/// A relay node as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// Unique, stable name (the node id).
    pub name: String,
    /// Relative capacity: a member of weight 2 gets about twice the shards of weight 1.
    pub weight: u32,
    /// The region it runs in.
    pub region: String,
}

impl Member {
    /// A member of weight 1.
    pub fn new(name: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            weight: 1,
            region: region.into(),
        }
    }
}

/// Why a membership was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    /// Two members share a name.
    #[error("two members are named {0:?}")]
    DuplicateName(String),
    /// A member has weight 0.
    #[error("member {0:?} has weight 0")]
    ZeroWeight(String),
}

/// The live members at one version (epoch) of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    epoch: u64,
    /// Sorted by name, so that the order members were listed in never matters.
    members: Vec<Member>,
}

impl Membership {
    /// Checks and normalises a member list.
    pub fn new(epoch: u64, mut members: Vec<Member>) -> Result<Self, MembershipError> {
        members.sort();
        for pair in members.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(MembershipError::DuplicateName(pair[0].name.clone()));
            }
        }
        if let Some(m) = members.iter().find(|m| m.weight == 0) {
            return Err(MembershipError::ZeroWeight(m.name.clone()));
        }
        Ok(Self { epoch, members })
    }

    /// The version of this member list.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members, sorted by name.
    pub fn members(&self) -> &[Member] {
        &self.members
    }
}

/// How to place shards.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementConfig {
    /// Number of shards (fixed for the life of a cluster's data).
    pub shards: u32,
    /// Copies of each shard: the owner plus `replicas − 1` successors.
    pub replicas: usize,
    /// Load bound: no member owns more than `⌈(1+ε)·average⌉` shards (weighted). `None`:
    /// no bound.
    pub epsilon: Option<f64>,
    /// Shards pinned to a set of regions.
    pub pins: BTreeMap<ShardId, BTreeSet<String>>,
}

impl Default for PlacementConfig {
    /// 256 shards, one copy, ε = 0.25, no pins.
    fn default() -> Self {
        Self {
            shards: 256,
            replicas: 1,
            epsilon: Some(0.25),
            pins: BTreeMap::new(),
        }
    }
}

/// A shard that cannot be placed: it is pinned to regions with no live member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shard {0} is pinned to regions with no live member")]
pub struct Unavailable(pub ShardId);

/// Which members serve each shard, for one membership epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    epoch: u64,
    members: Vec<Member>,
    /// Per shard: member indices, owner first; empty if unavailable.
    replicas: Vec<Vec<u32>>,
}

impl Placement {
    /// Computes the placement of `config.shards` shards over `membership`.
    pub fn compute(membership: &Membership, config: &PlacementConfig) -> Self {
        let members = membership.members();
        let total_weight: f64 = members.iter().map(|m| f64::from(m.weight)).sum();
        let capacity: Vec<u64> = members
            .iter()
            .map(|m| match config.epsilon {
                Some(eps) => ((1.0 + eps.max(0.0)) * f64::from(config.shards) * f64::from(m.weight)
                    / total_weight)
                    .ceil() as u64,
                None => u64::MAX,
            })
            .collect();
        let keys: Vec<u64> = members.iter().map(|m| fnv1a(m.name.as_bytes())).collect();
        let mut owned = vec![0u64; members.len()];
        let mut replicas = Vec::with_capacity(config.shards as usize);
        let mut ranking: Vec<(f64, u32)> = Vec::with_capacity(members.len());
        for shard in 0..config.shards {
            let pinned = config.pins.get(&shard);
            ranking.clear();
            ranking.extend(
                members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| pinned.is_none_or(|regions| regions.contains(&m.region)))
                    .map(|(i, m)| (score(shard, keys[i], m.weight), i as u32)),
            );
            // Highest score first; ties (practically impossible) broken by name order.
            ranking.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let Some(&(_, first)) = ranking.first() else {
                replicas.push(Vec::new());
                continue;
            };
            let owner = ranking
                .iter()
                .map(|&(_, i)| i)
                .find(|&i| owned[i as usize] < capacity[i as usize])
                .unwrap_or(first);
            owned[owner as usize] += 1;
            let mut copies = vec![owner];
            copies.extend(
                ranking
                    .iter()
                    .map(|&(_, i)| i)
                    .filter(|&i| i != owner)
                    .take(config.replicas.saturating_sub(1)),
            );
            replicas.push(copies);
        }
        Self {
            epoch: membership.epoch(),
            members: members.to_vec(),
            replicas,
        }
    }

    /// The membership epoch this placement was computed for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of shards.
    pub fn shards(&self) -> u32 {
        self.replicas.len() as u32
    }

    /// The members holding `shard`, owner first.
    ///
    /// # Panics
    /// If `shard` is not below [`shards`](Self::shards).
    pub fn replicas(&self, shard: ShardId) -> Result<Vec<&Member>, Unavailable> {
        let copies = &self.replicas[shard as usize];
        if copies.is_empty() {
            return Err(Unavailable(shard));
        }
        Ok(copies.iter().map(|&i| &self.members[i as usize]).collect())
    }

    /// The member that owns `shard`.
    pub fn owner(&self, shard: ShardId) -> Result<&Member, Unavailable> {
        self.replicas[shard as usize]
            .first()
            .map(|&i| &self.members[i as usize])
            .ok_or(Unavailable(shard))
    }

    /// The shards `name` owns, ascending.
    pub fn owned_by(&self, name: &str) -> Vec<ShardId> {
        (0..self.shards())
            .filter(|&s| self.owner(s).is_ok_and(|m| m.name == name))
            .collect()
    }

    /// Shards owned per member (members owning none included).
    pub fn load(&self) -> BTreeMap<&str, u32> {
        let mut load: BTreeMap<&str, u32> =
            self.members.iter().map(|m| (m.name.as_str(), 0)).collect();
        for shard in 0..self.shards() {
            if let Ok(m) = self.owner(shard) {
                *load.entry(m.name.as_str()).or_default() += 1;
            }
        }
        load
    }

    /// Shards whose owner differs between `self` and `next`: `(shard, from, to)`, with
    /// `None` for "unavailable". Both must have the same number of shards.
    pub fn moves<'a>(
        &'a self,
        next: &'a Placement,
    ) -> Vec<(ShardId, Option<&'a str>, Option<&'a str>)> {
        (0..self.shards().min(next.shards()))
            .filter_map(|s| {
                let from = self.owner(s).ok().map(|m| m.name.as_str());
                let to = next.owner(s).ok().map(|m| m.name.as_str());
                (from != to).then_some((s, from, to))
            })
            .collect()
    }
}

/// Weighted rendezvous score of a member for a shard.
fn score(shard: ShardId, member_key: u64, weight: u32) -> f64 {
    let h = mix(member_key ^ mix(u64::from(shard).wrapping_add(0x9e37_79b9_7f4a_7c15)));
    // 53 random bits → u in (0, 1), never 0 or 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// SplitMix64's finaliser: a fast, well-mixed, platform-independent 64-bit hash step.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a, 64 bit: a stable hash of a member's name (std's hasher is randomly seeded).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cluster(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::new(format!("node-{i}"), if i % 2 == 0 { "eu" } else { "us" }))
            .collect()
    }

    fn place(members: Vec<Member>, config: &PlacementConfig) -> Placement {
        Placement::compute(&Membership::new(1, members).expect("valid"), config)
    }

    fn unbounded() -> PlacementConfig {
        PlacementConfig {
            epsilon: None,
            ..PlacementConfig::default()
        }
    }

    #[test]
    fn memberships_are_checked() {
        let dup = vec![Member::new("a", "eu"), Member::new("a", "us")];
        assert_eq!(
            Membership::new(1, dup),
            Err(MembershipError::DuplicateName("a".into()))
        );
        let mut zero = Member::new("z", "eu");
        zero.weight = 0;
        assert_eq!(
            Membership::new(1, vec![zero]),
            Err(MembershipError::ZeroWeight("z".into()))
        );
    }

    #[test]
    fn weights_share_shards_proportionally() {
        let mut members = cluster(4);
        members[0].weight = 3;
        let p = place(
            members,
            &PlacementConfig {
                shards: 6000,
                ..unbounded()
            },
        );
        // Weight 3 of a total 6: about half.
        let heavy = f64::from(p.load()["node-0"]) / 6000.0;
        assert!((0.45..0.55).contains(&heavy), "{heavy}");
    }

    #[test]
    fn no_members_or_a_dead_region_means_unavailable() {
        let empty = place(Vec::new(), &PlacementConfig::default());
        assert_eq!(empty.owner(0), Err(Unavailable(0)));
        let mut config = PlacementConfig::default();
        config.pins.insert(7, BTreeSet::from(["ap".to_owned()]));
        let p = place(cluster(4), &config);
        assert_eq!(p.replicas(7), Err(Unavailable(7)));
        assert!(p.owner(8).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn same_members_in_any_order_give_the_same_placement(
            n in 1usize..20, seed in any::<u64>(), replicas in 1usize..4,
        ) {
            let config = PlacementConfig { replicas, ..PlacementConfig::default() };
            let members = cluster(n);
            let mut shuffled = members.clone();
            let len = shuffled.len();
            shuffled.rotate_left((seed as usize) % len);
            shuffled.reverse();
            prop_assert_eq!(place(members, &config), place(shuffled, &config));
        }

        #[test]
        fn replicas_are_distinct_and_as_many_as_asked(n in 1usize..20, replicas in 1usize..5) {
            let p = place(cluster(n), &PlacementConfig { replicas, ..PlacementConfig::default() });
            for s in 0..p.shards() {
                let names: BTreeSet<&str> =
                    p.replicas(s).expect("placed").iter().map(|m| m.name.as_str()).collect();
                prop_assert_eq!(names.len(), replicas.min(n));
            }
        }

        #[test]
        fn the_bound_always_holds(
            weights in proptest::collection::vec(1u32..5, 1..40),
            eps in 0.0f64..1.0,
            shards in 1u32..600,
        ) {
            let members: Vec<Member> = weights.iter().enumerate()
                .map(|(i, &w)| Member { weight: w, ..Member::new(format!("n{i}"), "eu") })
                .collect();
            let total: u32 = weights.iter().sum();
            let config = PlacementConfig { shards, epsilon: Some(eps), ..PlacementConfig::default() };
            let p = place(members.clone(), &config);
            for m in &members {
                let cap = ((1.0 + eps) * f64::from(shards) * f64::from(m.weight) / f64::from(total)).ceil();
                prop_assert!(f64::from(p.load()[m.name.as_str()]) <= cap);
            }
        }

        #[test]
        fn a_join_moves_shards_only_to_the_joiner(n in 1usize..30) {
            let before = place(cluster(n), &unbounded());
            let mut grown = cluster(n);
            grown.push(Member::new("joiner", "eu"));
            let after = place(grown, &unbounded());
            for (_, _, to) in before.moves(&after) {
                prop_assert_eq!(to, Some("joiner"));
            }
        }

        #[test]
        fn a_leave_moves_only_the_leavers_shards(n in 2usize..30, leaver in 0usize..30) {
            let leaver = leaver % n;
            let before = place(cluster(n), &unbounded());
            let mut shrunk = cluster(n);
            let gone = shrunk.remove(leaver).name;
            let after = place(shrunk, &unbounded());
            let moved = before.moves(&after);
            for (_, from, _) in &moved {
                prop_assert_eq!(*from, Some(gone.as_str()));
            }
            prop_assert_eq!(moved.len(), before.owned_by(&gone).len());
        }

        #[test]
        fn pinned_shards_stay_in_their_regions(n in 1usize..20, pinned in proptest::collection::btree_set(0u32..256, 0..40)) {
            let mut config = PlacementConfig { replicas: 2, ..PlacementConfig::default() };
            for &s in &pinned {
                config.pins.insert(s, BTreeSet::from(["eu".to_owned()]));
            }
            let p = place(cluster(n), &config);
            for &s in &pinned {
                for m in p.replicas(s).expect("node-0 is in eu") {
                    prop_assert_eq!(m.region.as_str(), "eu");
                }
            }
            // With every eu member gone, the pinned shards are unavailable, never moved to us.
            let us_only: Vec<Member> = cluster(n).into_iter().filter(|m| m.region == "us").collect();
            let p = place(us_only, &config);
            for &s in &pinned {
                prop_assert_eq!(p.owner(s), Err(Unavailable(s)));
            }
        }
    }
}
