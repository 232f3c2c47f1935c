//! The sieve: the kernel's share of the door's work. While the door turns most new
//! connections away, a classic BPF filter on the node's socket drops a share of them in the
//! kernel, before they are copied to the node at all.
//!
//! Why: the door (`node::door`) drops a new connection's Initial cheaply next to a
//! handshake, but each one is still a datagram received, copied and looked at in the node's
//! process. A signup wave's crowd resends its Initials on QUIC's timers, and a quarter-core
//! node in a 10x wave received 20,000–30,000 of them a second. After a wave, with no
//! newcomer connected any more, 15,000–20,000 drops a second cost about a tenth of the
//! node's CPU budget: it was 98–100% busy while they came and 86–89% once they stopped
//! (`levee-surge --trace`, "busy"). The sieve passes to the door only a few times what the
//! door will let through, chosen at random; the rest never leave the kernel.
//!
//! What the filter matches is what the door would drop, without the door's keyed hash
//! (classic BPF cannot compute one): a long-header packet of type 0 — a QUIC v1 Initial;
//! the version is not checked, since clients only send that type in v1 — whose
//! destination connection id is not [`ISSUED_ID_LEN`] bytes long. Every id this node
//! issues has that length, so a handshake under way and an established connection always
//! pass; a client that happens to pick an id of that length for its first Initial passes
//! to the door, which judges it exactly. Clients pick their own first ids at random and
//! resend dropped Initials, so dropping at random in the kernel is as fair as the door's
//! token bucket. An Initial that carries a token also passes: it may hold a door pass
//! (`admission::PassKey`), which only the door can check; one with a token that is not a
//! pass is then judged by the door like any other new connection, at the door's cost
//! instead of the kernel's.
//!
//! [`SieveShare`] is the decision (pure, time passed in); [`Sieve`] puts it on the socket.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

#[cfg(any(target_os = "linux", target_os = "android"))]
use socket2::{SockFilter, SockRef};

/// Length of the connection ids this node issues (see `door::IssuedIds`).
pub(crate) const ISSUED_ID_LEN: u8 = 12;
/// How often the share is reconsidered.
const INTERVAL: Duration = Duration::from_millis(100);
/// The door is offered this many times what it lets through: enough that its token bucket
/// never waits for a candidate, however the arrivals bunch up.
const HEADROOM: f64 = 4.0;
/// The share never falls below this (one in a million).
const MIN_SHARE: f64 = 1e-6;

/// What share of new-connection Initials the kernel passes to the door.
#[derive(Debug)]
pub(crate) struct SieveShare {
    share: f64,
    /// New-connection Initials arriving at the socket, per second (smoothed), estimated from
    /// what reached the door divided by the share that passed.
    arrivals: f64,
    last: Instant,
    seen_at_last: u64,
}

impl SieveShare {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            share: 1.0,
            arrivals: 0.0,
            last: now,
            seen_at_last: 0,
        }
    }

    /// The share in force: 1.0 passes everything.
    pub(crate) fn share(&self) -> f64 {
        self.share
    }

    /// Given how many new-connection Initials have reached the door so far (`seen`, a
    /// running total) and the door's rate (`None`: no limit), returns the new share when it
    /// should change. At most once per [`INTERVAL`]. Falls at once to what the door needs
    /// ([`HEADROOM`] times its rate, of what arrives); rises at most twofold per interval,
    /// so that a quiet interval — few reached the door because few were passed — does not
    /// open the sieve to the whole crowd at once.
    pub(crate) fn update(&mut self, seen: u64, rate: Option<f64>, now: Instant) -> Option<f64> {
        let dt = now.saturating_duration_since(self.last);
        if dt < INTERVAL {
            return None;
        }
        let reached = seen.saturating_sub(self.seen_at_last) as f64 / dt.as_secs_f64();
        let arriving = reached / self.share;
        // Smoothed over about two intervals; a rise counts at once (a wave's front).
        self.arrivals = arriving.max(0.5 * self.arrivals + 0.5 * arriving);
        self.last = now;
        self.seen_at_last = seen;
        let next = match rate {
            None => 1.0,
            Some(_) if self.arrivals <= 0.0 => (2.0 * self.share).min(1.0),
            Some(r) => (HEADROOM * r / self.arrivals)
                .clamp(MIN_SHARE, 1.0)
                .min(2.0 * self.share),
        };
        // Small changes are not worth a system call.
        let changed =
            (next - self.share).abs() > 0.1 * self.share || (next == 1.0) != (self.share == 1.0);
        changed.then(|| {
            self.share = next;
            next
        })
    }
}

