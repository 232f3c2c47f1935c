//! The registration waiting line: positions handed out in arrival order, and a head that
//! advances at the rate the node has shown it can absorb.

use std::time::{Duration, Instant};

use super::Verdict;

/// Slowest the line ever advances (positions per second), so it never stalls for good.
const MIN_RATE: f64 = 1.0;
/// How much unused capacity an idle line banks, in seconds of its rate: a newcomer to an
/// idle node enters at once, but a burst beyond a second's worth waits its turn.
const BURST_SECS: f64 = 1.0;

/// A fair line for registrations that cannot be served now. Pure: time is passed in.
#[derive(Debug)]
pub struct WaitingLine {
    /// The next position to hand out.
    next: u64,
    /// Positions below this may enter.
    head: f64,
    /// How fast the head moves, positions per second.
    rate: f64,
    /// Share of `rate` actually served: the admission level's share of the registration
    /// class (see [`set_share`](Self::set_share)).
    share: f64,
    last_advance: Instant,
    /// Registrations that entered (from the line or directly) in the current window.
    entered_this_window: u64,
}

impl WaitingLine {
    /// An empty line whose head starts moving at `initial_rate` positions per second, with
    /// a full second's worth banked so the first newcomers enter at once.
    pub fn new(initial_rate: f64, now: Instant) -> Self {
        let rate = initial_rate.max(MIN_RATE);
        Self {
            next: 0,
            head: rate * BURST_SECS,
            rate,
            share: 1.0,
            last_advance: now,
            entered_this_window: 0,
        }
    }

