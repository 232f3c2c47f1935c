//! A fault-injecting UDP proxy: what stands between clients and one relay node when a drill
//! wants to cut that node off from its clients.
//!
//! The node advertises the proxy's address (`advertise_address`), so clients reach it only
//! through the proxy — first contact and redirects alike, as behind a load balancer or NAT.
//! Each client socket gets its own upstream socket, so the node sees distinct peers and
//! QUIC's connection ids and path checks work unchanged. [`Proxy::cut`] drops every
//! datagram, both ways, for a while: to clients the node is gone, to the rest of the cluster
//! (which it reaches through the roster, not through here) it is alive — a gray failure.
//!
//! Client sockets are few (the drill multiplexes thousands of clients over one socket per
//! node), so upstream sockets live as long as the proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Large enough for any QUIC datagram.
const DATAGRAM: usize = 65_536;
/// Kernel buffers asked for each way: drill bursts must not be dropped by the proxy itself.
const BUFFER_BYTES: usize = 8 << 20;

/// See the module docs. Dropping it stops it.
pub struct Proxy {
    addr: SocketAddr,
    upstream: Arc<OnceLock<SocketAddr>>,
    cut_until: Arc<Mutex<Option<Instant>>>,
    _tasks: JoinSet<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream.get())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Listens on a free loopback port; forwards nothing until [`forward_to`](Self::forward_to).
    pub fn bind() -> std::io::Result<Self> {
        let front = Arc::new(udp("127.0.0.1:0".parse().expect("a literal address"))?);
        let addr = front.local_addr()?;
        let upstream = Arc::new(OnceLock::new());
        let cut_until = Arc::new(Mutex::new(None));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(front, upstream.clone(), cut_until.clone()));
        Ok(Self {
            addr,
            upstream,
            cut_until,
            _tasks: tasks,
        })
    }

    /// Where clients send: the address the node advertises.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the node's real address (once; later calls are ignored).
    pub fn forward_to(&self, node: SocketAddr) {
        let _ = self.upstream.set(node);
    }

    /// Drops everything, both ways, for `d` from now (never shortening a cut in force).
    pub fn cut(&self, d: Duration) {
        let end = Instant::now() + d;
        let mut until = self.cut_until.lock().unwrap_or_else(|p| p.into_inner());
        *until = Some(until.map_or(end, |u| u.max(end)));
    }
}

fn is_cut(cut_until: &Mutex<Option<Instant>>) -> bool {
    let until = *cut_until.lock().unwrap_or_else(|p| p.into_inner());
    until.is_some_and(|u| Instant::now() < u)
}

/// A bound, non-blocking UDP socket with large buffers.
fn udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Smaller buffers than asked are the kernel's limit, not an error.
    let _ = socket.set_recv_buffer_size(BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(BUFFER_BYTES);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Client → node: the front socket's loop. Each new client gets an upstream socket and a
/// task carrying the node's answers back.
async fn serve(
    front: Arc<UdpSocket>,
    upstream: Arc<OnceLock<SocketAddr>>,
    cut_until: Arc<Mutex<Option<Instant>>>,
) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut back = JoinSet::new();
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            // ICMP errors surface here on some systems; the socket itself is fine.
            continue;
        };
        let Some(&node) = upstream.get() else {
            continue;
        };
        if is_cut(&cut_until) {
            continue;
        }
        let socket = match clients.get(&client) {
            Some(s) => s.clone(),
            None => {
                let Ok(s) = udp("127.0.0.1:0".parse().expect("a literal address")) else {
                    continue;
                };
                if s.connect(node).await.is_err() {
                    continue;
                }
                let s = Arc::new(s);
                back.spawn(answer(s.clone(), front.clone(), client, cut_until.clone()));
                clients.insert(client, s.clone());
                s
            }
        };
        // A full buffer or a node that is down loses the datagram, as a network would.
        let _ = socket.send(&buf[..n]).await;
    }
}

/// Node → one client.
async fn answer(
    socket: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    cut_until: Arc<Mutex<Option<Instant>>>,
) {
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) if !is_cut(&cut_until) => {
                let _ = front.send_to(&buf[..n], client).await;
            }
            Ok(_) => {}
            // "Connection refused" from a node that is down: keep listening, it may return.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn round_trip(client: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
        client.send_to(msg, to).await.unwrap();
        let mut buf = [0u8; 1500];
        let got = tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await;
        got.ok().map(|n| buf[..n.unwrap()].to_vec())
    }

    #[tokio::test]
    async fn forwards_both_ways_and_a_cut_drops_everything_until_it_heals() {
        let proxy = Proxy::bind().unwrap();
        proxy.forward_to(echo().await);
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(
            round_trip(&client, proxy.addr(), b"one").await.as_deref(),
            Some(&b"one"[..])
        );
        proxy.cut(Duration::from_secs(2));
        assert_eq!(round_trip(&client, proxy.addr(), b"two").await, None);
        // Healed once the cut is over (polling: the test must not depend on timing).
        let mut healed = None;
        for _ in 0..20 {
            healed = round_trip(&client, proxy.addr(), b"three").await;
            if healed.is_some() {
                break;
            }
        }
        assert_eq!(healed.as_deref(), Some(&b"three"[..]));
    }
}
