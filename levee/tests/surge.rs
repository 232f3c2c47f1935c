//! A signup wave over real QUIC: established users keep messaging while registrations are
//! offered at more than ten times what the node lets in, and every newcomer gets a place in
//! line instead of an error.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestNode, receive};
use levee_client::Client;
use levee_relay::Identity;

/// Registrations the waiting line starts letting in per second.
const LINE_RATE: f64 = 20.0;
/// Newcomers, all asking at once: fifteen times what the line starts letting in per second.
const NEWCOMERS: usize = 300;

#[derive(Default)]
struct Newcomer {
    /// Why the registration failed, if it did.
    error: Option<String>,
    /// Every place in line this newcomer was told, in order.
    places: Vec<u64>,
}

/// `n` newcomers connect one after another, then all send one registration at once (no
/// ticket); their answers. Connecting first matters: once people wait, the node's door lets
/// new connections in at a limited rate, and a line moving meanwhile would change what they
/// are told.
async fn register_at_once(
    node: &TestNode,
    n: usize,
) -> Vec<Result<levee_client::Registration, levee_client::ClientError>> {
    let mut newcomers = Vec::new();
    for _ in 0..n {
        newcomers.push(node.connect(&Identity::generate().unwrap()).await);
    }
    let mut registering = tokio::task::JoinSet::new();
    for c in newcomers {
        registering.spawn(async move {
            let outcome = c.register_once(None).await;
            c.close().await;
            outcome
        });
    }
    registering.join_all().await
}