/// The filter program passing `share` of new-connection Initials (see the module docs).
/// Offsets count from the UDP header, which socket filters of UDP sockets see first.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn program(share: f64) -> Vec<SockFilter> {
    // Classic BPF opcodes (linux/filter.h).
    const LD_B_ABS: u16 = 0x30;
    const LD_B_IND: u16 = 0x50;
    const LD_W_ABS: u16 = 0x20;
    const AND_K: u16 = 0x54;
    const ADD_X: u16 = 0x0C;
    const TAX: u16 = 0x07;
    const JEQ_K: u16 = 0x15;
    const JGT_K: u16 = 0x25;
    const RET_K: u16 = 0x06;
    /// `SKF_AD_OFF + SKF_AD_RANDOM`: loads a random 32-bit number.
    const RANDOM: u32 = 0xFFFF_F000 + 56;
    const PAYLOAD: u32 = 8;
    // Pass when the random number is at most this.
    let threshold = (share.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u32;
    vec![
        // 0: the first byte: long header, fixed bit, type Initial.
        SockFilter::new(LD_B_ABS, 0, 0, PAYLOAD),
        SockFilter::new(AND_K, 0, 0, 0xF0),
        SockFilter::new(JEQ_K, 0, 10, 0xC0), // not an Initial: pass (13)
        // 3: a destination id of the length this node issues: a handshake under way, pass.
        SockFilter::new(LD_B_ABS, 0, 0, PAYLOAD + 5),
        SockFilter::new(JEQ_K, 8, 0, u32::from(ISSUED_ID_LEN)),
        // 5: a token (a door pass, for the door to check): pass. Its length's first byte
        // sits behind both ids: at 7 + destination id length + source id length. A packet
        // too short for that is dropped (an indirect load out of bounds ends the program
        // with 0), which only a malformed Initial is.
        SockFilter::new(TAX, 0, 0, 0),
        SockFilter::new(LD_B_IND, 0, 0, PAYLOAD + 6),
        SockFilter::new(ADD_X, 0, 0, 0),
        SockFilter::new(TAX, 0, 0, 0),
        SockFilter::new(LD_B_IND, 0, 0, PAYLOAD + 7),
        SockFilter::new(JEQ_K, 0, 2, 0), // a token: pass (13)
        // 11: a new connection without a token: pass `share` of them.
        SockFilter::new(LD_W_ABS, 0, 0, RANDOM),
        SockFilter::new(JGT_K, 1, 0, threshold),
        // 13: pass the whole datagram.
        SockFilter::new(RET_K, 0, 0, u32::MAX),
        // 14: drop it.
        SockFilter::new(RET_K, 0, 0, 0),
    ]
}

/// Puts a filter passing `share` of new connections on `socket`, or takes it off at 1.0.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn apply(socket: &UdpSocket, share: f64) -> std::io::Result<()> {
    let socket = SockRef::from(socket);
    if share >= 1.0 {
        socket.detach_filter()
    } else {
        socket.attach_filter(&program(share))
    }
}

/// Socket filters are Linux's; elsewhere the door does all the work.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn apply(_: &UdpSocket, _: f64) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// A [`SieveShare`] on a socket (a duplicate of the endpoint's, so the same socket).
pub(crate) struct Sieve {
    socket: UdpSocket,
    share: SieveShare,
    /// The socket refused a filter: the door does all the work from then on.
    refused: bool,
}

impl Sieve {
    pub(crate) fn new(socket: UdpSocket, now: Instant) -> Self {
        Self {
            socket,
            share: SieveShare::new(now),
            refused: false,
        }
    }

    /// The share in force.
    pub(crate) fn share(&self) -> f64 {
        self.share.share()
    }

