//! Node configuration. Every field has a default that works with no file at all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use levee_queue::KafkaConfig;
use levee_sharding::{PlacementConfig, ScyllaConfig};
use serde::{Deserialize, Serialize};

use crate::admission::{AdmissionSettings, MAX_WORK_BITS};

/// Most `registration_hold_ms` may be: well within the 30 s a client waits for an answer.
const MAX_REGISTRATION_HOLD_MS: u64 = 10_000;

/// Configuration of one relay node (embedded deployment).
///
/// Read by the `levee` binary from a TOML file (`--config`), then `LEVEE_*` environment
/// variables, then command-line flags, each overriding the one before. See
/// `docs/levee.example.toml` for a commented example of every field.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// UDP address to listen on for QUIC.
    pub listen: SocketAddr,
    /// Directory for the embedded database and the generated TLS certificate.
    pub data_dir: PathBuf,
    /// TCP address of the admin port serving `GET /metrics` (Prometheus). Off when unset.
    /// Bind it to loopback or an internal network.
    pub admin_listen: Option<SocketAddr>,
    /// PEM certificate chain for production; with `tls_key`. When unset, a self-signed
    /// certificate is generated in `data_dir/tls` on first start.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Largest envelope ciphertext accepted, in bytes.
    pub max_envelope_bytes: u32,
    /// Quota: most unacknowledged envelopes one mailbox may hold.
    pub mailbox_max_envelopes: u64,
    /// Quota: most unacknowledged ciphertext bytes one mailbox may hold.
    pub mailbox_max_bytes: u64,
    /// How long an unacknowledged envelope is kept, in seconds (default 14 days).
    pub envelope_ttl_secs: u64,
    /// Number of shards (delivery-log partitions). Fixed once a data directory exists.
    pub shards: u32,
    /// Most concurrent client connections; further ones are refused at once.
    pub max_connections: u32,
    /// Most TLS handshakes in progress at once. Past half of it, clients whose address is not
    /// yet validated get a QUIC Retry first; at it, new connections are refused.
    pub max_handshakes: u32,
    /// New connections per second from one network (/24 IPv4, /48 IPv6), twice that in a
    /// burst; more are refused before the handshake.
    pub connections_per_prefix_per_sec: u32,
    /// Sends and subscriptions per second one account may make (twice that in a burst);
    /// more get RATE_LIMITED.
    pub account_requests_per_sec: u32,
    /// Most requests one connection may have in progress; beyond it the node stops
    /// reading from that connection (QUIC flow control then slows the client).
    pub max_requests_in_flight: u32,
    /// Most envelopes a subscription may hold delivered and unacknowledged; the node sends
    /// more as acks come in. A client asks for a window up to this (`Subscribe.window`).
    pub delivery_window: u32,
    /// A connection silent for this long (seconds) is closed. Clients ping to stay.
    pub idle_timeout_secs: u64,
    /// Admission control on (the default) or off (everything admitted; for benchmarks and
    /// drills that show the difference).
    pub admission: bool,
    /// Secret shared by the nodes of a cluster (hex, at least 32 characters): signs
    /// waiting-room tickets and door passes, and salts cohorts. When unset, one is generated
    /// in `data_dir/cluster.key`.
    pub cluster_key: Option<String>,
    /// Admission window: the level is reconsidered this often (milliseconds)...
    pub admission_window_ms: u64,
    /// ...shedding more when requests waited in queue longer than this on average (ms)...
    pub admission_overload_wait_ms: u64,
    /// ...and admitting more when they waited less than this (ms).
    pub admission_recover_wait_ms: u64,
    /// The waiting line lets newcomers in only while the node's scheduler keeps time for
    /// the users already connected: it slows when more than 3% of a window's lag probes
    /// ran later than this (ms), and pauses while the last ones did. 0 turns it off (the
    /// line then follows the admission level's limits alone).
    pub admission_line_lag_ms: u64,
    /// Smoothed durable-write latency (ms) above which the node counts as overloaded even
    /// when its own queues are short: the storage behind it is the bottleneck.
    pub admission_backend_latency_ms: u64,
    /// Delivery-log records not yet stored in mailboxes above which the node counts as
    /// overloaded.
    pub admission_backend_lag: u64,
    /// Registrations per second the waiting line starts at; from then on it follows what
    /// the node measurably absorbs.
    pub registration_initial_rate: f64,
    /// Most registrations per second this node seats, however much more it could absorb
    /// (0, the default: no ceiling). For when something behind the node limits sign-ups
    /// (account writes to a shared store, a verification service's quota): the cluster's
    /// registration capacity then grows with its node count.
    pub registration_max_per_s: f64,
    /// The waiting-line wait at which `levee_load_ratio`'s line part reads 1.0 — the
    /// longest a newcomer should wait once the autoscaler has caught up, in seconds.
    pub load_target_wait_s: f64,
    /// Longest the node holds a registration's answer while its place comes due, instead
    /// of answering `Queued` at once (0: never holds). A held registration costs the node a
    /// timer; a return costs a challenge, a request and a ticket, and the client one more
    /// round trip.
    pub registration_hold_ms: u64,
    /// How long after a node writes its line's front to the cluster's line board the
    /// front counts (ms): every node must have read it by then, so that all agree on which
    /// places the cluster's one line has reached. At least 2 × `heartbeat_ms` (nodes write
    /// and read the board every heartbeat), at most `failure_timeout_ms`. A node's released
    /// newcomers enter this much after its own line reached them while a line stands. 0
    /// turns the cluster's line off: each node's line keeps its own order only.
    pub registration_line_sync_ms: u64,
    /// Proof of work for registrations while a waiting line forms: the most leading zero
    /// bits asked (difficulty rises one bit per doubling of the line from 8 bits, up to
    /// this). 0, the default, turns it off; at most 28.
    pub registration_work_max_bits: u32,
    /// This node's name in the cluster: unique and stable across restarts.
    pub node_name: String,
    /// The region this node runs in; shards pinned to regions only go to nodes in them.
    pub region: String,
    /// Relative capacity: a node of weight 2 gets about twice the shards of weight 1.
    pub weight: u32,
    /// The address other nodes send clients to (redirects). When unset, the bound `listen`
    /// address; set it when listening on a wildcard address.
    pub advertise_address: Option<SocketAddr>,
    /// How often the node refreshes its roster row and re-reads the others' (ms).
    pub heartbeat_ms: u64,
    /// A node whose row was not refreshed for this long (ms) is declared dead and its
    /// shards move.
    pub failure_timeout_ms: u64,
    /// Longest a draining node waits for its clients to move before it leaves (ms).
    pub drain_grace_ms: u64,
    /// Placement load bound: no node owns more than ⌈(1 + ε) × its weighted share⌉ shards.
    pub placement_epsilon: f64,
    /// Shards that may only be placed on nodes of the given regions; with none of those
    /// up, they are unavailable rather than placed elsewhere.
    pub region_pins: Vec<RegionPin>,
    /// Bearer token the admin port requires for changes (`POST /admin/...`). When unset,
    /// changes are accepted only on a loopback admin address.
    pub admin_token: Option<String>,
    /// Let chaos drills inject faults through the admin port (`POST /admin/faults/crash`,
    /// `POST /admin/faults/stall?secs=N`; same token rule as the other changes). For drill
    /// and staging clusters only: off by default, and the endpoints answer 403 while off.
    pub fault_injection: bool,
    /// Distributed deployment (`levee node`): the name of this cluster in the shared
    /// database. Nodes with the same `cluster_name` and `[scylla]` keyspace form one
    /// cluster.
    pub cluster_name: String,
    /// Distributed deployment: where mailboxes (and the roster) live. Required by
    /// `levee node`; ignored by `levee up`.
    pub scylla: Option<ScyllaConfig>,
    /// Distributed deployment: where the delivery log lives. Required by `levee node`;
    /// ignored by `levee up`.
    pub kafka: Option<KafkaConfig>,
}

