//! The order in which a node's line releases places: by [`Place`], not by arrival here.

use std::collections::BTreeSet;

use super::Place;

/// The places waiting in one node's line, released earliest first as the line's head
/// (a count, [`super::WaitingLine::head`]) moves. A count alone would release in the order
/// places were taken *here*; a newcomer whose node died and who comes back here with its
/// ticket holds an earlier place than everyone who joined here since, and goes before them.
#[derive(Debug, Default)]
pub struct LineOrder {
    waiting: BTreeSet<Place>,
    /// Places released so far.
    released: u64,
}

impl LineOrder {
    /// Whether `place` is waiting here.
    pub fn holds(&self, place: &Place) -> bool {
        self.waiting.contains(place)
    }

    /// Whether `place` has been released here: it is before every place still waiting.
    /// A place this line never held counts as released if it is that early: it was in a
    /// line whose front has passed it (a dead node's, say), and goes first.
    pub fn released(&self, place: &Place) -> bool {
        self.waiting.first().is_none_or(|front| place < front)
    }

    /// Adds `place`; returns how many places wait before it (for the wait estimate).
    pub fn insert(&mut self, place: Place) -> u64 {
        let ahead = self.rank(&place);
        self.waiting.insert(place);
        ahead
    }

    /// How many places wait before `place`.
    pub fn rank(&self, place: &Place) -> u64 {
        self.waiting.range(..*place).count() as u64
    }

    /// Releases the earliest waiting places while fewer than `head` have been released:
    /// the `k`th place (from 0) goes once the head has passed `k`, as a position did.
    pub fn release_to(&mut self, head: f64) {
        while (self.released as f64) < head {
            if self.waiting.pop_first().is_none() {
                break;
            }
            self.released += 1;
        }
    }

    /// Nobody is held back here: every place this line took has been released. (Places
    /// released and waiting only for the cluster's front do not count: when no line holds
    /// anyone back, the front is moot, and they enter when they come back. Counting them
    /// kept a cluster closed for good once closed: each newcomer waiting out the board's
    /// lag kept its node from counting as open, so the next newcomer waited too — every
    /// registration took 1.3 s after a node's death in the `mass-migration-short` drill.)
    pub fn is_open(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Nobody but the holder of `place` is held back here.
    pub fn is_open_but(&self, place: &Place) -> bool {
        self.waiting.iter().all(|p| p == place)
    }

    /// The earliest place still waiting.
    pub fn front(&self) -> Option<Place> {
        self.waiting.first().copied()
    }

    /// Places released so far.
    pub fn released_count(&self) -> u64 {
        self.released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Place {
        Place {
            issued_ms: ms,
            tiebreak: 7,
        }
    }

    #[test]
    fn places_are_released_earliest_first_whatever_order_they_came_in() {
        let mut order = LineOrder::default();
        assert_eq!(order.insert(at(30)), 0);
        assert_eq!(order.insert(at(40)), 1);
        // A place from a dead node's line, earlier than both.
        assert_eq!(order.insert(at(10)), 0);
        order.release_to(0.5);
        assert!(order.released(&at(10)) && !order.released(&at(30)));
        assert_eq!(order.front(), Some(at(30)));
        order.release_to(1.9);
        assert!(order.released(&at(30)) && !order.released(&at(40)));
        assert!(
            order.released(&at(20)),
            "never held, but the front passed it"
        );
        assert!(!order.released(&at(50)));
        assert!(!order.is_open() && !order.is_open_but(&at(30)));
        assert!(order.is_open_but(&at(40)), "nobody else is held back");
        order.release_to(3.0);
        assert!(
            order.released(&at(40)),
            "the third goes once the head passes 2"
        );
        assert_eq!(order.front(), None);
        assert_eq!(order.released_count(), 3);
        assert!(order.is_open());
        // A head banked beyond what waited releases newcomers as they come.
        order.insert(at(60));
        order.release_to(10.0);
        assert!(order.released(&at(60)));
    }
}
