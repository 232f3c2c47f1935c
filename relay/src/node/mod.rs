//! The relay node runtime: the I/O shell around the session rules, the mailbox store and
//! the delivery log.

mod accounts;
mod admin;
mod admission;
mod connection;
mod delivery;
mod door;
mod endpoint;
mod fault;
mod guard;
mod holdings;
mod line_board;
mod membership;
mod quota;
mod sieve;
mod window;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use levee_queue::{DeliveryLog, EmbeddedLog, LogError};
use levee_sharding::{EmbeddedMailboxStore, EmbeddedStore, MailboxStore, StoreError};
use ring::rand::SystemRandom;
use tokio::task::JoinSet;
use tokio_util_shim::CancelToken;

use crate::cluster::{
    LocalLeases, LocalRoster, NodeInfo, NodeState, Roster, RosterError, ShardLeases,
};
use crate::config::NodeConfig;
use crate::tls::{Fingerprint, ServerCert, TlsError};

pub(crate) use admin::ClusterAdmin;
pub(crate) use admission::cluster_key;
pub(crate) use delivery::Presence;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Certificates could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The mailbox store failed to open.
    #[error("mailbox store: {0}")]
    Store(#[from] StoreError),
    /// The delivery log failed to open.
    #[error("delivery log: {0}")]
    Log(#[from] LogError),
    /// The cluster roster could not be joined.
    #[error("cluster roster: {0}")]
    Roster(#[from] RosterError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What every connection of a node shares.
pub(crate) struct Shared {
    pub config: NodeConfig,
    pub admission: admission::Admission,
    pub guard: guard::Guard,
    /// Drops new connections beyond the handshake rate before QUIC sees them.
    pub door: Arc<door::Door>,
    pub store: Arc<dyn MailboxStore>,
    pub log: Arc<dyn DeliveryLog>,
    /// Which node delivers each shard now (see `cluster::lease`).
    pub leases: Arc<dyn ShardLeases>,
    /// The shards whose leases the delivery worker holds now (for `/admin/cluster`).
    pub held: std::sync::Mutex<Vec<levee_sharding::ShardId>>,
    pub presence: Presence,
    pub known_accounts: accounts::KnownAccounts,
    /// Recipients' recent quota usage, so a send needs no store read (see `quota`).
    pub quota: quota::QuotaBook,
    pub rng: SystemRandom,
    pub connections: AtomicUsize,
    /// Guest sessions open (clients whose owner they cannot reach; see `connection`).
    pub guests: AtomicUsize,
    pub metrics: crate::telemetry::NodeMetrics,
    pub membership: Arc<membership::Membership>,
    /// Set once to start draining (admin port, or the embedded cluster).
    pub drain: tokio::sync::watch::Sender<bool>,
    /// The embedded cluster this node runs in, for `POST /admin/nodes`.
    pub cluster_admin: std::sync::OnceLock<std::sync::Weak<dyn ClusterAdmin>>,
    /// The backend stall a drill may ask for; `None` unless `fault_injection` is on.
    pub stalls: Option<fault::Stalls>,
}

/// Asks a running node to drain: hand its shards over, move its clients, leave.
#[derive(Clone)]
pub struct DrainHandle(Arc<Shared>);

impl std::fmt::Debug for DrainHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DrainHandle")
            .field(&self.0.membership.name())
            .finish()
    }
}

impl DrainHandle {
    /// Starts draining; [`Node::run`] returns once the node has left. Idempotent.
    pub fn drain(&self) {
        self.0.drain.send_replace(true);
    }
}

/// A relay node, bound and ready to run.
pub struct Node {
    endpoint: quinn::Endpoint,
    admin: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    fingerprint: Fingerprint,
    generated_cert: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the embedded store in `config.data_dir`, loads or generates the certificate and
    /// binds the QUIC endpoint. Nothing is served until [`run`](Self::run).
    pub fn open(config: NodeConfig) -> Result<Self, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        let db = EmbeddedStore::open(&config.data_dir.join("db"))?;
        let store = Arc::new(EmbeddedMailboxStore::open(&db)?);
        let log = Arc::new(EmbeddedLog::open(&db, config.shards)?);
        Self::with_backends(config, store, log)
    }

    /// Like [`open`](Self::open) with the given mailbox store and delivery log, as a
    /// cluster of one.
    pub fn with_backends(
        config: NodeConfig,
        store: Arc<dyn MailboxStore>,
        log: Arc<dyn DeliveryLog>,
    ) -> Result<Self, NodeError> {
        Self::in_cluster(
            config,
            store,
            log,
            Arc::new(LocalRoster::default()),
            Arc::new(LocalLeases::default()),
        )
    }

    /// A node of the cluster whose members are listed in `roster`, sharing `store`, `log`
    /// and the shards' delivery `leases` with them. It joins the roster when it starts
    /// running.
    pub fn in_cluster(
        config: NodeConfig,
        store: Arc<dyn MailboxStore>,
        log: Arc<dyn DeliveryLog>,
        roster: Arc<dyn Roster>,
        leases: Arc<dyn ShardLeases>,
    ) -> Result<Self, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        if log.shards() != config.shards {
            return Err(NodeError::Config(format!(
                "the delivery log has {} shards but the configuration says {}",
                log.shards(),
                config.shards
            )));
        }
        let (cert, generated_cert) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => (ServerCert::from_files(cert, key)?, false),
            _ => ServerCert::load_or_generate(&config.data_dir.join("tls"))?,
        };
        let mut server_config =
            quinn::ServerConfig::with_crypto(Arc::new(cert.quic_server_config()?));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                Duration::from_secs(config.idle_timeout_secs)
                    .try_into()
                    .map_err(|_| NodeError::Config("idle_timeout_secs is too large".into()))?,
            ))
            // One session stream per connection; more are refused by QUIC itself.
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into());
        server_config.transport_config(Arc::new(transport));
        // No QUIC address-validation tokens (NEW_TOKEN frames): the only tokens in new
        // connections' first packets are then door passes (and Retry tokens, which come
        // with an id this node issued), so the kernel's sieve can pass every Initial with a
        // token for the door to check (`node::sieve`). This is quinn's default without its
        // `bloom` feature; said here so that enabling the feature changes nothing.
        let mut validation = quinn::ValidationTokenConfig::default();
        validation.sent(0);
        server_config.validation_token_config(validation);
        let secret = admission::cluster_key(&config).map_err(NodeError::Config)?;
        // With fault injection on, the backends are reached through a stall switch.
        let stalls = config.fault_injection.then(fault::Stalls::default);
        let (store, log): (Arc<dyn MailboxStore>, Arc<dyn DeliveryLog>) = match &stalls {
            Some(stalls) => (
                Arc::new(fault::StallingStore {
                    inner: store,
                    stall: stalls.store.clone(),
                }),
                Arc::new(fault::StallingLog {
                    inner: log,
                    stall: stalls.log.clone(),
                }),
            ),
            None => (store, log),
        };
        let roster: Arc<dyn Roster> = match &stalls {
            Some(stalls) => Arc::new(fault::StallingRoster {
                inner: roster,
                reads: stalls.roster_reads.clone(),
                writes: stalls.roster_writes.clone(),
            }),
            None => roster,
        };
        // Leases live in the database the store does: they stall with it.
        let leases: Arc<dyn ShardLeases> = match &stalls {
            Some(stalls) => Arc::new(fault::StallingLeases {
                inner: leases,
                stall: stalls.store.clone(),
            }),
            None => leases,
        };
        let door = Arc::new(door::Door::new(crate::admission::PassKey::new(&secret)));
        let guard = guard::Guard::new(&config);
        {
            let (in_progress, max) = guard.handshake_budget();
            door.limit_handshakes(in_progress, max);
        }
        let endpoint = endpoint::endpoint(
            config.listen,
            server_config,
            door.clone(),
            &secret,
            &config.node_name,
        )
        .map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        let address = match config.advertise_address {
            Some(a) => a,
            None => endpoint.local_addr().map_err(|source| NodeError::Bind {
                addr: config.listen,
                source,
            })?,
        };
        let me = NodeInfo {
            name: config.node_name.clone(),
            address,
            fingerprint: cert.fingerprint(),
            region: config.region.clone(),
            weight: config.weight,
            state: NodeState::Active,
        };
        let admin = match config.admin_listen {
            Some(addr) => {
                // Before the node's metric handles exist, or they would record nothing.
                crate::telemetry::install();
                let listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| NodeError::Bind { addr, source })?;
                Some(listener)
            }
            None => None,
        };
        let metrics = crate::telemetry::NodeMetrics::new(&config.node_name);
        let membership = Arc::new(membership::Membership::new(
            roster,
            me,
            config.placement(),
            Duration::from_millis(config.failure_timeout_ms),
            metrics.clone(),
        ));
        let admission = admission::Admission::new(
            &config,
            &secret,
            admission::node_id(&config.node_name),
            metrics.clone(),
        );
        let quota = quota::QuotaBook::new(quota::Limits {
            max_envelopes: config.mailbox_max_envelopes,
            max_bytes: config.mailbox_max_bytes,
        });
        Ok(Self {
            endpoint,
            admin,
            fingerprint: cert.fingerprint(),
            generated_cert,
            shared: Arc::new(Shared {
                admission,
                guard,
                door,
                config,
                store,
                log,
                leases,
                held: std::sync::Mutex::default(),
                presence: Presence::default(),
                known_accounts: accounts::KnownAccounts::default(),
                quota,
                rng: SystemRandom::new(),
                connections: AtomicUsize::new(0),
                guests: AtomicUsize::new(0),
                metrics,
                membership,
                drain: tokio::sync::watch::Sender::new(false),
                cluster_admin: std::sync::OnceLock::new(),
                stalls,
            }),
        })
    }

    /// The bound address (useful after listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // The endpoint owns a bound UDP socket; asking for its address cannot fail.
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// The bound admin (metrics) address, if the node has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The SHA-256 fingerprint of the node's certificate, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The node's name in its cluster.
    pub fn name(&self) -> String {
        self.shared.membership.name()
    }

    /// A handle to make the running node drain and leave.
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle(self.shared.clone())
    }

    /// Lets the admin port add nodes to the embedded cluster this node runs in.
    pub(crate) fn set_cluster_admin(&self, cluster: std::sync::Weak<dyn ClusterAdmin>) {
        let _ = self.shared.cluster_admin.set(cluster);
    }

    /// Whether this start generated a new self-signed certificate.
    pub fn generated_certificate(&self) -> bool {
        self.generated_cert
    }

    /// Joins the cluster, then serves clients and delivers envelopes for the shards it owns
    /// until `shutdown` completes or a drain finishes; then leaves the roster, closes
    /// connections and returns once storage is synced.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let (joined, _) = tokio::sync::oneshot::channel();
        self.run_announcing(shutdown, joined).await
    }

    /// [`run`](Self::run), saying on `joined` once the node is in the roster and has its
    /// first view (what a process announcing "ready" waits for).
    pub async fn run_announcing(
        mut self,
        shutdown: impl Future<Output = ()>,
        joined: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), NodeError> {
        let membership = self.shared.membership.clone();
        membership.join().await?;
        let config = &self.shared.config;
        let one_line = config.registration_line_sync_ms > 0;
        if one_line {
            self.shared.admission.coordinate(
                &config.node_name,
                Duration::from_millis(config.registration_line_sync_ms),
                Duration::from_millis(config.failure_timeout_ms),
            );
            // Before serving anyone: until this node has read the board it lets nobody in
            // from its line, since it cannot know whether a line stands elsewhere.
            if let Err(e) = line_board::exchange(&self.shared).await {
                tracing::warn!(error = %e, "cannot read the line board yet");
            }
        }
        let _ = joined.send(());
        let stop = CancelToken::default();
        let mut tasks = JoinSet::new();
        tasks.spawn(membership::keep(
            membership.clone(),
            Duration::from_millis(self.shared.config.heartbeat_ms),
            stop.clone(),
        ));
        tasks.spawn(delivery::deliver(self.shared.clone(), stop.clone()));
        tasks.spawn(delivery::sweep_expired(self.shared.clone(), stop.clone()));
        tasks.spawn(tick_admission(self.shared.clone(), stop.clone()));
        if one_line {
            tasks.spawn(line_board::keep(
                self.shared.clone(),
                Duration::from_millis(self.shared.config.heartbeat_ms),
                stop.clone(),
            ));
        }
        if let Some(listener) = self.admin.take() {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    tasks.spawn(admin::serve(listener, self.shared.clone(), stop.clone()));
                }
                Err(e) => tracing::error!(error = %e, "admin port unavailable"),
            }
        }

        let mut connections = JoinSet::new();
        let mut gave_way = membership.subscribe_gave_way();
        let mut drain = self.shared.drain.subscribe();
        let mut drained_by: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(Duration::from_millis(100));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Ok(()) = gave_way.changed() => {
                    if gave_way.borrow().is_some() {
                        break;
                    }
                }
                true = drain_requested(&mut drain), if drained_by.is_none() => {
                    tracing::info!(node = %membership.name(), "draining");
                    if let Err(e) = membership.drain().await {
                        tracing::error!(error = %e, "cannot mark the node draining");
                    }
                    drained_by = Some(tokio::time::Instant::now()
                        + Duration::from_millis(self.shared.config.drain_grace_ms));
                }
                _ = check.tick(), if drained_by.is_some() => {
                    // Connections learn from the new placement that their mailboxes moved
                    // and go; the node leaves when they have, or when the grace is over.
                    let idle = self.shared.connections.load(Ordering::Relaxed) == 0;
                    if idle || drained_by.is_some_and(|t| tokio::time::Instant::now() >= t) {
                        break;
                    }
                }
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let active = self.shared.connections.load(Ordering::Relaxed);
                    // Refusing or asking to retry costs one small packet; accepting costs a
                    // handshake.
                    let gate = if active >= self.shared.config.max_connections as usize {
                        guard::Gate::Refuse
                    } else {
                        self.shared.guard.gate(
                            incoming.remote_address(),
                            incoming.remote_address_validated(),
                        )
                    };
                    match gate {
                        guard::Gate::Accept => {
                            let handshaking = self.shared.guard.handshaking();
                            connections.spawn(connection::serve(incoming, self.shared.clone(), handshaking));
                        }
                        guard::Gate::Retry => {
                            if let Err(e) = incoming.retry() {
                                e.into_incoming().refuse();
                            }
                        }
                        guard::Gate::Refuse => incoming.refuse(),
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let usurped = gave_way.borrow().clone();
        if usurped.is_none() {
            tracing::info!(node = %membership.name(), "leaving the cluster and shutting down");
            if let Err(e) = membership.leave().await {
                tracing::warn!(error = %e, "could not leave the roster; the others will time it out");
            }
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"node shutting down");
        stop.cancel();
        connections.shutdown().await;
        while tasks.join_next().await.is_some() {}
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        match usurped {
            Some((name, by)) => Err(NodeError::Roster(RosterError::NameInUse { name, by })),
            None => Ok(()),
        }
    }
}

