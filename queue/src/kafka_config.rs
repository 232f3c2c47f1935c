//! Where the delivery log lives in Kafka. Plain data, compiled without the `kafka`
//! feature too, so a node's configuration parses the same whichever backends it was built
//! with.

use serde::{Deserialize, Serialize};

/// Where the log lives in Kafka.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:19092`.
    pub brokers: String,
    /// The topic (created with `shards` partitions if missing).
    pub topic: String,
    /// Replication factor when creating the topic.
    pub replication: i32,
    /// How long Kafka keeps a record (`retention.ms` of a topic Levee creates), in
    /// milliseconds. A record must be delivered into its mailbox within this time, or it is
    /// lost (counted, see the module docs): keep it well above the longest outage of the
    /// mailbox store you want to ride out. Default 7 days.
    pub retention_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "levee-delivery".into(),
            replication: 1,
            retention_ms: DEFAULT_RETENTION_MS,
        }
    }
}

/// Kafka's own default retention, written out so that it is a decision, not an accident.
const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
