//! The message-latency SLO a signup wave is held to, and the search for the highest steady
//! registration rate a node takes within it (its *SLO capacity*). Pure: `levee-surge`
//! runs the probes and hands the results in.
//!
//! A node's registration capacity measured flat out (newcomers back to back) is a rate it
//! reaches only by letting its users' messages queue: no controller can hold a node there
//! and keep messages fast. The SLO capacity is the rate a controller should aim for.

/// The SLO on established users' message p99 during a wave: within 1.25 times the p99 with
/// no newcomers, or 20 ms over it, whichever is larger. The additive floor keeps a node
/// whose unloaded p99 is a few milliseconds from being held to a bound tighter than the
/// jitter of a shared machine (1.25 × 4 ms is 1 ms of room).
pub fn message_p99_slo_ms(unloaded_p99_ms: f64) -> f64 {
    (1.25 * unloaded_p99_ms).max(unloaded_p99_ms + 20.0)
}

/// Bisection between a rate known to be within the SLO (0 at first) and one known, or
/// assumed, not to be (the registration capacity measured flat out).
#[derive(Clone, Debug)]
pub struct RateSearch {
    within: f64,
    beyond: f64,
}

impl RateSearch {
    /// A search below `upper` registrations per second.
    pub fn new(upper: f64) -> Self {
        Self {
            within: 0.0,
            beyond: upper.max(0.0),
        }
    }

    /// The next rate to offer.
    pub fn next(&self) -> f64 {
        (self.within + self.beyond) / 2.0
    }

    /// What offering `rate` showed: whether the users' p99 stayed within the SLO *and* the
    /// node admitted what was offered (a node that falls behind is beyond its capacity,
    /// whatever its users saw meanwhile).
    pub fn record(&mut self, rate: f64, within: bool) {
        if within {
            self.within = self.within.max(rate);
        } else {
            self.beyond = self.beyond.min(rate);
        }
    }

    /// The highest rate shown to be within the SLO so far (0 if none).
    pub fn best(&self) -> f64 {
        self.within
    }
}

/// Whether a probe at `offered_per_s` stayed within the SLO: the users' p99 within
/// `slo_ms`, and at least 90% of the offered newcomers admitted during it.
pub fn probe_within(offered_per_s: f64, admitted_per_s: f64, p99_ms: f64, slo_ms: f64) -> bool {
    p99_ms <= slo_ms && admitted_per_s >= 0.9 * offered_per_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slo_is_the_larger_of_a_quarter_more_and_twenty_ms_more() {
        assert_eq!(message_p99_slo_ms(4.0), 24.0);
        assert_eq!(message_p99_slo_ms(80.0), 100.0);
        assert_eq!(message_p99_slo_ms(200.0), 250.0);
    }

    #[test]
    fn the_search_closes_in_on_the_highest_rate_within() {
        // A node within the SLO up to 37/s: six probes find it to within 100/64.
        let mut search = RateSearch::new(100.0);
        for _ in 0..6 {
            let rate = search.next();
            search.record(rate, rate <= 37.0);
        }
        assert!(search.best() <= 37.0 && search.best() > 37.0 - 100.0 / 64.0);
        // Nothing within: 0.
        let mut none = RateSearch::new(100.0);
        for _ in 0..4 {
            let rate = none.next();
            none.record(rate, false);
        }
        assert_eq!(none.best(), 0.0);
    }

    #[test]
    fn a_probe_is_within_only_if_the_node_kept_up_too() {
        assert!(probe_within(100.0, 95.0, 30.0, 40.0));
        assert!(!probe_within(100.0, 95.0, 41.0, 40.0));
        assert!(!probe_within(100.0, 80.0, 30.0, 40.0), "fell behind");
    }
}
