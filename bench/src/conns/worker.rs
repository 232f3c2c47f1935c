//! One client process of `levee-conns`: holds its share of the connections, each a real
//! `levee-client` session (connected, registered or authenticated, subscribed), and does
//! what the driver asks, one command per line on standard input, one JSON reply per line
//! on standard output.
//!
//! A held connection that the node closes or that goes silent (the node crashed) is
//! reconnected the way an application using the client crate would: `connect_patiently`
//! (its back-off: 0.5 s doubling to 8 s, with jitter), then `authenticate` with the same
//! identity, then `subscribe`. The worker records how long each such outage lasted.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use levee_client::{Client, ClientConfig, Connector};
use levee_relay::{AccountId, Identity};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

/// Connections per UDP socket (one [`Connector`] each): many clients share a socket, as
/// behind a carrier's NAT, while the worker's QUIC endpoint tasks still spread over cores.
const CONNECTIONS_PER_SOCKET: usize = 5_000;
/// How long a connection keeps trying to get back before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(600);
/// After a trickle, how long stragglers may still arrive and be counted.
const TRICKLE_GRACE: Duration = Duration::from_secs(3);
/// Marks a trickle envelope (after its 8-byte timestamp).
const TRICKLE_MAGIC: &[u8; 8] = b"levconns";

/// What the driver asks.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Open connections until this worker holds `total` (or has given up on some).
    Open { total: usize },
    /// Send `rate` envelopes a second for `seconds`, each from one held connection to the
    /// next, and report their latencies.
    Trickle { rate: f64, seconds: f64 },
    /// Report the connections' state; with `outages`, each outage's length too.
    Status { outages: bool },
}

/// The state of a worker's connections.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Status {
    /// Connections open, authenticated and subscribed now.
    pub live: usize,
    /// Connections that gave up (no session within the patience).
    pub failed: usize,
    /// Times a live connection was lost.
    pub lost: u64,
    /// Connections lost more than once.
    pub lost_again: u64,
    /// Times a lost connection was set up again.
    pub back: u64,
    /// Connection attempts the node turned away (refused, or dropped at its door).
    pub turned_away: u64,
    /// Requests (register, authenticate, subscribe) that failed and were tried again.
    pub errors: u64,
    /// How long each outage lasted, lost to back, in milliseconds (when asked for).
    pub outages_ms: Vec<u64>,
}

/// The outcome of a trickle.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Trickle {
    /// Sends the node accepted (durable).
    pub sent: u64,
    /// Sends the node refused, or that failed.
    pub refused: u64,
    /// Ticks with no live connection to send from.
    pub skipped: u64,
    /// Send-to-push latency of each envelope delivered in time, in microseconds.
    pub latencies_us: Vec<u64>,
}

/// A reply, one per command.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Trickle(Trickle),
    Failed(String),
}

/// One held connection.
struct Slot {
    identity: Identity,
    client: Mutex<Option<Arc<Client>>>,
    losses: AtomicU64,
}

impl Slot {
    fn client(&self) -> Option<Arc<Client>> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_client(&self, client: Option<Arc<Client>>) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }
}

struct Worker {
    epoch: Instant,
    config: ClientConfig,
    connectors: Mutex<Vec<Connector>>,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Bounds first set-ups under way, so a worker's crowd arrives as a stream.
    opening: Semaphore,
    /// Bounds reconnects under way. Not one per client, as on real devices: a worker
    /// process simulates 25,000 clients on a share of two cores, and with all of them
    /// handshaking at once each handshake took longer than the client's 5 s connect
    /// timeout, every one was abandoned and tried again, and almost none came back (the
    /// load generator's own collapse, with the node at 40–60% of one core).
    reconnecting: Semaphore,
    live: AtomicUsize,
    failed: AtomicUsize,
    lost: AtomicU64,
    lost_again: AtomicU64,
    turned_away: AtomicU64,
    errors: AtomicU64,
    outages_ms: Mutex<Vec<u64>>,
    measuring: AtomicBool,
    latencies_us: Mutex<Vec<u64>>,
}

