//! The Levee client library: connect, register or log in, send, receive, acknowledge.
//!
//! ```no_run
//! # async fn demo(fingerprint: levee_client::Fingerprint, friend: levee_client::AccountId)
//! #     -> Result<(), levee_client::ClientError> {
//! use levee_client::{Client, ClientConfig, Identity, Trust};
//!
//! let config = ClientConfig::new("127.0.0.1:4433".parse().unwrap(), Trust::Fingerprint(fingerprint));
//! let client = Client::connect(&config, Identity::generate().unwrap()).await?;
//! client.register().await?;
//! client.send(&friend, b"ciphertext".to_vec()).await?;
//! let mut inbox = client.subscribe().await?;
//! while let Some(envelope) = inbox.next().await {
//!     client.ack(&[envelope.envelope_id]).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! Requests are pipelined: a `Client` is shared by reference across tasks, and every call
//! is one request in flight on the same connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, oneshot, watch};

mod inbox;
pub mod retry;
pub mod tls;

use inbox::{Inbox, InboxSender, Overflow, Taken};
use levee_protocol::identity::{Purpose, transcript};
use levee_protocol::wire::pb::{self, ErrorCode, client_frame::Body, response::Result as R};
use levee_protocol::wire::{EXPORTER_LABEL, FrameDecoder, MAX_ACK_IDS, encode_frame};
use levee_protocol::work::solve_work;
use tls::{MismatchFlag, quic_client_config};

pub use levee_protocol::{AccountId, Fingerprint, Identity};
pub use tls::{Trust, TrustError};

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The node's UDP address.
    pub server: SocketAddr,
    /// The TLS server name to verify (CA mode); ignored when pinning a fingerprint.
    pub server_name: String,
    /// How to trust the node's certificate.
    pub trust: Trust,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Give up connecting to the node a login redirect names after this long (at most
    /// `connect_timeout`), and ask the node that redirected to serve the session instead
    /// (a guest session: see `Authenticate.unreachable` in the protocol). Shorter than a
    /// first contact's: the redirecting node vouches that the owner is up, so silence means
    /// the path from here is broken, and the session is served either way.
    pub redirect_timeout: Duration,
    /// Give up on one request after this long.
    pub request_timeout: Duration,
    /// While a request waits: after this long without a single datagram from the node, the
    /// client sends a probe (a `Ping`), and when the node does not even acknowledge that —
    /// at the QUIC level, which a live node does within milliseconds however busy its
    /// backends are — within as long again, the connection is taken for dead. A node that
    /// crashed says nothing, and QUIC alone would notice only at its idle timeout (30 s).
    pub silence_timeout: Duration,
    /// Most deliveries this client holds unacknowledged (`Subscribe.window`): the node
    /// sends no more until acks make room, and [`Deliveries`] buffers at most this many.
    /// An application that takes deliveries and acknowledges them later needs a window
    /// larger than the most it keeps unacknowledged. At least 1 (0 counts as 1).
    pub delivery_window: u32,
}

impl ClientConfig {
    /// Defaults: server name `localhost`, 5 s to connect (1.5 s to a node a redirect
    /// names), 30 s per request, a silent node taken for dead after 2 × 2.5 s while a
    /// request waits, a delivery window of 1024 envelopes.
    pub fn new(server: SocketAddr, trust: Trust) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            trust,
            connect_timeout: Duration::from_secs(5),
            redirect_timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_secs(30),
            silence_timeout: Duration::from_millis(2500),
            delivery_window: DEFAULT_DELIVERY_WINDOW,
        }
    }
}

/// The delivery window a client asks for unless configured otherwise: the node's default
/// limit, so a default client gets all the node allows.
pub const DEFAULT_DELIVERY_WINDOW: u32 = 1024;

/// Opens client connections to one node over one UDP socket: many clients (a bot fleet, a
/// load generator, a chaos drill) without a socket each.
#[derive(Clone, Debug)]
pub struct Connector {
    endpoint: quinn::Endpoint,
    config: ClientConfig,
    quinn_config: quinn::ClientConfig,
    mismatch: MismatchFlag,
}

