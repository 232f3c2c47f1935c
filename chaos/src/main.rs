//! `levee-chaos`: rehearse the day millions arrive at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use levee_chaos::cluster::TargetSpec;
use levee_chaos::drill::{self, Status, Watcher};
use levee_chaos::record::DrillRecord;
use levee_chaos::report;
use levee_chaos::scenario::Scenario;

#[derive(Parser, Debug)]
#[command(
    name = "levee-chaos",
    version,
    about = "Chaos drills for Levee: play a scenario against a cluster, inject faults, check the invariants, write a report",
    after_help = "Scenarios ship in chaos/scenarios/ (`levee-chaos list`); their fields are documented in the files and in chaos/src/scenario.rs.\nExit status: 0 every check passed, 1 a check failed, 2 usage error, 3 the drill could not run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Plays a scenario against an embedded local cluster the drill starts itself, or
    /// against a running cluster (--admin).
    Run {
        /// A scenario name from chaos/scenarios/ (`mass-migration`) or a path to a file.
        scenario: String,
        /// Run twice, admission control on and then off, into one report.
        #[arg(long, conflicts_with = "no_admission")]
        compare: bool,
        /// Run once with admission control off (to see what it prevents).
        #[arg(long)]
        no_admission: bool,
        /// Where the report goes (report.html and report.json); default
        /// target/chaos/SCENARIO-TIMESTAMP.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Play against a running cluster instead: its nodes' admin addresses, node 1
        /// first (comma-separated). Faults go through their admin API, which the nodes
        /// refuse unless configured with `fault_injection = true`.
        #[arg(
            long,
            value_name = "ADDR,...",
            value_delimiter = ',',
            conflicts_with_all = ["compare", "no_admission"]
        )]
        admin: Vec<SocketAddr>,
        /// The running cluster's admin token (when its nodes have one).
        #[arg(
            long,
            env = "LEVEE_ADMIN_TOKEN",
            value_name = "TOKEN",
            requires = "admin"
        )]
        token: Option<String>,
        /// The running cluster's key (64 hex digits, its nodes' `cluster_key`), to verify
        /// the tickets newcomers are handed. Required with --admin.
        #[arg(
            long,
            env = "LEVEE_CLUSTER_KEY",
            value_name = "HEX",
            requires = "admin"
        )]
        cluster_key: Option<String>,
        /// With --admin: a shell command that starts one more node process when the
        /// scenario says start_node (`{node}` is replaced by its number); it must print the
        /// node as `levee node` does. Without it, start_node asks a node's admin port,
        /// which only a `levee up` cluster can do.
        #[arg(long, value_name = "CMD", requires = "admin")]
        start_command: Option<String>,
    },
    /// Lists the scenarios that ship with Levee.
    List,
    /// Renders a drill's report.json again as HTML (next to it, as report.html).
    Render {
        /// The report.json a drill wrote.
        json: PathBuf,
    },
}

/// Where the shipped scenarios are.
fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn find(scenario: &str) -> PathBuf {
    let as_path = PathBuf::from(scenario);
    if as_path.is_file() {
        return as_path;
    }
    scenarios_dir().join(format!("{scenario}.toml"))
}

/// The progress bar: phase, what was offered and admitted, the current p99.
struct Bar(ProgressBar);

impl Watcher for Bar {
    fn tick(&self, s: &Status) {
        self.0.set_length(s.total.ceil() as u64);
        self.0.set_position(s.t.floor() as u64);
        let p99 = s
            .p99_ms
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.0} ms"));
        self.0.set_message(format!(
            "{:<8} sends {} ok / {} failed · signups {} offered, {} admitted, {} in line · msg p99 {p99}",
            s.phase, s.sent, s.send_failures, s.offered, s.admitted, s.waiting
        ));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::List => match list() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("levee-chaos: {e:#}");
                ExitCode::from(3)
            }
        },
        Command::Render { json } => match render(&json) {
            Ok(html) => {
                println!("{}", html.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("levee-chaos: {e:#}");
                ExitCode::from(3)
            }
        },
        Command::Run {
            scenario,
            compare,
            no_admission,
            out,
            quiet,
            admin,
            token,
            cluster_key,
            start_command,
        } => {
            let scenario = match Scenario::load(&find(&scenario)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("levee-chaos: {e}\n(scenarios: levee-chaos list)");
                    return ExitCode::from(2);
                }
            };
            let target = if admin.is_empty() {
                TargetSpec::Embedded
            } else {
                let Some(cluster_key) = cluster_key else {
                    eprintln!(
                        "levee-chaos: --admin needs --cluster-key (or LEVEE_CLUSTER_KEY): \
                         tickets are checked with it"
                    );
                    return ExitCode::from(2);
                };
                TargetSpec::Remote {
                    admins: admin,
                    token,
                    cluster_key,
                    start_command,
                }
            };
            let modes = if compare {
                vec![true, false]
            } else {
                vec![!no_admission]
            };
            match play(&scenario, &target, &modes, out, quiet) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("levee-chaos: {e:#}");
                    ExitCode::from(3)
                }
            }
        }
    }
}

fn render(json: &Path) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let record: DrillRecord = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a drill record", json.display()))?;
    let html = json.with_file_name("report.html");
    std::fs::write(&html, report::html(&record))
        .with_context(|| format!("writing {}", html.display()))?;
    Ok(html)
}

fn list() -> anyhow::Result<()> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        let s = Scenario::load(&p)?;
        let first = s.description.split(". ").next().unwrap_or_default();
        println!("{:<24} {first}.", s.name);
    }
    Ok(())
}

/// Runs the drill once per mode, writes the report, prints the verdicts; whether all passed.
fn play(
    scenario: &Scenario,
    target: &TargetSpec,
    modes: &[bool],
    out: Option<PathBuf>,
    quiet: bool,
) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let started_at = levee_chaos::rfc3339_now();
    let mut record = DrillRecord {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        target: target.describe(scenario),
        started_at: started_at.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        runs: Vec::new(),
    };
    for &admission in modes {
        let bar = (!quiet).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos:>3}/{len} s  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(if admission {
                "admission on"
            } else {
                "admission off"
            });
            Arc::new(Bar(bar))
        });
        let watcher = bar.clone().map(|b| b as Arc<dyn Watcher>);
        let run = runtime.block_on(drill::run(scenario, target, admission, watcher))?;
        if let Some(b) = bar {
            b.0.finish_and_clear();
        }
        println!("{} — {}", scenario.name, run.label);
        for v in &run.verdicts {
            println!(
                "  {} {}: {}",
                if v.pass { "PASS" } else { "FAIL" },
                v.name,
                v.detail
            );
        }
        record.runs.push(run);
    }
    let dir = out.unwrap_or_else(|| {
        let stamp: String = started_at
            .chars()
            .filter(|c| c.is_ascii_digit())
            .take(14)
            .collect();
        PathBuf::from("target/chaos").join(format!("{}-{stamp}", scenario.name))
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let html = dir.join("report.html");
    std::fs::write(&html, report::html(&record))
        .with_context(|| format!("writing {}", html.display()))?;
    let passed = record.passed();
    println!(
        "{}: {} (report: {}, data: {})",
        scenario.name,
        if passed { "PASS" } else { "FAIL" },
        html.display(),
        json.display()
    );
    Ok(passed)
}