    /// Reconsiders the share (see [`SieveShare::update`]) and puts a change on the socket.
    /// A socket that refuses the filter (no socket filters on this system) is left alone
    /// from then on, its share back at 1.0: the door behind it still judges every
    /// datagram, only at its own cost.
    pub(crate) fn update(&mut self, seen: u64, rate: Option<f64>, now: Instant) {
        if self.refused {
            return;
        }
        let Some(share) = self.share.update(seen, rate, now) else {
            return;
        };
        match apply(&self.socket, share) {
            Ok(()) => {}
            // Taking off a filter that is not there fails harmlessly (ENOENT).
            Err(_) if share >= 1.0 => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot filter new connections in the kernel");
                self.refused = true;
                self.share = SieveShare::new(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_falls_to_what_the_door_needs_and_climbs_back_slowly() {
        let t0 = Instant::now();
        let mut s = SieveShare::new(t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            s.update(0, Some(100.0), at(50)),
            None,
            "not yet an interval"
        );
        // 30,000/s reach the door while it lets 100/s through: pass 400/s of them.
        let share = s.update(3_000, Some(100.0), at(100)).expect("changes");
        assert!((share - 400.0 / 30_000.0).abs() < 1e-9, "{share}");
        // The crowd goes on arriving: about 400/s reach the door, nothing changes.
        assert_eq!(s.update(3_040, Some(100.0), at(200)), None);
        // The crowd leaves: nothing reaches the door; the share doubles per interval only.
        let mut seen = 3_040;
        let mut shares = Vec::new();
        for i in 3..12 {
            seen += 0;
            if let Some(share) = s.update(seen, Some(100.0), at(i * 100)) {
                shares.push(share);
            }
        }
        assert!(
            shares.windows(2).all(|w| w[1] <= 2.0 * w[0] + 1e-12),
            "{shares:?}"
        );
        assert_eq!(shares.last().copied(), Some(1.0), "open again: {shares:?}");
        // No limit at the door: everything passes at once.
        let mut s = SieveShare::new(t0);
        s.update(3_000, Some(100.0), at(100)).expect("falls");
        assert_eq!(s.update(6_000, None, at(200)), Some(1.0));
    }

    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn the_filter_drops_new_connections_in_the_kernel_and_passes_everything_else() {
        use std::net::UdpSocket;
        let node = UdpSocket::bind("127.0.0.1:0").expect("bind");
        node.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = node.local_addr().expect("addr");
        let packet = |first: u8, dcid_len: u8| {
            let mut p = vec![first, 0, 0, 0, 1, dcid_len];
            p.extend(std::iter::repeat_n(0x5a, usize::from(dcid_len)));
            p.resize(1200, 0);
            p
        };
        let new_connection = packet(0xC3, 20);
        // The same with a 41-byte token behind an 8-byte source id.
        let mut with_token = new_connection.clone();
        with_token[26] = 8;
        with_token[35..37].copy_from_slice(&[0x40, 41]);
        let handshake_under_way = packet(0xC3, ISSUED_ID_LEN);
        let handshake_packet = packet(0xE3, 20);
        let short_header = packet(0x43, 20);
        let arrives = |p: &[u8]| {
            client.send_to(p, to).expect("send");
            let mut buf = [0u8; 1500];
            node.recv_from(&mut buf).is_ok_and(|(n, _)| n == p.len())
        };
        SockRef::from(&node)
            .attach_filter(&program(0.0))
            .expect("attach");
        for _ in 0..5 {
            assert!(!arrives(&new_connection), "a new connection is dropped");
        }
        assert!(arrives(&with_token), "a token is for the door to judge");
        assert!(arrives(&handshake_under_way));
        assert!(arrives(&handshake_packet));
        assert!(arrives(&short_header));
        SockRef::from(&node)
            .attach_filter(&program(1.0))
            .expect("attach");
        assert!(arrives(&new_connection), "share 1.0 passes all");
        // Half: of 200 new connections, about half arrive.
        SockRef::from(&node)
            .attach_filter(&program(0.5))
            .expect("attach");
        node.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let passed = (0..200).filter(|_| arrives(&new_connection)).count();
        assert!((50..=150).contains(&passed), "{passed} of 200");
    }
}