/// Shards pinned to a set of regions; see [`NodeConfig::region_pins`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionPin {
    /// The shards.
    pub shards: Vec<u32>,
    /// Regions allowed to hold them.
    pub regions: Vec<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            data_dir: PathBuf::from(".levee"),
            admin_listen: None,
            tls_cert: None,
            tls_key: None,
            max_envelope_bytes: 64 * 1024,
            mailbox_max_envelopes: 10_000,
            mailbox_max_bytes: 64 * 1024 * 1024,
            envelope_ttl_secs: 14 * 24 * 3600,
            shards: 256,
            max_connections: 10_000,
            max_handshakes: 256,
            connections_per_prefix_per_sec: 200,
            account_requests_per_sec: 1000,
            max_requests_in_flight: 256,
            delivery_window: 1024,
            idle_timeout_secs: 30,
            admission: true,
            cluster_key: None,
            admission_window_ms: 1000,
            admission_overload_wait_ms: 20,
            admission_recover_wait_ms: 10,
            admission_line_lag_ms: 5,
            admission_backend_latency_ms: 25,
            admission_backend_lag: 2_000,
            registration_initial_rate: 500.0,
            registration_max_per_s: 0.0,
            load_target_wait_s: 30.0,
            registration_hold_ms: 5_000,
            registration_line_sync_ms: 1_000,
            registration_work_max_bits: 0,
            node_name: "node-1".into(),
            region: "local".into(),
            weight: 1,
            advertise_address: None,
            heartbeat_ms: 250,
            failure_timeout_ms: 3000,
            drain_grace_ms: 5000,
            placement_epsilon: 0.25,
            region_pins: Vec::new(),
            admin_token: None,
            fault_injection: false,
            cluster_name: "levee".into(),
            scylla: None,
            kafka: None,
        }
    }
}

