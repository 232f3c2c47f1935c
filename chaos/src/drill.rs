//! Playing a scenario against a [`Target`]: by default an embedded local cluster the drill
//! starts itself.
//!
//! Everyone is a real QUIC client from the client library: established users (logged in,
//! subscribed, messaging their contacts on a timer, acknowledging what arrives, logging in
//! again when their node dies) and newcomers (arriving at the wave's rate, connecting
//! patiently, waiting in line with their ticket as told, then messaging). Clients share a
//! few UDP sockets — one `Connector` per node. What they are told goes into the
//! [`Ledger`] and the [`Timeline`]; faults go through the target (the cluster's own API,
//! the nodes' admin ports, or the drill's proxies).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use levee_client::Trust;
use levee_client::{ClientConfig, ClientError, Connector, Registration};
use levee_protocol::wire::pb::ErrorCode;
use levee_relay::admission::{Place, TicketKey, key_hash};
use levee_relay::local_cluster::NodeSummary;
use levee_relay::{AccountId, Identity, now_ms};
use ring::rand::{SecureRandom, SystemRandom};

use crate::autoscale::{Autoscale, Hpa};
use crate::cluster::{Target, TargetSpec};
use crate::ledger::{Ending, Ledger, MessageId, Newcomer};
use crate::placement::NodePlacement;
use crate::record::{Drained, Event, EventKind, RunRecord, ScalePoint, Summary, Verdict};
use crate::scenario::{FaultAction, Phase, Scenario};
use crate::timeline::{Class, Timeline};

/// Someone watching the drill (the progress bar); called once a second.
pub trait Watcher: Send + Sync {
    /// What the drill is doing now.
    fn tick(&self, status: &Status);
}

/// The drill's state for [`Watcher::tick`].
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Seconds into the run.
    pub t: f64,
    /// Seconds the run lasts at most (play + drain).
    pub total: f64,
    /// The phase.
    pub phase: &'static str,
    /// Established users' sends acknowledged so far.
    pub sent: u64,
    /// ... failed for good so far.
    pub send_failures: u64,
    /// Newcomers offered, admitted, holding a ticket.
    pub offered: u64,
    /// Admitted so far.
    pub admitted: u64,
    /// In line now.
    pub waiting: u64,
    /// Messaging p99 of the last second, ms.
    pub p99_ms: Option<f64>,
}

/// The first byte of a payload: who sent it.
const FROM_ESTABLISHED: u8 = 1;
const FROM_NEWCOMER: u8 = 2;
/// Payload size: a small message (the relay never looks inside).
const PAYLOAD: usize = 64;
/// How long one send may keep retrying (reconnects included) before it counts as failed.
const SEND_PATIENCE: Duration = Duration::from_secs(10);
/// How long an entry node that a login could not reach is passed over.
const AVOID_UNREACHABLE: Duration = Duration::from_secs(10);
/// How long an established user, registering before play starts, keeps trying to connect.
const ESTABLISH_PATIENCE: Duration = Duration::from_secs(60);
/// How long a newcomer keeps trying to connect to one node before it tries the next.
const PATIENCE_PER_NODE: Duration = Duration::from_secs(30);

/// The live nodes and a connector (one UDP socket) for each.
#[derive(Default)]
struct Entries {
    nodes: Vec<(NodeSummary, Connector)>,
    next: usize,
    /// Entry nodes a login could not reach lately, until when they are passed over.
    avoid: HashMap<String, Instant>,
}

/// What every client task shares.
struct Shared {
    scenario: Scenario,
    timeline: Timeline,
    ledger: Mutex<Ledger>,
    entries: Mutex<Entries>,
    ticket_key: TicketKey,
    rng: SystemRandom,
    /// Play is over: stop offering new work.
    play_over: AtomicBool,
    /// The run is over: every task ends.
    stop: stop_signal::Stop,
    sent: AtomicU64,
    send_failures: AtomicU64,
    newcomer_sends: AtomicU64,
    offered: AtomicU64,
    not_offered: AtomicU64,
    in_progress: AtomicU64,
    admitted: AtomicU64,
    admitted_in_wave: AtomicU64,
    waiting: AtomicU64,
    requests: AtomicU64,
    /// Every established user's send that has ended: when it was offered (s into the run)
    /// and whether it was acknowledged.
    send_outcomes: Mutex<Vec<(f64, bool)>>,
    /// Per kind of client (reference, ignoring `retry_after`): requests the cluster saw,
    /// admissions, and seconds from arrival to admission summed over those admitted.
    by_kind: [KindCounts; 2],
    /// Each live node's placement, read once a second.
    placement: Mutex<Vec<NodePlacement>>,
    /// Established users' failed logins, by kind of error (for the post-mortem).
    login_failures: Mutex<BTreeMap<String, u64>>,
}

/// What one kind of newcomer client cost and got.
#[derive(Default)]
struct KindCounts {
    requests: AtomicU64,
    admitted: AtomicU64,
    waited_ms: AtomicU64,
}

/// Index into `by_kind`.
const REFERENCE: usize = 0;
const STORMER: usize = 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and lists only; a panicking task cannot leave them torn.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A connector to a live node, in turn.
    fn connector(&self) -> Option<Connector> {
        self.entry().map(|(_, c)| c)
    }

    /// A live node's name and a connector to it, in turn, passing over the nodes a login
    /// could not reach lately (unless every node is one of them).
    fn entry(&self) -> Option<(String, Connector)> {
        let mut e = lock(&self.entries);
        if e.nodes.is_empty() {
            return None;
        }
        let now = Instant::now();
        e.avoid.retain(|_, until| *until > now);
        for _ in 0..e.nodes.len() {
            e.next = (e.next + 1) % e.nodes.len();
            if !e.avoid.contains_key(&e.nodes[e.next].0.name) {
                break;
            }
        }
        let (node, connector) = &e.nodes[e.next];
        Some((node.name.clone(), connector.clone()))
    }

    /// Passes over entry node `name` for the next [`AVOID_UNREACHABLE`]: an app that
    /// could not reach a node, or was told by it to log in through another, tries the
    /// others first, as a person's phone would.
    fn avoid(&self, name: String) {
        lock(&self.entries)
            .avoid
            .insert(name, Instant::now() + AVOID_UNREACHABLE);
    }

    /// [`avoid`](Self::avoid) the entry node at `address`, if it is one: the node a session
    /// was on when its connection went silent. A frozen node's kernel still queues the
    /// handshakes of new logins, which then wait out the connect timeout (in the `zombie`
    /// drill, a dozen users' logins picked the frozen node and their sends ran out of
    /// patience).
    fn avoid_address(&self, address: std::net::SocketAddr) {
        let name = lock(&self.entries)
            .nodes
            .iter()
            .find(|(n, _)| n.address == address)
            .map(|(n, _)| n.name.clone());
        if let Some(name) = name {
            self.avoid(name);
        }
    }

    fn random_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        let _ = self.rng.fill(&mut b);
        u64::from_le_bytes(b)
    }

    fn message_id(&self) -> MessageId {
        let mut id = [0u8; 16];
        let _ = self.rng.fill(&mut id);
        id
    }

    /// `d` stretched by up to 25% at random: clients coming back as told, not in lockstep.
    fn jitter(&self, d: Duration) -> Duration {
        d.mul_f64(1.0 + (self.random_u64() % 1000) as f64 / 4000.0)
    }

    fn payload(&self, from: u8) -> Vec<u8> {
        let mut p = vec![0u8; PAYLOAD];
        p[0] = from;
        let sent = self.timeline.epoch().elapsed().as_nanos() as u64;
        p[1..9].copy_from_slice(&sent.to_be_bytes());
        p
    }

    fn over(&self) -> bool {
        self.stop.is_stopped()
    }
}

