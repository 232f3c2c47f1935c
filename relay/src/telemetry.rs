//! Metrics: every name, its help text and unit, in one place; Prometheus text exposition.
//!
//! Every series carries the node's name (`node`); labels never carry an address, an account
//! id or content.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::admission::{RequestClass, TicketError};
use crate::cluster::Taking;

const ADMITTED: &str = "levee_admission_admitted_total";
const SHED: &str = "levee_admission_shed_total";
const LEVEL: &str = "levee_admission_level";
const QUEUE_WAIT: &str = "levee_queue_wait_seconds";
const SCHEDULING_LAG: &str = "levee_scheduling_lag_seconds";
const LINE_LENGTH: &str = "levee_waiting_room_length";
const LINE_RATE: &str = "levee_waiting_room_admission_rate";
const LINE_WAIT: &str = "levee_waiting_room_estimated_wait_seconds";
const LOAD_RATIO: &str = "levee_load_ratio";
const QUEUED: &str = "levee_registrations_queued_total";
const TICKETS_REJECTED: &str = "levee_tickets_rejected_total";
const CONNECTIONS: &str = "levee_connections";
const DROPPED_AT_DOOR: &str = "levee_connections_dropped_at_door_total";
const DROPPED_BUDGET_SPENT: &str = "levee_connections_dropped_handshakes_full_total";
const DOOR_KERNEL_SHARE: &str = "levee_door_kernel_share";
const DOOR_PASSES: &str = "levee_connections_passed_at_door_total";
const BACKEND_LATENCY: &str = "levee_backend_write_latency_seconds";
const BACKEND_LATENCY_LIMIT: &str = "levee_backend_write_latency_limit_seconds";
const DELIVERY_LAG: &str = "levee_delivery_lag_records";
const ENVELOPES_ACCEPTED: &str = "levee_envelopes_accepted_total";
const SEND_SECONDS: &str = "levee_send_seconds";
const ENVELOPES_STORED: &str = "levee_envelopes_stored_total";
#[cfg(feature = "cql")]
const STORE_STATEMENTS: &str = "levee_store_statements_total";
const LOG_SKIPPED: &str = "levee_delivery_log_skipped_total";
const SHARDS_OWNED: &str = "levee_shards_owned";
const PLACEMENT_EPOCH: &str = "levee_placement_epoch";
const PLACEMENT_DIGEST: &str = "levee_placement_digest";
const ROSTER_ROUNDS: &str = "levee_roster_rounds_total";
const ROSTER_ROUND_SECONDS: &str = "levee_roster_round_seconds";
const LINE_BOARD_AGE: &str = "levee_line_board_age_seconds";
const CLUSTER_LINE_BEHIND: &str = "levee_cluster_line_behind_seconds";
const ROSTER_ROWS_UNREADABLE: &str = "levee_roster_rows_unreadable";
const DEMOTED: &str = "levee_membership_demoted";
const REDIRECTS: &str = "levee_redirects_total";
const HANDOFFS: &str = "levee_shard_handoffs_total";
const LEASE_TAKES: &str = "levee_lease_takes_total";
const LEASES_FENCED: &str = "levee_lease_fenced_total";
const LEASES_HELD: &str = "levee_leases_held";
const BATCHES_ABANDONED: &str = "levee_delivery_batches_abandoned_total";
const GUESTS: &str = "levee_guest_sessions";
const UNREACHABLE_REPORTS: &str = "levee_owner_unreachable_reports_total";