/// Runs the worker until standard input ends.
pub async fn run(
    config: ClientConfig,
    concurrency: usize,
    reconnect_concurrency: usize,
) -> anyhow::Result<()> {
    let worker = Arc::new(Worker {
        epoch: Instant::now(),
        config,
        connectors: Mutex::new(Vec::new()),
        slots: Mutex::new(Vec::new()),
        opening: Semaphore::new(concurrency.max(1)),
        reconnecting: Semaphore::new(reconnect_concurrency.max(1)),
        live: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        lost: AtomicU64::new(0),
        lost_again: AtomicU64::new(0),
        turned_away: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        outages_ms: Mutex::new(Vec::new()),
        measuring: AtomicBool::new(false),
        latencies_us: Mutex::new(Vec::new()),
    });
    let (lines, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let reply = match serde_json::from_str::<Command>(&line) {
            Ok(Command::Open { total }) => match worker.open(total).await {
                Ok(()) => Reply::Status(worker.status(false)),
                Err(e) => Reply::Failed(format!("{e:#}")),
            },
            Ok(Command::Trickle { rate, seconds }) => {
                Reply::Trickle(worker.trickle(rate, seconds).await)
            }
            Ok(Command::Status { outages }) => Reply::Status(worker.status(outages)),
            Err(e) => Reply::Failed(format!("not a command: {e}")),
        };
        println!("{}", serde_json::to_string(&reply)?);
    }
    Ok(())
}

