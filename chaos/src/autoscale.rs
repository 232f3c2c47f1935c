//! The drill's autoscaler: the Kubernetes HorizontalPodAutoscaler's algorithm, reading
//! `levee_load_ratio` from the nodes' admin ports, and the checks on what it did.
//!
//! Pure: [`Hpa`] takes the time and the nodes' ratios and says how many nodes there should
//! be; [`judge`] reads what happened. The drill (`crate::drill`) does the I/O: scrapes,
//! starts nodes, drains them.
//!
//! The algorithm, as the HPA controller runs it (autoscaling/v2, one metric):
//!
//! 1. `ratio = mean(metric over the nodes that answered) / target`; within `tolerance` of
//!    1.0 the recommendation is the current count, otherwise `ceil(current × ratio)`.
//! 2. Stabilisation: recommendations are kept for the longer of the two windows; scaling up
//!    goes to the *lowest* recommendation of the scale-up window, scaling down to the
//!    *highest* of the scale-down window, so a dip or a spike shorter than its window moves
//!    nothing.
//! 3. Policies: at most `max_up_per_period` nodes added and `max_down_per_period` removed
//!    per period.
//! 4. Bounds: `min_nodes..=max_nodes`.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::record::{Drained, ScalePoint, Verdict};

/// The `[autoscale]` section of a scenario: the drill plays the autoscaler.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// Fewest nodes (the HPA's `minReplicas`); the cluster starts with `cluster.nodes`.
    pub min_nodes: u32,
    /// Most nodes (`maxReplicas`).
    pub max_nodes: u32,
    /// The mean `levee_load_ratio` aimed at (the HPA's `averageValue`).
    #[serde(default = "default_target")]
    pub target: f64,
    /// No change while the ratio is within this share of the target (Kubernetes: 0.1).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Seconds between decisions (Kubernetes: 15).
    pub period_s: f64,
    /// Scale-up stabilisation window, s (Kubernetes: 0).
    #[serde(default)]
    pub up_window_s: f64,
    /// Scale-down stabilisation window, s (Kubernetes: 300).
    pub down_window_s: f64,
    /// Most nodes added per period (a `Pods` policy).
    #[serde(default = "default_up_step")]
    pub max_up_per_period: u32,
    /// Most nodes drained per period.
    #[serde(default = "default_down_step")]
    pub max_down_per_period: u32,
    /// Scale-out must begin within this many seconds of the wave's start.
    #[serde(default = "default_react")]
    pub react_within_s: f64,
    /// Each drain must finish within this many seconds.
    #[serde(default = "default_drain_bound")]
    pub drain_within_s: f64,
}

fn default_target() -> f64 {
    1.0
}

fn default_tolerance() -> f64 {
    0.1
}

fn default_up_step() -> u32 {
    2
}

fn default_down_step() -> u32 {
    1
}

fn default_react() -> f64 {
    30.0
}

fn default_drain_bound() -> f64 {
    30.0
}

impl Autoscale {
    /// Checks what the types cannot; `start` is the cluster's starting node count.
    pub fn validate(&self, start: u32) -> Result<(), String> {
        if !(1 <= self.min_nodes && self.min_nodes <= start && start <= self.max_nodes) {
            return Err(format!(
                "autoscale needs 1 ≤ min_nodes ≤ cluster.nodes ≤ max_nodes, not {} ≤ {start} ≤ {}",
                self.min_nodes, self.max_nodes
            ));
        }
        for (name, v) in [
            ("autoscale.target", self.target),
            ("autoscale.period_s", self.period_s),
            ("autoscale.react_within_s", self.react_within_s),
            ("autoscale.drain_within_s", self.drain_within_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be a positive number, not {v}"));
            }
        }
        for (name, v) in [
            ("autoscale.tolerance", self.tolerance),
            ("autoscale.up_window_s", self.up_window_s),
            ("autoscale.down_window_s", self.down_window_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be ≥ 0, not {v}"));
            }
        }
        if self.max_up_per_period == 0 || self.max_down_per_period == 0 {
            return Err("autoscale.max_up_per_period and max_down_per_period must be ≥ 1".into());
        }
        Ok(())
    }
}

