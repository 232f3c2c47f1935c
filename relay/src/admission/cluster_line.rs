//! One registration line for the whole cluster: how far it has moved, agreed by every node
//! without talking to each other beyond a shared board.
//!
//! Each node keeps its own line ([`super::WaitingLine`]) at the rate it absorbs, releasing
//! places earliest first ([`super::LineOrder`]). Every heartbeat it writes a
//! [`LineSample`] to the cluster's line board (in the roster's store): the earliest place
//! still waiting in its line. A place may enter only once it is before every node's front —
//! the cluster's front, the minimum — so nobody anywhere goes before an earlier place on
//! another node.
//!
//! **Agreement.** Nodes read the board at different moments; had each used the latest
//! fronts it happened to read, two nodes would briefly disagree on the minimum, and one
//! would turn someone away whom the other's front had already passed. So the front is a
//! function of wall time that every node computes the same way: at time `t`, the minimum
//! over nodes of the last sample each wrote at or before `t - lag`. A sample is on the board
//! within a heartbeat of being written; by the time it counts (`lag` later, 1 s by default)
//! every node has read it, and all compute the same front at the same instant. The price is
//! that a node's released places enter `lag` after its own line reached them.
//!
//! **A dead node** stops writing. Its last front keeps counting, the same for everyone,
//! until `silence` (the failure timeout) after its last sample; then it drops out of the
//! minimum at the same instant everywhere, and its newcomers, who come back elsewhere with
//! their tickets, are placed in those nodes' lines by their places (earliest first), not at
//! the back. The line stands still meanwhile: `lag + silence` at most, 4 s by default.
//!
//! **An open cluster.** When no line anywhere holds anyone back, there is nothing to keep
//! order with, and a newcomer enters at once (subject to its node's rate) instead of
//! waiting out the lag. "Nobody anywhere" is judged on the latest samples and on the lagged
//! ones; the latest are read at different moments on different nodes, so a line forming on
//! one node is seen by the others a heartbeat or two later, and newcomers who arrive
//! elsewhere in that moment go in first. The drills' ledger
//! counts overtakes across nodes with that resolution (see `docs/ARCHITECTURE.md`).
//!
//! Pure: wall time passed in, the board's I/O in `crate::node`.

use std::collections::{BTreeMap, VecDeque};

use super::Place;

/// Samples a node's report carries: readers that miss a few board reads still see every
/// sample (8 heartbeats, 2 s by default).
const REPORT_SAMPLES: usize = 8;
/// Samples kept per node: enough to look `lag + silence` back, with room.
const HISTORY: usize = 64;
/// A node silent this long (beyond `lag + silence`) is forgotten.
const FORGET_MS: u64 = 60_000;

/// One node's line at one moment, as written to the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineSample {
    /// When, ms since the Unix epoch (the writer's clock).
    pub at_ms: u64,
    /// The earliest place still waiting in its line; [`Place::first_at`]`(at_ms)` when
    /// nobody is.
    pub front: Place,
    /// Nobody is held back in its line (see [`super::LineOrder::is_open`]).
    pub open: bool,
}

const SAMPLE_BYTES: usize = 8 + 8 + 8 + 1;
const REPORT_VERSION: u8 = 1;

/// Why a report read from the board is not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line report is malformed")]
pub struct MalformedReport;

/// Encodes a node's latest samples (oldest first) for the board.
pub fn encode_report(samples: &[LineSample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + samples.len() * SAMPLE_BYTES);
    out.push(REPORT_VERSION);
    for s in samples {
        out.extend_from_slice(&s.at_ms.to_be_bytes());
        out.extend_from_slice(&s.front.issued_ms.to_be_bytes());
        out.extend_from_slice(&s.front.tiebreak.to_be_bytes());
        out.push(u8::from(s.open));
    }
    out
}

