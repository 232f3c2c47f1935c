//! Where Levee mailboxes live.
//!
//! # Layout
//!
//! - [`MailboxId`] and [`ShardId`]: a mailbox is named by its owner's account key; a mailbox
//!   hashes onto one of a fixed number of shards ([`shard_of`]). Shards are the unit that
//!   placement moves between relay nodes and the partitions of the delivery log.
//! - [`Placement`]: which relay nodes serve which shards, computed the same way by every node
//!   from a [`Membership`] (weighted rendezvous hashing with bounded loads, replicas, region
//!   pins). Pure.
//! - [`MailboxStore`]: the storage contract every backend meets (idempotent insert, ordered
//!   reads, durable acknowledgement, quotas, expiry).
//! - [`EmbeddedStore`] / [`EmbeddedMailboxStore`]: the default backend, one fjall database on
//!   local disk with group commit. The embedded delivery log in `levee-queue` shares the same
//!   database so that one fsync covers log appends and mailbox writes alike.
//! - [`ScyllaMailboxStore`]: the distributed backend, mailboxes in ScyllaDB or any
//!   Cassandra-compatible CQL cluster ([`ScyllaConfig`], [`Replication`]); how it avoids the
//!   tombstone trap of queues in such stores is in its module documentation. Built with the
//!   `cql` feature (on by default); [`ScyllaConfig`] and [`schema`] are always built.
#![warn(missing_docs)]

mod background;
#[cfg(feature = "cql")]
mod cql;
mod cql_config;
mod embedded;
mod envelope;
mod memtable_reaper;
mod placement;
mod shard;
mod store;

#[cfg(feature = "cql")]
pub use cql::{ScyllaMailboxStore, StoreStatement};
pub use cql_config::{Replication, ScyllaConfig, schema};
pub use embedded::{EmbeddedMailboxStore, EmbeddedStore};
pub use envelope::{EnvelopeId, NewEnvelope, StoredEnvelope};
/// A mailbox is named by its owner's account key.
pub use levee_protocol::AccountId as MailboxId;
pub use levee_protocol::ParseAccountIdError as ParseMailboxIdError;
pub use placement::{Member, Membership, MembershipError, Placement, PlacementConfig, Unavailable};
pub use shard::{ShardId, shard_of};
pub use store::{AckOutcome, InsertOutcome, MailboxStore, MailboxUsage, StoreError};
