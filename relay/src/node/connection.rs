//! One client connection: read frames, apply the session rules, answer, push deliveries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use levee_queue::LogRecord;
use levee_sharding::{MailboxId, shard_of};
use prost::Message;
use ring::digest;
use ring::rand::SecureRandom;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::Shared;
use super::admission::RegistrationDecision;
use super::guard::Handshaking;
use super::window::{self, DeliveryWindow};
use crate::admission::{RequestClass, keeps_holding};
use crate::clock::now_ms;
use crate::cluster::{NodeInfo, Route};
use crate::identity::{AccountId, Purpose};
use crate::log_record::LoggedEnvelope;
use crate::session::{Refusal, Session};
use crate::wire::pb::{self, ErrorCode, client_frame::Body, response::Result as R};
use crate::wire::{EXPORTER_LABEL, FrameDecoder, FrameError, MAX_ACK_IDS, encode_frame};

/// How long a client has to complete the handshake and open its session stream.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for the writer before producers wait (backpressure to the pumps).
const OUTBOX: usize = 1024;

/// Where a connection's answers and deliveries queue for its writer. Frames are boxed: a
/// tokio channel allocates its slots 32 at a time, up front, and with unboxed frames that
/// was 2.8 KiB a connection in a heap profile before it had sent anything; boxed, the slots
/// are 8 bytes each.
/// At 100,000 connections a node holds mostly idle ones; see docs/PERFORMANCE.md,
/// "Connections at scale".
type Outbox = mpsc::Sender<Box<pb::ServerFrame>>;
/// Envelopes read from the store per pump round.
const PUMP_BATCH: usize = 256;
/// Suggested back-off when storage fails.
const STORAGE_RETRY_MS: u64 = 1_000;
/// Suggested back-off for a mailbox no live node may hold.
const UNAVAILABLE_RETRY_MS: u64 = 5_000;
/// Suggested back-off for a login a demoted node would have redirected: short, since any
/// other node can answer it now.
const DEMOTED_RETRY_MS: u64 = 500;
/// How often a guest session reads its mailbox (see `Authenticate.unreachable`).
const GUEST_POLL: Duration = Duration::from_millis(500);

/// QUIC application close codes.
mod close {
    pub const NORMAL: u32 = 0;
    pub const PROTOCOL: u32 = 1;
}

/// Decrements the connection count when the connection task ends, however it ends.
struct Counted(Arc<Shared>);

impl Drop for Counted {
    fn drop(&mut self) {
        let open = self.0.connections.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.metrics.connections(open);
    }
}

/// Serves one incoming connection until it closes.
pub(super) async fn serve(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    handshaking: Handshaking,
) {
    let open = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    shared.metrics.connections(open);
    let _counted = Counted(shared.clone());
    // Errors here are the client's business (it went away, or spoke badly); they are not
    // logged with any detail that could identify the client.
    let handshake = {
        let _in_progress = handshaking;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async { incoming.accept()?.await }).await
    };
    let Ok(Ok(conn)) = handshake else {
        return;
    };
    let Ok(Ok((send, recv))) = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await
    else {
        conn.close(close::PROTOCOL.into(), b"open the session stream first");
        return;
    };
    let mut exporter = [0u8; 32];
    if conn
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .is_err()
    {
        conn.close(close::PROTOCOL.into(), b"TLS exporter unavailable");
        return;
    }
    let (outbox, rx) = mpsc::channel(OUTBOX);
    let writer = tokio::spawn(write_frames(send, rx));
    let mut handler = Connection {
        remote: conn.remote_address().ip(),
        shared: shared.clone(),
        session: Session::new(exporter),
        outbox,
        tasks: JoinSet::new(),
        in_flight: Arc::new(Semaphore::new(
            shared.config.max_requests_in_flight as usize,
        )),
        guest: None,
        window: None,
    };
    let close_code = handler.read_loop(recv).await;
    // Stop work on behalf of this connection, let the writer flush what is queued (such as
    // the error that ended the session), then close.
    handler.tasks.shutdown().await;
    drop(handler);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    conn.close(close_code.into(), b"");
}