    /// Moves the head for the time passed. It runs at most a second's worth of positions
    /// past the last one handed out, so an idle line banks only that much for a burst.
    pub fn advance(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.last_advance)
            .as_secs_f64();
        let rate = self.served_rate();
        // An idle line banks at most BURST_SECS of places for newcomers — but the cap never
        // pulls the head back: when the rate falls, places already reached stay reached, or
        // someone told "come in" a moment ago would be told to wait behind a later arrival
        // (the drills' ledger caught this as overtaking).
        let cap = (self.next as f64 + rate * BURST_SECS).max(self.head);
        self.head = (self.head + rate * dt).min(cap);
        self.last_advance = now;
    }

    /// Nobody is waiting.
    pub fn is_empty(&self) -> bool {
        self.head >= self.next as f64
    }

    /// How many are waiting.
    pub fn len(&self) -> u64 {
        self.next.saturating_sub(self.head.floor() as u64)
    }

    /// The position the head has reached.
    pub fn head(&self) -> f64 {
        self.head
    }

    /// The rate the line has learnt the node absorbs, positions per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How fast the head actually moves: the learnt rate times the share admission
    /// control grants registrations, never below the minimum.
    pub fn served_rate(&self) -> f64 {
        (self.rate * self.share).max(MIN_RATE)
    }

    /// Sets the share (0.0..=1.0) of the learnt rate to serve. Admission control sheds the
    /// lowest class first: as the level falls through the registration cohorts, the line
    /// slows with it, down to its minimum, before any login or message is refused. Call
    /// [`advance`](Self::advance) first, so time already passed counts at the old share.
    pub fn set_share(&mut self, share: f64) {
        self.share = share.clamp(0.0, 1.0);
    }

    /// Hands out the next position.
    pub fn join(&mut self) -> u64 {
        let p = self.next;
        self.next += 1;
        p
    }

    /// Whether the holder of `position` may register now.
    pub fn may_enter(&self, position: u64) -> bool {
        (position as f64) < self.head
    }

    /// Counts a registration that was served (directly or from the line).
    pub fn entered(&mut self) {
        self.entered_this_window += 1;
    }

    /// Expected time until `position` may enter at the current rate.
    pub fn wait_for(&self, position: u64) -> Duration {
        let ahead = (position as f64 + 1.0 - self.head).max(0.0);
        Duration::from_secs_f64(ahead / self.served_rate())
    }

    /// Adapts the rate once per admission window, from what the window showed: overloaded →
    /// down to what actually entered in that window (what the node absorbed while it was
    /// overloaded, so more was too much), by at least 10% and at most half; calm → 25%
    /// faster, but not beyond twice what entered (the measured absorption), so the rate
    /// follows capacity instead of a guess. Falling to the measurement matters when the
    /// starting rate is far above capacity: at 10% a window, a line starting at 500/s takes
    /// 15 s to reach a node that absorbs 100/s, while every second of it overloads the node.
    pub fn end_window(&mut self, verdict: Verdict, window: Duration) {
        let measured = self.entered_this_window as f64 / window.as_secs_f64().max(1e-3);
        self.rate = match verdict {
            Verdict::Overloaded => measured.clamp(self.rate * 0.5, self.rate * 0.9),
            Verdict::Hold => self.rate,
            // Raise at most to twice what measurably entered; never lower here: few entering can
            // mean the holders of due places have not come back yet, not that the node is full.
            Verdict::Calm => (self.rate * 1.25 + 1.0)
                .min(2.0 * measured + MIN_RATE)
                .max(self.rate),
        }
        .max(MIN_RATE);
        self.entered_this_window = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_never_moves_back_when_the_rate_falls() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(100.0, t0);
        // An idle line has banked 100 places; one arrival takes position 0.
        let first = line.join();
        assert!(line.may_enter(first) && line.may_enter(99));
        let head = line.head();
        // Admission control now grants registrations a tenth of the rate.
        line.set_share(0.1);
        line.advance(t0 + Duration::from_millis(100));
        assert!(line.head() >= head, "{} < {head}", line.head());
        assert!(line.may_enter(99), "a place already reached stays reached");
    }

    #[test]
    fn positions_enter_in_order_at_the_rate() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(10.0, t0);
        assert!(line.is_empty());
        let positions: Vec<u64> = (0..50).map(|_| line.join()).collect();
        assert_eq!(positions, (0..50).collect::<Vec<_>>());
        // A fresh line has one second's worth banked: the first 10 enter at once.
        assert!(line.may_enter(9) && !line.may_enter(10));
        assert_eq!(line.len(), 40);
        assert_eq!(line.wait_for(19), Duration::from_secs(1));
        line.advance(t0 + Duration::from_secs(1));
        assert!(
            line.may_enter(19) && !line.may_enter(20),
            "10 per second, in order"
        );
        line.advance(t0 + Duration::from_secs(100));
        assert!(line.is_empty() && line.may_enter(49));
        // An idle line banks one second's worth (10) for newcomers, no more.
        let burst: Vec<bool> = (0..11)
            .map(|_| {
                let p = line.join();
                line.may_enter(p)
            })
            .collect();
        assert_eq!(burst.iter().filter(|b| **b).count(), 10);
        assert!(!burst[10]);
    }

    #[test]
    fn the_share_slows_the_head_and_the_estimate() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(100.0, t0);
        let positions: Vec<u64> = (0..1000).map(|_| line.join()).collect();
        line.set_share(0.25);
        assert_eq!(line.served_rate(), 25.0);
        assert_eq!(line.wait_for(positions[124]), Duration::from_secs(1));
        line.advance(t0 + Duration::from_secs(2));
        // 100 banked at the start, then 2 s at 25/s.
        assert!(line.may_enter(149) && !line.may_enter(150));
        line.set_share(0.0);
        line.advance(t0 + Duration::from_secs(4));
        assert!(
            line.may_enter(151) && !line.may_enter(152),
            "the minimum only"
        );
        assert_eq!(line.rate(), 100.0, "the learnt rate is kept");
    }

    #[test]
    fn rate_follows_what_the_node_absorbs() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(10.0, t0);
        let w = Duration::from_secs(1);
        // Calm windows in which 100 registrations entered: the rate climbs, capped by 2×100.
        for _ in 0..100 {
            for _ in 0..100 {
                line.entered();
            }
            line.end_window(Verdict::Calm, w);
        }
        assert!(
            (200.0..=201.0).contains(&line.rate()),
            "capped by measurement: {}",
            line.rate()
        );
        let overloaded_with = |line: &mut WaitingLine, entered: usize| {
            for _ in 0..entered {
                line.entered();
            }
            line.end_window(Verdict::Overloaded, w);
            line.rate()
        };
        // Overloaded windows: down to what entered, by at least 10% and at most half.
        let r = overloaded_with(&mut line, 190);
        assert!((r - 180.0).abs() < 1.0, "at least 10% (200 → 180): {r}");
        let r = overloaded_with(&mut line, 150);
        assert!((r - 150.0).abs() < 1.0, "to what entered (180 → 150): {r}");
        let r = overloaded_with(&mut line, 10);
        assert!((r - 75.0).abs() < 1.0, "at most half (150 → 75): {r}");
        line.end_window(Verdict::Hold, w);
        assert!((line.rate() - r).abs() < 1e-9, "holds");
        for _ in 0..100 {
            line.end_window(Verdict::Overloaded, w);
        }
        assert_eq!(line.rate(), MIN_RATE, "never stalls");
    }
}
