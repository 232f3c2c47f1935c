//! The node's QUIC endpoint: on a socket with large kernel buffers (why:
//! `levee_protocol::udp`), behind the node's door.
//!
//! Its stateless-reset key is derived from the node's persistent secret, not drawn at
//! random per process as quinn does by default. A node that crashed and came back on the
//! same address then answers each packet of a connection it no longer has with a reset the
//! client recognises (the token was issued under the same key before the crash), and the
//! client reconnects at its next keep-alive (10 s) instead of waiting out the idle timeout
//! (30 s) in silence. A client's keep-alives already pace such a crowd: resets go out as
//! the packets arrive, at most one per `MIN_RESET_INTERVAL`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::door::{Door, DoorSocket};

/// The shortest gap between two stateless resets. quinn's default (20 ms: 50 a second for
/// the whole endpoint) would take over half an hour to tell 100,000 clients of a crashed
/// node that their connections are gone. A reset costs one HMAC and one datagram no larger
/// than the packet that caused it, so 10,000 a second bound both the node's work and what
/// a forged flood could reflect.
const MIN_RESET_INTERVAL: Duration = Duration::from_micros(100);
/// Separates the reset key from every other key derived from the node's secret.
const RESET_KEY_LABEL: &[u8] = b"levee quic stateless reset v1";

/// A QUIC server endpoint on `addr` with `door` in front of it. The door recognises the
/// connection ids the endpoint issues. `secret` (the node's persistent key) and
/// `node_name` fix the stateless-reset key across restarts.
pub(super) fn endpoint(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    door: Arc<Door>,
    secret: &[u8],
    node_name: &str,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    let bound = levee_protocol::udp::bind(addr)?;
    // A duplicate descriptor of the same socket: a filter set through it applies to what
    // the endpoint receives.
    door.sieve(bound.try_clone()?);
    let socket = runtime.wrap_udp_socket(bound)?;
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key(secret, node_name)));
    config.min_reset_interval(MIN_RESET_INTERVAL);
    let ids = door.issued_ids();
    config.cid_generator(move || Box::new(ids.clone()));
    let socket: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(DoorSocket {
        inner: socket,
        door,
    });
    quinn::Endpoint::new_with_abstract_socket(config, Some(server), socket, runtime)
}

/// The stateless-reset key of node `node_name`: an HMAC of a fixed label and the name under
/// the node's secret, so nodes sharing a cluster key still reset only with their own.
fn reset_key(secret: &[u8], node_name: &str) -> ring::hmac::Key {
    let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&master);
    context.update(RESET_KEY_LABEL);
    context.update(node_name.as_bytes());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, context.sign().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &ring::hmac::Key) -> Vec<u8> {
        ring::hmac::sign(key, b"a connection id").as_ref().to_vec()
    }

    #[test]
    fn the_reset_key_survives_a_restart_and_differs_between_nodes() {
        let secret = [7u8; 32];
        assert_eq!(
            token(&reset_key(&secret, "node-1")),
            token(&reset_key(&secret, "node-1"))
        );
        assert_ne!(
            token(&reset_key(&secret, "node-1")),
            token(&reset_key(&secret, "node-2"))
        );
        assert_ne!(
            token(&reset_key(&secret, "node-1")),
            token(&reset_key(&[8u8; 32], "node-1"))
        );
    }
}