/// Buckets of the latency histograms (queue wait, scheduling lag, sends): dense around the
/// 5 ms / 20 ms admission thresholds, up to the seconds a badly overloaded node shows.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle; `None` if the
/// embedding program installed another recorder first (then Levee's metrics go there).
pub(crate) fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), LATENCY_BUCKETS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full(SCHEDULING_LAG.into()), LATENCY_BUCKETS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full(SEND_SECONDS.into()), LATENCY_BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    describe_gauge!(
        SHARDS_OWNED,
        Unit::Count,
        "Shards the node owns in its current placement, by node"
    );
    describe_gauge!(
        PLACEMENT_EPOCH,
        Unit::Count,
        "Roster epoch of the node's current placement, by node"
    );
    describe_gauge!(
        PLACEMENT_DIGEST,
        Unit::Count,
        "48-bit fingerprint of the node's placement (epoch and every shard's owner); nodes \
         that agree on who owns what show the same value, by node"
    );
    describe_counter!(
        ROSTER_ROUNDS,
        Unit::Count,
        "Membership rounds, by op (heartbeat: the node's row written; snapshot: the roster \
         read; line_board: the node's line report written and the cluster's read) and \
         outcome (ok, error, timeout: abandoned at its deadline, unsettled: the rows kept \
         changing)"
    );
    describe_gauge!(
        LINE_BOARD_AGE,
        Unit::Seconds,
        "Since the node last read the cluster's line board (+Inf: not yet); past the failure \
         timeout the node lets nobody in from its line. Only while the nodes keep one line \
         (registration_line_sync_ms > 0)"
    );
    describe_gauge!(
        CLUSTER_LINE_BEHIND,
        Unit::Seconds,
        "How far, in ticket issue time, the cluster's line trails this node's own: places \
         this node would let in that wait for another node's line (0: none). The cluster \
         moves at its slowest line's pace"
    );
    describe_histogram!(
        ROSTER_ROUND_SECONDS,
        Unit::Seconds,
        "How long membership rounds took, by op"
    );
    describe_gauge!(
        DEMOTED,
        Unit::Count,
        "1 while the node cannot read the roster for longer than the failure timeout and has \
         demoted itself (no heartbeats, no delivery; sessions kept), else 0"
    );
    describe_gauge!(
        ROSTER_ROWS_UNREADABLE,
        Unit::Count,
        "Roster rows left out of the node's last roster read because they do not parse"
    );
    describe_counter!(
        REDIRECTS,
        Unit::Count,
        "Clients sent to another node: at login (redirect) or mid-session (moved), by node"
    );
    describe_counter!(
        HANDOFFS,
        Unit::Count,
        "Shards taken over (direction=in) or handed over (direction=out), by node"
    );
    describe_counter!(
        LEASE_TAKES,
        Unit::Count,
        "Shard leases taken, by how they came free (free: released or never held; own: held \
         by this node's name before; absent: the holder left the roster; overdue: a live \
         holder did not let go within twice the failure timeout)"
    );
    describe_gauge!(
        GUESTS,
        Unit::Count,
        "Guest sessions open: clients served here because they cannot reach their mailbox's \
         owner, which this node can"
    );
    describe_counter!(
        UNREACHABLE_REPORTS,
        Unit::Count,
        "Logins whose client said it could not reach the mailbox's owner (by owner): a node \
         its clients cannot reach while the cluster can, a gray failure, shows here on the \
         others"
    );
    describe_counter!(
        LEASES_FENCED,
        Unit::Count,
        "Commits of a shard's position refused because a later holder took its lease: this \
         node stopped delivering that shard"
    );
    describe_gauge!(
        LEASES_HELD,
        Unit::Count,
        "Shard leases this node holds (the shards it delivers)"
    );
    describe_counter!(
        BATCHES_ABANDONED,
        Unit::Count,
        "Delivery batches dropped unstored because the node's tenure ran out (its last good \
         heartbeat is too old for it to be sure it still holds its shards); their new holder \
         delivers them"
    );
    describe_counter!(ADMITTED, Unit::Count, "Requests admitted, by class");
    describe_counter!(
        SHED,
        Unit::Count,
        "Requests shed with RATE_LIMITED, by class"
    );
    describe_gauge!(
        LEVEL,
        Unit::Percent,
        "Share of (class, cohort) slots admitted, 0 to 1"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time a request waited in the node's queues before work on it started"
    );
    describe_histogram!(
        SCHEDULING_LAG,
        Unit::Seconds,
        "How late the node's scheduler ran a 10 ms probe timer"
    );
    describe_gauge!(LINE_LENGTH, Unit::Count, "Registrations waiting in line");
    describe_gauge!(
        LINE_RATE,
        Unit::CountPerSecond,
        "Positions per second the waiting line advances"
    );
    describe_gauge!(
        LINE_WAIT,
        Unit::Seconds,
        "How long a newcomer joining the waiting line now would wait (0 while places are \
         free), by node"
    );
    describe_gauge!(
        LOAD_RATIO,
        Unit::Count,
        "The autoscaling signal: the largest of queueing delay over the overload limit, the \
         inverse of the share served while anything is shed, and the waiting line's wait \
         over load_target_wait_s; 1.0 = at target, for desired = ceil(nodes × mean ratio), \
         by node"
    );
    describe_counter!(
        QUEUED,
        Unit::Count,
        "Registration attempts answered with a place in line"
    );
    describe_counter!(
        TICKETS_REJECTED,
        Unit::Count,
        "Waiting-room tickets refused, by reason"
    );
    describe_gauge!(CONNECTIONS, Unit::Count, "Open client connections");
    describe_counter!(
        DROPPED_AT_DOOR,
        Unit::Count,
        "New connection attempts dropped before QUIC, over the node-wide handshake rate or \
         while the handshake budget was spent"
    );
    describe_counter!(
        DROPPED_BUDGET_SPENT,
        Unit::Count,
        "Of the connection attempts dropped at the door, those dropped because max_handshakes \
         handshakes were under way (pass holders included: a mass reconnect)"
    );
    describe_counter!(
        DOOR_PASSES,
        Unit::Count,
        "New connection attempts let through a limited door on a door pass (known accounts \
         logging in again)"
    );
    describe_gauge!(
        DOOR_KERNEL_SHARE,
        Unit::Count,
        "Share (0-1) of new connection attempts the kernel passes to the door; the rest it \
         drops before the node receives them"
    );
    describe_gauge!(
        DELIVERY_LAG,
        Unit::Count,
        "Delivery-log records not yet stored in mailboxes"
    );
    describe_gauge!(
        BACKEND_LATENCY,
        Unit::Seconds,
        "Smoothed latency of durable storage writes, as admission control sees it"
    );
    describe_gauge!(
        BACKEND_LATENCY_LIMIT,
        Unit::Seconds,
        "Write latency above which admission control counts the backend as overloaded"
    );
    describe_counter!(
        ENVELOPES_ACCEPTED,
        Unit::Count,
        "Envelopes made durable in the delivery log and acknowledged to senders"
    );
    describe_histogram!(
        SEND_SECONDS,
        Unit::Seconds,
        "Time from a Send's arrival to its SendOk (the envelope durable in the delivery log), \
         accepted sends only"
    );
    describe_counter!(
        LOG_SKIPPED,
        Unit::Count,
        "Delivery-log records stepped over without being stored: reason=corrupt (not Levee's \
         record) or reason=lost (deleted by retention before delivery: data loss)"
    );
    describe_counter!(
        ENVELOPES_STORED,
        Unit::Count,
        "Envelopes moved from the delivery log into mailboxes"
    );
    #[cfg(feature = "cql")]
    describe_counter!(
        STORE_STATEMENTS,
        Unit::Count,
        "CQL statements the mailbox store ran, by statement (a batch counts once); the \
         distributed deployment only"
    );
}

