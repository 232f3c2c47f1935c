//! The cluster's line board: every heartbeat, this node writes its line's latest samples
//! and reads everyone's, so that all nodes' lines keep one order (see
//! `crate::admission::ClusterLine`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::tokio_util_shim::CancelToken;
use crate::cluster::RosterError;
use crate::telemetry::{RosterOp, RoundOutcome};

/// One round: write this node's report, read the board, hand it to admission.
pub(crate) async fn exchange(shared: &Shared) -> Result<(), RosterError> {
    let report = shared.admission.line_report();
    let membership = &shared.membership;
    if !membership.has_left() {
        membership.publish_line(report).await?;
    }
    let board = membership.line_board().await?;
    let bad = shared.admission.heard(&board);
    if !bad.is_empty() {
        tracing::warn!(nodes = ?bad, "line board reports that do not decode are left out");
    }
    Ok(())
}

/// Exchanges every `period` until `stop`; a round that overruns `period × 4` is abandoned
/// (the board's reads and writes stall with the roster's store). While rounds fail, the
/// node's view of the others' lines ages, and once it is older than the failure timeout
/// it lets nobody in from its line (it cannot know where the cluster's line stands).
pub(crate) async fn keep(shared: Arc<Shared>, period: Duration, stop: CancelToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let started = Instant::now();
        let round = tokio::time::timeout(period * 4, exchange(&shared)).await;
        let outcome = match &round {
            Ok(Ok(())) => RoundOutcome::Ok,
            Ok(Err(_)) => RoundOutcome::Error,
            Err(_) => RoundOutcome::Timeout,
        };
        shared
            .metrics
            .roster_round(RosterOp::LineBoard, outcome, started.elapsed());
        match round {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("the line board is reachable again");
                }
                failing = false;
            }
            Ok(Err(e)) if !failing => {
                tracing::warn!(error = %e, "cannot exchange with the line board");
                failing = true;
            }
            Err(_) if !failing => {
                tracing::warn!("a line board round timed out");
                failing = true;
            }
            _ => {}
        }
    }
}
