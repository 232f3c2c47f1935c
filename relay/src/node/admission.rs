//! The node's admission state: `crate::admission::NodeAdmission` (the pure decisions)
//! behind one lock, with the clock, randomness and metrics filled in.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

#[cfg(test)]
use crate::admission::AdmissionLevel;
pub(crate) use crate::admission::RegistrationDecision;
use crate::admission::{
    ClusterLine, LineSample, NodeAdmission, RequestClass, decode_report, encode_report,
};
use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::telemetry::NodeMetrics;

/// Admission control of one node.
pub(crate) struct Admission {
    enabled: bool,
    state: Mutex<NodeAdmission>,
    rng: SystemRandom,
    metrics: NodeMetrics,
}

/// The id a node's tickets carry: derived from its name, so it is the same on every start
/// and differs between the nodes of a cluster (a ticket's position, the estimate's count,
/// means something only to the node that issued it; its place counts everywhere).
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
        Self {
            enabled: config.admission,
            state: Mutex::new(NodeAdmission::new(
                &config.admission_settings(),
                secret,
                node_id,
                Instant::now(),
            )),
            rng: SystemRandom::new(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, NodeAdmission> {
        // Only counters and timestamps inside; a panic elsewhere cannot corrupt them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uniform factor in [1.0, 1.2) (see [`NodeAdmission::register`]).
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
        let decided = self.lock().check(class, key, since_epoch());
        match decided {
            Ok(()) => {
                self.metrics.admitted(class);
                Ok(())
            }
            Err(window) => {
                self.metrics.shed(class);
                Err((window.as_millis() as f64 * self.jitter()) as u64)
            }
        }
    }

    /// A durable storage write starts; it counts until the returned guard is dropped
    /// (however the write ends, including cancellation). See
    /// [`NodeAdmission::backend_started`].
    pub(crate) fn backend_write(&self) -> BackendWrite<'_> {
        let ticket = self.lock().backend_started(Instant::now());
        BackendWrite {
            admission: self,
            ticket,
        }
    }

    /// Records how many log records delivery has yet to store (see
    /// [`NodeAdmission::record_lag`]).
    pub(crate) fn record_lag(&self, records: u64) {
        self.lock().record_lag(records, Instant::now());
        self.metrics.delivery_lag(records);
    }

    /// Whether the node is shedding anything at all (the level is below everything).
    #[cfg(test)]
    fn shedding(&self) -> bool {
        self.enabled && self.lock().level() < AdmissionLevel::ALL
    }

    /// How many new connections per second to take, or `None` for no limit (see
    /// [`NodeAdmission::handshake_rate`]).
    pub(crate) fn handshake_rate(&self) -> Option<f64> {
        if !self.enabled {
            return None;
        }
        self.lock().handshake_rate(Instant::now())
    }

    /// The proof of work (leading zero bits) a registration without a ticket must carry
    /// now: rises with the line's length, 0 while nobody waits or when turned off.
    pub(crate) fn work_bits(&self) -> u32 {
        if !self.enabled {
            return 0;
        }
        self.lock().work_bits(Instant::now())
    }

    /// Records how long a request waited in this node's queues before work on it started.
    pub(crate) fn record_wait(&self, wait: Duration) {
        self.metrics.queue_wait(wait);
        if self.enabled {
            self.lock().record_wait(wait, Instant::now());
        }
    }

    /// Records how late the scheduler ran the lag probe (see
    /// [`NodeAdmission::record_scheduling_lag`]).
    pub(crate) fn record_scheduling_lag(&self, lag: Duration) {
        self.metrics.scheduling_lag(lag);
        if self.enabled {
            self.lock().record_scheduling_lag(lag, Instant::now());
        }
    }

    /// Closes idle windows; called periodically with the door's pressure
    /// ([`Door::pressure`](super::door::Door::pressure)) for the load signal.
    pub(crate) fn tick(&self, door_pressure: f64) {
        if !self.enabled {
            return;
        }
        let (gauges, cluster) = {
            let mut state = self.lock();
            let now = Instant::now();
            let gauges = state.tick(door_pressure, now);
            (gauges, state.cluster_gauges(now, now_ms()))
        };
        self.metrics
            .admission_state(gauges.level, gauges.line_len, gauges.served_rate);
        self.metrics.load(gauges.line_wait, gauges.load_ratio);
        if let Some(c) = cluster {
            self.metrics.cluster_line(
                c.board_age_ms.map(Duration::from_millis),
                Duration::from_millis(c.behind_ms),
            );
        }
    }

    /// Counts a newcomer through this node's door sent on to its mailbox's owner.
    pub(crate) fn registration_redirected(&self) {
        if self.enabled {
            self.lock().registration_redirected(Instant::now());
        }
    }

    /// Decides a registration for `key`, with the ticket it presented, if any.
    pub(crate) fn register(&self, key: &[u8], ticket: Option<&[u8]>) -> RegistrationDecision {
        if !self.enabled {
            return RegistrationDecision::Enter;
        }
        let jitter = self.jitter();
        let decision = self
            .lock()
            .register(key, ticket, Instant::now(), now_ms(), jitter);
        match &decision {
            RegistrationDecision::Enter => self.metrics.admitted(RequestClass::Registration),
            RegistrationDecision::Queued { .. } => self.metrics.queued(),
            RegistrationDecision::Rejected(e) => self.metrics.ticket_rejected(*e),
        }
        decision
    }

    /// Makes this node's line part of the cluster's one line ([`ClusterLine`]), as node
    /// `me` whose samples count `lag` after they were taken and who gives up a silent
    /// node `silence` after that.
    pub(crate) fn coordinate(&self, me: &str, lag: Duration, silence: Duration) {
        // Not read yet: the board's age reads +Inf until the first exchange (with admission
        // off the line is never used, and its gauges stay at 0).
        if self.enabled {
            self.metrics.cluster_line(None, Duration::ZERO);
        }
        self.lock().coordinate(ClusterLine::new(
            me,
            lag.as_millis() as u64,
            silence.as_millis() as u64,
        ));
    }

    /// Takes this node's line sample now; returns its report for the line board.
    pub(crate) fn line_report(&self) -> Vec<u8> {
        let mut state = self.lock();
        state.line_sample(Instant::now(), now_ms());
        encode_report(&state.line_report())
    }

    /// Takes in the line board as read just now. Reports that do not decode are left out
    /// (returned, for the caller to warn about): a node's own line never waits on them.
    pub(crate) fn heard(&self, board: &[(String, Vec<u8>)]) -> Vec<String> {
        let mut bad = Vec::new();
        let decoded: Vec<(&str, Vec<LineSample>)> = board
            .iter()
            .filter_map(|(node, bytes)| match decode_report(bytes) {
                Ok(samples) => Some((node.as_str(), samples)),
                Err(_) => {
                    bad.push(node.clone());
                    None
                }
            })
            .collect();
        self.lock().heard(
            decoded.iter().map(|(node, s)| (*node, s.as_slice())),
            now_ms(),
        );
        bad
    }
}

