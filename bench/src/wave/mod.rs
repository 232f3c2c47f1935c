//! `levee-wave`: a signup wave simulated at a scale no test machine can offer, driving
//! the real admission code.
//!
//! A deterministic discrete-event simulation with a simulated clock. Each simulated node
//! runs the node's own admission decisions ([`levee_relay::admission::NodeAdmission`]:
//! controller, waiting line, signed tickets, cohorts) and its door's token bucket
//! ([`levee_relay::admission::HandshakeRate`]), fed as the node feeds them — a 10 ms probe
//! of the scheduler's lag that also sets the door's rate, a window tick every 100 ms, each
//! request's queueing delay — in front of a model of its CPU (`wave/node.rs`) whose costs per
//! request were measured on a real node ([`Costs`]). Each newcomer follows the real
//! client's rules ([`levee_client::retry`], the client's default timeouts): a connection
//! attempt whose datagrams the door drops is resent by QUIC after 1 and 3 s and abandoned
//! at the connect timeout, then tried again after the client's back-off, at a node picked
//! at random (as DNS or a load balancer would); once connected it registers, and when told
//! to wait it comes back as told with its ticket, on the same connection. When a node
//! dies, the newcomers connected to it notice at their next request (the client takes a
//! silent node for dead after twice its silence timeout) and connect elsewhere, presenting
//! their ticket there.
//!
//! What is not modelled, and why it is left out: the storage behind the node (its
//! writes' latency is one of admission's signals; here the backends are healthy, which the
//! distributed tests cover instead), network delay beyond a fixed round trip, logins of
//! established users (they carry door passes and are not what a wave is made of), and the
//! cost of the clients themselves (people bring their own phones).

mod costs;
mod node;
mod report;
mod rng;
mod run;

pub use costs::Costs;
pub use report::{Outcome, SeriesPoint};
pub use rng::SimRng;
pub use run::simulate;

use std::f64::consts::PI;
use std::time::Duration;

use levee_relay::NodeConfig;

/// How newcomers arrive.
#[derive(Clone, Debug)]
pub enum Wave {
    /// Evenly spaced at `per_s` for `secs` (the way `levee-surge` offers a wave).
    Steady {
        /// Newcomers per second.
        per_s: f64,
        /// For how long.
        secs: f64,
    },
    /// `newcomers` over `hours`, at random (Poisson), one surge a day in the evening, the
    /// first day's peak at about `peak` times the mean rate and each later day's smaller
    /// (0.6, then 0.4 of the first): the shape of a messenger's signups after another one's
    /// users leave in a weekend. See [`Profile`] for the exact shape.
    Surges {
        /// Newcomers in all.
        newcomers: f64,
        /// Hours the wave lasts.
        hours: f64,
        /// The highest rate as a multiple of the mean.
        peak: f64,
    },
}

impl Wave {
    /// How long newcomers arrive for, in seconds.
    pub fn secs(&self) -> f64 {
        match self {
            Self::Steady { secs, .. } => *secs,
            Self::Surges { hours, .. } => hours * 3600.0,
        }
    }
}

/// The arrival rate of a [`Wave`] over time, worked out once.
#[derive(Clone, Debug)]
pub struct Profile {
    /// (centre s, height /s) of each surge, and their common width (s).
    surges: Vec<(f64, f64)>,
    sigma: f64,
    steady: f64,
    /// The highest rate (a hair over it, as thinning needs).
    pub top: f64,
}

