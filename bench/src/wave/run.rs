//! The event loop: newcomers, nodes and the simulated clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use levee_client::retry::{ConnectBackoff, jittered};
use levee_client::{ClientConfig, Trust};
use levee_relay::admission::{
    ClusterLine, NodeAdmission, Place, RegistrationDecision, keeps_holding, key_hash,
};

use super::node::{Done, SimNode};
use super::report::{OrderCounts, Outcome, SeriesPoint, Tally};
use super::rng::SimRng;
use super::{Profile, Scenario, Wave};

/// When QUIC sends a dropped Initial again, after the first: 1 s, then 2 s after that.
const RESENDS_US: [u64; 2] = [1_000_000, 3_000_000];
/// The node's lag probe interval (`node::tick_admission`), and probes per window tick.
const PROBE_US: u64 = 10_000;
const PROBES_PER_TICK: u64 = 10;
/// The wall clock at the simulation's start (tickets and cohorts read it).
const UNIX_START_MS: u64 = 1_800_000_000_000;
/// The cluster key of the simulated nodes.
const SECRET: &[u8] = b"levee-wave simulated cluster key";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The next newcomer arrives.
    Arrival,
    /// A newcomer starts a connection attempt.
    Attempt { who: u32 },
    /// The `k`th datagram of connection attempt `attempt` reaches the newcomer's node.
    Initial { who: u32, attempt: u32, k: u8 },
    /// The client's side of attempt `attempt`'s handshake reaches the node.
    Handshake { who: u32, attempt: u32 },
    /// A node's next piece of work is due to be done (`version`: as of which change).
    NodeWork { node: u32, version: u64 },
    /// Connection attempt `attempt` has had no answer for the connect timeout.
    AttemptTimeout { who: u32, attempt: u32 },
    /// A registration request on connection `conn` reaches the node.
    Request { who: u32, conn: u32 },
    /// The node decides again a registration it held (sent at `sent_us`, held `held_us`
    /// so far), as `registration_hold_ms` has it.
    Held {
        who: u32,
        conn: u32,
        sent_us: u64,
        held_us: u64,
    },
    /// The answer "registered" reaches the newcomer on connection `conn`.
    Admitted { who: u32, conn: u32 },
    /// A node dies.
    NodeDies { node: u32 },
    /// Every node's 10 ms probe.
    Probe,
}

/// One newcomer's state.
struct Newcomer {
    arrived_us: u64,
    attempt: u32,
    attempt_started_us: u64,
    /// The connection in use, counted so that events of an earlier one are ignored.
    conn: u32,
    connected: bool,
    node: u32,
    backoff: ConnectBackoff,
    ticket: Option<Box<[u8]>>,
    /// Its place in the cluster's line (what its ticket holds: when it was first told to
    /// wait, and its key); for one admitted at once, when it was.
    place: Option<Place>,
    /// When it last sent a request that was told to wait, µs.
    last_told_to_wait_us: Option<u64>,
    /// When the last "wait" it was told said its place would be reached, µs.
    promised_us: Option<u64>,
    admitted_us: Option<u64>,
    requests: u32,
    failed: bool,
}

impl Newcomer {
    fn done(&self) -> bool {
        self.admitted_us.is_some() || self.failed
    }
}

struct Sim<'a> {
    scenario: &'a Scenario,
    client: ClientConfig,
    start: Instant,
    now_us: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    next_seq: u64,
    rng: SimRng,
    nodes: Vec<SimNode>,
    alive: Vec<u32>,
    people: Vec<Newcomer>,
    end_us: u64,
    wave_end_us: u64,
    /// The nodes' `registration_hold_ms`.
    hold: Duration,
    /// How often nodes exchange with the line board: their heartbeat.
    board_every_us: u64,
    /// Newcomers connected and not done: waiting in a line, or being registered.
    in_line: u64,
    /// When the time series' next point is due.
    next_series_us: u64,
    profile: Profile,
    tally: Tally,
}

