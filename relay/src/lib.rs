//! The Levee relay: a QUIC message relay for end-to-end encrypted messengers.
//!
//! # Layout
//!
//! - [`wire`]: the protocol — generated protobuf types (schema in
//!   `relay/proto/levee/v1/levee.proto`) and the length-delimited [`wire::FrameDecoder`].
//! - [`identity`]: accounts are Ed25519 keys; the signed, TLS-session-bound transcript.
//! - [`session`]: what a connection may do next (challenge, proof, subscription). Pure.
//! - [`tls`]: self-signed or file certificates on the node; fingerprint pinning or a CA
//!   bundle on the client.
//! - [`Node`]: the node runtime — QUIC endpoint, per-connection handlers, the delivery worker
//!   that moves envelopes from the delivery log (`levee-queue`) into mailboxes
//!   (`levee-sharding`) and wakes subscribers.
//! - [`client`]: the async client library the CLI and the load generator are built on.
//! - [`NodeConfig`]: every setting with its default.
#![warn(missing_docs)]

pub mod admin_client;
pub mod admission;
pub mod client;
mod clock;
pub mod cluster;
mod config;
pub mod identity;
mod node;
pub mod session;
mod telemetry;
pub mod tls;
mod udp;
pub mod wire;

pub use config::{NodeConfig, RegionPin};
pub use identity::{AccountId, Identity};
pub use node::{DrainHandle, Node, NodeError};