/// Writes queued frames to the session stream, coalescing bursts into one write.
async fn write_frames(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Box<pb::ServerFrame>>) {
    while let Some(frame) = rx.recv().await {
        let first = encode_frame(&frame);
        let Ok(next) = rx.try_recv() else {
            // The common case when a connection is quiet: one frame, handed over as is.
            if send.write_chunk(first).await.is_err() {
                return;
            }
            continue;
        };
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&first);
        buf.extend_from_slice(&encode_frame(&next));
        while buf.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(frame) => buf.extend_from_slice(&encode_frame(&frame)),
                Err(_) => break,
            }
        }
        // Handed to QUIC without a copy, and not kept: a connection gone quiet after a
        // burst holds no buffer sized for the burst.
        if send.write_chunk(buf.freeze()).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

struct Connection {
    /// The client's address, which its door passes name.
    remote: std::net::IpAddr,
    shared: Arc<Shared>,
    session: Session,
    outbox: Outbox,
    /// Requests in progress and the mailbox pump; aborted when the connection ends.
    tasks: JoinSet<()>,
    in_flight: Arc<Semaphore>,
    /// Set when this node serves the session for an owner the client cannot reach.
    guest: Option<GuestSlot>,
    /// The subscription's delivery window, once subscribed; acks on this connection make
    /// room in it.
    window: Option<Arc<DeliveryWindow>>,
}

impl Connection {
    /// Reads and dispatches frames until the stream ends or breaks; returns the close code.
    async fn read_loop(&mut self, mut recv: quinn::RecvStream) -> u32 {
        let mut decoder = FrameDecoder::new(self.shared.config.max_frame_bytes());
        // When the bytes being decoded arrived: the start of a request's queueing delay.
        let mut arrived = Instant::now();
        let mut view = self.shared.membership.subscribe();
        loop {
            loop {
                match decoder.next_frame() {
                    // Boxed, so that this task rests (awaiting the next chunk, which is
                    // where an idle connection's task spends its life) at the size of
                    // the read loop, not at that of the largest request handler; for an
                    // allocation per request (no difference per envelope measured).
                    Ok(Some(frame)) => Box::pin(self.dispatch(frame, arrived)).await,
                    Ok(None) => break,
                    Err(e) => {
                        let code = match e {
                            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                            FrameError::BadLength => ErrorCode::Malformed,
                        };
                        self.respond(pb::Response::error(0, code, e.to_string()))
                            .await;
                        return close::PROTOCOL;
                    }
                }
                // Reap finished request tasks so the set does not grow without bound.
                while self.tasks.try_join_next().is_some() {}
            }
            let chunk = tokio::select! {
                chunk = recv.read_chunk(64 * 1024, true) => chunk,
                Ok(()) = view.changed() => {
                    if self.moved_away().await {
                        return close::NORMAL;
                    }
                    continue;
                }
            };
            match chunk {
                Ok(Some(chunk)) => {
                    arrived = Instant::now();
                    decoder.extend(&chunk.bytes);
                }
                Ok(None) | Err(_) => return close::NORMAL,
            }
        }
    }

    /// After a placement change: if this session's mailbox now lives on another node, tells
    /// the client where (`ServerFrame.moved`) and returns true: the connection ends, and the
    /// client reconnects to the new owner.
    async fn moved_away(&self) -> bool {
        let Ok(account) = self.session.account() else {
            return false;
        };
        let view = self.shared.membership.view();
        let redirect = match view.route(&account) {
            Route::Local => return false,
            // A guest stays while its owner is the one it could not reach.
            Route::Elsewhere(owner)
                if self
                    .guest
                    .as_ref()
                    .is_some_and(|g| g.owner == owner.address) =>
            {
                return false;
            }
            Route::Elsewhere(owner) => redirect_to(owner, view.epoch()),
            // Nobody may hold it now; the client finds out when it comes back.
            Route::Unavailable => pb::Redirect::default(),
        };
        self.shared.metrics.moved();
        let frame = pb::ServerFrame {
            body: Some(pb::server_frame::Body::Moved(redirect)),
        };
        let _ = self.outbox.send(Box::new(frame)).await;
        true
    }

