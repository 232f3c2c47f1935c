//! The Levee relay node: a QUIC message relay for end-to-end encrypted messengers.
//!
//! The protocol it speaks is `levee-protocol`; the library apps use to talk to it is
//! `levee-client`; the `levee` binary is in the `levee` package.
//!
//! # Layout
//!
//! - [`session`]: what a connection may do next (challenge, proof, subscription). Pure.
//! - [`tls`]: the node's certificate, self-signed or from files.
//! - [`Node`]: the node runtime — QUIC endpoint, per-connection handlers, the delivery worker
//!   that moves envelopes from the delivery log (`levee-queue`) into mailboxes
//!   (`levee-sharding`) and wakes subscribers.
//! - [`admission`]: which requests a node serves when it cannot serve them all. Pure.
//! - [`cluster`]: rosters, shard leases and the placement view that make nodes one cluster.
//! - [`local_cluster`]: N nodes in one process (`levee up --nodes N`).
//! - [`admin_client`]: the few admin-port requests the CLI and the drills make.
//! - [`NodeConfig`]: every setting with its default.
//!
//! # Features
//!
//! - `cql`: the roster and shard leases in a CQL database, and `levee-sharding`'s CQL
//!   mailbox store.
//! - `kafka`: `levee-queue`'s Kafka delivery log.
//!
//! Both are on by default; without them a node runs embedded only.
#![warn(missing_docs)]

pub mod admin_client;
pub mod admission;
mod clock;
pub mod cluster;
mod config;
pub mod local_cluster;
mod log_record;
mod node;
pub mod session;
mod telemetry;
#[cfg(feature = "cql")]
pub use telemetry::store_statements;
pub mod tls;

pub use clock::now_ms;
pub use config::{NodeConfig, RegionPin};
pub use levee_protocol::identity::{AccountId, Identity};
pub use local_cluster::LocalCluster;
pub use node::{DrainHandle, Node, NodeError};

// The protocol's modules, under the paths the node's code names them by.
use levee_protocol::{identity, wire};
