//! Shared helpers for the relay's integration tests: a real node on loopback, real clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use levee_client::{Client, ClientConfig, Deliveries, Delivery};
use levee_client::{Fingerprint, Trust, tls::quic_client_config};
use levee_protocol::wire::{EXPORTER_LABEL, FrameDecoder, encode_frame, pb};
use levee_relay::{Identity, Node, NodeConfig};
use prost::Message;
use tokio::sync::oneshot;

/// A node running in this process on 127.0.0.1:0 with its data in a temporary directory.
pub struct TestNode {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub fingerprint: Fingerprint,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    pub fn start(data: &Path) -> Self {
        Self::start_with(NodeConfig {
            data_dir: data.to_owned(),
            ..test_config()
        })
    }

    /// A node with the test defaults changed by `tune`, and two registered users.
    pub async fn with_pair(
        data: &Path,
        tune: impl FnOnce(&mut NodeConfig),
    ) -> (Self, Client, Client) {
        let mut config = NodeConfig {
            data_dir: data.to_owned(),
            ..test_config()
        };
        tune(&mut config);
        let node = Self::start_with(config);
        let (a, b) = (node.new_user().await, node.new_user().await);
        (node, a, b)
    }

    pub fn start_with(config: NodeConfig) -> Self {
        let node = Node::open(config).expect("node opens");
        let addr = node.local_addr();
        let admin = node.admin_addr();
        let fingerprint = node.fingerprint();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            node.run(async {
                let _ = stopped.await;
            })
            .await
            .expect("node runs");
        });
        Self {
            addr,
            admin,
            fingerprint,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addr, Trust::Fingerprint(self.fingerprint))
    }

    /// Connects a client for `identity` (not yet authenticated).
    pub async fn connect(&self, identity: &Identity) -> Client {
        Client::connect(&self.client_config(), identity.clone())
            .await
            .expect("client connects")
    }

    /// Connects and registers a client for `identity`.
    pub async fn user(&self, identity: &Identity) -> Client {
        let client = self.connect(identity).await;
        client.register().await.expect("register");
        client
    }

    /// Connects and registers a client for a new identity.
    pub async fn new_user(&self) -> Client {
        self.user(&Identity::generate().unwrap()).await
    }

    /// Reconnects as an existing account and subscribes to its mailbox.
    pub async fn resume(&self, identity: &Identity) -> (Client, Deliveries) {
        let client = self.connect(identity).await;
        client.authenticate().await.expect("authenticate");
        let inbox = client.subscribe().await.expect("subscribe");
        (client, inbox)
    }

    /// `GET path` on the admin port: (status line, body).
    pub async fn admin_get(&self, path: &str) -> (String, String) {
        admin_request(self.admin.expect("admin port"), "GET", path).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("node task");
        }
    }
}

/// `method path` on an admin port: (status line, body).
pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// A metric's value on a node's admin port (summed over the series whose line starts with
/// `series`), if the node exports it.
pub async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, page) = admin_request(admin, "GET", "/metrics").await;
    let values: Vec<f64> = page
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

pub fn test_config() -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..NodeConfig::default()
    }
}

/// Receives until `n` envelopes arrived or `quiet` passes without one.
pub async fn receive(inbox: &mut Deliveries, n: usize, quiet: Duration) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(quiet, inbox.next()).await {
            Ok(Some(d)) => out.push(d),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Asserts that nothing arrives within half a second.
pub async fn assert_nothing_arrives(inbox: &mut Deliveries) {
    let got = receive(inbox, 1, Duration::from_millis(500)).await;
    assert!(got.is_empty(), "unexpected delivery: {got:?}");
}

/// A bare protocol connection, for sending what the client library never would.
pub struct RawConnection {
    pub conn: quinn::Connection,
    pub exporter: [u8; 32],
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    _endpoint: quinn::Endpoint,
}

impl RawConnection {
    /// A QUIC connection to `node` with the handshake done and no stream opened. The
    /// endpoint lives as long as the connection.
    pub async fn connect_only(node: &TestNode) -> quinn::Connection {
        Self::handshake(node).await.0
    }

    async fn handshake(node: &TestNode) -> (quinn::Connection, quinn::Endpoint) {
        let (crypto, _) = quic_client_config(&Trust::Fingerprint(node.fingerprint)).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(node.addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        (conn, endpoint)
    }

    pub async fn open(node: &TestNode) -> Self {
        let (conn, endpoint) = Self::handshake(node).await;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        Self {
            conn,
            exporter,
            send,
            recv,
            decoder: FrameDecoder::new(1 << 24),
            _endpoint: endpoint,
        }
    }

    /// Ends the client's direction of the session stream (FIN).
    pub fn finish(&mut self) {
        self.send.finish().unwrap();
    }

    /// The QUIC application close code and reason the server closed the connection with.
    pub async fn closed_by_server(&self) -> (u64, String) {
        server_close(&self.conn).await
    }

    pub async fn write_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    pub async fn request(&mut self, request_id: u64, body: pb::client_frame::Body) {
        let frame = encode_frame(&pb::ClientFrame {
            request_id,
            body: Some(body),
        });
        self.write_bytes(&frame).await;
    }

    /// The next server frame, or `None` if the stream ended or nothing came within 5 s.
    pub async fn next(&mut self) -> Option<pb::ServerFrame> {
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return Some(pb::ServerFrame::decode(frame).unwrap());
            }
            match tokio::time::timeout(Duration::from_secs(5), self.recv.read_chunk(65536, true))
                .await
            {
                Ok(Ok(Some(chunk))) => self.decoder.extend(&chunk.bytes),
                _ => return None,
            }
        }
    }

    /// The next response (skipping deliveries).
    pub async fn response(&mut self) -> Option<pb::Response> {
        loop {
            match self.next().await?.body {
                Some(pb::server_frame::Body::Response(r)) => return Some(r),
                _ => continue,
            }
        }
    }

    /// `Hello`, returning the challenge nonce.
    pub async fn hello(&mut self) -> [u8; 32] {
        self.challenge().await.nonce.as_ref().try_into().unwrap()
    }

    /// `Hello`, returning the whole challenge.
    pub async fn challenge(&mut self) -> pb::Challenge {
        self.request(1, pb::client_frame::Body::Hello(pb::Hello::default()))
            .await;
        match self.response().await.and_then(|r| r.result) {
            Some(pb::response::Result::Challenge(c)) => c,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }
}

/// The QUIC application close code and reason the server closes `conn` with, within 20 s.
pub async fn server_close(conn: &quinn::Connection) -> (u64, String) {
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("the server closes the connection");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other:?}"),
    }
}

