//! The Levee delivery log.
//!
//! # Layout
//!
//! - [`DeliveryLog`]: where a relay node appends an accepted envelope before it acknowledges
//!   the sender. Partitioned by shard (`levee_sharding::shard_of` of the recipient), so each
//!   shard's records are totally ordered and one node can own a shard's delivery.
//! - [`LogConsumer`]: reads the shards assigned to it from the last committed position and
//!   commits positions only after the records are safe in the mailbox store. The same shape as
//!   a Kafka consumer with manual partition assignment, which is the distributed backend.
//! - [`EmbeddedLog`]: the default backend, in the embedded fjall database shared with the
//!   mailbox store.
//! - [`KafkaLog`]: the distributed backend, one Kafka partition per shard. Built with the
//!   `kafka` feature (on by default); [`KafkaConfig`] is always built.
#![warn(missing_docs)]

mod embedded;
#[cfg(feature = "kafka")]
mod kafka;
mod kafka_config;
mod log;

pub use embedded::EmbeddedLog;
#[cfg(feature = "kafka")]
pub use kafka::KafkaLog;
pub use kafka_config::KafkaConfig;
pub use log::{DeliveryLog, LogConsumer, LogError, LogPosition, LogRecord, LoggedRecord, Skipped};
