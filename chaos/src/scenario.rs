//! Scenarios: what a drill plays, read from `chaos/scenarios/NAME.toml`.
//!
//! Every field is documented here and in the shipped files; unknown fields are errors, so
//! a typo never silently changes a drill. Pure: parsing, validation and the wave's shape.

use std::path::Path;

use serde::Deserialize;

/// A drill scenario; see `chaos/scenarios/mass-migration.toml` for an annotated example.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, also the file's stem (`mass-migration`).
    pub name: String,
    /// One paragraph for the report: what this rehearses.
    pub description: String,
    /// Seconds of play: established users message throughout; the wave and the faults
    /// happen inside this window.
    pub duration_s: f64,
    /// Seconds after play in which nothing new is offered: those in line may finish and
    /// the last envelopes land. The ledger is checked at the end of it.
    #[serde(default = "default_drain")]
    pub drain_s: f64,
    /// The cluster the drill starts.
    #[serde(default)]
    pub cluster: ClusterShape,
    /// Who is already there, and how they message.
    pub population: Population,
    /// The signup wave, if any.
    pub wave: Option<Wave>,
    /// Faults, in any order.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// What must hold for the drill to pass, beyond the invariants that always must.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// The drill plays the autoscaler (see [`crate::autoscale`]), if given.
    pub autoscale: Option<crate::autoscale::Autoscale>,
}

fn default_drain() -> f64 {
    20.0
}

/// The embedded local cluster the drill starts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterShape {
    /// Relay nodes.
    pub nodes: u32,
    /// Shards (a power of two; fewer than production's 256 keeps a small drill quick).
    pub shards: u32,
    /// Each node's `registration_max_per_s` (0: no ceiling). The embedded cluster's nodes
    /// share one machine's CPU, so adding one adds no capacity of its own; a ceiling per
    /// node gives each the fixed registration capacity a node of its own would have, which
    /// is what an autoscaling drill needs.
    pub registration_max_per_s: f64,
    /// `registration_max_per_s` per node, in the order nodes start (the embedded cluster,
    /// and `chaos/distributed.sh`'s node processes); nodes past the list keep
    /// `registration_max_per_s`. Nodes of unequal speed
    /// are what tells one line for the cluster from a line per node.
    pub registration_max_per_s_by_node: Vec<f64>,
    /// Each node's `load_target_wait_s`.
    pub load_target_wait_s: f64,
    /// Each node's `registration_hold_ms` (default: the node's default). 0 answers every
    /// newcomer who must wait with its ticket at once, so the drill sees every place.
    pub registration_hold_ms: Option<u64>,
    /// Whether the nodes keep one registration line for the cluster (`false`: each
    /// node's line on its own, `registration_line_sync_ms = 0`), for comparison.
    pub one_line: bool,
}

impl Default for ClusterShape {
    fn default() -> Self {
        Self {
            nodes: 3,
            shards: 64,
            registration_max_per_s: 0.0,
            registration_max_per_s_by_node: Vec::new(),
            load_target_wait_s: 30.0,
            registration_hold_ms: None,
            one_line: true,
        }
    }
}

/// The established users.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Population {
    /// How many, registered before play starts.
    pub established: u32,
    /// Each one's contacts (other established users, chosen at random, fixed for the run).
    #[serde(default = "default_contacts")]
    pub contacts: u32,
    /// Each established user sends one message to one of their contacts every this many
    /// seconds (open loop: a slow answer does not slow the next send).
    pub send_interval_s: f64,
    /// Messages each newly admitted user sends to established users right away, one per
    /// `send_interval_s`: load grows as the line advances.
    #[serde(default = "default_newcomer_messages")]
    pub newcomer_messages: u32,
}

fn default_contacts() -> u32 {
    5
}

fn default_newcomer_messages() -> u32 {
    3
}