    async fn respond(&self, response: pb::Response) {
        // A closed outbox means the connection is going away; nothing left to tell.
        let _ = self.outbox.send(Box::new(response.into())).await;
    }

    async fn refuse(&self, request_id: u64, refusal: Refusal) {
        self.respond(pb::Response::error(
            request_id,
            refusal.code,
            refusal.message,
        ))
        .await;
    }

    /// Refuses `id` if admission control sheds `class` for `key` now, or `key` is an
    /// account over its own request rate.
    async fn admitted(&self, id: u64, class: RequestClass, key: &[u8]) -> bool {
        if class == RequestClass::Messaging
            && let Some(account) = MailboxId::from_slice(key)
            && !self.shared.guard.account_within_rate(&account)
        {
            let msg = "this account is over its request rate; retry after retry_after_ms";
            self.respond(retry_later(id, ErrorCode::RateLimited, msg, 1000))
                .await;
            return false;
        }
        match self.shared.admission.check(class, key) {
            Ok(()) => true,
            Err(retry_after_ms) => {
                let msg = "the node is shedding load; retry after retry_after_ms";
                self.respond(retry_later(id, ErrorCode::RateLimited, msg, retry_after_ms))
                    .await;
                false
            }
        }
    }

    async fn dispatch(&mut self, frame: Bytes, arrived: Instant) {
        let Ok(frame) = pb::ClientFrame::decode(frame) else {
            // The frame boundary is intact, so the session can go on after saying so.
            self.respond(pb::Response::error(
                0,
                ErrorCode::Malformed,
                "frame is not a ClientFrame",
            ))
            .await;
            return;
        };
        let id = frame.request_id;
        let Some(body) = frame.body else {
            self.respond(pb::Response::error(
                id,
                ErrorCode::Malformed,
                "empty request",
            ))
            .await;
            return;
        };
        let started = Instant::now();
        match body {
            Body::Ping(_) => {
                self.respond(pb::Response::ok(id, R::Pong(pb::Pong {})))
                    .await
            }
            Body::Hello(_) => self.hello(id).await,
            Body::Register(r) => {
                self.shared.admission.record_wait(started - arrived);
                let ticket = (!r.ticket.is_empty()).then_some(r.ticket);
                // A ticket's place was paid for when it was taken; only a new place needs work.
                let work = ticket.is_none().then_some(r.work);
                let proof = Proof {
                    public_key: r.public_key,
                    signature: r.signature,
                    work,
                    unreachable: String::new(),
                };
                self.prove(id, Purpose::Register, proof, ticket).await
            }
            Body::Authenticate(a) => {
                self.shared.admission.record_wait(started - arrived);
                if self.admitted(id, RequestClass::Login, &a.public_key).await {
                    let proof = Proof {
                        public_key: a.public_key,
                        signature: a.signature,
                        work: None,
                        unreachable: a.unreachable,
                    };
                    self.prove(id, Purpose::Authenticate, proof, None).await
                }
            }
            Body::Send(s) => match self.session.account() {
                Ok(sender) => {
                    if self
                        .admitted(id, RequestClass::Messaging, sender.as_bytes())
                        .await
                    {
                        self.spawn(arrived, move |shared| send(shared, id, sender, s, arrived))
                            .await
                    }
                }
                Err(r) => self.refuse(id, r).await,
            },
            Body::Ack(a) if a.envelope_ids.len() > MAX_ACK_IDS => {
                let message = format!(
                    "{} envelope ids in one Ack; at most {MAX_ACK_IDS}",
                    a.envelope_ids.len()
                );
                self.respond(pb::Response::error(id, ErrorCode::TooLarge, &message))
                    .await;
            }
            Body::Ack(a) => match self.session.account() {
                Ok(owner) => {
                    // Room for more deliveries at once: the client is done with these
                    // whether or not the deletion succeeds (if not, it acks them again,
                    // and they stay stored until then).
                    if let Some(window) = &self.window {
                        window.acknowledged(&a.envelope_ids);
                    }
                    self.spawn(arrived, move |shared| {
                        ack(shared, id, owner, a.envelope_ids)
                    })
                    .await
                }
                Err(r) => self.refuse(id, r).await,
            },
            Body::Subscribe(s) => match self.session.account() {
                Ok(owner)
                    if !self
                        .admitted(id, RequestClass::Messaging, owner.as_bytes())
                        .await => {}
                _ => self.subscribe(id, s.window).await,
            },
        }
    }