/// A tiny stop signal: a flag plus a notification, so sleeping tasks wake at once.
mod stop_signal {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    #[derive(Default)]
    pub struct Stop {
        stopped: AtomicBool,
        notify: Notify,
    }

    impl Stop {
        pub fn stop(&self) {
            self.stopped.store(true, Ordering::SeqCst);
            self.notify.notify_waiters();
        }

        pub fn is_stopped(&self) -> bool {
            self.stopped.load(Ordering::SeqCst)
        }

        /// Sleeps `d`; returns true if the stop came first.
        pub async fn sleep(&self, d: std::time::Duration) -> bool {
            let notified = self.notify.notified();
            if self.is_stopped() {
                return true;
            }
            tokio::select! {
                () = notified => true,
                () = tokio::time::sleep(d) => self.is_stopped(),
            }
        }

        pub async fn stopped(&self) {
            let notified = self.notify.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// One established user.
struct User {
    identity: Identity,
    account: AccountId,
    contacts: Vec<AccountId>,
    /// The session sends go through, while there is one.
    current: Mutex<Option<Arc<levee_client::Client>>>,
}

/// Plays `scenario` once against `target`, with admission control on or off (embedded
/// targets; a running cluster has its own setting), and judges it.
pub async fn run(
    scenario: &Scenario,
    target: &TargetSpec,
    admission: bool,
    watcher: Option<Arc<dyn Watcher>>,
) -> anyhow::Result<RunRecord> {
    let cluster = target.open(scenario, admission).await?;
    let mut played = play(scenario, cluster.as_ref(), admission, watcher).await;
    if let (Ok(record), TargetSpec::Remote { .. }) = (&mut played, target) {
        // Its admission setting is its own, not the drill's.
        record.label = "running cluster, as configured".into();
    }
    // Stopped whether play went well or not, so no node outlives the drill.
    let stopped = cluster.shutdown().await;
    let record = played?;
    stopped?;
    Ok(record)
}

async fn play(
    scenario: &Scenario,
    cluster: &dyn Target,
    admission: bool,
    watcher: Option<Arc<dyn Watcher>>,
) -> anyhow::Result<RunRecord> {
    let rng = SystemRandom::new();
    let shared = Arc::new(Shared {
        scenario: scenario.clone(),
        timeline: Timeline::start(),
        ledger: Mutex::new(Ledger::default()),
        entries: Mutex::new(Entries::default()),
        ticket_key: cluster.ticket_key().clone(),
        rng,
        play_over: AtomicBool::new(false),
        stop: stop_signal::Stop::default(),
        sent: AtomicU64::new(0),
        send_failures: AtomicU64::new(0),
        newcomer_sends: AtomicU64::new(0),
        offered: AtomicU64::new(0),
        not_offered: AtomicU64::new(0),
        in_progress: AtomicU64::new(0),
        admitted: AtomicU64::new(0),
        admitted_in_wave: AtomicU64::new(0),
        waiting: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        send_outcomes: Mutex::default(),
        by_kind: Default::default(),
        placement: Mutex::default(),
        login_failures: Mutex::default(),
    });
    for node in cluster.nodes() {
        add_entry(&shared, node)?;
    }
    let users = establish(&shared).await?;
    if scenario.autoscale.is_some() {
        settle_load(cluster).await;
    }
    // The clock of the run starts now; setting up the population is not part of it.
    let shared = Arc::new(Shared {
        timeline: Timeline::start(),
        ..Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("setup tasks still running"))?
    });
    let mut tasks = tokio::task::JoinSet::new();
    for user in &users {
        tasks.spawn(session_loop(shared.clone(), user.clone()));
        tasks.spawn(sender(shared.clone(), user.clone()));
    }
    if scenario.wave.is_some() {
        tasks.spawn(arrivals(shared.clone(), users.clone()));
    }

    // The conductor: faults on time, a sample a second, phase changes, the end. Beside
    // it, the autoscaler, if the scenario has one; it stops when the conductor does.
    let conductor = conduct(&shared, cluster, watcher.as_deref());
    let scaler = async {
        match &scenario.autoscale {
            Some(config) => autoscaler(&shared, cluster, config.clone()).await,
            None => Scaling::default(),
        }
    };
    let ((mut events, not_applied, ended_at), scaling) = tokio::join!(conductor, scaler);
    while tasks.join_next().await.is_some() {}
    events.extend(scaling.events);
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let settled = settled_placement(&shared, cluster).await;
    // Nothing acknowledged may come back: a fresh session for every user, through any
    // node, must bring only what was never acknowledged.
    let unchecked = final_sessions(&shared, &users).await;
    events.push(Event {
        at_s: ended_at,
        kind: EventKind::Phase,
        label: "end".into(),
    });
    let leases = lease_history(cluster).await;
    let mut record = judge(&shared, admission, events);
    record.verdicts.push(settled);
    record.verdicts.push(leases);
    if let Some(config) = &scenario.autoscale {
        let wave_start = scenario.wave.as_ref().map(|w| w.start_s);
        record.verdicts.extend(crate::autoscale::judge(
            config,
            &scaling.points,
            wave_start,
            scenario.cluster.load_target_wait_s,
            &scaling.drained,
        ));
        record.autoscale = scaling.points;
        record.drained = scaling.drained;
    }
    record.placement = std::mem::take(&mut *lock(&shared.placement));
    if unchecked > 0 {
        // Their undelivered envelopes count as lost, but may be waiting in a mailbox
        // nobody could open: say so next to the count.
        if let Some(v) = record
            .verdicts
            .iter_mut()
            .find(|v| v.name == crate::ledger::DELIVERED)
        {
            v.detail += &format!(
                "; {unchecked} users could not open their final session, so what waits for them was not checked"
            );
        }
    }
    if !scenario.faults.is_empty() {
        // A fault that did not happen makes the rest of the verdicts meaningless.
        record.verdicts.insert(
            0,
            Verdict {
                name: "every fault of the scenario was applied".into(),
                pass: not_applied.is_empty(),
                detail: if not_applied.is_empty() {
                    format!("{} applied", scenario.faults.len())
                } else {
                    not_applied.join("; ")
                },
            },
        );
    }
    Ok(record)
}

/// The conductor: faults on time, a sample a second, phase changes; stops every client
/// task at the end. Returns the events, the faults that could not be applied, and when
/// play ended.
async fn conduct(
    shared: &Arc<Shared>,
    cluster: &dyn Target,
    watcher: Option<&dyn Watcher>,
) -> (Vec<Event>, Vec<String>, f64) {
    let scenario = &shared.scenario;
    let mut events = vec![Event {
        at_s: 0.0,
        kind: EventKind::Phase,
        label: Phase::Baseline.name().into(),
    }];
    let mut faults = scenario.faults.clone();
    faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut faults = faults.into_iter().peekable();
    let total = scenario.duration_s + scenario.drain_s;
    let mut phase = Phase::Baseline;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_sample = -1i64;
    let mut not_applied = Vec::new();
    loop {
        tick.tick().await;
        let t = shared.timeline.now();
        let now_phase = scenario.phase(t);
        if now_phase != phase {
            phase = now_phase;
            events.push(Event {
                at_s: t,
                kind: EventKind::Phase,
                label: phase.name().into(),
            });
            if phase == Phase::Drain {
                shared.play_over.store(true, Ordering::SeqCst);
            }
        }
        while let Some(f) = faults.next_if(|f| f.at_s <= t) {
            if let Err(e) = inject(shared, cluster, &f.action, t, &mut events).await {
                not_applied.push(format!("{} at {:.0} s: {e:#}", f.action.label(), f.at_s));
            }
        }
        if t as i64 > last_sample {
            last_sample = t as i64;
            sample(shared, cluster, phase, watcher, total).await;
        }
        let settled = shared.in_progress.load(Ordering::SeqCst) == 0
            && lock(&shared.ledger).undelivered() == 0;
        if t >= total || (phase == Phase::Drain && settled) {
            break;
        }
    }
    let ended_at = shared.timeline.now();
    shared.stop.stop();
    (events, not_applied, ended_at)
}

/// What the autoscaler did.
#[derive(Default)]
struct Scaling {
    points: Vec<ScalePoint>,
    drained: Vec<Drained>,
    events: Vec<Event>,
}

/// Plays the autoscaler until the run stops: once a period, reads `levee_load_ratio` and
/// the line's estimated wait from every node's admin port, asks [`Hpa`] how many nodes
/// there should be, then starts nodes or drains the newest, as a StatefulSet scales.
async fn autoscaler(shared: &Shared, cluster: &dyn Target, config: Autoscale) -> Scaling {
    let mut hpa = Hpa::new(config);
    let mut scaling = Scaling::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(hpa.period_s()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.stop.stopped() => break,
        }
        let t = shared.timeline.now();
        let mut nodes = cluster.nodes();
        let (mut ratios, mut waits) = (Vec::new(), Vec::new());
        for n in &nodes {
            let Some(admin) = n.admin else { continue };
            if let Some(r) = scrape(admin, &n.name, "levee_load_ratio").await {
                ratios.push(r);
            }
            let wait = "levee_waiting_room_estimated_wait_seconds";
            if let Some(w) = scrape(admin, &n.name, wait).await {
                waits.push(w);
            }
        }
        let current = nodes.len() as u32;
        let desired = hpa.decide(t, current, &ratios);
        scaling.points.push(ScalePoint {
            t,
            nodes: current,
            ratio: mean(&ratios),
            wait_s: mean(&waits),
            desired,
        });
        for _ in current..desired {
            let started = cluster.start().await;
            let at_s = shared.timeline.now();
            match started.and_then(|node| {
                let label = format!("{} up (autoscaler)", node.name);
                add_entry(shared, node).map(|()| label)
            }) {
                Ok(label) => scaling.events.push(Event {
                    at_s,
                    kind: EventKind::NodeUp,
                    label,
                }),
                Err(e) => scaling.events.push(Event {
                    at_s,
                    kind: EventKind::Fault,
                    label: format!("scale-out failed: {e:#}"),
                }),
            }
        }
        // The newest first, as a StatefulSet removes its highest ordinal.
        nodes.sort_by_key(|n| node_number(&n.name));
        for node in nodes
            .iter()
            .rev()
            .take(current.saturating_sub(desired) as usize)
        {
            // New clients stop choosing it now; those connected are told to move.
            lock(&shared.entries)
                .nodes
                .retain(|(n, _)| n.name != node.name);
            let asked = shared.timeline.now();
            let result = cluster.drain(&node.name).await;
            let left = shared.timeline.now();
            scaling.events.push(Event {
                at_s: left,
                kind: EventKind::NodeDown,
                label: format!("{} drained (autoscaler)", node.name),
            });
            scaling.drained.push(Drained {
                t: asked,
                name: node.name.clone(),
                took_s: result.is_ok().then_some(left - asked),
                error: result.err().map(|e| format!("{e:#}")),
            });
        }
    }
    scaling
}

/// Waits (up to 20 s) until no node's `levee_load_ratio` reads above 1, so the autoscaler
/// starts on a settled cluster. Registering the established users is a burst of
/// registrations against nodes that seat only so many a second; its demand still read 1.35
/// when the run's clock started, the autoscaler added a node before the wave and removed
/// it as the wave began, and the short CI drill failed its flapping check (4 changes).
async fn settle_load(cluster: &dyn Target) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        let mut busy = false;
        for n in cluster.nodes() {
            let Some(admin) = n.admin else { continue };
            busy |= scrape(admin, &n.name, "levee_load_ratio")
                .await
                .is_some_and(|r| r > 1.0);
        }
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The number in a node's name (`node-12` → 12), for ordering by age; names without one
/// sort first, so they are drained last.
fn node_number(name: &str) -> u64 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn add_entry(shared: &Shared, node: NodeSummary) -> anyhow::Result<()> {
    let config = ClientConfig::new(node.address, Trust::Fingerprint(node.fingerprint));
    let connector = Connector::new(&config).context("a client socket")?;
    lock(&shared.entries).nodes.push((node, connector));
    Ok(())
}

/// Registers the established users (before the run's clock starts) and picks contacts.
async fn establish(shared: &Arc<Shared>) -> anyhow::Result<Vec<Arc<User>>> {
    let n = shared.scenario.population.established as usize;
    let identities: Vec<Identity> = (0..n)
        .map(|_| Identity::generate())
        .collect::<Result<_, _>>()
        .context("generating identities")?;
    let accounts: Vec<AccountId> = identities.iter().map(Identity::account).collect();
    let mut registering = tokio::task::JoinSet::new();
    for id in &identities {
        let (shared, id) = (shared.clone(), id.clone());
        registering.spawn(async move {
            let connector = shared.connector().context("no node is up")?;
            // Patiently: they register as newcomers, and a node whose registrations are
            // capped (`registration_max_per_s`) lets only so many through its door at once;
            // an impatient connect gave up on a dropped attempt in 5 s and the drill could
            // not start (1 of 4 `chaos/distributed.sh autoscale` runs).
            let give_up = Instant::now() + ESTABLISH_PATIENCE;
            loop {
                let client = connector
                    .connect_patiently(id.clone(), give_up, || {})
                    .await?;
                // The registration may be redirected to its mailbox's owner, reached with
                // an ordinary connect: an owner pressing its door drops it, and in CI the
                // `cluster-line` drill (a node seating 3 a second) could not start.
                match client.register().await {
                    Ok(_) => {
                        client.close().await;
                        return anyhow::Ok(());
                    }
                    Err(e) if transient(&e) && Instant::now() < give_up => {
                        client.close().await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        });
        // A few dozen at a time: setting up is not the test.
        while registering.len() >= 32 {
            if let Some(done) = registering.join_next().await {
                done??;
            }
        }
    }
    while let Some(done) = registering.join_next().await {
        done??;
    }
    let contacts = shared.scenario.population.contacts as usize;
    Ok(identities
        .into_iter()
        .enumerate()
        .map(|(i, identity)| {
            let mut mine = Vec::with_capacity(contacts);
            while mine.len() < contacts {
                let j = (shared.random_u64() % n as u64) as usize;
                if j != i && !mine.contains(&accounts[j]) {
                    mine.push(accounts[j]);
                }
            }
            Arc::new(User {
                account: accounts[i],
                identity,
                contacts: mine,
                current: Mutex::new(None),
            })
        })
        .collect())
}

/// Whether an error means "this connection is gone or the node is busy": try again,
/// elsewhere if need be — as an app would.
fn transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unreachable { .. }
            | ClientError::Closed(_)
            | ClientError::Timeout(_)
            | ClientError::Busy
    ) || matches!(
        e.code(),
        Some(ErrorCode::RateLimited | ErrorCode::MailboxUnavailable)
    )
}

/// A short name for what kind of error `e` is: the protocol's error code, or how the
/// connection failed (never an address or account).
fn error_kind(e: &ClientError) -> String {
    if let Some(code) = e.code() {
        return code.as_str_name().to_owned();
    }
    match e {
        ClientError::Unreachable { .. } => "unreachable",
        ClientError::CertificateMismatch => "certificate mismatch",
        ClientError::Tls(_) => "tls",
        ClientError::Busy => "busy",
        ClientError::Closed(_) => "closed",
        ClientError::Refused { .. } => "refused",
        ClientError::Protocol(_) => "protocol",
        ClientError::Timeout(_) => "timeout",
        _ => "other",
    }
    .to_owned()
}

/// An established user's sessions: log in, subscribe, take deliveries and acknowledge
/// them; when the session ends (its node died), log in again through any node.
async fn session_loop(shared: Arc<Shared>, user: Arc<User>) {
    let mut session = 0u64;
    while !shared.over() {
        shared.timeline.offered(Class::Login);
        let started = Instant::now();
        let login = async {
            let (entry, connector) = shared
                .entry()
                .ok_or_else(|| ClientError::Closed("no node is up".into()))?;
            let client = match connector.connect(user.identity.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    if matches!(e, ClientError::Unreachable { .. } | ClientError::Timeout(_)) {
                        shared.avoid(entry);
                    }
                    return Err(e);
                }
            };
            if let Err(e) = client.authenticate().await {
                // A node that cannot read the roster refuses logins it cannot place; any
                // other node can. Without this, half the retries went back to it.
                if e.code() == Some(ErrorCode::MailboxUnavailable) {
                    shared.avoid(entry);
                }
                return Err(e);
            }
            let inbox = client.subscribe().await?;
            Ok::<_, ClientError>((Arc::new(client), inbox))
        };
        let (client, mut inbox) = match login.await {
            Ok(ok) => ok,
            Err(e) => {
                if e.code() == Some(ErrorCode::RateLimited) {
                    shared.timeline.shed(Class::Login);
                } else {
                    shared.timeline.failed(Class::Login);
                }
                *lock(&shared.login_failures)
                    .entry(error_kind(&e))
                    .or_default() += 1;
                if shared
                    .stop
                    .sleep(shared.jitter(Duration::from_millis(500)))
                    .await
                {
                    return;
                }
                continue;
            }
        };
        shared.timeline.ok(Class::Login, Some(started.elapsed()));
        session += 1;
        *lock(&user.current) = Some(client.clone());
        loop {
            let first = tokio::select! {
                () = shared.stop.stopped() => break,
                d = inbox.next() => d,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while let Some(d) = inbox.try_next() {
                batch.push(d);
            }
            take(&shared, &user, &batch, session);
            let ids: Vec<u64> = batch.iter().map(|d| d.envelope_id).collect();
            if client.ack(&ids).await.is_ok() {
                let mut ledger = lock(&shared.ledger);
                for d in &batch {
                    ledger.recipient_acked(d.client_message_id, user.account, session);
                }
            }
        }
        *lock(&user.current) = None;
        if !shared.over() {
            // The connection ended under the session (its node went silent or died).
            shared.avoid_address(client.server());
        }
        if let Ok(c) = Arc::try_unwrap(client) {
            c.close().await;
        }
    }
}

/// Ledger and latency for deliveries that arrived on `session`.
fn take(shared: &Shared, user: &User, batch: &[levee_client::Delivery], session: u64) {
    let now = shared.timeline.epoch().elapsed().as_nanos() as u64;
    let mut ledger = lock(&shared.ledger);
    for d in batch {
        ledger.delivered(d.client_message_id, user.account, session, d.envelope_id);
        if d.ciphertext.len() >= 9 && d.ciphertext[0] == FROM_ESTABLISHED {
            let mut sent = [0u8; 8];
            sent.copy_from_slice(&d.ciphertext[1..9]);
            let took = Duration::from_nanos(now.saturating_sub(u64::from_be_bytes(sent)));
            shared.timeline.latency(Class::Messaging, took);
        }
    }
}

/// An established user's messages: one to a random contact every `send_interval_s`, open
/// loop, each retried (same message id, so never twice) until it is acknowledged or
/// [`SEND_PATIENCE`] runs out.
async fn sender(shared: Arc<Shared>, user: Arc<User>) {
    let interval = Duration::from_secs_f64(shared.scenario.population.send_interval_s);
    // Spread the users over the interval instead of all sending at once.
    let offset = interval.mul_f64((shared.random_u64() % 1000) as f64 / 1000.0);
    if shared.stop.sleep(offset).await {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shared.stop.stopped() => break,
            _ = tick.tick() => {}
        }
        if shared.play_over.load(Ordering::SeqCst) {
            break;
        }
        // Finished sends are forgotten as they go, so a long drill holds only those in flight.
        while sends.try_join_next().is_some() {}
        let to = user.contacts[(shared.random_u64() % user.contacts.len() as u64) as usize];
        let (shared, user) = (shared.clone(), user.clone());
        sends.spawn(async move {
            shared.timeline.offered(Class::Messaging);
            let offered_at = shared.timeline.now();
            let (id, payload) = (shared.message_id(), shared.payload(FROM_ESTABLISHED));
            let give_up = Instant::now() + SEND_PATIENCE;
            loop {
                let client = lock(&user.current).clone();
                // An attempt, too, ends with the patience: on a connection to a node that
                // died without a word, an answer could otherwise be 30 s away.
                let left = give_up.saturating_duration_since(Instant::now());
                let outcome = match client {
                    Some(c) => tokio::time::timeout(left, c.send_with_id(&to, payload.clone(), id))
                        .await
                        .ok(),
                    None => None,
                };
                match outcome {
                    Some(Ok(_)) => {
                        lock(&shared.ledger).acked(id, to, shared.timeline.now());
                        shared.timeline.ok(Class::Messaging, None);
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                        lock(&shared.send_outcomes).push((offered_at, true));
                        return;
                    }
                    Some(Err(e)) if !transient(&e) => break,
                    _ if Instant::now() >= give_up || shared.over() => break,
                    _ => {
                        if shared.stop.sleep(Duration::from_millis(250)).await {
                            break;
                        }
                    }
                }
            }
            shared.timeline.failed(Class::Messaging);
            shared.send_failures.fetch_add(1, Ordering::Relaxed);
            lock(&shared.send_outcomes).push((offered_at, false));
        });
    }
    while sends.join_next().await.is_some() {}
}

/// The wave: newcomers arriving at the scenario's rate until play ends.
async fn arrivals(shared: Arc<Shared>, established: Vec<Arc<User>>) {
    let Some(wave) = shared.scenario.wave.clone() else {
        return;
    };
    let step = Duration::from_millis(50);
    let mut owed = 0.0;
    let mut newcomers = tokio::task::JoinSet::new();
    let max = u64::from(wave.max_in_progress);
    while !shared.play_over.load(Ordering::SeqCst) && !shared.over() {
        owed += wave.rate_at(shared.timeline.now()) * step.as_secs_f64();
        while owed >= 1.0 {
            owed -= 1.0;
            if shared.in_progress.load(Ordering::SeqCst) >= max {
                shared.not_offered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            shared.in_progress.fetch_add(1, Ordering::SeqCst);
            newcomers.spawn(newcomer(shared.clone(), established.clone()));
        }
        // Reap finished ones so the set does not grow with the whole wave.
        while newcomers.try_join_next().is_some() {}
        if shared.stop.sleep(step).await {
            break;
        }
    }
    while newcomers.join_next().await.is_some() {}
}

/// One newcomer: connect patiently, register, wait in line as told (keeping the ticket
/// across reconnects), and once admitted message a few established users.
async fn newcomer(shared: Arc<Shared>, established: Vec<Arc<User>>) {
    let ending = register(&shared).await;
    shared.in_progress.fetch_sub(1, Ordering::SeqCst);
    let Some(client) = ending else {
        return;
    };
    let n = shared.scenario.population.newcomer_messages;
    let interval = Duration::from_secs_f64(shared.scenario.population.send_interval_s);
    for _ in 0..n {
        if shared.play_over.load(Ordering::SeqCst) || shared.over() {
            break;
        }
        let to = established[(shared.random_u64() % established.len() as u64) as usize].account;
        let id = shared.message_id();
        if client
            .send_with_id(&to, shared.payload(FROM_NEWCOMER), id)
            .await
            .is_ok()
        {
            lock(&shared.ledger).acked(id, to, shared.timeline.now());
            shared.newcomer_sends.fetch_add(1, Ordering::Relaxed);
        }
        if shared.stop.sleep(interval).await {
            break;
        }
    }
    client.close().await;
}

/// The registration part of [`newcomer`]; records the ending in the ledger and returns the
/// client if admitted.
async fn register(shared: &Arc<Shared>) -> Option<levee_client::Client> {
    let identity = Identity::generate().ok()?;
    let account = identity.account();
    let storm = shared
        .scenario
        .wave
        .as_ref()
        .map_or(0.0, |w| w.ignore_retry_after);
    let kind = if (shared.random_u64() % 10_000) as f64 / 10_000.0 < storm {
        STORMER
    } else {
        REFERENCE
    };
    let counts = &shared.by_kind[kind];
    shared.timeline.offered(Class::Registration);
    shared.offered.fetch_add(1, Ordering::Relaxed);
    let arrived = Instant::now();
    let mut ticket: Option<bytes::Bytes> = None;
    // Its place in the cluster's line, once it has a ticket.
    let mut place: Option<Place> = None;
    let mut last_told_to_wait = None;
    let mut promised_at = None;
    let mut client: Option<levee_client::Client> = None;
    let ending = loop {
        if shared.over() {
            break None;
        }
        let c = match client.take() {
            Some(c) => c,
            None => {
                let Some(connector) = shared.connector() else {
                    if shared.stop.sleep(Duration::from_millis(200)).await {
                        break None;
                    }
                    continue;
                };
                // Patient until the run ends — a refusal costs the node one packet — but at
                // one node for at most PATIENCE_PER_NODE, then at the next live one, as an
                // app that knows several addresses would: a node killed mid-wave answers
                // nothing, and newcomers knocking at it until the end were counted as still
                // refused at the door (206 in one run; none once they moved on).
                let give_up = (shared.timeline.epoch()
                    + Duration::from_secs_f64(
                        shared.scenario.duration_s + shared.scenario.drain_s,
                    ))
                .min(Instant::now() + PATIENCE_PER_NODE);
                let connected = connector
                    .connect_patiently(identity.clone(), give_up, || {
                        shared.timeline.refused();
                        shared.requests.fetch_add(1, Ordering::Relaxed);
                        counts.requests.fetch_add(1, Ordering::Relaxed);
                    })
                    .await;
                match connected {
                    Ok(c) => c,
                    Err(e) if transient(&e) => {
                        if shared
                            .stop
                            .sleep(shared.jitter(Duration::from_millis(500)))
                            .await
                        {
                            break None;
                        }
                        continue;
                    }
                    Err(e) => break Some(Ending::HardError(e.to_string())),
                }
            }
        };
        let sent_at = shared.timeline.now();
        shared.requests.fetch_add(1, Ordering::Relaxed);
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let attempt = tokio::select! {
            () = shared.stop.stopped() => break None,
            a = c.register_once(ticket.clone()) => a,
        };
        match attempt {
            Ok(Registration::Registered { .. }) => {
                let t = shared.timeline.now();
                shared
                    .timeline
                    .ok(Class::Registration, Some(arrived.elapsed()));
                shared.admitted.fetch_add(1, Ordering::Relaxed);
                counts.admitted.fetch_add(1, Ordering::Relaxed);
                counts
                    .waited_ms
                    .fetch_add(arrived.elapsed().as_millis() as u64, Ordering::Relaxed);
                if shared
                    .scenario
                    .wave
                    .as_ref()
                    .is_some_and(|w| t >= w.start_s && t < w.end_s())
                {
                    shared.admitted_in_wave.fetch_add(1, Ordering::Relaxed);
                }
                if place.is_some() {
                    shared.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                // Admitted without a ticket: its place is when it got in (no earlier than
                // when the node placed it — but for the few milliseconds `Place::issue`
                // may date a burst's places ahead, far inside the order check's second —
                // so the order check is, if anything, stricter).
                let place =
                    place.or_else(|| Some(Place::new(now_ms(), &key_hash(account.as_bytes()))));
                lock(&shared.ledger).newcomer(Newcomer {
                    place,
                    last_told_to_wait,
                    admitted_at: Some(t),
                    promised_at,
                    ending: Ending::Admitted,
                });
                return Some(c);
            }
            Ok(Registration::Queued(p)) => {
                shared.timeline.shed(Class::Registration);
                shared.timeline.estimated_wait(p.estimated_wait);
                last_told_to_wait = Some(sent_at);
                promised_at = Some(shared.timeline.now() + p.estimated_wait.as_secs_f64());
                if place.is_none() {
                    shared.waiting.fetch_add(1, Ordering::SeqCst);
                }
                // The place is the ticket's; read it from the ticket itself. One that does
                // not open is reported at the end (`Ending::WaitingInvalid`).
                if let Ok(t) = shared
                    .ticket_key
                    .open(&p.ticket, account.as_bytes(), now_ms())
                {
                    place = Some(Place::of(&t));
                }
                ticket = Some(p.ticket.clone());
                client = Some(c);
                let pause = match (kind, &shared.scenario.wave) {
                    (STORMER, Some(w)) => Duration::from_millis(w.storm_retry_ms),
                    _ => shared.jitter(p.retry_after),
                };
                if shared.stop.sleep(pause).await {
                    break None;
                }
            }
            Err(e) if transient(&e) => {
                if e.code() == Some(ErrorCode::RateLimited) {
                    shared.timeline.shed(Class::Registration);
                    client = Some(c);
                }
                if shared
                    .stop
                    .sleep(shared.jitter(Duration::from_millis(500)))
                    .await
                {
                    break None;
                }
            }
            Err(e) => break Some(Ending::HardError(e.to_string())),
        }
    };
    // Not admitted: what does the newcomer hold at the end?
    let ending = match ending {
        Some(hard) => {
            shared.timeline.failed(Class::Registration);
            hard
        }
        None => match &ticket {
            Some(t) => match shared.ticket_key.open(t, account.as_bytes(), now_ms()) {
                Ok(_) => Ending::WaitingValid,
                Err(e) => Ending::WaitingInvalid(format!("ticket does not verify: {}", e.reason())),
            },
            None => Ending::RefusedAtEnd,
        },
    };
    if place.is_some() {
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    lock(&shared.ledger).newcomer(Newcomer {
        place,
        last_told_to_wait,
        admitted_at: None,
        promised_at,
        ending,
    });
    None
}

/// Applies a fault to the cluster and keeps the client entries in step.
async fn inject(
    shared: &Shared,
    cluster: &dyn Target,
    action: &FaultAction,
    t: f64,
    events: &mut Vec<Event>,
) -> anyhow::Result<()> {
    events.push(Event {
        at_s: t,
        kind: EventKind::Fault,
        label: action.label(),
    });
    let now = || shared.timeline.now();
    match action {
        FaultAction::KillNode { node } => {
            let name = cluster.kill(*node).await?;
            // New clients stop choosing it; those connected find out the hard way.
            lock(&shared.entries).nodes.retain(|(n, _)| n.name != name);
            events.push(Event {
                at_s: now(),
                kind: EventKind::NodeDown,
                label: format!("{name} down"),
            });
        }
        FaultAction::StartNode => {
            let node = cluster.start().await?;
            events.push(Event {
                at_s: now(),
                kind: EventKind::NodeUp,
                label: format!("{} up", node.name),
            });
            add_entry(shared, node)?;
        }
        FaultAction::StallBackend {
            node,
            backend,
            for_s,
        } => {
            let d = Duration::from_secs_f64(*for_s);
            let stalled = cluster.stall(*node, backend, d).await?;
            events.push(Event {
                at_s: now() + for_s,
                kind: EventKind::Fault,
                label: format!("{backend} back on {}", stalled.join(", ")),
            });
        }
        FaultAction::PauseNode { node, for_s } => {
            let name = cluster
                .pause(*node, Duration::from_secs_f64(*for_s))
                .await?;
            events.push(Event {
                at_s: now() + for_s,
                kind: EventKind::Fault,
                label: format!("{name} goes on"),
            });
        }
        FaultAction::Partition { node, for_s } => {
            let name = cluster
                .partition(*node, Duration::from_secs_f64(*for_s))
                .await?;
            events.push(Event {
                at_s: now() + for_s,
                kind: EventKind::Fault,
                label: format!("{name} reachable again"),
            });
        }
    }
    Ok(())
}

/// Once a second: the state for the timeline and the watcher.
async fn sample(
    shared: &Shared,
    cluster: &dyn Target,
    phase: Phase,
    watcher: Option<&dyn Watcher>,
    total: f64,
) {
    let nodes = cluster.nodes();
    let mut level: Option<f64> = None;
    for n in &nodes {
        if let Some(admin) = n.admin
            && let Some(v) = scrape(admin, &n.name, "levee_admission_level").await
        {
            level = Some(level.map_or(v, |l: f64| l.min(v)));
        }
    }
    let views = placements(shared, &nodes).await;
    lock(&shared.placement).extend(views);
    let waiting = shared.waiting.load(Ordering::SeqCst);
    shared
        .timeline
        .sample(phase.name(), waiting, nodes.len() as u32, level);
    if let Some(w) = watcher {
        w.tick(&Status {
            t: shared.timeline.now(),
            total,
            phase: phase.name(),
            sent: shared.sent.load(Ordering::Relaxed),
            send_failures: shared.send_failures.load(Ordering::Relaxed),
            offered: shared.offered.load(Ordering::Relaxed),
            admitted: shared.admitted.load(Ordering::Relaxed),
            waiting,
            p99_ms: shared.timeline.last_messaging_p99(),
        });
    }
}

/// Each of `nodes`' placement as its admin port reports it now (nodes that do not answer
/// within 500 ms, or have no admin port, are left out).
async fn placements(shared: &Shared, nodes: &[NodeSummary]) -> Vec<NodePlacement> {
    let t = shared.timeline.now();
    let mut views = Vec::with_capacity(nodes.len());
    for n in nodes {
        let Some(admin) = n.admin else { continue };
        if let Ok(view) = admin_json(admin, "/admin/cluster", Duration::from_millis(500)).await
            && let Some(p) = NodePlacement::from_admin(t, &view)
        {
            views.push(p);
        }
    }
    views
}

/// Once play is over: every live node agrees on the placement (epoch and digest) and every
/// shard has exactly one live owner, within [`SETTLE_LIMIT`] (a failure detection and a
/// roster read or two).
async fn settled_placement(shared: &Shared, cluster: &dyn Target) -> Verdict {
    const SETTLE_LIMIT: Duration = Duration::from_secs(20);
    let name = "after settling, the live nodes agree on one placement and every shard has \
                exactly one owner, which holds its lease"
        .to_owned();
    let nodes = cluster.nodes();
    let without_admin = nodes.iter().filter(|n| n.admin.is_none()).count();
    if without_admin > 0 {
        return Verdict {
            name,
            pass: true,
            detail: format!("not checked: {without_admin} nodes have no admin port"),
        };
    }
    let started = tokio::time::Instant::now();
    loop {
        let views = placements(shared, &nodes).await;
        let outcome = if views.len() < nodes.len() {
            Err(format!(
                "{} of {} live nodes answered",
                views.len(),
                nodes.len()
            ))
        } else {
            crate::placement::agreement(&views)
        };
        if let (Ok(()), Some(v)) = (&outcome, views.first()) {
            let detail = format!(
                "{} nodes at epoch {} (digest {}) after {:.1} s",
                views.len(),
                v.epoch,
                v.digest,
                started.elapsed().as_secs_f64()
            );
            lock(&shared.placement).extend(views);
            return Verdict {
                name,
                pass: true,
                detail,
            };
        }
        if started.elapsed() >= SETTLE_LIMIT {
            lock(&shared.placement).extend(views);
            return Verdict {
                name,
                pass: false,
                detail: format!(
                    "still after {SETTLE_LIMIT:?}: {}",
                    outcome.err().unwrap_or_default()
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Once play is over: every shard's lease had at most one holder per epoch, over the whole
/// history the first live node that answers reports (`GET /admin/leases`: the shared lease
/// table's, in a distributed cluster).
async fn lease_history(cluster: &dyn Target) -> Verdict {
    let name = "every shard's lease had one holder per epoch (lease history)".to_owned();
    let nodes = cluster.nodes();
    let admins: Vec<SocketAddr> = nodes.iter().filter_map(|n| n.admin).collect();
    if admins.is_empty() {
        return Verdict {
            name,
            pass: true,
            detail: "not checked: no node has an admin port".into(),
        };
    }
    let mut answers = Vec::new();
    for admin in admins {
        let takes = admin_json(admin, "/admin/leases", Duration::from_secs(10))
            .await
            .and_then(|v| {
                crate::leases::from_admin(&v).ok_or_else(|| format!("{admin}: not a lease history"))
            });
        match takes {
            Ok(takes) => {
                let outcome = crate::leases::one_holder_per_epoch(&takes);
                return Verdict {
                    name,
                    pass: outcome.is_ok(),
                    detail: outcome.unwrap_or_else(|problem| problem),
                };
            }
            Err(why) => answers.push(why),
        }
    }
    Verdict {
        name,
        pass: false,
        detail: format!("no node reported its lease history: {}", answers.join("; ")),
    }
}

/// `GET path` on a node's admin port, as JSON; if not, why, for a person.
async fn admin_json(
    admin: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let (status, body) = levee_relay::admin_client::request(admin, None, "GET", path, timeout)
        .await
        .map_err(|e| format!("{admin}: {e}"))?;
    if status != 200 {
        let said: String = body.chars().take(120).collect();
        return Err(format!("{admin} answered {status}: {}", said.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("{admin}: {e}"))
}

/// The value of a metric for node `name` on its admin page, if it answers within 200 ms.
///
/// Only the node's own series (`node="name"`) counts: nodes sharing a process (the embedded
/// cluster) share its metrics page, which keeps the last value of every node that ever ran
/// there — drained ones, and those of earlier drills in the same test process. Taking the
/// lowest value on the page read such a frozen series: after a scale-in the autoscaler saw
/// the drained node's 0.01 through a whole wave, and a CI run in which earlier drills had
/// left their nodes' series behind never scaled out.
async fn scrape(admin: SocketAddr, name: &str, series: &str) -> Option<f64> {
    let timeout = Duration::from_millis(200);
    let (status, page) =
        levee_relay::admin_client::request(admin, None, "GET", "/metrics", timeout)
            .await
            .ok()?;
    (status == 200).then_some(())?;
    levee_relay::admin_client::series_value(&page, name, series)
}

/// A fresh session per established user after the run: whatever arrives now is either
/// never acknowledged (fine) or a repeat after acknowledgement (a failure). Returns how many
/// users could not open one.
async fn final_sessions(shared: &Arc<Shared>, users: &[Arc<User>]) -> usize {
    const FRESH_SESSION: u64 = u64::MAX;
    let mut checks = tokio::task::JoinSet::new();
    let mut unchecked = 0;
    for user in users {
        let (shared, user) = (shared.clone(), user.clone());
        checks.spawn(async move {
            let Some(connector) = shared.connector() else {
                return false;
            };
            let Ok(client) = connector.connect(user.identity.clone()).await else {
                return false;
            };
            if client.authenticate().await.is_err() {
                return false;
            }
            let Ok(mut inbox) = client.subscribe().await else {
                return false;
            };
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
            while let Ok(Some(d)) = tokio::time::timeout_at(deadline, inbox.next()).await {
                lock(&shared.ledger).delivered(
                    d.client_message_id,
                    user.account,
                    FRESH_SESSION,
                    d.envelope_id,
                );
            }
            client.close().await;
            true
        });
        while checks.len() >= 32 {
            if !matches!(checks.join_next().await, Some(Ok(true)) | None) {
                unchecked += 1;
            }
        }
    }
    while let Some(done) = checks.join_next().await {
        if !matches!(done, Ok(true)) {
            unchecked += 1;
        }
    }
    unchecked
}

fn quantiles(h: &Histogram<u64>) -> [f64; 3] {
    if h.is_empty() {
        return [0.0; 3];
    }
    [0.5, 0.99, 0.999].map(|q| h.value_at_quantile(q) as f64 / 1000.0)
}

/// The run's record: timeline, summary, invariants and thresholds.
fn judge(shared: &Shared, admission: bool, events: Vec<Event>) -> RunRecord {
    let scenario = &shared.scenario;
    // With a wave, "during" is the wave and "before" the baseline ahead of it; without
    // one (a fault drill), "during" is all of play and there is no "before".
    let has_wave = scenario.wave.is_some();
    let during_what = if has_wave { "the wave" } else { "play" };
    let is_before = |p: &str| has_wave && p == Phase::Baseline.name();
    let is_during = |p: &str| {
        if has_wave {
            [Phase::Ramp, Phase::Hold, Phase::Decay]
                .iter()
                .any(|x| x.name() == p)
        } else {
            p == Phase::Baseline.name()
        }
    };
    let (seconds, before, during) = shared.timeline.finish(is_before, is_during);
    // By when each send was offered, not when it ended: a send offered during the wave
    // that fails after it is the wave's failure.
    let outcomes = lock(&shared.send_outcomes);
    let success = |pick: &dyn Fn(&str) -> bool| {
        let (ok, failed) = outcomes
            .iter()
            .filter(|(t, _)| pick(scenario.phase(*t).name()))
            .fold(
                (0u64, 0u64),
                |(o, f), (_, good)| {
                    if *good { (o + 1, f) } else { (o, f + 1) }
                },
            );
        if ok + failed == 0 {
            1.0
        } else {
            ok as f64 / (ok + failed) as f64
        }
    };
    let ledger = lock(&shared.ledger);
    let tally = ledger.tally();
    let admitted = shared.admitted.load(Ordering::Relaxed);
    let requests = shared.requests.load(Ordering::Relaxed);
    let summary = Summary {
        sends_acked: shared.sent.load(Ordering::Relaxed),
        sends_failed: shared.send_failures.load(Ordering::Relaxed),
        delivered: tally.delivered,
        lost: tally.lost,
        duplicates_after_ack: tally.after_ack,
        send_success_before: success(&is_before),
        send_success_during: success(&is_during),
        latency_before_ms: quantiles(&before),
        latency_during_ms: quantiles(&during),
        registrations_offered: shared.offered.load(Ordering::Relaxed),
        registrations_admitted: tally.admitted,
        registrations_waiting: tally.waiting_valid + tally.waiting_invalid,
        registrations_refused_at_end: tally.refused_at_end,
        registrations_hard_errors: tally.hard_errors,
        requests_per_admitted: if admitted == 0 {
            0.0
        } else {
            requests as f64 / admitted as f64
        },
        overtakes: tally.overtakes,
        kept_away: tally.kept_away,
    };
    let mut verdicts = ledger.invariants();
    let t = &scenario.thresholds;
    if let Some(min) = t.send_success_min {
        verdicts.push(Verdict {
            name: format!(
                "existing users' send success during {during_what} ≥ {:.1}%",
                min * 100.0
            ),
            pass: summary.send_success_during >= min,
            detail: format!("{:.3}%", summary.send_success_during * 100.0),
        });
    }
    if let Some(max) = t.p99_ratio_max {
        let (b, d) = (summary.latency_before_ms[1], summary.latency_during_ms[1]);
        let ratio = if b > 0.0 { d / b } else { f64::INFINITY };
        verdicts.push(Verdict {
            name: format!("message p99 during {during_what} ≤ {max}× before"),
            pass: ratio <= max,
            detail: format!("{d:.1} ms vs {b:.1} ms ({ratio:.2}×)"),
        });
    }
    if let Some(max) = t.requests_per_admitted_max {
        verdicts.push(Verdict {
            name: format!("requests per admitted registration ≤ {max}"),
            pass: admitted > 0 && summary.requests_per_admitted <= max,
            detail: format!(
                "{:.2} ({requests} for {admitted})",
                summary.requests_per_admitted
            ),
        });
    }
    if let Some(max) = t.kept_away_max {
        let share = tally.kept_away as f64 / admitted.max(1) as f64;
        verdicts.push(Verdict {
            name: format!(
                "newcomers kept away while a later place got in ≤ {:.0}% of admitted",
                max * 100.0
            ),
            pass: share <= max,
            detail: format!("{} of {admitted} ({:.1}%)", tally.kept_away, share * 100.0),
        });
    }
    if let (Some(min), Some(w)) = (t.goodput_min, &scenario.wave) {
        let in_wave = shared.admitted_in_wave.load(Ordering::Relaxed);
        let rate = in_wave as f64 / (w.end_s() - w.start_s);
        verdicts.push(Verdict {
            name: format!(
                "registration goodput during the wave ≥ {:.0}% of capacity",
                min * 100.0
            ),
            pass: rate >= min * w.capacity_per_s,
            detail: format!("{rate:.1}/s of {}/s", w.capacity_per_s),
        });
    }
    if scenario
        .wave
        .as_ref()
        .is_some_and(|w| w.ignore_retry_after > 0.0)
    {
        let cost = |k: &KindCounts| {
            let (r, a) = (
                k.requests.load(Ordering::Relaxed),
                k.admitted.load(Ordering::Relaxed),
            );
            let wait = k.waited_ms.load(Ordering::Relaxed) as f64 / a.max(1) as f64 / 1000.0;
            (r as f64 / a.max(1) as f64, a, wait)
        };
        let (reference, storm) = (
            cost(&shared.by_kind[REFERENCE]),
            cost(&shared.by_kind[STORMER]),
        );
        verdicts.push(Verdict {
            // Reported, not judged: a poller notices its turn up to one retry_after sooner,
            // which is not a better place; places themselves are judged by "no overtakes".
            name: "retry storm, cost and wait per kind of client (reported, not judged)".into(),
            pass: true,
            detail: format!(
                "ignoring retry_after: {:.2} requests per admitted, {} admitted, {:.1} s mean wait; reference client: {:.2}, {}, {:.1} s",
                storm.0, storm.1, storm.2, reference.0, reference.1, reference.2
            ),
        });
    }
    let login_failures = lock(&shared.login_failures);
    if !login_failures.is_empty() {
        verdicts.push(Verdict {
            name: "established users' failed logins by kind (reported, not judged)".into(),
            pass: true,
            detail: login_failures
                .iter()
                .map(|(kind, n)| format!("{kind}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    drop(login_failures);
    let not_offered = shared.not_offered.load(Ordering::Relaxed);
    if not_offered > 0 {
        verdicts.push(Verdict {
            name: "every arrival offered (the drill machine kept up)".into(),
            pass: true,
            detail: format!(
                "{not_offered} arrivals past max_in_progress were not offered (reported, not judged)"
            ),
        });
    }
    RunRecord {
        label: if admission {
            "admission on".into()
        } else {
            "admission off".into()
        },
        admission,
        seconds,
        events,
        summary,
        verdicts,
        placement: Vec::new(),
        autoscale: Vec::new(),
        drained: Vec::new(),
    }
}
