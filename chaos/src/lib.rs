//! Levee chaos drills: play a scenario against a cluster, inject faults, check the
//! invariants from a ledger, and write a report a person can read at a glance.
//!
//! - [`scenario`]: what a drill plays (TOML files in `chaos/scenarios/`), pure.
//! - [`drill`]: plays it against a target cluster with real QUIC clients.
//! - [`cluster`]: the cluster a drill plays against (embedded, or running elsewhere) and
//!   how faults reach it; [`proxy`]: the UDP proxy that cuts a node off from its clients.
//! - [`ledger`]: what clients were told, and the invariants over it, pure.
//! - [`placement`]: whether the nodes agree on who owns which shard, pure; [`leases`]:
//!   whether each shard's lease had one holder per epoch, pure.
//! - [`autoscale`]: the drill's autoscaler (the Kubernetes HPA's algorithm on
//!   `levee_load_ratio`) and the checks on what it did, pure.
//! - [`timeline`]: per-second counts and latencies.
//! - [`record`]: the result as data (JSON); [`report`]: the same as one HTML page.

pub mod autoscale;
pub mod cluster;
pub mod drill;
pub mod leases;
pub mod ledger;
pub mod placement;
pub mod proxy;
pub mod record;
pub mod report;
pub mod scenario;
pub mod timeline;

/// Now as RFC 3339 in UTC (`2026-11-24T21:30:00Z`), without a date-time dependency.
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// `secs` since the Unix epoch as RFC 3339 in UTC.
pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_555_200), "2026-11-24T21:20:00Z");
    }
}