/// The counter of each kind of statement the CQL mailbox store of node `node` runs (for
/// [`levee_sharding::ScyllaMailboxStore::count_statements`]). Installs the recorder first, so
/// a store connected before the node starts is counted on its page all the same.
#[cfg(feature = "cql")]
pub fn store_statements(node: &str) -> impl Fn(levee_sharding::StoreStatement) -> Counter {
    install();
    let node = node.to_owned();
    move |statement| counter!(STORE_STATEMENTS, "node" => node.clone(), "statement" => statement.as_str())
}

fn class_label(class: RequestClass) -> &'static str {
    match class {
        RequestClass::Control => "control",
        RequestClass::Messaging => "messaging",
        RequestClass::Login => "login",
        RequestClass::Registration => "registration",
    }
}

const CLASSES: [RequestClass; 4] = [
    RequestClass::Control,
    RequestClass::Messaging,
    RequestClass::Login,
    RequestClass::Registration,
];

/// The two membership rounds (see `node::membership`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RosterOp {
    Heartbeat = 0,
    Snapshot = 1,
    /// The cluster's line board: this node's report written and everyone's read.
    LineBoard = 2,
}

const ROSTER_OPS: [RosterOp; 3] = [RosterOp::Heartbeat, RosterOp::Snapshot, RosterOp::LineBoard];
/// Every way a lease comes free, in the order of [`Taking`]'s discriminants.
const TAKINGS: [Taking; 4] = [Taking::Free, Taking::Own, Taking::Absent, Taking::Overdue];

