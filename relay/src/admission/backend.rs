//! Whether the storage behind a node (delivery log, mailbox store) is overloaded.
//!
//! Three kinds of evidence, each with time passed in:
//! - **slow writes**: the smoothed latency of durable writes above a limit — the configured
//!   one, or four times the latency this node usually sees, whichever is larger (see
//!   `UsualLatency`);
//! - **a write stuck now**: one still in flight for several times that limit — the only
//!   sign of a backend that stopped answering altogether (a frozen database, a broker
//!   restarting), since a write that never finishes never reports a latency;
//! - **delivery lag**: more log records waiting to be stored than allowed.
//!
//! Latency and lag are *evidence that expires*: reported more than `evidence_life` ago,
//! they no longer count. Without that, a node that shed everything during an outage
//! would keep the outage's last numbers forever — nothing flows, so nothing updates them —
//! and go on shedding after the backend recovered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A write in flight for this many times the latency limit counts as stuck.
const STUCK_FACTOR: u32 = 4;
/// Writes are slow at this many times their usual latency...
const USUAL_FACTOR: f64 = 4.0;
/// ...but what is usual raises the configured limit at most this many times.
const MAX_RAISE: f64 = 8.0;
/// A second with fewer writes than this says too little about what is usual.
const MIN_WRITES_PER_SECOND: u32 = 10;
/// What is usual is judged over the last ten minutes.
const USUAL_HORIZON: Duration = Duration::from_secs(600);

/// The write latency this node usually sees: the median one-second average latency over
/// the last ten minutes.
///
/// A fixed limit cannot fit every node. Durable writes take 1–2 ms on an idle whole machine;
/// on a node held to a quarter of a core (fsync plus waiting out its CPU quota) the smoothed
/// latency `levee-surge --trace` samples read 3–60 ms, and a 25 ms limit read most windows
/// as overloaded, so admission control shed logins from a node that was merely small. A
/// median, so a surge shorter than five minutes does not become usual (a minimum, tried
/// first, follows the node's best moments: 3 ms in those samples, against a typical 10–50).
/// Only a backend slow for most of ten minutes moves it, and even then the limit rises at
/// most [`MAX_RAISE`] times; delivery lag and stuck writes are judged on their own.
#[derive(Debug)]
struct UsualLatency {
    second_start: Option<Instant>,
    second_sum_ms: f64,
    second_writes: u32,
    /// One-second averages within the horizon, oldest first, with when they ended.
    seconds: std::collections::VecDeque<(Instant, f64)>,
    median_ms: Option<f64>,
}

impl UsualLatency {
    fn new() -> Self {
        Self {
            second_start: None,
            second_sum_ms: 0.0,
            second_writes: 0,
            seconds: std::collections::VecDeque::new(),
            median_ms: None,
        }
    }

    fn sample(&mut self, took_ms: f64, now: Instant) {
        let second_start = *self.second_start.get_or_insert(now);
        if now.saturating_duration_since(second_start) >= Duration::from_secs(1) {
            if self.second_writes >= MIN_WRITES_PER_SECOND {
                let average = self.second_sum_ms / f64::from(self.second_writes);
                self.second_ended(average, now);
            }
            self.second_start = Some(now);
            self.second_sum_ms = 0.0;
            self.second_writes = 0;
        }
        self.second_sum_ms += took_ms;
        self.second_writes += 1;
    }

