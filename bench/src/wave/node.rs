//! A simulated node: the real admission decisions ([`NodeAdmission`]) and door
//! ([`HandshakeRate`]) in front of a model of its CPU.
//!
//! The CPU runs `cores` CPU-seconds per second. The established users' messages take
//! `baseline` of it as a steady stream (less while admission sheds some of them); what is
//! left is shared equally among the runnable tasks — processor sharing, the way an async
//! runtime polls its tasks in turn. Each handshake under way (QUIC runs each connection's
//! handshake in that connection's driver task) and each request in progress is a task.
//! Work is measured in CPU time ([`Costs`]). At most `max_handshakes` handshakes are under
//! way; the door drops new connections past that, as the node's does.
//!
//! Why processor sharing and not one queue: on a real node in a 10× wave
//! (`levee-surge --trace`, a quarter core 88–104% busy) the lag probe ran late by only
//! 0.2–3.2 ms on average and requests waited 0.00–0.15 ms for a worker. A model in which
//! every request waits for all the work queued ahead read up to 41 ms, and its line, judged by
//! that lag, stood still where the real one seated newcomers (docs/PERFORMANCE-LOG.md,
//! "The wave simulator"). What admission measures — the probe's lag, a request's wait for a
//! worker — is here a turn of the scheduler for each runnable task ([`Costs::turn_us`]);
//! what the users' messages feel is their own CPU time stretched by the tasks they share
//! the CPU with.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use levee_relay::NodeConfig;
use levee_relay::admission::{AdmissionLevel, HandshakeRate, NodeAdmission, RequestClass};

use super::Costs;

/// What to do when a piece of work is done: the event loop's continuation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Done {
    /// The node's first flight of a handshake (key exchange, certificate signature) is sent.
    FirstFlight { who: u32, attempt: u32 },
    /// The handshake is complete and the session set up.
    Connected { who: u32, attempt: u32 },
    /// A registration request sent at `sent_us` on connection `conn` is answered: admitted
    /// (`back_after_us` is `None`) or told to come back after `back_after_us`.
    Answered {
        who: u32,
        conn: u32,
        sent_us: u64,
        back_after_us: Option<u64>,
    },
}

/// One simulated node.
pub(crate) struct SimNode {
    /// The node's admission decisions; `None` with admission off.
    pub admission: Option<NodeAdmission>,
    door: HandshakeRate,
    /// The door's rate, as the last probe set it (`None`: no limit).
    door_rate: Option<f64>,
    pub alive: bool,
    /// The id its tickets carry.
    pub id: u32,
    cores: f64,
    baseline: f64,
    turn_us: f64,
    message_us: f64,
    /// Processor sharing by virtual time: each runnable task gets one share of the CPU
    /// left over, so virtual time advances at that share's speed, and a task needing `w`
    /// CPU µs started at virtual time `v` is done when virtual time reaches `v + w`.
    virtual_us: f64,
    /// The real time (µs) `virtual_us` was last brought up to.
    virtual_at: f64,
    /// Runnable tasks by virtual finish time (non-negative floats order as their bits).
    tasks: BinaryHeap<Reverse<(u64, u64, Done)>>,
    next_task: u64,
    /// Handshakes let through the door and not yet over, and the most there may be
    /// (`max_handshakes`: past it the door drops every new connection).
    pub handshaking: u32,
    max_handshakes: u32,
    /// When work last arrived.
    last_work: f64,
    /// Messages carried over between probes (fractions of a message).
    message_carry: f64,
    /// The next established user whose message is shown to the controller.
    next_user: u64,
    /// Counts changes that move the next completion, so the event loop can tell a stale
    /// wake-up from a current one.
    pub version: u64,
}

/// How long a node must have had nothing to do before its probes are skipped: two
/// admission windows, so a window the node was busy in is always closed by real probes.
const IDLE_AFTER_US: f64 = 2_000_000.0;

impl SimNode {
    pub fn new(
        config: &NodeConfig,
        secret: &[u8],
        id: u32,
        (cores, baseline): (f64, f64),
        costs: &Costs,
        now: Instant,
    ) -> Self {
        Self {
            admission: config
                .admission
                .then(|| NodeAdmission::new(&config.admission_settings(), secret, id, now)),
            door: HandshakeRate::new(now),
            door_rate: None,
            alive: true,
            id,
            cores,
            baseline,
            turn_us: costs.turn_us,
            message_us: costs.message_us,
            virtual_us: 0.0,
            virtual_at: 0.0,
            tasks: BinaryHeap::new(),
            next_task: 0,
            handshaking: 0,
            max_handshakes: config.max_handshakes,
            last_work: f64::NEG_INFINITY,
            message_carry: 0.0,
            next_user: 0,
            version: 0,
        }
    }

