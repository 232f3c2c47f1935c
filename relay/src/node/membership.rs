//! Keeping this node's roster row alive and its view of the cluster current.
//!
//! Two tasks, each with a deadline on every round:
//! - **Heartbeats** refresh the node's row every `heartbeat_ms` and remove rows that stopped
//!   beating (failure detection: any node may do it, and doing it twice is harmless).
//! - **Views** re-read the roster on the same period (at once when the roster says it
//!   changed). A newer epoch means a new placement, published on a watch channel that the
//!   delivery worker (which shards to drain) and every connection (whether its mailbox
//!   moved) follow. Views only move forward: a snapshot at an older epoch than the view's
//!   (a lagging replica's answer) is ignored.
//!
//! **A node that cannot read the roster demotes itself.** Once its last successful roster
//! read is older than the failure timeout, its view may be wrong, so it stops acting on
//! it where that could hurt the others: it stops heartbeating (its row lapses, the others
//! give it up and place its shards on nodes that can see the cluster) and stops
//! delivering (the delivery worker takes no shards). It keeps its view and its client
//! sessions — their sends go to the log, and their pushes read the shared store — because
//! closing sessions when the whole database froze for everyone (a fence tried earlier)
//! took every user offline for nothing. It refuses the logins its stale view would send
//! elsewhere (`MAILBOX_UNAVAILABLE`, retry shortly: any node that can read the roster
//! places them), since the owner that view names may be dead: in the `slow-snapshot` drill
//! each such redirect cost a login its 5 s connect timeout. The first good read ends the
//! demotion; a node whose row lapsed meanwhile finds itself gone and joins again with its
//! next heartbeat.
//!
//! **Tenure.** Separately, a node acts as a shard's holder only while its last successful
//! heartbeat is recent by its own monotonic clock ([`Membership::tenured`]): the others
//! give it up only after its row lapsed, which is later, so a node frozen past the failure
//! timeout (a zombie) wakes up knowing it may have been replaced, before it stores anything.
//!
//! They used to be one loop: a snapshot in the CQL roster is a serial read and maybe a few
//! compare-and-sets, and while one waited out the database's timeouts (seconds) no
//! heartbeat was written, the node's own row lapsed (its TTL is the failure timeout), the
//! others gave it up for dead, and the epoch moved again. A heartbeat now never waits for
//! a snapshot, and a round that overruns its deadline is abandoned and counted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use levee_sharding::PlacementConfig;
use tokio::sync::watch;

use super::tokio_util_shim::CancelToken;
use crate::cluster::{ClusterView, NodeInfo, NodeState, Roster, RosterError, RosterSnapshot};
use crate::telemetry::{NodeMetrics, RosterOp, RoundOutcome};

pub(crate) struct Membership {
    roster: Arc<dyn Roster>,
    me: std::sync::Mutex<NodeInfo>,
    placement: PlacementConfig,
    failure_timeout: Duration,
    view: watch::Sender<Arc<ClusterView>>,
    draining: AtomicBool,
    left: AtomicBool,
    metrics: NodeMetrics,
    /// When the roster was last read successfully (joining counts).
    fresh_at: std::sync::Mutex<tokio::time::Instant>,
    /// Whether the node has demoted itself (see the module docs).
    demoted: watch::Sender<bool>,
    /// Until when this node's row is certainly in the roster: the start of its last
    /// successful heartbeat (or join) plus the failure timeout (see [`tenured`](Self::tenured)).
    tenure_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Set when another, older process turned out to run under this node's name: this
    /// node gives way (the node stops, without removing the row, which is the other's).
    gave_way: watch::Sender<Option<(String, String)>>,
}