/// Decodes what [`encode_report`] wrote.
pub fn decode_report(bytes: &[u8]) -> Result<Vec<LineSample>, MalformedReport> {
    let Some((&REPORT_VERSION, body)) = bytes.split_first() else {
        return Err(MalformedReport);
    };
    if body.len() % SAMPLE_BYTES != 0 || body.len() / SAMPLE_BYTES > HISTORY {
        return Err(MalformedReport);
    }
    let u64_at = |c: &[u8], at: usize| u64::from_be_bytes(c[at..at + 8].try_into().expect("8"));
    body.chunks_exact(SAMPLE_BYTES)
        .map(|c| {
            let open = match c[24] {
                0 => false,
                1 => true,
                _ => return Err(MalformedReport),
            };
            Ok(LineSample {
                at_ms: u64_at(c, 0),
                front: Place {
                    issued_ms: u64_at(c, 8),
                    tiebreak: u64_at(c, 16),
                },
                open,
            })
        })
        .collect()
}

/// How far the cluster's line lets places in now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterFront {
    /// No other node is heard from, or no line anywhere holds anyone: this node's own
    /// line decides alone.
    Open,
    /// Places before this one may enter; none at or after it.
    Before(Place),
}

impl ClusterFront {
    /// Whether `place` may enter as far as the cluster is concerned.
    pub fn admits(&self, place: &Place) -> bool {
        match self {
            ClusterFront::Open => true,
            ClusterFront::Before(front) => place < front,
        }
    }
}

/// The cluster's line as one node sees it, for its metrics page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterLineGauges {
    /// Since this node last read the line board (`None`: never). Past the failure timeout
    /// the node lets nobody in from its line: it cannot know where the cluster's stands.
    pub board_age_ms: Option<u64>,
    /// How far, in issue time, the cluster's front trails this node's own: places this
    /// node's line would let in but that wait for another node's line. 0 when this node
    /// holds nobody back, the cluster is open, or the node cannot read the board. Large on one node and 0 on another: the
    /// cluster moves at its slowest line's pace (docs/ARCHITECTURE.md).
    pub behind_ms: u64,
}

/// Every node's samples, and the cluster's front computed from them. See the module docs.
#[derive(Debug)]
pub struct ClusterLine {
    me: String,
    lag_ms: u64,
    silence_ms: u64,
    /// Per node (this one included, from its own samples), oldest first.
    samples: BTreeMap<String, VecDeque<LineSample>>,
    /// When the board was last read (ms since the Unix epoch). Until it has been, or once
    /// that is longer ago than `silence` (this node cannot reach the board), this node
    /// does not know whether a line stands elsewhere, and lets nobody in from its line.
    heard_at_ms: Option<u64>,
}

impl ClusterLine {
    /// The cluster line as node `me` sees it: samples count `lag_ms` after they were
    /// taken, and a node silent for `silence_ms` after that drops out.
    pub fn new(me: &str, lag_ms: u64, silence_ms: u64) -> Self {
        Self {
            me: me.to_owned(),
            lag_ms,
            silence_ms,
            samples: BTreeMap::new(),
            heard_at_ms: None,
        }
    }

    /// How long after it was taken a sample counts.
    pub fn lag_ms(&self) -> u64 {
        self.lag_ms
    }

    /// Records this node's own sample (the one it is about to write to the board).
    pub fn record(&mut self, sample: LineSample) {
        let me = self.me.clone();
        self.add(&me, std::iter::once(sample));
    }

    /// This node's latest samples, oldest first: its report for the board.
    pub fn report(&self) -> Vec<LineSample> {
        self.samples.get(&self.me).map_or_else(Vec::new, |s| {
            s.iter()
                .skip(s.len().saturating_sub(REPORT_SAMPLES))
                .copied()
                .collect()
        })
    }

