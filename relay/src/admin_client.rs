//! Talking to a node's admin port from a tool (`levee node ...`, `levee-chaos`,
//! `levee-conns`): one HTTP/1.1 request per connection, as the port serves them, and one
//! node's series read from its metrics page.

use std::net::SocketAddr;
use std::time::Duration;

/// Why an admin request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No answer in time.
    #[error("the admin port at {admin} did not answer within {after:?}")]
    Timeout {
        /// The port.
        admin: SocketAddr,
        /// How long we waited.
        after: Duration,
    },
    /// Could not connect, or the connection failed.
    #[error("cannot reach the admin port at {admin}: {source}")]
    Io {
        /// The port.
        admin: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Something answered, but not HTTP.
    #[error("the admin port at {admin} sent no HTTP answer")]
    NotHttp {
        /// The port.
        admin: SocketAddr,
    },
}

/// `method path` on the admin port at `admin`, with the bearer `token` if given; the
/// status code and body, within `timeout`.
pub async fn request(
    admin: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), AdminError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {admin}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| AdminError::Timeout {
            admin,
            after: timeout,
        })?
        .map_err(|source| AdminError::Io { admin, source })?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(AdminError::NotHttp { admin })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(AdminError::NotHttp { admin })?;
    Ok((status, body.to_owned()))
}

/// The value of `series` labelled `node="name"` in a Prometheus text page (the lowest, if
/// it has several label sets).
pub fn series_value(page: &str, name: &str, series: &str) -> Option<f64> {
    let label = format!("node=\"{name}\"");
    page.lines()
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter(|l| l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_reads_only_the_named_nodes_series() {
        let page = "\
# TYPE levee_load_ratio gauge
levee_load_ratio{node=\"node-2\"} 0.0097
levee_load_ratio{node=\"node-1\"} 1.5
levee_load_ratio_other{node=\"node-1\"} 0.1
";
        assert_eq!(series_value(page, "node-1", "levee_load_ratio"), Some(1.5));
        assert_eq!(
            series_value(page, "node-2", "levee_load_ratio"),
            Some(0.0097)
        );
        assert_eq!(series_value(page, "node-3", "levee_load_ratio"), None);
        assert_eq!(series_value(page, "node-1", "levee_load"), None);
    }
}
