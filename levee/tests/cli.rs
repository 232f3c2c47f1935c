//! The `levee` binary as a person or a script uses it: the README's tour, JSON output and
//! exit codes, against a real `levee up` process.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{NodeProcess, PrintedNode, levee, levee_bin};
use levee_client::Trust;

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_works_and_failures_have_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("data"));
    let server = node.config.server.to_string();
    let Trust::Fingerprint(fp) = &node.config.trust else {
        unreachable!()
    };
    let fp = fp.to_string();
    let d = dir.path();

    let alice = levee(d, &["keygen", "--out", "alice.key"]);
    assert!(alice.status.success(), "{}", stderr(&alice));
    let alice_id = stdout(&alice).trim().to_owned();
    assert_eq!(alice_id.len(), 64);
    let bob = levee(d, &["keygen", "--out", "bob.key", "--json"]);
    let bob_json: serde_json::Value = serde_json::from_str(&stdout(&bob)).unwrap();
    let bob_id = bob_json["account"].as_str().unwrap().to_owned();
    // A key file is never overwritten.
    let again = levee(d, &["keygen", "--out", "bob.key"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("bob.key"), "{}", stderr(&again));

    let common = ["--server", &server, "--fingerprint", &fp];
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter()
            .chain(common.iter())
            .chain(tail.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| levee(d, &args.iter().map(String::as_str).collect::<Vec<_>>());

    // Sending before registering: refused with advice, exit 5.
    let early = run(with(
        &["send", "--identity", "alice.key"],
        &["--to", &bob_id, "--text", "x"],
    ));
    assert_eq!(early.status.code(), Some(5), "{}", stderr(&early));
    assert!(
        stderr(&early).contains("levee register"),
        "{}",
        stderr(&early)
    );

    let reg = run(with(&["register", "--identity", "alice.key"], &["--json"]));
    assert!(reg.status.success(), "{}", stderr(&reg));
    let reg: serde_json::Value = serde_json::from_str(&stdout(&reg)).unwrap();
    assert_eq!(
        (reg["account"].as_str(), reg["created"].as_bool()),
        (Some(alice_id.as_str()), Some(true))
    );
    assert!(
        run(with(&["register", "--identity", "bob.key"], &[]))
            .status
            .success()
    );

    std::fs::write(d.join("blob.bin"), [0u8, 159, 146, 150]).unwrap();
    let sent = run(with(
        &["send", "--identity", "alice.key"],
        &["--to", &bob_id, "--text", "hello bob", "--json"],
    ));
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(stdout(&sent).contains("envelope_id"));
    let sent = run(with(
        &["send", "--identity", "alice.key"],
        &["--to", &bob_id, "--file", "blob.bin"],
    ));
    assert!(sent.status.success(), "{}", stderr(&sent));

    let got = run(with(
        &["recv", "--identity", "bob.key"],
        &["--count", "2", "--json"],
    ));
    assert!(got.status.success(), "{}", stderr(&got));
    let lines: Vec<serde_json::Value> = stdout(&got)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["text"], "hello bob");
    assert_eq!(
        lines[1]["text"],
        serde_json::Value::Null,
        "binary is not text"
    );
    assert_eq!(lines[1]["ciphertext_hex"], "009f9296");

    // Acknowledged on print: nothing left, so --count 1 times out with exit 6.
    let empty = run(with(
        &["recv", "--identity", "bob.key"],
        &["--count", "1", "--timeout", "0.5"],
    ));
    assert_eq!(empty.status.code(), Some(6), "{}", stderr(&empty));

    // Wrong fingerprint: exit 4.
    let wrong = "00".repeat(32);
    let bad_fp = levee(
        d,
        &[
            "send",
            "--identity",
            "alice.key",
            "--server",
            &server,
            "--fingerprint",
            &wrong,
            "--to",
            &bob_id,
            "--text",
            "x",
        ],
    );
    assert_eq!(bad_fp.status.code(), Some(4), "{}", stderr(&bad_fp));
    assert_eq!(
        stderr(&bad_fp).lines().count(),
        1,
        "one line: {}",
        stderr(&bad_fp)
    );

    // Envelope over the limit: exit non-zero with the reason.
    std::fs::write(d.join("big.bin"), vec![7u8; 64 * 1024 + 1]).unwrap();
    let big = run(with(
        &["send", "--identity", "alice.key"],
        &["--to", &bob_id, "--file", "big.bin"],
    ));
    assert_ne!(big.status.code(), Some(0));
    assert!(stderr(&big).contains("exceeds"), "{}", stderr(&big));

    // Bad account id and missing trust are usage errors, caught before connecting.
    let bad_to = run(with(
        &["send", "--identity", "alice.key"],
        &["--to", "abc", "--text", "x"],
    ));
    assert_eq!(bad_to.status.code(), Some(2));
    let no_trust = levee(
        d,
        &["register", "--identity", "alice.key", "--server", &server],
    );
    assert_eq!(no_trust.status.code(), Some(1));
    assert!(stderr(&no_trust).contains("--fingerprint"));
    drop(node);

    // Nobody listening: exit 3.
    let gone = levee(
        d,
        &[
            "register",
            "--identity",
            "alice.key",
            "--server",
            &server,
            "--fingerprint",
            &fp,
        ],
    );
    assert_eq!(gone.status.code(), Some(3), "{}", stderr(&gone));
}

