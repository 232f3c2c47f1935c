//! One node's admission decisions as a whole: the controller, the waiting line, backend
//! health, the line's headroom and the door's rate, with every input's time passed in.
//!
//! The node (`crate::node::admission`) holds one behind a lock and fills in the clock,
//! randomness and metrics; `levee-wave`, the signup-wave simulator, holds one per simulated
//! node and fills in a simulated clock and a seeded generator. Both run these same
//! decisions, which is why they live here and not in the node.

use std::time::{Duration, Instant};

use super::{
    AdmissionController, AdmissionLevel, BackendHealth, CohortSalt, ControllerConfig, Headroom,
    Load, LoadTargets, RequestClass, Ticket, TicketError, TicketKey, Verdict, WaitingLine,
    key_hash, work_bits,
};

/// How often cohorts are reshuffled.
const COHORT_ROTATION: Duration = Duration::from_secs(3600);
/// Shortest life of a ticket; longer waits get twice the expected wait.
const MIN_TICKET_LIFE: Duration = Duration::from_secs(600);
/// A queued client whose wait is short is asked back at least this often, to refresh its
/// estimate; one with a longer wait comes back when half of it has passed (see
/// [`return_after`]).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// New connections per second a pressed node still takes, whatever its line does.
const MIN_HANDSHAKE_RATE: f64 = 20.0;
/// How long the door stays limited after the node was last pressed. The crowd it turned
/// away is still outside, trying again (QUIC resends a dropped Initial after 1, 2, 4 s; a
/// patient client tries a new connection within 8 s). When the line of a 50x wave ran empty,
/// the door opened completely to tens of thousands; message p50 reached 0.8–1.9 s for three
/// seconds and 163 newcomers lost their connections (docs/PERFORMANCE-LOG.md, "Fourth pass").
const DOOR_RELEASE: Duration = Duration::from_secs(10);
/// Backend evidence older than this many windows no longer counts.
const EVIDENCE_WINDOWS: u32 = 2;

/// What to do with a registration.
#[derive(Debug, PartialEq, Eq)]
pub enum RegistrationDecision {
    /// Serve it now.
    Enter,
    /// Not yet: here is the (possibly refreshed) ticket.
    Queued {
        /// The sealed [`Ticket`] to present next time.
        ticket: Vec<u8>,
        /// The place in this node's line.
        position: u64,
        /// How many places are ahead of it.
        ahead: u64,
        /// When to come back.
        retry_after_ms: u64,
        /// When the place is expected to be reached.
        estimated_wait_ms: u64,
    },
    /// The presented ticket is not valid.
    Rejected(TicketError),
}

/// Whether a node holding a registration that has waited `held` so far, told now to come
/// back after `retry_after`, keeps holding it and decides again itself then, instead of
/// answering: while the whole hold stays within `hold` (`registration_hold_ms`). A place
/// that comes due soon is waited for on the node, and the client is answered once.
pub fn keeps_holding(held: Duration, retry_after: Duration, hold: Duration) -> bool {
    held + retry_after <= hold
}

/// When a newcomer told it will wait `wait` is asked back: when its place is due if that
/// is within [`MAX_RETRY_AFTER`], else after half its wait, or `MAX_RETRY_AFTER` if more.
/// Halving keeps each return's estimate fresh where it matters — near the front — while a
/// long wait costs a few returns, not one every 30 s: a simulated national wave
/// (`levee-wave`, waits of up to half an hour) made 11.3 requests per admitted newcomer
/// with a fixed 30 s.
fn return_after(wait: Duration) -> Duration {
    wait.min(MAX_RETRY_AFTER.max(wait / 2))
}

/// What the node reports after [`NodeAdmission::tick`]: the gauges of its metrics page.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionGauges {
    /// The admission level as a fraction of all slots.
    pub level: f64,
    /// People in line.
    pub line_len: u64,
    /// Registrations the line seated per second, smoothed.
    pub served_rate: f64,
    /// The expected wait of the last place in line.
    pub line_wait: Duration,
    /// `levee_load_ratio`, the autoscaling signal.
    pub load_ratio: f64,
}