/// A durable write in progress; see [`Admission::backend_write`].
pub(crate) struct BackendWrite<'a> {
    admission: &'a Admission,
    ticket: u64,
}

impl Drop for BackendWrite<'_> {
    fn drop(&mut self) {
        let (smoothed, limit) = self
            .admission
            .lock()
            .backend_finished(self.ticket, Instant::now());
        self.admission.metrics.backend_latency(smoothed, limit);
    }
}

fn since_epoch() -> Duration {
    Duration::from_millis(now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::TicketError;

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
        // Places in arrival order (ties within a millisecond broken by the key's hash).
        let tickets = crate::admission::TicketKey::new(b"0123456789abcdef0123456789abcdef");
        let issued: Vec<u64> = queued
            .iter()
            .map(|(i, t, _)| {
                let t = tickets.open(t, &i.to_be_bytes(), now_ms()).expect("valid");
                t.issued_at_ms
            })
            .collect();
        assert!(issued.windows(2).all(|w| w[0] <= w[1]), "{issued:?}");
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
        let before = a.lock().level();
        std::thread::sleep(Duration::from_millis(1100));
        a.tick(1.0);
        assert!(a.lock().level() > before);
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
        assert!(a.lock().line().is_empty());
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
        assert!(strict.lock().line().is_paused(), "newcomers wait a moment");
        assert!(strict.handshake_rate().is_some(), "and the door narrows");
        assert!(!lax.lock().line().is_paused(), "turned off, nothing waits");
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
        let (slowed, kept) = (strict.lock().line().rate(), lax.lock().line().rate());
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