/// Resolves (true) once a drain was asked for.
async fn drain_requested(drain: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    drain.wait_for(|d| *d).await.is_ok()
}

/// Probes how late the scheduler runs tasks (see `AdmissionController::record_lag`), and
/// closes admission windows and moves the waiting line even when no request arrives.
async fn tick_admission(shared: Arc<Shared>, stop: CancelToken) {
    const PROBE: Duration = Duration::from_millis(10);
    for n in 1u64.. {
        let asleep = std::time::Instant::now();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE) => {}
        }
        // The timer wheel has millisecond ticks: up to about a millisecond late is on time.
        let lag = asleep
            .elapsed()
            .saturating_sub(PROBE + Duration::from_millis(1));
        shared.admission.record_scheduling_lag(lag);
        shared.door.set_rate(shared.admission.handshake_rate());
        if n % 10 == 0 {
            shared.metrics.door(
                (shared.door.dropped(), shared.door.dropped_full()),
                shared.door.passed(),
                shared.door.kernel_share(),
            );
            shared.admission.tick(shared.door.pressure());
        }
        if n % 1000 == 0 {
            shared.guard.forget_idle();
        }
    }
}

/// A tiny cancellation token (a `watch` channel), so the crate does not need tokio-util
/// for one type.
mod tokio_util_shim {
    use tokio::sync::watch;

    #[derive(Clone)]
    pub struct CancelToken(std::sync::Arc<watch::Sender<bool>>);

    impl Default for CancelToken {
        fn default() -> Self {
            Self(std::sync::Arc::new(watch::Sender::new(false)))
        }
    }

    impl CancelToken {
        pub fn cancel(&self) {
            self.0.send_replace(true);
        }

        pub fn is_cancelled(&self) -> bool {
            *self.0.borrow()
        }

        pub async fn cancelled(&self) {
            let mut rx = self.0.subscribe();
            // Err means the sender is gone, which also means "stop".
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}
