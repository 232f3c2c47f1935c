//! Whether the storage behind a node (delivery log, mailbox store) is overloaded.
//!
//! Three kinds of evidence, each with time passed in:
//! - **slow writes**: the smoothed latency of durable writes above a limit;
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

/// See the module docs.
#[derive(Debug)]
pub struct BackendHealth {
    latency_limit: Duration,
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
    /// Overloaded past `latency_limit` (smoothed), or `lag_limit` records behind; evidence
    /// older than `evidence_life` is ignored.
    pub fn new(latency_limit: Duration, lag_limit: u64, evidence_life: Duration) -> Self {
        Self {
            latency_limit,
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

    /// Whether the backend is overloaded at `now`.
    pub fn overloaded(&self, now: Instant) -> bool {
        let limit_ms = self.latency_limit.as_secs_f64() * 1000.0;
        let slow = self.fresh(self.sampled_at, now) && self.smoothed_ms > limit_ms;
        let stuck = self.in_flight.first_key_value().is_some_and(|(_, start)| {
            now.saturating_duration_since(*start) > self.latency_limit * STUCK_FACTOR
        });
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
        for i in 0..50 {
            let t = h.started(t0 + ms(i * 10));
            h.finished(t, t0 + ms(i * 10 + 2));
        }
        assert!(!h.overloaded(t0 + ms(500)));
        for i in 50..100 {
            let t = h.started(t0 + ms(i * 10));
            h.finished(t, t0 + ms(i * 10 + 200));
        }
        assert!(h.overloaded(t0 + ms(1_200)));
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