impl Worker {
    fn status(&self, outages: bool) -> Status {
        let outages_ms = self.outages_ms.lock().unwrap_or_else(|p| p.into_inner());
        Status {
            live: self.live.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            lost_again: self.lost_again.load(Ordering::Relaxed),
            turned_away: self.turned_away.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            back: outages_ms.len() as u64,
            outages_ms: if outages {
                outages_ms.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Starts connections until `total` are held, and waits until each new one is live or
    /// has failed.
    async fn open(self: &Arc<Self>, total: usize) -> anyhow::Result<()> {
        let start = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let start = slots.len();
            while slots.len() < total {
                slots.push(Arc::new(Slot {
                    identity: Identity::generate()?,
                    client: Mutex::new(None),
                    losses: AtomicU64::new(0),
                }));
            }
            start
        };
        for i in start..total {
            let connector = self.connector(i)?;
            let slot = self.slots.lock().unwrap_or_else(|p| p.into_inner())[i].clone();
            tokio::spawn(self.clone().hold(slot, connector));
        }
        loop {
            let settled = self.live.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
            if settled >= total {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The connector (UDP socket) for slot `i`.
    fn connector(&self, i: usize) -> anyhow::Result<Connector> {
        let mut connectors = self.connectors.lock().unwrap_or_else(|p| p.into_inner());
        while connectors.len() <= i / CONNECTIONS_PER_SOCKET {
            connectors.push(Connector::new(&self.config)?);
        }
        Ok(connectors[i / CONNECTIONS_PER_SOCKET].clone())
    }

    /// Keeps one connection up: sets it up (registering the first time, authenticating
    /// after), takes its deliveries, and when it is lost sets it up again.
    async fn hold(self: Arc<Self>, slot: Arc<Slot>, connector: Connector) {
        let mut registered = false;
        let mut lost_at: Option<Instant> = None;
        loop {
            let Some((client, mut inbox)) = self
                .set_up(&slot, &connector, &mut registered, lost_at.is_none())
                .await
            else {
                self.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let client = Arc::new(client);
            slot.set_client(Some(client.clone()));
            self.live.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = lost_at.take() {
                self.outages_ms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(t.elapsed().as_millis() as u64);
            }
            while let Some(delivery) = inbox.next().await {
                self.record(&delivery.ciphertext);
                // A failed ack leaves the envelope to be delivered again; the trickle
                // counts it once, at its first arrival.
                let _ = client.ack(&[delivery.envelope_id]).await;
            }
            self.live.fetch_sub(1, Ordering::Relaxed);
            slot.set_client(None);
            lost_at = Some(Instant::now());
            self.lost.fetch_add(1, Ordering::Relaxed);
            if slot.losses.fetch_add(1, Ordering::Relaxed) == 1 {
                self.lost_again.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One session set up, within the patience: connected, registered or authenticated,
    /// subscribed. A request that fails after the connection was made starts over. The
    /// first set-up waits its turn (`--open-concurrency`), so that opening is a steady
    /// stream the driver can measure step by step; a reconnect waits for one of the more
    /// numerous reconnect turns (`--reconnect-concurrency`).
    async fn set_up(
        &self,
        slot: &Slot,
        connector: &Connector,
        registered: &mut bool,
        first: bool,
    ) -> Option<(Client, levee_client::Deliveries)> {
        let give_up = Instant::now() + PATIENCE;
        while Instant::now() < give_up {
            let turns = if first {
                &self.opening
            } else {
                &self.reconnecting
            };
            let _turn = turns.acquire().await.ok()?;
            let client = match connector
                .connect_patiently(slot.identity.clone(), give_up, || {
                    self.turned_away.fetch_add(1, Ordering::Relaxed);
                })
                .await
            {
                Ok(client) => client,
                Err(e) => {
                    eprintln!("worker: gave up connecting: {e}");
                    return None;
                }
            };
            let proved = if *registered {
                client.authenticate().await
            } else {
                client.register().await.map(|_| ())
            };
            let subscribed = match proved {
                Ok(()) => {
                    *registered = true;
                    client.subscribe().await
                }
                Err(e) => Err(e),
            };
            match subscribed {
                Ok(inbox) => return Some((client, inbox)),
                Err(e) => {
                    // The first few, for whoever reads the run's output.
                    if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("worker: set-up failed, trying again: {e}");
                    }
                    drop(_turn);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        None
    }

    /// Records a trickle envelope's latency, while a trickle is measured.
    fn record(&self, ciphertext: &[u8]) {
        if ciphertext.len() != 16 || &ciphertext[8..] != TRICKLE_MAGIC {
            return;
        }
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let sent = u64::from_be_bytes(ciphertext[..8].try_into().unwrap_or_default());
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(now.saturating_sub(sent) / 1_000);
    }

    /// Open-loop sends at `rate` for `seconds`, from held connection i to i + 1 in turn;
    /// each timed from its scheduled start.
    async fn trickle(self: &Arc<Self>, rate: f64, seconds: f64) -> Trickle {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut report = Trickle::default();
        if slots.len() < 2 || rate <= 0.0 {
            return report;
        }
        self.latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.measuring.store(true, Ordering::Relaxed);
        let period = Duration::from_secs_f64(1.0 / rate);
        let ticks = (rate * seconds).round() as u32;
        let begin = tokio::time::Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut sends = tokio::task::JoinSet::new();
        for k in 0..ticks {
            let due = begin + period * k;
            tokio::time::sleep_until(due).await;
            let i = k as usize % slots.len();
            let to: AccountId = slots[(i + 1) % slots.len()].identity.account();
            let Some(client) = slots[i].client() else {
                report.skipped += 1;
                continue;
            };
            let scheduled = due.into_std().saturating_duration_since(self.epoch);
            let mut payload = Vec::with_capacity(16);
            payload.extend_from_slice(&(scheduled.as_nanos() as u64).to_be_bytes());
            payload.extend_from_slice(TRICKLE_MAGIC);
            let (sent, refused) = (sent.clone(), refused.clone());
            sends.spawn(async move {
                let counter = match client.send(&to, payload).await {
                    Ok(_) => sent,
                    Err(_) => refused,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            });
            while sends.try_join_next().is_some() {}
        }
        while sends.join_next().await.is_some() {}
        tokio::time::sleep(TRICKLE_GRACE).await;
        self.measuring.store(false, Ordering::Relaxed);
        report.sent = sent.load(Ordering::Relaxed);
        report.refused = refused.load(Ordering::Relaxed);
        report.latencies_us =
            std::mem::take(&mut *self.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
        report
    }
}
