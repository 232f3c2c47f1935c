//! The `levee` binary as a person or a script uses it: the README's tour, JSON output and
//! exit codes, against a real `levee up` process.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{NodeProcess, levee_bin};
use levee_relay::tls::Trust;

fn levee(dir: &Path, args: &[&str]) -> Output {
    Command::new(levee_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("levee runs")
}

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
}