impl NodeConfig {
    /// The admission part of this configuration, as `admission::NodeAdmission` takes it.
    pub fn admission_settings(&self) -> AdmissionSettings {
        AdmissionSettings {
            window: Duration::from_millis(self.admission_window_ms),
            overload_wait: Duration::from_millis(self.admission_overload_wait_ms),
            recover_wait: Duration::from_millis(self.admission_recover_wait_ms),
            initial_rate: self.registration_initial_rate,
            max_per_s: self.registration_max_per_s,
            backend_latency: Duration::from_millis(self.admission_backend_latency_ms),
            backend_lag: self.admission_backend_lag,
            line_lag: Duration::from_millis(self.admission_line_lag_ms),
            work_max_bits: self.registration_work_max_bits,
            load_target_wait: Duration::from_secs_f64(self.load_target_wait_s),
        }
    }

    /// Checks values that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_envelope_bytes", u64::from(self.max_envelope_bytes)),
            ("mailbox_max_envelopes", self.mailbox_max_envelopes),
            ("mailbox_max_bytes", self.mailbox_max_bytes),
            ("envelope_ttl_secs", self.envelope_ttl_secs),
            ("shards", u64::from(self.shards)),
            ("max_connections", u64::from(self.max_connections)),
            (
                "max_requests_in_flight",
                u64::from(self.max_requests_in_flight),
            ),
            ("delivery_window", u64::from(self.delivery_window)),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("weight", u64::from(self.weight)),
            ("heartbeat_ms", self.heartbeat_ms),
            ("admission_window_ms", self.admission_window_ms),
            (
                "admission_overload_wait_ms",
                self.admission_overload_wait_ms,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        if self.max_envelope_bytes > 16 * 1024 * 1024 {
            return Err("max_envelope_bytes may be at most 16 MiB".into());
        }
        if self.admission_recover_wait_ms > self.admission_overload_wait_ms {
            return Err(
                "admission_recover_wait_ms must not exceed admission_overload_wait_ms".into(),
            );
        }
        if !(self.registration_initial_rate.is_finite() && self.registration_initial_rate >= 1.0) {
            return Err("registration_initial_rate must be at least 1".into());
        }
        if !(self.registration_max_per_s.is_finite()
            && (self.registration_max_per_s == 0.0 || self.registration_max_per_s >= 1.0))
        {
            return Err("registration_max_per_s must be 0 (no ceiling) or at least 1".into());
        }
        if !(self.load_target_wait_s.is_finite() && self.load_target_wait_s > 0.0) {
            return Err("load_target_wait_s must be greater than 0".into());
        }
        if self.registration_hold_ms > MAX_REGISTRATION_HOLD_MS {
            return Err(format!(
                "registration_hold_ms may be at most {MAX_REGISTRATION_HOLD_MS} (clients give \
                 up on an answer after 30 s)"
            ));
        }
        if self.registration_work_max_bits > MAX_WORK_BITS {
            return Err(format!(
                "registration_work_max_bits may be at most {MAX_WORK_BITS}"
            ));
        }
        if let Some(key) = &self.cluster_key
            && (key.len() < 32 || hex::decode(key).is_err())
        {
            return Err("cluster_key must be at least 32 hex characters".into());
        }
        if self.node_name.is_empty() || self.region.is_empty() {
            return Err("node_name and region must not be empty".into());
        }
        // A row lives failure_timeout after its last heartbeat: three heartbeats in that
        // time, so one late or lost write does not make a live node look dead.
        if self.heartbeat_ms == 0 || self.failure_timeout_ms < 3 * self.heartbeat_ms {
            return Err(
                "heartbeat_ms must be above 0 and failure_timeout_ms at least 3 × heartbeat_ms"
                    .into(),
            );
        }
        if self.registration_line_sync_ms != 0
            && (self.registration_line_sync_ms < 2 * self.heartbeat_ms
                || self.registration_line_sync_ms > self.failure_timeout_ms)
        {
            return Err(
                "registration_line_sync_ms must be 0 (off), or at least 2 × heartbeat_ms and \
                 at most failure_timeout_ms"
                    .into(),
            );
        }
        if !(self.placement_epsilon.is_finite() && self.placement_epsilon > 0.0) {
            return Err("placement_epsilon must be greater than 0".into());
        }
        for pin in &self.region_pins {
            if pin.regions.is_empty() {
                return Err("a region pin needs at least one region".into());
            }
            if let Some(s) = pin.shards.iter().find(|s| **s >= self.shards) {
                return Err(format!(
                    "region pin names shard {s}, but there are {} shards",
                    self.shards
                ));
            }
        }
        if self.cluster_name.is_empty() {
            return Err("cluster_name must not be empty".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together".into());
        }
        Ok(())
    }

    /// The largest frame the node reads: room for an envelope twice over the limit, so a
    /// moderately oversized envelope still gets a per-request TOO_LARGE answer instead of
    /// a closed connection.
    pub fn max_frame_bytes(&self) -> usize {
        2 * self.max_envelope_bytes as usize + 4096
    }

    /// The placement rules these settings describe.
    pub fn placement(&self) -> PlacementConfig {
        let mut pins: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for pin in &self.region_pins {
            for shard in &pin.shards {
                pins.entry(*shard)
                    .or_default()
                    .extend(pin.regions.iter().cloned());
            }
        }
        PlacementConfig {
            shards: self.shards,
            // The embedded deployment shares one store: each shard needs one owner.
            replicas: 1,
            epsilon: Some(self.placement_epsilon),
            pins,
        }
    }

    /// [`envelope_ttl_secs`](Self::envelope_ttl_secs) as a duration.
    pub fn envelope_ttl(&self) -> Duration {
        Duration::from_secs(self.envelope_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_documents_the_defaults() {
        let text = include_str!("../../docs/levee.example.toml");
        let parsed: NodeConfig = toml::from_str(text).expect("the example parses");
        assert_eq!(parsed, NodeConfig::default());
    }

    #[test]
    fn the_distributed_example_config_parses_and_validates() {
        let text = include_str!("../../docs/levee.distributed.example.toml");
        let parsed: NodeConfig = toml::from_str(text).expect("the example parses");
        assert_eq!(parsed.validate(), Ok(()));
        let scylla = parsed.scylla.expect("a [scylla] table");
        assert_eq!(scylla.nodes, vec!["127.0.0.1:19042".to_owned()]);
        assert_eq!(
            scylla.replication,
            levee_sharding::Replication::Simple { factor: 1 }
        );
        assert_eq!(
            parsed.kafka.expect("a [kafka] table").topic,
            "levee-delivery"
        );
        assert!(parsed.cluster_key.is_some());
    }

    #[test]
    fn validation_names_the_bad_field() {
        let bad = NodeConfig {
            shards: 0,
            ..NodeConfig::default()
        };
        assert_eq!(bad.validate(), Err("shards must be greater than 0".into()));
        let half_tls = NodeConfig {
            tls_cert: Some("c.pem".into()),
            ..NodeConfig::default()
        };
        assert!(half_tls.validate().is_err());
        assert_eq!(NodeConfig::default().validate(), Ok(()));
    }
}