impl Membership {
    /// Not yet joined: the view is empty (owns nothing) until [`join`](Self::join).
    pub fn new(
        roster: Arc<dyn Roster>,
        me: NodeInfo,
        placement: PlacementConfig,
        failure_timeout: Duration,
        metrics: NodeMetrics,
    ) -> Self {
        let empty = RosterSnapshot {
            epoch: 0,
            nodes: Vec::new(),
        };
        let view = Arc::new(ClusterView::compute(&me.name, &empty, &placement));
        Self {
            roster,
            me: std::sync::Mutex::new(me),
            placement,
            failure_timeout,
            view: watch::Sender::new(view),
            draining: AtomicBool::new(false),
            left: AtomicBool::new(false),
            metrics,
            fresh_at: std::sync::Mutex::new(tokio::time::Instant::now()),
            demoted: watch::Sender::new(false),
            tenure_until: std::sync::Mutex::new(None),
            gave_way: watch::Sender::new(None),
        }
    }

    /// Follows whether this node gave way to another process with its name (see
    /// [`RosterError::NameInUse`]): `Some((name, other's incarnation))` once it has.
    pub fn subscribe_gave_way(&self) -> watch::Receiver<Option<(String, String)>> {
        self.gave_way.subscribe()
    }

    /// Whether this node may still act as a shard's holder by its own clock: its last
    /// successful heartbeat began less than the failure timeout, less a third of it, ago.
    ///
    /// The others give a node up (and take its shards' leases at once) only when its row
    /// is gone: in the CQL roster its TTL, counted by the database from when the write
    /// arrived; in the local roster, `failure_timeout` of silence. Both start after the
    /// heartbeat did, so a node that stops acting at its tenure's end stops before anyone
    /// can take over, however long it was frozen (a monotonic clock runs on through
    /// SIGSTOP). The margin covers a store write issued just before the end.
    pub fn tenured(&self) -> bool {
        self.tenure_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| tokio::time::Instant::now() + self.failure_timeout / 3 < until)
    }

    /// Extends the tenure after a roster write that began at `started` succeeded.
    fn renew_tenure(&self, started: tokio::time::Instant) {
        let until = started + self.failure_timeout;
        let mut tenure = self.tenure_until.lock().unwrap_or_else(|p| p.into_inner());
        if tenure.is_none_or(|t| t < until) {
            *tenure = Some(until);
        }
    }

    /// Whether this node has demoted itself: its view is older than the failure timeout.
    pub fn demoted(&self) -> bool {
        *self.demoted.borrow()
    }

    /// Follows demotion (the delivery worker takes no shards while demoted).
    pub fn subscribe_demoted(&self) -> watch::Receiver<bool> {
        self.demoted.subscribe()
    }

    /// Re-judges demotion: a node is demoted while its last good roster read is older than
    /// the failure timeout.
    fn judge_freshness(&self) {
        let since = self
            .fresh_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        let stale = since > self.failure_timeout;
        let changed = self.demoted.send_if_modified(|d| {
            let was = std::mem::replace(d, stale);
            was != stale
        });
        if changed {
            if stale {
                tracing::warn!(
                    last_read_ago = ?since,
                    "cannot read the roster: demoted (no heartbeats, no delivery) until a read succeeds"
                );
            } else {
                tracing::info!("roster readable again: no longer demoted");
            }
            self.metrics.demoted(stale);
        }
    }

    fn me(&self) -> NodeInfo {
        self.me.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This node's name.
    pub fn name(&self) -> String {
        self.me().name
    }

    /// Adds this node's row and computes the first view.
    pub async fn join(&self) -> Result<(), RosterError> {
        let started = tokio::time::Instant::now();
        self.roster.join(self.me()).await?;
        self.renew_tenure(started);
        if self.draining.load(Ordering::Relaxed) {
            self.roster.drain(&self.name()).await?;
        }
        match self.refresh().await {
            // Others are joining or leaving at this very moment. The row is written, which
            // is what joining is; the first heartbeat computes the view.
            Err(e @ RosterError::Unsettled(_)) => {
                tracing::warn!(error = %e, "joined; the first view waits for a heartbeat");
                Ok(())
            }
            other => other,
        }
    }

    /// The current view.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// Follows view changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }

    /// Re-reads the roster and publishes a new view if its epoch changed.
    pub async fn refresh(&self) -> Result<(), RosterError> {
        let snapshot = self.roster.snapshot().await?;
        *self.fresh_at.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
        let old = self.view();
        if snapshot.epoch <= old.epoch() {
            return Ok(());
        }
        let view = Arc::new(ClusterView::compute(old.me(), &snapshot, &self.placement));
        let before: BTreeSet<_> = old.owned().into_iter().collect();
        let after: BTreeSet<_> = view.owned().into_iter().collect();
        let gained = after.difference(&before).count();
        let lost = before.difference(&after).count();
        self.metrics
            .placement(view.epoch(), after.len(), gained, lost, view.digest());
        if gained + lost > 0 {
            tracing::info!(
                node = view.me(),
                epoch = view.epoch(),
                owned = after.len(),
                gained,
                lost,
                "placement changed"
            );
        }
        self.view.send_replace(view);
        Ok(())
    }

    /// One heartbeat: refresh the row (joining again if the others gave this node up for
    /// dead while it was alive), and, if that worked, remove silent rows.
    ///
    /// It does not re-read the roster: [`refresh`](Self::refresh) does, on its own task. A
    /// node whose heartbeats fail (its writes time out, say) while its reads still work is
    /// given up for dead by the others after `failure_timeout`, and they take its shards;
    /// its next refresh sees itself gone, and it owns nothing, so its sessions move to the
    /// new owners.
    pub async fn beat(&self) -> Result<(), RosterError> {
        self.judge_freshness();
        if self.left.load(Ordering::Relaxed) || self.demoted() {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        match self.roster.heartbeat(&self.name()).await {
            Err(RosterError::Unknown(_)) => {
                tracing::warn!("this node was removed from the roster; joining again");
                self.join().await
            }
            Err(RosterError::NameInUse { name, by }) => {
                tracing::error!(
                    name = %name,
                    other = %by,
                    "an older process runs under this node's name; this one stops"
                );
                // No more heartbeats, and no goodbye: the row is the other process's.
                self.left.store(true, Ordering::Relaxed);
                self.gave_way.send_replace(Some((name.clone(), by.clone())));
                Err(RosterError::NameInUse { name, by })
            }
            Err(e) => Err(e),
            Ok(()) => {
                self.renew_tenure(started);
                // Only a node that is itself alive in the roster judges the others.
                let dead = self.roster.expire(self.failure_timeout).await?;
                if !dead.is_empty() {
                    tracing::warn!(nodes = ?dead, "nodes stopped answering; their shards move");
                }
                Ok(())
            }
        }
    }

    /// Marks this node as draining: placement gives its shards to the others.
    pub async fn drain(&self) -> Result<(), RosterError> {
        self.draining.store(true, Ordering::Relaxed);
        self.me.lock().unwrap_or_else(|p| p.into_inner()).state = NodeState::Draining;
        self.roster.drain(&self.name()).await?;
        self.refresh().await
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether this node has left the roster for good (or gave way to another process).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Relaxed)
    }

    /// Writes this node's report to the cluster's line board (`node::line_board`).
    pub async fn publish_line(&self, report: Vec<u8>) -> Result<(), RosterError> {
        self.roster.publish_line(&self.name(), report).await
    }

    /// Every node's report on the line board.
    pub async fn line_board(&self) -> Result<Vec<(String, Vec<u8>)>, RosterError> {
        self.roster.line_board().await
    }

    /// Removes this node's row for good (no heartbeat brings it back).
    pub async fn leave(&self) -> Result<(), RosterError> {
        self.left.store(true, Ordering::Relaxed);
        self.roster.leave(&self.name()).await
    }
}

