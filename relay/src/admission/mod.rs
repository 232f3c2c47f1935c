//! Admission control: which requests a node serves when it cannot serve them all.
//!
//! Pure decisions with time passed in, no sockets (see `docs/ARCHITECTURE.md`):
//!
//! - [`RequestClass`]: acknowledgements and control (never shed), messaging, login,
//!   registration — shedding starts from the last.
//! - [`Cohort`]: a stable bucket of an account key under a rotating salt, so within a
//!   rotation a given user is consistently served or consistently shed.
//! - [`AdmissionController`] and its [`AdmissionLevel`]: how much of the (class, cohort)
//!   space is admitted, adapted once per window from the time admitted requests waited in
//!   queue before a worker started them and from backend health — down fast under
//!   overload, up slowly, holding steady in between.
//! - [`BackendHealth`]: whether the storage behind the node is overloaded — slow writes, a
//!   write stuck now, delivery lag — from evidence that expires.
//! - [`Headroom`]: the line's stricter judge — the share of scheduler probes that ran late,
//!   so newcomers enter only as fast as established users do not feel them.
//! - [`WaitingLine`]: registrations that cannot be served now take places; the head
//!   advances at the rate the node has shown it absorbs, and [`LineOrder`] releases places
//!   earliest first by [`Place`] — first issue time, the same on every node.
//! - [`ClusterLine`]: one line for the whole cluster — a place enters only once every
//!   node's line has passed it, judged the same way by every node from the samples they
//!   write to a shared board ([`LineSample`]).
//! - [`Load`]: the autoscaling signal, `levee_load_ratio` — the largest of queueing delay,
//!   shedding and the waiting line's wait, each against its limit.
//! - [`Ticket`] / [`TicketKey`]: a signed place in the registration line (HMAC-SHA256 under
//!   the cluster key) that any node can verify without shared state.
//! - [`PassKey`]: door passes, which let a known account's new connection past the node's
//!   door (which limits new connections before any handshake) ahead of a signup wave.
//! - [`work_bits`] / [`verify_work`] / [`solve_work`]: the optional proof of work a new
//!   place in line may have to carry, harder as the line grows.
//!
//! - [`HandshakeRate`]: the door's token bucket for new connections.
//! - [`NodeAdmission`]: all of the above as one node uses them, time and randomness passed
//!   in — what the node runs, and what the wave simulator (`levee-wave`) runs for each of
//!   its simulated nodes.
//!
//! The node wires a [`NodeAdmission`] to its clock, randomness and metrics in
//! `crate::node::admission`.

mod backend;
mod cluster_line;
mod cohort;
mod controller;
mod handshake_rate;
mod headroom;
mod line;
mod load;
mod node_admission;
mod order;
mod pass;
mod place;
mod ticket;

pub use backend::BackendHealth;
pub use cluster_line::{
    ClusterFront, ClusterLine, ClusterLineGauges, LineSample, MalformedReport, decode_report,
    encode_report,
};
pub use cohort::{COHORTS, Cohort, CohortSalt};
pub use controller::{
    AdmissionController, AdmissionLevel, ControllerConfig, RequestClass, Verdict,
};
pub use handshake_rate::HandshakeRate;
pub use headroom::Headroom;
pub use levee_protocol::work::{MAX_WORK_BITS, solve_work, verify_work, work_bits};
pub use line::WaitingLine;
pub use load::{Load, LoadTargets};
pub use node_admission::{
    AdmissionGauges, AdmissionSettings, NodeAdmission, RegistrationDecision, keeps_holding,
};
pub use order::LineOrder;
pub use pass::{PASS_LIFETIME_SECS, PassKey};
pub use place::Place;
pub use ticket::{Ticket, TicketError, TicketKey, key_hash};
