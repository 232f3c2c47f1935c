//! The node's admission state: the pure controller, waiting line and tickets of
//! `crate::admission`, behind one lock, with the clock and randomness filled in.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::admission::{
    AdmissionController, AdmissionLevel, BackendHealth, CohortSalt, ControllerConfig, Headroom,
    Load, LoadTargets, RequestClass, Ticket, TicketError, TicketKey, Verdict, WaitingLine,
    key_hash, work_bits,
};
use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::telemetry::NodeMetrics;

/// How often cohorts are reshuffled.
const COHORT_ROTATION: Duration = Duration::from_secs(3600);
/// Shortest life of a ticket; longer waits get twice the expected wait.
const MIN_TICKET_LIFE: Duration = Duration::from_secs(600);
/// A queued client is asked back at least this often, to refresh its estimate.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// New connections per second a pressed node still takes, whatever its line does.
const MIN_HANDSHAKE_RATE: f64 = 20.0;
/// How long the door stays limited after the node was last pressed. The crowd it turned
/// away is still outside, trying again (QUIC resends a dropped Initial after 1, 2, 4 s; a
/// patient client tries a new connection within 8 s). When the line of a 50x wave ran empty,
/// the door opened completely to tens of thousands; message p50 reached 0.8–1.9 s for three
/// seconds and 163 newcomers lost their connections (docs/PERFORMANCE-LOG.md, "Fourth pass").
const DOOR_RELEASE: Duration = Duration::from_secs(10);

/// What to do with a registration.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RegistrationDecision {
    /// Serve it now.
    Enter,
    /// Not yet: here is the (possibly refreshed) ticket.
    Queued {
        ticket: Vec<u8>,
        position: u64,
        ahead: u64,
        retry_after_ms: u64,
        estimated_wait_ms: u64,
    },
    /// The presented ticket is not valid.
    Rejected(TicketError),
}

/// Backend evidence older than this many windows no longer counts.
const EVIDENCE_WINDOWS: u32 = 2;

struct State {
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
}

impl State {
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
}

/// Admission control of one node.
pub(crate) struct Admission {
    enabled: bool,
    work_max_bits: u32,
    /// What `levee_load_ratio`'s parts are measured against.
    load_targets: LoadTargets,
    window: Duration,
    state: Mutex<State>,
    salt: CohortSalt,
    tickets: TicketKey,
    node_id: u32,
    rng: SystemRandom,
    metrics: NodeMetrics,
}

/// The id a node's tickets carry: derived from its name, so it is the same on every start
/// and differs between the nodes of a cluster (a ticket keeps its position only in the line
/// of the node that issued it).
pub(crate) fn node_id(name: &str) -> u32 {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    u32::from_be_bytes(digest.as_ref()[..4].try_into().expect("4 bytes"))
}

/// Reads the cluster key from the config, or from (creating if needed) `data_dir/cluster.key`.
pub(crate) fn cluster_key(config: &NodeConfig) -> Result<Vec<u8>, String> {
    if let Some(hex_key) = &config.cluster_key {
        return hex::decode(hex_key).map_err(|_| "cluster_key is not hex".to_owned());
    }
    let path = config.data_dir.join("cluster.key");
    load_or_create_key(&path).map_err(|e| format!("{}: {e}", path.display()))
}

fn load_or_create_key(path: &Path) -> std::io::Result<Vec<u8>> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return hex::decode(text.trim()).map_err(|_| std::io::Error::other("not a hex key"));
    }
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options.open(path)?.write_all(hex::encode(key).as_bytes())?;
    Ok(key.to_vec())
}

