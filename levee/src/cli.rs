//! Flag parsing and output for the `levee` binary. All behaviour lives in the libraries:
//! the node in `levee-relay`, the client commands in `levee-client`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};
use levee::config_file;
use levee_client::{
    AccountId, Client, ClientConfig, ClientError, Delivery, Fingerprint, Identity, Trust,
};
#[cfg(all(feature = "kafka", feature = "cql"))]
use levee_queue::KafkaLog;
use levee_relay::NodeConfig;
#[cfg(all(feature = "kafka", feature = "cql"))]
use levee_relay::cluster::{CqlLeases, CqlRoster};
use levee_relay::local_cluster::{LocalCluster, NodeSummary};
#[cfg(all(feature = "kafka", feature = "cql"))]
use levee_sharding::ScyllaMailboxStore;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "levee",
    version,
    about = "Levee: a load-shedding message relay for end-to-end encrypted messengers",
    after_help = "Exit codes: 0 success; 1 failure; 2 usage error; 3 server unreachable; \
                  4 certificate fingerprint mismatch; 5 refused by the server (or busy); \
                  6 fewer envelopes than --count before --timeout."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a relay node with embedded storage; prints its address and certificate fingerprint.
    Up(UpArgs),
    /// Create a new identity (an Ed25519 key pair) and print its account id.
    Keygen {
        /// Where to write the private key (created with mode 0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Register the identity's account on a node (idempotent).
    Register(ClientArgs),
    /// Send an envelope to an account.
    Send(SendArgs),
    /// Receive envelopes: print each, then acknowledge it.
    Recv(RecvArgs),
    /// Run one relay process of a distributed cluster (`levee node --config FILE`, with
    /// ScyllaDB and Kafka), or change and inspect a running cluster through a node's admin
    /// port (`levee node add|drain|list`).
    Node(NodeArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct NodeArgs {
    #[command(subcommand)]
    command: Option<NodeCommand>,
    #[command(flatten)]
    run: ConfigArgs,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Start one more node in the `levee up` process that serves ADMIN; prints it.
    Add(AdminArgs),
    /// Drain the node whose admin port is ADMIN: it hands its shards over, moves its clients
    /// to the new owners and leaves.
    Drain(AdminArgs),
    /// List the nodes as the node at ADMIN sees them: state, shards, address, fingerprint.
    List(AdminArgs),
}

#[derive(Args)]
struct AdminArgs {
    /// A node's admin address (printed by `levee up --admin ...`).
    #[arg(long, env = "LEVEE_ADMIN", value_name = "ADDR")]
    admin: SocketAddr,
    /// Bearer token, when the nodes have `admin_token` set.
    #[arg(long, env = "LEVEE_ADMIN_TOKEN", value_name = "TOKEN")]
    token: Option<String>,
    /// Print the node's JSON answer instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    settings: ConfigArgs,
    /// Run this many relay nodes in this process, sharing the embedded store: node k
    /// listens on the --listen port + k − 1 (likewise --admin), so a cluster can be tried on
    /// one machine. More can be added later with `levee node add`.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
}

/// Where a node's settings come from: a file, the environment, these flags.
#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file (every field optional for `levee up`, see
    /// docs/levee.example.toml; `levee node` needs [scylla], [kafka] and cluster_key, see
    /// docs/levee.distributed.example.toml).
    #[arg(long, env = "LEVEE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (embedded database and generated certificate). Default: .levee
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// UDP address to listen on. Default: 127.0.0.1:4433
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100). Default: off
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Turn admission control off (everything admitted): only to measure what it does.
    #[arg(long)]
    no_admission: bool,
}

#[derive(Args)]
struct ClientArgs {
    /// Identity file written by `levee keygen`.
    #[arg(long, env = "LEVEE_IDENTITY", value_name = "FILE")]
    identity: PathBuf,
    /// The node's address.
    #[arg(
        long,
        env = "LEVEE_SERVER",
        value_name = "ADDR",
        default_value = "127.0.0.1:4433"
    )]
    server: SocketAddr,
    /// Pin the node's certificate by its SHA-256 fingerprint (printed by `levee up`).
    #[arg(
        long,
        env = "LEVEE_FINGERPRINT",
        value_name = "HEX",
        conflicts_with = "ca"
    )]
    fingerprint: Option<Fingerprint>,
    /// Verify the node's certificate against this PEM CA bundle instead.
    #[arg(long, env = "LEVEE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// TLS server name to verify with --ca.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    server_name: String,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SendArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Recipient account id (64 hex characters).
    #[arg(long, value_name = "ACCOUNT_ID")]
    to: AccountId,
    /// The envelope's content, as text.
    #[arg(long, value_name = "STR", group = "payload", required = true)]
    text: Option<String>,
    /// The envelope's content, from a file (any bytes).
    #[arg(long, value_name = "PATH", group = "payload")]
    file: Option<PathBuf>,
}

