//! The admin port: `GET /metrics` in Prometheus text format, `GET /admin/cluster` (this
//! node's view of the cluster, JSON), `GET /admin/leases` (every shard's lease takes, as
//! far back as they are kept, JSON), `POST /admin/drain` (hand this node's shards over and
//! leave) and `POST /admin/nodes` (start one more node of an embedded cluster). With
//! `fault_injection` configured, chaos drills may also `POST /admin/faults/crash` (stop
//! abruptly), `POST /admin/faults/stall?secs=N[&backend=...]` (backend calls wait N s) and
//! `POST /admin/faults/pause?secs=N` (the process stopped with SIGSTOP for N s; `levee
//! node` only); see [`super::fault`].
//!
//! Changes need `authorization: Bearer <admin_token>` when a token is configured; without
//! one they are accepted only on a loopback admin address.
//!
//! A deliberately small HTTP/1.1 responder (one request per connection, bounded read,
//! timeout) instead of an HTTP framework: it serves one page to a scraper on a private
//! address. Operators bind it to loopback or an internal network, never to clients.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Shared;
use super::fault::Backend;
use super::tokio_util_shim::CancelToken;
use crate::cluster::LeaseError;
use crate::telemetry;

/// What the admin port may ask of the embedded cluster a node runs in.
#[async_trait]
pub(crate) trait ClusterAdmin: Send + Sync {
    /// Starts one more node; returns what to print about it.
    async fn add_node(&self) -> Result<serde_json::Value, String>;

    /// Stops the node `name` abruptly, as a crash would.
    fn kill(&self, name: &str) -> Result<(), String>;
}

/// Largest request head read; anything longer is answered 431 and dropped.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin port until `stop`.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancelToken) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(respond(stream, shared.clone(), loopback));
                }
            }
        }
    }
}

/// A request, as far as the admin port cares.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    Cluster,
    Leases,
    Drain,
    AddNode,
    Crash,
    /// Stall calls to these backends for this many seconds (`None`: a parameter missing
    /// or wrong).
    Stall(Option<(Backend, u64)>),
    /// Stop the process for this many seconds (`None`: missing or wrong).
    Pause(Option<u64>),
    /// Known path, wrong method.
    WrongMethod(&'static str),
    NotFound,
    Malformed,
}

fn parse(head: &str) -> Request {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => Request::Metrics,
        (Some("GET"), Some("/admin/cluster")) => Request::Cluster,
        (Some("GET"), Some("/admin/leases")) => Request::Leases,
        (Some("POST"), Some("/admin/drain")) => Request::Drain,
        (Some("POST"), Some("/admin/nodes")) => Request::AddNode,
        (Some("POST"), Some("/admin/faults/crash")) => Request::Crash,
        (Some("POST"), Some(path)) if path.starts_with("/admin/faults/stall") => {
            Request::Stall(stall_secs(path))
        }
        (Some("POST"), Some(path)) if path.starts_with("/admin/faults/pause") => {
            Request::Pause(pause_secs(path))
        }
        (Some(_), Some("/metrics" | "/admin/cluster" | "/admin/leases")) => {
            Request::WrongMethod("GET")
        }
        (Some(_), Some(path))
            if matches!(
                path,
                "/admin/drain" | "/admin/nodes" | "/admin/faults/crash"
            ) || path.starts_with("/admin/faults/stall")
                || path.starts_with("/admin/faults/pause") =>
        {
            Request::WrongMethod("POST")
        }
        (Some(_), Some(_)) => Request::NotFound,
        _ => Request::Malformed,
    }
}

/// What `/admin/faults/stall?secs=N[&backend=store|log|all]` asks for (all by default).
fn stall_secs(path: &str) -> Option<(Backend, u64)> {
    let (route, query) = path.split_once('?')?;
    if route != "/admin/faults/stall" {
        return None;
    }
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let backend = match param("backend") {
        Some(b) => Backend::parse(b)?,
        None => Backend::All,
    };
    let secs = param("secs")?.parse().ok()?;
    Some((backend, secs))
}