    /// Takes in what the board says, every node's latest report, read at `now_ms`. This
    /// node's own row is ignored: its own samples are recorded as it takes them.
    pub fn heard<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a [LineSample])>,
        now_ms: u64,
    ) {
        for (node, samples) in reports {
            if node != self.me {
                self.add(node, samples.iter().copied());
            }
        }
        self.heard_at_ms = Some(now_ms);
        self.samples.retain(|_, s| {
            s.back()
                .is_some_and(|l| l.at_ms.saturating_add(FORGET_MS) >= now_ms)
        });
    }

    fn add(&mut self, node: &str, samples: impl Iterator<Item = LineSample>) {
        let kept = self.samples.entry(node.to_owned()).or_default();
        for s in samples {
            if kept.back().is_none_or(|last| s.at_ms > last.at_ms) {
                kept.push_back(s);
            }
        }
        while kept.len() > HISTORY {
            kept.pop_front();
        }
    }

    /// The cluster's front at `now_ms`, this node's own line being `open_here` now (see
    /// [`LineSample::open`]).
    pub fn front(&self, now_ms: u64, open_here: bool) -> ClusterFront {
        let deaf = self
            .heard_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) > self.silence_ms);
        if deaf {
            return ClusterFront::Before(Place::first_at(0));
        }
        // The others heard from lately (latest samples): none → this node is alone.
        let recent = now_ms.saturating_sub(self.lag_ms + self.silence_ms);
        let (mut others, mut others_open) = (false, true);
        for (_, s) in self.samples.iter().filter(|(node, _)| **node != self.me) {
            if let Some(last) = s.back().filter(|last| last.at_ms >= recent) {
                others = true;
                others_open &= last.open;
            }
        }
        // Open on the latest samples (a line forming anywhere closes it as soon as it is
        // read) and on the lagged ones, so that it opens again at the same instant on every
        // node, and not while places released under the last line may still wait for the
        // lagged front. (Reasoned, not measured: in `levee-wave` opening on the latest
        // samples alone gave the same result; see docs/PERFORMANCE-LOG.md.)
        if !others || (open_here && others_open && self.lagged(now_ms).all(|s| s.open)) {
            return ClusterFront::Open;
        }
        ClusterFront::Before(self.lagged_front(now_ms))
    }

    /// The sample each node counting at `now_ms` took at or before `now_ms - lag`: every
    /// node whose sample then was no older than `silence`.
    fn lagged(&self, now_ms: u64) -> impl Iterator<Item = &LineSample> {
        let then = now_ms.saturating_sub(self.lag_ms);
        let alive_since = then.saturating_sub(self.silence_ms);
        self.samples
            .values()
            .filter_map(move |s| s.iter().rev().find(|x| x.at_ms <= then))
            .filter(move |x| x.at_ms >= alive_since)
    }

    /// The minimum of the [`lagged`](Self::lagged) fronts: the same for every node that
    /// holds the same samples, whenever it asks.
    fn lagged_front(&self, now_ms: u64) -> Place {
        self.lagged(now_ms)
            .map(|x| x.front)
            .min()
            // Nobody counted yet (a cluster just formed): nobody is let in from a line
            // until the first samples count.
            .unwrap_or(Place::first_at(0))
    }

    /// What an operator watches of the cluster's line at `now_ms`, this node's own line
    /// holding back `own_front` (its earliest place still waiting, `None`: nobody).
    pub fn gauges(&self, now_ms: u64, own_front: Option<Place>) -> ClusterLineGauges {
        let board_age_ms = self.heard_at_ms.map(|at| now_ms.saturating_sub(at));
        // The issue time between the front all nodes agree on and this node's own. A
        // front at the epoch is no place: the node cannot read the board, or nobody's
        // samples count yet, which the board's age tells.
        let behind_ms = match (self.front(now_ms, own_front.is_none()), own_front) {
            (ClusterFront::Before(front), Some(own)) if front.issued_ms > 0 => {
                own.issued_ms.saturating_sub(front.issued_ms)
            }
            _ => 0,
        };
        ClusterLineGauges {
            board_age_ms,
            behind_ms,
        }
    }

    /// How fast the cluster's front has moved over the last `window_ms`, ms of issue time
    /// per ms: for telling those it has not reached when to come back.
    pub fn speed(&self, now_ms: u64, window_ms: u64) -> f64 {
        let now = self.lagged_front(now_ms);
        let before = self.lagged_front(now_ms.saturating_sub(window_ms));
        now.issued_ms.saturating_sub(before.issued_ms) as f64 / window_ms.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, front_ms: Option<u64>) -> LineSample {
        LineSample {
            at_ms,
            front: front_ms.map_or(Place::first_at(at_ms), at),
            open: front_ms.is_none(),
        }
    }

    /// The place a [`sample`] with `Some(ms)` holds as its front.
    fn at(ms: u64) -> Place {
        Place {
            issued_ms: ms,
            tiebreak: 1,
        }
    }

    fn place(ms: u64) -> Place {
        Place {
            issued_ms: ms,
            tiebreak: 5,
        }
    }

    /// Node `me` of three (a, b, c) that has recorded and heard `rows` (node, samples).
    fn line(me: &str, rows: &[(&str, Vec<LineSample>)], now_ms: u64) -> ClusterLine {
        let mut l = ClusterLine::new(me, 1_000, 3_000);
        for (node, samples) in rows {
            if *node == me {
                samples.iter().for_each(|s| l.record(*s));
            }
        }
        let reports: Vec<(&str, &[LineSample])> =
            rows.iter().map(|(n, s)| (*n, s.as_slice())).collect();
        l.heard(reports, now_ms);
        l
    }

    #[test]
    fn every_node_computes_the_same_front_from_the_same_samples() {
        // Samples every 250 ms from 0 to 10 s: a's front moves 100 ms of issue time a
        // second, b's 50, c is open.
        let rows: Vec<(&str, Vec<LineSample>)> = vec![
            (
                "a",
                (0..=40).map(|i| sample(i * 250, Some(i * 25))).collect(),
            ),
            (
                "b",
                (0..=40)
                    .map(|i| sample(i * 250 + 10, Some(i * 12)))
                    .collect(),
            ),
            ("c", (0..=40).map(|i| sample(i * 250 + 20, None)).collect()),
        ];
        let now = 10_000;
        let fronts: Vec<ClusterFront> = ["a", "b", "c"]
            .iter()
            .map(|me| line(me, &rows, now).front(now, false))
            .collect();
        assert!(fronts.windows(2).all(|w| w[0] == w[1]), "{fronts:?}");
        // b's last sample at or before 9 s (8,760 ms: i = 35, front 420) is the minimum.
        assert_eq!(fronts[0], ClusterFront::Before(at(420)));
        assert!(fronts[0].admits(&place(419)) && !fronts[0].admits(&place(421)));
    }

    #[test]
    fn the_gauges_say_how_far_the_cluster_trails_this_node_and_how_old_the_board_is() {
        let mut l = ClusterLine::new("a", 1_000, 3_000);
        assert_eq!(
            l.gauges(10_000, Some(at(900))),
            ClusterLineGauges {
                board_age_ms: None,
                behind_ms: 0,
            },
            "never read: no age, and no front to be behind"
        );
        // b's line holds places from 400 on; a's own line, from 900 on.
        l.record(sample(10_000, Some(900)));
        l.heard([("b", &[sample(10_000, Some(400))][..])], 10_200);
        let g = l.gauges(11_500, Some(at(900)));
        assert_eq!(g.board_age_ms, Some(1_300));
        assert_eq!(g.behind_ms, 500, "a's places 400..900 wait for b's line");
        assert_eq!(
            l.gauges(11_500, None).behind_ms,
            0,
            "nobody held back here, nobody waits here"
        );
        // Unheard past the silence: the node seats nobody; its age says so, not "behind".
        let deaf = l.gauges(20_000, Some(at(900)));
        assert_eq!((deaf.board_age_ms, deaf.behind_ms), (Some(9_800), 0));
    }

    #[test]
    fn a_sample_counts_only_after_the_lag() {
        let mut l = ClusterLine::new("a", 1_000, 3_000);
        l.record(sample(10_000, Some(0)));
        l.heard([("b", &[sample(10_000, Some(0))][..])], 10_000);
        assert_eq!(
            l.front(10_500, false),
            ClusterFront::Before(Place::first_at(0)),
            "nothing counts yet"
        );
        assert_eq!(l.front(11_000, false), ClusterFront::Before(at(0)));
        l.record(sample(10_600, Some(500)));
        l.heard(
            [(
                "b",
                &[sample(10_000, Some(0)), sample(10_600, Some(400))][..],
            )],
            10_600,
        );
        assert_eq!(l.front(11_599, false), ClusterFront::Before(at(0)));
        assert_eq!(
            l.front(11_600, false),
            ClusterFront::Before(at(400)),
            "b's is lower"
        );
    }

    #[test]
    fn a_silent_node_holds_the_front_until_its_silence_runs_out_then_drops_out() {
        let mut l = ClusterLine::new("a", 1_000, 3_000);
        let b: Vec<LineSample> = (0..=4).map(|i| sample(i * 250, Some(100))).collect();
        for i in 0..=40 {
            l.record(sample(i * 250, Some(i * 100)));
        }
        l.heard([("b", b.as_slice())], 10_000);
        // b's last sample is at 1 s: it holds the front at 100 until 1 + 1 + 3 s.
        assert_eq!(l.front(4_900, false), ClusterFront::Before(at(100)));
        assert_eq!(l.front(5_000, false), ClusterFront::Before(at(100)));
        // Then a is alone, and its own line decides.
        assert_eq!(l.front(5_250, false), ClusterFront::Open);
    }

    #[test]
    fn an_open_cluster_or_a_lone_node_decides_alone() {
        let mut l = ClusterLine::new("a", 1_000, 3_000);
        assert_ne!(
            l.front(0, true),
            ClusterFront::Open,
            "not before the board is read"
        );
        l.heard(std::iter::empty(), 0);
        assert_eq!(l.front(0, false), ClusterFront::Open, "alone");
        l.heard([("b", &[sample(100, None)][..])], 100);
        assert_eq!(
            l.front(200, true),
            ClusterFront::Open,
            "nobody waits anywhere"
        );
        assert_ne!(
            l.front(200, false),
            ClusterFront::Open,
            "someone waits here"
        );
        l.heard(
            [("b", &[sample(100, None), sample(350, Some(300))][..])],
            350,
        );
        assert_ne!(l.front(400, true), ClusterFront::Open, "someone waits on b");
        // b long silent: alone again.
        l.heard(std::iter::empty(), 9_000);
        assert_eq!(l.front(10_000, true), ClusterFront::Open);
        // But a node that cannot read the board does not know that.
        assert_ne!(l.front(13_000, true), ClusterFront::Open, "deaf");
    }

    #[test]
    fn reports_survive_the_board_and_bad_ones_are_refused() {
        let samples = vec![sample(1, Some(0)), sample(2, None)];
        assert_eq!(decode_report(&encode_report(&samples)), Ok(samples.clone()));
        let mut bytes = encode_report(&samples);
        assert_eq!(
            decode_report(&bytes[..bytes.len() - 1]),
            Err(MalformedReport)
        );
        *bytes.last_mut().expect("bytes") = 2;
        assert_eq!(decode_report(&bytes), Err(MalformedReport));
        assert_eq!(decode_report(&[]), Err(MalformedReport));
        assert_eq!(decode_report(&[9]), Err(MalformedReport));
        assert_eq!(decode_report(&[REPORT_VERSION]), Ok(vec![]));
    }

    #[test]
    fn the_speed_is_how_fast_the_front_moved() {
        let mut l = ClusterLine::new("a", 1_000, 3_000);
        for i in 0..=40 {
            l.record(sample(i * 250, Some(i * 125)));
        }
        l.heard(std::iter::empty(), 10_000);
        let v = l.speed(10_000, 4_000);
        assert!((v - 0.5).abs() < 0.01, "{v}");
    }
}
