//! Waiting-room tickets: a signed place in line that any node holding the cluster key can
//! check without shared state.

use ring::{digest, hmac};

/// A place in the registration line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// Position in the line (lower is earlier).
    pub position: u64,
    /// When it was issued, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// After this instant (ms since the Unix epoch) it is no longer honoured.
    pub expires_at_ms: u64,
    /// Which registration key it belongs to ([`key_hash`]); it is worthless to anyone else.
    pub key_hash: [u8; 16],
    /// The node that issued it.
    pub node_id: u32,
}

/// Why a presented ticket is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket of this format at all.
    #[error("not a waiting-room ticket")]
    Malformed,
    /// Forged, altered, or issued under another cluster key.
    #[error("ticket signature is invalid")]
    BadSignature,
    /// Valid but too old.
    #[error("ticket has expired")]
    Expired,
    /// Valid, but issued to another registration key.
    #[error("ticket belongs to another key")]
    WrongKey,
}

impl TicketError {
    /// Every kind, in declaration order: each has its metric series from the start.
    pub const ALL: [TicketError; 4] = [
        TicketError::Malformed,
        TicketError::BadSignature,
        TicketError::Expired,
        TicketError::WrongKey,
    ];

    /// A short label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            TicketError::Malformed => "malformed",
            TicketError::BadSignature => "bad_signature",
            TicketError::Expired => "expired",
            TicketError::WrongKey => "wrong_key",
        }
    }
}

const VERSION: u8 = 1;
const BODY: usize = 1 + 8 + 8 + 8 + 16 + 4;
const TAG: usize = 32;

/// The short hash of a registration key that a ticket carries (the key itself stays out of
/// the ticket).
pub fn key_hash(key: &[u8]) -> [u8; 16] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"levee ticket key v1");
    ctx.update(key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

/// Signs and checks tickets with the cluster key (HMAC-SHA256).
#[derive(Clone)]
pub struct TicketKey {
    key: hmac::Key,
}

impl TicketKey {
    /// The key every node of a cluster is configured with.
    pub fn new(cluster_secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, cluster_secret),
        }
    }

    /// The ticket as opaque bytes for the client: body ‖ HMAC tag.
    pub fn seal(&self, t: &Ticket) -> Vec<u8> {
        let mut out = Vec::with_capacity(BODY + TAG);
        out.push(VERSION);
        out.extend_from_slice(&t.position.to_be_bytes());
        out.extend_from_slice(&t.issued_at_ms.to_be_bytes());
        out.extend_from_slice(&t.expires_at_ms.to_be_bytes());
        out.extend_from_slice(&t.key_hash);
        out.extend_from_slice(&t.node_id.to_be_bytes());
        let tag = hmac::sign(&self.key, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Checks a ticket presented with registration key `key` at `now_ms`.
    pub fn open(&self, bytes: &[u8], key: &[u8], now_ms: u64) -> Result<Ticket, TicketError> {
        if bytes.len() != BODY + TAG || bytes[0] != VERSION {
            return Err(TicketError::Malformed);
        }
        let (body, tag) = bytes.split_at(BODY);
        hmac::verify(&self.key, body, tag).map_err(|_| TicketError::BadSignature)?;
        let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&body[25..41]);
        let ticket = Ticket {
            position: u64_at(1),
            issued_at_ms: u64_at(9),
            expires_at_ms: u64_at(17),
            key_hash: hash,
            node_id: u32::from_be_bytes(body[41..45].try_into().expect("4 bytes")),
        };
        if ticket.key_hash != key_hash(key) {
            return Err(TicketError::WrongKey);
        }
        if now_ms >= ticket.expires_at_ms {
            return Err(TicketError::Expired);
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(key: &TicketKey, owner: &[u8]) -> Vec<u8> {
        key.seal(&Ticket {
            position: 42,
            issued_at_ms: 1_000,
            expires_at_ms: 61_000,
            key_hash: key_hash(owner),
            node_id: 3,
        })
    }

    #[test]
    fn valid_tickets_open_on_any_node_with_the_cluster_key() {
        let node_a = TicketKey::new(b"cluster secret");
        let node_b = TicketKey::new(b"cluster secret");
        let t = issue(&node_a, b"alice");
        let opened = node_b.open(&t, b"alice", 30_000).expect("valid elsewhere");
        assert_eq!(
            (opened.position, opened.node_id),
            (42, 3),
            "the place in line is kept"
        );
    }

    #[test]
    fn forged_tampered_expired_and_borrowed_tickets_are_refused() {
        let key = TicketKey::new(b"cluster secret");
        let t = issue(&key, b"alice");
        assert_eq!(key.open(&t, b"mallory", 30_000), Err(TicketError::WrongKey));
        assert_eq!(key.open(&t, b"alice", 61_000), Err(TicketError::Expired));
        assert_eq!(
            key.open(&t[..10], b"alice", 30_000),
            Err(TicketError::Malformed)
        );
        assert_eq!(
            key.open(&[0u8; BODY + TAG], b"alice", 30_000),
            Err(TicketError::Malformed)
        );
        let mut forged = t.clone();
        forged[TAG..].iter_mut().for_each(|b| *b = 0);
        assert_eq!(
            key.open(&forged, b"alice", 30_000),
            Err(TicketError::BadSignature)
        );
        for bit in 8..BODY * 8 {
            let mut tampered = t.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                key.open(&tampered, b"alice", 30_000),
                Err(TicketError::BadSignature),
                "bit {bit}"
            );
        }
        let other_cluster = TicketKey::new(b"another cluster");
        assert_eq!(
            other_cluster.open(&t, b"alice", 30_000),
            Err(TicketError::BadSignature)
        );
    }
}