impl Admission {
    pub(crate) fn new(
        config: &NodeConfig,
        secret: &[u8],
        node_id: u32,
        metrics: NodeMetrics,
    ) -> Self {
        let now = Instant::now();
        let controller = AdmissionController::new(
            ControllerConfig {
                window: Duration::from_millis(config.admission_window_ms),
                overload_wait: Duration::from_millis(config.admission_overload_wait_ms),
                recover_wait: Duration::from_millis(config.admission_recover_wait_ms),
                ..ControllerConfig::default()
            },
            now,
        );
        Self {
            enabled: config.admission,
            window: Duration::from_millis(config.admission_window_ms),
            state: Mutex::new(State {
                controller,
                line: {
                    let line = WaitingLine::new(config.registration_initial_rate, now);
                    if config.registration_max_per_s > 0.0 {
                        line.with_ceiling(config.registration_max_per_s)
                    } else {
                        line
                    }
                },
                backend: BackendHealth::new(
                    Duration::from_millis(config.admission_backend_latency_ms),
                    config.admission_backend_lag,
                    Duration::from_millis(config.admission_window_ms) * EVIDENCE_WINDOWS,
                ),
                headroom: (config.admission_line_lag_ms > 0)
                    .then(|| Headroom::new(Duration::from_millis(config.admission_line_lag_ms))),
                pressed_at: None,
            }),
            work_max_bits: config.registration_work_max_bits,
            load_targets: LoadTargets {
                delay: Duration::from_millis(config.admission_overload_wait_ms),
                line_wait: Duration::from_secs_f64(config.load_target_wait_s),
            },
            salt: CohortSalt::new(secret, COHORT_ROTATION),
            tickets: TicketKey::new(secret),
            node_id,
            rng: SystemRandom::new(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only counters and timestamps inside; a panic elsewhere cannot corrupt them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uniform factor in [1.0, 1.2): spreads the returns of clients told the same thing,
    /// never earlier than the estimate. A return before one's place is due is answered with
    /// another ticket and comes back again; with [0.8, 1.2) a fifth of the waiting crowd did.
    fn jitter(&self) -> f64 {
        let mut b = [0u8; 2];
        let _ = self.rng.fill(&mut b);
        1.0 + 0.2 * f64::from(u16::from_be_bytes(b)) / 65536.0
    }

    /// Whether to serve a request of `class` for `key` now; `Err(retry_after_ms)` if not.
    pub(crate) fn check(&self, class: RequestClass, key: &[u8]) -> Result<(), u64> {
        if !self.enabled {
            return Ok(());
        }
        let cohort = self.salt.cohort(key, since_epoch());
        let mut state = self.lock();
        state.controller.record_offered(class, cohort);
        if state.controller.admits(class, cohort) {
            self.metrics.admitted(class);
            return Ok(());
        }
        self.metrics.shed(class);
        // One window is when the level can next change.
        Err((self.window.as_millis() as f64 * self.jitter()) as u64)
    }

    /// A durable storage write starts; it counts until the returned guard is dropped
    /// (however the write ends, including cancellation). While the smoothed latency is over
    /// `admission_backend_latency_ms`, or a write hangs for several times that, every
    /// window counts as overloaded: the storage behind the node is the bottleneck even if
    /// its own queues are short.
    pub(crate) fn backend_write(&self) -> BackendWrite<'_> {
        let ticket = self.lock().backend.started(Instant::now());
        BackendWrite {
            admission: self,
            ticket,
        }
    }

    /// Records how many log records delivery has yet to store. Past
    /// `admission_backend_lag`, every window counts as overloaded: accepting more sends
    /// would only lengthen the time to deliver them.
    pub(crate) fn record_lag(&self, records: u64) {
        let now = Instant::now();
        let mut state = self.lock();
        state.backend.record_lag(records, now);
        state.judge_backend(now);
        self.metrics.delivery_lag(records);
    }

    /// Whether the node is shedding anything at all (the level is below everything).
    #[cfg(test)]
    fn shedding(&self) -> bool {
        self.enabled && self.lock().controller.level() < AdmissionLevel::ALL
    }

    /// How many new connections per second to take, or `None` for no limit. While the
    /// node sheds, is congested, or people wait in line, and for [`DOOR_RELEASE`] after:
    /// what the line lets through ([`WaitingLine::door_rate`]: the newcomers it seats, and
    /// a few seconds' worth more while it is short), at least [`MIN_HANDSHAKE_RATE`] for
    /// existing users reconnecting. More would only hand out more tickets at a handshake
    /// each, with CPU the users already connected need.
    pub(crate) fn handshake_rate(&self) -> Option<f64> {
        if !self.enabled {
            return None;
        }
        let mut state = self.lock();
        let now = Instant::now();
        state.line.advance(now);
        // Congested as the last lag probe judged it (the line is paused exactly then): the
        // door's rate is set right after each probe, so judging again would repeat the work.
        if state.controller.level() < AdmissionLevel::ALL
            || state.line.is_paused()
            || !state.line.is_empty()
        {
            state.pressed_at = Some(now);
        }
        let limited = state
            .pressed_at
            .is_some_and(|at| now.saturating_duration_since(at) < DOOR_RELEASE);
        limited.then(|| state.line.door_rate().max(MIN_HANDSHAKE_RATE))
    }

    /// The proof of work (leading zero bits) a registration without a ticket must carry
    /// now: rises with the line's length, 0 while nobody waits or when turned off.
    pub(crate) fn work_bits(&self) -> u32 {
        if !self.enabled || self.work_max_bits == 0 {
            return 0;
        }
        let mut state = self.lock();
        state.line.advance(Instant::now());
        work_bits(state.line.len(), self.work_max_bits)
    }

    /// Records how long a request waited in this node's queues before work on it started.
    pub(crate) fn record_wait(&self, wait: Duration) {
        self.metrics.queue_wait(wait);
        if !self.enabled {
            return;
        }
        let mut state = self.lock();
        let now = Instant::now();
        state.judge_backend(now);
        if let Some(closed) = state.controller.record_wait(wait, now) {
            state.window_closed(closed, now);
        }
    }

    /// Records how late the scheduler ran the lag probe (see
    /// [`AdmissionController::record_lag`]), and pauses the line while the node is
    /// congested right now or its probes run later than the line's limit
    /// ([`AdmissionController::lagging`]).
    pub(crate) fn record_scheduling_lag(&self, lag: Duration) {
        self.metrics.scheduling_lag(lag);
        if self.enabled {
            let mut guard = self.lock();
            let state = &mut *guard;
            state.controller.record_lag(lag);
            let pressed = state.headroom.as_mut().is_some_and(|h| {
                h.record(lag);
                state.controller.lagging(h.limit())
            });
            let now = Instant::now();
            state.line.advance(now);
            let congested = state.congested(now);
            state.line.pause(congested || pressed);
        }
    }

    /// Closes idle windows; called periodically with the door's pressure
    /// ([`Door::pressure`](super::door::Door::pressure)) for the load signal.
    pub(crate) fn tick(&self, door_pressure: f64) {
        if !self.enabled {
            return;
        }
        let mut state = self.lock();
        let now = Instant::now();
        state.judge_backend(now);
        if let Some(closed) = state.controller.tick(now) {
            state.window_closed(closed, now);
        }
        state.line.advance(now);
        let load = Load {
            delay: state.controller.delay(),
            level: state.controller.level(),
            line_wait: state.line.tail_wait(),
            line_demand: state.line.demand_ratio(),
            door_pressure,
        };
        self.metrics.admission_state(
            state.controller.level().fraction(),
            state.line.len(),
            state.line.served_rate(),
        );
        self.metrics
            .load(load.line_wait, load.ratio(self.load_targets));
    }

    /// Counts a newcomer through this node's door sent on to its mailbox's owner: handled
    /// here, to enter there (see [`WaitingLine::redirected`]).
    pub(crate) fn registration_redirected(&self) {
        if self.enabled {
            let mut state = self.lock();
            state.line.advance(Instant::now());
            state.line.redirected();
        }
    }

    /// Decides a registration for `key`, with the ticket it presented, if any.
    pub(crate) fn register(&self, key: &[u8], ticket: Option<&[u8]>) -> RegistrationDecision {
        if !self.enabled {
            return RegistrationDecision::Enter;
        }
        let now_ms = now_ms();
        let presented = match ticket {
            Some(bytes) => match self.tickets.open(bytes, key, now_ms) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.metrics.ticket_rejected(e);
                    return RegistrationDecision::Rejected(e);
                }
            },
            None => None,
        };
        let cohort = self.salt.cohort(key, since_epoch());
        let mut state = self.lock();
        state
            .controller
            .record_offered(RequestClass::Registration, cohort);
        state.line.advance(Instant::now());
        state.line.asked();
        // A ticket from another node holds a place in that node's line, which this node
        // cannot see; it joins this line as a newcomer would.
        let position = match &presented {
            Some(t) if t.node_id == self.node_id => t.position,
            _ => state.line.join(),
        };
        if state.line.may_enter(position) {
            state.line.entered();
            self.metrics.admitted(RequestClass::Registration);
            return RegistrationDecision::Enter;
        }
        let wait = state.line.wait_for(position);
        let ahead = (position as f64 - state.line.head()).max(0.0) as u64;
        drop(state);
        let life = (wait * 2).max(MIN_TICKET_LIFE);
        let ticket = self.tickets.seal(&Ticket {
            position,
            issued_at_ms: presented.as_ref().map_or(now_ms, |t| t.issued_at_ms),
            expires_at_ms: now_ms + life.as_millis() as u64,
            key_hash: key_hash(key),
            node_id: self.node_id,
        });
        self.metrics.queued();
        let retry_after = wait
            .min(MAX_RETRY_AFTER)
            .mul_f64(self.jitter())
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

/// A durable write in progress; see [`Admission::backend_write`].
pub(crate) struct BackendWrite<'a> {
    admission: &'a Admission,
    ticket: u64,
}

impl Drop for BackendWrite<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut state = self.admission.lock();
        state.backend.finished(self.ticket, now);
        state.judge_backend(now);
        self.admission
            .metrics
            .backend_latency(state.backend.smoothed(), state.backend.latency_limit());
    }
}