    async fn subscribe(&mut self, id: u64, requested_window: u32) {
        match self.session.subscribe() {
            Ok(owner) => {
                let size = window::granted(requested_window, self.shared.config.delivery_window);
                let ok = pb::SubscribeOk { window: size };
                self.respond(pb::Response::ok(id, R::SubscribeOk(ok))).await;
                let window = Arc::new(DeliveryWindow::new(size));
                self.window = Some(window.clone());
                let (shared, outbox) = (self.shared.clone(), self.outbox.clone());
                // Deliveries wake only the owner's sessions; a guest reads the store itself.
                let poll = self.guest.is_some().then_some(GUEST_POLL);
                self.tasks.spawn(pump(shared, owner, outbox, window, poll));
            }
            Err(r) => self.refuse(id, r).await,
        }
    }

    async fn hello(&mut self, id: u64) {
        let mut nonce = [0u8; 32];
        if self.shared.rng.fill(&mut nonce).is_err() {
            self.respond(pb::Response::error(
                id,
                ErrorCode::Internal,
                "no randomness",
            ))
            .await;
            return;
        }
        let work_bits = self.shared.admission.work_bits();
        match self.session.hello(nonce, work_bits) {
            Ok(()) => {
                let challenge = pb::Challenge {
                    nonce: Bytes::copy_from_slice(&nonce),
                    max_envelope_bytes: self.shared.config.max_envelope_bytes,
                    max_frame_bytes: self.shared.config.max_frame_bytes() as u32,
                    registration_work_bits: work_bits,
                };
                self.respond(pb::Response::ok(id, R::Challenge(challenge)))
                    .await;
            }
            Err(r) => self.refuse(id, r).await,
        }
    }