/// The HPA's state: past recommendations, for stabilisation.
#[derive(Debug)]
pub struct Hpa {
    config: Autoscale,
    /// (time, recommendation), oldest first.
    recommendations: VecDeque<(f64, u32)>,
}

impl Hpa {
    /// An autoscaler with no history.
    pub fn new(config: Autoscale) -> Self {
        Self {
            config,
            recommendations: VecDeque::new(),
        }
    }

    /// Seconds between decisions.
    pub fn period_s(&self) -> f64 {
        self.config.period_s
    }

    /// How many nodes there should be at `t`, with `current` running and `ratios` read
    /// from those that answered. No ratio at all: keep the count (the HPA does not act on
    /// a metric it cannot read).
    pub fn decide(&mut self, t: f64, current: u32, ratios: &[f64]) -> u32 {
        let c = &self.config;
        let recommendation = if ratios.is_empty() {
            current
        } else {
            let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
            let usage = mean / c.target;
            if (usage - 1.0).abs() <= c.tolerance {
                current
            } else {
                (f64::from(current) * usage).ceil() as u32
            }
        };
        self.recommendations.push_back((t, recommendation));
        let keep = c.up_window_s.max(c.down_window_s);
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| *at < t - keep)
        {
            self.recommendations.pop_front();
        }
        let within = |w: f64| {
            self.recommendations
                .iter()
                .filter(move |(at, _)| *at >= t - w)
                .map(|(_, r)| *r)
        };
        let up = within(c.up_window_s).min().unwrap_or(recommendation);
        let down = within(c.down_window_s).max().unwrap_or(recommendation);
        let mut desired = current;
        if desired < up {
            desired = up;
        }
        if desired > down {
            desired = down;
        }
        desired
            .min(current + c.max_up_per_period)
            .max(current.saturating_sub(c.max_down_per_period))
            .clamp(c.min_nodes, c.max_nodes)
    }
}

/// How long after a node is asked for its effect on the wait is looked for.
const WAIT_EFFECT_S: f64 = 20.0;