fn since_epoch() -> Duration {
    Duration::from_millis(now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(rate: f64) -> Admission {
        let config = NodeConfig {
            registration_initial_rate: rate,
            ..NodeConfig::default()
        };
        Admission::new(
            &config,
            b"0123456789abcdef0123456789abcdef",
            1,
            NodeMetrics::new("test"),
        )
    }

    #[test]
    fn a_burst_beyond_the_line_rate_is_queued_in_order_and_tickets_keep_places() {
        let a = admission(5.0);
        let mut queued = Vec::new();
        for i in 0..50u32 {
            match a.register(&i.to_be_bytes(), None) {
                RegistrationDecision::Enter => {}
                RegistrationDecision::Queued {
                    ticket, position, ..
                } => queued.push((i, ticket, position)),
                RegistrationDecision::Rejected(e) => panic!("{e}"),
            }
        }
        assert!(
            queued.len() >= 40,
            "one second's worth (5) enters, the rest waits: {}",
            queued.len()
        );
        let positions: Vec<u64> = queued.iter().map(|q| q.2).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "positions in arrival order"
        );
        // Presenting the ticket keeps the place (no new position).
        let (key, ticket, position) = &queued[30];
        match a.register(&key.to_be_bytes(), Some(ticket)) {
            RegistrationDecision::Queued {
                position: again, ..
            } => assert_eq!(again, *position),
            other => panic!("expected to wait, got {other:?}"),
        }
        // Someone else's ticket is refused.
        let (_, ticket, _) = &queued[0];
        assert_eq!(
            a.register(b"thief", Some(ticket)),
            RegistrationDecision::Rejected(TicketError::WrongKey)
        );
    }

    #[test]
    fn slow_storage_makes_the_node_shed() {
        let a = admission(100.0);
        let slow = a.backend_write();
        std::thread::sleep(Duration::from_millis(1100));
        a.tick(1.0);
        assert!(a.shedding(), "a write hanging for a second is overload");
        drop(slow);
        let b = admission(100.0);
        for _ in 0..100 {
            drop(b.backend_write());
        }
        std::thread::sleep(Duration::from_millis(1100));
        b.tick(1.0);
        assert!(!b.shedding());
    }

    #[test]
    fn delivery_lag_makes_the_node_shed_until_it_catches_up() {
        let a = admission(100.0);
        a.record_lag(1_000_000);
        std::thread::sleep(Duration::from_millis(1100));
        a.tick(1.0);
        assert!(a.shedding());
        a.record_lag(0);
        // Calm windows climb back 1% of all slots each; the first already helps.
        let before = a.lock().controller.level();
        std::thread::sleep(Duration::from_millis(1100));
        a.tick(1.0);
        assert!(a.lock().controller.level() > before);
    }

    #[test]
    fn proof_of_work_is_asked_only_while_people_wait_and_only_when_configured() {
        let config = NodeConfig {
            registration_initial_rate: 1.0,
            registration_work_max_bits: 16,
            ..NodeConfig::default()
        };
        let a = Admission::new(&config, b"k", 1, NodeMetrics::new("test"));
        assert_eq!(a.work_bits(), 0, "an empty line asks nothing");
        for i in 0..40u32 {
            a.register(&i.to_be_bytes(), None);
        }
        let bits = a.work_bits();
        assert!((8..=16).contains(&bits), "a line of ~40 asks work: {bits}");
        // The same line at a node configured without it asks nothing.
        let off = admission(1.0);
        for i in 0..40u32 {
            off.register(&i.to_be_bytes(), None);
        }
        assert_eq!(off.work_bits(), 0);
    }

    #[test]
    fn the_door_stays_limited_for_a_while_after_the_line_runs_empty() {
        let a = admission(1000.0);
        assert_eq!(
            a.handshake_rate(),
            None,
            "an idle node takes every connection"
        );
        // 1,000 banked places, 1,500 newcomers: 500 wait.
        for i in 0..1500u32 {
            a.register(&i.to_be_bytes(), None);
        }
        let waiting = a.handshake_rate().expect("limited while people wait");
        assert!(waiting < 2000.0, "{waiting}");
        // Half a second at 1,000/s and the line is empty; the crowd outside is not gone.
        std::thread::sleep(Duration::from_millis(700));
        let after = a.handshake_rate().expect("still limited just after");
        assert!(a.lock().line.is_empty());
        assert!(after <= 2000.0, "{after}");
    }

    #[test]
    fn late_scheduler_probes_hold_newcomers_back_before_anyone_is_shed() {
        let strict = admission(100.0);
        let config = NodeConfig {
            registration_initial_rate: 100.0,
            admission_line_lag_ms: 0,
            ..NodeConfig::default()
        };
        let lax = Admission::new(&config, b"k", 1, NodeMetrics::new("test"));
        // Probes 8 ms late: past the line's 5 ms, short of the level's 20 ms.
        for a in [&strict, &lax] {
            for _ in 0..20 {
                a.record_scheduling_lag(Duration::from_millis(8));
            }
        }
        assert!(strict.lock().line.is_paused(), "newcomers wait a moment");
        assert!(strict.handshake_rate().is_some(), "and the door narrows");
        assert!(!lax.lock().line.is_paused(), "turned off, nothing waits");
        assert_eq!(lax.handshake_rate(), None);
        // Someone registers in the window (a window nobody asked in teaches the line
        // nothing; see `WaitingLine::end_window`).
        for a in [&strict, &lax] {
            a.register(b"newcomer", None);
        }
        std::thread::sleep(Duration::from_millis(1100));
        strict.tick(1.0);
        lax.tick(1.0);
        assert!(
            !strict.shedding() && !lax.shedding(),
            "nobody is shed for 8 ms"
        );
        let (slowed, kept) = (strict.lock().line.rate(), lax.lock().line.rate());
        assert!(
            slowed < 100.0,
            "a window of late probes slows the line: {slowed}"
        );
        assert!(kept >= 100.0, "{kept}");
    }

    #[test]
    fn disabled_admits_everything() {
        let config = NodeConfig {
            admission: false,
            registration_initial_rate: 1.0,
            ..NodeConfig::default()
        };
        let a = Admission::new(&config, b"k", 1, NodeMetrics::new("test"));
        for i in 0..100u32 {
            assert_eq!(
                a.register(&i.to_be_bytes(), None),
                RegistrationDecision::Enter
            );
            assert_eq!(a.check(RequestClass::Messaging, &i.to_be_bytes()), Ok(()));
        }
    }
}