    /// `Register` / `Authenticate`. Handled in line, not spawned, so requests pipelined
    /// behind it already see the authenticated session.
    async fn prove(&mut self, id: u64, purpose: Purpose, proof: Proof, ticket: Option<Bytes>) {
        // Before any work: a mailbox is served only by its owner.
        if let Some(mailbox) = MailboxId::from_slice(&proof.public_key) {
            let view = self.shared.membership.view();
            match view.route(&mailbox) {
                Route::Local => {}
                // A demoted node cannot read the roster: the owner its view names may be
                // long dead (the slow-snapshot drill: every login redirected there waited
                // out a 5 s connect timeout, and the users' sends ran out of patience). Any
                // node that can read the roster knows better; the client asks again.
                Route::Elsewhere(_) if self.shared.membership.demoted() => {
                    let msg = "this node cannot read the cluster's roster now; log in \
                               through another node";
                    return self
                        .respond(retry_later(
                            id,
                            ErrorCode::MailboxUnavailable,
                            msg,
                            DEMOTED_RETRY_MS,
                        ))
                        .await;
                }
                // The client cannot reach the owner, which this node can: serve it here,
                // if it takes another guest.
                Route::Elsewhere(owner)
                    if purpose == Purpose::Authenticate
                        && !proof.unreachable.is_empty()
                        && proof.unreachable == owner.address.to_string()
                        && self.guest.is_none() =>
                {
                    self.shared.metrics.unreachable_reported(&owner.name);
                    match GuestSlot::take(&self.shared, owner.address) {
                        Some(slot) => self.guest = Some(slot),
                        None => return self.redirect(id, purpose, owner, view.epoch()).await,
                    }
                }
                Route::Elsewhere(owner) => {
                    return self.redirect(id, purpose, owner, view.epoch()).await;
                }
                Route::Unavailable => {
                    let msg = "no live node may hold this mailbox (its regions are down)";
                    return self
                        .respond(retry_later(
                            id,
                            ErrorCode::MailboxUnavailable,
                            msg,
                            UNAVAILABLE_RETRY_MS,
                        ))
                        .await;
                }
            }
        }
        // A returning ticket holder is answered from the ticket first (an HMAC, bound to
        // its key), and the signature is checked only if it enters: in a 10x wave Ed25519
        // checks were 8.6% of a quarter-core node's CPU samples, two in three for returns
        // that only got a fresh ticket (docs/PERFORMANCE-LOG.md, "Fourth pass"). Nobody gains:
        // the ticket was issued to a proven key, and entering still needs the proof.
        let mut entered = false;
        if purpose == Purpose::Register
            && self.session.awaits_proof()
            && let Some(ticket) = &ticket
            && let Some(key) = AccountId::from_slice(&proof.public_key)
        {
            match self.wait_in_line(id, &key, Some(ticket.clone())).await {
                None => entered = true,
                Some(answer) => {
                    return match self.session.spend_challenge() {
                        Ok(()) => self.respond(answer).await,
                        Err(r) => self.refuse(id, r).await,
                    };
                }
            }
        }
        let verified =
            self.session
                .verify_proof(purpose, &proof.public_key, &proof.signature, proof.work);
        let account = match verified {
            Ok(account) => account,
            Err(r) => return self.refuse(id, r).await,
        };
        // Only a proven key gets a new place in line, so nobody can queue up keys they do
        // not hold.
        if purpose == Purpose::Register
            && !entered
            && let Some(answer) = self.wait_in_line(id, &account, ticket).await
        {
            return self.respond(answer).await;
        }
        let created = match purpose {
            Purpose::Register => {
                // A durable write like any other: one that hangs (a frozen database) is
                // what tells admission to shed the registrations behind it.
                let write = self.shared.admission.backend_write();
                let created = self.shared.store.create_mailbox(&account).await;
                drop(write);
                created
            }
            Purpose::Authenticate => match self.shared.store.mailbox_exists(&account).await {
                Ok(true) => Ok(false),
                Ok(false) => {
                    let msg = "no account with this key; register first";
                    return self
                        .respond(pb::Response::error(id, ErrorCode::UnknownAccount, msg))
                        .await;
                }
                Err(e) => Err(e),
            },
        };
        match created {
            Ok(created) => {
                self.session.bind(account);
                let ok = pb::Authenticated {
                    account_id: Bytes::copy_from_slice(account.as_bytes()),
                    created,
                    door_pass: self
                        .shared
                        .door
                        .pass_for(self.remote, now_ms() / 1000)
                        .into(),
                };
                self.respond(pb::Response::ok(id, R::Authenticated(ok)))
                    .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "account lookup failed");
                self.respond(storage_error(id)).await;
            }
        }
    }

    /// Sends the client to `owner`, the mailbox's node at `epoch`.
    async fn redirect(&self, id: u64, purpose: Purpose, owner: &NodeInfo, epoch: u64) {
        self.shared.metrics.redirected();
        if purpose == Purpose::Register {
            self.shared.admission.registration_redirected();
        }
        let redirect = redirect_to(owner, epoch);
        self.respond(pb::Response::ok(id, R::Redirect(redirect)))
            .await;
    }

    /// Decides a registration for `key` presenting `ticket`; `None` if it may enter now,
    /// otherwise the answer (its place in line, or why the ticket was refused). A place
    /// that comes due within `registration_hold_ms` is waited for here, and the
    /// registration enters then: the client is answered once instead of coming back with
    /// its ticket, a challenge, a request and a new ticket for each return. In a 10x wave
    /// admitted newcomers made 1.75 registration requests each, most waits being a few
    /// seconds (`levee-surge`). The connection has nothing else to do meanwhile: it is not
    /// authenticated yet. Each wake-up decides again exactly as a return would, so order in
    /// line is kept.
    async fn wait_in_line(
        &self,
        id: u64,
        key: &AccountId,
        mut ticket: Option<Bytes>,
    ) -> Option<pb::Response> {
        let hold = Duration::from_millis(self.shared.config.registration_hold_ms);
        let mut held = Duration::ZERO;
        loop {
            let decision = self
                .shared
                .admission
                .register(key.as_bytes(), ticket.as_deref());
            match decision {
                RegistrationDecision::Queued {
                    ticket: place,
                    retry_after_ms,
                    ..
                } if keeps_holding(held, Duration::from_millis(retry_after_ms), hold) => {
                    let wait = Duration::from_millis(retry_after_ms);
                    tokio::time::sleep(wait).await;
                    held += wait;
                    ticket = Some(place.into());
                }
                other => return not_yet(id, other),
            }
        }
    }

    /// Runs a request concurrently with the connection's others (pipelining). Waits for a
    /// slot first, which stops reading from this client while it has too many in progress.
    /// `arrived` is when the request's bytes arrived; the time until its task starts is the
    /// queueing delay admission control watches.
    async fn spawn<F, Fut>(&mut self, arrived: Instant, work: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: std::future::Future<Output = pb::Response> + Send + 'static,
    {
        // The semaphore is never closed, so acquiring cannot fail.
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        let outbox = self.outbox.clone();
        let shared = self.shared.clone();
        let fut = work(self.shared.clone());
        self.tasks.spawn(async move {
            shared.admission.record_wait(arrived.elapsed());
            let response = fut.await;
            let _ = outbox.send(Box::new(response.into())).await;
            drop(permit);
        });
    }
}