/// Keeps the row alive and the view current until `stop`: heartbeats and views on tasks
/// of their own (see the module docs), each round abandoned at its deadline.
pub(crate) async fn keep(membership: Arc<Membership>, period: Duration, stop: CancelToken) {
    let deadlines = Deadlines::new(period, membership.failure_timeout);
    tokio::join!(
        heartbeats(&membership, period, deadlines.heartbeat, &stop),
        views(&membership, period, deadlines.snapshot, &stop),
    );
}

/// How long one round of each task may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deadlines {
    heartbeat: Duration,
    snapshot: Duration,
}

impl Deadlines {
    /// A heartbeat gets a third of the failure timeout (at least a period): a row whose
    /// writes each take longer than that would lapse between two of them anyway, and
    /// giving up leaves time for two more tries before it does. A snapshot gets the whole
    /// failure timeout: a view older than that is stale whatever it says.
    fn new(period: Duration, failure_timeout: Duration) -> Self {
        Self {
            heartbeat: (failure_timeout / 3).max(period),
            snapshot: failure_timeout.max(period),
        }
    }
}

async fn heartbeats(
    membership: &Membership,
    period: Duration,
    deadline: Duration,
    stop: &CancelToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        let outcome = match tokio::time::timeout(deadline, membership.beat()).await {
            Err(_) => {
                tracing::warn!(?deadline, "heartbeat abandoned at its deadline");
                RoundOutcome::Timeout
            }
            Ok(Ok(())) => RoundOutcome::Ok,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "heartbeat failed");
                RoundOutcome::Error
            }
        };
        membership
            .metrics
            .roster_round(RosterOp::Heartbeat, outcome, started.elapsed());
    }
}