/// The error code of a response, if it is an error.
pub fn error_code(r: &pb::Response) -> Option<pb::ErrorCode> {
    match &r.result {
        Some(pb::response::Result::Error(e)) => pb::ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

pub fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

/// The `levee` binary built for these tests.
pub fn levee_bin() -> &'static str {
    env!("CARGO_BIN_EXE_levee")
}

/// Runs the `levee` binary with `args` in `dir` and waits for it.
pub fn levee(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(levee_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("levee runs")
}

/// A `levee up` process.
pub struct NodeProcess {
    pub child: Child,
    pub config: ClientConfig,
}

/// One node as `levee up` printed it.
#[derive(Clone, Debug)]
pub struct PrintedNode {
    pub name: String,
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
    pub admin: Option<SocketAddr>,
}

impl PrintedNode {
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addr, Trust::Fingerprint(self.fingerprint))
    }
}

impl NodeProcess {
    pub fn start(data: &Path) -> Self {
        Self::start_cluster(data, 1, &[]).0
    }

    /// `levee up` listening on `listen` (to restart a node where it was).
    pub fn start_on(data: &Path, listen: SocketAddr) -> Self {
        Self::start_listening(data, &listen.to_string(), 1, &[]).0
    }

    /// `levee up --nodes N` with `extra` flags; every node it printed.
    pub fn start_cluster(data: &Path, nodes: usize, extra: &[&str]) -> (Self, Vec<PrintedNode>) {
        Self::start_listening(data, "127.0.0.1:0", nodes, extra)
    }

    fn start_listening(
        data: &Path,
        listen: &str,
        nodes: usize,
        extra: &[&str],
    ) -> (Self, Vec<PrintedNode>) {
        let mut child = Command::new(levee_bin())
            .args(["up", "--listen", listen, "--data"])
            .arg(data)
            .args(["--nodes", &nodes.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("levee up starts");
        let printed = read_printed_nodes(&mut child, "data:");
        assert_eq!(printed.len(), nodes);
        let config = printed[0].client_config();
        (Self { child, config }, printed)
    }

    /// `levee node --config FILE`: one process of a distributed cluster.
    pub fn start_distributed(config: &Path) -> (Self, PrintedNode) {
        let mut child = Command::new(levee_bin())
            .args(["node", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("levee node starts");
        let printed = read_printed_nodes(&mut child, "cluster:");
        assert_eq!(printed.len(), 1, "levee node prints itself");
        let config = printed[0].client_config();
        (Self { child, config }, printed[0].clone())
    }

    /// Sends SIGKILL (std's `kill` on Unix): no shutdown code runs.
    pub fn sigkill(self) {
        drop(self);
    }

    pub async fn login(&self, id: &Identity) -> Client {
        let c = Client::connect(&self.config, id.clone()).await.unwrap();
        c.register().await.unwrap();
        c
    }
}

/// The node blocks a `levee up` / `levee node` process prints, up to the line starting with
/// `last`; then keeps draining its stdout so it never blocks on a full pipe.
fn read_printed_nodes(child: &mut Child, last: &str) -> Vec<PrintedNode> {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed: Vec<PrintedNode> = Vec::new();
    // Each node's block starts with its name.
    loop {
        let line = lines.next().expect("levee prints its nodes").unwrap();
        let line = line.trim();
        if let Some(name) = line.strip_prefix("levee node ready:") {
            printed.push(PrintedNode {
                name: name.trim().to_owned(),
                addr: "0.0.0.0:0".parse().unwrap(),
                fingerprint: Fingerprint([0; 32]),
                admin: None,
            });
        } else if let Some(a) = line.strip_prefix("address:") {
            printed.last_mut().unwrap().addr = a.trim().parse().unwrap();
        } else if let Some(f) = line.strip_prefix("fingerprint:") {
            printed.last_mut().unwrap().fingerprint = f.trim().parse().unwrap();
        } else if let Some(a) = line.strip_prefix("admin:") {
            printed.last_mut().unwrap().admin = Some(a.trim().parse().unwrap());
        } else if line.starts_with(last) {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    printed
}

impl Drop for NodeProcess {
    // Also on a failed assertion, so no node outlives its test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `prefix` made unique with the time, for names (clusters, topics) shared services keep.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos}")
}