    /// Once a second at most: a few hundred numbers to sort.
    fn second_ended(&mut self, average_ms: f64, now: Instant) {
        self.seconds.push_back((now, average_ms));
        while self
            .seconds
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > USUAL_HORIZON)
        {
            self.seconds.pop_front();
        }
        let mut sorted: Vec<f64> = self.seconds.iter().map(|(_, ms)| *ms).collect();
        sorted.sort_by(f64::total_cmp);
        self.median_ms = sorted.get(sorted.len() / 2).copied();
    }

    /// The usual latency in ms, once a busy enough second has been seen.
    fn ms(&self) -> Option<f64> {
        self.median_ms
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct BackendHealth {
    /// The configured limit: the least latency that counts as slow.
    latency_limit: Duration,
    usual: UsualLatency,
    lag_limit: u64,
    evidence_life: Duration,
    smoothed_ms: f64,
    sampled_at: Option<Instant>,
    lag: u64,
    lag_at: Option<Instant>,
    /// Writes in flight, by ticket; tickets grow with time, so the first is the oldest.
    in_flight: BTreeMap<u64, Instant>,
    next_ticket: u64,
}

impl BackendHealth {
    /// Overloaded past `latency_limit` or four times the usual latency, whichever is larger
    /// (smoothed), or `lag_limit` records behind; evidence older than `evidence_life` is
    /// ignored.
    pub fn new(latency_limit: Duration, lag_limit: u64, evidence_life: Duration) -> Self {
        Self {
            latency_limit,
            usual: UsualLatency::new(),
            lag_limit,
            evidence_life,
            smoothed_ms: 0.0,
            sampled_at: None,
            lag: 0,
            lag_at: None,
            in_flight: BTreeMap::new(),
            next_ticket: 0,
        }
    }

    /// A durable write starts; pass the ticket to [`finished`](Self::finished).
    pub fn started(&mut self, now: Instant) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.in_flight.insert(ticket, now);
        ticket
    }

    /// The write with `ticket` ended (whatever its outcome): its latency is evidence.
    pub fn finished(&mut self, ticket: u64, now: Instant) {
        if let Some(start) = self.in_flight.remove(&ticket) {
            let took = now.saturating_duration_since(start).as_secs_f64() * 1000.0;
            // A first sample, or one after the old evidence expired, starts the average
            // afresh rather than blending with numbers from another era.
            self.smoothed_ms = if self.fresh(self.sampled_at, now) {
                0.9 * self.smoothed_ms + 0.1 * took
            } else {
                took
            };
            self.sampled_at = Some(now);
            self.usual.sample(took, now);
        }
    }

    /// Delivery is `records` behind the log.
    pub fn record_lag(&mut self, records: u64, now: Instant) {
        self.lag = records;
        self.lag_at = Some(now);
    }

    fn fresh(&self, at: Option<Instant>, now: Instant) -> bool {
        at.is_some_and(|t| now.saturating_duration_since(t) <= self.evidence_life)
    }

    /// The smoothed write latency (for metrics), whether or not it is still evidence.
    pub fn smoothed(&self) -> Duration {
        Duration::from_secs_f64(self.smoothed_ms / 1000.0)
    }

    /// The latency above which writes are slow: the configured limit, raised to four times
    /// the usual latency (at most `MAX_RAISE` times).
    pub fn latency_limit(&self) -> Duration {
        let configured = self.latency_limit.as_secs_f64();
        let usual = self.usual.ms().map_or(0.0, |ms| ms / 1000.0);
        Duration::from_secs_f64((USUAL_FACTOR * usual).clamp(configured, MAX_RAISE * configured))
    }

    /// Whether the backend is overloaded at `now`.
    pub fn overloaded(&self, now: Instant) -> bool {
        let limit = self.latency_limit();
        let slow = self.fresh(self.sampled_at, now) && self.smoothed() > limit;
        let stuck = self
            .in_flight
            .first_key_value()
            .is_some_and(|(_, start)| now.saturating_duration_since(*start) > limit * STUCK_FACTOR);
        let lagging = self.fresh(self.lag_at, now) && self.lag > self.lag_limit;
        slow || stuck || lagging
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> BackendHealth {
        BackendHealth::new(Duration::from_millis(25), 100, Duration::from_secs(2))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fast_writes_are_healthy_and_slow_ones_are_not() {
        let t0 = Instant::now();
        let mut h = health();
        writes(&mut h, t0, 2, 100, 2);
        assert!(!h.overloaded(t0 + ms(2_000)));
        assert_eq!(
            h.latency_limit(),
            ms(25),
            "usually fast: the configured limit"
        );
        writes(&mut h, t0 + ms(2_000), 1, 100, 200);
        assert!(h.overloaded(t0 + ms(3_200)));
        assert!(h.smoothed() > ms(25));
    }

    #[test]
    fn a_write_that_never_ends_is_overload_while_it_hangs() {
        let t0 = Instant::now();
        let mut h = health();
        let t = h.started(t0);
        assert!(!h.overloaded(t0 + ms(50)), "not yet: within 4x the limit");
        assert!(h.overloaded(t0 + ms(101)));
        assert!(h.overloaded(t0 + Duration::from_secs(30)), "still hanging");
        h.finished(t, t0 + Duration::from_secs(30));
        assert!(
            h.overloaded(t0 + Duration::from_secs(31)),
            "its latency is fresh evidence"
        );
        assert!(
            !h.overloaded(t0 + Duration::from_secs(33)),
            "and expires when nothing new is written"
        );
    }

    #[test]
    fn evidence_expires_so_an_idle_node_recovers() {
        let t0 = Instant::now();
        let mut h = health();
        let t = h.started(t0);
        h.finished(t, t0 + Duration::from_secs(1));
        h.record_lag(1_000, t0 + Duration::from_secs(1));
        assert!(h.overloaded(t0 + Duration::from_secs(2)));
        assert!(!h.overloaded(t0 + Duration::from_secs(4)));
        // Once expired, one fast write is not averaged with the old slow one.
        let t = h.started(t0 + Duration::from_secs(5));
        h.finished(t, t0 + Duration::from_secs(5) + ms(2));
        assert!(h.smoothed() < ms(3));
        assert!(!h.overloaded(t0 + Duration::from_secs(5) + ms(10)));
    }

    /// Writes taking `ms` each, `per_second` of them, for `secs` seconds from `from`.
    fn writes(h: &mut BackendHealth, from: Instant, secs: u64, per_second: u64, took: u64) {
        for i in 0..secs * per_second {
            let at = from + Duration::from_millis(i * 1000 / per_second);
            let t = h.started(at);
            h.finished(t, at + ms(took));
        }
    }

    #[test]
    fn a_node_whose_writes_are_usually_slow_learns_its_own_limit() {
        let t0 = Instant::now();
        let mut h = health();
        assert_eq!(
            h.latency_limit(),
            ms(25),
            "nothing learnt yet: the configured limit"
        );
        // A small node: 40 ms is what its writes take when nothing is wrong.
        writes(&mut h, t0, 60, 50, 40);
        assert_eq!(h.latency_limit(), ms(160), "four times the usual");
        let t1 = t0 + Duration::from_secs(60);
        assert!(!h.overloaded(t1));
        // A surge: writes take 100 ms for 20 s, then 300 ms.
        writes(&mut h, t1, 20, 50, 100);
        let t2 = t1 + Duration::from_secs(20);
        assert!(!h.overloaded(t2), "2.5x usual is not overload");
        assert_eq!(h.latency_limit(), ms(160), "a surge does not become usual");
        writes(&mut h, t2, 5, 50, 300);
        assert!(h.overloaded(t2 + Duration::from_secs(5)));
    }

    #[test]
    fn what_is_usual_raises_the_limit_only_so_far_and_is_forgotten() {
        let t0 = Instant::now();
        let mut h = health();
        // A backend slow for a long time: its latency becomes usual, within bounds.
        writes(&mut h, t0, 700, 20, 1_000);
        assert_eq!(
            h.latency_limit(),
            ms(200),
            "at most 8 times the configured limit"
        );
        // Fast again for ten minutes: the slow past is forgotten.
        writes(&mut h, t0 + Duration::from_secs(700), 700, 20, 2);
        assert_eq!(h.latency_limit(), ms(25));
    }

    #[test]
    fn a_quiet_second_says_nothing_about_what_is_usual() {
        let t0 = Instant::now();
        let mut h = health();
        writes(&mut h, t0, 10, 5, 100);
        assert_eq!(h.latency_limit(), ms(25));
    }

    #[test]
    fn lag_counts_while_it_is_fresh() {
        let t0 = Instant::now();
        let mut h = health();
        h.record_lag(100, t0);
        assert!(!h.overloaded(t0), "at the limit is fine");
        h.record_lag(101, t0);
        assert!(h.overloaded(t0 + ms(1_999)));
        assert!(!h.overloaded(t0 + ms(2_001)));
    }
}
