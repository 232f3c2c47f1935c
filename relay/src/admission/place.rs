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
}