/// A signup wave shaped like an exodus: normal, a ramp to the peak, a hold, a decay.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// When the ramp starts (s from the start of play).
    pub start_s: f64,
    /// Seconds from the normal rate to the peak.
    pub ramp_s: f64,
    /// Seconds at the peak.
    pub hold_s: f64,
    /// Seconds from the peak back to normal (exponential decay).
    pub decay_s: f64,
    /// Registrations per second before and after: the normal rate.
    pub base_per_s: f64,
    /// What the cluster can register per second on the machine at hand (measure it with
    /// `levee-surge`); the peak is stated relative to it.
    pub capacity_per_s: f64,
    /// The peak, as a multiple of `capacity_per_s` (50 in the headline drill).
    pub peak_multiplier: f64,
    /// Newcomers in progress at once on the drill's side; arrivals past it are counted as
    /// "not offered" rather than swamping the machine that runs the drill.
    #[serde(default = "default_in_progress")]
    pub max_in_progress: u32,
    /// Share of newcomers (0..=1) whose app ignores `retry_after` and asks again every
    /// `storm_retry_ms` while in line — a retry storm; the rest use the reference client's
    /// behaviour (come back when told, with jitter).
    #[serde(default)]
    pub ignore_retry_after: f64,
    /// How soon a client that ignores `retry_after` asks again, ms.
    #[serde(default = "default_storm_retry_ms")]
    pub storm_retry_ms: u64,
}

fn default_storm_retry_ms() -> u64 {
    100
}

fn default_in_progress() -> u32 {
    4_000
}

/// Where a wave is at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before the wave.
    Baseline,
    /// Rising to the peak.
    Ramp,
    /// At the peak.
    Hold,
    /// Falling back.
    Decay,
    /// After the wave, until play ends.
    After,
    /// Play is over; the line finishes and the last envelopes land.
    Drain,
}

impl Phase {
    /// Lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::Ramp => "ramp",
            Phase::Hold => "hold",
            Phase::Decay => "decay",
            Phase::After => "after",
            Phase::Drain => "drain",
        }
    }
}

impl Wave {
    /// The peak arrival rate, per second.
    pub fn peak_per_s(&self) -> f64 {
        self.capacity_per_s * self.peak_multiplier
    }

    /// The phase at `t` seconds into play.
    pub fn phase(&self, t: f64) -> Phase {
        let ramp_end = self.start_s + self.ramp_s;
        let hold_end = ramp_end + self.hold_s;
        if t < self.start_s {
            Phase::Baseline
        } else if t < ramp_end {
            Phase::Ramp
        } else if t < hold_end {
            Phase::Hold
        } else if t < hold_end + self.decay_s {
            Phase::Decay
        } else {
            Phase::After
        }
    }

    /// Registrations offered per second at `t` seconds into play: the base rate, a linear
    /// ramp to the peak, the peak, then an exponential decay that reaches within 1% of the
    /// base rate at the end of `decay_s` — an exodus tails off, it does not stop dead.
    pub fn rate_at(&self, t: f64) -> f64 {
        let (base, peak) = (self.base_per_s, self.peak_per_s().max(self.base_per_s));
        let hold_end = self.start_s + self.ramp_s + self.hold_s;
        match self.phase(t) {
            Phase::Baseline | Phase::After | Phase::Drain => base,
            Phase::Ramp => base + (peak - base) * (t - self.start_s) / self.ramp_s,
            Phase::Hold => peak,
            Phase::Decay => {
                // e^(−k·decay_s) = 1% ⇒ k = ln(100) / decay_s.
                let k = 100f64.ln() / self.decay_s;
                base + (peak - base) * (-(k * (t - hold_end))).exp()
            }
        }
    }

    /// When the wave is over (the end of the decay), s into play.
    pub fn end_s(&self) -> f64 {
        self.start_s + self.ramp_s + self.hold_s + self.decay_s
    }
}

/// A fault injected at a moment of play: `at_s`, `kind` and the kind's fields.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "RawFault")]
pub struct Fault {
    /// When (s from the start of play).
    pub at_s: f64,
    /// What.
    pub action: FaultAction,
}