/// Runs `scenario` to its end and reports what happened.
pub fn simulate(scenario: &Scenario) -> Outcome {
    let start = Instant::now();
    let nodes = (0..scenario.nodes)
        .map(|i| {
            let mut node = SimNode::new(
                &scenario.node,
                SECRET,
                i as u32 + 1,
                (scenario.node_cores, scenario.baseline),
                &scenario.costs,
                start,
            );
            if let Some(a) = node.admission.as_mut().filter(|_| scenario.one_line) {
                a.coordinate(ClusterLine::new(
                    &node.id.to_string(),
                    scenario.node.registration_line_sync_ms,
                    scenario.node.failure_timeout_ms,
                ));
            }
            node
        })
        .collect();
    let wave_end_us = (scenario.wave.secs() * 1e6) as u64;
    let mut sim = Sim {
        scenario,
        client: ClientConfig::new(([127, 0, 0, 1], 1).into(), Trust::CaBundle(Vec::new())),
        start,
        now_us: 0,
        events: BinaryHeap::new(),
        next_seq: 0,
        rng: SimRng::new(scenario.seed),
        nodes,
        alive: (0..scenario.nodes as u32).collect(),
        people: Vec::new(),
        end_us: wave_end_us + (scenario.drain_s * 1e6) as u64,
        wave_end_us,
        hold: Duration::from_millis(scenario.node.registration_hold_ms),
        board_every_us: scenario.node.heartbeat_ms.max(1) * 1000,
        profile: Profile::new(&scenario.wave),
        in_line: 0,
        next_series_us: 0,
        tally: Tally::new(scenario),
    };
    sim.schedule(0, Event::Probe);
    sim.next_arrival();
    for f in &scenario.failures {
        if f.node < scenario.nodes {
            sim.schedule(
                (f.at_s * 1e6) as u64,
                Event::NodeDies {
                    node: f.node as u32,
                },
            );
        }
    }
    while let Some(Reverse((at, _, event))) = sim.events.pop() {
        if at > sim.end_us {
            break;
        }
        sim.now_us = at;
        sim.handle(event);
    }
    sim.finish()
}

