//! Door passes: what lets a known account's new connection past the node's door ahead of a
//! signup wave's crowd.
//!
//! The door (`node::door`) limits new connections while people wait in line, before any
//! handshake, so it cannot know who is connecting — and an established user whose node
//! died, logging in again elsewhere, would wait with the crowd: login (class 2) shed with
//! registrations (class 3), which admission control must never do. So every successful
//! login or registration is answered with a pass, sealed under the cluster key, that the
//! client puts in the token field of its next connections' first QUIC packet (the field
//! QUIC gives servers for exactly this: recognising a client before the handshake). The
//! door checks it with one HMAC, and a valid pass goes through whatever the door's rate.
//!
//! A pass names the client's IP address and an expiry, nothing else: it proves "this address
//! held an account recently", which is all the door needs, and it is useless from another
//! address. Any node with the cluster key checks it without shared state. Holding a pass
//! skips only the door: the handshake, the per-prefix limits and the login's own admission
//! decision still apply.

use std::net::IpAddr;

use ring::hmac;

/// How long a pass is honoured. Long enough for the reconnects a node's loss causes; every
/// login renews it.
pub const PASS_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// First byte of every pass. QUIC tokens of other kinds (a node's own address-validation
/// tokens) do not open as passes whatever their first byte: the tag decides.
const VERSION: u8 = b'P';
const BODY: usize = 1 + 8;
const LEN: usize = BODY + 32;

/// Seals and opens door passes with a key derived from the cluster key.
#[derive(Clone)]
pub struct PassKey {
    key: hmac::Key,
}

impl PassKey {
    /// The pass key of a cluster configured with `cluster_secret`: derived from it, so that
    /// a pass can never be mistaken for a ticket or the other way round.
    pub fn new(cluster_secret: &[u8]) -> Self {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, cluster_secret);
        let derived = hmac::sign(&derive, b"levee door pass v1");
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// A pass for a client at `ip`, honoured until `expires_at_secs` (Unix time).
    pub fn seal(&self, ip: IpAddr, expires_at_secs: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.push(VERSION);
        out.extend_from_slice(&expires_at_secs.to_be_bytes());
        let tag = hmac::sign(&self.key, &signed(ip, &out));
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Whether `bytes` is a pass for a client at `ip` still honoured at `now_secs`.
    pub fn admits(&self, bytes: &[u8], ip: IpAddr, now_secs: u64) -> bool {
        if bytes.len() != LEN || bytes[0] != VERSION {
            return false;
        }
        let (body, tag) = bytes.split_at(BODY);
        let expires = u64::from_be_bytes(body[1..].try_into().expect("8 bytes"));
        now_secs < expires && hmac::verify(&self.key, &signed(ip, body), tag).is_ok()
    }
}

/// What a pass's tag covers: the client's address and the pass's body.
fn signed(ip: IpAddr, body: &[u8]) -> [u8; 16 + BODY] {
    // One spelling per address: an IPv4 client seen through a dual-stack socket is the same
    // client.
    let ip = match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut out = [0u8; 16 + BODY];
    out[..16].copy_from_slice(&ip);
    out[16..].copy_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn a_pass_opens_on_any_node_of_the_cluster_from_its_address_until_it_expires() {
        let pass = PassKey::new(b"cluster secret").seal(HOME, 1_000);
        let other_node = PassKey::new(b"cluster secret");
        assert!(other_node.admits(&pass, HOME, 999));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("an address");
        assert!(
            other_node.admits(&pass, mapped, 999),
            "same client, dual stack"
        );
        assert!(!other_node.admits(&pass, HOME, 1_000), "expired");
        let elsewhere: IpAddr = "192.0.2.8".parse().expect("an address");
        assert!(!other_node.admits(&pass, elsewhere, 999), "another address");
        assert!(!PassKey::new(b"another cluster").admits(&pass, HOME, 999));
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_not_passes() {
        let key = PassKey::new(b"cluster secret");
        let pass = key.seal(HOME, 1_000);
        for bit in 0..pass.len() * 8 {
            let mut tampered = pass.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            assert!(!key.admits(&tampered, HOME, 999), "bit {bit}");
        }
        assert!(!key.admits(&pass[..LEN - 1], HOME, 999));
        assert!(!key.admits(&[], HOME, 999));
        // A ticket sealed under the same cluster key is not a pass.
        let ticket = super::super::TicketKey::new(b"cluster secret").seal(&super::super::Ticket {
            position: 1,
            issued_at_ms: 0,
            expires_at_ms: u64::MAX,
            key_hash: [0; 16],
            node_id: 1,
        });
        assert!(!key.admits(&ticket, HOME, 999));
    }
}
