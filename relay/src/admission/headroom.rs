//! Whether the node's established users still get their work run on time: the waiting
//! line's own judge, stricter than the admission level's.
//!
//! The level (DAGOR's thresholds: 20 ms average wait) decides when to shed logins and
//! messages, and must not act on a node that is merely busy. The line only decides how fast
//! newcomers enter, and the users already here should not feel them at all. Averages hide
//! what they feel: in a 10x wave a quarter-core node ran 95–100% busy and every second had
//! a message p99 of 60–320 ms, while few windows averaged over the level's limits (it stayed
//! at 91–100%; `levee-surge --trace`). So the line watches the tail: the share of probes
//! that ran later than a limit.

use std::time::Duration;

use super::Verdict;

/// A window in which more than this share of probes ran late is overloaded for the line.
const OVERLOADED_SHARE: f64 = 0.03;
/// A window in which at most this share ran late is calm for the line. Between the two the
/// line keeps its rate: one late probe in a hundred is a busy node, not a full one.
const CALM_SHARE: f64 = 0.01;

/// Counts late scheduler probes per window. Pure: the caller reports each probe's lag.
#[derive(Debug)]
pub struct Headroom {
    /// A probe later than this is late.
    limit: Duration,
    late: u32,
    probes: u32,
}

impl Headroom {
    /// A judge for which a probe later than `limit` is late.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            late: 0,
            probes: 0,
        }
    }

    /// A probe later than this is late. While the last probes run later than this
    /// ([`AdmissionController::lagging`](super::AdmissionController::lagging)), newcomers
    /// should wait a moment.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Records how late the scheduler ran a probe.
    pub fn record(&mut self, lag: Duration) {
        self.probes += 1;
        if lag > self.limit {
            self.late += 1;
        }
    }

    /// Closes the window: what its late probes say about letting newcomers in.
    pub fn end_window(&mut self) -> Verdict {
        let share = f64::from(self.late) / f64::from(self.probes.max(1));
        self.late = 0;
        self.probes = 0;
        if share > OVERLOADED_SHARE {
            Verdict::Overloaded
        } else if share <= CALM_SHARE {
            Verdict::Calm
        } else {
            Verdict::Hold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(headroom: &mut Headroom, late: u32, on_time: u32) -> Verdict {
        let ms = Duration::from_millis;
        (0..late).for_each(|_| headroom.record(ms(50)));
        (0..on_time).for_each(|_| headroom.record(ms(1)));
        headroom.end_window()
    }

    #[test]
    fn the_share_of_late_probes_judges_each_window() {
        let mut h = Headroom::new(Duration::from_millis(5));
        assert_eq!(window(&mut h, 10, 90), Verdict::Overloaded);
        assert_eq!(window(&mut h, 1, 99), Verdict::Calm, "counts start again");
        assert_eq!(window(&mut h, 2, 98), Verdict::Hold);
        assert_eq!(
            window(&mut h, 0, 0),
            Verdict::Calm,
            "an idle window is calm"
        );
    }
}