#[test]
fn help_and_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["--help"][..],
        &["up", "--help"],
        &["send", "--help"],
        &["recv", "--help"],
    ] {
        let o = levee(dir.path(), cmd);
        assert!(o.status.success());
        assert!(stdout(&o).contains("Usage"));
    }
    let missing = levee(dir.path(), &["up", "--config", "nope.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("nope.toml"));
    std::fs::write(dir.path().join("bad.toml"), "shardz = 3\n").unwrap();
    let unknown = levee(dir.path(), &["up", "--config", "bad.toml"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("shardz"), "{}", stderr(&unknown));
    let invalid = Command::new(levee_bin())
        .current_dir(dir.path())
        .args(["up"])
        .env("LEVEE_SHARDS", "0")
        .output()
        .unwrap();
    assert_eq!(invalid.status.code(), Some(1));
    assert!(
        stderr(&invalid).contains("shards must be greater than 0"),
        "{}",
        stderr(&invalid)
    );
    // Fields unset by default are read from the environment too (a container's secrets
    // arrive that way): a key too short, an address that is none, are refused.
    for (var, value, said) in [
        (
            "LEVEE_CLUSTER_KEY",
            "abcd",
            "cluster_key must be at least 32 hex characters",
        ),
        (
            "LEVEE_ADVERTISE_ADDRESS",
            "not-an-address",
            "ADVERTISE_ADDRESS",
        ),
    ] {
        let refused = Command::new(levee_bin())
            .current_dir(dir.path())
            .args(["up"])
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(refused.status.code(), Some(1), "{var}");
        assert!(
            stderr(&refused).contains(said),
            "{var}: {}",
            stderr(&refused)
        );
    }
}

/// `levee up --nodes 3`, then the cluster commands: list, add, drain; clients of the CLI are
/// redirected to their owners; after SIGKILL and a restart nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_is_run_and_changed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let (process, nodes) = NodeProcess::start_cluster(&data, 3, &["--admin", "127.0.0.1:0"]);
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    let admin = |i: usize| nodes[i].admin.unwrap().to_string();

    let v = wait_for_nodes(d, &admin(0), &["node-1", "node-2", "node-3"]);
    let listed = v["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    let shards: u64 = listed.iter().map(|n| n["shards"].as_u64().unwrap()).sum();
    assert_eq!(shards, 256, "every shard has one owner");
    let text = levee(d, &["node", "list", "--admin", &admin(0)]);
    assert!(stdout(&text).contains("node-3"), "{}", stdout(&text));

    // The CLI's client follows redirects: register and send through any node.
    for who in ["alice", "bob"] {
        let out = levee(d, &["keygen", "--out", &format!("{who}.key")]);
        assert!(out.status.success());
    }
    let bob_id = {
        let bob = Command::new(levee_bin())
            .current_dir(d)
            .args(["register", "--identity", "bob.key", "--json"])
            .args(server_args(&nodes[2]))
            .output()
            .unwrap();
        assert!(bob.status.success(), "{}", stderr(&bob));
        let v: serde_json::Value = serde_json::from_str(stdout(&bob).trim()).unwrap();
        v["account"].as_str().unwrap().to_owned()
    };
    let run = |args: Vec<String>| {
        let out = Command::new(levee_bin())
            .current_dir(d)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    let mut register = vec![
        "register".to_string(),
        "--identity".into(),
        "alice.key".into(),
    ];
    register.extend(server_args(&nodes[1]));
    run(register);
    let send = |text: &str, via: &PrintedNode| {
        let mut args: Vec<String> = [
            "send",
            "--identity",
            "alice.key",
            "--to",
            &bob_id,
            "--text",
            text,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(server_args(via));
        run(args);
    };
    send("one", &nodes[0]);

    // Add a node, then drain one: the cluster has node-1, node-3, node-4 after it.
    let added = levee(d, &["node", "add", "--admin", &admin(0)]);
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(stdout(&added).contains("node-4"), "{}", stdout(&added));
    let drained = levee(d, &["node", "drain", "--admin", &admin(1)]);
    assert!(drained.status.success(), "{}", stderr(&drained));
    assert!(stdout(&drained).contains("node-2"), "{}", stdout(&drained));
    wait_for_nodes(d, &admin(0), &["node-1", "node-3", "node-4"]);
    // The drained node's admin port is gone with it.
    let gone = levee(d, &["node", "list", "--admin", &admin(1)]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("admin port"), "{}", stderr(&gone));

    send("two", &nodes[2]);
    // SIGKILL the whole process; after a restart both acknowledged envelopes arrive.
    process.sigkill();
    let (_process, nodes) = NodeProcess::start_cluster(&data, 3, &[]);
    let mut recv = vec![
        "recv".to_string(),
        "--identity".into(),
        "bob.key".into(),
        "--count".into(),
        "2".into(),
        "--json".into(),
    ];
    recv.extend(server_args(&nodes[0]));
    let out = run(recv);
    let texts: Vec<String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(texts, ["one", "two"], "{}", stdout(&out));
}

/// Polls `levee node list --json` until exactly `expected` are listed; returns the answer.
fn wait_for_nodes(d: &Path, admin: &str, expected: &[&str]) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let out = levee(d, &["node", "list", "--admin", admin, "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let mut names: Vec<String> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        if names == expected {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "still {names:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn server_args(node: &PrintedNode) -> Vec<String> {
    vec![
        "--server".into(),
        node.addr.to_string(),
        "--fingerprint".into(),
        node.fingerprint.to_string(),
    ]
}

/// The identity file of docs/PROTOCOL.md §5.7: `levee keygen` writes exactly the two
/// documented lines with mode 0600, and a file written by hand to the spec (upper-case hex,
/// trailing blank line) is read as the account its seed derives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_file_is_the_documented_two_lines() {
    use std::os::unix::fs::PermissionsExt;

    use ring::signature::{Ed25519KeyPair, KeyPair};

    let account_of = |seed: &[u8]| -> String {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).unwrap();
        pair.public_key()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let made = levee(d, &["keygen", "--out", "made.key"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let text = std::fs::read_to_string(d.join("made.key")).unwrap();
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(text.ends_with('\n'));
    assert_eq!(lines[0], "levee-identity-v1");
    assert_eq!(lines[1].len(), 64);
    assert!(
        lines[1]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    let mode = std::fs::metadata(d.join("made.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let seed: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&lines[1][2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(stdout(&made).trim(), account_of(&seed));

    let seed = [7u8; 32];
    let hand = format!("levee-identity-v1\n{}\n\n", "07".repeat(32).to_uppercase());
    std::fs::write(d.join("hand.key"), hand).unwrap();
    std::fs::set_permissions(d.join("hand.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let node = common::TestNode::start(&d.join("data"));
    let registered = levee(
        d,
        &[
            "register",
            "--identity",
            "hand.key",
            "--server",
            &node.addr.to_string(),
            "--fingerprint",
            &node.fingerprint.to_string(),
        ],
    );
    assert!(registered.status.success(), "{}", stderr(&registered));
    assert_eq!(
        stdout(&registered).trim(),
        format!("registered {}", account_of(&seed))
    );
    node.stop().await;
}