/// What `/admin/faults/pause?secs=N` asks for.
fn pause_secs(path: &str) -> Option<u64> {
    let (route, query) = path.split_once('?')?;
    if route != "/admin/faults/pause" {
        return None;
    }
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("secs="))?
        .parse()
        .ok()
        .filter(|s| (1..=super::fault::MAX_STALL.as_secs()).contains(s))
}

/// Whether a change may go ahead: the configured token, or loopback when there is none.
fn authorised(head: &str, token: Option<&str>, loopback: bool) -> bool {
    let Some(token) = token else {
        return loopback;
    };
    let presented = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim().strip_prefix("Bearer ").unwrap_or_default())
    });
    // Compare digests, so the time taken says nothing about how much of the token matched.
    let digest = |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
    presented.is_some_and(|p| digest(p).as_ref() == digest(token).as_ref())
}

/// The status line, content type and body for a request head.
async fn route(
    head: &str,
    shared: &Shared,
    loopback: bool,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; version=0.0.4";
    const JSON: &str = "application/json";
    let request = parse(head);
    let change = matches!(
        request,
        Request::Drain | Request::AddNode | Request::Crash | Request::Stall(_) | Request::Pause(_)
    );
    if change && !authorised(head, shared.config.admin_token.as_deref(), loopback) {
        return (
            "403 Forbidden",
            TEXT,
            "changes need the admin token (or a loopback admin address)\n".into(),
        );
    }
    if matches!(
        request,
        Request::Crash | Request::Stall(_) | Request::Pause(_)
    ) && !shared.config.fault_injection
    {
        return (
            "403 Forbidden",
            TEXT,
            "fault injection is off on this node (fault_injection = true turns it on)\n".into(),
        );
    }
    match request {
        Request::Metrics => match telemetry::install() {
            Some(handle) => ("200 OK", TEXT, handle.render()),
            None => (
                "503 Service Unavailable",
                TEXT,
                "another metrics recorder is installed\n".into(),
            ),
        },
        Request::Cluster => ("200 OK", JSON, cluster_json(shared).to_string()),
        Request::Leases => match lease_history_json(shared).await {
            Ok(history) => ("200 OK", JSON, history.to_string()),
            Err(e) => (
                "503 Service Unavailable",
                TEXT,
                format!("reading the lease history: {e}\n"),
            ),
        },
        Request::Drain => {
            shared.drain.send_replace(true);
            let body = json!({ "draining": shared.membership.name() });
            ("202 Accepted", JSON, body.to_string())
        }
        Request::AddNode => match shared.cluster_admin.get().and_then(|w| w.upgrade()) {
            Some(cluster) => match cluster.add_node().await {
                Ok(node) => ("201 Created", JSON, node.to_string()),
                Err(e) => ("500 Internal Server Error", TEXT, format!("{e}\n")),
            },
            None => (
                "501 Not Implemented",
                TEXT,
                "this node does not run in an embedded cluster (levee up)\n".into(),
            ),
        },
        Request::Crash => {
            let name = shared.membership.name();
            crash(shared, &name);
            ("202 Accepted", JSON, json!({ "crashed": name }).to_string())
        }
        Request::Stall(Some((backend, secs))) if secs >= 1 => match &shared.stalls {
            Some(stalls) => {
                let stalled = stalls.begin(backend, Duration::from_secs(secs));
                let body = json!({
                    "node": shared.membership.name(),
                    "store_stalled_for_s": stalled.store.as_secs_f64(),
                    "log_stalled_for_s": stalled.log.as_secs_f64(),
                    "roster_reads_stalled_for_s": stalled.roster_reads.as_secs_f64(),
                    "roster_writes_stalled_for_s": stalled.roster_writes.as_secs_f64(),
                });
                ("202 Accepted", JSON, body.to_string())
            }
            // fault_injection is on, so the node was built with a stall switch.
            None => (
                "500 Internal Server Error",
                TEXT,
                "no stall switch\n".into(),
            ),
        },
        Request::Stall(_) => (
            "400 Bad Request",
            TEXT,
            format!(
                "say how long and, if not store and log, which backend: \
                 /admin/faults/stall?secs=N[&backend=store|log|all|roster|database], N from 1 \
                 to {}\n",
                super::fault::MAX_STALL.as_secs()
            ),
        ),
        // Stopping the process would stop every node of an embedded cluster, and the
        // drill with them if it runs in the same process.
        Request::Pause(_) if shared.cluster_admin.get().is_some() => (
            "501 Not Implemented",
            TEXT,
            "pausing stops the whole process: only for levee node\n".into(),
        ),
        Request::Pause(Some(secs)) => {
            let name = shared.membership.name();
            match super::fault::pause_process(Duration::from_secs(secs)) {
                Ok(()) => {
                    tracing::warn!(
                        node = name,
                        secs,
                        "pausing the process on request (fault injection)"
                    );
                    let body = json!({ "paused": name, "for_s": secs });
                    ("202 Accepted", JSON, body.to_string())
                }
                Err(e) => (
                    "500 Internal Server Error",
                    TEXT,
                    format!("cannot start the pause: {e}\n"),
                ),
            }
        }
        Request::Pause(None) => (
            "400 Bad Request",
            TEXT,
            format!(
                "say how long: /admin/faults/pause?secs=N, N from 1 to {}\n",
                super::fault::MAX_STALL.as_secs()
            ),
        ),
        Request::WrongMethod(m) => ("405 Method Not Allowed", TEXT, format!("{m} only\n")),
        Request::NotFound => (
            "404 Not Found",
            TEXT,
            "try /metrics, /admin/cluster, /admin/drain, /admin/nodes, \
             /admin/faults/{crash,stall,pause}\n"
                .into(),
        ),
        Request::Malformed => ("400 Bad Request", TEXT, "not an HTTP request\n".into()),
    }
}

