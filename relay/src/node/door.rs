//! The door: new connections beyond the node-wide handshake rate are dropped as datagrams,
//! before QUIC spends anything on them.
//!
//! Why not refuse them: a refusal is cheap next to a handshake, but not free. QUIC must
//! decrypt the Initial packet, set up an `Incoming`, then build, encrypt and send a
//! CONNECTION_CLOSE; measured on this machine, about 50 µs of the node's CPU per refused
//! attempt (docs/PERFORMANCE-LOG.md, "Signup wave"), against about 740 µs for a whole
//! registration. A signup wave at ten times what the node absorbs, with every refused
//! newcomer trying again, costs more in refusals than the node has. Worse, every datagram
//! goes through the one socket and the one endpoint task: while that task works through a
//! flood of Initials, the established users' packets wait behind them in the kernel's
//! receive buffer, and their messages take seconds.
//!
//! So the socket under the endpoint ([`DoorSocket`]) looks at the first byte and the
//! destination connection id of each datagram as it is read. A QUIC Initial whose
//! destination id is not one this node issued opens a new connection; those pass at the
//! rate admission control sets ([`Door::set_rate`]) and the rest are dropped before QUIC
//! decrypts anything (in a profile of a quarter-core node dropping 3,000–6,000 a second,
//! receiving was under 4% of its CPU; docs/PERFORMANCE-LOG.md). Everything else passes
//! untouched: packets of established connections, and handshakes already under way (after
//! the node's first answer, the client addresses it by an id the node issued, which
//! [`IssuedIds`] recognises without keeping any state). The client's QUIC stack sends a
//! dropped Initial again after its retransmission timeout (1 s, then 2 s, 4 s, ...), which
//! spaces out a crowd's attempts without any cost to the node.

use std::fmt;
use std::hash::BuildHasher;
use std::io::{self, IoSliceMut};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller};
use ring::rand::{SecureRandom, SystemRandom};

use super::sieve::{ISSUED_ID_LEN, Sieve};
use crate::admission::{HandshakeRate, PASS_LIFETIME_SECS, PassKey};

/// Random part of an issued connection id: enough entropy that ids of concurrent
/// connections do not collide.
const NONCE_LEN: usize = 8;
/// Keyed-hash part, by which the door recognises ids it issued.
const MARK_LEN: usize = 4;
// The kernel's sieve tells ids this node issued by their length alone.
const _: () = assert!(NONCE_LEN + MARK_LEN == ISSUED_ID_LEN as usize);

/// Connection ids that carry a keyed hash of their random part, so the node can tell "an
/// id I issued" from "an id a client made up" statelessly. The key is random per process
/// (`RandomState`): ids only need to be recognised by the endpoint that issued them.
#[derive(Clone)]
pub(crate) struct IssuedIds {
    key: std::hash::RandomState,
}

impl IssuedIds {
    pub(crate) fn new() -> Self {
        Self {
            key: std::hash::RandomState::new(),
        }
    }

    fn mark(&self, nonce: &[u8]) -> [u8; MARK_LEN] {
        let h = self.key.hash_one(nonce).to_le_bytes();
        [h[0], h[1], h[2], h[3]]
    }

    /// Whether `cid` is one this node issued (false positives: 1 in 2³²).
    pub(crate) fn recognises(&self, cid: &[u8]) -> bool {
        cid.len() == NONCE_LEN + MARK_LEN && cid[NONCE_LEN..] == self.mark(&cid[..NONCE_LEN])
    }
}

impl ConnectionIdGenerator for IssuedIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut cid = [0u8; NONCE_LEN + MARK_LEN];
        // SystemRandom fails only if the OS has no randomness at all; the hash of the time
        // then still gives distinct ids.
        if SystemRandom::new().fill(&mut cid[..NONCE_LEN]).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            cid[..NONCE_LEN].copy_from_slice(&self.key.hash_one(now).to_le_bytes());
        }
        let mark = self.mark(&cid[..NONCE_LEN]);
        cid[NONCE_LEN..].copy_from_slice(&mark);
        ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        NONCE_LEN + MARK_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Whether `datagram` opens a new connection: its first packet is a QUIC v1 Initial whose
/// destination connection id was not issued by this node. Short-header packets (every
/// packet of an established connection), other long-header types and other versions are
/// not (QUIC itself answers those as it should).
pub(crate) fn opens_connection(datagram: &[u8], issued: &IssuedIds) -> bool {
    let [first, v0, v1, v2, v3, dcid_len, rest @ ..] = datagram else {
        return false;
    };
    let long_header = first & 0x80 != 0;
    let initial = (first >> 4) & 0x03 == 0;
    if !long_header || !initial || [*v0, *v1, *v2, *v3] != [0, 0, 0, 1] {
        return false;
    }
    match rest.get(..usize::from(*dcid_len)) {
        Some(dcid) => !issued.recognises(dcid),
        None => false,
    }
}

