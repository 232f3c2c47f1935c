//! Whether the nodes of a cluster agree on who owns what: the evidence a drill keeps about
//! placement over time, and the check it makes once the cluster has settled. Pure: the
//! drill reads each node's `GET /admin/cluster` and hands the answers here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One node's view of the placement at one moment, as its admin port reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodePlacement {
    /// Seconds since the run started when it was read.
    pub t: f64,
    /// The node's name.
    pub node: String,
    /// The roster epoch of its view.
    pub epoch: u64,
    /// The fingerprint of its placement (epoch and every shard's owner), hex.
    pub digest: String,
    /// The shards it owns.
    pub owned: Vec<u32>,
    /// How many shards the cluster has.
    pub shards: u32,
    /// The shards whose delivery leases it holds; `None` from a node that does not say.
    #[serde(default)]
    pub held: Option<Vec<u32>>,
}

impl NodePlacement {
    /// From a `/admin/cluster` answer read at `t`; `None` if it lacks a field.
    pub fn from_admin(t: f64, view: &Value) -> Option<Self> {
        Some(Self {
            t,
            node: view["node"].as_str()?.to_owned(),
            epoch: view["epoch"].as_u64()?,
            digest: view["digest"].as_str()?.to_owned(),
            owned: view["owned"]
                .as_array()?
                .iter()
                .map(|s| s.as_u64().and_then(|s| u32::try_from(s).ok()))
                .collect::<Option<_>>()?,
            shards: u32::try_from(view["shards"].as_u64()?).ok()?,
            held: view["held"].as_array().and_then(|held| {
                held.iter()
                    .map(|s| s.as_u64().and_then(|s| u32::try_from(s).ok()))
                    .collect()
            }),
        })
    }
}

/// Whether `views` (one per live node, read at about the same time) describe one placement
/// in which every shard has exactly one owner, and every node holds the delivery leases of
/// exactly the shards it owns (so each shard's lease has one live holder); if not, what is
/// wrong, for a person.
pub fn agreement(views: &[NodePlacement]) -> Result<(), String> {
    let Some(first) = views.first() else {
        return Err("no node answered".into());
    };
    let mut problems = Vec::new();
    let epochs: BTreeMap<u64, Vec<&str>> = views.iter().fold(BTreeMap::new(), |mut m, v| {
        m.entry(v.epoch).or_default().push(v.node.as_str());
        m
    });
    if epochs.len() > 1 {
        problems.push(format!("epochs differ: {epochs:?}"));
    }
    let digests: BTreeMap<&str, Vec<&str>> = views.iter().fold(BTreeMap::new(), |mut m, v| {
        m.entry(v.digest.as_str())
            .or_default()
            .push(v.node.as_str());
        m
    });
    if digests.len() > 1 {
        problems.push(format!("placement digests differ: {digests:?}"));
    }
    let mut owners: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for v in views {
        for s in &v.owned {
            owners.entry(*s).or_default().push(v.node.as_str());
        }
    }
    let unowned = (0..first.shards)
        .filter(|s| !owners.contains_key(s))
        .count();
    let shared: Vec<_> = owners.iter().filter(|(_, o)| o.len() > 1).collect();
    if unowned > 0 {
        problems.push(format!(
            "{unowned} of {} shards owned by no live node",
            first.shards
        ));
    }
    if !shared.is_empty() {
        problems.push(format!(
            "{} shards owned by more than one node, e.g. {:?}",
            shared.len(),
            shared.first()
        ));
    }
    for v in views {
        if let Some(held) = &v.held {
            let mut held = held.clone();
            let mut owned = v.owned.clone();
            held.sort_unstable();
            owned.sort_unstable();
            if held != owned {
                problems.push(format!(
                    "{} holds the leases of {} shards but owns {} (held {:?}, owned {:?})",
                    v.node,
                    held.len(),
                    owned.len(),
                    held,
                    owned
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn view(node: &str, epoch: u64, digest: &str, owned: &[u32]) -> NodePlacement {
        NodePlacement {
            t: 0.0,
            node: node.into(),
            epoch,
            digest: digest.into(),
            owned: owned.to_vec(),
            shards: 4,
            held: Some(owned.to_vec()),
        }
    }

    #[test]
    fn one_placement_with_one_owner_per_shard_agrees() {
        let views = [view("a", 3, "ab", &[0, 2]), view("b", 3, "ab", &[1, 3])];
        assert_eq!(agreement(&views), Ok(()));
    }

    #[test]
    fn every_kind_of_disagreement_is_named() {
        let split = [view("a", 3, "ab", &[0, 1]), view("b", 4, "cd", &[1, 2])];
        let why = agreement(&split).unwrap_err();
        assert!(why.contains("epochs differ"), "{why}");
        assert!(why.contains("digests differ"), "{why}");
        assert!(why.contains("1 of 4 shards owned by no live node"), "{why}");
        assert!(
            why.contains("1 shards owned by more than one node"),
            "{why}"
        );
        assert!(agreement(&[]).is_err());
    }

    #[test]
    fn a_node_holding_other_leases_than_it_owns_is_named() {
        let mut lagging = view("b", 3, "ab", &[1, 3]);
        lagging.held = Some(vec![1]);
        let why = agreement(&[view("a", 3, "ab", &[0, 2]), lagging.clone()]).unwrap_err();
        assert!(
            why.contains("b holds the leases of 1 shards but owns 2"),
            "{why}"
        );
        lagging.held = None;
        assert_eq!(agreement(&[view("a", 3, "ab", &[0, 2]), lagging]), Ok(()));
    }

    #[test]
    fn admin_answers_parse() {
        let answer = serde_json::json!({
            "node": "node-1", "epoch": 7, "digest": "00aa", "owned": [1, 5], "shards": 8,
            "held": [1], "nodes": [],
        });
        let v = NodePlacement::from_admin(2.5, &answer).unwrap();
        assert_eq!(
            (v.epoch, v.owned.as_slice(), v.shards),
            (7, [1, 5].as_slice(), 8)
        );
        assert_eq!(v.held, Some(vec![1]));
        assert!(NodePlacement::from_admin(0.0, &serde_json::json!({"node": "x"})).is_none());
    }
}