/// Longest a send waits for the recipient's quota usage before going ahead without it.
const QUOTA_LOOKUP_LIMIT: Duration = Duration::from_millis(250);

/// What a `Register` or `Authenticate` offers as proof of its key.
struct Proof {
    public_key: Bytes,
    signature: Bytes,
    /// The proof-of-work solution, when one is due: a registration without a ticket.
    work: Option<u64>,
    /// The owner address the client says it cannot reach (`Authenticate.unreachable`).
    unreachable: String,
}

/// A guest session's place (see `Authenticate.unreachable`): counted while the connection
/// lasts, so that guests stay a bounded share of the node's connections.
struct GuestSlot {
    shared: Arc<Shared>,
    /// The owner the client could not reach.
    owner: SocketAddr,
}

impl GuestSlot {
    /// A slot, if the node takes another guest: a quarter of its connections at most.
    fn take(shared: &Arc<Shared>, owner: SocketAddr) -> Option<Self> {
        let cap = (shared.config.max_connections as usize / 4).max(1);
        let before = shared
            .guests
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        shared.metrics.guests(before + 1);
        Some(Self {
            shared: shared.clone(),
            owner,
        })
    }
}

impl Drop for GuestSlot {
    fn drop(&mut self) {
        let now = self.shared.guests.fetch_sub(1, Ordering::Relaxed) - 1;
        self.shared.metrics.guests(now);
    }
}

fn redirect_to(owner: &NodeInfo, epoch: u64) -> pb::Redirect {
    pb::Redirect {
        address: owner.address.to_string(),
        fingerprint: Bytes::copy_from_slice(&owner.fingerprint.0),
        epoch,
    }
}

/// An error that tells the client when to come back.
fn retry_later(id: u64, code: ErrorCode, message: &str, retry_after_ms: u64) -> pb::Response {
    let mut r = pb::Response::error(id, code, message);
    if let Some(R::Error(e)) = &mut r.result {
        e.retry_after_ms = retry_after_ms;
    }
    r
}

fn storage_error(id: u64) -> pb::Response {
    retry_later(
        id,
        ErrorCode::Unavailable,
        "storage is unavailable; retry later",
        STORAGE_RETRY_MS,
    )
}

