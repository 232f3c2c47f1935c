//! What a simulation run counts, and what it reports.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Scenario;
use super::run::histogram;
use crate::slo::message_p99_slo_ms;

/// One point of the run's time series.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesPoint {
    /// Seconds into the run.
    pub at_s: f64,
    /// Newcomers arrived so far.
    pub arrived: u64,
    /// Newcomers admitted so far.
    pub admitted: u64,
    /// Newcomers connected and waiting in a line now.
    pub in_line: u64,
    /// Newcomers trying to get through a door now.
    pub at_door: u64,
    /// The smallest share of established users' messages admitted on any live node.
    pub lowest_messaging_share: f64,
}

/// What the drills' ledger says of the order newcomers got in (see [`Outcome`]'s fields of
/// the same names).
#[derive(Clone, Copy, Debug, Default)]
pub struct OrderCounts {
    pub overtakes: u64,
    pub strict_overtakes: u64,
    pub kept_away: u64,
}

/// What a run showed.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Newcomers who arrived.
    pub arrived: u64,
    /// Newcomers admitted by the end.
    pub admitted: u64,
    /// Admitted while the wave was arriving, per second of it (`levee-surge`'s goodput).
    pub goodput_per_s: f64,
    /// Still waiting at the end, holding a ticket.
    pub waiting_with_ticket: u64,
    /// Still trying to connect at the end.
    pub at_door: u64,
    /// Requests that failed for good: no answer within the client's request timeout.
    pub hard_failures: u64,
    /// Seconds from arrival to admission, of those admitted: p50, p90, p99, max.
    pub admission_wait_s: [f64; 4],
    /// Every request newcomers made (connection attempts turned away — no answer within
    /// the connect timeout — and registration requests, as `levee-surge` counts them) over
    /// the newcomers admitted.
    pub requests_per_admitted: f64,
    /// The admitted newcomers' own requests, per admitted newcomer.
    pub own_requests_per_admitted: f64,
    /// Newcomers turned away after someone later in the cluster's line got in, comparing
    /// places at least the drills' resolution apart (`levee_chaos::ledger::overtakes`
    /// with `ORDER_RESOLUTION_MS`): what the drills count.
    pub overtakes: u64,
    /// The same, comparing every two places however close.
    pub strict_overtakes: u64,
    /// Newcomers told to stay away while a later place got in
    /// (`levee_chaos::ledger::kept_away`, the drills' resolution and slack).
    pub kept_away: u64,
    /// The established users' messages shed, over those offered.
    pub users_shed: f64,
    /// The established users' message p99, ms (the unloaded p99 plus the p99 of the delay
    /// newcomers added), and the SLO it is held to.
    pub users_p99_ms: f64,
    /// See `levee_bench::slo::message_p99_slo_ms`.
    pub users_slo_ms: f64,
    /// Connection attempts that got no answer within the connect timeout (every datagram
    /// dropped at the door, or the handshake too late).
    pub turned_away: u64,
    /// Handshakes the nodes did.
    pub handshakes: u64,
    /// New connections' datagrams the doors dropped.
    pub door_drops: u64,
    /// Registrations told to wait.
    pub queued: u64,
    /// Tickets a node refused.
    pub tickets_rejected: u64,
    /// Connections lost with their node.
    pub connections_lost: u64,
    /// Nodes that died.
    pub node_deaths: u64,
    /// The time series.
    pub series: Vec<SeriesPoint>,
}

/// Counters kept while the simulation runs.
pub(crate) struct Tally {
    pub requests: u64,
    own_requests: u64,
    pub handshakes: u64,
    pub door_drops: u64,
    pub queued: u64,
    pub hard_failures: u64,
    pub tickets_rejected: u64,
    pub turned_away: u64,
    pub connections_lost: u64,
    pub node_deaths: u64,
    admitted: u64,
    admitted_in_wave: u64,
    arrived: u64,
    wave_end_us: u64,
    /// Seconds from arrival to admission, in ms.
    admission_wait: Histogram<u64>,
    messages_offered: u64,
    messages_admitted: u64,
    /// What newcomers added to admitted messages' latency, µs, weighted by messages.
    user_wait: Histogram<u64>,
    /// Admitted messages they added nothing to (not yet in `user_wait`).
    undelayed: u64,
    pub series: Vec<SeriesPoint>,
}

impl Tally {
    pub fn new(scenario: &Scenario) -> Self {
        Self {
            requests: 0,
            own_requests: 0,
            handshakes: 0,
            door_drops: 0,
            queued: 0,
            hard_failures: 0,
            tickets_rejected: 0,
            turned_away: 0,
            connections_lost: 0,
            node_deaths: 0,
            admitted: 0,
            admitted_in_wave: 0,
            arrived: 0,
            wave_end_us: (scenario.wave.secs() * 1e6) as u64,
            admission_wait: histogram(),
            messages_offered: 0,
            messages_admitted: 0,
            user_wait: histogram(),
            undelayed: 0,
            series: Vec::new(),
        }
    }

    pub fn arrived(&mut self) {
        self.arrived += 1;
    }

    pub fn admitted(&mut self, now_us: u64, waited_us: u64, requests: u32) {
        self.admitted += 1;
        if now_us <= self.wave_end_us {
            self.admitted_in_wave += 1;
        }
        self.own_requests += u64::from(requests);
        let _ = self.admission_wait.record((waited_us / 1000).max(1));
    }

    pub fn admitted_count(&self) -> u64 {
        self.admitted
    }

    /// The established users' messages of one probe on one node.
    pub fn messages(&mut self, offered: u64, admitted: u64, delay_us: f64) {
        self.messages_offered += offered;
        self.messages_admitted += admitted;
        // Most are not delayed at all; counted apart, they cost no histogram lookup.
        if delay_us < 1.0 {
            self.undelayed += admitted;
        } else if admitted > 0 {
            let _ = self.user_wait.record_n(delay_us as u64, admitted);
        }
    }

    pub fn finish(
        mut self,
        scenario: &Scenario,
        wave_end_us: u64,
        waiting_with_ticket: u64,
        at_door: u64,
        order: OrderCounts,
    ) -> Outcome {
        let _ = self.user_wait.record_n(0, self.undelayed);
        let admitted = self.admitted.max(1) as f64;
        let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let w = &self.admission_wait;
        let users_p99_ms = scenario.unloaded_p99_ms + q(&self.user_wait, 0.99);
        Outcome {
            arrived: self.arrived,
            admitted: self.admitted,
            goodput_per_s: self.admitted_in_wave as f64 / (wave_end_us as f64 / 1e6).max(1e-9),
            waiting_with_ticket,
            at_door,
            hard_failures: self.hard_failures,
            admission_wait_s: [q(w, 0.5), q(w, 0.9), q(w, 0.99), w.max() as f64 / 1000.0],
            requests_per_admitted: self.requests as f64 / admitted,
            own_requests_per_admitted: self.own_requests as f64 / admitted,
            overtakes: order.overtakes,
            strict_overtakes: order.strict_overtakes,
            kept_away: order.kept_away,
            users_shed: 1.0 - self.messages_admitted as f64 / self.messages_offered.max(1) as f64,
            users_p99_ms,
            users_slo_ms: message_p99_slo_ms(scenario.unloaded_p99_ms),
            turned_away: self.turned_away,
            handshakes: self.handshakes,
            door_drops: self.door_drops,
            queued: self.queued,
            tickets_rejected: self.tickets_rejected,
            connections_lost: self.connections_lost,
            node_deaths: self.node_deaths,
            series: self.series,
        }
    }
}