/// What a [`Fault`] does.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultAction {
    /// `kind = "kill_node"`, `node = N`: kill the N-th node started (1-based) abruptly, as
    /// a crash would: no handover, no goodbye; the others time it out.
    KillNode {
        /// Which node, in start order (1 = the first).
        node: u32,
    },
    /// `kind = "start_node"`: start a node (a restart after a kill: a fresh node joins;
    /// names are not reused).
    StartNode,
    /// `kind = "stall_backend"`, `for_s = D`, optional `node = N` (all nodes when left out)
    /// and `backend = "store" | "log" | "all" | "roster" | "database"` (default all: store
    /// and log): for D seconds, the node's calls to those backends wait, as when the
    /// database or the log stops answering. `roster` holds only the node's roster reads
    /// (its view cannot be refreshed, its heartbeats go on); `database` holds the store and
    /// every roster call (the node loses the database, not its clients or the log).
    /// Through the nodes' fault-injection admin endpoint.
    StallBackend {
        /// Which node (1-based, start order), or all.
        node: Option<u32>,
        /// `store`, `log`, `all`, `roster` or `database`.
        backend: String,
        /// For how long, s.
        for_s: f64,
    },
    /// `kind = "pause_node"`, `node = N`, `for_s = D`: stop node N's process (SIGSTOP)
    /// for D seconds and let it go on (SIGCONT), as a long GC pause or a frozen VM would:
    /// the others give it up and take its shards, and it wakes up a zombie that still
    /// believes in its old view. `levee node` processes only (through the admin API).
    PauseNode {
        /// Which node (1-based, start order).
        node: u32,
        /// For how long, s.
        for_s: f64,
    },
    /// `kind = "partition"`, `node = N`, `for_s = D`: cut node N off from its clients for
    /// D seconds (every datagram dropped both ways by the drill's proxy); the node stays
    /// in touch with the rest of the cluster.
    Partition {
        /// Which node (1-based, start order).
        node: u32,
        /// For how long, s.
        for_s: f64,
    },
}

impl FaultAction {
    /// Short label for the report's time axis.
    pub fn label(&self) -> String {
        match self {
            FaultAction::KillNode { node } => format!("kill node-{node}"),
            FaultAction::StartNode => "start a node".into(),
            FaultAction::StallBackend {
                node,
                backend,
                for_s,
            } => {
                let on = node.map_or_else(|| "every node".to_owned(), |n| format!("node-{n}"));
                format!("stall {backend} on {on} for {for_s} s")
            }
            FaultAction::Partition { node, for_s } => {
                format!("cut node-{node} off from clients for {for_s} s")
            }
            FaultAction::PauseNode { node, for_s } => {
                format!("pause node-{node} for {for_s} s")
            }
        }
    }
}

/// A fault as written in the file. Flat, so that unknown fields are refused (serde cannot
/// refuse them through `flatten`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at_s: f64,
    kind: String,
    node: Option<u32>,
    for_s: Option<f64>,
    backend: Option<String>,
}

impl TryFrom<RawFault> for Fault {
    type Error = String;