/// The value of the series whose line starts with `line_start` on a `/metrics` page.
fn metric(page: &str, line_start: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_users_keep_messaging_while_newcomers_wait_in_line() {
    let dir = tempfile::tempdir().unwrap();
    let (node, alice, bob) = TestNode::with_pair(dir.path(), |c| {
        c.registration_initial_rate = LINE_RATE;
        c.admission_window_ms = 200;
        // Every wait answered with a ticket, so that the places told show the line's order
        // (holding a registration whose place is due soon has a test of its own).
        c.registration_hold_ms = 0;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (alice, bob) = (Arc::new(alice), Arc::new(bob));
    let mut bob_inbox = bob.subscribe().await.unwrap();

    // The newcomers connect first, one after another, and then all ask at once. Arrivals
    // spread over time would make how many wait depend on how fast this machine makes
    // handshakes (the line lets in what the node absorbs, as measured), and once people
    // wait the node's door lets new connections in at a limited rate.
    let mut clients = Vec::new();
    for _ in 0..NEWCOMERS {
        clients.push(node.connect(&Identity::generate().unwrap()).await);
    }

    // Established traffic: Alice sends to Bob throughout the wave.
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let messaging = {
        let (alice, to, sent) = (alice.clone(), bob.account(), sent.clone());
        tokio::spawn(async move {
            for i in 0..400 {
                let text = format!("m{i}");
                alice
                    .send(&to, text.clone().into_bytes())
                    .await
                    .expect("an established user's send succeeds");
                sent.lock().unwrap().push(text);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // The wave: every newcomer registers, waiting in line as told.
    let mut wave = tokio::task::JoinSet::new();
    for client in clients {
        wave.spawn(async move {
            let mut me = Newcomer::default();
            let outcome = client
                .register_waiting(|place| me.places.push(place.position))
                .await;
            me.error = outcome.err().map(|e| e.to_string());
            client.close().await;
            me
        });
    }
    let mut newcomers = Vec::new();
    while let Some(n) = wave.join_next().await {
        newcomers.push(n.unwrap());
    }
    messaging.await.unwrap();

    // Every established send arrived.
    let sent: BTreeSet<String> = sent.lock().unwrap().iter().cloned().collect();
    let got = receive(&mut bob_inbox, sent.len(), Duration::from_secs(5)).await;
    let got: BTreeSet<String> = got
        .iter()
        .map(|d| String::from_utf8(d.ciphertext.to_vec()).unwrap())
        .collect();
    assert_eq!(sent.len(), 400);
    assert_eq!(got, sent, "every established message delivered");

    // Every newcomer ended registered; none with an error.
    let failed: Vec<&String> = newcomers.iter().filter_map(|n| n.error.as_ref()).collect();
    assert!(
        failed.is_empty(),
        "registrations that ended in an error: {failed:?}"
    );
    // The wave was far beyond what the line lets in at once, so most waited...
    let waited = newcomers.iter().filter(|n| !n.places.is_empty()).count();
    assert!(
        waited >= NEWCOMERS / 2,
        "only {waited} of {NEWCOMERS} waited in line"
    );
    // ...each keeping its place across returns (the ticket holds it), all places distinct.
    for n in &newcomers {
        assert!(
            n.places.windows(2).all(|w| w[0] == w[1]),
            "place changed: {:?}",
            n.places
        );
    }
    let places: BTreeSet<u64> = newcomers
        .iter()
        .filter_map(|n| n.places.first().copied())
        .collect();
    assert_eq!(places.len(), waited, "one place per newcomer");
    let requests: usize = newcomers.iter().map(|n| n.places.len() + 1).sum();
    println!(
        "{waited} of {NEWCOMERS} newcomers waited; {:.2} register requests per registration",
        requests as f64 / NEWCOMERS as f64
    );

    // What operators see on the admin port.
    let (status, metrics) = node.admin_get("/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value = |line_start: &str| metric(&metrics, line_start);
    assert!(value("levee_registrations_queued_total{node=\"node-1\"}") >= waited as f64);
    assert!(value("levee_admission_admitted_total{class=\"messaging\",node=\"node-1\"}") >= 400.0);
    assert!(value("levee_envelopes_accepted_total{node=\"node-1\"}") >= 400.0);
    for name in [
        "levee_admission_level",
        "levee_waiting_room_length",
        "levee_queue_wait_seconds_bucket",
        "# HELP levee_queue_wait_seconds",
        // Registered at zero: present before the first refusal of each kind.
        "# HELP levee_tickets_rejected_total",
        "reason=\"malformed\"",
        "reason=\"bad_signature\"",
        "reason=\"expired\"",
        "reason=\"wrong_key\"",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    assert_eq!(node.admin_get("/nope").await.0, "HTTP/1.1 404 Not Found");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_keeps_its_place_across_reconnects_and_nodes_sharing_the_cluster_key() {
    use levee_client::Registration;
    use levee_protocol::wire::pb::ErrorCode;

    let key = "ab".repeat(32);
    let tune = |c: &mut levee_relay::NodeConfig| {
        // One registration per second, a second's worth banked: the second newcomer waits.
        c.registration_initial_rate = 1.0;
        c.registration_hold_ms = 0;
        c.cluster_key = Some(key.clone());
    };
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (node_a, _first, _second) = TestNode::with_pair(dir_a.path(), tune).await;
    let me = Identity::generate().unwrap();

    let place = |r: Registration| match r {
        Registration::Queued(place) => place,
        Registration::Registered { .. } => panic!("expected to wait in line"),
    };
    // Others take places first, so that this one waits seconds, not a fraction of one (the
    // line banks a second's worth while idle, and a slow machine can be idle), and the
    // reconnect below, through a door that lets new connections in at a limited rate
    // while people wait, comes back before the place is due. Everyone connects before
    // anyone registers, and the others register at once: one by one, each taking a second
    // on a slow machine, they would all have entered. (Three registered one by one left
    // this one about 4 s; a test binary held to 0.6 of a core reconnected later than that
    // in 1 of 6 runs, and the ticket's place had been reached.)
    let c = node_a.connect(&me).await;
    let queued = register_at_once(&node_a, 8)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Registration::Queued(_))))
        .count();
    assert!(
        queued >= 5,
        "a line at 1/s makes newcomers wait: {queued} of 8"
    );
    let first = place(c.register_once(None).await.unwrap());
    c.close().await;
    // A new connection presenting the ticket keeps the place.
    let c = node_a.connect(&me).await;
    let again = place(c.register_once(Some(first.ticket.clone())).await.unwrap());
    assert_eq!(again.position, first.position);
    // Someone else presenting it is refused, and so is an altered ticket.
    let thief = node_a.connect(&Identity::generate().unwrap()).await;
    let stolen = thief
        .register_once(Some(first.ticket.clone()))
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), Some(ErrorCode::TicketRejected));
    let mut altered = first.ticket.to_vec();
    altered[3] ^= 1;
    let forged = c.register_once(Some(altered.into())).await.unwrap_err();
    assert_eq!(forged.code(), Some(ErrorCode::TicketRejected));

    // Another process of the same node (same name, so the same line id, and the same
    // cluster key: a restart) honours the ticket: the place is kept. A node of another
    // name would accept the ticket but place it anew in its own line.
    let node_b = TestNode::start_with(levee_relay::NodeConfig {
        data_dir: dir_b.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        cluster_key: Some(key.clone()),
        ..levee_relay::NodeConfig::default()
    });
    let on_b = node_b.connect(&me).await;
    match on_b
        .register_once(Some(first.ticket.clone()))
        .await
        .unwrap()
    {
        Registration::Queued(p) => assert_eq!(p.position, first.position),
        Registration::Registered { .. } => {} // node B's line is already past that place
    }
    // A node of another cluster does not.
    let node_c = TestNode::start_with(levee_relay::NodeConfig {
        data_dir: dir_c.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..levee_relay::NodeConfig::default()
    });
    let on_c = node_c.connect(&me).await;
    let other = on_c
        .register_once(Some(first.ticket.clone()))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Some(ErrorCode::TicketRejected));

    // Waiting it out on node A: registered once the line reaches the place.
    let created = c.register().await.unwrap();
    assert!(created);
    for node in [node_a, node_b, node_c] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_people_wait_a_new_place_in_line_costs_proof_of_work() {
    use common::{RawConnection, bytes, error_code};
    use levee_protocol::identity::{Purpose, transcript};
    use levee_protocol::wire::pb::{self, ErrorCode, client_frame::Body, response::Result as R};
    use levee_relay::admission::{solve_work, verify_work};

    let dir = tempfile::tempdir().unwrap();
    let (node, _first, _second) = TestNode::with_pair(dir.path(), |c| {
        c.registration_initial_rate = 1.0;
        c.registration_work_max_bits = 12;
        c.registration_hold_ms = 0;
        // The line may speed up only at a window's end: with a minute-long window it stays at
        // 1/s for this whole test, however slowly the machine runs it.
        c.admission_window_ms = 60_000;
    })
    .await;
    let me = Identity::generate().unwrap();
    let key = me.account().0;
    let register = |raw: &RawConnection, nonce: &[u8; 32], work: u64, ticket: &[u8]| {
        Body::Register(pb::Register {
            public_key: bytes(&key),
            signature: bytes(&me.sign(&transcript(Purpose::Register, &raw.exporter, nonce))),
            ticket: bytes(ticket),
            work,
        })
    };

    // Others queue up, all at once (a line at 1/s lets one in at a time); the client library
    // solves whatever work is asked by itself.
    const OTHERS: usize = 12;
    let queued = register_at_once(&node, OTHERS)
        .await
        .into_iter()
        .filter(|o| matches!(o, Ok(levee_client::Registration::Queued(_))))
        .count();
    // At 1/s, at most the banked place and a few more enter while twelve register at once;
    // the line is still there when this test looks, however slow the machine.
    assert!(
        (8..=OTHERS).contains(&queued),
        "a line at 1/s makes newcomers wait: {queued} of {OTHERS} queued"
    );

    // Now a challenge asks for work, and a registration without it is refused.
    let mut raw = RawConnection::open(&node).await;
    let challenge = raw.challenge().await;
    let bits = challenge.registration_work_bits;
    assert!(
        (8..=11).contains(&bits),
        "a line of 1 to 12 asks 8..=11 bits, got {bits}"
    );
    let nonce: [u8; 32] = challenge.nonce.as_ref().try_into().unwrap();
    let lazy = (0..)
        .find(|w| !verify_work(&nonce, &key, bits, *w))
        .unwrap();
    raw.request(2, register(&raw, &nonce, lazy, &[])).await;
    let refused = raw.response().await.unwrap();
    assert_eq!(error_code(&refused), Some(ErrorCode::WorkRequired));

    // With the work done, the registration takes a place in line.
    let challenge = raw.challenge().await;
    let nonce: [u8; 32] = challenge.nonce.as_ref().try_into().unwrap();
    let work = solve_work(&nonce, &key, challenge.registration_work_bits);
    raw.request(3, register(&raw, &nonce, work, &[])).await;
    let place = match raw.response().await.unwrap().result {
        Some(R::Queued(q)) => q,
        other => panic!("expected a place in line, got {other:?}"),
    };

    // Coming back with the ticket needs no new work: the place was paid for.
    let mut back = RawConnection::open(&node).await;
    let nonce = back.hello().await;
    back.request(2, register(&back, &nonce, 0, &place.ticket))
        .await;
    match back.response().await.unwrap().result {
        Some(R::Queued(q)) => assert_eq!(q.position, place.position),
        Some(R::Authenticated(_)) => {} // the line already reached the place
        other => panic!("expected the same place, got {other:?}"),
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_alone_answers_a_return_while_waiting_but_entering_needs_the_proof() {
    use common::{RawConnection, bytes, error_code};
    use levee_protocol::identity::{Purpose, transcript};
    use levee_protocol::wire::pb::{self, ErrorCode, client_frame::Body, response::Result as R};

    let dir = tempfile::tempdir().unwrap();
    let (node, _first, _second) = TestNode::with_pair(dir.path(), |c| {
        c.registration_initial_rate = 1.0;
        // The line keeps its 1/s for the whole test (it may change only at a window's end).
        c.admission_window_ms = 60_000;
        c.registration_hold_ms = 0;
    })
    .await;
    // Our connection first (once people wait, the door lets new ones in at a limited
    // rate); then six others register at once and take the banked place and the next
    // ones: ours is seconds off. (One by one, each taking a second on a slow machine, they
    // would leave ours due at once.)
    let mut raw = RawConnection::open(&node).await;
    register_at_once(&node, 6).await;
    let me = Identity::generate().unwrap();
    let register = |raw: &RawConnection, nonce: &[u8; 32], ticket: &[u8], honest: bool| {
        // A dishonest proof signs another session's transcript: it never verifies here.
        let exporter = if honest { raw.exporter } else { [0; 32] };
        Body::Register(pb::Register {
            public_key: bytes(&me.account().0),
            signature: bytes(&me.sign(&transcript(Purpose::Register, &exporter, nonce))),
            ticket: bytes(ticket),
            work: 0,
        })
    };
    let nonce = raw.hello().await;
    raw.request(1, register(&raw, &nonce, &[], true)).await;
    let place = match raw.response().await.unwrap().result {
        Some(R::Queued(q)) => q,
        other => panic!("expected a place in line, got {other:?}"),
    };

    // Back at once, with the ticket and a proof that does not verify: still waiting, the
    // answer comes from the ticket alone (the same place), and the challenge is used up.
    let nonce = raw.hello().await;
    raw.request(2, register(&raw, &nonce, &place.ticket, false))
        .await;
    match raw.response().await.unwrap().result {
        Some(R::Queued(q)) => assert_eq!(q.position, place.position),
        other => panic!("expected the same place, got {other:?}"),
    }
    raw.request(3, register(&raw, &nonce, &place.ticket, true))
        .await;
    let reused = raw.response().await.unwrap();
    assert_eq!(error_code(&reused), Some(ErrorCode::ProtocolViolation));

    // Once the place is due, entering needs the proof: a bad one is refused, and the place
    // stays for the good one.
    tokio::time::sleep(Duration::from_millis(place.estimated_wait_ms) + Duration::from_secs(2))
        .await;
    let nonce = raw.hello().await;
    raw.request(4, register(&raw, &nonce, &place.ticket, false))
        .await;
    let refused = raw.response().await.unwrap();
    assert_eq!(error_code(&refused), Some(ErrorCode::BadSignature));
    let nonce = raw.hello().await;
    raw.request(5, register(&raw, &nonce, &place.ticket, true))
        .await;
    match raw.response().await.unwrap().result {
        Some(R::Authenticated(a)) => assert!(a.created),
        other => panic!("expected to enter, got {other:?}"),
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_due_within_the_hold_is_waited_for_and_admitted_in_one_request() {
    use levee_client::Registration;

    let dir = tempfile::tempdir().unwrap();
    let (node, _first, _second) = TestNode::with_pair(dir.path(), |c| {
        // Two a second, for the whole test; the default hold of 5 s.
        c.registration_initial_rate = 2.0;
        c.admission_window_ms = 60_000;
        // The line moving at that rate whatever else the machine runs: what is tested is
        // the hold, not when a busy node pauses its line (late scheduler probes, slow
        // fsyncs).
        c.admission_line_lag_ms = 0;
        c.admission_overload_wait_ms = 10_000;
        c.admission_recover_wait_ms = 5_000;
        c.admission_backend_latency_ms = 10_000;
    })
    .await;
    // All register at once, with one request each.
    const NEWCOMERS: usize = 24;
    let outcomes: Vec<Registration> = register_at_once(&node, NEWCOMERS)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let entered = outcomes
        .iter()
        .filter(|o| matches!(o, Registration::Registered { created: true }))
        .count();
    let waits: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Registration::Queued(place) => Some(place.estimated_wait.as_millis() as u64),
            Registration::Registered { .. } => None,
        })
        .collect();
    // Two enter at once (the banked second); every place due within 5 s (about eight more
    // at 2/s) is held and enters with its one request; the rest are told to come back.
    // Without the hold, two would enter. (On a slow machine the node takes many of the
    // registrations in the same millisecond; when places within a millisecond went by
    // their keys' hashes rather than by arrival, held ones were overtaken and answered
    // when their hold ran out: 4 of 24 entered in one CI run, `Place::issue`.)
    assert!(
        entered >= 5,
        "{entered} of {NEWCOMERS} entered with one request"
    );
    assert!(
        waits.len() >= 4,
        "the last ones are further off than the hold: {waits:?}"
    );
    node.stop().await;
}

/// A known account logging in again is not held with the crowd (login is shed after
/// registration, never with it): while people wait in line and the node's door turns new
/// connections away, an account that has logged in before presents the door pass it was
/// given, and its connection goes through at once; newcomers' connections at the same
/// moment are held. (That any node with the cluster key honours the pass is checked by
/// `admission::pass`'s unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_account_logs_in_again_past_the_door_while_newcomers_are_held() {
    use levee_client::{ClientError, Registration};

    let dir = tempfile::tempdir().unwrap();
    // Its own node name: metrics are per process, and another test's node exports the same
    // counter under its own name.
    let name = common::unique("door");
    let (node, _first, bob) = TestNode::with_pair(dir.path(), |c| {
        c.node_name = name.clone();
        c.registration_initial_rate = 1.0;
        c.registration_hold_ms = 0;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    // An established user: registered before the wave, so it holds a pass.
    let me = Identity::generate().unwrap();
    node.user(&me).await.close().await;
    assert!(
        me.door_pass().is_some(),
        "a registration brings a door pass"
    );
    // And one using the `levee` command line, which keeps its pass beside its key file.
    let server = node.client_config().server.to_string();
    let fingerprint = node.fingerprint.to_string();
    let at_node = ["--server", &server, "--fingerprint", &fingerprint];
    // Off the runtime: the node under test runs on it.
    let cli = |args: &[&str]| {
        let dir = dir.path().to_owned();
        let to_node = args[0] != "keygen";
        let args: Vec<String> = args
            .iter()
            .chain(at_node.iter().filter(|_| to_node))
            .map(|s| s.to_string())
            .collect();
        tokio::task::spawn_blocking(move || {
            common::levee(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    assert!(
        cli(&["keygen", "--out", "cli.key"])
            .await
            .unwrap()
            .status
            .success()
    );
    let registered = cli(&["register", "--identity", "cli.key"]).await.unwrap();
    assert!(registered.status.success(), "{registered:?}");
    let pass_file = dir.path().join("cli.key.pass");
    assert!(pass_file.exists(), "the CLI keeps its door pass");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&pass_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    }

    // A line forms: at 1/s, most of eight newcomers wait, and the door limits new
    // connections to about what the line seats.
    let queued = register_at_once(&node, 8)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Registration::Queued(_))))
        .count();
    assert!(queued >= 3, "only {queued} of 8 wait in line");

    // Newcomers trying to connect now are mostly held at the door...
    let mut config = node.client_config();
    config.connect_timeout = Duration::from_millis(1500);
    let mut newcomers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let config = config.clone();
        newcomers.spawn(async move {
            Client::connect(&config, Identity::generate().unwrap())
                .await
                .map(drop)
        });
    }
    // ...while the known account logs in again, and again, and sends each time.
    const LOGINS: usize = 5;
    for i in 0..LOGINS {
        let c = Client::connect(&config, me.clone())
            .await
            .unwrap_or_else(|e| panic!("login {i}: {e}"));
        c.authenticate().await.unwrap();
        c.send(&bob.account(), format!("back {i}").into_bytes())
            .await
            .unwrap();
        c.close().await;
    }
    // The command-line user, a new process with nothing but its files, gets through too.
    let bob_id = bob.account().to_string();
    let sent = cli(&[
        "send",
        "--identity",
        "cli.key",
        "--to",
        &bob_id,
        "--text",
        "back",
    ])
    .await
    .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let held = newcomers
        .join_all()
        .await
        .into_iter()
        .filter(|r| matches!(r, Err(ClientError::Unreachable { .. })))
        .count();
    assert!(
        held >= 3,
        "only {held} of 10 newcomers were held at the door"
    );

    let (_, page) = node.admin_get("/metrics").await;
    let passed = metric(
        &page,
        &format!("levee_connections_passed_at_door_total{{node=\"{name}\"}}"),
    );
    assert!(
        passed > LOGINS as f64,
        "{passed} connections went through on a pass, of {LOGINS} logins and one command"
    );
    node.stop().await;
}

/// Creating an account is a durable write like any other: one that hangs on a stalled store
/// lowers the node's admission level (registrations first) while it hangs, and messaging,
/// which the log carries, is not shed. Before it counted, a node whose store froze had no
/// write in flight once its delivery worker stopped trying, and kept admitting
/// registrations that would only hang behind the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_stuck_on_a_stalled_store_lowers_admission_but_not_messaging() {
    let dir = tempfile::tempdir().unwrap();
    // Metrics are per process and labelled by node name: a name of its own keeps the other
    // tests' nodes out of this one's readings.
    let name = common::unique("stalled");
    let (node, alice, _) = TestNode::with_pair(dir.path(), |c| {
        c.node_name = name.clone();
        c.fault_injection = true;
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = node.admin.unwrap();
    let me = alice.account();
    // The node learns that alice exists while the store answers, so a send to her needs
    // no store read during the stall.
    alice.send(&me, "before").await.unwrap();
    let series = |metric: &str| format!("{metric}{{node=\"{name}\"}}");
    let level = || async {
        common::metric(admin, &series("levee_admission_level"))
            .await
            .unwrap()
    };
    // Other tests load the machine, and a late scheduler lowers the level too: start from a
    // node back at 1.
    let calm_by = std::time::Instant::now() + Duration::from_secs(20);
    while level().await < 1.0 {
        assert!(
            std::time::Instant::now() < calm_by,
            "the node never admitted everything"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (status, body) =
        common::admin_request(admin, "POST", "/admin/faults/stall?backend=store&secs=6").await;
    assert!(status.contains("202"), "{status} {body}");
    let entry = node.client_config();
    let newcomer = tokio::spawn(async move {
        let c = Client::connect(&entry, Identity::generate().unwrap()).await?;
        c.register().await
    });
    // Nothing else writes to the store meanwhile: only the hanging registration can lower
    // the level.
    let mut lowest = f64::MAX;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        lowest = lowest.min(level().await);
    }
    assert!(lowest < 1.0, "the level stayed at {lowest}");
    assert!(
        lowest > 1.0 / 3.0,
        "the level fell into messaging: {lowest}"
    );
    // Messaging goes on through the log while the store is stalled.
    alice.send(&me, "during").await.unwrap();
    let shed = common::metric(
        admin,
        &format!("levee_admission_shed_total{{class=\"messaging\",node=\"{name}\"}}"),
    )
    .await;
    assert_eq!(
        shed,
        Some(0.0),
        "messaging was shed (or the series is missing)"
    );

    // Once the stall ends the newcomer's registration completes (or, if the client gave up
    // waiting, a second try does), and both of alice's messages arrive.
    if newcomer.await.unwrap().is_err() {
        node.new_user().await;
    }
    let mut inbox = alice.subscribe().await.unwrap();
    let got = receive(&mut inbox, 2, Duration::from_secs(15)).await;
    let texts: BTreeSet<Vec<u8>> = got.iter().map(|d| d.ciphertext.to_vec()).collect();
    assert_eq!(
        texts,
        BTreeSet::from([b"before".to_vec(), b"during".to_vec()])
    );
    node.stop().await;
}
