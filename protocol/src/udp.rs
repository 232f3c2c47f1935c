//! The UDP sockets under QUIC endpoints, at both ends, with large kernel buffers.
//!
//! Linux gives a UDP socket about 208 KiB of receive buffer by default. A node taking a
//! burst of connection attempts (or a load tool making them) overflows that within
//! milliseconds whenever its endpoint driver is a little late, and the kernel drops the
//! rest silently: handshakes then wait for QUIC's retransmission timers and look, from the
//! outside, like a node that does not answer. Measured here during a signup wave: tens of
//! thousands of drops (`RcvbufErrors` in `/proc/net/snmp`) and connections timing out
//! after 10 s. The kernel caps what is asked at `net.core.rmem_max` / `wmem_max`, so raise
//! those on a production host (the README's operating notes say how).

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel buffer size asked for, each way.
const BUFFER_BYTES: usize = 8 << 20;

/// A bound UDP socket with buffers as large as the kernel allows up to 8 MiB each way.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A smaller buffer than asked is not an error: the kernel's limit is the operator's.
    let _ = socket.set_recv_buffer_size(BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_larger_than_the_default() {
        let socket = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let socket = Socket::from(socket);
        // The default is about 208 KiB; anything the kernel allows above it will do.
        assert!(socket.recv_buffer_size().expect("size") > 256 << 10);
    }
}