/// How a node's admission is tuned: the admission part of its configuration
/// (`NodeConfig::admission_settings` reads it).
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionSettings {
    /// The controller's window.
    pub window: Duration,
    /// Average queueing delay over which a window counts as overloaded.
    pub overload_wait: Duration,
    /// Average queueing delay under which the level may climb.
    pub recover_wait: Duration,
    /// The line's rate before it has learnt one, per second.
    pub initial_rate: f64,
    /// Most registrations seated per second (0: no ceiling).
    pub max_per_s: f64,
    /// Smoothed durable-write latency over which the backend counts as overloaded.
    pub backend_latency: Duration,
    /// Delivery lag (records) over which the backend counts as overloaded.
    pub backend_lag: u64,
    /// The line's own scheduling-lag limit (zero: off).
    pub line_lag: Duration,
    /// Most proof-of-work bits a place in line may cost (0: none).
    pub work_max_bits: u32,
    /// The line wait that counts as full load for `levee_load_ratio`.
    pub load_target_wait: Duration,
}

/// One node's admission state. Pure: no clock, no randomness, no metrics; see the module
/// docs. (Not `Debug`: it holds the cluster's ticket key.)
pub struct NodeAdmission {
    controller: AdmissionController,
    line: WaitingLine,
    /// Durable storage writes (delivery-log appends, mailbox inserts, acknowledgements)
    /// and delivery lag.
    backend: BackendHealth,
    /// The line's own, stricter judge of the scheduler's lag; `None` when turned off
    /// (`admission_line_lag_ms = 0`).
    headroom: Option<Headroom>,
    /// When the node was last pressed (shedding, congested, or people in line).
    pressed_at: Option<Instant>,
    window: Duration,
    work_max_bits: u32,
    /// What `levee_load_ratio`'s parts are measured against.
    load_targets: LoadTargets,
    salt: CohortSalt,
    tickets: TicketKey,
    node_id: u32,
}

impl NodeAdmission {
    /// A node's admission as `settings` tune it, signing tickets and salting cohorts with
    /// the cluster `secret`, its tickets marked with `node_id`.
    pub fn new(settings: &AdmissionSettings, secret: &[u8], node_id: u32, now: Instant) -> Self {
        let controller = AdmissionController::new(
            ControllerConfig {
                window: settings.window,
                overload_wait: settings.overload_wait,
                recover_wait: settings.recover_wait,
                ..ControllerConfig::default()
            },
            now,
        );
        let line = WaitingLine::new(settings.initial_rate, now);
        Self {
            controller,
            line: if settings.max_per_s > 0.0 {
                line.with_ceiling(settings.max_per_s)
            } else {
                line
            },
            backend: BackendHealth::new(
                settings.backend_latency,
                settings.backend_lag,
                settings.window * EVIDENCE_WINDOWS,
            ),
            headroom: (!settings.line_lag.is_zero()).then(|| Headroom::new(settings.line_lag)),
            pressed_at: None,
            window: settings.window,
            work_max_bits: settings.work_max_bits,
            load_targets: LoadTargets {
                delay: settings.overload_wait,
                line_wait: settings.load_target_wait,
            },
            salt: CohortSalt::new(secret, COHORT_ROTATION),
            tickets: TicketKey::new(secret),
            node_id,
        }
    }

    /// The controller's current level.
    pub fn level(&self) -> AdmissionLevel {
        self.controller.level()
    }

    /// The waiting line, to read.
    pub fn line(&self) -> &WaitingLine {
        &self.line
    }

    /// Hands the controller the backend's health now; call before anything that may close
    /// a window, so the window is judged on current evidence.
    fn judge_backend(&mut self, now: Instant) {
        let overloaded = self.backend.overloaded(now);
        self.controller.set_backend_overloaded(overloaded);
    }

    /// Whether the node is congested right now: its scheduler runs late, or its durable
    /// writes are slow, stuck or behind. `levee-surge --trace` showed the second without
    /// the first: in a wave's first seconds a quarter-core node's writes queued for seconds
    /// while its scheduler kept time.
    fn congested(&self, now: Instant) -> bool {
        self.controller.congested() || self.backend.overloaded(now)
    }

