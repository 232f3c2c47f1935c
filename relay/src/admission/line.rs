//! The registration waiting line: positions handed out in arrival order, and a head that
//! advances at the rate the node has shown it can absorb.

use std::time::{Duration, Instant};

use super::Verdict;

/// Slowest the line ever advances (positions per second), so it never stalls for good.
const MIN_RATE: f64 = 1.0;
/// How much unused capacity an idle line banks, in seconds of its rate: a newcomer to an
/// idle node enters at once, but a burst beyond a second's worth waits its turn.
const BURST_SECS: f64 = 1.0;
/// How much line the door lets build up, in seconds of the line's learnt rate: enough that
/// the holders of the places coming due are connected and back in time, no more.
const CONNECTED_LINE_SECS: f64 = 3.0;
/// The door lets in at most this many times what the node measurably absorbed (see
/// [`WaitingLine::door_rate`]).
const DOOR_GROWTH: f64 = 2.0;

/// A fair line for registrations that cannot be served now. Pure: time is passed in.
#[derive(Debug)]
pub struct WaitingLine {
    /// The next position to hand out.
    next: u64,
    /// Positions below this may enter.
    head: f64,
    /// How fast the head moves, positions per second.
    rate: f64,
    /// Held back to the minimum rate while more important classes are shed (see
    /// [`hold_back`](Self::hold_back)).
    held_back: bool,
    /// Paused while the node is congested right now (see [`pause`](Self::pause)).
    paused: bool,
    last_advance: Instant,
    /// Registrations that entered (from the line or directly) in the current window.
    entered_this_window: u64,
    /// Seconds of the current window the line was neither held back nor paused.
    open_this_window: f64,
    /// The share of recent windows the line was open (smoothed over about two).
    open_share: f64,
    /// Places handed out in the current window: newcomers arriving.
    joined_this_window: u64,
    /// Places handed out per second over recent windows (smoothed over about two): the
    /// demand, whether or not the node could seat it.
    demand: f64,
    /// The most the rate may be (`f64::INFINITY`: no ceiling); see
    /// [`with_ceiling`](Self::with_ceiling).
    ceiling: f64,
    /// Registrations sent on to another node in the current window.
    redirected_this_window: u64,
    /// Registrations decided in the current window (entered or not).
    asked_this_window: u64,
    /// Registrations that entered, or were sent on to their mailbox's owner, per second the
    /// line was open, over recent windows (smoothed over about two): what the node
    /// measurably absorbed.
    absorbed: f64,
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
            held_back: false,
            paused: false,
            last_advance: now,
            entered_this_window: 0,
            open_this_window: 0.0,
            open_share: 1.0,
            joined_this_window: 0,
            demand: 0.0,
            ceiling: f64::INFINITY,
            redirected_this_window: 0,
            asked_this_window: 0,
            absorbed: rate,
        }
    }

    /// The same line, never seating more than `per_s` a second however much the node could
    /// absorb. Operators cap registrations per node when something behind the node limits
    /// them (account writes to a shared store, verification SMS); cluster capacity then
    /// grows with the node count, which is what lets an autoscaler shorten the line.
    pub fn with_ceiling(mut self, per_s: f64) -> Self {
        self.ceiling = per_s.max(MIN_RATE);
        self.rate = self.rate.min(self.ceiling);
        self.head = self.head.min(self.rate * BURST_SECS);
        self.absorbed = self.absorbed.min(self.rate);
        self
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
        if !self.held_back && !self.paused {
            self.open_this_window += dt;
        }
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

    /// How fast the head actually moves: the learnt rate, or the minimum while held back or
    /// paused.
    pub fn served_rate(&self) -> f64 {
        if self.held_back || self.paused {
            MIN_RATE
        } else {
            self.rate.max(MIN_RATE)
        }
    }

    /// How many newcomers per second may come through the node's door: the rate the head
    /// moves, plus as much again while the line is shorter than `CONNECTED_LINE_SECS` of
    /// its learnt rate, tapering to nothing extra at that length. A newcomer through the door
    /// has already cost a handshake; one let in beyond what the line seats soon waits
    /// connected, comes back with its ticket again and again, and at a wave's end gives up
    /// with that work wasted. Letting in twice the head's rate regardless built a line of
    /// 1,000–1,800 connected newcomers in a 10x wave, and 1,600–1,900 were still waiting
    /// when they gave up (`levee-surge --trace`). Outside the door, a crowd costs the node
    /// only dropped datagrams, most of them dropped by the kernel (`node::sieve`).
    ///
    /// And never more than `DOOR_GROWTH` times what the node measurably absorbed in recent
    /// windows. The learnt rate only ever rises while calm, so after a line empties it can
    /// stand far above what the node takes: in 50x waves it reached 620–750/s on a node
    /// admitting 100–300/s, the door let twice that in, and the handshakes stalled the node
    /// every 12 s (message p50 0.5–1.2 s; `levee-surge --trace`). Bounded by what was
    /// absorbed, the door grows only as fast as newcomers get through their handshakes and
    /// in (or on to their mailbox's owner: see [`redirected`](Self::redirected)).
    pub fn door_rate(&self) -> f64 {
        let served = self.served_rate();
        let room = 1.0 - self.len() as f64 / (self.rate * CONNECTED_LINE_SECS).max(1.0);
        (served * (1.0 + room.clamp(0.0, 1.0))).min(DOOR_GROWTH * self.absorbed.max(MIN_RATE))
    }

    /// Holds the line to its minimum rate (`true`) or lets it run at its learnt rate again.
    /// Admission control holds it back while it sheds logins or messages: registrations give
    /// way first. Short of that the learnt rate alone sheds registrations — it falls with
    /// every overloaded window. (Scaling it by the level's share of registration cohorts as
    /// well shed them twice over, and since the level climbs back 1% a window, it kept the
    /// line at a crawl for half a minute after each overload; `levee-surge --trace` showed
    /// it.) Call [`advance`](Self::advance) first, so time already passed counts at the old
    /// rate.
    pub fn hold_back(&mut self, held_back: bool) {
        self.held_back = held_back;
    }

    /// Pauses the line (`true`: the head moves at the minimum rate only, and places an idle
    /// line banked are given up) or lets it go on. For while the node is congested right
    /// now: the learnt rate adapts only once a window, and a line running at a rate the
    /// node cannot absorb — the 500/s it starts at, on a node that absorbs 85 — let hundreds
    /// in during the wave's first second; their work queued in front of established users'
    /// messages for seconds. Giving up the bank never moves the head behind a position
    /// already handed out. A pause does not change the estimates given to those waiting:
    /// it lasts milliseconds. Call [`advance`](Self::advance) first.
    pub fn pause(&mut self, paused: bool) {
        if paused && !self.paused {
            self.head = self.head.min(self.next as f64);
        }
        self.paused = paused;
    }

    /// Whether the line is paused (see [`pause`](Self::pause)).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Hands out the next position.
    pub fn join(&mut self) -> u64 {
        let p = self.next;
        self.next += 1;
        self.joined_this_window += 1;
        p
    }

    /// Newcomers arriving per second over recent windows, over the rate the line seats
    /// them: above 1 the line grows, however short it is now. The learnt rate (or the
    /// ceiling) is the capacity, not the served rate: a line held back or paused for a
    /// moment is not a node with less room.
    pub fn demand_ratio(&self) -> f64 {
        self.demand / self.rate.max(MIN_RATE)
    }

    /// Whether the head has passed `position` (the node decides by place: `LineOrder`
    /// releases the `k`th place exactly when this says `k` may enter; kept for the tests
    /// of the head's arithmetic).
    #[cfg(test)]
    pub fn may_enter(&self, position: u64) -> bool {
        (position as f64) < self.head
    }

    /// Counts a registration asked for, before it is decided (whether it enters or not).
    pub fn asked(&mut self) {
        self.asked_this_window += 1;
    }

    /// Counts a registration that was served (directly or from the line).
    pub fn entered(&mut self) {
        self.entered_this_window += 1;
    }

    /// Counts a registration sent on to the node that owns its mailbox. It does not enter
    /// this line, but it got through this node's door and was dealt with: the door's bound
    /// counts it as absorbed. Counting only entries starved a cluster's doors, where most
    /// newcomers are sent on after their handshake: in the `mass-migration` drill the doors
    /// shrank to 15–60 admissions a second with nobody in line.
    pub fn redirected(&mut self) {
        self.redirected_this_window += 1;
    }

    /// Expected time until `position` may enter: at the minimum rate while held back,
    /// otherwise at the learnt rate for the share of recent windows the line was open.
    /// Each pause is short, but a congested node pauses often; estimating at the learnt rate
    /// alone sent hundreds of waiting newcomers back many times too early, each return a
    /// signature check and a new ticket on a node that was already congested.
    pub fn wait_for(&self, position: u64) -> Duration {
        let ahead = (position as f64 + 1.0 - self.head).max(0.0);
        let rate = if self.held_back {
            MIN_RATE
        } else {
            (self.rate * self.open_share).max(MIN_RATE)
        };
        Duration::from_secs_f64(ahead / rate)
    }

    /// How long a newcomer joining now would wait: [`wait_for`](Self::wait_for) the next
    /// position. 0 while the line is empty and the head has places banked.
    pub fn tail_wait(&self) -> Duration {
        self.wait_for(self.next)
    }

    /// Adapts the rate once per admission window, from what the window showed: overloaded →
    /// down to what actually entered while the line was open (what the node absorbed while
    /// it was overloaded, so more was too much), by at least 10% and at most half; calm →
    /// 25% faster, but not beyond twice what entered (the measured absorption), so the rate
    /// follows capacity instead of a guess. Falling to the measurement matters when the
    /// starting rate is far above capacity: at 10% a window, a line starting at 500/s takes
    /// 15 s to reach a node that absorbs 100/s, while every second of it overloads the node.
    ///
    /// Only the time the line was open counts: while paused or held back few enter because
    /// the line was shut, not because the node absorbs few, and measuring over the whole
    /// window spiralled the rate down to a few per second within one wave. A window open
    /// for less than a tenth of its length measures nothing: overloaded, the rate falls
    /// 10%; otherwise it stays.
    ///
    /// Nor does a window in which nobody asked to register: the node may be busy with its
    /// users, but that says nothing about how many newcomers it could seat, and congestion
    /// right now is the pause's business. Learning from such windows cut the rate (by half
    /// while open, 10% while paused) with each overloaded second of a quiet hour: in one
    /// `levee-surge` run the warm-up alone (40 s of users, no newcomer) left the line at
    /// 15.6 a second of its 500, and the wave after it seated 5 a second
    /// (docs/PERFORMANCE-LOG.md, "Twelfth pass").
    pub fn end_window(&mut self, verdict: Verdict, window: Duration) {
        let open = self.open_this_window;
        let asked =
            self.asked_this_window + self.entered_this_window + self.redirected_this_window > 0;
        let measured = (asked && open >= 0.1 * window.as_secs_f64())
            .then(|| self.entered_this_window as f64 / open.max(1e-3));
        self.rate = match (verdict, measured) {
            (Verdict::Overloaded, Some(m)) => m.clamp(self.rate * 0.5, self.rate * 0.9),
            (Verdict::Overloaded, None) if asked => self.rate * 0.9,
            (Verdict::Overloaded | Verdict::Hold, _) | (Verdict::Calm, None) => self.rate,
            // Raise at most to twice what measurably entered; never lower here: few entering can
            // mean the holders of due places have not come back yet, not that the node is full.
            (Verdict::Calm, Some(m)) => (self.rate * 1.25 + 1.0)
                .min(2.0 * m + MIN_RATE)
                .max(self.rate),
        }
        .clamp(MIN_RATE, self.ceiling);
        if measured.is_some() {
            let handled = self.entered_this_window + self.redirected_this_window;
            let m = handled as f64 / open.max(1e-3);
            self.absorbed = 0.5 * self.absorbed + 0.5 * m;
        }
        let joined = self.joined_this_window as f64 / window.as_secs_f64().max(1e-3);
        self.demand = 0.5 * self.demand + 0.5 * joined;
        self.joined_this_window = 0;
        self.redirected_this_window = 0;
        self.asked_this_window = 0;
        let open_share = (open / window.as_secs_f64().max(1e-3)).min(1.0);
        self.open_share = 0.5 * self.open_share + 0.5 * open_share;
        self.entered_this_window = 0;
        self.open_this_window = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ends the second after `*now` as one admission window of `line`, in which `entered`
    /// registrations entered and `redirected` were sent on; returns the learnt rate.
    fn window(
        line: &mut WaitingLine,
        now: &mut Instant,
        verdict: Verdict,
        entered: usize,
        redirected: usize,
    ) -> f64 {
        let w = Duration::from_secs(1);
        *now += w;
        line.advance(*now);
        // Someone asked in every window here; see `a_window_nobody_asked_in_measures_nothing`.
        line.asked();
        (0..entered).for_each(|_| line.entered());
        (0..redirected).for_each(|_| line.redirected());
        line.end_window(verdict, w);
        line.rate()
    }

    #[test]
    fn the_head_never_moves_back_when_the_rate_falls() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(100.0, t0);
        // An idle line has banked 100 places; one arrival takes position 0.
        let first = line.join();
        assert!(line.may_enter(first) && line.may_enter(99));
        let head = line.head();
        // Admission control now holds the line back to its minimum.
        line.hold_back(true);
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
    fn the_door_lets_in_what_the_line_seats_and_fills_it_only_to_a_few_seconds() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(100.0, t0);
        assert_eq!(
            line.door_rate(),
            200.0,
            "an empty line: twice the head's rate"
        );
        // Fill it past the bank (100) to 150 waiting: half of the 300 (3 s) it may hold.
        (0..250).for_each(|_| {
            line.join();
        });
        assert_eq!(line.len(), 150);
        assert!(
            (line.door_rate() - 150.0).abs() < 1e-9,
            "{}",
            line.door_rate()
        );
        (0..200).for_each(|_| {
            line.join();
        });
        assert_eq!(line.door_rate(), 100.0, "a full line: only what it seats");
        line.pause(true);
        assert_eq!(line.door_rate(), MIN_RATE, "paused: the head's minimum");
    }

    #[test]
    fn the_door_lets_in_at_most_twice_what_the_node_absorbed() {
        let mut now = Instant::now();
        let mut line = WaitingLine::new(100.0, now);
        // Calm windows with plenty entering teach the line a high rate...
        for _ in 0..20 {
            window(&mut line, &mut now, Verdict::Calm, 400, 0);
        }
        assert!(line.rate() > 700.0, "{}", line.rate());
        assert!(line.door_rate() > 700.0, "{}", line.door_rate());
        // ...which stays when few enter later (calm windows never lower it), but the door
        // follows what entered: 100 a second lets in 200, not twice the learnt rate.
        for _ in 0..10 {
            window(&mut line, &mut now, Verdict::Calm, 100, 0);
        }
        assert!(
            line.rate() > 700.0,
            "the learnt rate is kept: {}",
            line.rate()
        );
        assert!(
            (line.door_rate() - 200.0).abs() < 1.0,
            "twice what entered: {}",
            line.door_rate()
        );
        // As more get in, the door opens further.
        window(&mut line, &mut now, Verdict::Calm, 200, 0);
        assert!(line.door_rate() > 290.0, "{}", line.door_rate());
    }

    #[test]
    fn newcomers_sent_on_to_another_node_count_as_absorbed() {
        let mut now = Instant::now();
        let mut line = WaitingLine::new(100.0, now);
        for _ in 0..20 {
            // A node of three: one newcomer in three is its own, the rest are sent on.
            window(&mut line, &mut now, Verdict::Calm, 100, 200);
        }
        // The bound is twice the 300 it dealt with a second, not twice the 100 that entered
        // here (200, which would shrink the door every window: fewer let in, fewer
        // entering). What limits the door here is the line's own rate, learnt from the 100
        // entering (at most 2 × 100 + 1), doubled while the line is empty: 402.
        assert!(line.door_rate() > 400.0, "{}", line.door_rate());
    }

    #[test]
    fn holding_back_slows_the_head_and_the_estimate_to_the_minimum() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(100.0, t0);
        let positions: Vec<u64> = (0..1000).map(|_| line.join()).collect();
        line.advance(t0 + Duration::from_secs(1));
        // 100 banked at the start, then 1 s at 100/s.
        assert!(line.may_enter(199) && !line.may_enter(200));
        line.hold_back(true);
        assert_eq!(line.served_rate(), MIN_RATE);
        assert_eq!(line.wait_for(positions[201]), Duration::from_secs(2));
        line.advance(t0 + Duration::from_secs(3));
        assert!(
            line.may_enter(201) && !line.may_enter(202),
            "the minimum only"
        );
        assert_eq!(line.rate(), 100.0, "the learnt rate is kept");
        line.hold_back(false);
        line.advance(t0 + Duration::from_secs(4));
        assert!(
            line.may_enter(301) && !line.may_enter(302),
            "and served again"
        );
    }

    #[test]
    fn a_pause_gives_up_the_bank_and_slows_the_head_but_not_the_estimate() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(100.0, t0);
        let first = line.join();
        assert!(line.may_enter(first));
        line.pause(true);
        // The 99 banked places are gone; the one handed out stays reached.
        assert!(line.may_enter(first));
        let second = line.join();
        assert!(!line.may_enter(second), "the bank was given up");
        assert_eq!(line.wait_for(second), Duration::from_millis(10), "at 100/s");
        line.advance(t0 + Duration::from_secs(1));
        assert!(
            line.may_enter(second),
            "the minimum rate: one place a second"
        );
        let third = line.join();
        assert!(!line.may_enter(third));
        line.pause(false);
        line.advance(t0 + Duration::from_millis(1_010));
        assert!(line.may_enter(third), "at the learnt rate again");
    }

    #[test]
    fn a_window_nobody_asked_in_measures_nothing() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(500.0, t0);
        let door = line.door_rate();
        // Forty seconds of a node busy with its users, judged overloaded, while nobody
        // registers: the line learns nothing from them.
        for s in 1..=40 {
            let now = t0 + Duration::from_secs(s);
            line.advance(now);
            line.end_window(Verdict::Overloaded, Duration::from_secs(1));
        }
        assert_eq!(line.rate(), 500.0);
        assert_eq!(line.door_rate(), door, "nor does the door narrow");
        // Registrations asked for, few entering, overloaded: the rate falls as before.
        let now = t0 + Duration::from_secs(41);
        line.advance(now);
        (0..300).for_each(|_| line.asked());
        (0..100).for_each(|_| line.entered());
        line.end_window(Verdict::Overloaded, Duration::from_secs(1));
        assert_eq!(line.rate(), 250.0, "at most half");
    }

    #[test]
    fn rate_follows_what_the_node_absorbs() {
        let mut now = Instant::now();
        let mut line = WaitingLine::new(10.0, now);
        let mut window = |line: &mut WaitingLine, verdict: Verdict, entered: usize| {
            window(line, &mut now, verdict, entered, 0)
        };
        // Calm windows in which 100 registrations entered: the rate climbs, capped by 2×100.
        for _ in 0..100 {
            window(&mut line, Verdict::Calm, 100);
        }
        assert!(
            (200.0..=201.0).contains(&line.rate()),
            "capped by measurement: {}",
            line.rate()
        );
        // Overloaded windows: down to what entered, by at least 10% and at most half.
        let r = window(&mut line, Verdict::Overloaded, 190);
        assert!((r - 180.0).abs() < 1.0, "at least 10% (200 → 180): {r}");
        let r = window(&mut line, Verdict::Overloaded, 150);
        assert!((r - 150.0).abs() < 1.0, "to what entered (180 → 150): {r}");
        let r = window(&mut line, Verdict::Overloaded, 10);
        assert!((r - 75.0).abs() < 1.0, "at most half (150 → 75): {r}");
        let held = window(&mut line, Verdict::Hold, 0);
        assert!((held - r).abs() < 1e-9, "holds");
        for _ in 0..100 {
            window(&mut line, Verdict::Overloaded, 0);
        }
        assert_eq!(line.rate(), MIN_RATE, "never stalls");
    }

    #[test]
    fn only_the_time_the_line_was_open_measures_the_node() {
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        let mut line = WaitingLine::new(100.0, t0);
        // Open for the first 200 ms, in which 20 entered (100/s), then paused.
        line.advance(t0 + Duration::from_millis(200));
        (0..20).for_each(|_| line.entered());
        line.pause(true);
        line.advance(t0 + w);
        line.end_window(Verdict::Calm, w);
        assert!(
            (line.rate() - 126.0).abs() < 1e-9,
            "100/s while open: the calm rise is not capped at 2 × 20/s: {}",
            line.rate()
        );
        // Paused the whole window while newcomers asked: nothing measured, an overloaded
        // window costs 10%.
        line.advance(t0 + 2 * w);
        line.asked();
        line.end_window(Verdict::Overloaded, w);
        assert!((line.rate() - 113.4).abs() < 1e-9, "{}", line.rate());
        line.advance(t0 + 3 * w);
        line.end_window(Verdict::Calm, w);
        assert!(
            (line.rate() - 113.4).abs() < 1e-9,
            "a calm shut window says nothing"
        );
        // Open a fifth, then not at all, then not at all: the estimate counts that.
        let p = line.join();
        let at_learnt_rate = (p as f64 + 1.0 - line.head()) / 113.4;
        let estimate = line.wait_for(p).as_secs_f64();
        let open_share = 0.5 * (0.5 * (0.5 * 1.0 + 0.5 * 0.2));
        assert!(
            (estimate - at_learnt_rate / open_share).abs() < 1e-6,
            "{estimate} vs {}",
            at_learnt_rate / open_share
        );
    }

    #[test]
    fn a_ceiling_holds_the_rate_however_calm_the_node() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut line = WaitingLine::new(500.0, t0).with_ceiling(5.0);
        assert_eq!(line.rate(), 5.0, "starts at the ceiling, not above");
        for _ in 0..20 {
            let r = window(&mut line, &mut now, Verdict::Calm, 5, 0);
            assert!(r <= 5.0, "calm windows raise it to the ceiling only: {r}");
        }
        // Twenty join at once: the last waits about 20 / 5 s, and the estimate says so.
        let last = (0..20).map(|_| line.join()).last().expect("twenty joined");
        let wait = line.wait_for(last).as_secs_f64();
        assert!((3.0..=4.2).contains(&wait), "{wait}");
        assert!(
            line.tail_wait() >= line.wait_for(last),
            "whoever joins next waits longest"
        );
        let r = window(&mut line, &mut now, Verdict::Overloaded, 1, 0);
        assert!(r < 5.0, "overload still lowers it: {r}");
    }

    #[test]
    fn an_idle_line_has_no_tail_wait() {
        let t0 = Instant::now();
        let mut line = WaitingLine::new(10.0, t0);
        line.advance(t0 + Duration::from_secs(5));
        assert_eq!(line.tail_wait(), Duration::ZERO);
    }

    #[test]
    fn demand_over_the_ceiling_reads_above_one_before_the_line_is_long() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut line = WaitingLine::new(500.0, t0).with_ceiling(4.0);
        for _ in 0..2 {
            (0..10).for_each(|_| {
                line.join();
            });
            window(&mut line, &mut now, Verdict::Calm, 4, 0);
        }
        let r = line.demand_ratio();
        assert!(
            (r - 10.0 * 0.75 / 4.0).abs() < 1e-9,
            "10/s against 4/s, smoothed: {r}"
        );
        for _ in 0..20 {
            window(&mut line, &mut now, Verdict::Calm, 0, 0);
        }
        assert!(
            line.demand_ratio() < 0.01,
            "nobody arriving: {}",
            line.demand_ratio()
        );
    }
}