/// Identifies "the same message sent again" without storing who sent it.
fn dedupe_key(sender: &MailboxId, client_message_id: &[u8; 16]) -> [u8; 16] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"levee dedupe v1");
    ctx.update(sender.as_bytes());
    ctx.update(client_message_id);
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

/// `Send`: validate, check the recipient and its quota, append durably, answer.
/// A `Send`, from its arrival (`arrived`, for the send-latency histogram) to its answer.
async fn send(
    shared: Arc<Shared>,
    id: u64,
    sender: MailboxId,
    req: pb::Send,
    arrived: Instant,
) -> pb::Response {
    let err = |code, msg: &str| pb::Response::error(id, code, msg);
    let Some(recipient) = MailboxId::from_slice(&req.recipient) else {
        return err(ErrorCode::Malformed, "recipient must be 32 bytes");
    };
    let Ok(client_message_id) = <[u8; 16]>::try_from(req.client_message_id.as_ref()) else {
        return err(ErrorCode::Malformed, "client_message_id must be 16 bytes");
    };
    let max = shared.config.max_envelope_bytes as usize;
    if req.ciphertext.len() > max {
        return err(
            ErrorCode::TooLarge,
            &format!("envelope of {} bytes exceeds {max}", req.ciphertext.len()),
        );
    }
    if !shared.known_accounts.contains(&recipient) {
        match shared.store.mailbox_exists(&recipient).await {
            Ok(true) => shared.known_accounts.insert(recipient),
            Ok(false) => return err(ErrorCode::UnknownRecipient, "no account with that id"),
            Err(e) => {
                tracing::error!(error = %e, "recipient lookup failed");
                return storage_error(id);
            }
        }
    }
    // Quotas are approximate by design (see `quota`): a recent reading of the recipient's
    // usage, with what this node accepted for it since, answers most sends. A store that
    // does not answer quickly does not hold sends up: the log takes them, and the quota is
    // enforced again once the store answers.
    let bytes = req.ciphertext.len() as u64;
    if !shared.quota.take(&recipient, bytes, Instant::now()) {
        match tokio::time::timeout(QUOTA_LOOKUP_LIMIT, shared.store.usage(&recipient)).await {
            Ok(Ok(usage)) => {
                if !shared.quota.read(recipient, usage, bytes, Instant::now()) {
                    return err(
                        ErrorCode::MailboxFull,
                        "the recipient's mailbox is full until it is drained",
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "quota lookup failed; not enforced");
                shared.quota.unanswered(recipient, Instant::now());
            }
            Err(_) => {
                tracing::debug!("quota lookup too slow; not enforced");
                shared.quota.unanswered(recipient, Instant::now());
            }
        }
    }
    let accepted_at_ms = now_ms();
    let logged = LoggedEnvelope {
        dedupe_key: Bytes::copy_from_slice(&dedupe_key(&sender, &client_message_id)),
        client_message_id: req.client_message_id,
        accepted_at_ms,
        expires_at_ms: accepted_at_ms
            .saturating_add(shared.config.envelope_ttl_secs.saturating_mul(1000)),
        ciphertext: req.ciphertext,
    };
    let record = LogRecord {
        shard: shard_of(&recipient, shared.log.shards()),
        mailbox: recipient,
        payload: logged.encode_to_vec().into(),
    };
    let write = shared.admission.backend_write();
    let appended = shared.log.append(vec![record]).await;
    drop(write);
    match appended {
        Ok(positions) => match positions.first() {
            Some(p) => {
                shared.metrics.envelope_accepted(arrived.elapsed());
                pb::Response::ok(
                    id,
                    R::SendOk(pb::SendOk {
                        envelope_id: p.offset,
                    }),
                )
            }
            None => err(ErrorCode::Internal, "the log returned no position"),
        },
        Err(e) => {
            tracing::error!(error = %e, "delivery log append failed");
            storage_error(id)
        }
    }
}

/// `Ack`: delete from the session's own mailbox only, durably.
async fn ack(shared: Arc<Shared>, id: u64, owner: MailboxId, ids: Vec<u64>) -> pb::Response {
    let write = shared.admission.backend_write();
    let acked = shared.store.ack(&owner, &ids).await;
    drop(write);
    match acked {
        Ok(outcome) => pb::Response::ok(
            id,
            R::AckOk(pb::AckOk {
                deleted: outcome.deleted,
                unknown_ids: outcome.unknown,
            }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "acknowledgement failed");
            storage_error(id)
        }
    }
}

/// Sends `owner`'s backlog, oldest first, then every envelope stored after it, until the
/// connection ends. One code path for both: read everything after the cursor, then wait for
/// the delivery worker to say there is more. Never more than `window` unacknowledged at
/// once: a full window waits for acks. The first time a read finds nothing, the backlog is
/// drained: `BacklogDone` says so, once.
///
/// A guest session (`poll` set) also reads every `poll`: the delivery worker that stores its
/// envelopes runs on the owner, which wakes only its own sessions.
async fn pump(
    shared: Arc<Shared>,
    owner: MailboxId,
    outbox: Outbox,
    window: Arc<DeliveryWindow>,
    poll: Option<Duration>,
) {
    let mut watching = Watching {
        more: Some(shared.presence.watch(owner)),
        shared: shared.clone(),
        owner,
    };
    // Present from the line above until the guard drops.
    let more = watching.more.as_mut().expect("just set");
    let mut cursor = None;
    let mut backlog_done = false;
    'pump: loop {
        more.borrow_and_update();
        let batch = match shared
            .store
            .read(&owner, cursor, PUMP_BATCH, now_ms())
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "mailbox read failed; retrying");
                tokio::time::sleep(Duration::from_millis(STORAGE_RETRY_MS)).await;
                continue;
            }
        };
        if batch.is_empty() {
            if !backlog_done {
                backlog_done = true;
                let done = pb::ServerFrame {
                    body: Some(pb::server_frame::Body::BacklogDone(pb::BacklogDone {})),
                };
                if outbox.send(Box::new(done)).await.is_err() {
                    break 'pump;
                }
            }
            tokio::select! {
                changed = more.changed() => if changed.is_err() { break 'pump },
                () = outbox.closed() => break 'pump,
                () = tokio::time::sleep(poll.unwrap_or_default()), if poll.is_some() => {}
            }
            continue;
        }
        for e in batch {
            tokio::select! {
                () = window.enter(e.id) => {}
                () = outbox.closed() => break 'pump,
            }
            cursor = Some(e.id);
            let delivery = pb::Delivery {
                envelope_id: e.id,
                ciphertext: e.ciphertext,
                client_message_id: Bytes::copy_from_slice(&e.client_message_id),
                accepted_at_ms: e.accepted_at_ms,
            };
            let frame = pb::ServerFrame {
                body: Some(pb::server_frame::Body::Delivery(delivery)),
            };
            if outbox.send(Box::new(frame)).await.is_err() {
                break 'pump;
            }
        }
    }
}

/// The answer to a registration that may not enter now (its place in line, or why its
/// ticket was refused); `None` if it may.
fn not_yet(id: u64, decision: RegistrationDecision) -> Option<pb::Response> {
    match decision {
        RegistrationDecision::Enter => None,
        RegistrationDecision::Queued {
            ticket,
            position,
            ahead,
            retry_after_ms,
            estimated_wait_ms,
        } => {
            let queued = pb::Queued {
                ticket: ticket.into(),
                position,
                ahead,
                retry_after_ms,
                estimated_wait_ms,
            };
            Some(pb::Response::ok(id, R::Queued(queued)))
        }
        RegistrationDecision::Rejected(e) => Some(pb::Response::error(
            id,
            ErrorCode::TicketRejected,
            e.to_string(),
        )),
    }
}

/// A pump's subscription; unregisters it however the pump ends (including being aborted
/// when its connection closes).
struct Watching {
    shared: Arc<Shared>,
    owner: MailboxId,
    more: Option<tokio::sync::watch::Receiver<u64>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.more = None;
        self.shared.presence.release(&self.owner);
    }
}