impl RosterOp {
    fn as_str(self) -> &'static str {
        match self {
            RosterOp::Heartbeat => "heartbeat",
            RosterOp::Snapshot => "snapshot",
            RosterOp::LineBoard => "line_board",
        }
    }
}

/// How a membership round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RoundOutcome {
    Ok = 0,
    Error = 1,
    /// Abandoned at its deadline.
    Timeout = 2,
    /// The roster kept changing under the read.
    Unsettled = 3,
}

const ROUND_OUTCOMES: [RoundOutcome; 4] = [
    RoundOutcome::Ok,
    RoundOutcome::Error,
    RoundOutcome::Timeout,
    RoundOutcome::Unsettled,
];

impl RoundOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RoundOutcome::Ok => "ok",
            RoundOutcome::Error => "error",
            RoundOutcome::Timeout => "timeout",
            RoundOutcome::Unsettled => "unsettled",
        }
    }
}

/// One node's metrics, every series labelled with the node's name (several nodes can run
/// in one process). The handles are registered once, so recording is a plain atomic
/// update; created before the recorder is installed, they record nothing.
#[derive(Clone)]
pub(crate) struct NodeMetrics {
    node: String,
    admitted: [Counter; 4],
    shed: [Counter; 4],
    queue_wait: Histogram,
    scheduling_lag: Histogram,
    level: Gauge,
    line_length: Gauge,
    line_rate: Gauge,
    line_wait: Gauge,
    load_ratio: Gauge,
    queued: Counter,
    delivery_lag: Gauge,
    backend_latency: Gauge,
    backend_latency_limit: Gauge,
    connections: Gauge,
    dropped_at_door: Counter,
    dropped_budget_spent: Counter,
    passed_at_door: Counter,
    door_kernel_share: Gauge,
    envelopes_accepted: Counter,
    send_seconds: Histogram,
    envelopes_stored: Counter,
    log_skipped_corrupt: Counter,
    log_skipped_lost: Counter,
    shards_owned: Gauge,
    placement_epoch: Gauge,
    placement_digest: Gauge,
    roster_rounds: [[Counter; 4]; 3],
    roster_round_seconds: [Histogram; 3],
    line_board_age: Gauge,
    cluster_line_behind: Gauge,
    roster_rows_unreadable: Gauge,
    demoted: Gauge,
    handoffs_in: Counter,
    handoffs_out: Counter,
    lease_takes: [Counter; 4],
    /// By [`TicketError`], registered at zero so the series exist before the first refusal.
    tickets_rejected: [Counter; 4],
    leases_fenced: Counter,
    leases_held: Gauge,
    batches_abandoned: Counter,
    guests: Gauge,
    redirects: Counter,
    moves: Counter,
}