    /// The share of the established users' messages admitted now.
    pub fn messaging_share(&self) -> f64 {
        self.admission
            .as_ref()
            .map_or(1.0, |a| a.level().share(RequestClass::Messaging))
    }

    /// CPU µs per µs the users' stream leaves over.
    fn spare(&self) -> f64 {
        (self.cores * (1.0 - self.baseline * self.messaging_share())).max(1e-3)
    }

    /// Brings the CPU up to `now` (µs); returns the work done meanwhile, with when (µs),
    /// in the order it was done.
    pub fn advance(&mut self, now: f64) -> Vec<(f64, Done)> {
        let mut done = Vec::new();
        while let Some(&Reverse((finish, _, what))) = self.tasks.peek() {
            let finish = f64::from_bits(finish);
            let speed = self.spare() / self.tasks.len() as f64;
            let at = self.virtual_at + (finish - self.virtual_us).max(0.0) / speed;
            if at > now {
                self.virtual_us += (now - self.virtual_at) * speed;
                break;
            }
            self.tasks.pop();
            self.virtual_us = finish;
            self.virtual_at = at;
            done.push((at, what));
        }
        self.virtual_at = now;
        done
    }

    /// When the next piece of work will be done if nothing changes (µs).
    pub fn next_done(&self) -> Option<f64> {
        let &Reverse((finish, _, _)) = self.tasks.peek()?;
        let speed = self.spare() / self.tasks.len() as f64;
        Some(self.virtual_at + (f64::from_bits(finish) - self.virtual_us).max(0.0) / speed)
    }

    fn start(&mut self, cpu_us: f64, then: Done) {
        self.next_task += 1;
        let finish = (self.virtual_us + cpu_us).to_bits();
        self.tasks.push(Reverse((finish, self.next_task, then)));
        self.version += 1;
    }

    /// Starts a handshake's task of `cpu_us` at `now` (call [`advance`](Self::advance) to
    /// `now` first).
    pub fn handshake_work(&mut self, now: f64, cpu_us: f64, then: Done) {
        self.last_work = now;
        self.start(cpu_us, then);
    }

    /// Starts a request's task of `cpu_us` at `now` (call [`advance`](Self::advance) to
    /// `now` first).
    pub fn request_work(&mut self, now: f64, cpu_us: f64, then: Done) {
        self.last_work = now;
        self.start(cpu_us, then);
    }

    /// Everything in progress, dropped: the node died.
    pub fn die(&mut self) -> Vec<Done> {
        self.alive = false;
        self.version += 1;
        self.handshaking = 0;
        self.tasks.drain().map(|Reverse((_, _, d))| d).collect()
    }

    /// How long a task woken now waits for the scheduler to reach it: a turn for each
    /// runnable task (see the module docs).
    pub fn turn_wait(&self) -> Duration {
        Duration::from_micros((self.tasks.len() as f64 * self.turn_us / self.cores) as u64)
    }

    /// How much longer than unloaded an established user's message takes now: its CPU
    /// time, shared with every runnable task.
    pub fn users_delay_us(&self) -> f64 {
        self.tasks.len() as f64 * self.message_us / self.cores
    }

    /// Whether a new connection's datagram passes the door at `now`: within the door's
    /// rate, and while fewer than `max_handshakes` are under way (the node's handshake
    /// budget, which the door enforces too).
    pub fn door_passes(&mut self, now: Instant) -> bool {
        let passes = self.handshaking < self.max_handshakes && self.door.take(self.door_rate, now);
        self.handshaking += u32::from(passes);
        passes
    }

    /// A handshake let through the door is over, however it ended.
    pub fn handshake_over(&mut self) {
        self.handshaking = self.handshaking.saturating_sub(1);
    }

    /// Whether nothing about the node can change until work arrives: no work for a while,
    /// everyone admitted, nobody in line, the door open.
    pub fn idle(&self, now: f64) -> bool {
        now - self.last_work > IDLE_AFTER_US
            && self.tasks.is_empty()
            && self.admission.as_ref().is_none_or(|a| {
                a.level() == AdmissionLevel::ALL
                    && a.line().is_empty()
                    && !a.line().is_paused()
                    && self.door_rate.is_none()
            })
    }

