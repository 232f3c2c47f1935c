//! The Levee wire protocol: everything a client and a node must agree on, and nothing
//! either end keeps to itself.
//!
//! # Layout
//!
//! - [`wire`]: the generated protobuf types (schema in `protocol/proto/levee/v1/levee.proto`,
//!   specification in `docs/PROTOCOL.md`), the length-delimited [`wire::FrameDecoder`], the
//!   ALPN id and the TLS exporter label.
//! - [`AccountId`]: an account is its Ed25519 public key; the key also names its mailbox.
//! - [`identity`]: an account's key pair ([`Identity`]), its file, and the signed
//!   transcript bound to the TLS session.
//! - [`work`]: the proof of work a new place in the waiting line may have to carry.
//! - [`Fingerprint`]: how a client pins a node's self-signed certificate.
//! - [`udp`]: the UDP socket under a QUIC endpoint, with kernel buffers sized for bursts.
//!
//! Depends on no runtime, no store and no QUIC implementation, so any client, tool or
//! fuzzer can build on it.
#![warn(missing_docs)]

mod account;
mod fingerprint;
pub mod identity;
pub mod udp;
pub mod wire;
pub mod work;

pub use account::{AccountId, ParseAccountIdError};
pub use fingerprint::Fingerprint;
pub use identity::Identity;