    fn try_from(raw: RawFault) -> Result<Self, String> {
        let kind = raw.kind.as_str();
        let lasting = matches!(kind, "stall_backend" | "partition" | "pause_node");
        if lasting != raw.for_s.is_some() {
            return Err(if lasting {
                format!("{kind} needs `for_s` (how long, s)")
            } else {
                format!("{kind} takes no `for_s`")
            });
        }
        if raw.backend.is_some() && kind != "stall_backend" {
            return Err(format!("{kind} takes no `backend`"));
        }
        let for_s = raw.for_s.unwrap_or_default();
        if lasting && !(for_s > 0.0 && for_s <= 300.0) {
            return Err(format!("{kind}: for_s must be more than 0 and at most 300"));
        }
        let action = match (kind, raw.node) {
            ("kill_node", Some(node)) => FaultAction::KillNode { node },
            ("kill_node" | "partition" | "pause_node", None) => {
                return Err(format!("{kind} needs `node`"));
            }
            ("pause_node", Some(node)) => FaultAction::PauseNode { node, for_s },
            ("start_node", None) => FaultAction::StartNode,
            ("start_node", Some(_)) => return Err("start_node takes no `node`".into()),
            ("partition", Some(node)) => FaultAction::Partition { node, for_s },
            ("stall_backend", node) => {
                let backend = raw.backend.unwrap_or_else(|| "all".into());
                if !matches!(
                    backend.as_str(),
                    "store" | "log" | "all" | "roster" | "database"
                ) {
                    return Err(format!(
                        "unknown backend {backend:?}: store, log, all, roster or database"
                    ));
                }
                FaultAction::StallBackend {
                    node,
                    backend,
                    for_s,
                }
            }
            (other, _) => {
                return Err(format!(
                    "unknown fault kind {other:?}: kill_node, start_node, stall_backend, \
                     partition or pause_node"
                ));
            }
        };
        Ok(Fault {
            at_s: raw.at_s,
            action,
        })
    }
}

/// Pass thresholds beyond the invariants (which always apply: nothing acknowledged lost,
/// nothing delivered again after its acknowledgement, no registration ending in a hard
/// error, every newcomer with an account or a valid ticket, no overtaking in line).
/// A threshold left out is reported but not enforced.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Least share of existing users' sends that succeed during the wave (0.999).
    pub send_success_min: Option<f64>,
    /// Greatest message p99 during the wave as a multiple of the p99 before it (1.25).
    pub p99_ratio_max: Option<f64>,
    /// Greatest number of requests the cluster sees per admitted registration (2).
    pub requests_per_admitted_max: Option<f64>,
    /// Least registrations admitted per second during the wave, as a share of
    /// `wave.capacity_per_s` (0.9).
    pub goodput_min: Option<f64>,
    /// Greatest share of admitted registrations kept away while a later place got in
    /// (`ledger::kept_away`): what tells one line for the cluster from a line per node.
    pub kept_away_max: Option<f64>,
}