impl Sim<'_> {
    fn schedule(&mut self, at_us: u64, event: Event) {
        self.next_seq += 1;
        self.events.push(Reverse((at_us, self.next_seq, event)));
    }

    fn instant(&self, us: u64) -> Instant {
        self.start + Duration::from_micros(us)
    }

    fn unix_ms(&self) -> u64 {
        UNIX_START_MS + self.now_us / 1000
    }

    fn connect_timeout_us(&self) -> u64 {
        self.client.connect_timeout.as_micros() as u64
    }

    /// Schedules the next arrival: evenly spaced for a steady wave, else a Poisson process
    /// of varying rate by thinning (candidates at the highest rate, each kept with the
    /// rate's share of it then).
    fn next_arrival(&mut self) {
        let mut t = self.now_us as f64 / 1e6;
        let next = match self.scenario.wave {
            Wave::Steady { per_s, .. } if per_s > 0.0 => Some(self.people.len() as f64 / per_s),
            Wave::Steady { .. } => None,
            Wave::Surges { .. } => loop {
                let top = self.profile.top;
                t += self.rng.exponential(top);
                if t >= self.scenario.wave.secs() {
                    break None;
                }
                if self.rng.unit() * top < self.profile.rate(t) {
                    break Some(t);
                }
            },
        };
        if let Some(t) = next.filter(|&t| t < self.scenario.wave.secs()) {
            self.schedule((t * 1e6) as u64, Event::Arrival);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrival => {
                let who = self.people.len() as u32;
                self.people.push(Newcomer {
                    arrived_us: self.now_us,
                    attempt: 0,
                    attempt_started_us: 0,
                    conn: 0,
                    connected: false,
                    node: 0,
                    backoff: ConnectBackoff::default(),
                    ticket: None,
                    place: None,
                    last_told_to_wait_us: None,
                    promised_us: None,
                    admitted_us: None,
                    requests: 0,
                    failed: false,
                });
                self.tally.arrived();
                self.attempt(who);
                self.next_arrival();
            }
            Event::Attempt { who } => self.attempt(who),
            Event::Initial { who, attempt, k } => self.initial(who, attempt, k),
            Event::Handshake { who, attempt } => self.handshake(who, attempt),
            Event::NodeWork { node, version } => {
                if self.nodes[node as usize].version == version {
                    self.settle(node);
                }
            }
            Event::AttemptTimeout { who, attempt } => {
                let p = &mut self.people[who as usize];
                if p.attempt == attempt && !p.connected && !p.done() {
                    // A connection attempt turned away counts as a request, as
                    // `levee-surge` counts them; one that connects does not (the
                    // registration sent on it does).
                    self.tally.turned_away += 1;
                    self.tally.requests += 1;
                    p.requests += 1;
                    let pause = p.backoff.pause(self.rng.byte());
                    self.schedule(
                        self.now_us + pause.as_micros() as u64,
                        Event::Attempt { who },
                    );
                }
            }
            Event::Request { who, conn } => {
                if self.live_connection(who, conn) {
                    let p = &mut self.people[who as usize];
                    p.requests += 1;
                    self.tally.requests += 1;
                    self.decide(who, conn, self.now_us, 0);
                }
            }
            Event::Held {
                who,
                conn,
                sent_us,
                held_us,
            } => {
                if self.live_connection(who, conn) {
                    self.decide(who, conn, sent_us, held_us);
                }
            }
            Event::Admitted { who, conn } => {
                if !self.live_connection(who, conn) {
                    return;
                }
                let now = self.now_us;
                let p = &mut self.people[who as usize];
                p.admitted_us = Some(now);
                p.ticket = None;
                self.in_line -= 1;
                self.tally.admitted(now, now - p.arrived_us, p.requests);
            }
            Event::NodeDies { node } => {
                self.alive.retain(|&n| n != node);
                self.tally.node_deaths += 1;
                for lost in self.nodes[node as usize].die() {
                    // A request in progress goes unanswered: its client takes the silent
                    // node for dead and connects elsewhere. Handshakes time out by
                    // themselves (their timeout is already due).
                    if let Done::Answered { who, conn, .. } = lost {
                        self.lose_connection(who, conn);
                    }
                }
            }
            Event::Probe => self.probe(),
        }
    }

    /// Whether `who` is still on connection `conn` to a live node. A newcomer whose node
    /// died learns it now, when its request goes unanswered: after twice the silence
    /// timeout it connects elsewhere.
    fn live_connection(&mut self, who: u32, conn: u32) -> bool {
        let p = &self.people[who as usize];
        if p.conn != conn || !p.connected || p.done() {
            return false;
        }
        if self.nodes[p.node as usize].alive {
            return true;
        }
        self.lose_connection(who, conn);
        false
    }

    /// `who`'s connection `conn` died with its node: the client notices after twice its
    /// silence timeout and connects again, keeping its ticket.
    fn lose_connection(&mut self, who: u32, conn: u32) {
        let p = &mut self.people[who as usize];
        if p.conn != conn || !p.connected || p.done() {
            return;
        }
        p.connected = false;
        // The attempt that made this connection is over: its connect timeout, still
        // pending if the connection was young, must not start a second attempt beside the
        // one the client starts when it notices (it did, and counted one person twice in
        // line, when a node died within 5 s of newcomers' connecting).
        p.attempt += 1;
        self.in_line -= 1;
        self.tally.connections_lost += 1;
        let noticed = self.now_us + 2 * self.client.silence_timeout.as_micros() as u64;
        self.schedule(noticed, Event::Attempt { who });
    }

    /// Brings node `node`'s CPU up to now, carries out what it finished, and schedules its
    /// next completion.
    fn settle(&mut self, node: u32) {
        let now = self.now_us;
        let n = &mut self.nodes[node as usize];
        if !n.alive {
            return;
        }
        for (at, done) in n.advance(now as f64) {
            self.finished(node, at as u64, done);
        }
        self.wake_node(node);
    }

    /// Schedules node `node`'s next completion as of its current state.
    fn wake_node(&mut self, node: u32) {
        let n = &self.nodes[node as usize];
        if let Some(at) = n.next_done() {
            let version = n.version;
            self.schedule(
                (at.ceil() as u64).max(self.now_us),
                Event::NodeWork { node, version },
            );
        }
    }

    /// Node `node` finished a piece of work at `at` (µs, at most now).
    fn finished(&mut self, node: u32, at: u64, done: Done) {
        let half_trip = self.scenario.round_trip.as_micros() as u64 / 2;
        match done {
            Done::FirstFlight { who, attempt } => {
                let p = &self.people[who as usize];
                let gives_up = p.attempt_started_us + self.connect_timeout_us();
                let answer = at + 2 * half_trip;
                if p.attempt == attempt && !p.connected && !p.done() && answer < gives_up {
                    self.schedule(answer, Event::Handshake { who, attempt });
                } else {
                    self.nodes[node as usize].handshake_over();
                }
            }
            Done::Connected { who, attempt } => {
                self.nodes[node as usize].handshake_over();
                let gives_up =
                    self.people[who as usize].attempt_started_us + self.connect_timeout_us();
                let p = &mut self.people[who as usize];
                // Past the connect timeout the client has given up (its timeout event
                // turns it away); the node's work was spent all the same.
                if p.attempt != attempt || p.connected || p.done() || at > gives_up {
                    return;
                }
                p.connected = true;
                p.conn += 1;
                p.node = node;
                self.in_line += 1;
                let conn = p.conn;
                self.schedule(at + half_trip, Event::Request { who, conn });
            }
            Done::Answered {
                who,
                conn,
                sent_us,
                back_after_us,
            } => {
                let timeout = self.client.request_timeout.as_micros() as u64;
                let p = &mut self.people[who as usize];
                if p.conn != conn || !p.connected || p.done() {
                    return;
                }
                if at + half_trip - sent_us > timeout {
                    self.tally.hard_failures += 1;
                    p.failed = true;
                    self.in_line -= 1;
                    return;
                }
                match back_after_us {
                    None => self.schedule(at + half_trip, Event::Admitted { who, conn }),
                    Some(pause) => {
                        self.schedule(at + 2 * half_trip + pause, Event::Request { who, conn })
                    }
                }
            }
        }
    }

    fn attempt(&mut self, who: u32) {
        let now = self.now_us;
        let node = if self.alive.is_empty() {
            None
        } else {
            Some(self.alive[self.rng.below(self.alive.len())])
        };
        let p = &mut self.people[who as usize];
        if p.done() {
            return;
        }
        p.attempt += 1;
        p.attempt_started_us = now;
        p.connected = false;
        let attempt = p.attempt;
        if let Some(node) = node {
            p.node = node;
            self.schedule(now, Event::Initial { who, attempt, k: 0 });
        }
        // Patience ends at the connect timeout, whatever happens before.
        let gives_up = now + self.connect_timeout_us();
        self.schedule(gives_up, Event::AttemptTimeout { who, attempt });
    }

    fn initial(&mut self, who: u32, attempt: u32, k: u8) {
        let now = self.now_us;
        let at = self.instant(now);
        let (node, started) = {
            let p = &self.people[who as usize];
            if p.attempt != attempt || p.connected || p.done() {
                return;
            }
            (p.node, p.attempt_started_us)
        };
        let gives_up = started + self.connect_timeout_us();
        if !self.nodes[node as usize].alive {
            return;
        }
        if self.nodes[node as usize].door_passes(at) {
            self.tally.handshakes += 1;
            // The node's half of the handshake's first flight (key exchange, certificate
            // signature); the rest when the client's answer comes back a round trip later.
            self.settle(node);
            let half = self.scenario.costs.handshake_us / 2.0;
            let n = &mut self.nodes[node as usize];
            n.handshake_work(now as f64, half, Done::FirstFlight { who, attempt });
            self.wake_node(node);
        } else {
            self.tally.door_drops += 1;
            if let Some(next) = RESENDS_US.get(usize::from(k)).map(|d| started + d)
                && next < gives_up
            {
                self.schedule(
                    next,
                    Event::Initial {
                        who,
                        attempt,
                        k: k + 1,
                    },
                );
            }
        }
    }

    /// The client's answer to the first flight reaches the node: the rest of the
    /// handshake, then the session; the client registers as soon as it is connected.
    fn handshake(&mut self, who: u32, attempt: u32) {
        let now = self.now_us;
        let p = &self.people[who as usize];
        let node = p.node;
        if !self.nodes[node as usize].alive {
            return;
        }
        if p.attempt != attempt || p.connected || p.done() {
            self.nodes[node as usize].handshake_over();
            return;
        }
        self.settle(node);
        let half = self.scenario.costs.handshake_us / 2.0;
        self.nodes[node as usize].handshake_work(
            now as f64,
            half,
            Done::Connected { who, attempt },
        );
        self.wake_node(node);
    }

    /// Decides a registration of `who` on connection `conn`, sent at `sent_us` and held by
    /// the node for `held_us` so far, as the node does (`Connection::wait_in_line`): a place
    /// due within the node's hold is waited for on the node and decided again then.
    fn decide(&mut self, who: u32, conn: u32, sent_us: u64, held_us: u64) {
        let now = self.now_us;
        let at = self.instant(now);
        let unix_ms = self.unix_ms();
        let jitter = 1.0 + 0.2 * self.rng.unit();
        let node = self.people[who as usize].node;
        self.settle(node);
        let p = &mut self.people[who as usize];
        let n = &mut self.nodes[node as usize];
        let key = u64::from(who).to_be_bytes();
        let wait = n.turn_wait();
        let decision = match n.admission.as_mut() {
            Some(a) => {
                if held_us == 0 {
                    a.record_wait(wait, at);
                }
                a.register(&key, p.ticket.as_deref(), at, unix_ms, jitter)
            }
            None => RegistrationDecision::Enter,
        };
        let costs = self.scenario.costs;
        let answered = |back_after_us| Done::Answered {
            who,
            conn,
            sent_us,
            back_after_us,
        };
        // Its place: the one the node issued it (kept by every refresh of its ticket), or,
        // with admission off, when it was admitted.
        if p.place.is_none() && !matches!(decision, RegistrationDecision::Rejected(_)) {
            p.place = n
                .admission
                .as_ref()
                .and_then(NodeAdmission::last_issued)
                .or_else(|| Some(Place::new(unix_ms, &key_hash(&key))));
        }
        match decision {
            RegistrationDecision::Enter => {
                n.request_work(now as f64, costs.register_us, answered(None));
            }
            RegistrationDecision::Queued {
                ticket,
                retry_after_ms,
                estimated_wait_ms,
                ..
            } => {
                p.ticket = Some(ticket.into_boxed_slice());
                let retry = Duration::from_millis(retry_after_ms);
                let held = Duration::from_micros(held_us);
                if keeps_holding(held, retry, self.hold) {
                    let back = now + retry.as_micros() as u64;
                    let held_us = (held + retry).as_micros() as u64;
                    self.schedule(
                        back,
                        Event::Held {
                            who,
                            conn,
                            sent_us,
                            held_us,
                        },
                    );
                    return;
                }
                p.last_told_to_wait_us = Some(sent_us);
                p.promised_us = Some(now + estimated_wait_ms * 1_000);
                self.tally.queued += 1;
                let pause = jittered(retry, self.rng.byte());
                n.request_work(
                    now as f64,
                    costs.queued_us,
                    answered(Some(pause.as_micros() as u64)),
                );
            }
            RegistrationDecision::Rejected(_) => {
                // A ticket the node does not take (expired): the client starts over.
                self.tally.tickets_rejected += 1;
                p.ticket = None;
                // It starts over: its next ticket is a new place.
                p.place = None;
                n.request_work(now as f64, costs.queued_us, answered(Some(0)));
            }
        }
        self.wake_node(node);
    }

    fn probe(&mut self) {
        let now = self.now_us;
        let at = self.instant(now);
        let unix = Duration::from_millis(self.unix_ms());
        let tick = (now / PROBE_US).is_multiple_of(PROBES_PER_TICK);
        let per_s = self.scenario.user_messages_per_node_s();
        let secs = PROBE_US as f64 / 1e6;
        for node in 0..self.nodes.len() as u32 {
            let n = &mut self.nodes[node as usize];
            if !n.alive {
                continue;
            }
            let idle = n.idle(now as f64);
            if !idle {
                n.probe(at, tick);
            }
            let (offered, admitted) = n.messages(per_s, secs, (at, unix), (idle, tick));
            let delay = n.users_delay_us();
            self.tally.messages(offered, admitted, delay);
            if !idle {
                // The level may have moved, and with it the CPU the users leave over.
                self.settle(node);
            }
        }
        if self.scenario.one_line && now.is_multiple_of(self.board_every_us) {
            self.exchange_line_board();
        }
        if now >= self.next_series_us {
            self.series_point();
            self.next_series_us += (self.scenario.series_every_s * 1e6).max(PROBE_US as f64) as u64;
        }
        if now + PROBE_US <= self.end_us {
            self.schedule(now + PROBE_US, Event::Probe);
        }
    }

    /// What every live node does each heartbeat (`node::line_board`): writes its line's
    /// samples to the board and reads everyone's. The simulated board is read the moment
    /// it is written; a dead node's last samples stay in the others' memory, as they do.
    fn exchange_line_board(&mut self) {
        let (at, unix_ms) = (self.instant(self.now_us), self.unix_ms());
        let mut board = Vec::new();
        for n in self.nodes.iter_mut().filter(|n| n.alive) {
            if let Some(a) = n.admission.as_mut() {
                a.line_sample(at, unix_ms);
                board.push((n.id.to_string(), a.line_report()));
            }
        }
        for n in self.nodes.iter_mut().filter(|n| n.alive) {
            if let Some(a) = n.admission.as_mut() {
                a.heard(
                    board.iter().map(|(id, r)| (id.as_str(), r.as_slice())),
                    unix_ms,
                );
            }
        }
    }

    fn series_point(&mut self) {
        let waiting =
            self.people.len() as u64 - self.tally.admitted_count() - self.tally.hard_failures;
        let (in_line, at_door) = (self.in_line, waiting - self.in_line);
        let level = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.messaging_share())
            .fold(f64::INFINITY, f64::min);
        self.tally.series.push(SeriesPoint {
            at_s: self.now_us as f64 / 1e6,
            arrived: self.people.len() as u64,
            admitted: self.tally.admitted_count(),
            in_line,
            at_door,
            lowest_messaging_share: if level.is_finite() { level } else { 0.0 },
        });
    }

    fn finish(mut self) -> Outcome {
        self.now_us = self.end_us;
        self.series_point();
        let people = std::mem::take(&mut self.people);
        let mut waiting_with_ticket = 0;
        let mut at_door = 0;
        let mut ledger = Vec::new();
        let secs = |us: u64| us as f64 / 1e6;
        for p in &people {
            if !p.done() {
                if p.ticket.is_some() {
                    waiting_with_ticket += 1;
                } else {
                    at_door += 1;
                }
            }
            let Some(place) = p.place else { continue };
            ledger.push(levee_chaos::ledger::Newcomer {
                place: Some(place),
                last_told_to_wait: p.last_told_to_wait_us.map(secs),
                admitted_at: p.admitted_us.map(secs),
                promised_at: p.promised_us.map(secs),
                ending: levee_chaos::ledger::Ending::Admitted,
            });
        }
        drop(people);
        use levee_chaos::ledger::{KEPT_AWAY_SLACK_S, ORDER_RESOLUTION_MS, kept_away, overtakes};
        let order = OrderCounts {
            overtakes: overtakes(&ledger, ORDER_RESOLUTION_MS),
            strict_overtakes: overtakes(&ledger, 0),
            kept_away: kept_away(&ledger, ORDER_RESOLUTION_MS, KEPT_AWAY_SLACK_S),
        };
        drop(ledger);
        self.tally.finish(
            self.scenario,
            self.wave_end_us,
            waiting_with_ticket,
            at_door,
            order,
        )
    }
}

/// A histogram of seconds-to-admission or milliseconds of waiting.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is valid")
}