/// Stops this node abruptly: its task in an embedded cluster, or the whole process
/// (`levee node`) once the answer has had a moment to leave. No handover, no goodbye.
fn crash(shared: &Shared, name: &str) {
    if let Some(cluster) = shared.cluster_admin.get().and_then(|w| w.upgrade())
        && cluster.kill(name).is_ok()
    {
        return;
    }
    tracing::warn!(node = name, "crashing on request (fault injection)");
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(100));
        std::process::abort();
    });
}

/// This node's view: epoch, itself, and every node with its state and shard count.
fn cluster_json(shared: &Shared) -> serde_json::Value {
    let view = shared.membership.view();
    let load = view.placement().load();
    let nodes: Vec<_> = view
        .nodes()
        .map(|n| {
            json!({
                "name": n.name,
                "address": n.address.to_string(),
                "fingerprint": n.fingerprint.to_string(),
                "region": n.region,
                "weight": n.weight,
                "state": n.state.as_str(),
                "shards": load.get(n.name.as_str()).copied().unwrap_or(0),
            })
        })
        .collect();
    json!({
        "node": view.me(),
        "epoch": view.epoch(),
        "digest": format!("{:012x}", view.digest()),
        "draining": shared.membership.is_draining(),
        "owned": view.owned(),
        // The shards whose leases this node holds: what it delivers (`owned` once settled).
        "held": shared.held.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "shards": view.placement().shards(),
        "nodes": nodes,
    })
}