#[derive(Args)]
struct RecvArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Stop after this many envelopes.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// Stop when no envelope arrives for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
}

/// A failure with the exit code that tells scripts what kind it was.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = match error.downcast_ref::<ClientError>() {
            Some(ClientError::Unreachable { .. }) => 3,
            Some(ClientError::CertificateMismatch) => 4,
            Some(ClientError::Refused { .. } | ClientError::Busy) => 5,
            _ => 1,
        };
        Self { code, error }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        anyhow::Error::from(e).into()
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(default_log_filter(&cli.command))
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levee: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            // One line: the whole cause chain, outermost first.
            eprintln!("levee: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Up(_) => "info,quinn=warn,fjall=warn,lsm_tree=warn",
        Command::Node(NodeArgs { command: None, .. }) => "info,quinn=warn,rdkafka=warn,scylla=warn",
        Command::Node(_) => "warn",
        _ => "warn",
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Up(args) => up(args).await.map_err(Failure::from),
        Command::Keygen { out, json } => keygen(&out, json).map_err(Failure::from),
        Command::Register(args) => register(args).await,
        Command::Send(args) => send(args).await,
        Command::Recv(args) => recv(args).await,
        Command::Node(NodeArgs {
            command: Some(command),
            ..
        }) => node_command(command).await.map_err(Failure::from),
        Command::Node(NodeArgs { command: None, run }) => {
            run_node(run).await.map_err(Failure::from)
        }
    }
}

/// Defaults, then the file, then `LEVEE_<FIELD>` variables, then flags.
fn node_config(args: &ConfigArgs) -> anyhow::Result<NodeConfig> {
    let mut config =
        config_file::layered(args.config.as_deref()).context("reading configuration")?;
    if let Some(data) = &args.data {
        config.data_dir = data.clone();
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin) = args.admin {
        config.admin_listen = Some(admin);
    }
    if args.no_admission {
        config.admission = false;
    }
    config
        .validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    Ok(config)
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let config = node_config(&args.settings)?;
    let data_dir = config.data_dir.clone();
    let cluster = LocalCluster::open(config).context("opening the data directory")?;
    let mut first = None;
    for _ in 0..args.nodes {
        let node = match cluster.add_node().await {
            Ok(node) => node,
            Err(e) => {
                let _ = cluster.shutdown().await;
                return Err(anyhow::Error::from(e).context("starting a node"));
            }
        };
        print_node(&node);
        first.get_or_insert(node);
    }
    let Some(first) = first else {
        return Err(anyhow!("--nodes must be at least 1"));
    };
    println!("  data:        {}", data_dir.display());
    if first.generated_certificate {
        println!(
            "  (generated a new self-signed certificate in {})",
            data_dir.join("tls").display()
        );
    }
    let (addr, fingerprint) = (first.address, first.fingerprint);
    println!();
    println!("try it:");
    println!("  levee keygen --out alice.key");
    println!("  levee register --identity alice.key --server {addr} --fingerprint {fingerprint}");
    if args.nodes > 1 {
        println!(
            "  (any node will do: clients are redirected to the node that owns their mailbox)"
        );
    }
    println!("stop with Ctrl-C");
    tokio::select! {
        // If the handler cannot be installed the nodes run until killed, which is what a
        // service manager would do anyway.
        _ = tokio::signal::ctrl_c() => {}
        () = cluster.all_stopped() => println!("every node has left"),
    }
    cluster
        .shutdown()
        .await
        .context("a node stopped with an error")?;
    println!("levee stopped");
    Ok(())
}

/// `levee node` without the backends it needs.
#[cfg(not(all(feature = "kafka", feature = "cql")))]
async fn run_node(_: ConfigArgs) -> anyhow::Result<()> {
    Err(anyhow!(
        "this levee was built without the `kafka` and `cql` features, and levee node keeps \
         mailboxes in CQL and the delivery log in Kafka: build it with the default features \
         (`cargo build -p levee`); `levee up` runs a node with embedded storage"
    ))
}

