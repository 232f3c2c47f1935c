//! The README's example app (`examples/hello.rs`) against a real node over QUIC: it must
//! run to the end and print what it received.

use std::path::PathBuf;
use std::process::Command;

use levee_relay::{Node, NodeConfig};

/// The example's binary, which `cargo test` builds next to this test's (`target/*/examples`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    profile_dir.join("examples").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_example_registers_sends_and_receives() {
    let data = tempfile::tempdir().expect("tempdir");
    let node = Node::open(NodeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data.path().to_owned(),
        ..NodeConfig::default()
    })
    .expect("node opens");
    let (addr, fingerprint) = (node.local_addr(), node.fingerprint());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(node.run(async {
        let _ = stopped.await;
    }));

    let binary = example("hello");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&binary)
            .args([addr.to_string(), fingerprint.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()))
    })
    .await
    .expect("example ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "hello failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("Bob received envelope 0: hello, Bob"),
        "{stdout}"
    );
    assert!(stdout.contains("Bob acknowledged it"), "{stdout}");

    let _ = stop.send(());
    running.await.expect("node task").expect("node ran");
}

#[test]
fn the_example_refuses_missing_arguments_with_its_usage() {
    let output = Command::new(example("hello")).output().expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: hello"));
}