impl Connector {
    /// A connector for `config`'s node, with its own UDP socket.
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let (client_config, mismatch) = quinn_config(&config.trust)?;
        let bind: SocketAddr = if config.server.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .expect("a literal socket address");
        let endpoint = endpoint(bind).map_err(|e| ClientError::Unreachable {
            server: config.server,
            reason: format!("cannot open a UDP socket: {e}"),
        })?;
        Ok(Self {
            endpoint,
            config: config.clone(),
            quinn_config: client_config,
            mismatch,
        })
    }

    /// Connects one client for `identity` (not yet authenticated). A node that refuses
    /// connections because it is overloaded is tried again after 0.5, 1 and 2 s (plus up to
    /// 100% jitter), then the caller gets [`ClientError::Busy`].
    pub async fn connect(&self, identity: Identity) -> Result<Client, ClientError> {
        self.connect_until(identity, None, || {}).await
    }

    /// Like [`connect`](Self::connect), for someone who would rather wait than fail — a
    /// newcomer during a signup wave: an attempt the node refused, or did not answer within
    /// `connect_timeout` (a node under a wave drops new connections beyond what it can take
    /// without a word, see the node's door), is followed by a back-off (0.5 s doubling to at
    /// most 8 s, plus up to 100% jitter: [`retry::ConnectBackoff`]) and another attempt, until
    /// `give_up`. The growing back-off keeps a crowd of patient clients from becoming a
    /// retry storm. `on_refused` is called for each attempt turned away either way. An attempt still under way at
    /// `give_up` is dropped then ([`ClientError::Unreachable`]; not counted as turned away).
    pub async fn connect_patiently(
        &self,
        identity: Identity,
        give_up: Instant,
        on_refused: impl FnMut(),
    ) -> Result<Client, ClientError> {
        self.connect_until(identity, Some(give_up), on_refused)
            .await
    }

    async fn connect_until(
        &self,
        identity: Identity,
        give_up: Option<Instant>,
        mut on_refused: impl FnMut(),
    ) -> Result<Client, ClientError> {
        let mut backoff = retry::ConnectBackoff::default();
        let mut refusals = 0;
        loop {
            let establish = Client::establish(
                &self.endpoint,
                &self.config,
                presenting_pass(self.quinn_config.clone(), &identity),
                &self.mismatch,
                identity.clone(),
            );
            let attempt = match give_up {
                // An attempt may take `connect_timeout`; patience ends at the deadline, not
                // that long after it. What the node would have answered is moot, and the
                // attempt, cut short, is not counted as turned away.
                Some(t) => match tokio::time::timeout_at(t.into(), establish).await {
                    Ok(attempt) => attempt,
                    Err(_) => {
                        return Err(ClientError::Unreachable {
                            server: self.config.server,
                            reason: "no answer before the deadline".into(),
                        });
                    }
                },
                None => establish.await,
            };
            let turned_away = match &attempt {
                Err(ClientError::Busy) => true,
                // Patience has a deadline, so a node that is really gone costs only time.
                Err(ClientError::Unreachable { .. }) => give_up.is_some(),
                _ => false,
            };
            if !turned_away {
                return attempt;
            }
            on_refused();
            refusals += 1;
            let mut b = [0u8; 1];
            let _ = SystemRandom::new().fill(&mut b);
            let pause = backoff.pause(b[0]);
            let out_of_patience = match give_up {
                Some(t) => Instant::now() + pause >= t,
                None => refusals > MAX_RETRIES,
            };
            if out_of_patience {
                return attempt;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node did not answer (wrong address, not running, firewall).
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// The address tried.
        server: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The node's certificate is not the pinned one.
    #[error("the server's certificate does not match the pinned fingerprint")]
    CertificateMismatch,
    /// TLS or QUIC set-up failed for another reason.
    #[error("TLS/QUIC: {0}")]
    Tls(String),
    /// The node refused new connections for now (it is overloaded); try again later.
    #[error("the server is busy and refused the connection; try again later")]
    Busy,
    /// The connection ended.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The node answered with an error.
    #[error("server refused: {}: {message}", code.as_str_name())]
    Refused {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// When the server says to come back, if it does.
        retry_after: Option<Duration>,
    },
    /// The node answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A local argument is invalid (e.g. an envelope over the node's limit).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The protocol error code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// An envelope delivered to this client's mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Acknowledge with this id.
    pub envelope_id: u64,
    /// The opaque payload as the sender sent it.
    pub ciphertext: Bytes,
    /// The sender's message id; the same for every copy of a re-sent message.
    pub client_message_id: [u8; 16],
    /// When the relay accepted it (ms since the Unix epoch).
    pub accepted_at_ms: u64,
}

/// The stream of deliveries after [`Client::subscribe`]: the backlog, then live ones. At
/// most [`ClientConfig::delivery_window`] wait here: the node sends more as acks come in.
#[derive(Debug)]
pub struct Deliveries {
    inbox: Arc<Inbox>,
}

impl Deliveries {
    /// The next envelope; `None` once the connection has closed.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.inbox.next(false).await
    }

    /// The next envelope of the backlog — what was in the mailbox when the subscription
    /// started — or `None` once the node says the backlog is drained (`BacklogDone`; at
    /// once for an empty mailbox, without waiting for quiet) or the connection closed.
    /// [`next`](Self::next) then goes on with live deliveries:
    ///
    /// ```no_run
    /// # async fn f(mut inbox: levee_client::Deliveries) {
    /// while let Some(d) = inbox.backlog().await { /* what waited while offline */ }
    /// while let Some(d) = inbox.next().await { /* live */ }
    /// # }
    /// ```
    pub async fn backlog(&mut self) -> Option<Delivery> {
        self.inbox.next(true).await
    }

    /// An envelope that has already arrived, without waiting; for batching acks.
    pub fn try_next(&mut self) -> Option<Delivery> {
        match self.inbox.take(false) {
            Taken::Delivery(d) => Some(d),
            _ => None,
        }
    }
}

/// Retries of one request the node shed (`RATE_LIMITED`) before giving up.
pub const MAX_RETRIES: u32 = 3;

/// The answer to a registration attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The account exists and the session is authenticated as it.
    Registered {
        /// Whether this attempt created it.
        created: bool,
    },
    /// Not yet: a place in the waiting line.
    Queued(Place),
}

/// A place in the registration waiting line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// Present this on the next attempt to keep the place.
    pub ticket: Bytes,
    /// Position in the line.
    pub position: u64,
    /// How many are ahead.
    pub ahead: u64,
    /// When to try again.
    pub retry_after: Duration,
    /// Expected wait for this place at the line's current speed.
    pub estimated_wait: Duration,
}

/// What the node said about an acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckReceipt {
    /// Envelopes deleted.
    pub deleted: u32,
    /// Ids that were not in this mailbox.
    pub unknown_ids: Vec<u64>,
}