async fn views(membership: &Membership, period: Duration, deadline: Duration, stop: &CancelToken) {
    let mut changes = membership.roster.changes();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
            Some(()) = changed(&mut changes) => {}
        }
        let started = std::time::Instant::now();
        let refreshed = tokio::time::timeout(deadline, membership.refresh()).await;
        membership.judge_freshness();
        let outcome = match refreshed {
            Err(_) => {
                tracing::warn!(
                    ?deadline,
                    "roster read abandoned at its deadline; keeping the last placement"
                );
                RoundOutcome::Timeout
            }
            Ok(Ok(())) => RoundOutcome::Ok,
            Ok(Err(e @ RosterError::Unsettled(_))) => {
                tracing::warn!(error = %e, "roster changing; keeping the last placement");
                RoundOutcome::Unsettled
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "roster unavailable; keeping the last placement");
                RoundOutcome::Error
            }
        };
        membership
            .metrics
            .roster_round(RosterOp::Snapshot, outcome, started.elapsed());
        membership
            .metrics
            .roster_rows_unreadable(membership.roster.rows_unreadable());
    }
}

/// Resolves when `changes` (if any) moves; never, for rosters that cannot tell.
async fn changed(changes: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match changes {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;

    use super::*;
    use crate::cluster::LocalRoster;
    use crate::tls::Fingerprint;

    fn member(roster: Arc<dyn Roster>, name: &str, port: u16) -> Membership {
        let me = NodeInfo {
            name: name.into(),
            address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            fingerprint: Fingerprint([port as u8; 32]),
            region: "local".into(),
            weight: 1,
            state: NodeState::Active,
        };
        let placement = PlacementConfig::default();
        let timeout = Duration::from_millis(100);
        Membership::new(roster, me, placement, timeout, NodeMetrics::new(name))
    }

    #[tokio::test]
    async fn a_node_whose_heartbeats_fail_gives_up_its_shards_once_the_others_expire_it() {
        let a_roster = Arc::new(TestRoster::default());
        // b reaches the same rows, and its heartbeats work.
        let b_roster = a_roster.inner.clone();
        let a = member(a_roster.clone(), "a", 1);
        let b = member(b_roster, "b", 2);
        a.join().await.unwrap();
        b.join().await.unwrap();
        a.beat().await.unwrap();
        a.refresh().await.unwrap();
        assert!(!a.view().owned().is_empty(), "a owns shards while alive");

        a_roster.failing.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // b reads the roster on its own task every period; here, by hand, before it beats.
        b.refresh().await.unwrap();
        b.beat().await.unwrap();
        b.refresh().await.unwrap();
        assert!(
            b.view().nodes().all(|n| n.name != "a"),
            "b gave a up for dead"
        );
        a.refresh().await.unwrap();
        assert!(a.beat().await.is_err(), "the failed heartbeat is reported");
        a.refresh().await.unwrap();
        assert!(
            a.view().owned().is_empty(),
            "a, gone from the roster, owns nothing (it owned {:?})",
            a.view().owned()
        );

        // Once its writes work again it joins again and takes its share back.
        a_roster.failing.store(false, Ordering::Relaxed);
        a.beat().await.unwrap();
        b.beat().await.unwrap();
        a.refresh().await.unwrap();
        b.refresh().await.unwrap();
        assert!(!a.view().owned().is_empty());
        assert_eq!(a.view().epoch(), b.view().epoch());
    }

    /// The in-memory roster, counting heartbeats, whose heartbeats fail while `failing` is
    /// set (a node whose writes time out while its reads still work), and whose snapshots
    /// can be slow, hang (a serial read waiting out the database) or answer from an older
    /// epoch (a lagging replica).
    #[derive(Default)]
    struct TestRoster {
        inner: Arc<LocalRoster>,
        failing: AtomicBool,
        /// Heartbeats answer that an older process runs under the name.
        taken: AtomicBool,
        heartbeats: std::sync::atomic::AtomicU64,
        hang: AtomicBool,
        delay: std::sync::Mutex<Duration>,
        stale: std::sync::Mutex<Option<RosterSnapshot>>,
    }

    #[async_trait]
    impl Roster for TestRoster {
        async fn join(&self, node: NodeInfo) -> Result<(), RosterError> {
            self.inner.join(node).await
        }
        async fn heartbeat(&self, name: &str) -> Result<(), RosterError> {
            self.heartbeats.fetch_add(1, Ordering::Relaxed);
            if self.failing.load(Ordering::Relaxed) {
                return Err(RosterError::Backend("write timed out".into()));
            }
            if self.taken.load(Ordering::Relaxed) {
                return Err(RosterError::NameInUse {
                    name: name.to_owned(),
                    by: "000000000000001-older".into(),
                });
            }
            self.inner.heartbeat(name).await
        }
        async fn drain(&self, name: &str) -> Result<(), RosterError> {
            self.inner.drain(name).await
        }
        async fn leave(&self, name: &str) -> Result<(), RosterError> {
            self.inner.leave(name).await
        }
        async fn expire(&self, timeout: Duration) -> Result<Vec<String>, RosterError> {
            self.inner.expire(timeout).await
        }
        async fn publish_line(&self, name: &str, report: Vec<u8>) -> Result<(), RosterError> {
            self.inner.publish_line(name, report).await
        }
        async fn line_board(&self) -> Result<Vec<(String, Vec<u8>)>, RosterError> {
            self.inner.line_board().await
        }
        async fn snapshot(&self) -> Result<RosterSnapshot, RosterError> {
            if self.hang.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if let Some(stale) = self.stale.lock().unwrap().clone() {
                return Ok(stale);
            }
            self.inner.snapshot().await
        }
    }

    /// The flake's suspected cause: heartbeats waited behind a snapshot that waited out
    /// the database's timeouts, so the node's row lapsed. With snapshots that each take 8
    /// periods (under the failure timeout), one loop beat about every 8 periods; two tasks
    /// beat every period.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_go_on_while_snapshots_are_slow() {
        let roster = Arc::new(TestRoster::default());
        *roster.delay.lock().unwrap() = Duration::from_millis(80);
        let a = Arc::new(member(roster.clone(), "a", 1));
        a.join().await.unwrap();
        let stop = CancelToken::default();
        let keeping = tokio::spawn(keep(a.clone(), Duration::from_millis(10), stop.clone()));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        stop.cancel();
        keeping.await.unwrap();
        let beats = roster.heartbeats.load(Ordering::Relaxed);
        assert!(beats >= 50, "{beats} heartbeats in 100 periods");
        assert!(!a.demoted(), "slow reads that succeed keep the node fresh");
    }

    /// A node whose roster reads keep failing for longer than the failure timeout stops
    /// heartbeating (so the others give it up) and says it is demoted (so it stops
    /// delivering), keeping its view; the first good read ends it.
    #[tokio::test(start_paused = true)]
    async fn a_node_that_cannot_read_the_roster_demotes_itself_until_it_can() {
        let roster = Arc::new(TestRoster::default());
        let a = Arc::new(member(roster.clone(), "a", 1));
        a.join().await.unwrap();
        a.refresh().await.unwrap();
        let owned = a.view().owned();
        roster.hang.store(true, Ordering::Relaxed);
        let stop = CancelToken::default();
        let keeping = tokio::spawn(keep(a.clone(), Duration::from_millis(10), stop.clone()));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            a.demoted(),
            "stale for longer than the 100 ms failure timeout"
        );
        let beats = roster.heartbeats.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            roster.heartbeats.load(Ordering::Relaxed),
            beats,
            "no heartbeats"
        );
        assert_eq!(a.view().owned(), owned, "the view is kept: sessions stay");

        roster.hang.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!a.demoted());
        assert!(
            roster.heartbeats.load(Ordering::Relaxed) > beats,
            "beating again"
        );
        stop.cancel();
        keeping.await.unwrap();
    }

    /// Tenure follows the node's own successful heartbeats by its own clock: it runs out
    /// (with a margin) before the failure timeout after the last one that got through,
    /// however the node spent the time, and comes back with the next.
    #[tokio::test(start_paused = true)]
    async fn tenure_ends_before_the_others_can_give_the_node_up() {
        let roster = Arc::new(TestRoster::default());
        let a = member(roster.clone(), "a", 1);
        assert!(!a.tenured(), "no tenure before joining");
        a.join().await.unwrap();
        assert!(a.tenured());
        tokio::time::advance(Duration::from_millis(60)).await;
        a.beat().await.unwrap();
        roster.failing.store(true, Ordering::Relaxed);
        // Failure timeout 100 ms, margin a third of it: tenured until 66 ms after the beat.
        tokio::time::advance(Duration::from_millis(60)).await;
        a.refresh().await.unwrap(); // reads work: not demoted
        assert!(a.beat().await.is_err());
        assert!(a.tenured(), "60 ms after the last good heartbeat");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(
            !a.tenured(),
            "70 ms after it: within a third of the timeout of the end"
        );
        roster.failing.store(false, Ordering::Relaxed);
        a.beat().await.unwrap();
        assert!(a.tenured(), "a good heartbeat renews it");
    }

    /// A node that learns an older process runs under its name gives way: it says so (the
    /// node stops on it) and writes its row no more.
    #[tokio::test]
    async fn a_node_gives_way_to_an_older_process_with_its_name() {
        let roster = Arc::new(TestRoster::default());
        let a = member(roster.clone(), "a", 1);
        a.join().await.unwrap();
        let gave_way = a.subscribe_gave_way();
        assert!(gave_way.borrow().is_none());
        roster.taken.store(true, Ordering::Relaxed);
        assert!(matches!(a.beat().await, Err(RosterError::NameInUse { .. })));
        assert_eq!(
            gave_way.borrow().clone(),
            Some(("a".to_owned(), "000000000000001-older".to_owned()))
        );
        let beats = roster.heartbeats.load(Ordering::Relaxed);
        a.beat().await.unwrap();
        assert_eq!(
            roster.heartbeats.load(Ordering::Relaxed),
            beats,
            "no more heartbeats"
        );
    }

    #[tokio::test]
    async fn views_only_move_to_newer_epochs() {
        let roster = Arc::new(TestRoster::default());
        let a = member(roster.clone(), "a", 1);
        a.join().await.unwrap();
        let b = member(roster.inner.clone(), "b", 2);
        let old = roster.inner.snapshot().await.unwrap();
        b.join().await.unwrap();
        a.refresh().await.unwrap();
        let current = a.view();
        assert!(current.nodes().any(|n| n.name == "b"));

        // A snapshot from before b joined, as a lagging replica would answer.
        *roster.stale.lock().unwrap() = Some(old);
        a.refresh().await.unwrap();
        assert_eq!(a.view().epoch(), current.epoch());
        assert!(
            a.view().nodes().any(|n| n.name == "b"),
            "the view did not go back"
        );
    }
}