/// The token field of a QUIC Initial (RFC 9000 §17.2.2), where a client puts its door pass;
/// `None` if the datagram is too short to hold what its header says.
fn initial_token(datagram: &[u8]) -> Option<&[u8]> {
    let dcid_len = usize::from(*datagram.get(5)?);
    let scid_at = 6 + dcid_len;
    let scid_len = usize::from(*datagram.get(scid_at)?);
    let length_at = scid_at + 1 + scid_len;
    // A variable-length integer: the top two bits of its first byte give its length.
    let first = *datagram.get(length_at)?;
    let width = 1usize << (first >> 6);
    let mut len = u64::from(first & 0x3F);
    for b in datagram.get(length_at + 1..length_at + width)? {
        len = (len << 8) | u64::from(*b);
    }
    let start = length_at + width;
    datagram.get(start..start.checked_add(usize::try_from(len).ok()?)?)
}

/// New connections arriving at the door per second, whether they pass or not: the
/// demand the door sees, for the autoscaling signal (`admission::Load::door_pressure`).
#[derive(Debug)]
pub(crate) struct DoorArrivals {
    last: Instant,
    counted_at_last: u64,
    per_sec: f64,
}

impl DoorArrivals {
    /// How often the rate is re-estimated: often enough to follow a wave's front, seldom
    /// enough that a handful of connections is a rate.
    const INTERVAL: Duration = Duration::from_millis(500);

    pub(crate) fn new(now: Instant) -> Self {
        Self {
            last: now,
            counted_at_last: 0,
            per_sec: 0.0,
        }
    }

    /// Takes `counted`, the door's running count of new connections without a pass that
    /// reached it, and `kernel_share`, the share of them the kernel let reach it; smooths
    /// over about two intervals.
    pub(crate) fn update(&mut self, counted: u64, kernel_share: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.last);
        if dt < Self::INTERVAL {
            return;
        }
        let reached = counted.saturating_sub(self.counted_at_last) as f64 / dt.as_secs_f64();
        let arriving = reached / kernel_share.max(f64::MIN_POSITIVE);
        self.per_sec = 0.5 * self.per_sec + 0.5 * arriving;
        self.last = now;
        self.counted_at_last = counted;
    }

    /// New connections arriving per second over `rate`, the most the door lets through
    /// (`None`: no limit); 1.0 when the door is not limited or has room to spare.
    pub(crate) fn pressure(&self, rate: Option<f64>) -> f64 {
        rate.map_or(1.0, |r| (self.per_sec / r.max(f64::MIN_POSITIVE)).max(1.0))
    }
}

/// How many new connections the door lets through: the node-wide handshake rate admission
/// control asks for (`None`: no limit), as a token bucket — except those carrying a door
/// pass (`admission::PassKey`), known accounts logging in again, which go through whatever
/// the rate.
///
/// And none, pass or not, while the node's handshake budget is spent
/// ([`limit_handshakes`](Self::limit_handshakes)): the case of a mass reconnect, where
/// every client holds a pass. The accept gate would refuse them (`node::guard`), but a
/// refusal costs QUIC a decrypted Initial and an encrypted answer (about 50 µs, see the
/// module notes) for each attempt of a crowd that tries again within a second or two.
/// Dropped here they cost a glance at a few bytes, and the clients' QUIC stacks send again
/// after 1 s, then 2 s.
pub(crate) struct Door {
    issued: IssuedIds,
    passes: PassKey,
    /// f64 bits of the rate; `NO_LIMIT` when unlimited.
    rate: AtomicU64,
    bucket: Mutex<HandshakeRate>,
    /// New-connection Initials judged so far (passed or dropped).
    judged: AtomicU64,
    dropped: AtomicU64,
    /// New connections let through on a pass while the door was limited.
    passed: AtomicU64,
    /// The kernel's share of the work, once the endpoint's socket is known.
    sieve: Mutex<Option<Sieve>>,
    /// Handshakes in progress on the node and the most it takes at once, once known.
    handshakes: std::sync::OnceLock<(Arc<AtomicUsize>, usize)>,
    /// New connections dropped because the handshake budget was spent.
    dropped_full: AtomicU64,
    /// New connections arriving, for the load signal's door pressure. Pass holders are
    /// told apart only while the door is limited, so just after it closes, logins from
    /// before count as newcomers for about a second.
    arrivals: Mutex<DoorArrivals>,
}