/// Reply channels of the requests in flight on one connection; `None` once its reader has
/// stopped, so a request can never wait for an answer nobody will deliver.
type Pending = Mutex<Option<HashMap<u64, oneshot::Sender<pb::Response>>>>;

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The client's mutexes hold plain values replaced whole; a panic cannot tear them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Redirects followed for one login before giving up (a placement that keeps changing).
pub const MAX_REDIRECTS: u32 = 4;

/// What a connection's reader shares with the client.
struct LinkShared {
    pending: Pending,
    /// Where deliveries go. The reader drops it when the connection ends for good, which
    /// ends [`Deliveries`]; after a move, the next connection delivers there instead.
    deliveries: Mutex<Option<InboxSender>>,
    /// Set when the node said the mailbox moved (`ServerFrame.moved`).
    moved: Mutex<Option<pb::Redirect>>,
}

/// One QUIC connection to one node, with its session stream.
struct Link {
    conn: quinn::Connection,
    server: SocketAddr,
    exporter: [u8; 32],
    outbox: mpsc::Sender<Bytes>,
    shared: Arc<LinkShared>,
}

impl Link {
    fn was_moved(&self) -> bool {
        locked(&self.shared.moved).is_some()
    }

    fn closed(&self) -> ClientError {
        ClientError::Closed(
            self.conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "stream ended".into()),
        )
    }
}

/// The answer to a `Register`/`Authenticate` on one connection.
enum Proved {
    Done(Registration),
    Redirect(pb::Redirect),
}

/// A session with the relay cluster, acting as one identity.
///
/// It follows the cluster transparently: a login answered with a redirect is repeated on
/// the mailbox's owner, and when the node says mid-session that the mailbox moved, the
/// client connects to the new owner, authenticates and subscribes again, and requests that
/// are safe to repeat (send with its message id, subscribe, ack, ping) are repeated there.
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// The (possibly shared) socket, also used for the connections redirects lead to.
    endpoint: quinn::Endpoint,
    config: ClientConfig,
    identity: Identity,
    link: Mutex<Arc<Link>>,
    /// Bumped whenever a move has been followed (or given up), for requests waiting on it.
    relinked: watch::Sender<u64>,
    moves: mpsc::UnboundedSender<()>,
    /// What `subscribe` hands out, until it does.
    deliveries: Mutex<Option<Arc<Inbox>>>,
    next_id: AtomicU64,
    max_envelope_bytes: Mutex<Option<u32>>,
    rng: SystemRandom,
    authenticated: AtomicBool,
    subscribed: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("account", &self.inner.identity.account())
            .field("server", &self.server())
            .finish_non_exhaustive()
    }
}

/// A client QUIC endpoint on a socket with large kernel buffers (see `levee_protocol::udp`).
fn endpoint(bind: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    let socket = levee_protocol::udp::bind(bind)?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
}

/// The quinn configuration for `trust`, and the flag that tells a fingerprint mismatch.
fn quinn_config(trust: &Trust) -> Result<(quinn::ClientConfig, MismatchFlag), ClientError> {
    let (crypto, mismatch) =
        quic_client_config(trust).map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Keeps an idle subscription alive through the node's idle timeout.
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    client_config.transport_config(Arc::new(transport));
    Ok((client_config, mismatch))
}

/// `quinn_config`, putting `identity`'s door pass, if it has one, in the first packet of
/// each connection made with it (the QUIC token field; see `Identity`).
fn presenting_pass(
    mut quinn_config: quinn::ClientConfig,
    identity: &Identity,
) -> quinn::ClientConfig {
    if let Some(pass) = identity.door_pass() {
        quinn_config.token_store(Arc::new(DoorPass(pass)));
    }
    quinn_config
}

/// A QUIC token store holding one door pass, presented on every connection. QUIC's own
/// tokens (NEW_TOKEN frames) are not kept: Levee nodes send none.
struct DoorPass(Bytes);

impl quinn::TokenStore for DoorPass {
    fn insert(&self, _server_name: &str, _token: Bytes) {}

    /// The same pass every time. QUIC advises against reusing a token, because it links a
    /// client's connections; a pass is presented only by a client about to prove its
    /// account on the connection anyway.
    fn take(&self, _server_name: &str) -> Option<Bytes> {
        Some(self.0.clone())
    }
}

/// The request id of the ping that announces a session stream: one no request uses (ids
/// count up from 1), so the reader drops its answer.
const ANNOUNCING_PING_ID: u64 = u64::MAX;
/// Frames a connection queues for its writer before a request waits for room: far more
/// than the node reads at once (`max_requests_in_flight`, 256 by default), so it only bites
/// when the node has stopped reading, and then memory stays bounded.
const OUTBOX_FRAMES: usize = 4096;

/// Opens a connection and its session stream, and starts its reader and writer.
async fn open_link(
    endpoint: &quinn::Endpoint,
    config: &ClientConfig,
    quinn_config: quinn::ClientConfig,
    mismatch: &MismatchFlag,
    deliveries: InboxSender,
    moves: mpsc::UnboundedSender<()>,
) -> Result<Arc<Link>, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        server: config.server,
        reason,
    };
    let connecting = endpoint
        .connect_with(quinn_config, config.server, &config.server_name)
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Err(_) => {
            return Err(unreachable(format!(
                "no answer within {:?}",
                config.connect_timeout
            )));
        }
        Ok(Err(e)) => return Err(connect_error(e, mismatch, config.server)),
        Ok(Ok(conn)) => conn,
    };
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| ClientError::Tls("TLS exporter unavailable".into()))?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Closed(e.to_string()))?;
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX_FRAMES);
    let shared = Arc::new(LinkShared {
        pending: Mutex::new(Some(HashMap::new())),
        deliveries: Mutex::new(Some(deliveries)),
        moved: Mutex::new(None),
    });
    // A QUIC stream is news to the peer only once something is sent on it, and a node closes
    // a connection whose session stream it has not seen within its handshake timeout. So the
    // stream is announced now, with a ping, rather than by the first request, which a caller
    // may make much later.
    let _ = outbox.try_send(encode_frame(&pb::ClientFrame {
        request_id: ANNOUNCING_PING_ID,
        body: Some(Body::Ping(pb::Ping {})),
    }));
    tokio::spawn(write_loop(send, outbox_rx));
    tokio::spawn(read_loop(recv, shared.clone(), moves));
    Ok(Arc::new(Link {
        conn,
        server: config.server,
        exporter,
        outbox,
        shared,
    }))
}