impl Profile {
    /// Surges (one a day, at 20:00 of a whole day, at the same share of a shorter last
    /// day), each a bell whose width makes the first one's height `peak` times the mean
    /// rate, then all scaled so that the newcomers arriving within the wave are exactly
    /// `newcomers` (a bell cut off by the wave's end would otherwise lose some).
    pub fn new(wave: &Wave) -> Self {
        match *wave {
            Wave::Steady { per_s, .. } => Self {
                surges: Vec::new(),
                sigma: 1.0,
                steady: per_s,
                top: per_s,
            },
            Wave::Surges {
                newcomers,
                hours,
                peak,
            } => {
                let secs = hours * 3600.0;
                let mean = newcomers / secs;
                let days = (hours / 24.0).ceil().max(1.0) as usize;
                let heights: Vec<f64> = (0..days).map(|d| [1.0, 0.6, 0.4][d.min(2)]).collect();
                let sigma =
                    newcomers / (peak * mean * heights.iter().sum::<f64>() * (2.0 * PI).sqrt());
                let surges = heights
                    .iter()
                    .enumerate()
                    .map(|(d, h)| {
                        let day_start = d as f64 * 86_400.0;
                        let day_len = (secs - day_start).min(86_400.0);
                        (day_start + day_len * 20.0 / 24.0, h * peak * mean)
                    })
                    .collect();
                let mut profile = Self {
                    surges,
                    sigma,
                    steady: 0.0,
                    top: 0.0,
                };
                // Integrate over the wave (a thousand steps per bell width is plenty).
                let step = sigma / 1000.0;
                let steps = (secs / step).ceil() as usize;
                let (mut total, mut top) = (0.0f64, 0.0f64);
                for i in 0..steps {
                    let r = profile.rate((i as f64 + 0.5) * step);
                    total += r * step;
                    top = top.max(r);
                }
                let scale = newcomers / total.max(f64::MIN_POSITIVE);
                for s in &mut profile.surges {
                    s.1 *= scale;
                }
                profile.top = top * scale * 1.001;
                profile
            }
        }
    }

    /// Newcomers per second `t` seconds in.
    pub fn rate(&self, t: f64) -> f64 {
        self.steady
            + self
                .surges
                .iter()
                .map(|&(centre, height)| {
                    let z = (t - centre) / self.sigma;
                    height * (-0.5 * z * z).exp()
                })
                .sum::<f64>()
    }
}

/// A node failure: `node` (an index) dies `at_s` seconds into the run and does not come
/// back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Failure {
    /// Seconds into the run.
    pub at_s: f64,
    /// Which node.
    pub node: usize,
}

/// Everything a simulation run needs.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Nodes at the start.
    pub nodes: usize,
    /// CPU cores of each node.
    pub node_cores: f64,
    /// Share of each node's cores its established users' messages take (all admitted).
    pub baseline: f64,
    /// The established users' message p99 with no newcomers, in ms; their p99 in the run
    /// is this plus the p99 of the queueing delay newcomers add.
    pub unloaded_p99_ms: f64,
    /// How newcomers arrive.
    pub wave: Wave,
    /// Seconds after the wave in which newcomers still waiting may finish.
    pub drain_s: f64,
    /// The nodes' configuration (admission on or off, and its tuning), as a real node's.
    pub node: NodeConfig,
    /// What requests cost the nodes.
    pub costs: Costs,
    /// Node deaths.
    pub failures: Vec<Failure>,
    /// Whether the nodes keep one line for the cluster through the line board, as real
    /// nodes do (`false`: each node's line on its own, as before the cluster line).
    pub one_line: bool,
    /// Client-to-node round trip.
    pub round_trip: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Length of a point of the reported time series, in seconds.
    pub series_every_s: f64,
}

impl Scenario {
    /// The established users' messages per second on each node.
    pub fn user_messages_per_node_s(&self) -> f64 {
        self.baseline * self.node_cores * 1e6 / self.costs.message_us
    }

    /// Registrations per second one node absorbs at most beside its users, every
    /// newcomer connecting once and served at once: the cores the users leave over
    /// divided by a handshake and a registration.
    pub fn node_registration_capacity(&self) -> f64 {
        self.node_cores * (1.0 - self.baseline) * 1e6
            / (self.costs.handshake_us + self.costs.register_us)
    }
}
