//! One node's admission decisions as a whole: the controller, the waiting line, backend
//! health, the line's headroom and the door's rate, with every input's time passed in.
//!
//! The node (`crate::node::admission`) holds one behind a lock and fills in the clock,
//! randomness and metrics; `levee-wave`, the signup-wave simulator, holds one per simulated
//! node and fills in a simulated clock and a seeded generator. Both run these same
//! decisions, which is why they live here and not in the node.

use std::time::{Duration, Instant};

use super::{
    AdmissionController, AdmissionLevel, BackendHealth, ClusterFront, ClusterLine,
    ClusterLineGauges, CohortSalt, ControllerConfig, Headroom, LineOrder, LineSample, Load,
    LoadTargets, Place, RequestClass, Ticket, TicketError, TicketKey, Verdict, WaitingLine,
    key_hash, work_bits,
};

/// How often cohorts are reshuffled.
const COHORT_ROTATION: Duration = Duration::from_secs(3600);
/// Shortest life of a ticket; see [`NodeAdmission::register`] for longer ones.
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
/// How far back the cluster front's speed is measured, for the waits it sets.
const FRONT_SPEED_WINDOW_MS: u64 = 5_000;
/// Below this speed (ms of issue time per ms) the cluster's front counts as standing
/// still — a dead node holding it — and those it has not reached are asked back once that
/// can have passed, not after a wait computed from a speed of almost nothing.
const FRONT_STANDING: f64 = 0.01;

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
    /// The order the line releases places in: earliest place first.
    order: LineOrder,
    /// The cluster's one line, when this node is one of several (see
    /// [`coordinate`](Self::coordinate)); `None`: this node's line decides alone.
    cluster: Option<ClusterLine>,
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
    /// The last new place this node handed out: the next goes after it
    /// ([`Place::issue`]).
    last_issued: Option<Place>,
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
            order: LineOrder::default(),
            cluster: None,
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
            last_issued: None,
        }
    }

    /// The last new place this node issued ([`Place::issue`]): right after a registration
    /// without a ticket, that registration's place, whether it entered or was queued.
    pub fn last_issued(&self) -> Option<Place> {
        self.last_issued
    }

    /// Makes this node's line part of the cluster's one line (see [`ClusterLine`]): from
    /// now on a place enters only once the cluster's front has passed it, and the node
    /// must write [`line_sample`](Self::line_sample) to the board and hand what it reads to
    /// [`heard`](Self::heard), every heartbeat.
    pub fn coordinate(&mut self, line: ClusterLine) {
        self.cluster = Some(line);
    }

    /// This node's line now, for the board (and recorded as this node's own sample).
    pub fn line_sample(&mut self, now: Instant, unix_ms: u64) -> LineSample {
        self.release(now);
        let sample = LineSample {
            at_ms: unix_ms,
            front: self
                .order
                .front()
                .unwrap_or_else(|| Place::first_at(unix_ms)),
            open: self.order.is_open(),
        };
        if let Some(cluster) = &mut self.cluster {
            cluster.record(sample);
        }
        sample
    }

    /// This node's latest samples, oldest first: what it writes to the board.
    pub fn line_report(&self) -> Vec<LineSample> {
        self.cluster
            .as_ref()
            .map_or_else(Vec::new, ClusterLine::report)
    }

    /// Takes in every node's report as read from the board at `unix_ms`.
    pub fn heard<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a [LineSample])>,
        unix_ms: u64,
    ) {
        if let Some(cluster) = &mut self.cluster {
            cluster.heard(reports, unix_ms);
        }
    }

    /// The cluster's line as this node sees it at `unix_ms` (`None`: this node's line is
    /// its own, see [`coordinate`](Self::coordinate)).
    pub fn cluster_gauges(&mut self, now: Instant, unix_ms: u64) -> Option<ClusterLineGauges> {
        self.release(now);
        let own_front = self.order.front();
        self.cluster.as_ref().map(|c| c.gauges(unix_ms, own_front))
    }

    /// Moves the line's head for the time passed and releases the places it reached.
    fn release(&mut self, now: Instant) {
        self.line.advance(now);
        self.order.release_to(self.line.head());
    }

    /// How far the cluster's line lets `place` in at `unix_ms`: whether anyone else
    /// waits here counts for whether the cluster is open, not `place` itself.
    fn cluster_front(&self, place: &Place, unix_ms: u64) -> ClusterFront {
        self.cluster.as_ref().map_or(ClusterFront::Open, |c| {
            c.front(unix_ms, self.order.is_open_but(place))
        })
    }

    /// How long until the cluster's `front` reaches `place`, at the speed it has moved
    /// lately.
    fn cluster_wait(&self, front: ClusterFront, place: &Place, unix_ms: u64) -> Duration {
        let (Some(cluster), ClusterFront::Before(front)) = (&self.cluster, front) else {
            return Duration::ZERO;
        };
        if place < &front {
            return Duration::ZERO;
        }
        let speed = cluster.speed(unix_ms, FRONT_SPEED_WINDOW_MS);
        let behind = place.issued_ms.saturating_sub(front.issued_ms) as f64;
        if speed < FRONT_STANDING {
            return Duration::from_millis(cluster.lag_ms()).max(Duration::from_secs(1));
        }
        Duration::from_secs_f64(behind / speed / 1_000.0)
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
        self.release(now);
        self.line.asked();
        let hash = key_hash(key);
        let place = match &presented {
            Some(ticket) => Place::of(ticket),
            None => {
                let place = Place::issue(unix_ms, &hash, self.last_issued);
                self.last_issued = Some(place);
                place
            }
        };
        // Where the place stands in this node's line: the position told (a ticket of this
        // node's whose place still waits here keeps the position it was given; a new
        // place, or one from another node's line — a dead node's, or one whose mailboxes
        // moved here — that this line has not released, is put in by its place: before
        // everyone who joined later, wherever they joined), and its index in the order the
        // line releases in, which the wait is estimated from. Releasing places before it
        // moves them from its rank to the released count: the index stays.
        let own_position = presented
            .as_ref()
            .filter(|t| t.node_id == self.node_id)
            .map(|t| t.position);
        let (position, index) = if self.order.holds(&place) {
            let index = self.order.released_count() + self.order.rank(&place);
            (own_position.unwrap_or(index), index)
        } else if presented.is_none() || !self.order.released(&place) {
            let index = self.order.released_count() + self.order.insert(place);
            let next = self.line.join();
            self.release(now);
            // A new place is the last taken here (`Place::issue`): the count of places
            // taken here, unique and rising, as positions always were. One from
            // another line goes in among them: its count is how many are ahead.
            (if presented.is_none() { next } else { index }, index)
        } else {
            (0, 0)
        };
        let front = self.cluster_front(&place, unix_ms);
        let due_here = self.order.released(&place);
        if due_here && front.admits(&place) {
            self.line.entered();
            return RegistrationDecision::Enter;
        }
        // From the index, not the position: a place from another node's line (a ticket
        // issued by a clock a little ahead) may stand after places taken here later.
        let wait_here = if due_here {
            Duration::ZERO
        } else {
            self.line.wait_for(index)
        };
        let wait = wait_here.max(self.cluster_wait(front, &place, unix_ms));
        let ahead = (index as f64 - self.line.head()).max(0.0) as u64;
        // A place is not given up over one short estimate: the front standing still for a
        // dead node estimates a second, and holders of its tickets who then took longer
        // than 10 minutes to get back through the survivors' doors — which let in only as
        // fast as the lines move — lost their places (`levee-wave`, 8 in a million). A
        // ticket lives at least twice as long as a newcomer joining now would wait, and
        // as long again as the place has been held.
        let held = Duration::from_millis(unix_ms.saturating_sub(place.issued_ms));
        let life = (wait * 2)
            .max(MIN_TICKET_LIFE)
            .max(held)
            .max(self.line.tail_wait() * 2);
        let ticket = self.tickets.seal(&Ticket {
            position,
            issued_at_ms: place.issued_ms,
            expires_at_ms: unix_ms + life.as_millis() as u64,
            key_hash: hash,
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

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const UNIX_START: u64 = 1_800_000_000_000;

    /// A node with the default settings but its line at `rate` a second, alone (no
    /// cluster's line), its tickets marked `id`.
    fn lone_node(id: u32, rate: f64, now: Instant) -> NodeAdmission {
        let settings = AdmissionSettings {
            initial_rate: rate,
            ..crate::config::NodeConfig::default().admission_settings()
        };
        NodeAdmission::new(&settings, SECRET, id, now)
    }

    /// A node of a cluster: its own line at `rate` a second, coordinated through a board.
    fn node(name: &str, rate: f64, now: Instant) -> NodeAdmission {
        let mut n = lone_node(name.bytes().map(u32::from).sum(), rate, now);
        n.coordinate(ClusterLine::new(name, 1_000, 3_000));
        n
    }

    /// One heartbeat of the line board among `nodes` (name, node).
    fn exchange(nodes: &mut [(&str, &mut NodeAdmission)], now: Instant, unix_ms: u64) {
        let reports: Vec<(String, Vec<LineSample>)> = nodes
            .iter_mut()
            .map(|(name, n)| {
                n.line_sample(now, unix_ms);
                (name.to_string(), n.line_report())
            })
            .collect();
        for (_, n) in nodes.iter_mut() {
            n.heard(
                reports.iter().map(|(k, r)| (k.as_str(), r.as_slice())),
                unix_ms,
            );
        }
    }

    #[test]
    fn an_idle_cluster_lets_a_newcomer_straight_in() {
        let t0 = Instant::now();
        let (mut a, mut b) = (node("a", 10.0, t0), node("b", 10.0, t0));
        exchange(&mut [("a", &mut a), ("b", &mut b)], t0, UNIX_START);
        let decision = a.register(b"first", None, t0, UNIX_START + 1, 1.0);
        assert_eq!(
            decision,
            RegistrationDecision::Enter,
            "no waiting for the board"
        );
    }

    #[test]
    fn one_order_across_nodes_and_through_a_death() {
        // a seats 2 a second, b 20; newcomers arrive at both, 10 a second each, for 10 s;
        // (a holds 100, b holds 100);
        // a dies at 10 s and its newcomers come back to b with their tickets 2 s later.
        let t0 = Instant::now();
        let (mut a, mut b) = (node("a", 2.0, t0), node("b", 20.0, t0));
        let tickets = TicketKey::new(SECRET);
        struct Person {
            key: Vec<u8>,
            started_on_a: bool,
            on_a: bool,
            next_ms: u64,
            ticket: Option<Vec<u8>>,
            place: Option<Place>,
            admitted_ms: Option<u64>,
        }
        let mut people: Vec<Person> = Vec::new();
        let mut told_to_wait: Vec<(Place, u64)> = Vec::new();
        for ms in (0..60_000u64).step_by(50) {
            let (now, unix) = (t0 + Duration::from_millis(ms), UNIX_START + ms);
            let a_alive = ms < 10_000;
            if ms < 10_000 && ms % 100 == 0 {
                for on_a in [true, false] {
                    people.push(Person {
                        key: format!("n{}", people.len()).into_bytes(),
                        started_on_a: on_a,
                        on_a,
                        next_ms: ms,
                        ticket: None,
                        place: None,
                        admitted_ms: None,
                    });
                }
            }
            if ms % 250 == 0 {
                if a_alive {
                    exchange(&mut [("a", &mut a), ("b", &mut b)], now, unix);
                } else {
                    exchange(&mut [("b", &mut b)], now, unix);
                }
            }
            for p in people
                .iter_mut()
                .filter(|p| p.admitted_ms.is_none() && p.next_ms <= ms)
            {
                if p.on_a && !a_alive {
                    // It notices a's death and comes back to b, ticket in hand.
                    p.on_a = false;
                    p.next_ms = ms + 2_000;
                    continue;
                }
                let n = if p.on_a { &mut a } else { &mut b };
                match n.register(&p.key, p.ticket.as_deref(), now, unix, 1.0) {
                    RegistrationDecision::Enter => {
                        p.admitted_ms = Some(ms);
                        p.place = p
                            .place
                            .or(Some(Place::new(unix, &crate::admission::key_hash(&p.key))));
                    }
                    RegistrationDecision::Queued {
                        ticket,
                        retry_after_ms,
                        ..
                    } => {
                        let t = tickets.open(&ticket, &p.key, unix).expect("valid");
                        p.place = Some(Place::of(&t));
                        told_to_wait.push((Place::of(&t), ms));
                        p.ticket = Some(ticket);
                        p.next_ms = ms + retry_after_ms.max(50);
                    }
                    RegistrationDecision::Rejected(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(people.len(), 200);
        let admitted: Vec<(Place, u64)> = people
            .iter()
            .filter_map(|p| Some((p.place?, p.admitted_ms?)))
            .collect();
        assert_eq!(admitted.len(), people.len(), "every ticket holder admitted");
        assert!(
            told_to_wait.len() > 100,
            "a line formed: {}",
            told_to_wait.len()
        );
        // Nobody told to wait after someone whose place is a second or more later got in,
        // on either node.
        let overtaken = told_to_wait
            .iter()
            .filter(|(place, at)| {
                admitted.iter().any(|(later, entered)| {
                    later.issued_ms >= place.issued_ms + 1_000 && entered < at
                })
            })
            .count();
        assert_eq!(overtaken, 0);
        // On its own, b (ten times faster) would have let all 100 of its own in within
        // the 10 s; held to a's pace, it lets in about as many as a does.
        let early = |on_a: bool| {
            people
                .iter()
                .filter(|p| p.started_on_a == on_a && p.admitted_ms.is_some_and(|m| m < 10_000))
                .count()
        };
        assert!(early(false) < 50, "b: {}, a: {}", early(false), early(true));
    }

    #[test]
    fn places_taken_in_the_same_millisecond_are_told_their_own_turn() {
        // 24 at once on a node seating 2 a second: two enter on the banked second, and the
        // rest go in in the order they arrived. Each must be told when its own place is
        // released: coming back then, it enters (a hold on the node waits exactly that
        // long), and it was not kept waiting long after.
        let t0 = Instant::now();
        let mut n = lone_node(1, 2.0, t0);
        let tickets = TicketKey::new(SECRET);
        let mut told = Vec::new();
        for i in 0..24 {
            let key = format!("newcomer {i}").into_bytes();
            match n.register(&key, None, t0, UNIX_START, 1.0) {
                RegistrationDecision::Enter => {}
                RegistrationDecision::Queued {
                    ticket,
                    estimated_wait_ms,
                    ..
                } => {
                    let ticket = tickets
                        .open(&ticket, &key, UNIX_START)
                        .expect("a ticket the node just sealed");
                    told.push((Place::of(&ticket), estimated_wait_ms));
                }
                RegistrationDecision::Rejected(e) => panic!("no ticket to reject: {e:?}"),
            }
        }
        assert_eq!(told.len(), 22, "two enter on the banked second");
        let mut released_ms = vec![None; told.len()];
        for ms in (0..15_000u64).step_by(10) {
            n.release(t0 + Duration::from_millis(ms));
            for ((place, _), at) in told.iter().zip(released_ms.iter_mut()) {
                if at.is_none() && n.order.released(place) {
                    *at = Some(ms);
                }
            }
        }
        let off: Vec<(u64, Option<u64>)> = told
            .iter()
            .zip(&released_ms)
            .map(|((_, wait), at)| (*wait, *at))
            // Released by the time told, and at most one place's time (500 ms) before it:
            // the estimate is until the head has passed the place by a whole position.
            .filter(|(wait, at)| at.is_none_or(|at| at > *wait || *wait - at > 520))
            .collect();
        assert!(off.is_empty(), "told (ms) and released (ms): {off:?}");
    }

    #[test]
    fn a_place_held_long_gets_a_ticket_that_lives_as_long() {
        let t0 = Instant::now();
        let mut n = lone_node(1, 1.0, t0);
        let tickets = TicketKey::new(SECRET);
        let min = |m: u64| m * 60_000;
        assert_eq!(
            n.register(b"first", None, t0, UNIX_START, 1.0),
            RegistrationDecision::Enter
        );
        let queued = |d: RegistrationDecision| match d {
            RegistrationDecision::Queued { ticket, .. } => ticket,
            other => panic!("{other:?}"),
        };
        // The line's head does not move (no time passes for it): the place keeps waiting
        // while the wall clock runs on, as when the line stands still.
        let mut ticket = queued(n.register(b"second", None, t0, UNIX_START, 1.0));
        for at in [min(9), min(18)] {
            ticket = queued(n.register(b"second", Some(&ticket), t0, UNIX_START + at, 1.0));
        }
        let t = tickets
            .open(&ticket, b"second", UNIX_START + min(18))
            .expect("valid");
        assert_eq!(t.issued_at_ms, UNIX_START, "the place is kept");
        assert!(
            t.expires_at_ms >= UNIX_START + min(36),
            "held 18 minutes: another 18 at least, not 10 ({} min)",
            (t.expires_at_ms - UNIX_START) / 60_000
        );
    }
}