/// Follows moves for the client behind `inner` until it is dropped.
async fn follow_moves(inner: std::sync::Weak<Inner>, mut moves: mpsc::UnboundedReceiver<()>) {
    while moves.recv().await.is_some() {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.follow().await;
        inner.relinked.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Client {
    /// Connects and opens the session stream. Does not authenticate: call
    /// [`register`](Self::register) or [`authenticate`](Self::authenticate) next.
    ///
    /// Opens a UDP socket for this client; to run many clients over one socket, use a
    /// [`Connector`].
    pub async fn connect(config: &ClientConfig, identity: Identity) -> Result<Self, ClientError> {
        Connector::new(config)?.connect(identity).await
    }

    async fn establish(
        endpoint: &quinn::Endpoint,
        config: &ClientConfig,
        quinn_config: quinn::ClientConfig,
        mismatch: &MismatchFlag,
        identity: Identity,
    ) -> Result<Self, ClientError> {
        let inbox = Inbox::new(config.delivery_window);
        let (moves_tx, moves_rx) = mpsc::unbounded_channel();
        let link = open_link(
            endpoint,
            config,
            quinn_config,
            mismatch,
            inbox.sender(),
            moves_tx.clone(),
        )
        .await?;
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            config: config.clone(),
            identity,
            link: Mutex::new(link),
            relinked: watch::Sender::new(0),
            moves: moves_tx,
            deliveries: Mutex::new(Some(inbox)),
            next_id: AtomicU64::new(1),
            max_envelope_bytes: Mutex::new(None),
            rng: SystemRandom::new(),
            authenticated: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
        });
        tokio::spawn(follow_moves(Arc::downgrade(&inner), moves_rx));
        Ok(Self { inner })
    }

    /// The account this client acts as.
    pub fn account(&self) -> AccountId {
        self.inner.identity.account()
    }

    /// The node this client is connected to now (after any redirects and moves).
    pub fn server(&self) -> SocketAddr {
        self.inner.link().server
    }

    /// Sends one request and waits for its answer. Error answers are returned as
    /// [`ClientError::Refused`]. If the mailbox moves while it is in flight, a request that
    /// is safe to repeat is repeated on the new owner.
    pub async fn request(&self, body: Body) -> Result<R, ClientError> {
        let mut moves = 0;
        loop {
            let link = self.inner.link();
            let mut relinked = self.inner.relinked.subscribe();
            match self.inner.request_on(&link, body.clone()).await {
                Err(ClientError::Closed(_))
                    if link.was_moved() && replayable(&body) && moves < MAX_REDIRECTS =>
                {
                    moves += 1;
                    if Arc::ptr_eq(&self.inner.link(), &link) {
                        let wait = self.inner.config.connect_timeout * 2;
                        let _ = tokio::time::timeout(wait, relinked.changed()).await;
                    }
                    if Arc::ptr_eq(&self.inner.link(), &link) {
                        return Err(link.closed());
                    }
                }
                other => return other,
            }
        }
    }

    /// One registration attempt, presenting `ticket` from an earlier [`Place`] if there is
    /// one: either registered (and the session authenticated), or a place in the line.
    pub async fn register_once(&self, ticket: Option<Bytes>) -> Result<Registration, ClientError> {
        self.inner.prove(Purpose::Register, ticket).await
    }

    /// Registers this identity's account (idempotent) and authenticates the session,
    /// waiting in line as long as the node says; see [`register_waiting`](Self::register_waiting).
    /// Returns whether the account was created now.
    pub async fn register(&self) -> Result<bool, ClientError> {
        self.register_waiting(|_| {}).await
    }

    /// Like [`register`](Self::register), calling `on_wait` with each place in line the
    /// node hands out (to show "position N, about T s"). Comes back when the node says, with
    /// a little extra jitter, and keeps its place by presenting the ticket.
    pub async fn register_waiting(
        &self,
        mut on_wait: impl FnMut(&Place),
    ) -> Result<bool, ClientError> {
        let mut ticket = None;
        loop {
            match self.register_once(ticket.take()).await? {
                Registration::Registered { created } => return Ok(created),
                Registration::Queued(place) => {
                    on_wait(&place);
                    tokio::time::sleep(self.inner.jittered(place.retry_after)).await;
                    ticket = Some(place.ticket);
                }
            }
        }
    }

    /// Authenticates the session as this identity's existing account.
    pub async fn authenticate(&self) -> Result<(), ClientError> {
        self.inner
            .obeying_retry_after(|| self.inner.prove(Purpose::Authenticate, None))
            .await
            .map(|_| ())
    }

    /// Sends an envelope with a fresh random client message id. Returns the relay's
    /// envelope id once the envelope is durable.
    pub async fn send(
        &self,
        to: &AccountId,
        ciphertext: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let mut id = [0u8; 16];
        self.inner
            .rng
            .fill(&mut id)
            .map_err(|_| ClientError::Invalid("no randomness".into()))?;
        self.send_with_id(to, ciphertext, id).await
    }

    /// Sends with a chosen client message id: re-sending the same id (e.g. after a lost
    /// answer) stores the envelope once.
    pub async fn send_with_id(
        &self,
        to: &AccountId,
        ciphertext: impl Into<Bytes>,
        client_message_id: [u8; 16],
    ) -> Result<u64, ClientError> {
        let ciphertext = ciphertext.into();
        let limit = *locked(&self.inner.max_envelope_bytes);
        if let Some(limit) = limit.filter(|l| ciphertext.len() > *l as usize) {
            return Err(ClientError::Invalid(format!(
                "envelope of {} bytes exceeds the server's limit of {limit}",
                ciphertext.len()
            )));
        }
        let body = Body::Send(pb::Send {
            recipient: Bytes::copy_from_slice(to.as_bytes()),
            ciphertext,
            client_message_id: Bytes::copy_from_slice(&client_message_id),
        });
        match self
            .inner
            .obeying_retry_after(|| self.request(body.clone()))
            .await?
        {
            R::SendOk(ok) => Ok(ok.envelope_id),
            other => Err(unexpected(&other)),
        }
    }

    /// Subscribes to this account's mailbox. Can be called once per client.
    pub async fn subscribe(&self) -> Result<Deliveries, ClientError> {
        let taken = || locked(&self.inner.deliveries).is_none();
        if taken() {
            return Err(ClientError::Invalid("already subscribed".into()));
        }
        match self
            .inner
            .obeying_retry_after(|| self.request(Body::Subscribe(self.inner.subscription())))
            .await?
        {
            R::SubscribeOk(_) => {
                // From now on a move re-subscribes on the new owner.
                self.inner.subscribed.store(true, Ordering::Relaxed);
                let inbox = locked(&self.inner.deliveries).take();
                inbox
                    .map(|inbox| Deliveries { inbox })
                    .ok_or_else(|| ClientError::Invalid("already subscribed".into()))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Acknowledges delivered envelopes; they are deleted once this returns. Any number
    /// of ids: they go in requests of at most [`MAX_ACK_IDS`], one after another, and the
    /// receipt adds theirs up. On an error, the requests before it have deleted their ids.
    pub async fn ack(&self, envelope_ids: &[u64]) -> Result<AckReceipt, ClientError> {
        let mut receipt = AckReceipt {
            deleted: 0,
            unknown_ids: Vec::new(),
        };
        for ids in envelope_ids.chunks(MAX_ACK_IDS) {
            match self
                .request(Body::Ack(pb::Ack {
                    envelope_ids: ids.to_vec(),
                }))
                .await?
            {
                R::AckOk(ok) => {
                    receipt.deleted += ok.deleted;
                    receipt.unknown_ids.extend(ok.unknown_ids);
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(receipt)
    }

    /// Round-trip time of one ping.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        match self.request(Body::Ping(pb::Ping {})).await? {
            R::Pong(_) => Ok(start.elapsed()),
            other => Err(unexpected(&other)),
        }
    }

    /// Closes the connection and waits briefly for the close to reach the node.
    pub async fn close(self) {
        self.inner.link().conn.close(0u32.into(), b"bye");
        // Gives the endpoint a moment to send the close frame before the socket may go.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Connections tried while following one chain of redirects, counting the waits for nodes
/// that have not yet seen the newest placement.
const MAX_HOPS: u32 = 24;

/// The redirects followed for one login or move. Nodes learn of a new placement a moment
/// apart, so a node that has not caught up yet may send the client back where it came
/// from; its answer carries an older epoch than the one being followed. Then the client
/// waits a little and asks the newer node's choice again instead of going back and forth.
#[derive(Default)]
struct RedirectChain {
    followed: Option<pb::Redirect>,
    hops: u32,
    stale: u32,
}

impl RedirectChain {
    /// Where to go after `answer`, or `None` when the chain is too long.
    async fn next(&mut self, answer: pb::Redirect) -> Option<pb::Redirect> {
        match &self.followed {
            Some(f) if answer.epoch < f.epoch => {
                self.stale += 1;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(self.stale.min(10)))).await;
            }
            _ => {
                self.hops += 1;
                if self.hops > MAX_REDIRECTS {
                    return None;
                }
                self.followed = Some(answer);
            }
        }
        self.followed.clone()
    }
}

/// Requests that may be sent again on a new connection without changing their effect.
fn replayable(body: &Body) -> bool {
    matches!(
        body,
        Body::Send(_) | Body::Subscribe(_) | Body::Ack(_) | Body::Ping(_)
    )
}

impl Inner {
    /// The `Subscribe` this client sends, with its window (the inbox holds as many).
    fn subscription(&self) -> pb::Subscribe {
        pb::Subscribe {
            window: self.config.delivery_window.max(1),
        }
    }

    /// `wait` stretched by a random 0–25%, so that clients told the same thing do not all
    /// come back at the same instant; never shorter than the node asked.
    fn jittered(&self, wait: Duration) -> Duration {
        let mut b = [0u8; 1];
        let _ = self.rng.fill(&mut b);
        retry::jittered(wait, b[0])
    }

    /// Runs `op`, and when the node sheds it (`RATE_LIMITED`), waits as told and tries
    /// again, at most [`MAX_RETRIES`] times: past that the caller decides, so overload never
    /// turns into a retry storm.
    async fn obeying_retry_after<T, F, Fut>(&self, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut retries = 0;
        loop {
            match op().await {
                Err(ClientError::Refused {
                    code: ErrorCode::RateLimited,
                    retry_after,
                    ..
                }) if retries < MAX_RETRIES => {
                    retries += 1;
                    tokio::time::sleep(
                        self.jittered(retry_after.unwrap_or(Duration::from_secs(1))),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }

    fn link(&self) -> Arc<Link> {
        locked(&self.link).clone()
    }

    /// Makes `link` the client's connection and closes the one it replaces.
    fn replace_link(&self, link: Arc<Link>) {
        let old = std::mem::replace(&mut *locked(&self.link), link);
        old.conn.close(0u32.into(), b"moved");
    }

    async fn request_on(&self, link: &Link, body: Body) -> Result<R, ClientError> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match locked(&link.shared.pending).as_mut() {
            Some(pending) => pending.insert(request_id, tx),
            None => return Err(link.closed()),
        };
        let frame = encode_frame(&pb::ClientFrame {
            request_id,
            body: Some(body),
        });
        // A full outbox means the node reads slower than this client writes: wait for
        // room, but no longer than a request may take.
        let queued = tokio::time::timeout(self.config.request_timeout, link.outbox.send(frame));
        let failed = match queued.await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(link.closed()),
            Err(_) => Some(ClientError::Timeout(self.config.request_timeout)),
        };
        if let Some(e) = failed {
            if let Some(p) = locked(&link.shared.pending).as_mut() {
                p.remove(&request_id);
            }
            return Err(e);
        }
        let response = match self.answer(link, rx).await {
            Ok(response) => response,
            Err(e) => {
                if let Some(p) = locked(&link.shared.pending).as_mut() {
                    p.remove(&request_id);
                }
                return Err(e);
            }
        };
        match response.result {
            Some(R::Error(e)) => Err(ClientError::Refused {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                message: e.message,
                retry_after: (e.retry_after_ms > 0)
                    .then(|| Duration::from_millis(e.retry_after_ms)),
            }),
            Some(result) => Ok(result),
            None => Err(ClientError::Protocol("empty response".into())),
        }
    }

    /// Waits for a request's answer on `link`: until the request timeout, unless the node
    /// goes silent first (see [`ClientConfig::silence_timeout`]), in which case the
    /// connection is closed (its subscribers see it end, and log in again elsewhere).
    async fn answer(
        &self,
        link: &Link,
        mut rx: oneshot::Receiver<pb::Response>,
    ) -> Result<pb::Response, ClientError> {
        let (timeout, silence) = (self.config.request_timeout, self.config.silence_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut heard = link.conn.stats().udp_rx.datagrams;
        let mut heard_at = tokio::time::Instant::now();
        let mut probed = false;
        loop {
            match tokio::time::timeout_at((heard_at + silence).min(deadline), &mut rx).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(_)) => return Err(link.closed()),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ClientError::Timeout(timeout));
                }
                Err(_) => {
                    let now_heard = link.conn.stats().udp_rx.datagrams;
                    if now_heard != heard || !probed {
                        if now_heard == heard {
                            // Something a live node acknowledges at once; its answer, under
                            // an id nobody waits for, is dropped by the reader.
                            let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
                            // A full outbox is traffic waiting to go out: no probe needed.
                            let _ = link.outbox.try_send(encode_frame(&pb::ClientFrame {
                                request_id,
                                body: Some(Body::Ping(pb::Ping {})),
                            }));
                        }
                        probed = now_heard == heard;
                        (heard, heard_at) = (now_heard, tokio::time::Instant::now());
                        continue;
                    }
                    let why = format!(
                        "the node sent nothing for {:?} while a request waited, not even an \
                         acknowledgement of a probe",
                        silence * 2
                    );
                    link.conn.close(0u32.into(), why.as_bytes());
                    return Err(ClientError::Closed(why));
                }
            }
        }
    }

    /// A fresh challenge on `link`: its nonce and the proof-of-work bits it asks of a
    /// registration without a ticket.
    async fn challenge_on(&self, link: &Link) -> Result<([u8; 32], u32), ClientError> {
        let hello = Body::Hello(pb::Hello {
            client: format!("levee-client/{}", env!("CARGO_PKG_VERSION")),
        });
        match self.request_on(link, hello).await? {
            R::Challenge(c) => {
                *locked(&self.max_envelope_bytes) = Some(c.max_envelope_bytes);
                let nonce =
                    c.nonce.as_ref().try_into().map_err(|_| {
                        ClientError::Protocol("challenge nonce is not 32 bytes".into())
                    })?;
                Ok((nonce, c.registration_work_bits))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn prove_on(
        &self,
        link: &Link,
        purpose: Purpose,
        ticket: Option<Bytes>,
        unreachable: &str,
    ) -> Result<Proved, ClientError> {
        let (nonce, work_bits) = self.challenge_on(link).await?;
        let signature = Bytes::copy_from_slice(&self.identity.sign(&transcript(
            purpose,
            &link.exporter,
            &nonce,
        )));
        let public_key = Bytes::copy_from_slice(self.identity.account().as_bytes());
        let body = match purpose {
            Purpose::Register => Body::Register(pb::Register {
                work: match &ticket {
                    None if work_bits > 0 => {
                        solve_off_runtime(nonce, &public_key, work_bits).await?
                    }
                    _ => 0,
                },
                public_key,
                signature,
                ticket: ticket.unwrap_or_default(),
            }),
            Purpose::Authenticate => Body::Authenticate(pb::Authenticate {
                public_key,
                signature,
                unreachable: unreachable.to_owned(),
            }),
        };
        Ok(match self.request_on(link, body).await? {
            R::Authenticated(a) => {
                self.identity.set_door_pass(a.door_pass);
                Proved::Done(Registration::Registered { created: a.created })
            }
            R::Queued(q) => Proved::Done(Registration::Queued(Place {
                ticket: q.ticket,
                position: q.position,
                ahead: q.ahead,
                retry_after: Duration::from_millis(q.retry_after_ms),
                estimated_wait: Duration::from_millis(q.estimated_wait_ms),
            })),
            R::Redirect(r) => Proved::Redirect(r),
            other => return Err(unexpected(&other)),
        })
    }

    /// A connection to the node `redirect` names, trusted as it says: its fingerprint when
    /// this client pins fingerprints, the same CA and server name otherwise. The redirect
    /// came over a connection this client already trusts.
    async fn open_redirect(
        &self,
        redirect: &pb::Redirect,
        deliveries: InboxSender,
        connect_timeout: Duration,
    ) -> Result<Arc<Link>, ClientError> {
        let server: SocketAddr = redirect.address.parse().map_err(|_| {
            ClientError::Protocol(format!("redirect to a bad address {:?}", redirect.address))
        })?;
        let trust = match &self.config.trust {
            Trust::Fingerprint(_) => Trust::Fingerprint(Fingerprint(
                redirect.fingerprint.as_ref().try_into().map_err(|_| {
                    ClientError::Protocol("redirect fingerprint is not 32 bytes".into())
                })?,
            )),
            ca @ Trust::CaBundle(_) => ca.clone(),
        };
        let (quinn_config, mismatch) = quinn_config(&trust)?;
        let config = ClientConfig {
            server,
            trust,
            connect_timeout,
            ..self.config.clone()
        };
        open_link(
            &self.endpoint,
            &config,
            presenting_pass(quinn_config, &self.identity),
            &mismatch,
            deliveries,
            self.moves.clone(),
        )
        .await
    }

    /// `Register`/`Authenticate`, following redirects to the mailbox's owner.
    async fn prove(
        &self,
        purpose: Purpose,
        ticket: Option<Bytes>,
    ) -> Result<Registration, ClientError> {
        let mut chain = RedirectChain::default();
        // The owner this client could not reach, to say so to the node it is on.
        let mut unreachable = String::new();
        for _ in 0..MAX_HOPS {
            let link = self.link();
            match self
                .prove_on(&link, purpose, ticket.clone(), &unreachable)
                .await?
            {
                Proved::Done(r) => {
                    if matches!(r, Registration::Registered { .. }) {
                        self.authenticated.store(true, Ordering::Relaxed);
                    }
                    return Ok(r);
                }
                Proved::Redirect(answer) => {
                    let Some(target) = chain.next(answer).await else {
                        break;
                    };
                    // Not subscribed yet (that needs a session), so the new connection
                    // gets a fresh inbox in place of the unused one.
                    let inbox = Inbox::new(self.config.delivery_window);
                    // A login that can still be served where it is, as a guest, waits less
                    // for the owner (see `redirect_timeout`).
                    let may_be_guest =
                        purpose == Purpose::Authenticate && unreachable != target.address;
                    let patience = if may_be_guest {
                        self.config
                            .redirect_timeout
                            .min(self.config.connect_timeout)
                    } else {
                        self.config.connect_timeout
                    };
                    match self.open_redirect(&target, inbox.sender(), patience).await {
                        Ok(next) => {
                            *locked(&self.deliveries) = Some(inbox);
                            self.replace_link(next);
                            unreachable.clear();
                        }
                        // The node this client is on can reach the owner, this client
                        // cannot (a gray failure: a path from clients that broke while the
                        // cluster's own links work). It asks to be served where it is, as a
                        // guest (`Authenticate.unreachable`); once per owner.
                        Err(e @ (ClientError::Unreachable { .. } | ClientError::Timeout(_)))
                            if may_be_guest =>
                        {
                            tracing::warn!(
                                owner = %target.address,
                                error = %e,
                                "cannot reach the mailbox's node; asking to be served here"
                            );
                            unreachable = target.address.clone();
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(ClientError::Protocol(format!(
            "redirected more than {MAX_REDIRECTS} times"
        )))
    }

    /// After `ServerFrame.moved`: connects to the new owner, authenticates and subscribes
    /// there as this session had, and only then switches over, so no request reaches the
    /// new node before its session is ready. A login or subscription the new owner sheds
    /// is retried as told, at most [`MAX_RETRIES`] times. Gives up (the session ends, as a
    /// dropped connection would) when the new owner cannot be reached or keeps refusing.
    async fn follow(&self) {
        let old = self.link();
        let Some(moved) = locked(&old.shared.moved).clone() else {
            return;
        };
        // Each connection tried gets a sender of its own, newer than the old one's, so the
        // inbox takes the new node's deliveries over the old one's (see `inbox`).
        let Some(deliveries) = locked(&old.shared.deliveries)
            .as_ref()
            .map(InboxSender::next_link)
        else {
            return;
        };
        let mut chain = RedirectChain::default();
        let mut target = chain.next(moved).await;
        for _ in 0..MAX_HOPS {
            let Some(redirect) = target.take() else {
                break;
            };
            if redirect.address.is_empty() {
                tracing::warn!("the mailbox is unavailable for now; the session ends");
                break;
            }
            let link = match self
                .open_redirect(
                    &redirect,
                    deliveries.next_link(),
                    self.config.connect_timeout,
                )
                .await
            {
                Ok(link) => link,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the mailbox's new node");
                    break;
                }
            };
            // The new owner may shed the login or the subscription for a while (it just
            // took on the moved users); the session obeys as any request would.
            if self.authenticated.load(Ordering::Relaxed) {
                let login = self
                    .obeying_retry_after(|| self.prove_on(&link, Purpose::Authenticate, None, ""));
                match login.await {
                    Ok(Proved::Done(_)) => {}
                    Ok(Proved::Redirect(answer)) => {
                        link.conn.close(0u32.into(), b"redirected");
                        target = chain.next(answer).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot log in on the mailbox's new node");
                        break;
                    }
                }
            }
            if self.subscribed.load(Ordering::Relaxed)
                && let Err(e) = self
                    .obeying_retry_after(|| {
                        self.request_on(&link, Body::Subscribe(self.subscription()))
                    })
                    .await
            {
                tracing::warn!(error = %e, "cannot subscribe on the mailbox's new node");
                break;
            }
            self.replace_link(link);
            return;
        }
        // Could not follow: let the delivery stream end like a closed connection's.
        locked(&old.shared.deliveries).take();
    }
}

/// The most proof of work this client will do for one registration: about 2^24 hashes
/// (seconds of CPU). A server asking more is refused rather than obeyed.
const MAX_CLIENT_WORK_BITS: u32 = 24;

/// Solves a registration's proof of work on a blocking thread (it is CPU work: about
/// 2^`bits` hashes); refuses if the server asks more than [`MAX_CLIENT_WORK_BITS`].
async fn solve_off_runtime(
    nonce: [u8; 32],
    public_key: &[u8],
    bits: u32,
) -> Result<u64, ClientError> {
    if bits > MAX_CLIENT_WORK_BITS {
        return Err(ClientError::Protocol(format!(
            "the server asks {bits} bits of proof of work, more than the {MAX_CLIENT_WORK_BITS} this client does"
        )));
    }
    let key = public_key.to_vec();
    tokio::task::spawn_blocking(move || solve_work(&nonce, &key, bits))
        .await
        .map_err(|e| ClientError::Protocol(format!("proof of work did not finish: {e}")))
}

fn unexpected(r: &R) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {r:?}"))
}

fn connect_error(
    e: quinn::ConnectionError,
    mismatch: &MismatchFlag,
    server: SocketAddr,
) -> ClientError {
    if mismatch.seen() {
        return ClientError::CertificateMismatch;
    }
    match e {
        quinn::ConnectionError::TimedOut => ClientError::Unreachable {
            server,
            reason: "timed out".into(),
        },
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            ClientError::Busy
        }
        quinn::ConnectionError::ConnectionClosed(c) => {
            ClientError::Closed(format!("refused by server: {c}"))
        }
        quinn::ConnectionError::TransportError(t) => ClientError::Tls(t.to_string()),
        other => ClientError::Closed(other.to_string()),
    }
}

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Bytes>) {
    let mut buf = BytesMut::new();
    while let Some(frame) = rx.recv().await {
        buf.extend_from_slice(&frame);
        while buf.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = send.finish();
}

async fn read_loop(
    mut recv: quinn::RecvStream,
    link: Arc<LinkShared>,
    moves: mpsc::UnboundedSender<()>,
) {
    // The client trusts the node it chose, but still refuses to buffer without bound.
    let mut decoder = FrameDecoder::new(32 * 1024 * 1024);
    'read: loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable frame from server; closing");
                    break 'read;
                }
            };
            let Ok(frame) = pb::ServerFrame::decode(frame) else {
                tracing::warn!("server frame did not decode; ignoring it");
                continue;
            };
            match frame.body {
                Some(pb::server_frame::Body::Response(r)) => {
                    if r.request_id == 0 {
                        tracing::warn!(response = ?r.result, "connection-level error from server");
                    } else if let Some(tx) = locked(&link.pending)
                        .as_mut()
                        .and_then(|p| p.remove(&r.request_id))
                    {
                        let _ = tx.send(r);
                    }
                }
                Some(pb::server_frame::Body::Delivery(d)) => {
                    let Ok(client_message_id) = d.client_message_id.as_ref().try_into() else {
                        tracing::warn!("delivery with a malformed client message id; ignoring it");
                        continue;
                    };
                    let delivery = Delivery {
                        envelope_id: d.envelope_id,
                        ciphertext: d.ciphertext,
                        client_message_id,
                        accepted_at_ms: d.accepted_at_ms,
                    };
                    let pushed = locked(&link.deliveries)
                        .as_ref()
                        .map(|inbox| inbox.push(delivery));
                    if let Some(Err(Overflow { window })) = pushed {
                        // Nothing is lost: what was not acknowledged is delivered again in
                        // the next session.
                        tracing::warn!(
                            window,
                            "the node sent more unacknowledged deliveries than the window; \
                             closing"
                        );
                        break 'read;
                    }
                }
                Some(pb::server_frame::Body::BacklogDone(_)) => {
                    if let Some(inbox) = locked(&link.deliveries).as_ref() {
                        inbox.backlog_done();
                    }
                }
                Some(pb::server_frame::Body::Moved(redirect)) => {
                    *locked(&link.moved) = Some(redirect);
                    let _ = moves.send(());
                }
                None => {}
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => decoder.extend(&chunk.bytes),
            Ok(None) | Err(_) => break,
        }
    }
    // Dropping the reply channels fails every outstanding request at once.
    locked(&link.pending).take();
    // A moved session's deliveries go on through the next connection; otherwise the
    // delivery stream ends with this connection.
    if locked(&link.moved).is_none() {
        locked(&link.deliveries).take();
    }
}