/// `levee node --config FILE`: one relay process of a distributed cluster.
#[cfg(all(feature = "kafka", feature = "cql"))]
async fn run_node(args: ConfigArgs) -> anyhow::Result<()> {
    const EXAMPLE: &str = "see docs/levee.distributed.example.toml";
    if args.config.is_none() {
        return Err(anyhow!(
            "levee node needs --config FILE with [scylla] and [kafka] tables ({EXAMPLE}); \
             for a node with embedded storage use `levee up`"
        ));
    }
    let config = node_config(&args)?;
    let (Some(mut scylla), Some(kafka)) = (config.scylla.clone(), config.kafka.clone()) else {
        return Err(anyhow!(
            "the configuration needs both a [scylla] and a [kafka] table ({EXAMPLE})"
        ));
    };
    if config.cluster_key.is_none() {
        return Err(anyhow!(
            "cluster_key must be set, the same on every node of the cluster ({EXAMPLE})"
        ));
    }
    scylla.envelope_ttl_secs = config.envelope_ttl_secs;
    let store = ScyllaMailboxStore::connect(&scylla)
        .await
        .with_context(|| format!("connecting to ScyllaDB at {}", scylla.nodes.join(", ")))?
        .count_statements(levee_relay::store_statements(&config.node_name));
    let log = KafkaLog::open(kafka.clone(), config.shards)
        .await
        .with_context(|| format!("opening the delivery log in Kafka at {}", kafka.brokers))?;
    let roster = CqlRoster::connect(
        store.session(),
        &scylla.keyspace,
        &config.cluster_name,
        Duration::from_millis(config.failure_timeout_ms),
    )
    .await
    .context("opening the roster")?;
    let leases = CqlLeases::connect(
        store.session(),
        &scylla.keyspace,
        &format!("{}/{}", config.cluster_name, kafka.topic),
    )
    .await
    .context("opening the shard leases")?;
    let node = levee_relay::Node::in_cluster(
        config.clone(),
        std::sync::Arc::new(store),
        std::sync::Arc::new(log),
        std::sync::Arc::new(roster),
        std::sync::Arc::new(leases),
    )
    .context("starting the node")?;
    let summary = NodeSummary::of(&node, &config.region);
    // "ready" once the node is in the roster and has its first view: printed earlier, a
    // script that connects on seeing it could find a node owning nothing yet.
    let (joined, is_in) = tokio::sync::oneshot::channel();
    // SIGTERM (or Ctrl-C) drains: the node hands its shards over, tells its clients where
    // to go, and leaves once they have or `drain_grace_ms` is over — what a service manager
    // or Kubernetes stopping a pod should get. A second signal stops it at once.
    let drain = node.drain_handle();
    let stop = async move {
        shutdown_signal().await;
        eprintln!("levee: draining (a second Ctrl-C or SIGTERM stops at once)");
        drain.drain();
        shutdown_signal().await;
    };
    let run = node.run_announcing(stop, joined);
    tokio::pin!(run);
    tokio::select! {
        stopped = &mut run => {
            stopped.context("the node could not join its cluster")?;
            println!("levee stopped");
            return Ok(());
        }
        Ok(()) = is_in => {}
    }
    print_node(&summary);
    println!(
        "  cluster:     {} (keyspace {}, topic {})",
        config.cluster_name, scylla.keyspace, kafka.topic
    );
    println!("stop with Ctrl-C or SIGTERM (drains first)");
    run.await.context("the node stopped with an error")?;
    println!("levee stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM (what service managers send). If a handler cannot be installed the
/// node runs until killed, which is what a service manager would do anyway.
#[cfg(all(feature = "kafka", feature = "cql"))]
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn print_node(node: &NodeSummary) {
    println!("levee node ready: {}", node.name);
    println!("  address:     {}", node.address);
    println!("  fingerprint: {}", node.fingerprint);
    if let Some(admin) = node.admin {
        println!("  metrics:     http://{admin}/metrics");
        println!("  admin:       {admin}");
    }
}

async fn node_command(command: NodeCommand) -> anyhow::Result<()> {
    let (args, method, path) = match &command {
        NodeCommand::Add(a) => (a, "POST", "/admin/nodes"),
        NodeCommand::Drain(a) => (a, "POST", "/admin/drain"),
        NodeCommand::List(a) => (a, "GET", "/admin/cluster"),
    };
    let (status, body) = levee_relay::admin_client::request(
        args.admin,
        args.token.as_deref(),
        method,
        path,
        Duration::from_secs(30),
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(anyhow!("the admin port answered {status}: {}", body.trim()));
    }
    if args.json {
        println!("{}", body.trim());
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("the admin port's answer")?;
    match command {
        NodeCommand::Add(_) => {
            println!(
                "added {} at {} (fingerprint {})",
                v["name"].as_str().unwrap_or("?"),
                v["address"].as_str().unwrap_or("?"),
                v["fingerprint"].as_str().unwrap_or("?")
            );
        }
        NodeCommand::Drain(_) => {
            println!(
                "draining {}: it hands its shards over and leaves",
                v["draining"].as_str().unwrap_or("?")
            );
        }
        NodeCommand::List(_) => {
            println!(
                "epoch {} (as {} sees it)",
                v["epoch"],
                v["node"].as_str().unwrap_or("?")
            );
            for n in v["nodes"].as_array().into_iter().flatten() {
                println!(
                    "  {:<10} {:<9} {:>4} shards  {:<8} {}  {}",
                    n["name"].as_str().unwrap_or("?"),
                    n["state"].as_str().unwrap_or("?"),
                    n["shards"],
                    n["region"].as_str().unwrap_or("?"),
                    n["address"].as_str().unwrap_or("?"),
                    n["fingerprint"].as_str().unwrap_or("?"),
                );
            }
        }
    }
    Ok(())
}

fn keygen(out: &Path, json: bool) -> anyhow::Result<()> {
    let identity = Identity::generate()?;
    identity.write_new(out)?;
    let account = identity.account();
    if json {
        println!(
            "{}",
            json!({ "account": account.to_string(), "identity": out.display().to_string() })
        );
    } else {
        println!("{account}");
        eprintln!(
            "wrote the private key to {} (keep it: losing it loses the account)",
            out.display()
        );
    }
    Ok(())
}

/// An identity's door pass, kept in a file beside the identity file (`alice.key.pass`).
///
/// A node gives an account a door pass each time it logs in or registers; presented on
/// later connections it gets them past a node whose door is limiting new connections
/// during a signup wave (`Authenticated.door_pass`). The client library keeps it in memory,
/// but each `levee` command is a new process, so the CLI keeps it on disk: without it a
/// CLI user waits at the door with the crowd. The pass names the address it was given to
/// and lasts a day; one from another address is only ignored by the door.
struct DoorPassFile {
    path: PathBuf,
    /// Shares its pass with the client's identity, which renews it on each login.
    identity: Identity,
    read: Option<bytes::Bytes>,
}

impl DoorPassFile {
    /// Hands `identity` the pass kept beside `identity_path`, if a readable one is there.
    fn load(identity_path: &Path, identity: &Identity) -> Self {
        let path = with_suffix(identity_path, ".pass");
        let read = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| hex::decode(text.trim()).ok())
            .map(bytes::Bytes::from);
        if let Some(pass) = &read {
            identity.set_door_pass(pass.clone());
        }
        Self {
            path,
            identity: identity.clone(),
            read,
        }
    }

    /// Writes the identity's pass if a node gave it a new one. The command has succeeded
    /// by then, so a failure to write is only a warning.
    fn keep(&self) {
        let Some(pass) = self.identity.door_pass() else {
            return;
        };
        if self.read.as_ref() == Some(&pass) {
            return;
        }
        if let Err(e) = self.write(&pass) {
            eprintln!(
                "warning: cannot keep the door pass in {}: {e}",
                self.path.display()
            );
        }
    }

    /// Written to a temporary file and renamed over the old one, readable by its owner only.
    fn write(&self, pass: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = with_suffix(&self.path, ".tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        writeln!(file, "{}", hex::encode(pass))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// `path` with `suffix` added to its file name (`alice.key` → `alice.key.pass`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn connect(args: &ClientArgs) -> Result<(Client, DoorPassFile), Failure> {
    let identity = Identity::read(&args.identity).map_err(anyhow::Error::from)?;
    let pass = DoorPassFile::load(&args.identity, &identity);
    let trust = match (&args.fingerprint, &args.ca) {
        (Some(fp), _) => Trust::Fingerprint(*fp),
        (None, Some(ca)) => Trust::ca_bundle_file(ca).map_err(anyhow::Error::from)?,
        (None, None) => {
            return Err(anyhow!(
                "pass --fingerprint (printed by `levee up`) or --ca FILE to trust the server"
            )
            .into());
        }
    };
    let mut config = ClientConfig::new(args.server, trust);
    config.server_name = args.server_name.clone();
    Ok((Client::connect(&config, identity).await?, pass))
}

async fn register(args: ClientArgs) -> Result<(), Failure> {
    let (client, pass) = connect(&args).await?;
    let json = args.json;
    // During a signup wave the node hands out places in line; show them as they come.
    let created = client
        .register_waiting(|place| {
            let eta = place.estimated_wait.as_secs_f64().ceil();
            if json {
                let waiting = json!({ "position": place.position, "ahead": place.ahead, "estimated_wait_secs": eta });
                println!("{}", json!({ "waiting": waiting }));
            } else {
                eprintln!("waiting room: position {}, about {eta} s ({} ahead)", place.position, place.ahead);
            }
        })
        .await?;
    pass.keep();
    let account = client.account();
    if args.json {
        println!(
            "{}",
            json!({ "account": account.to_string(), "created": created })
        );
    } else if created {
        println!("registered {account}");
    } else {
        println!("already registered {account}");
    }
    client.close().await;
    Ok(())
}

/// Authenticates, turning "unknown account" into advice, and keeps the new door pass.
async fn login(client: &Client, pass: &DoorPassFile) -> Result<(), Failure> {
    let result = match client.authenticate().await {
        Err(e) if e.code() == Some(levee_protocol::wire::pb::ErrorCode::UnknownAccount) => {
            Err(anyhow::Error::from(e)
                .context("this identity is not registered; run `levee register` first")
                .into())
        }
        other => Ok(other?),
    };
    if result.is_ok() {
        pass.keep();
    }
    result
}

async fn send(args: SendArgs) -> Result<(), Failure> {
    let payload = match (&args.text, &args.file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => return Err(anyhow!("pass --text or --file").into()),
    };
    let (client, pass) = connect(&args.client).await?;
    login(&client, &pass).await?;
    let envelope_id = client.send(&args.to, payload).await?;
    if args.client.json {
        println!(
            "{}",
            json!({ "envelope_id": envelope_id, "to": args.to.to_string() })
        );
    } else {
        println!("sent envelope {envelope_id} to {}", args.to);
    }
    client.close().await;
    Ok(())
}

fn print_delivery(d: &Delivery, json: bool) {
    let text = std::str::from_utf8(&d.ciphertext).ok();
    if json {
        println!(
            "{}",
            json!({
                "envelope_id": d.envelope_id,
                "client_message_id": hex::encode(d.client_message_id),
                "accepted_at_ms": d.accepted_at_ms,
                "text": text,
                "ciphertext_hex": hex::encode(&d.ciphertext),
            })
        );
    } else {
        match text {
            Some(text) => println!("[{}] {text}", d.envelope_id),
            None => println!(
                "[{}] ({} bytes, not text) {}",
                d.envelope_id,
                d.ciphertext.len(),
                hex::encode(&d.ciphertext)
            ),
        }
    }
}

async fn recv(args: RecvArgs) -> Result<(), Failure> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(anyhow!("--timeout must be a positive number of seconds").into());
    }
    let wait = Duration::from_secs_f64(args.timeout);
    let (client, pass) = connect(&args.client).await?;
    login(&client, &pass).await?;
    let mut inbox = client.subscribe().await?;
    let mut received = 0usize;
    while args.count.is_none_or(|n| received < n) {
        let Ok(next) = tokio::time::timeout(wait, inbox.next()).await else {
            break;
        };
        let Some(delivery) = next else {
            return Err(anyhow!("the connection closed after {received} envelopes").into());
        };
        print_delivery(&delivery, args.client.json);
        // Acknowledge only after the envelope is printed (and so in the caller's hands).
        use std::io::Write;
        std::io::stdout().flush().context("writing to stdout")?;
        client.ack(&[delivery.envelope_id]).await?;
        received += 1;
    }
    client.close().await;
    match args.count {
        Some(n) if received < n => Err(Failure {
            code: 6,
            error: anyhow!(
                "received {received} of {n} envelopes before the {}s timeout",
                args.timeout
            ),
        }),
        _ => Ok(()),
    }
}