    /// After a window: the line learns from it — from the level's verdict or its own
    /// headroom's, whichever is worse — and is held back while the new level sheds
    /// anything more important than registrations.
    fn window_closed(&mut self, (verdict, window): (Verdict, Duration), now: Instant) {
        let line_verdict = self
            .headroom
            .as_mut()
            .map_or(verdict, |h| verdict.worst(h.end_window()));
        self.line.advance(now);
        self.line.end_window(line_verdict, window);
        let level = self.controller.level();
        self.line
            .hold_back(level.share(RequestClass::Registration) == 0.0);
    }

    /// Whether to serve a request of `class` for `key` now (`unix_time`: the wall clock,
    /// for the cohorts' salt). `Err(window)` if not: the level can change next after one
    /// window, so that is when to ask again (the caller spreads it with jitter).
    pub fn check(
        &mut self,
        class: RequestClass,
        key: &[u8],
        unix_time: Duration,
    ) -> Result<(), Duration> {
        let cohort = self.salt.cohort(key, unix_time);
        self.controller.record_offered(class, cohort);
        if self.controller.admits(class, cohort) {
            Ok(())
        } else {
            Err(self.window)
        }
    }

    /// A durable storage write starts; returns its ticket for
    /// [`backend_finished`](Self::backend_finished). While the smoothed latency is over
    /// `admission_backend_latency_ms`, or a write hangs for several times that, every window
    /// counts as overloaded: the storage behind the node is the bottleneck even if its own
    /// queues are short.
    pub fn backend_started(&mut self, now: Instant) -> u64 {
        self.backend.started(now)
    }

    /// The write with `ticket` ended (however it ended). Returns the smoothed write latency
    /// and its limit, for the metrics.
    pub fn backend_finished(&mut self, ticket: u64, now: Instant) -> (Duration, Duration) {
        self.backend.finished(ticket, now);
        self.judge_backend(now);
        (self.backend.smoothed(), self.backend.latency_limit())
    }

    /// Records how many log records delivery has yet to store. Past
    /// `admission_backend_lag`, every window counts as overloaded: accepting more sends
    /// would only lengthen the time to deliver them.
    pub fn record_lag(&mut self, records: u64, now: Instant) {
        self.backend.record_lag(records, now);
        self.judge_backend(now);
    }

    /// How many new connections per second to take, or `None` for no limit. While the
    /// node sheds, is congested, or people wait in line, and for `DOOR_RELEASE` (10 s) after:
    /// what the line lets through ([`WaitingLine::door_rate`]: the newcomers it seats, and
    /// a few seconds' worth more while it is short), at least `MIN_HANDSHAKE_RATE` (20/s) for
    /// existing users reconnecting. More would only hand out more tickets at a handshake
    /// each, with CPU the users already connected need.
    pub fn handshake_rate(&mut self, now: Instant) -> Option<f64> {
        self.line.advance(now);
        // Congested as the last lag probe judged it (the line is paused exactly then): the
        // door's rate is set right after each probe, so judging again would repeat the work.
        if self.controller.level() < AdmissionLevel::ALL
            || self.line.is_paused()
            || !self.line.is_empty()
        {
            self.pressed_at = Some(now);
        }
        let limited = self
            .pressed_at
            .is_some_and(|at| now.saturating_duration_since(at) < DOOR_RELEASE);
        limited.then(|| self.line.door_rate().max(MIN_HANDSHAKE_RATE))
    }

    /// The proof of work (leading zero bits) a registration without a ticket must carry
    /// now: rises with the line's length, 0 while nobody waits or when turned off.
    pub fn work_bits(&mut self, now: Instant) -> u32 {
        if self.work_max_bits == 0 {
            return 0;
        }
        self.line.advance(now);
        work_bits(self.line.len(), self.work_max_bits)
    }

    /// Records how long a request waited in this node's queues before work on it started.
    pub fn record_wait(&mut self, wait: Duration, now: Instant) {
        self.judge_backend(now);
        if let Some(closed) = self.controller.record_wait(wait, now) {
            self.window_closed(closed, now);
        }
    }

    /// Records how late the scheduler ran the lag probe (see
    /// [`AdmissionController::record_lag`]), and pauses the line while the node is
    /// congested right now or its probes run later than the line's limit
    /// ([`AdmissionController::lagging`]).
    pub fn record_scheduling_lag(&mut self, lag: Duration, now: Instant) {
        self.controller.record_lag(lag);
        let controller = &self.controller;
        let pressed = self.headroom.as_mut().is_some_and(|h| {
            h.record(lag);
            controller.lagging(h.limit())
        });
        self.line.advance(now);
        let congested = self.congested(now);
        self.line.pause(congested || pressed);
    }