    /// The node's 10 ms probe, as `node::tick_admission` runs it: the scheduler's lag,
    /// then the door's rate; every `tick`th probe, the admission windows' tick.
    pub fn probe(&mut self, at: Instant, tick: bool) {
        let lag = self.turn_wait();
        if let Some(a) = self.admission.as_mut() {
            a.record_scheduling_lag(lag, at);
            self.door_rate = a.handshake_rate(at);
            if tick {
                // The door's pressure only feeds the autoscaling gauge, which the
                // simulator does not report.
                a.tick(1.0, at);
            }
        }
    }

    /// The established users' messages over `secs` at `per_s` (all of them, admitted or
    /// not): returns (offered, admitted) as whole messages, carrying fractions over. Unless
    /// the node is idle, the admitted messages' wait for a worker is recorded with the
    /// controller once per probe (they all waited alike, and a newcomer's request arriving
    /// then would wait as long: the controller averages the same wait however often it
    /// is recorded), and while the level is below everything, at each window tick a few
    /// users' messages are offered to it by account (`OFFERED_PER_TICK`), so that the
    /// level's climb sees messaging slots asked for, as on a node whose users are many; whether those few are shed is not what counts (the
    /// level's messaging share is). An idle node's controller has nothing to learn, and
    /// the cohorts' keyed hash is most of the simulator's time if done for every node.
    pub fn messages(
        &mut self,
        per_s: f64,
        secs: f64,
        (at, unix_time): (Instant, Duration),
        (idle, tick): (bool, bool),
    ) -> (u64, u64) {
        const OFFERED_PER_TICK: u64 = 16;
        self.message_carry += per_s * secs;
        let offered = self.message_carry.floor();
        self.message_carry -= offered;
        let admitted = (offered * self.messaging_share()).round() as u64;
        if let Some(a) = self.admission.as_mut().filter(|_| !idle) {
            if admitted > 0 {
                a.record_wait(
                    Duration::from_micros(
                        (self.tasks.len() as f64 * self.turn_us / self.cores) as u64,
                    ),
                    at,
                );
            }
            // Only a level below everything climbs, and only then do offered slots count.
            let climbing = tick && a.level() < AdmissionLevel::ALL;
            for _ in 0..if climbing { OFFERED_PER_TICK } else { 0 } {
                self.next_user += 1;
                let user = self.next_user.to_be_bytes();
                let _ = a.check(RequestClass::Messaging, &user, unix_time);
            }
        }
        (offered as u64, admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cores: f64) -> SimNode {
        let config = NodeConfig {
            admission: false,
            ..NodeConfig::default()
        };
        let costs = Costs {
            turn_us: 50.0,
            ..Costs::default()
        };
        SimNode::new(&config, b"k", 1, (cores, 0.0), &costs, Instant::now())
    }

    fn answered(who: u32) -> Done {
        Done::Answered {
            who,
            conn: 0,
            sent_us: 0,
            back_after_us: None,
        }
    }

    #[test]
    fn tasks_share_the_cpu_turn_by_turn() {
        let mut n = node(1.0);
        // Two requests of 100 µs each on one core: both done at 200 µs.
        n.request_work(0.0, 100.0, answered(1));
        n.request_work(0.0, 100.0, answered(2));
        assert_eq!(n.turn_wait(), Duration::from_micros(100), "two turns");
        assert_eq!(n.next_done(), Some(200.0));
        let done = n.advance(1000.0);
        assert_eq!(done.iter().map(|d| d.0).collect::<Vec<_>>(), [200.0, 200.0]);
        assert_eq!(n.turn_wait(), Duration::ZERO);
        // A short request beside a long handshake is done at half speed, then the
        // handshake alone at full speed.
        n.handshake_work(1000.0, 300.0, Done::FirstFlight { who: 9, attempt: 1 });
        n.request_work(1000.0, 100.0, answered(3));
        let done = n.advance(5000.0);
        assert_eq!(
            done.iter().map(|d| d.0).collect::<Vec<_>>(),
            [1200.0, 1400.0]
        );
        // Work arriving midway joins at the virtual time of its arrival.
        n.request_work(5000.0, 100.0, answered(4));
        assert!(n.advance(5050.0).is_empty());
        n.request_work(5050.0, 100.0, answered(5));
        let done = n.advance(6000.0);
        assert_eq!(
            done.iter().map(|d| d.0).collect::<Vec<_>>(),
            [5150.0, 5200.0]
        );
    }

    #[test]
    fn the_handshake_budget_closes_the_door_until_one_is_over() {
        let mut n = node(1.0);
        let at = Instant::now();
        let budget = NodeConfig::default().max_handshakes;
        assert!((0..budget).all(|_| n.door_passes(at)));
        assert!(!n.door_passes(at), "the budget is spent");
        n.handshake_over();
        assert!(n.door_passes(at));
    }
}