const NO_LIMIT: u64 = u64::MAX;

impl Door {
    /// A door recognising passes sealed with `passes` (the cluster's pass key).
    pub(crate) fn new(passes: PassKey) -> Self {
        Self {
            issued: IssuedIds::new(),
            passes,
            rate: AtomicU64::new(NO_LIMIT),
            bucket: Mutex::new(HandshakeRate::new(Instant::now())),
            judged: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            sieve: Mutex::new(None),
            handshakes: std::sync::OnceLock::new(),
            dropped_full: AtomicU64::new(0),
            arrivals: Mutex::new(DoorArrivals::new(Instant::now())),
        }
    }

    /// Drops every new connection while `in_progress` (the node's count of handshakes under
    /// way) is at `max`. Set once; later calls change nothing.
    pub(crate) fn limit_handshakes(&self, in_progress: Arc<AtomicUsize>, max: usize) {
        let _ = self.handshakes.set((in_progress, max));
    }

    /// Whether the handshake budget is spent.
    fn handshakes_full(&self) -> bool {
        self.handshakes
            .get()
            .is_some_and(|(n, max)| n.load(Ordering::Relaxed) >= *max)
    }

    /// New connections dropped because the handshake budget was spent, so far (also
    /// counted in [`dropped`](Self::dropped)).
    pub(crate) fn dropped_full(&self) -> u64 {
        self.dropped_full.load(Ordering::Relaxed)
    }

    /// A pass for a client at `ip` that has just proved its account, honoured from now
    /// (`now_secs`, Unix time) for [`PASS_LIFETIME_SECS`] by every node of the cluster.
    pub(crate) fn pass_for(&self, ip: IpAddr, now_secs: u64) -> Vec<u8> {
        self.passes.seal(ip, now_secs + PASS_LIFETIME_SECS)
    }

