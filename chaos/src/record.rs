//! What a drill recorded: the timeline, the events on it, the verdicts. This is the JSON a
//! drill writes and the input of the HTML report; nothing here does I/O.

use serde::{Deserialize, Serialize};

/// One drill: one run, or two with `--compare` (admission on, then off).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DrillRecord {
    /// The scenario's name (`mass-migration`).
    pub scenario: String,
    /// The scenario's one-paragraph description.
    pub description: String,
    /// Where the drill ran (`embedded local cluster, 3 nodes`).
    pub target: String,
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// The command that reproduces it.
    pub command: String,
    /// One per run.
    pub runs: Vec<RunRecord>,
}

impl DrillRecord {
    /// Whether every verdict of every run passed.
    pub fn passed(&self) -> bool {
        self.runs.iter().all(|r| r.verdicts.iter().all(|v| v.pass))
    }
}

/// One run of the scenario against one cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRecord {
    /// `admission on` or `admission off`.
    pub label: String,
    /// Whether admission control was on.
    pub admission: bool,
    /// One entry per second of the run, from 0.
    pub seconds: Vec<Second>,
    /// Phase changes, faults, nodes going down and up, on the same time axis.
    pub events: Vec<Event>,
    /// Totals over the run.
    pub summary: Summary,
    /// The invariants and thresholds, checked.
    pub verdicts: Vec<Verdict>,
    /// Each live node's placement (epoch, digest, shards owned), read once a second and
    /// once more when the cluster settled: the evidence behind a placement failure.
    #[serde(default)]
    pub placement: Vec<crate::placement::NodePlacement>,
    /// The autoscaler's decisions, once a period (autoscaled scenarios only).
    #[serde(default)]
    pub autoscale: Vec<ScalePoint>,
    /// The nodes the autoscaler drained, and how long each took.
    #[serde(default)]
    pub drained: Vec<Drained>,
}

/// What happened in one second of a run (counts are of things that *ended* in it, except
/// `offered`, which counts what started).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the run started.
    pub t: u32,
    /// The scenario phase (`baseline`, `ramp`, `hold`, `decay`, `drain`).
    pub phase: String,
    /// Established users' sends (class 1).
    pub messaging: ClassSecond,
    /// Established users logging in again after losing their node (class 2).
    pub login: ClassSecond,
    /// Newcomers' registrations (class 3): `ok` = admitted (account created), `shed` = a
    /// place in line handed out (a ticket), `failed` = hard errors.
    pub registration: ClassSecond,
    /// Connection attempts the cluster refused (busy) in this second.
    pub refused_connections: u64,
    /// People holding a ticket and not yet admitted, at the end of the second.
    pub waiting: u64,
    /// The longest estimated wait a ticket handed out in this second carried, in ms.
    pub estimated_wait_ms: u64,
    /// Lowest admission level over the nodes (1 = everything admitted), if scraped.
    pub admission_level: Option<f64>,
    /// Relay nodes up at the end of the second.
    pub nodes_up: u32,
}

/// One request class in one second.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClassSecond {
    /// Requests started.
    pub offered: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests deferred by admission control (a ticket, or RATE_LIMITED and retried).
    pub shed: u64,
    /// Requests that failed for good.
    pub failed: u64,
    /// Latency percentiles of the requests that ended in this second, ms (for messaging:
    /// send → push to the recipient; for registrations: first attempt → account).
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// 99.9th percentile, ms.
    pub p999_ms: Option<f64>,
}

/// Something that happened at a moment of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Seconds since the run started.
    pub at_s: f64,
    /// What kind of thing.
    pub kind: EventKind,
    /// For people: `node-2 killed`, `wave: hold`.
    pub label: String,
}

/// Kinds of [`Event`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A scenario phase began.
    Phase,
    /// A fault was injected.
    Fault,
    /// A node went down.
    NodeDown,
    /// A node came (back) up.
    NodeUp,
}

/// Totals over a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Sends acknowledged to established users.
    pub sends_acked: u64,
    /// Sends that failed for good.
    pub sends_failed: u64,
    /// Acknowledged envelopes delivered to their recipients.
    pub delivered: u64,
    /// Acknowledged envelopes never delivered.
    pub lost: u64,
    /// Deliveries of an envelope after its recipient had acknowledged it.
    pub duplicates_after_ack: u64,
    /// Existing users' send success rate before the wave.
    pub send_success_before: f64,
    /// ... and during it (wave start to the end of the decay).
    pub send_success_during: f64,
    /// Message latency before the wave, ms: p50, p99, p999.
    pub latency_before_ms: [f64; 3],
    /// ... and during it.
    pub latency_during_ms: [f64; 3],
    /// Newcomers who arrived.
    pub registrations_offered: u64,
    /// ... who now have an account.
    pub registrations_admitted: u64,
    /// ... who hold a valid ticket at the end.
    pub registrations_waiting: u64,
    /// ... who were still refused at the door at the end (never got as far as a ticket).
    pub registrations_refused_at_end: u64,
    /// ... whose attempt ended in an error a person would see.
    pub registrations_hard_errors: u64,
    /// Requests the cluster saw per admitted registration (connection attempts refused,
    /// registration requests).
    pub requests_per_admitted: f64,
    /// Admissions that overtook someone who had an earlier place in line at the same node.
    pub overtakes: u64,
    /// Newcomers told to stay away while a later place got in (`ledger::kept_away`;
    /// judged only by a scenario's `kept_away_max`). Absent from reports written before it
    /// was counted.
    #[serde(default)]
    pub kept_away: u64,
}

/// One invariant or threshold, checked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// What was checked (`every acknowledged envelope delivered`).
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// The numbers behind it (`12,345 of 12,345`).
    pub detail: String,
}

/// One autoscaler period, for the report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScalePoint {
    /// Seconds into the run.
    pub t: f64,
    /// Nodes running when the decision was taken.
    pub nodes: u32,
    /// The mean `levee_load_ratio` over the nodes that answered.
    pub ratio: f64,
    /// The mean `levee_waiting_room_estimated_wait_seconds` (what a newcomer joining the
    /// line now would wait) over the nodes that answered.
    pub wait_s: f64,
    /// What the autoscaler decided.
    pub desired: u32,
}

/// A node the autoscaler drained, for the report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Drained {
    /// When the drain was asked for, s into the run.
    pub t: f64,
    /// The node.
    pub name: String,
    /// How long until it had left, s; `None` if it failed.
    pub took_s: Option<f64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}
