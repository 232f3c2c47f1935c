//! How to reach the CQL cluster that holds mailboxes, and the schema Levee creates there.
//! Plain data, compiled without the `cql` feature too, so a node's configuration parses
//! the same whichever backends it was built with.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// How the keyspace is replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case", deny_unknown_fields)]
pub enum Replication {
    /// `SimpleStrategy`: one replication factor, no notion of data centres. For tests and
    /// single-data-centre development clusters.
    Simple {
        /// Copies of each row.
        factor: u32,
    },
    /// `NetworkTopologyStrategy`: a replication factor per data centre (region), for
    /// production. Data is stored only in the data centres listed.
    NetworkTopology {
        /// Data centre name → copies of each row there.
        factors: BTreeMap<String, u32>,
    },
}

impl Replication {
    /// The CQL replication map.
    fn cql(&self) -> Result<String, StoreError> {
        match self {
            Replication::Simple { factor } if *factor > 0 => Ok(format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}"
            )),
            Replication::NetworkTopology { factors }
                if !factors.is_empty() && factors.values().all(|f| *f > 0) =>
            {
                let mut out = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, factor) in factors {
                    if !dc
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    {
                        return Err(config_error(format!("bad data centre name {dc:?}")));
                    }
                    let _ = write!(out, ", '{dc}': {factor}");
                }
                out.push('}');
                Ok(out)
            }
            _ => Err(config_error("every replication factor must be at least 1")),
        }
    }
}

/// Where and how the ScyllaDB store keeps mailboxes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points, `host:port` (the driver discovers the rest of the cluster).
    pub nodes: Vec<String>,
    /// Keyspace holding Levee's tables; created if missing.
    pub keyspace: String,
    /// Replication of the keyspace when it is created (an existing keyspace is left as it
    /// is: changing replication is an operator's decision, followed by a repair).
    pub replication: Replication,
    /// The data centre this node prefers (its region); unset: any.
    pub local_datacenter: Option<String>,
    /// Table-level TTL of envelopes and dedupe records (seconds), a backstop: each row also
    /// carries its own TTL from the envelope's expiry. Not read from configuration files:
    /// the relay sets it from its own `envelope_ttl_secs`.
    #[serde(skip)]
    pub envelope_ttl_secs: u64,
    /// How long one statement may take before it fails (milliseconds).
    pub request_timeout_ms: u64,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "levee".into(),
            replication: Replication::Simple { factor: 1 },
            local_datacenter: None,
            envelope_ttl_secs: 14 * 24 * 3600,
            request_timeout_ms: 5_000,
        }
    }
}

pub(crate) fn config_error(message: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(format!("scylla configuration: {message}"))
}

/// The CQL statements that create Levee's schema in `keyspace`, in order.
pub fn schema(config: &ScyllaConfig) -> Result<Vec<String>, StoreError> {
    let ks = &config.keyspace;
    let valid = ks.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && ks.len() <= 48
        && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(config_error(format!(
            "keyspace {ks:?} must be a letter then up to 47 letters, digits or underscores"
        )));
    }
    if config.envelope_ttl_secs == 0 || config.envelope_ttl_secs > MAX_TTL_SECS {
        return Err(config_error(format!(
            "envelope_ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )));
    }
    let ttl = config.envelope_ttl_secs;
    let replication = config.replication.cql()?;
    let twcs = "{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', \
                'compaction_window_size': 1, 'unchecked_tombstone_compaction': 'true'}";
    Ok(vec![
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.accounts (mailbox blob PRIMARY KEY, \
             created_at_ms bigint)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.envelopes (mailbox blob, id bigint, \
             client_message_id blob, accepted_at_ms bigint, expires_at_ms bigint, size bigint, \
             ciphertext blob, PRIMARY KEY ((mailbox), id)) \
             WITH CLUSTERING ORDER BY (id ASC) AND default_time_to_live = {ttl} \
             AND compaction = {twcs}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.dedupe (mailbox blob, dedupe_key blob, id bigint, \
             PRIMARY KEY ((mailbox), dedupe_key)) WITH default_time_to_live = {ttl} \
             AND compaction = {twcs}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.mailbox_heads (mailbox blob PRIMARY KEY, \
             live_from bigint)"
        ),
    ])
}

/// CQL's largest TTL (20 years).
pub(crate) const MAX_TTL_SECS: u64 = 630_720_000;