/// The checks on an autoscaled run: `points` once a period, `wave_start_s` when the wave
/// began (`None`: no wave), `target_wait_s` the nodes' `load_target_wait_s`, `drains` every
/// scale-in.
pub fn judge(
    config: &Autoscale,
    points: &[ScalePoint],
    wave_start_s: Option<f64>,
    target_wait_s: f64,
    drains: &[Drained],
) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    // Changes of the node count, as (time, from, to).
    let changes: Vec<(f64, u32, u32)> = points
        .windows(2)
        .filter(|w| w[1].nodes != w[0].nodes)
        .map(|w| (w[1].t, w[0].nodes, w[1].nodes))
        .collect();
    if let Some(start) = wave_start_s {
        // Only a scale-out the wave could have caused: one asked for before it began (the
        // set-up's own registrations can ask) used to pass as a reaction 0 s or less after it.
        let first_out = points
            .iter()
            .find(|p| p.t >= start && p.desired > p.nodes)
            .map(|p| p.t);
        let pass = first_out.is_some_and(|t| t - start <= config.react_within_s);
        verdicts.push(Verdict {
            name: format!(
                "scale-out began within {} s of the wave",
                config.react_within_s
            ),
            pass,
            detail: first_out.map_or_else(
                || "the autoscaler never asked for more nodes".to_owned(),
                |t| {
                    format!(
                        "first asked at {t:.0} s, {:.0} s after the wave began",
                        t - start
                    )
                },
            ),
        });
    }
    // After each scale-out, within WAIT_EFFECT_S, the wait must fall below what it was when
    // the nodes were asked for, or stay within the target wait throughout: once arrivals
    // and seats are even (the HPA's aim at a ratio of 1) the line stops growing without
    // shrinking, and a node started while the wave still ramps may only slow its growth.
    // A node takes seconds to start and take its shards, so the window runs on past
    // further scale-outs. Judging each one only up to the next, by the fall alone, failed a
    // distributed run that did what it should (`chaos/distributed.sh autoscale`: 1.5 s when
    // the third node was asked for as the wave peaked, 2.2–3.7 s with five nodes seating
    // exactly the 20 a second arriving, against a 10 s target).
    let mut outs = Vec::new();
    let mut failed = Vec::new();
    for p in points.iter().filter(|p| p.desired > p.nodes) {
        let window: Vec<f64> = points
            .iter()
            .filter(|q| q.t > p.t && q.t <= p.t + WAIT_EFFECT_S.max(2.0 * config.period_s))
            .map(|q| q.wait_s)
            .collect();
        let lowest = window.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = window.iter().copied().fold(0.0, f64::max);
        let fell = lowest < p.wait_s || (p.wait_s == 0.0 && lowest == 0.0);
        let held = !window.is_empty() && highest <= target_wait_s;
        outs.push(format!(
            "{:.0} s: {}→{} nodes, wait {:.1} s → {}",
            p.t,
            p.nodes,
            p.desired,
            p.wait_s,
            if window.is_empty() {
                "not measured".into()
            } else {
                format!("{lowest:.1}–{highest:.1} s")
            }
        ));
        if !(fell || held) {
            failed.push(p.t);
        }
    }
    verdicts.push(Verdict {
        name: format!(
            "after each scale-out the line's estimated wait fell, or stayed within the {target_wait_s} s target"
        ),
        pass: !outs.is_empty() && failed.is_empty(),
        detail: if outs.is_empty() {
            "no scale-out".into()
        } else {
            outs.join("; ")
        },
    });
    let reversals = changes
        .windows(2)
        .filter(|w| (w[0].2 > w[0].1) != (w[1].2 > w[1].1))
        .count();
    let bound = 2 * (config.max_nodes - config.min_nodes) as usize;
    verdicts.push(Verdict {
        name: "no flapping: out, then in, at most one turn".into(),
        pass: reversals <= 1 && changes.len() <= bound.max(2),
        detail: format!(
            "{} changes ({}), {reversals} turns",
            changes.len(),
            changes
                .iter()
                .map(|(t, a, b)| format!("{a}→{b} at {t:.0} s"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    let slow: Vec<String> = drains
        .iter()
        .filter(|d| d.took_s.is_none_or(|s| s > config.drain_within_s))
        .map(|d| match (&d.took_s, &d.error) {
            (_, Some(e)) => format!("{}: {e}", d.name),
            (Some(s), None) => format!("{}: {s:.1} s", d.name),
            (None, None) => format!("{}: did not finish", d.name),
        })
        .collect();
    verdicts.push(Verdict {
        name: format!(
            "scale-in: every drained node left within {} s",
            config.drain_within_s
        ),
        pass: !drains.is_empty() && slow.is_empty(),
        detail: if drains.is_empty() {
            "no node was drained".into()
        } else if slow.is_empty() {
            drains
                .iter()
                .map(|d| format!("{} in {:.1} s", d.name, d.took_s.unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            slow.join("; ")
        },
    });
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Autoscale {
        Autoscale {
            min_nodes: 2,
            max_nodes: 8,
            target: 1.0,
            tolerance: 0.1,
            period_s: 5.0,
            up_window_s: 0.0,
            down_window_s: 20.0,
            max_up_per_period: 2,
            max_down_per_period: 1,
            react_within_s: 30.0,
            drain_within_s: 30.0,
        }
    }

    #[test]
    fn within_tolerance_nothing_moves_and_beyond_it_the_count_follows_the_ratio() {
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.decide(0.0, 4, &[1.05, 0.95]), 4, "mean 1.0");
        assert_eq!(hpa.decide(5.0, 4, &[1.1, 1.15]), 5, "1.125 is beyond it");
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.decide(0.0, 4, &[1.25, 1.25]), 5, "ceil(4 × 1.25)");
    }

    #[test]
    fn scaling_up_is_limited_per_period_and_by_the_maximum() {
        let mut hpa = Hpa::new(config());
        assert_eq!(
            hpa.decide(0.0, 2, &[5.0, 5.0]),
            4,
            "10 wanted, 2 per period"
        );
        assert_eq!(hpa.decide(5.0, 4, &[5.0; 4]), 6);
        assert_eq!(hpa.decide(10.0, 6, &[5.0; 6]), 8);
        assert_eq!(hpa.decide(15.0, 8, &[5.0; 8]), 8, "max_nodes");
    }

    #[test]
    fn scaling_down_waits_out_its_window_and_goes_one_at_a_time() {
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.decide(0.0, 6, &[1.0; 6]), 6);
        // Idle from 5 s: the window still holds the recommendation of 6 from 0 s until
        // 20 s have passed.
        let mut t = 5.0;
        let mut n = 6;
        let mut first_down = None;
        while t <= 60.0 {
            let d = hpa.decide(t, n, &vec![0.0; n as usize]);
            assert!(d + 1 >= n, "one at a time: {n} → {d}");
            if d < n && first_down.is_none() {
                first_down = Some(t);
            }
            n = d;
            t += 5.0;
        }
        assert_eq!(first_down, Some(25.0), "not before the window is past 0 s");
        assert_eq!(n, 2, "down to min_nodes");
    }

    #[test]
    fn a_dip_shorter_than_the_down_window_moves_nothing() {
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.decide(0.0, 4, &[1.0; 4]), 4);
        assert_eq!(hpa.decide(5.0, 4, &[0.2; 4]), 4);
        assert_eq!(hpa.decide(10.0, 4, &[1.0; 4]), 4);
    }

    #[test]
    fn no_metric_keeps_the_count() {
        let mut hpa = Hpa::new(config());
        assert_eq!(hpa.decide(0.0, 3, &[]), 3);
    }

    fn point(t: f64, nodes: u32, desired: u32, wait_s: f64) -> ScalePoint {
        ScalePoint {
            t,
            nodes,
            ratio: 1.0,
            wait_s,
            desired,
        }
    }

    fn drained(took: f64) -> Drained {
        Drained {
            t: 0.0,
            name: "node-3".into(),
            took_s: Some(took),
            error: None,
        }
    }

    fn passed(verdicts: &[Verdict]) -> Vec<bool> {
        verdicts.iter().map(|v| v.pass).collect()
    }

    #[test]
    fn a_good_run_passes_every_check() {
        let points = [
            point(0.0, 2, 2, 0.0),
            point(10.0, 2, 4, 30.0),
            point(15.0, 4, 4, 20.0),
            point(20.0, 4, 4, 5.0),
            point(40.0, 4, 3, 0.0),
            point(45.0, 3, 2, 0.0),
            point(50.0, 2, 2, 0.0),
        ];
        let v = judge(
            &config(),
            &points,
            Some(5.0),
            10.0,
            &[drained(3.0), drained(4.0)],
        );
        assert_eq!(passed(&v), [true; 4], "{v:?}");
    }

    #[test]
    fn a_wait_that_levels_off_within_the_target_passes_and_one_past_it_fails() {
        let level = [
            point(0.0, 2, 3, 1.5),
            point(5.0, 3, 3, 3.0),
            point(10.0, 3, 3, 3.5),
            point(15.0, 3, 3, 3.7),
        ];
        let v = judge(&config(), &level, None, 10.0, &[drained(1.0)]);
        assert!(v[0].pass, "{v:?}");
        let past = [
            point(0.0, 2, 3, 1.5),
            point(5.0, 3, 3, 6.0),
            point(10.0, 3, 3, 12.0),
        ];
        let v = judge(&config(), &past, None, 10.0, &[drained(1.0)]);
        assert!(!v[0].pass, "{v:?}");
    }

    #[test]
    fn late_reaction_a_rising_wait_flapping_and_a_slow_drain_each_fail() {
        let points = [
            point(0.0, 2, 2, 0.0),
            point(40.0, 2, 3, 30.0),
            point(45.0, 3, 3, 35.0),
            point(50.0, 3, 2, 40.0),
            point(55.0, 2, 3, 50.0),
            point(60.0, 3, 3, 60.0),
        ];
        let v = judge(&config(), &points, Some(5.0), 10.0, &[drained(45.0)]);
        assert_eq!(passed(&v), [false; 4], "{v:?}");
    }

    #[test]
    fn a_scale_out_before_the_wave_is_no_reaction_to_it() {
        let points = [
            point(0.0, 2, 3, 0.0),
            point(5.0, 3, 3, 0.0),
            point(10.0, 3, 3, 0.0),
            point(50.0, 3, 3, 0.0),
        ];
        let v = judge(&config(), &points, Some(10.0), 10.0, &[]);
        assert!(!v[0].pass, "{v:?}");
        assert!(v[0].detail.contains("never asked"), "{v:?}");
    }
}
