//! The node's QUIC endpoint: on a socket with large kernel buffers (why:
//! `levee_protocol::udp`), behind the node's door.

use std::net::SocketAddr;
use std::sync::Arc;

use super::door::{Door, DoorSocket};

/// A QUIC server endpoint on `addr` with `door` in front of it. The door recognises the
/// connection ids the endpoint issues.
pub(super) fn endpoint(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    door: Arc<Door>,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    let bound = levee_protocol::udp::bind(addr)?;
    // A duplicate descriptor of the same socket: a filter set through it applies to what
    // the endpoint receives.
    door.sieve(bound.try_clone()?);
    let socket = runtime.wrap_udp_socket(bound)?;
    let mut config = quinn::EndpointConfig::default();
    let ids = door.issued_ids();
    config.cid_generator(move || Box::new(ids.clone()));
    let socket: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(DoorSocket {
        inner: socket,
        door,
    });
    quinn::Endpoint::new_with_abstract_socket(config, Some(server), socket, runtime)
}
