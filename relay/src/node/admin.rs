//! The admin port: `GET /metrics` in Prometheus text format.
//!
//! A deliberately small HTTP/1.1 responder (one request per connection, bounded read,
//! timeout) instead of an HTTP framework: it serves one page to a scraper on a private
//! address. Operators bind it to loopback or an internal network, never to clients.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::tokio_util_shim::CancelToken;
use crate::telemetry;

/// Largest request head read; anything longer is answered 431 and dropped.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin port until `stop`.
pub(super) async fn serve(listener: TcpListener, stop: CancelToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(respond(stream));
                }
            }
        }
    }
}

/// The status line and body for a request head.
fn route(head: &str) -> (&'static str, String) {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => match telemetry::install() {
            Some(handle) => ("200 OK", handle.render()),
            None => (
                "503 Service Unavailable",
                "another metrics recorder is installed\n".into(),
            ),
        },
        (Some("GET"), Some(_)) => ("404 Not Found", "try /metrics\n".into()),
        (Some(_), Some(_)) => ("405 Method Not Allowed", "GET only\n".into()),
        _ => ("400 Bad Request", "not an HTTP request\n".into()),
    }
}

async fn respond(mut stream: TcpStream) {
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
    let (status, body) = match read {
        Ok(true) if head.len() <= MAX_HEAD => route(&String::from_utf8_lossy(&head)),
        Ok(true) => ("431 Request Header Fields Too Large", String::new()),
        _ => return,
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").0,
            "200 OK"
        );
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n").0, "404 Not Found");
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n").0,
            "405 Method Not Allowed"
        );
        assert_eq!(route("\u{0}\u{1}garbage").0, "400 Bad Request");
    }
}
