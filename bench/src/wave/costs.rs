//! What each request costs a node, in CPU time: the simulator's measured inputs (and one
//! chosen to match a trace, [`Costs::turn_us`]).
//!
//! A new connection's datagram dropped at the door has no cost here: most of a crowd's are
//! dropped in the kernel by the node's sieve, off the node's CPU (`levee-surge --trace`
//! shows the share that reaches the node, 1–5% in a 10× wave), and the rest cost the door a
//! few microseconds each.
//!
//! The defaults were measured on the 2-core development machine against a real node in
//! its own process, node CPU from `/proc` (`levee-surge costs`; the numbers and the run are
//! in docs/PERFORMANCE.md, "The wave simulator"). A node on other hardware scales them:
//! `levee-wave --cost-scale`.

use serde::{Deserialize, Serialize};

/// CPU microseconds of the node per request of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// A new connection through the door: QUIC and TLS handshake, the session set up.
    pub handshake_us: f64,
    /// A registration served: proof checked, account created, session authenticated.
    pub register_us: f64,
    /// A registration told to wait: ticket opened, place decided, ticket sealed and sent.
    pub queued_us: f64,
    /// One envelope of an established user: sent, stored, delivered, acknowledged.
    pub message_us: f64,
    /// One turn of the node's scheduler: the CPU a task runs, on average, before the
    /// runtime moves on to the next. Not measured apart: chosen so that the simulated
    /// node's lag probe reads what the real one read in the same wave (see
    /// `levee_bench::wave::node` and docs/PERFORMANCE.md).
    #[serde(default = "default_turn_us")]
    pub turn_us: f64,
}

fn default_turn_us() -> f64 {
    Costs::default().turn_us
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            handshake_us: 536.0,
            register_us: 122.0,
            queued_us: 28.0,
            message_us: 30.0,
            turn_us: 50.0,
        }
    }
}

impl Costs {
    /// Every cost times `factor` (a node `factor` times slower per core).
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            handshake_us: self.handshake_us * factor,
            register_us: self.register_us * factor,
            queued_us: self.queued_us * factor,
            message_us: self.message_us * factor,
            turn_us: self.turn_us * factor,
        }
    }
}
