//! A place in the cluster's registration line, comparable across nodes.

use super::Ticket;

/// Where a newcomer stands in the one line of the whole cluster: when its first ticket
/// was issued (ms since the Unix epoch, by the issuing node's clock), ties broken by its
/// registration key's hash. Every ticket carries both (a refreshed ticket keeps the first
/// issue time, whichever node refreshes it), so any node orders any two newcomers the same
/// way, whichever nodes they reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    /// When the first ticket was issued, ms since the Unix epoch.
    pub issued_ms: u64,
    /// The first 8 bytes of the registration key's hash ([`super::key_hash`]): unique
    /// among newcomers for all practical purposes, and the same on every node.
    pub tiebreak: u64,
}

impl Place {
    /// The place of a newcomer holding `key_hash`, first told to wait at `issued_ms`.
    pub fn new(issued_ms: u64, key_hash: &[u8; 16]) -> Self {
        let mut first = [0u8; 8];
        first.copy_from_slice(&key_hash[..8]);
        Self {
            issued_ms,
            tiebreak: u64::from_be_bytes(first),
        }
    }

    /// The place of a newcomer holding `key_hash` who arrives at `now_ms` on a node whose
    /// last new place was `last`: after it, always. Within a millisecond places go by
    /// their keys' hashes, so a newcomer arriving later in the same millisecond as another
    /// would go before it half the time — after the first had been told its wait. A node
    /// turning 24 newcomers into places in a few milliseconds told some of them they
    /// would enter seconds before they did, and others seconds after. A place that would
    /// sort before `last` takes `last`'s millisecond (or the next, if its hash is smaller
    /// too): it is dated at most a millisecond later per newcomer arriving in the same
    /// millisecond, which keeps the cluster's order — by issue time — to within that.
    pub fn issue(now_ms: u64, key_hash: &[u8; 16], last: Option<Place>) -> Self {
        let place = Self::new(now_ms, key_hash);
        match last {
            Some(last) if place <= last => {
                let same_ms = Self::new(last.issued_ms, key_hash);
                if same_ms > last {
                    same_ms
                } else {
                    Self::new(last.issued_ms + 1, key_hash)
                }
            }
            _ => place,
        }
    }

    /// The place a ticket holds.
    pub fn of(ticket: &Ticket) -> Self {
        Self::new(ticket.issued_at_ms, &ticket.key_hash)
    }

    /// Before every place issued at `ms` or later: what "nobody issued before `ms` is
    /// waiting" is written as.
    pub fn first_at(ms: u64) -> Self {
        Self {
            issued_ms: ms,
            tiebreak: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::key_hash;

    #[test]
    fn places_order_by_issue_time_then_by_key() {
        let (a, b) = (key_hash(b"alice"), key_hash(b"bob"));
        assert!(Place::new(1, &a) < Place::new(2, &b));
        assert!(Place::new(1, &b) < Place::new(2, &a));
        assert_ne!(
            Place::new(1, &a),
            Place::new(1, &b),
            "same ms, still two places"
        );
        assert!(Place::first_at(1) <= Place::new(1, &a));
        assert!(Place::new(0, &a) < Place::first_at(1));
    }

    #[test]
    fn a_place_issued_later_goes_after_the_last_one_issued() {
        let hashes: Vec<[u8; 16]> = (0..64)
            .map(|i| key_hash(format!("k{i}").as_bytes()))
            .collect();
        // 64 newcomers in one millisecond: each after the one before, dated within 64 ms.
        let mut last = None;
        for h in &hashes {
            let place = Place::issue(1_000, h, last);
            assert!(last.is_none_or(|l| place > l), "{place:?} before {last:?}");
            assert!((1_000..1_064).contains(&place.issued_ms));
            last = Some(place);
        }
        // A later millisecond is dated as it is; a clock stepping back is not followed.
        let l = Place::new(1_000, &hashes[0]);
        assert_eq!(Place::issue(1_005, &hashes[1], Some(l)).issued_ms, 1_005);
        assert!(Place::issue(900, &hashes[1], Some(l)) > l);
    }
}
