//! Shared pieces of Levee's load tools (`levee-load`, `levee-surge`).

pub mod child_node;
pub mod cpu_budget;
pub mod slo;
pub mod wave;

use std::time::Duration;

use hdrhistogram::Histogram;
use levee_client::ClientConfig;
use levee_client::Trust;
use levee_relay::{Node, NodeConfig};

/// The `levee` binary's allocator, for every binary and bench of this package (levee-load,
/// levee-surge), so the nodes measured here allocate as a deployed one does; built without
/// it (`--no-default-features`) to compare with the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A relay node run inside the tool's process, on loopback, with its data in a temporary
/// directory that is removed when it stops.
pub struct LocalNode {
    /// How clients reach it.
    pub client: ClientConfig,
    /// Where it serves `/metrics`, if it was asked to (`admin_listen`).
    pub admin: Option<std::net::SocketAddr>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), levee_relay::NodeError>>,
    _data: tempfile::TempDir,
}

impl LocalNode {
    /// Starts a node with the default configuration changed by `tune`. Per-account limits
    /// are lifted: load tools drive a few accounts far harder than any person would.
    pub fn start(tune: impl FnOnce(&mut NodeConfig)) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let mut config = NodeConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: data.path().to_owned(),
            mailbox_max_envelopes: 1_000_000,
            mailbox_max_bytes: 1 << 32,
            account_requests_per_sec: 1_000_000,
            connections_per_prefix_per_sec: 1_000_000,
            ..NodeConfig::default()
        };
        tune(&mut config);
        let node = Node::open(config)?;
        let client = ClientConfig::new(node.local_addr(), Trust::Fingerprint(node.fingerprint()));
        let admin = node.admin_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            client,
            admin,
            stop,
            task,
            _data: data,
        })
    }

    /// Stops the node and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records `d` into a microsecond histogram (saturating at its bounds).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).clamp(1, 60_000_000));
}

/// The `q` quantile of a microsecond histogram, in milliseconds.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}