    /// Lets the kernel drop a share of new connections on `socket` (the endpoint's, or a
    /// duplicate of it) while the door is limited; see `node::sieve`.
    pub(crate) fn sieve(&self, socket: std::net::UdpSocket) {
        *self.sieve.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Sieve::new(socket, Instant::now()));
    }

    /// The share of new connections the kernel passes to the door (1.0 without a sieve).
    pub(crate) fn kernel_share(&self) -> f64 {
        self.sieve
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(1.0, Sieve::share)
    }

    /// The connection ids this door recognises, for the endpoint to issue.
    pub(crate) fn issued_ids(&self) -> IssuedIds {
        self.issued.clone()
    }

    /// Sets how many new connections per second may pass (`None`: all), and adjusts the
    /// kernel's share of the work to it.
    pub(crate) fn set_rate(&self, rate: Option<f64>) {
        let bits = rate.map_or(NO_LIMIT, f64::to_bits);
        self.rate.store(bits, Ordering::Relaxed);
        let now = Instant::now();
        let judged = self.judged.load(Ordering::Relaxed);
        let newcomers = judged.saturating_sub(self.passed.load(Ordering::Relaxed));
        let mut sieve = self.sieve.lock().unwrap_or_else(|p| p.into_inner());
        // Read before the sieve changes it: the share in force while these arrived.
        let share = sieve.as_ref().map_or(1.0, Sieve::share);
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .update(newcomers, share, now);
        if let Some(sieve) = sieve.as_mut() {
            sieve.update(judged, rate, now);
        }
    }

    /// New connections without a pass arriving per second over the rate the door lets
    /// through ([`DoorArrivals::pressure`]).
    pub(crate) fn pressure(&self) -> f64 {
        let bits = self.rate.load(Ordering::Relaxed);
        let rate = (bits != NO_LIMIT).then(|| f64::from_bits(bits));
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pressure(rate)
    }

    /// New connections dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// New connections let through on a pass while the door was limited, so far.
    pub(crate) fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    /// Whether `datagram`, from `from`, may go on to QUIC; `now_secs` is Unix time, for
    /// passes.
    fn admits(&self, datagram: &[u8], from: IpAddr, now: Instant, now_secs: u64) -> bool {
        if !opens_connection(datagram, &self.issued) {
            return true;
        }
        self.judged.fetch_add(1, Ordering::Relaxed);
        if self.handshakes_full() {
            self.dropped_full.fetch_add(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let bits = self.rate.load(Ordering::Relaxed);
        let rate = (bits != NO_LIMIT).then(|| f64::from_bits(bits));
        // Checked only while the door is limited: one HMAC, against a handshake's cost.
        if rate.is_some()
            && initial_token(datagram).is_some_and(|t| self.passes.admits(t, from, now_secs))
        {
            self.passed.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let passes = self
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(rate, now);
        if !passes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        passes
    }
}

/// The node's UDP socket with the [`Door`] in front of QUIC.
pub(crate) struct DoorSocket {
    pub(crate) inner: Arc<dyn AsyncUdpSocket>,
    pub(crate) door: Arc<Door>,
}

impl fmt::Debug for DoorSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoorSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for DoorSocket {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = received {
            let now = Instant::now();
            let now_secs = crate::clock::now_ms() / 1000;
            for (m, buf) in meta.iter_mut().zip(bufs.iter()).take(n) {
                // A datagram batch (GRO) comes from one sender and one connection: its first
                // packet speaks for it. Length 0 makes QUIC skip the entry.
                let datagram = &buf[..m.len.min(buf.len())];
                if !self.door.admits(datagram, m.addr.ip(), now, now_secs) {
                    m.len = 0;
                }
            }
        }
        received
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_is_what_arrives_over_what_the_door_lets_through() {
        let t0 = Instant::now();
        let mut a = DoorArrivals::new(t0);
        assert_eq!(a.pressure(Some(10.0)), 1.0, "nothing arrived yet");
        // 40 a second reach the door for two seconds, a quarter of those the kernel saw.
        let mut counted = 0;
        for i in 1..=4 {
            counted += 5;
            a.update(counted, 0.25, t0 + Duration::from_millis(500 * i));
        }
        let p = a.pressure(Some(10.0));
        assert!(p > 3.5 && p <= 4.0, "{p}");
        assert_eq!(a.pressure(None), 1.0, "an open door holds nobody back");
        assert_eq!(a.pressure(Some(100.0)), 1.0, "room to spare");
        // Updates closer together than the interval change nothing.
        a.update(counted + 1000, 1.0, t0 + Duration::from_millis(2100));
        assert_eq!(a.pressure(Some(10.0)), p);
    }

    /// A QUIC v1 long-header packet of `kind` (0 = Initial) to `dcid`, padded as clients pad.
    fn long_packet(kind: u8, version: u32, dcid: &[u8]) -> Vec<u8> {
        initial_with_token(kind, version, dcid, &[])
    }

    /// The same, carrying `token` (its length as a two-byte variable-length integer, as
    /// quinn writes it for tokens of 64 bytes or more; one byte is tested by the empty one).
    fn initial_with_token(kind: u8, version: u32, dcid: &[u8], token: &[u8]) -> Vec<u8> {
        let mut p = vec![0xC0 | (kind << 4)];
        p.extend_from_slice(&version.to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend_from_slice(dcid);
        p.push(8);
        p.extend_from_slice(&[7; 8]);
        if !token.is_empty() {
            p.extend_from_slice(&(0x4000 | token.len() as u16).to_be_bytes());
            p.extend_from_slice(token);
        }
        p.resize(1200, 0);
        p
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const NOW: u64 = 1_800_000_000;

    fn door() -> Door {
        Door::new(PassKey::new(b"cluster secret"))
    }

    #[test]
    fn the_token_field_is_found_behind_both_connection_ids() {
        let token = [0xAB; 41];
        let p = initial_with_token(0, 1, &[0x11; 8], &token);
        assert_eq!(initial_token(&p), Some(&token[..]));
        assert_eq!(
            initial_token(&long_packet(0, 1, &[0x11; 20])),
            Some(&[][..])
        );
        // A length running past the datagram, or a header cut short.
        assert_eq!(initial_token(&p[..30]), None);
        assert_eq!(initial_token(&[0xC0, 0, 0, 0, 1, 20, 1, 2]), None);
    }

    #[test]
    fn only_initials_to_ids_the_node_did_not_issue_open_connections() {
        let mut issued = IssuedIds::new();
        let ours = issued.generate_cid();
        assert_eq!(ours.len(), issued.cid_len());
        assert!(issued.recognises(&ours));
        let theirs = [0x5a; 16];
        assert!(opens_connection(&long_packet(0, 1, &theirs), &issued));
        // The client's later Initials carry the id the node gave it.
        assert!(!opens_connection(&long_packet(0, 1, &ours), &issued));
        // Handshake packets, other versions, short headers, runts.
        assert!(!opens_connection(&long_packet(2, 1, &theirs), &issued));
        assert!(!opens_connection(&long_packet(0, 2, &theirs), &issued));
        assert!(!opens_connection(&[0x40, 1, 2, 3, 4, 5, 6, 7, 8], &issued));
        assert!(!opens_connection(&[0xC0, 0, 0, 0, 1, 20, 1, 2], &issued));
        assert!(!opens_connection(&[], &issued));
        // Ids of another node (another key) are not ours.
        let mut other = IssuedIds::new();
        assert!(!issued.recognises(&other.generate_cid()));
        let forged = [0x5a; NONCE_LEN + MARK_LEN];
        assert!(!issued.recognises(&forged));
    }

    #[test]
    fn the_door_passes_everything_until_a_rate_is_set_then_only_new_connections_wait() {
        let door = door();
        let t0 = Instant::now();
        let admits = |p: &[u8], at| door.admits(p, CLIENT, at, NOW);
        let new = long_packet(0, 1, &[0x11; 8]);
        assert!((0..1000).all(|_| admits(&new, t0)), "no limit");
        door.set_rate(Some(40.0));
        let passed = (1..=1000)
            .filter(|&ms| admits(&new, t0 + Duration::from_millis(ms)))
            .count();
        assert_eq!(passed, 40, "40 per second");
        assert_eq!(door.dropped(), 960);
        // Established traffic is never held at the door.
        let mut ids = door.issued_ids();
        let established = long_packet(0, 1, &ids.generate_cid());
        let short = [0x41u8; 64];
        assert!((0..1000).all(|_| admits(&short, t0) && admits(&established, t0)));
        door.set_rate(None);
        assert!(admits(&new, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn a_valid_pass_goes_through_a_limited_door_and_nothing_else_does() {
        let door = door();
        let t0 = Instant::now();
        // A limited door with nothing banked: it starts empty.
        door.set_rate(Some(1.0));
        assert!(!door.admits(&long_packet(0, 1, &[0x11; 8]), CLIENT, t0, NOW));
        let pass = door.pass_for(CLIENT, NOW);
        let with = |token: &[u8]| initial_with_token(0, 1, &[0x22; 8], token);
        assert!(
            (0..100).all(|_| door.admits(&with(&pass), CLIENT, t0, NOW)),
            "a known client is never held"
        );
        assert_eq!(door.passed(), 100);
        let elsewhere: IpAddr = "192.0.2.1".parse().expect("an address");
        let expired = NOW + PASS_LIFETIME_SECS;
        let foreign = Door::new(PassKey::new(b"another cluster")).pass_for(CLIENT, NOW);
        let mut forged = pass.clone();
        forged[3] ^= 1;
        assert!(
            !door.admits(&with(&pass), elsewhere, t0, NOW),
            "another address"
        );
        assert!(!door.admits(&with(&pass), CLIENT, t0, expired), "expired");
        assert!(
            !door.admits(&with(&foreign), CLIENT, t0, NOW),
            "another cluster"
        );
        assert!(!door.admits(&with(&forged), CLIENT, t0, NOW), "forged");
        assert!(
            !door.admits(&with(&[7; 40]), CLIENT, t0, NOW),
            "some other token"
        );
        assert_eq!((door.passed(), door.dropped()), (100, 6));
    }

    #[test]
    fn a_spent_handshake_budget_drops_every_new_connection_even_with_a_pass() {
        let door = door();
        let t0 = Instant::now();
        let in_progress = Arc::new(AtomicUsize::new(0));
        door.limit_handshakes(in_progress.clone(), 2);
        let pass = door.pass_for(CLIENT, NOW);
        let returning = initial_with_token(0, 1, &[0x22; 8], &pass);
        let new = long_packet(0, 1, &[0x11; 8]);
        assert!(door.admits(&returning, CLIENT, t0, NOW) && door.admits(&new, CLIENT, t0, NOW));
        in_progress.store(2, Ordering::Relaxed);
        assert!(
            !door.admits(&returning, CLIENT, t0, NOW),
            "a pass does not help"
        );
        assert!(!door.admits(&new, CLIENT, t0, NOW));
        // Established connections go on: the budget is about new ones.
        let mut ids = door.issued_ids();
        assert!(door.admits(&long_packet(0, 1, &ids.generate_cid()), CLIENT, t0, NOW));
        assert!(door.admits(&[0x41u8; 64], CLIENT, t0, NOW));
        assert_eq!((door.dropped_full(), door.dropped()), (2, 2));
        in_progress.store(1, Ordering::Relaxed);
        assert!(door.admits(&returning, CLIENT, t0, NOW), "room again");
    }
}