/// Every shard's lease takes (`{shard, epoch, holder}`), as far back as the leases keep
/// them: what a drill checks for one holder per epoch.
async fn lease_history_json(shared: &Shared) -> Result<serde_json::Value, LeaseError> {
    let shards = shared.membership.view().placement().shards();
    let per_shard: Vec<Vec<serde_json::Value>> = futures::stream::iter(0..shards)
        .map(|shard| async move {
            let takes = shared.leases.history(shard).await?;
            Ok::<_, LeaseError>(
                takes
                    .into_iter()
                    .map(
                        |(epoch, holder)| json!({"shard": shard, "epoch": epoch, "holder": holder}),
                    )
                    .collect(),
            )
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    Ok(json!({
        "node": shared.membership.name(),
        "shards": shards,
        "takes": per_shard.concat(),
    }))
}

async fn respond(mut stream: TcpStream, shared: Arc<Shared>, loopback: bool) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() <= MAX_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    let (status, content_type, body) = match read {
        Ok(true) if head.len() <= MAX_HEAD => {
            route(&String::from_utf8_lossy(&head), &shared, loopback).await
        }
        Ok(true) => (
            "431 Request Header Fields Too Large",
            "text/plain",
            String::new(),
        ),
        _ => return,
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes() {
        assert_eq!(
            parse("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse("GET /admin/cluster HTTP/1.1\r\n\r\n"),
            Request::Cluster
        );
        assert_eq!(parse("GET /admin/leases HTTP/1.1\r\n\r\n"), Request::Leases);
        assert_eq!(
            parse("DELETE /admin/leases HTTP/1.1\r\n\r\n"),
            Request::WrongMethod("GET")
        );
        assert_eq!(parse("POST /admin/drain HTTP/1.1\r\n\r\n"), Request::Drain);
        assert_eq!(
            parse("POST /admin/nodes HTTP/1.1\r\n\r\n"),
            Request::AddNode
        );
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse("POST /metrics HTTP/1.1\r\n\r\n"),
            Request::WrongMethod("GET")
        );
        assert_eq!(
            parse("GET /admin/drain HTTP/1.1\r\n\r\n"),
            Request::WrongMethod("POST")
        );
        assert_eq!(parse("\u{0}\u{1}garbage"), Request::Malformed);
        assert_eq!(
            parse("POST /admin/faults/crash HTTP/1.1\r\n\r\n"),
            Request::Crash
        );
        assert_eq!(
            parse("POST /admin/faults/stall?secs=12 HTTP/1.1\r\n\r\n"),
            Request::Stall(Some((Backend::All, 12)))
        );
        assert_eq!(
            parse("POST /admin/faults/stall?backend=store&secs=4 HTTP/1.1\r\n\r\n"),
            Request::Stall(Some((Backend::Store, 4)))
        );
        assert_eq!(
            parse("POST /admin/faults/stall?backend=database&secs=4 HTTP/1.1\r\n\r\n"),
            Request::Stall(Some((Backend::Database, 4)))
        );
        assert_eq!(
            parse("POST /admin/faults/pause?secs=10 HTTP/1.1\r\n\r\n"),
            Request::Pause(Some(10))
        );
        assert_eq!(
            parse("POST /admin/faults/pause?secs=0 HTTP/1.1\r\n\r\n"),
            Request::Pause(None)
        );
        assert_eq!(
            parse("GET /admin/faults/pause?secs=3 HTTP/1.1\r\n\r\n"),
            Request::WrongMethod("POST")
        );
        assert_eq!(
            parse("POST /admin/faults/stall?secs=4&backend=log HTTP/1.1\r\n\r\n"),
            Request::Stall(Some((Backend::Log, 4)))
        );
        for bad in [
            "",
            "?secs=",
            "?secs=x",
            "?for=3",
            "x?secs=3",
            "?secs=3&backend=disk",
            "?xsecs=3",
        ] {
            assert_eq!(
                parse(&format!("POST /admin/faults/stall{bad} HTTP/1.1\r\n\r\n")),
                Request::Stall(None),
                "{bad}"
            );
        }
        assert_eq!(
            parse("GET /admin/faults/stall?secs=3 HTTP/1.1\r\n\r\n"),
            Request::WrongMethod("POST")
        );
    }

    #[test]
    fn changes_need_the_token_or_loopback() {
        let head = "POST /admin/drain HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n";
        assert!(authorised(head, Some("s3cret"), false));
        assert!(!authorised(head, Some("other"), true));
        assert!(!authorised(
            "POST /admin/drain HTTP/1.1\r\n\r\n",
            Some("s3cret"),
            true
        ));
        assert!(authorised("POST /admin/drain HTTP/1.1\r\n\r\n", None, true));
        assert!(!authorised(
            "POST /admin/drain HTTP/1.1\r\n\r\n",
            None,
            false
        ));
    }
}
