//! The lease history check: at most one holder per shard per lease epoch, over every take a
//! node's `GET /admin/leases` reports (the shared lease table's history in a distributed
//! cluster). Pure: the drill reads the answer and hands it here.
//!
//! A take is a compare-and-set from one epoch to the next, so two holders of one epoch mean
//! two nodes both believed they alone delivered a shard: the fencing the leases exist for
//! failed. Gaps in the epochs are not failures: a node can die between taking a lease and
//! recording the take.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One take of one shard's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Take {
    /// The shard.
    pub shard: u32,
    /// The epoch the lease was taken at.
    pub epoch: u64,
    /// The node that took it.
    pub holder: String,
}

/// The takes in a `GET /admin/leases` answer; `None` if it is not one.
pub fn from_admin(answer: &Value) -> Option<Vec<Take>> {
    answer["takes"]
        .as_array()?
        .iter()
        .map(|t| {
            Some(Take {
                shard: u32::try_from(t["shard"].as_u64()?).ok()?,
                epoch: t["epoch"].as_u64()?,
                holder: t["holder"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// `Ok` with a summary for a person if no shard's epoch had two holders; otherwise `Err`
/// naming the first few that did.
pub fn one_holder_per_epoch(takes: &[Take]) -> Result<String, String> {
    let mut holders: BTreeMap<(u32, u64), Vec<&str>> = BTreeMap::new();
    for t in takes {
        let names = holders.entry((t.shard, t.epoch)).or_default();
        if !names.contains(&t.holder.as_str()) {
            names.push(&t.holder);
        }
    }
    let doubled: Vec<String> = holders
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|((shard, epoch), names)| format!("shard {shard} epoch {epoch}: {names:?}"))
        .collect();
    if !doubled.is_empty() {
        let shown = doubled
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!(
            "more than one holder in {} shard epochs: {shown}",
            doubled.len()
        ));
    }
    let shards: BTreeSet<u32> = holders.keys().map(|(s, _)| *s).collect();
    let highest = holders.keys().map(|(_, e)| *e).max().unwrap_or(0);
    Ok(format!(
        "{} takes of {} shards' leases, epochs up to {highest}, one holder each",
        holders.len(),
        shards.len()
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn take(shard: u32, epoch: u64, holder: &str) -> Take {
        Take {
            shard,
            epoch,
            holder: holder.into(),
        }
    }

    #[test]
    fn reads_an_admin_answer() {
        let answer = json!({"node": "n1", "shards": 2, "takes": [
            {"shard": 0, "epoch": 1, "holder": "n1"},
            {"shard": 1, "epoch": 3, "holder": "n2"},
        ]});
        assert_eq!(
            from_admin(&answer),
            Some(vec![take(0, 1, "n1"), take(1, 3, "n2")])
        );
        assert_eq!(from_admin(&json!({"takes": [{"shard": 0}]})), None);
        assert_eq!(from_admin(&json!({})), None);
    }

    #[test]
    fn one_holder_per_epoch_passes_and_gaps_are_fine() {
        let takes = [
            take(0, 1, "n1"),
            take(0, 2, "n2"),
            take(0, 4, "n1"),
            take(1, 1, "n3"),
        ];
        let summary = one_holder_per_epoch(&takes).unwrap();
        assert!(summary.starts_with("4 takes of 2 shards"), "{summary}");
        assert!(summary.contains("epochs up to 4"), "{summary}");
    }

    #[test]
    fn two_holders_of_one_epoch_fail() {
        let takes = [take(3, 5, "n1"), take(3, 5, "n2"), take(3, 6, "n2")];
        let problem = one_holder_per_epoch(&takes).unwrap_err();
        assert!(problem.contains("shard 3 epoch 5"), "{problem}");
        assert!(problem.contains("in 1 shard epochs"), "{problem}");
    }
}
