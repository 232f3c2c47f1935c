//! Metrics: every name, its help text and unit, in one place; Prometheus text exposition.
//!
//! Labels never carry an address, an account id or content.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::admission::RequestClass;

const ADMITTED: &str = "levee_admission_admitted_total";
const SHED: &str = "levee_admission_shed_total";
const LEVEL: &str = "levee_admission_level";
const QUEUE_WAIT: &str = "levee_queue_wait_seconds";
const SCHEDULING_LAG: &str = "levee_scheduling_lag_seconds";
const LINE_LENGTH: &str = "levee_waiting_room_length";
const LINE_RATE: &str = "levee_waiting_room_admission_rate";
const LINE_WAIT: &str = "levee_waiting_room_estimated_wait_seconds";
const QUEUED: &str = "levee_registrations_queued_total";
const TICKETS_REJECTED: &str = "levee_tickets_rejected_total";
const CONNECTIONS: &str = "levee_connections";
const BACKEND_LATENCY: &str = "levee_backend_write_latency_seconds";
const DELIVERY_LAG: &str = "levee_delivery_lag_records";
const ENVELOPES_ACCEPTED: &str = "levee_envelopes_accepted_total";
const ENVELOPES_STORED: &str = "levee_envelopes_stored_total";
const SHARDS_OWNED: &str = "levee_shards_owned";
const PLACEMENT_EPOCH: &str = "levee_placement_epoch";
const REDIRECTS: &str = "levee_redirects_total";
const HANDOFFS: &str = "levee_shard_handoffs_total";

/// Queue-wait buckets: dense around the 5 ms / 20 ms admission thresholds, up to the
/// seconds a badly overloaded node shows.
const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle; `None` if the
/// embedding program installed another recorder first (then Levee's metrics go there).
pub(crate) fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), QUEUE_WAIT_BUCKETS)
                .ok()?
                .set_buckets_for_metric(Matcher::Full(SCHEDULING_LAG.into()), QUEUE_WAIT_BUCKETS)
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
        "Estimated wait of the last place handed out"
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
    describe_counter!(
        ENVELOPES_ACCEPTED,
        Unit::Count,
        "Envelopes made durable in the delivery log and acknowledged to senders"
    );
    describe_counter!(
        ENVELOPES_STORED,
        Unit::Count,
        "Envelopes moved from the delivery log into mailboxes"
    );
}

fn class_label(class: RequestClass) -> &'static str {
    match class {
        RequestClass::Control => "control",
        RequestClass::Messaging => "messaging",
        RequestClass::Login => "login",
        RequestClass::Registration => "registration",
    }
}

pub(crate) fn admitted(class: RequestClass) {
    counter!(ADMITTED, "class" => class_label(class)).increment(1);
}

pub(crate) fn shed(class: RequestClass) {
    counter!(SHED, "class" => class_label(class)).increment(1);
}

pub(crate) fn queue_wait(wait: Duration) {
    histogram!(QUEUE_WAIT).record(wait.as_secs_f64());
}

/// How late the scheduler ran the lag probe.
pub(crate) fn scheduling_lag(lag: Duration) {
    histogram!(SCHEDULING_LAG).record(lag.as_secs_f64());
}

/// The admission state after a window or tick.
pub(crate) fn admission_state(level: f64, line_length: u64, line_rate: f64) {
    gauge!(LEVEL).set(level);
    gauge!(LINE_LENGTH).set(line_length as f64);
    gauge!(LINE_RATE).set(line_rate);
}

pub(crate) fn queued(estimated_wait: Duration) {
    counter!(QUEUED).increment(1);
    gauge!(LINE_WAIT).set(estimated_wait.as_secs_f64());
}

pub(crate) fn ticket_rejected(reason: &'static str) {
    counter!(TICKETS_REJECTED, "reason" => reason).increment(1);
}

pub(crate) fn delivery_lag(records: u64) {
    gauge!(DELIVERY_LAG).set(records as f64);
}

pub(crate) fn backend_latency(seconds: f64) {
    gauge!(BACKEND_LATENCY).set(seconds);
}

pub(crate) fn connections(open: usize) {
    gauge!(CONNECTIONS).set(open as f64);
}

pub(crate) fn envelope_accepted() {
    counter!(ENVELOPES_ACCEPTED).increment(1);
}

pub(crate) fn envelopes_stored(n: usize) {
    counter!(ENVELOPES_STORED).increment(n as u64);
}

/// The node's placement after a change: what it owns now, and what moved in and out.
pub(crate) fn placement(node: &str, epoch: u64, owned: usize, gained: usize, lost: usize) {
    let node = node.to_owned();
    gauge!(SHARDS_OWNED, "node" => node.clone()).set(owned as f64);
    gauge!(PLACEMENT_EPOCH, "node" => node.clone()).set(epoch as f64);
    counter!(HANDOFFS, "node" => node.clone(), "direction" => "in").increment(gained as u64);
    counter!(HANDOFFS, "node" => node, "direction" => "out").increment(lost as u64);
}

/// A client sent elsewhere: `kind` is "redirect" (at login) or "moved" (mid-session).
pub(crate) fn redirected(node: &str, kind: &'static str) {
    counter!(REDIRECTS, "node" => node.to_owned(), "kind" => kind).increment(1);
}