    /// Closes idle windows; called periodically with the door's pressure (new connections
    /// arriving over those it lets through) for the load signal.
    pub fn tick(&mut self, door_pressure: f64, now: Instant) -> AdmissionGauges {
        self.judge_backend(now);
        if let Some(closed) = self.controller.tick(now) {
            self.window_closed(closed, now);
        }
        self.line.advance(now);
        let load = Load {
            delay: self.controller.delay(),
            level: self.controller.level(),
            line_wait: self.line.tail_wait(),
            line_demand: self.line.demand_ratio(),
            door_pressure,
        };
        AdmissionGauges {
            level: self.controller.level().fraction(),
            line_len: self.line.len(),
            served_rate: self.line.served_rate(),
            line_wait: load.line_wait,
            load_ratio: load.ratio(self.load_targets),
        }
    }

    /// Counts a newcomer through this node's door sent on to its mailbox's owner: handled
    /// here, to enter there (see [`WaitingLine::redirected`]).
    pub fn registration_redirected(&mut self, now: Instant) {
        self.line.advance(now);
        self.line.redirected();
    }

    /// Decides a registration for `key`, with the ticket it presented, if any. `unix_ms` is
    /// the wall clock (tickets carry it); `jitter`, a factor in [1.0, 1.2) that spreads the
    /// returns of clients told the same thing, never earlier than the estimate (a return
    /// before one's place is due is answered with another ticket and comes back again; with
    /// [0.8, 1.2) a fifth of the waiting crowd did).
    pub fn register(
        &mut self,
        key: &[u8],
        ticket: Option<&[u8]>,
        now: Instant,
        unix_ms: u64,
        jitter: f64,
    ) -> RegistrationDecision {
        let presented = match ticket {
            Some(bytes) => match self.tickets.open(bytes, key, unix_ms) {
                Ok(t) => Some(t),
                Err(e) => return RegistrationDecision::Rejected(e),
            },
            None => None,
        };
        let cohort = self.salt.cohort(key, Duration::from_millis(unix_ms));
        self.controller
            .record_offered(RequestClass::Registration, cohort);
        self.line.advance(now);
        self.line.asked();
        // A ticket from another node holds a place in that node's line, which this node
        // cannot see; it joins this line as a newcomer would.
        let position = match &presented {
            Some(t) if t.node_id == self.node_id => t.position,
            _ => self.line.join(),
        };
        if self.line.may_enter(position) {
            self.line.entered();
            return RegistrationDecision::Enter;
        }
        let wait = self.line.wait_for(position);
        let ahead = (position as f64 - self.line.head()).max(0.0) as u64;
        let life = (wait * 2).max(MIN_TICKET_LIFE);
        let ticket = self.tickets.seal(&Ticket {
            position,
            issued_at_ms: presented.as_ref().map_or(unix_ms, |t| t.issued_at_ms),
            expires_at_ms: unix_ms + life.as_millis() as u64,
            key_hash: key_hash(key),
            node_id: self.node_id,
        });
        let retry_after = return_after(wait)
            .mul_f64(jitter)
            .max(Duration::from_millis(50));
        RegistrationDecision::Queued {
            ticket,
            position,
            ahead,
            retry_after_ms: retry_after.as_millis() as u64,
            estimated_wait_ms: wait.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_wait_is_waited_out_and_a_long_one_halved() {
        let s = Duration::from_secs;
        assert_eq!(
            return_after(s(12)),
            s(12),
            "due within 30 s: come back then"
        );
        assert_eq!(return_after(s(45)), s(30), "asked back after 30 s");
        assert_eq!(return_after(s(1500)), s(750), "half of a long wait");
        // A 25-minute wait, asked back at each half until the place is due: a handful of
        // returns, not fifty.
        let (mut left, mut returns) = (s(1500), 0);
        while !left.is_zero() {
            left -= return_after(left);
            returns += 1;
        }
        assert!(returns <= 8, "{returns}");
    }
}
