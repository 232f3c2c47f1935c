//! The autoscaling signal: how much of a node's capacity is in use, 1.0 meaning "at the
//! operator's target".
//!
//! Built for the Kubernetes HorizontalPodAutoscaler's rule
//! `desired = ceil(current × mean(ratio) / target)` with a target of 1.0: a cluster whose
//! nodes average 1.5 wants half as many nodes again. CPU utilisation, the usual input, is
//! the wrong one for Levee: admission control keeps CPU below saturation on purpose, so a
//! node turning newcomers into a long line and one idling can show the same CPU.
//!
//! The ratio is the largest of three parts, each 1.0 at its own limit:
//!
//! - **queueing**: the last admission window's average queueing delay over the delay the
//!   controller calls overloaded (`admission_overload_wait_ms`). Below 1 on a healthy node,
//!   rising with load before anything is shed — the part that scales out early.
//! - **shedding**: while the admission level turns any slot away, the inverse of the share
//!   it still serves (1.5 with every registration cohort shed, 3 with only messaging left);
//!   0 while everything is served. Anything shed means the node is past its capacity.
//! - **line**: the larger of how long a newcomer joining the waiting line now would wait,
//!   over the wait the operator accepts (`load_target_wait_s`), and newcomers arriving per
//!   second over the rate the line seats them. The line is how Levee survives a wave
//!   without scaling; the wait says how much more capacity would make it as short as asked,
//!   the arrival rate how much would stop it growing. The wait alone is late and low: it
//!   reaches its target only after the line has built up, and while arrivals outrun the
//!   seats it reads the backlog, not the shortfall. In the `autoscale` drill (20 arrivals a
//!   second against nodes seating 4) the wait alone asked for a third node 17 s into the
//!   wave and never for the fifth the wave needed; the line grew until the wave ebbed.
//!   The arrival rate is counted at the door as well as at the line: while the door holds
//!   new connections back to about what the line seats, the line sees arrivals at about
//!   its own rate and read near 1 — in one run 4 nodes read 0.33 while 20 a second
//!   arrived and 16 were seated, and a CI run of the short drill never asked for a second
//!   node. The door's pressure (connections arriving over those let through) scales the
//!   line's demand back up. It over-reads somewhat in a long wave: a dropped client's
//!   QUIC stack sends its first packet again after 1 s, 2 s, 4 s, so a newcomer kept out
//!   is counted more than once.

use std::time::Duration;

use super::AdmissionLevel;
use super::controller::SLOTS;

/// What a node's load is read from. Pure: the node passes what its admission state shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// The last closed admission window's average queueing delay.
    pub delay: Duration,
    /// The admission level now.
    pub level: AdmissionLevel,
    /// How long a newcomer joining the line now would wait.
    pub line_wait: Duration,
    /// Newcomers arriving per second over the rate the line seats them
    /// ([`WaitingLine::demand_ratio`](super::WaitingLine::demand_ratio)).
    pub line_demand: f64,
    /// New connections arriving at the node's door per second over the rate it lets them
    /// through while it is limited; 1.0 when it is not. Newcomers the door holds back
    /// never reach the line, so the line's demand alone reads about 1 however many wait
    /// outside; multiplied by this, it counts them.
    pub door_pressure: f64,
}

/// The limits each part of [`Load::ratio`] is measured against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadTargets {
    /// The queueing delay that counts as overloaded.
    pub delay: Duration,
    /// The waiting-line wait the operator accepts.
    pub line_wait: Duration,
}

impl Load {
    /// The ratio the module docs define: 0 idle, 1.0 at target.
    pub fn ratio(&self, targets: LoadTargets) -> f64 {
        let over = |x: Duration, limit: Duration| {
            x.as_secs_f64() / limit.as_secs_f64().max(f64::MIN_POSITIVE)
        };
        let queueing = over(self.delay, targets.delay);
        let shedding = if self.level < AdmissionLevel::ALL {
            // Level 0 serves control requests only; count it as the smallest share.
            1.0 / self.level.fraction().max(1.0 / f64::from(SLOTS))
        } else {
            0.0
        };
        let demand = self.line_demand * self.door_pressure.max(1.0);
        let line = over(self.line_wait, targets.line_wait).max(demand);
        queueing.max(shedding).max(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGETS: LoadTargets = LoadTargets {
        delay: Duration::from_millis(20),
        line_wait: Duration::from_secs(30),
    };

    fn load(delay_ms: u64, level: AdmissionLevel, line_s: u64) -> Load {
        Load {
            delay: Duration::from_millis(delay_ms),
            level,
            line_wait: Duration::from_secs(line_s),
            line_demand: 0.0,
            door_pressure: 1.0,
        }
    }

    #[test]
    fn an_idle_node_is_near_zero_and_each_part_reaches_one_at_its_limit() {
        assert_eq!(load(0, AdmissionLevel::ALL, 0).ratio(TARGETS), 0.0);
        assert!((load(20, AdmissionLevel::ALL, 0).ratio(TARGETS) - 1.0).abs() < 1e-9);
        assert!((load(0, AdmissionLevel::ALL, 30).ratio(TARGETS) - 1.0).abs() < 1e-9);
        assert!((load(5, AdmissionLevel::ALL, 60).ratio(TARGETS) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn anything_shed_is_past_capacity() {
        let shedding = AdmissionLevel::ALL.lowered(1);
        let r = load(0, shedding, 0).ratio(TARGETS);
        assert!(r > 1.0, "{r}");
        let only_messaging = AdmissionLevel::ALL.lowered(SLOTS * 2 / 3);
        let r = load(0, only_messaging, 0).ratio(TARGETS);
        assert!((r - 3.0).abs() < 1e-9, "{r}");
        let nothing = AdmissionLevel::ALL.lowered(u32::MAX);
        assert!(load(0, nothing, 0).ratio(TARGETS).is_finite());
    }

    #[test]
    fn arrivals_outrunning_the_seats_count_before_the_wait_builds_up() {
        let arriving = Load {
            line_demand: 2.5,
            ..load(0, AdmissionLevel::ALL, 1)
        };
        assert!((arriving.ratio(TARGETS) - 2.5).abs() < 1e-9);
    }

    #[test]
    fn newcomers_held_at_the_door_count_as_demand() {
        // The door lets through what the line seats, so the line reads about 1...
        let at_the_line = Load {
            line_demand: 1.0,
            ..load(0, AdmissionLevel::ALL, 1)
        };
        assert!((at_the_line.ratio(TARGETS) - 1.0).abs() < 1e-9);
        // ...while three times as many knock.
        let knocking = Load {
            door_pressure: 3.0,
            ..at_the_line
        };
        assert!((knocking.ratio(TARGETS) - 3.0).abs() < 1e-9);
        // A door with room to spare adds nothing.
        let spare = Load {
            door_pressure: 0.4,
            ..at_the_line
        };
        assert!((spare.ratio(TARGETS) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_largest_part_wins() {
        let r = load(10, AdmissionLevel::ALL, 45).ratio(TARGETS);
        assert!((r - 1.5).abs() < 1e-9, "line 1.5 over queueing 0.5: {r}");
    }
}