/// Why a scenario cannot be played.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a scenario.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// It parses but makes no sense.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ScenarioError::Parse { message, .. } => ScenarioError::Parse {
                path: shown.clone(),
                message,
            },
            ScenarioError::Invalid { message, .. } => ScenarioError::Invalid {
                path: shown.clone(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: "scenario".into(),
            message: e.to_string(),
        })?;
        scenario
            .validate()
            .map_err(|message| ScenarioError::Invalid {
                path: "scenario".into(),
                message,
            })?;
        Ok(scenario)
    }

    /// Checks what the types cannot.
    fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, not {v}"))
            }
        };
        positive("duration_s", self.duration_s)?;
        if !(self.drain_s.is_finite() && self.drain_s >= 0.0) {
            return Err(format!("drain_s must be ≥ 0, not {}", self.drain_s));
        }
        if self.cluster.nodes == 0 {
            return Err("cluster.nodes must be at least 1".into());
        }
        if !self.cluster.shards.is_power_of_two() {
            return Err(format!(
                "cluster.shards must be a power of two, not {}",
                self.cluster.shards
            ));
        }
        if self.population.established < 2 {
            return Err(
                "population.established must be at least 2 (they message each other)".into(),
            );
        }
        if self.population.contacts == 0 || self.population.contacts >= self.population.established
        {
            return Err(format!(
                "population.contacts must be between 1 and established − 1 ({}), not {}",
                self.population.established - 1,
                self.population.contacts
            ));
        }
        positive(
            "population.send_interval_s",
            self.population.send_interval_s,
        )?;
        if let Some(w) = &self.wave {
            for (name, v) in [
                ("wave.ramp_s", w.ramp_s),
                ("wave.hold_s", w.hold_s),
                ("wave.decay_s", w.decay_s),
                ("wave.capacity_per_s", w.capacity_per_s),
                ("wave.peak_multiplier", w.peak_multiplier),
            ] {
                positive(name, v)?;
            }
            if !(w.start_s >= 0.0 && w.base_per_s >= 0.0) {
                return Err("wave.start_s and wave.base_per_s must be ≥ 0".into());
            }
            if w.end_s() > self.duration_s {
                return Err(format!(
                    "the wave ends at {} s, after play ends (duration_s = {})",
                    w.end_s(),
                    self.duration_s
                ));
            }
            if !(0.0..=1.0).contains(&w.ignore_retry_after) {
                return Err(format!(
                    "wave.ignore_retry_after is a share between 0 and 1, not {}",
                    w.ignore_retry_after
                ));
            }
            if w.max_in_progress == 0 {
                return Err("wave.max_in_progress must be at least 1".into());
            }
        }
        if let Some(a) = &self.autoscale {
            a.validate(self.cluster.nodes)?;
        }
        let mut started = self.cluster.nodes;
        let mut faults: Vec<&Fault> = self.faults.iter().collect();
        faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        for f in faults {
            if !(f.at_s >= 0.0 && f.at_s <= self.duration_s) {
                return Err(format!(
                    "a fault at {} s is outside play (0..{} s)",
                    f.at_s, self.duration_s
                ));
            }
            let node = match &f.action {
                FaultAction::KillNode { node }
                | FaultAction::Partition { node, .. }
                | FaultAction::PauseNode { node, .. } => Some(*node),
                FaultAction::StallBackend { node, .. } => *node,
                FaultAction::StartNode => {
                    started += 1;
                    None
                }
            };
            if let Some(node) = node
                && (node == 0 || node > started)
            {
                return Err(format!(
                    "{} at {} s: only nodes 1..{started} have been started by then",
                    f.action.label(),
                    f.at_s
                ));
            }
        }
        Ok(())
    }

    /// The phase at `t` seconds into the run (play, then drain).
    pub fn phase(&self, t: f64) -> Phase {
        if t >= self.duration_s {
            return Phase::Drain;
        }
        self.wave.as_ref().map_or(Phase::Baseline, |w| w.phase(t))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn wave() -> Wave {
        Wave {
            start_s: 10.0,
            ramp_s: 10.0,
            hold_s: 5.0,
            decay_s: 10.0,
            base_per_s: 2.0,
            capacity_per_s: 10.0,
            peak_multiplier: 50.0,
            max_in_progress: 100,
            ignore_retry_after: 0.0,
            storm_retry_ms: 100,
        }
    }

    const MINIMAL: &str = r#"
        name = "t"
        description = "d"
        duration_s = 40
        [population]
        established = 10
        send_interval_s = 1
    "#;

    #[test]
    fn the_wave_ramps_holds_and_decays_back_to_normal() {
        let w = wave();
        assert_eq!(w.rate_at(0.0), 2.0);
        assert_eq!(
            w.rate_at(15.0),
            2.0 + (500.0 - 2.0) / 2.0,
            "half way up the ramp"
        );
        assert_eq!(w.rate_at(22.0), 500.0);
        let (early, late) = (w.rate_at(26.0), w.rate_at(34.0));
        assert!(
            early < 500.0 && late < early && late > 2.0,
            "decays: {early}, {late}"
        );
        assert!(
            (w.rate_at(34.999) - 2.0) < 0.011 * 498.0 + 1e-9,
            "within 1% at the end"
        );
        assert_eq!(w.rate_at(50.0), 2.0);
        assert_eq!(w.phase(9.9), Phase::Baseline);
        assert_eq!(w.phase(10.0), Phase::Ramp);
        assert_eq!(w.phase(20.0), Phase::Hold);
        assert_eq!(w.phase(25.0), Phase::Decay);
        assert_eq!(w.phase(35.0), Phase::After);
    }

    #[test]
    fn the_shipped_scenarios_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap();
                assert_eq!(
                    Some(s.name.as_str()),
                    path.file_stem().and_then(|s| s.to_str()),
                    "a scenario's name is its file's stem"
                );
                seen += 1;
            }
        }
        assert!(
            seen >= 3,
            "mass-migration, its short form and node-loss ship"
        );
    }

    #[test]
    fn defaults_fill_in_and_unknown_fields_are_refused() {
        let s = Scenario::parse(MINIMAL).unwrap();
        assert_eq!(s.cluster, ClusterShape::default());
        assert_eq!(s.drain_s, 20.0);
        assert_eq!(s.population.contacts, 5);
        assert!(s.wave.is_none() && s.faults.is_empty());
        assert_eq!(s.phase(39.0), Phase::Baseline);
        assert_eq!(s.phase(40.0), Phase::Drain);
        let typo = format!("{MINIMAL}\nsend_intervall_s = 2");
        assert!(matches!(
            Scenario::parse(&typo),
            Err(ScenarioError::Parse { .. })
        ));
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        let cases = [
            (
                "[[faults]]\nat_s = 5\nkind = \"kill_node\"\nnode = 4",
                "only nodes 1..3",
            ),
            (
                "[[faults]]\nat_s = 50\nkind = \"start_node\"",
                "outside play",
            ),
            (
                "[wave]\nstart_s = 30\nramp_s = 10\nhold_s = 10\ndecay_s = 10\nbase_per_s = 1\ncapacity_per_s = 5\npeak_multiplier = 10",
                "after play ends",
            ),
            ("[cluster]\nshards = 100", "power of two"),
            (
                "[[faults]]\nat_s = 5\nkind = \"start_node\"\nnodes = 2",
                "unknown field",
            ),
            ("[[faults]]\nat_s = 5\nkind = \"kill_node\"", "needs `node`"),
            (
                "[[faults]]\nat_s = 5\nkind = \"partition\"\nfor_s = 3",
                "needs `node`",
            ),
            (
                "[[faults]]\nat_s = 5\nkind = \"partition\"\nnode = 1",
                "needs `for_s`",
            ),
            (
                "[[faults]]\nat_s = 5\nkind = \"kill_node\"\nnode = 1\nfor_s = 3",
                "takes no `for_s`",
            ),
            (
                "[[faults]]\nat_s = 5\nkind = \"stall_backend\"\nfor_s = 3\nbackend = \"disk\"",
                "unknown backend",
            ),
            (
                "[[faults]]\nat_s = 5\nkind = \"stall_backend\"\nfor_s = 0",
                "more than 0",
            ),
            (
                "[[faults]]\nat_s = 5\nkind = \"partition\"\nnode = 7\nfor_s = 3",
                "only nodes 1..3",
            ),
            (
                "[[faults]]\nat_s = 5\nkind = \"reboot\"",
                "unknown fault kind",
            ),
        ];
        for (extra, why) in cases {
            let text = format!("{MINIMAL}\n{extra}");
            let err = Scenario::parse(&text).unwrap_err().to_string();
            assert!(err.contains(why), "{extra:?}: {err}");
        }
        // A node started by a fault may be killed by a later one.
        let text = format!(
            "{MINIMAL}\n[[faults]]\nat_s = 1\nkind = \"start_node\"\n[[faults]]\nat_s = 2\nkind = \"kill_node\"\nnode = 4"
        );
        assert!(Scenario::parse(&text).is_ok());
        let text = format!(
            "{MINIMAL}\n[[faults]]\nat_s = 1\nkind = \"stall_backend\"\nfor_s = 5\n[[faults]]\nat_s = 2\nkind = \"stall_backend\"\nnode = 2\nbackend = \"store\"\nfor_s = 5"
        );
        let s = Scenario::parse(&text).unwrap();
        assert_eq!(
            s.faults[1].action,
            FaultAction::StallBackend {
                node: Some(2),
                backend: "store".into(),
                for_s: 5.0
            }
        );
        assert_eq!(
            s.faults[0].action.label(),
            "stall all on every node for 5 s"
        );
    }
}