impl NodeMetrics {
    pub(crate) fn new(node: &str) -> Self {
        let n = || ("node", node.to_owned());
        let by_class = |name: &'static str| {
            CLASSES.map(|c| counter!(name, "class" => class_label(c), "node" => node.to_owned()))
        };
        let level = gauge!(LEVEL, &[n()]);
        // A node admits everything until its first window says otherwise; a fresh node
        // must not read as one shedding everything (0) on its metrics page.
        level.set(1.0);
        Self {
            node: node.to_owned(),
            admitted: by_class(ADMITTED),
            shed: by_class(SHED),
            queue_wait: histogram!(QUEUE_WAIT, &[n()]),
            scheduling_lag: histogram!(SCHEDULING_LAG, &[n()]),
            level,
            line_length: gauge!(LINE_LENGTH, &[n()]),
            line_rate: gauge!(LINE_RATE, &[n()]),
            line_wait: gauge!(LINE_WAIT, &[n()]),
            load_ratio: gauge!(LOAD_RATIO, &[n()]),
            queued: counter!(QUEUED, &[n()]),
            delivery_lag: gauge!(DELIVERY_LAG, &[n()]),
            backend_latency: gauge!(BACKEND_LATENCY, &[n()]),
            backend_latency_limit: gauge!(BACKEND_LATENCY_LIMIT, &[n()]),
            connections: gauge!(CONNECTIONS, &[n()]),
            dropped_at_door: counter!(DROPPED_AT_DOOR, &[n()]),
            dropped_budget_spent: counter!(DROPPED_BUDGET_SPENT, &[n()]),
            passed_at_door: counter!(DOOR_PASSES, &[n()]),
            door_kernel_share: gauge!(DOOR_KERNEL_SHARE, &[n()]),
            envelopes_accepted: counter!(ENVELOPES_ACCEPTED, &[n()]),
            send_seconds: histogram!(SEND_SECONDS, &[n()]),
            envelopes_stored: counter!(ENVELOPES_STORED, &[n()]),
            log_skipped_corrupt: counter!(LOG_SKIPPED, "node" => node.to_owned(), "reason" => "corrupt"),
            log_skipped_lost: counter!(LOG_SKIPPED, "node" => node.to_owned(), "reason" => "lost"),
            shards_owned: gauge!(SHARDS_OWNED, &[n()]),
            placement_epoch: gauge!(PLACEMENT_EPOCH, &[n()]),
            placement_digest: gauge!(PLACEMENT_DIGEST, &[n()]),
            roster_rounds: ROSTER_OPS.map(|op| {
                ROUND_OUTCOMES.map(|outcome| {
                    counter!(ROSTER_ROUNDS, "node" => node.to_owned(), "op" => op.as_str(),
                        "outcome" => outcome.as_str())
                })
            }),
            roster_round_seconds: ROSTER_OPS
                .map(|op| histogram!(ROSTER_ROUND_SECONDS, "node" => node.to_owned(), "op" => op.as_str())),
            roster_rows_unreadable: gauge!(ROSTER_ROWS_UNREADABLE, &[n()]),
            line_board_age: gauge!(LINE_BOARD_AGE, &[n()]),
            cluster_line_behind: gauge!(CLUSTER_LINE_BEHIND, &[n()]),
            demoted: gauge!(DEMOTED, &[n()]),
            handoffs_in: counter!(HANDOFFS, "node" => node.to_owned(), "direction" => "in"),
            handoffs_out: counter!(HANDOFFS, "node" => node.to_owned(), "direction" => "out"),
            lease_takes: TAKINGS.map(|how| {
                counter!(LEASE_TAKES, "node" => node.to_owned(), "how" => how.as_str())
            }),
            leases_fenced: counter!(LEASES_FENCED, &[n()]),
            tickets_rejected: TicketError::ALL.map(|why| {
                counter!(TICKETS_REJECTED, "node" => node.to_owned(), "reason" => why.reason())
            }),
            leases_held: gauge!(LEASES_HELD, &[n()]),
            batches_abandoned: counter!(BATCHES_ABANDONED, &[n()]),
            guests: gauge!(GUESTS, &[n()]),
            redirects: counter!(REDIRECTS, "node" => node.to_owned(), "kind" => "redirect"),
            moves: counter!(REDIRECTS, "node" => node.to_owned(), "kind" => "moved"),
        }
    }

    pub(crate) fn admitted(&self, class: RequestClass) {
        self.admitted[class as usize].increment(1);
    }

    pub(crate) fn shed(&self, class: RequestClass) {
        self.shed[class as usize].increment(1);
    }

    pub(crate) fn queue_wait(&self, wait: Duration) {
        self.queue_wait.record(wait.as_secs_f64());
    }

    /// How late the scheduler ran the lag probe.
    pub(crate) fn scheduling_lag(&self, lag: Duration) {
        self.scheduling_lag.record(lag.as_secs_f64());
    }

    /// The admission state after a window or tick.
    pub(crate) fn admission_state(&self, level: f64, line_length: u64, line_rate: f64) {
        self.level.set(level);
        self.line_length.set(line_length as f64);
        self.line_rate.set(line_rate);
    }

    pub(crate) fn queued(&self) {
        self.queued.increment(1);
    }

    /// The waiting line's wait for a newcomer joining now, and the load ratio.
    pub(crate) fn load(&self, line_wait: Duration, ratio: f64) {
        self.line_wait.set(line_wait.as_secs_f64());
        self.load_ratio.set(ratio);
    }

    pub(crate) fn ticket_rejected(&self, why: TicketError) {
        self.tickets_rejected[why as usize].increment(1);
    }

    pub(crate) fn delivery_lag(&self, records: u64) {
        self.delivery_lag.set(records as f64);
    }

    /// The smoothed durable-write latency and the limit it is judged against.
    pub(crate) fn backend_latency(&self, smoothed: Duration, limit: Duration) {
        self.backend_latency.set(smoothed.as_secs_f64());
        self.backend_latency_limit.set(limit.as_secs_f64());
    }

    pub(crate) fn connections(&self, open: usize) {
        self.connections.set(open as f64);
    }

    /// The door's running totals of connection attempts dropped (all, and those while the
    /// handshake budget was spent) and let through on a pass, and the share of attempts the
    /// kernel passes to it.
    pub(crate) fn door(&self, dropped: (u64, u64), passed: u64, kernel_share: f64) {
        self.dropped_at_door.absolute(dropped.0);
        self.dropped_budget_spent.absolute(dropped.1);
        self.passed_at_door.absolute(passed);
        self.door_kernel_share.set(kernel_share);
    }

    /// An envelope made durable and acknowledged, `took` after its `Send` arrived.
    pub(crate) fn envelope_accepted(&self, took: Duration) {
        self.envelopes_accepted.increment(1);
        self.send_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn envelopes_stored(&self, n: usize) {
        self.envelopes_stored.increment(n as u64);
    }

    /// The delivery consumer's running totals of records stepped over.
    pub(crate) fn log_skipped(&self, skipped: levee_queue::Skipped) {
        self.log_skipped_corrupt.absolute(skipped.corrupt);
        self.log_skipped_lost.absolute(skipped.lost);
    }

    /// The node's placement after a change: what it owns now, and what moved in and out.
    pub(crate) fn placement(
        &self,
        epoch: u64,
        owned: usize,
        gained: usize,
        lost: usize,
        digest: u64,
    ) {
        self.shards_owned.set(owned as f64);
        self.placement_epoch.set(epoch as f64);
        self.placement_digest.set(digest as f64);
        self.handoffs_in.increment(gained as u64);
        self.handoffs_out.increment(lost as u64);
    }

    /// One membership round: what it was, how it ended, how long it took.
    pub(crate) fn roster_round(&self, op: RosterOp, outcome: RoundOutcome, took: Duration) {
        self.roster_rounds[op as usize][outcome as usize].increment(1);
        self.roster_round_seconds[op as usize].record(took.as_secs_f64());
    }

    /// The cluster's line as this node sees it (see `admission::ClusterLineGauges`).
    pub(crate) fn cluster_line(&self, board_age: Option<Duration>, behind: Duration) {
        self.line_board_age
            .set(board_age.map_or(f64::INFINITY, |age| age.as_secs_f64()));
        self.cluster_line_behind.set(behind.as_secs_f64());
    }

    /// Whether the node has demoted itself.
    pub(crate) fn demoted(&self, demoted: bool) {
        self.demoted.set(if demoted { 1.0 } else { 0.0 });
    }

    /// Rows left out of the roster's last read.
    pub(crate) fn roster_rows_unreadable(&self, rows: u64) {
        self.roster_rows_unreadable.set(rows as f64);
    }

    /// A shard lease taken.
    pub(crate) fn lease_taken(&self, how: Taking) {
        self.lease_takes[how as usize].increment(1);
    }

    /// A shard lease found taken by a later holder at commit.
    pub(crate) fn lease_fenced(&self) {
        self.leases_fenced.increment(1);
    }

    /// How many shard leases the node holds.
    pub(crate) fn leases_held(&self, n: usize) {
        self.leases_held.set(n as f64);
    }

    /// A delivery batch dropped unstored: the node's tenure ran out.
    pub(crate) fn batch_abandoned(&self) {
        self.batches_abandoned.increment(1);
    }

    /// Guest sessions open now.
    pub(crate) fn guests(&self, open: usize) {
        self.guests.set(open as f64);
    }

    /// A client said it cannot reach `owner`. Rare, so the series is looked up per call.
    pub(crate) fn unreachable_reported(&self, owner: &str) {
        counter!(UNREACHABLE_REPORTS, "node" => self.node.clone(), "owner" => owner.to_owned())
            .increment(1);
    }

    /// A client sent to another node at login.
    pub(crate) fn redirected(&self) {
        self.redirects.increment(1);
    }

    /// A session told mid-way that its mailbox moved.
    pub(crate) fn moved(&self) {
        self.moves.increment(1);
    }
}
