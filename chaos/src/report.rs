//! The drill report as one self-contained HTML file.
//!
//! Everything is inline (CSS, SVG, no script, no web fonts, no external resources) so the
//! file can be attached to a ticket or opened from an artefact store much later and still
//! read the same. Charts are hand-written SVG: the crate deliberately has no plotting
//! dependency.
//!
//! Layout: header (scenario, PASS/FAIL badge, reproduce command), verdict tables, one
//! summary table with a column per run, then the timeline charts in a grid with one column
//! per run. Corresponding charts of different runs share their y scales (and all charts
//! share the time axis) so "admission on" and "admission off" can be compared by eye.

use std::fmt::Write;

use crate::record::{ClassSecond, DrillRecord, Event, EventKind, RunRecord, Second, Summary};

/// Renders `record` as a self-contained HTML page.
pub fn html(record: &DrillRecord) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let (_, word) = pass_fail(record.passed());
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{word}: {} (Levee drill)</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        escape(&record.scenario)
    );
    header(&mut out, record);
    if record.runs.is_empty() {
        out.push_str("<p class=\"note\">This drill recorded no runs.</p>\n");
    } else {
        verdicts_section(&mut out, &record.runs);
        summary_section(&mut out, &record.runs);
        charts_section(&mut out, &record.runs);
    }
    out.push_str("</body>\n</html>\n");
    out
}

const CSS: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;\
margin:0 auto;max-width:1500px;padding:16px 24px;color:#222;background:#fff}\
h1{margin:0;font-size:26px}h2{margin:28px 0 8px;font-size:20px;border-bottom:2px solid #ddd}\
h3{margin:8px 0 4px;font-size:16px}\
.title{display:flex;align-items:center;gap:18px;flex-wrap:wrap}\
.badge{font-size:30px;font-weight:700;padding:2px 22px;border-radius:6px;color:#fff;letter-spacing:.06em}\
.tag{font-size:12px;font-weight:700;padding:1px 7px;border-radius:4px;color:#fff;vertical-align:middle}\
.badge.pass,.tag.pass{background:#1a7f37}.badge.fail,.tag.fail{background:#c62828}\
td.pass{color:#1a7f37;font-weight:700}td.fail{color:#c62828;font-weight:700}\
tr.fail td{background:#fdecea}\
.desc{max-width:900px}.note{color:#666;font-style:italic}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:12px 0}\
dt{color:#666}dd{margin:0}\
pre{background:#f4f4f4;padding:8px 12px;border-radius:4px;white-space:pre-wrap;word-break:break-all;margin:4px 0}\
table{border-collapse:collapse;width:100%}\
th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f7f7f7}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
.runs{display:grid;gap:10px 28px}\
@media (max-width:800px){.runs{grid-template-columns:minmax(0,1fr)!important}}\
figure{margin:0}figcaption{font-weight:600;margin:10px 0 2px}figcaption .run{font-weight:400;color:#666}\
svg{width:100%;height:auto;display:block}\
svg text{font-size:11px}.tick{fill:#555}.grid{stroke:#eee}.frame{stroke:#999;fill:none}\
.mlabel{font-size:10px;paint-order:stroke;stroke:#fff;stroke-width:3px}.nodata{fill:#999;font-size:14px}\
";

// ---------------------------------------------------------------------------------------
// Header, verdicts, summary
// ---------------------------------------------------------------------------------------

fn header(out: &mut String, record: &DrillRecord) {
    let (class, word) = pass_fail(record.passed());
    let _ = write!(
        out,
        "<header>\n<div class=\"title\"><h1>{}</h1><span class=\"badge {class}\">{word}</span></div>\n",
        escape(&record.scenario)
    );
    if !record.description.is_empty() {
        let _ = writeln!(out, "<p class=\"desc\">{}</p>", escape(&record.description));
    }
    let labels: Vec<&str> = record.runs.iter().map(|r| r.label.as_str()).collect();
    out.push_str("<dl>\n");
    dl_row(out, "target", &escape(&record.target));
    dl_row(out, "started", &escape(&record.started_at));
    dl_row(out, "runs", &escape(&labels.join(", ")));
    out.push_str("</dl>\n");
    let _ = write!(
        out,
        "<div>reproduce:</div>\n<pre><code>{}</code></pre>\n</header>\n",
        escape(&record.command)
    );
}

/// `value` must already be escaped.
fn dl_row(out: &mut String, term: &str, value: &str) {
    let _ = writeln!(out, "<dt>{term}</dt><dd>{value}</dd>");
}

fn pass_fail(pass: bool) -> (&'static str, &'static str) {
    if pass {
        ("pass", "PASS")
    } else {
        ("fail", "FAIL")
    }
}

fn run_passed(run: &RunRecord) -> bool {
    run.verdicts.iter().all(|v| v.pass)
}

/// Opens a grid with one column per run; closed by the caller with `</div>`. The column
/// count is an inline style because it depends on the record (the narrow-screen media
/// query overrides it with `!important`).
fn open_runs_grid(out: &mut String, columns: usize) {
    let _ = writeln!(
        out,
        "<div class=\"runs\" style=\"grid-template-columns:repeat({},minmax(0,1fr))\">",
        columns.max(1)
    );
}

fn verdicts_section(out: &mut String, runs: &[RunRecord]) {
    out.push_str("<section>\n<h2>Verdicts</h2>\n");
    open_runs_grid(out, runs.len());
    for run in runs {
        verdict_table(out, run);
    }
    out.push_str("</div>\n</section>\n");
}

fn verdict_table(out: &mut String, run: &RunRecord) {
    let (class, word) = pass_fail(run_passed(run));
    let _ = writeln!(
        out,
        "<div>\n<h3>{} <span class=\"tag {class}\">{word}</span></h3>",
        escape(&run.label)
    );
    if run.verdicts.is_empty() {
        out.push_str("<p class=\"note\">No verdicts recorded.</p>\n</div>\n");
        return;
    }
    out.push_str("<table>\n<tr><th>check</th><th>result</th><th>detail</th></tr>\n");
    for v in &run.verdicts {
        let (class, word) = pass_fail(v.pass);
        let _ = writeln!(
            out,
            "<tr class=\"{class}\"><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td></tr>",
            escape(&v.name),
            escape(&v.detail)
        );
    }
    out.push_str("</table>\n</div>\n");
}

/// One row of the summary table: its label and how to format a run's value.
type SummaryRow = (&'static str, fn(&Summary) -> String);

const SUMMARY_ROWS: &[SummaryRow] = &[
    ("sends acknowledged", |s| count(s.sends_acked)),
    ("sends failed", |s| count(s.sends_failed)),
    ("delivered", |s| count(s.delivered)),
    ("lost (acked, never delivered)", |s| count(s.lost)),
    ("duplicates after ack", |s| count(s.duplicates_after_ack)),
    ("send success before the wave", |s| {
        percent(s.send_success_before)
    }),
    ("send success during the wave", |s| {
        percent(s.send_success_during)
    }),
    ("latency before, p50 / p99 / p999", |s| {
        latency_triple(&s.latency_before_ms)
    }),
    ("latency during, p50 / p99 / p999", |s| {
        latency_triple(&s.latency_during_ms)
    }),
    ("registrations offered", |s| count(s.registrations_offered)),
    ("registrations admitted", |s| {
        count(s.registrations_admitted)
    }),
    ("registrations waiting (ticket)", |s| {
        count(s.registrations_waiting)
    }),
    ("registrations refused at end", |s| {
        count(s.registrations_refused_at_end)
    }),
    ("registration hard errors", |s| {
        count(s.registrations_hard_errors)
    }),
    ("requests per admitted", |s| {
        decimal(s.requests_per_admitted, 2)
    }),
    ("overtakes", |s| count(s.overtakes)),
    ("kept away while a later place got in", |s| {
        count(s.kept_away)
    }),
];

/// One table for all runs, a column each: with `--compare` the two runs' numbers sit
/// next to each other.
fn summary_section(out: &mut String, runs: &[RunRecord]) {
    out.push_str("<section>\n<h2>Summary</h2>\n<table class=\"summary\">\n<tr><th></th>");
    for run in runs {
        let _ = write!(out, "<th class=\"num\">{}</th>", escape(&run.label));
    }
    out.push_str("</tr>\n<tr><td>verdicts</td>");
    for run in runs {
        let (class, word) = pass_fail(run_passed(run));
        let passed = run.verdicts.iter().filter(|v| v.pass).count();
        let _ = write!(
            out,
            "<td class=\"num {class}\">{word} ({passed} of {})</td>",
            run.verdicts.len()
        );
    }
    out.push_str("</tr>\n");
    for (label, value) in SUMMARY_ROWS {
        let _ = write!(out, "<tr><td>{label}</td>");
        for run in runs {
            let _ = write!(out, "<td class=\"num\">{}</td>", value(&run.summary));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n</section>\n");
}

// ---------------------------------------------------------------------------------------
// Number and text formatting
// ---------------------------------------------------------------------------------------

/// Escapes text for HTML element content and attribute values (SVG included).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `12345` -> `12,345`.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rates are fractions (0..1); a run without sends may carry NaN, shown as `n/a`.
fn percent(rate: f64) -> String {
    if rate.is_finite() {
        format!("{:.2} %", rate * 100.0)
    } else {
        "n/a".to_owned()
    }
}

fn decimal(v: f64, places: usize) -> String {
    if v.is_finite() {
        format!("{v:.places$}")
    } else {
        "n/a".to_owned()
    }
}

/// Milliseconds with precision that shrinks as the value grows (0.42, 12.3, 4567).
fn millis(v: f64) -> String {
    let places = if !v.is_finite() || v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    decimal(v, places)
}

fn latency_triple(ms: &[f64; 3]) -> String {
    format!(
        "{} / {} / {} ms",
        millis(ms[0]),
        millis(ms[1]),
        millis(ms[2])
    )
}

/// Compact axis label: `0.25`, `40`, `1.5k`, `2M`.
fn tick_label(v: f64) -> String {
    if !v.is_finite() {
        return "0".to_owned();
    }
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let fixed = format!("{scaled:.3}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    let trimmed = if trimmed == "-0" { "0" } else { trimmed };
    format!("{trimmed}{suffix}")
}

/// Cuts a marker label so it fits beside its line; the full text stays in a `<title>`.
fn short_label(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(max_chars.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// SVG coordinate; every value reaching here is clamped, the guard is belt and braces
/// against `NaN` ever appearing in the output.
fn coord(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "0".to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Scales
// ---------------------------------------------------------------------------------------

/// A value axis: its domain and where its ticks go.
#[derive(Clone, Debug, PartialEq)]
struct Scale {
    log: bool,
    min: f64,
    max: f64,
    ticks: Vec<f64>,
}

impl Scale {
    /// `0..top`, where `top` is the first "nice" multiple (1, 2, 5 x 10^k) at or above
    /// `data_max`, with about `target` ticks. No data, zeros or NaN give `0..1`, so an
    /// empty chart still has an axis and no division by zero.
    fn linear(data_max: f64, integer: bool, target: u32) -> Scale {
        let max = if data_max.is_finite() && data_max > 0.0 {
            data_max
        } else {
            1.0
        };
        let mut step = nice_step(max / f64::from(target.max(1)));
        if integer {
            // Counts: a tick at 0.2 people helps no one.
            step = step.max(1.0);
        }
        // The epsilon keeps float noise (3.0000000001 steps) from adding an empty step.
        let steps = ((max / step) - 1e-9).ceil().clamp(1.0, 1000.0) as u32;
        let ticks = (0..=steps).map(|i| f64::from(i) * step).collect();
        Scale {
            log: false,
            min: 0.0,
            max: f64::from(steps) * step,
            ticks,
        }
    }

    /// Whole decades around the positive data. Latencies span 1 ms to tens of seconds, so a
    /// linear axis would flatten everything but the worst second. Without data: 1..1000.
    fn log10(data_min: Option<f64>, data_max: Option<f64>) -> Scale {
        let lo = data_min
            .map_or(0, |v| v.log10().floor() as i32)
            .clamp(-3, 8);
        let hi = data_max
            .map_or(3, |v| v.log10().ceil() as i32)
            .clamp(-3, 9)
            .max(lo + 1);
        Scale {
            log: true,
            min: 10f64.powi(lo),
            max: 10f64.powi(hi),
            ticks: (lo..=hi).map(|e| 10f64.powi(e)).collect(),
        }
    }

    /// The admission level's fixed 0..1 (with headroom above the top tick, as for counts).
    fn unit() -> Scale {
        Scale {
            log: false,
            min: 0.0,
            max: 1.05,
            ticks: vec![0.0, 0.25, 0.5, 0.75, 1.0],
        }
    }

    /// Where `v` sits on the axis, 0..1, clamped (a log axis puts zero at the bottom).
    fn frac(&self, v: f64) -> f64 {
        let (v, lo, hi) = if self.log {
            (v.max(self.min).log10(), self.min.log10(), self.max.log10())
        } else {
            (v, self.min, self.max)
        };
        let f = (v - lo) / (hi - lo);
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// The smallest of 1, 2, 5 x 10^k at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// The time axis shared by every chart of every run: up to the last second or event.
fn time_scale(runs: &[RunRecord]) -> Scale {
    let last = runs
        .iter()
        .flat_map(|r| {
            let seconds = r.seconds.iter().map(|s| f64::from(s.t));
            let events = r.events.iter().map(|e| e.at_s);
            seconds.chain(events)
        })
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    Scale::linear(last, true, 8)
}

/// How a chart's y axis is scaled; decides the shared [`Scale`] from the data of all runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum AxisKind {
    /// Integer counts from 0.
    Count,
    /// Real values from 0.
    Linear,
    /// Milliseconds, log10.
    LogMs,
    /// Fixed 0..1.
    Unit,
}

impl AxisKind {
    fn scale(self, values: &[f64]) -> Scale {
        // 5 % headroom: a line at the maximum (offered, nodes up) would hide in the frame.
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) * 1.05;
        match self {
            AxisKind::Count => Scale::linear(max, true, 5),
            AxisKind::Linear => Scale::linear(max, false, 5),
            AxisKind::Unit => Scale::unit(),
            AxisKind::LogMs => {
                let positive = values.iter().copied().filter(|v| *v > 0.0);
                let min = positive.clone().reduce(f64::min);
                let max = positive.reduce(f64::max);
                Scale::log10(min, max)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Chart data
// ---------------------------------------------------------------------------------------

/// One line on a chart.
#[derive(Clone, Debug)]
struct Series {
    name: &'static str,
    color: &'static str,
    /// Plotted against the right axis.
    right: bool,
    /// Drawn as a step line (a level that holds until it changes).
    step: bool,
    /// `(t, value)`; `None` (or a non-finite value) breaks the line.
    points: Vec<(f64, Option<f64>)>,
}

impl Series {
    fn new(
        name: &'static str,
        color: &'static str,
        seconds: &[Second],
        value: impl Fn(&Second) -> Option<f64>,
    ) -> Series {
        let points = seconds
            .iter()
            .map(|s| (f64::from(s.t), value(s).filter(|v| v.is_finite())))
            .collect();
        Series {
            name,
            color,
            right: false,
            step: false,
            points,
        }
    }

    fn on_right(mut self) -> Series {
        self.right = true;
        self
    }

    fn stepped(mut self) -> Series {
        self.step = true;
        self
    }
}

/// One chart of one run, before scaling.
#[derive(Clone, Debug)]
struct ChartSpec {
    title: &'static str,
    left: AxisKind,
    right: Option<AxisKind>,
    series: Vec<Series>,
}

impl ChartSpec {
    /// Finite values plotted on one side, for the shared scale.
    fn values(&self, right: bool) -> impl Iterator<Item = f64> + '_ {
        self.series
            .iter()
            .filter(move |s| s.right == right)
            .flat_map(|s| s.points.iter().filter_map(|p| p.1))
    }
}

const OFFERED: &str = "#1f77b4";
const OK: &str = "#2ca02c";
const SHED: &str = "#ff7f0e";
const FAILED: &str = "#d62728";
const REFUSED: &str = "#9467bd";
const NODES: &str = "#8c564b";

/// offered / ok / shed / failed of one request class; names differ per class.
fn class_series(
    seconds: &[Second],
    class: fn(&Second) -> &ClassSecond,
    names: [&'static str; 4],
) -> Vec<Series> {
    let [offered, ok, shed, failed] = names;
    vec![
        Series::new(offered, OFFERED, seconds, |s| Some(class(s).offered as f64)),
        Series::new(ok, OK, seconds, |s| Some(class(s).ok as f64)),
        Series::new(shed, SHED, seconds, |s| Some(class(s).shed as f64)),
        Series::new(failed, FAILED, seconds, |s| Some(class(s).failed as f64)),
    ]
}

/// The charts of one run, in display order. Every run yields the same list, so charts
/// with the same index correspond across runs.
fn run_charts(run: &RunRecord) -> Vec<ChartSpec> {
    let s = &run.seconds;
    let mut charts = base_charts(s);
    if !run.autoscale.is_empty() {
        charts.extend(autoscale_charts(&run.autoscale));
    }
    charts
}

/// The autoscaler's view, once a period: what it read and what it decided.
fn autoscale_charts(points: &[crate::record::ScalePoint]) -> Vec<ChartSpec> {
    let series = |name, color, value: fn(&crate::record::ScalePoint) -> f64| Series {
        name,
        color,
        right: false,
        step: false,
        points: points.iter().map(|p| (p.t, Some(value(p)))).collect(),
    };
    vec![
        ChartSpec {
            title: "Autoscaler: mean load ratio and nodes",
            left: AxisKind::Linear,
            right: Some(AxisKind::Count),
            series: vec![
                series("mean levee_load_ratio (left)", SHED, |p| p.ratio),
                series("nodes (right)", NODES, |p| f64::from(p.nodes))
                    .on_right()
                    .stepped(),
                series("desired (right)", OFFERED, |p| f64::from(p.desired))
                    .on_right()
                    .stepped(),
            ],
        },
        ChartSpec {
            title: "Autoscaler: the nodes' mean estimated wait (s)",
            left: AxisKind::Linear,
            right: None,
            series: vec![series("estimated wait, s", FAILED, |p| p.wait_s)],
        },
    ]
}

/// The charts every run has.
fn base_charts(s: &[Second]) -> Vec<ChartSpec> {
    let mut registrations = class_series(
        s,
        |x| &x.registration,
        ["offered", "admitted", "tickets handed out", "hard errors"],
    );
    registrations.push(Series::new("refused connections", REFUSED, s, |x| {
        Some(x.refused_connections as f64)
    }));
    vec![
        ChartSpec {
            title: "Messaging per second",
            left: AxisKind::Count,
            right: None,
            series: class_series(s, |x| &x.messaging, ["offered", "ok", "shed", "failed"]),
        },
        ChartSpec {
            title: "Registrations per second",
            left: AxisKind::Count,
            right: None,
            series: registrations,
        },
        ChartSpec {
            title: "Logins per second",
            left: AxisKind::Count,
            right: None,
            series: class_series(s, |x| &x.login, ["offered", "ok", "shed", "failed"]),
        },
        ChartSpec {
            title: "Messaging latency (ms, log scale)",
            left: AxisKind::LogMs,
            right: None,
            series: vec![
                Series::new("p50", OFFERED, s, |x| x.messaging.p50_ms),
                Series::new("p99", SHED, s, |x| x.messaging.p99_ms),
                Series::new("p999", FAILED, s, |x| x.messaging.p999_ms),
            ],
        },
        ChartSpec {
            title: "Waiting room",
            left: AxisKind::Count,
            right: Some(AxisKind::Linear),
            series: vec![
                Series::new("waiting, people (left)", OFFERED, s, |x| {
                    Some(x.waiting as f64)
                }),
                Series::new("estimated wait, s (right)", SHED, s, |x| {
                    Some(x.estimated_wait_ms as f64 / 1000.0)
                })
                .on_right(),
            ],
        },
        ChartSpec {
            title: "Admission level and nodes up",
            left: AxisKind::Unit,
            right: Some(AxisKind::Count),
            series: vec![
                Series::new("admission level (left)", OK, s, |x| x.admission_level),
                Series::new("nodes up (right)", NODES, s, |x| {
                    Some(f64::from(x.nodes_up))
                })
                .on_right()
                .stepped(),
            ],
        },
    ]
}

/// Left and (if any) right scale of one chart index.
type AxisPair = (Scale, Option<Scale>);

/// For each chart index, one y scale (and right scale) covering that chart in every run:
/// the same axes side by side is what makes the comparison honest.
fn shared_scales(runs: &[Vec<ChartSpec>]) -> Vec<AxisPair> {
    let len = runs.iter().map(Vec::len).min().unwrap_or(0);
    (0..len)
        .filter_map(|i| {
            let charts: Vec<&ChartSpec> = runs.iter().filter_map(|c| c.get(i)).collect();
            let first = charts.first()?;
            let side =
                |right: bool| -> Vec<f64> { charts.iter().flat_map(|c| c.values(right)).collect() };
            let left = first.left.scale(&side(false));
            let right = first.right.map(|kind| kind.scale(&side(true)));
            Some((left, right))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// SVG
// ---------------------------------------------------------------------------------------

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 250.0;
const MARGIN_LEFT: f64 = 48.0;
const MARGIN_RIGHT: f64 = 14.0;
/// Room for the right axis' tick labels.
const MARGIN_RIGHT_AXIS: f64 = 44.0;
const MARGIN_BOTTOM: f64 = 32.0;
const LEGEND_ROW: f64 = 15.0;
/// Rough width of an 11px sans-serif character, for laying out the legend.
const CHAR_WIDTH: f64 = 6.6;

/// The plot area inside the SVG, in SVG units.
struct Plot {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Plot {
    fn x(&self, scale: &Scale, v: f64) -> f64 {
        self.left + scale.frac(v) * (self.right - self.left)
    }

    fn y(&self, scale: &Scale, v: f64) -> f64 {
        self.bottom - scale.frac(v) * (self.bottom - self.top)
    }
}

fn event_color(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Phase => "#888888",
        EventKind::Fault => "#e53935",
        EventKind::NodeDown => "#8b0000",
        EventKind::NodeUp => "#2e8b57",
    }
}

fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Phase => "phase",
        EventKind::Fault => "fault",
        EventKind::NodeDown => "node down",
        EventKind::NodeUp => "node up",
    }
}

/// A legend entry: a solid swatch for a series, a dashed one for an event kind.
struct LegendItem {
    name: &'static str,
    color: &'static str,
    dashed: bool,
}

fn legend_items(spec: &ChartSpec, events: &[Event]) -> Vec<LegendItem> {
    let mut items: Vec<LegendItem> = spec
        .series
        .iter()
        .map(|s| LegendItem {
            name: s.name,
            color: s.color,
            dashed: false,
        })
        .collect();
    // Only the kinds that occur, in a fixed order so both runs' legends read alike.
    for kind in [
        EventKind::Phase,
        EventKind::Fault,
        EventKind::NodeDown,
        EventKind::NodeUp,
    ] {
        if events.iter().any(|e| e.kind == kind) {
            items.push(LegendItem {
                name: event_name(kind),
                color: event_color(kind),
                dashed: true,
            });
        }
    }
    items
}

/// Lays the legend out in rows across the top; returns its SVG and its height.
fn legend_svg(items: &[LegendItem]) -> (String, f64) {
    let mut out = String::new();
    let (mut x, mut row) = (MARGIN_LEFT, 0.0);
    for item in items {
        let width = 34.0 + CHAR_WIDTH * item.name.chars().count() as f64;
        if x + width > WIDTH - MARGIN_RIGHT && x > MARGIN_LEFT {
            x = MARGIN_LEFT;
            row += 1.0;
        }
        let y = 12.0 + row * LEGEND_ROW;
        let dash = if item.dashed {
            " stroke-dasharray=\"4 3\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\
             <text class=\"tick\" x=\"{}\" y=\"{}\">{}</text>",
            coord(x),
            coord(y - 4.0),
            coord(x + 18.0),
            coord(y - 4.0),
            item.color,
            coord(x + 22.0),
            coord(y),
            escape(item.name)
        );
        x += width;
    }
    let height = if items.is_empty() {
        0.0
    } else {
        (row + 1.0) * LEGEND_ROW
    };
    (out, height)
}

/// Horizontal grid lines and tick labels of one y axis.
fn y_axis_svg(out: &mut String, plot: &Plot, scale: &Scale, right: bool) {
    for &tick in &scale.ticks {
        let y = coord(plot.y(scale, tick));
        if right {
            let _ = write!(
                out,
                "<text class=\"tick\" x=\"{}\" y=\"{y}\" dy=\"3.5\">{}</text>",
                coord(plot.right + 5.0),
                tick_label(tick)
            );
        } else {
            // Grid lines follow the left axis only; two sets would be noise.
            let _ = write!(
                out,
                "<line class=\"grid\" x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>\
                 <text class=\"tick\" x=\"{}\" y=\"{y}\" dy=\"3.5\" text-anchor=\"end\">{}</text>",
                coord(plot.left),
                coord(plot.right),
                coord(plot.left - 5.0),
                tick_label(tick)
            );
        }
    }
}

fn x_axis_svg(out: &mut String, plot: &Plot, time: &Scale) {
    for &tick in &time.ticks {
        let x = coord(plot.x(time, tick));
        let _ = write!(
            out,
            "<line class=\"frame\" x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>\
             <text class=\"tick\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            coord(plot.bottom),
            coord(plot.bottom + 4.0),
            coord(plot.bottom + 15.0),
            tick_label(tick)
        );
    }
    let _ = write!(
        out,
        "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">time (s)</text>",
        coord(plot.right),
        coord(HEIGHT - 3.0)
    );
}

/// Rough width of a 10px marker-label character, for staggering labels.
const MARKER_CHAR_WIDTH: f64 = 5.8;

/// Event markers: the dashed lines (drawn under the data) and their labels (drawn over it,
/// with a white halo, so neither hides the other).
fn markers_svg(plot: &Plot, time: &Scale, events: &[Event]) -> (String, String) {
    let mut visible: Vec<&Event> = events
        .iter()
        .filter(|e| e.at_s.is_finite() && e.at_s >= 0.0 && e.at_s <= time.max)
        .collect();
    // In time order, so a label can make room for the one just before it.
    visible.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let (mut lines, mut labels) = (String::new(), String::new());
    // Where the previous label sits: its line's x and the y its text ends at.
    let mut previous: Option<(f64, f64)> = None;
    for event in visible {
        let x = plot.x(time, event.at_s);
        let color = event_color(event.kind);
        let full = escape(&format!(
            "{} at {}s: {}",
            event_name(event.kind),
            tick_label(event.at_s),
            event.label
        ));
        let _ = write!(
            lines,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"{color}\" \
             stroke-width=\"1.2\" stroke-dasharray=\"4 3\"><title>{full}</title></line>",
            coord(plot.top),
            coord(plot.bottom),
            x = coord(x)
        );
        let text = short_label(&event.label, 24);
        let length = MARKER_CHAR_WIDTH * text.chars().count() as f64;
        // Events seconds apart (a fault, then the node it kills) would print their labels
        // on top of each other: start the later one below the earlier one if it fits,
        // else put it on the right of its line. The text is rotated to run down the line;
        // its glyphs extend left of the anchor.
        let (mut anchor_x, mut y) = (x - 3.0, plot.top + 3.0);
        if let Some((prev_x, prev_end)) = previous
            && x - prev_x < 12.0
        {
            if prev_end + 8.0 + length <= plot.bottom {
                y = prev_end + 8.0;
            } else {
                anchor_x = x + 12.0;
            }
        }
        previous = Some((x, y + length));
        let _ = write!(
            labels,
            "<text class=\"mlabel\" style=\"fill:{color}\" text-anchor=\"end\" \
             transform=\"translate({},{}) rotate(-90)\"><title>{full}</title>{}</text>",
            coord(anchor_x),
            coord(y),
            escape(&text)
        );
    }
    (lines, labels)
}

/// One series as paths, broken at missing values; a lone point becomes a dot so a
/// single-second run still shows something.
fn series_svg(out: &mut String, series: &Series, plot: &Plot, time: &Scale, y: &Scale) {
    let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(t, value) in &series.points {
        match value {
            Some(v) => {
                if let Some(segment) = segments.last_mut() {
                    segment.push((plot.x(time, t), plot.y(y, v)));
                }
            }
            None => segments.push(Vec::new()),
        }
    }
    for segment in segments {
        match segment.as_slice() {
            [] => {}
            [(x, y)] => {
                let _ = write!(
                    out,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"2\" fill=\"{}\"/>",
                    coord(*x),
                    coord(*y),
                    series.color
                );
            }
            [(x0, y0), rest @ ..] => {
                let mut d = format!("M{},{}", coord(*x0), coord(*y0));
                for (x, y) in rest {
                    if series.step {
                        let _ = write!(d, "H{}V{}", coord(*x), coord(*y));
                    } else {
                        let _ = write!(d, "L{},{}", coord(*x), coord(*y));
                    }
                }
                let _ = write!(
                    out,
                    "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" \
                     stroke-linejoin=\"round\"/>",
                    series.color
                );
            }
        }
    }
}

/// Renders one chart with the given (shared) scales.
fn chart_svg(spec: &ChartSpec, time: &Scale, axes: &AxisPair, events: &[Event]) -> String {
    let (left, right) = axes;
    let (legend, legend_height) = legend_svg(&legend_items(spec, events));
    let plot = Plot {
        left: MARGIN_LEFT,
        right: WIDTH
            - if right.is_some() {
                MARGIN_RIGHT_AXIS
            } else {
                MARGIN_RIGHT
            },
        top: legend_height + 10.0,
        bottom: HEIGHT - MARGIN_BOTTOM,
    };
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-label=\"{0}\"><title>{0}</title>",
        spec.title
    );
    y_axis_svg(&mut out, &plot, left, false);
    if let Some(right) = right {
        y_axis_svg(&mut out, &plot, right, true);
    }
    x_axis_svg(&mut out, &plot, time);
    let (marker_lines, marker_labels) = markers_svg(&plot, time, events);
    out.push_str(&marker_lines);
    let mut empty = true;
    for series in &spec.series {
        let scale = match (series.right, right) {
            (true, Some(right)) => right,
            _ => left,
        };
        empty &= series.points.iter().all(|p| p.1.is_none());
        series_svg(&mut out, series, &plot, time, scale);
    }
    out.push_str(&marker_labels);
    let _ = write!(
        out,
        "<rect class=\"frame\" fill=\"none\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>",
        coord(plot.left),
        coord(plot.top),
        coord(plot.right - plot.left),
        coord(plot.bottom - plot.top)
    );
    if empty {
        let _ = write!(
            out,
            "<text class=\"nodata\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>",
            coord((plot.left + plot.right) / 2.0),
            coord((plot.top + plot.bottom) / 2.0)
        );
    }
    out.push_str(&legend);
    out.push_str("</svg>");
    out
}

/// The charts, row by row: chart `i` of every run sits in one grid row, so corresponding
/// charts line up horizontally even if a legend wraps in one run and not the other.
fn charts_section(out: &mut String, runs: &[RunRecord]) {
    let specs: Vec<Vec<ChartSpec>> = runs.iter().map(run_charts).collect();
    let scales = shared_scales(&specs);
    let time = time_scale(runs);
    out.push_str("<section>\n<h2>Timeline</h2>\n");
    open_runs_grid(out, runs.len());
    for run in runs {
        let admission = if run.admission { "on" } else { "off" };
        let _ = writeln!(
            out,
            "<h3>{} <span class=\"note\">(admission {admission}, {} s recorded)</span></h3>",
            escape(&run.label),
            run.seconds.len()
        );
    }
    for (i, axes) in scales.iter().enumerate() {
        for (run, charts) in runs.iter().zip(&specs) {
            let Some(spec) = charts.get(i) else { continue };
            let _ = writeln!(
                out,
                "<figure><figcaption>{} <span class=\"run\">· {}</span></figcaption>{}</figure>",
                spec.title,
                escape(&run.label),
                chart_svg(spec, &time, axes, &run.events)
            );
        }
    }
    out.push_str("</div>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Verdict;

    fn second(t: u32, offered: u64, latency: Option<f64>) -> Second {
        let class = ClassSecond {
            offered,
            ok: offered.saturating_sub(2),
            shed: 1,
            failed: 1,
            p50_ms: latency,
            p99_ms: latency.map(|l| l * 10.0),
            p999_ms: latency.map(|l| l * 100.0),
        };
        Second {
            t,
            phase: "hold".to_owned(),
            messaging: class.clone(),
            login: class.clone(),
            registration: class,
            refused_connections: 3,
            waiting: u64::from(t) * 10,
            estimated_wait_ms: u64::from(t) * 500,
            admission_level: if t.is_multiple_of(5) { None } else { Some(0.5) },
            nodes_up: if t > 10 { 2 } else { 3 },
        }
    }

    fn run(label: &str, peak: u64, pass: bool) -> RunRecord {
        RunRecord {
            label: label.to_owned(),
            admission: pass,
            seconds: (0..30)
                .map(|t| {
                    let latency = if t == 7 { None } else { Some(2.0) };
                    second(t, if t == 15 { peak } else { 50 }, latency)
                })
                .collect(),
            events: vec![
                Event {
                    at_s: 5.0,
                    kind: EventKind::Phase,
                    label: "wave: ramp".to_owned(),
                },
                Event {
                    at_s: 10.5,
                    kind: EventKind::NodeDown,
                    label: "node-2 killed".to_owned(),
                },
                Event {
                    at_s: 20.0,
                    kind: EventKind::NodeUp,
                    label: "node-2 back".to_owned(),
                },
            ],
            summary: Summary {
                sends_acked: 12_345,
                send_success_before: 1.0,
                send_success_during: 0.9876,
                latency_before_ms: [1.5, 12.0, 240.0],
                ..Summary::default()
            },
            verdicts: vec![
                Verdict {
                    name: "every acknowledged envelope delivered".to_owned(),
                    pass: true,
                    detail: "12,345 of 12,345".to_owned(),
                },
                Verdict {
                    name: "send success during the wave".to_owned(),
                    pass,
                    detail: "98.76 %".to_owned(),
                },
            ],
            placement: Vec::new(),
            autoscale: Vec::new(),
            drained: Vec::new(),
        }
    }

    fn record(runs: Vec<RunRecord>) -> DrillRecord {
        DrillRecord {
            scenario: "mass-migration".to_owned(),
            description: "Rehearse a mass migration.".to_owned(),
            target: "embedded local cluster, 3 nodes".to_owned(),
            started_at: "2025-01-01T00:00:00Z".to_owned(),
            command: "levee-chaos run mass-migration --compare".to_owned(),
            runs,
        }
    }

    fn assert_clean(page: &str) {
        assert!(!page.contains("NaN"), "NaN in output");
        assert!(!page.contains("inf"), "inf in output");
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.ends_with("</html>\n"));
    }

    /// The SVGs in document order (chart 0 of every run, then chart 1, ...).
    fn svgs(page: &str) -> Vec<&str> {
        page.split("<svg").skip(1).collect()
    }

    #[test]
    fn compare_renders_both_runs_side_by_side() {
        let page = html(&record(vec![
            run("admission on", 80, true),
            run("admission off", 80, true),
        ]));
        assert_clean(&page);
        assert!(page.contains("admission on"));
        assert!(page.contains("admission off"));
        assert!(page.contains("grid-template-columns:repeat(2,minmax(0,1fr))"));
        assert_eq!(page.matches("<svg").count(), 6 * 2);
        assert!(page.contains("<code>levee-chaos run mass-migration --compare</code>"));
        assert!(page.contains("12,345"));
        assert!(page.contains("98.76 %"));
        assert!(page.contains("1.50 / 12.0 / 240 ms"));
        // Markers with their labels and kind colours.
        assert!(page.contains("node-2 killed"));
        assert!(page.contains(event_color(EventKind::NodeDown)));
        assert!(page.contains(event_color(EventKind::NodeUp)));
    }

    #[test]
    fn single_run_uses_one_column() {
        let page = html(&record(vec![run("admission on", 80, true)]));
        assert_clean(&page);
        assert!(page.contains("grid-template-columns:repeat(1,minmax(0,1fr))"));
        assert_eq!(page.matches("<svg").count(), 6);
    }

    #[test]
    fn verdict_rows_and_badge() {
        let passing = html(&record(vec![run("a", 80, true), run("b", 80, true)]));
        assert!(passing.contains("<span class=\"badge pass\">PASS</span>"));
        assert_eq!(passing.matches("<td class=\"pass\">PASS</td>").count(), 4);

        let failing = html(&record(vec![run("a", 80, true), run("b", 80, false)]));
        assert!(failing.contains("<span class=\"badge fail\">FAIL</span>"));
        assert!(failing.contains("<title>FAIL: mass-migration"));
        assert_eq!(failing.matches("<td class=\"pass\">PASS</td>").count(), 3);
        assert_eq!(failing.matches("<td class=\"fail\">FAIL</td>").count(), 1);
        assert!(failing.contains("every acknowledged envelope delivered"));
        assert!(failing.contains("FAIL (1 of 2)"));
    }

    #[test]
    fn hostile_text_is_escaped() {
        let hostile = "<script>alert('x' & \"y\")</script>";
        let mut r = run(hostile, 80, false);
        r.events[0].label = hostile.to_owned();
        r.verdicts[0].name = hostile.to_owned();
        r.verdicts[0].detail = hostile.to_owned();
        let mut rec = record(vec![r]);
        rec.scenario = hostile.to_owned();
        rec.description = hostile.to_owned();
        rec.target = hostile.to_owned();
        rec.started_at = hostile.to_owned();
        rec.command = hostile.to_owned();
        let page = html(&rec);
        assert!(!page.contains("<script"));
        assert!(!page.contains("alert('x'"));
        assert!(
            page.contains("&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;")
        );
    }

    #[test]
    fn an_autoscaled_run_charts_what_the_autoscaler_read_and_did() {
        let plain = html(&record(vec![run("plain", 80, true)]));
        assert!(!plain.contains("Autoscaler"));
        let mut scaled = run("scaled", 80, true);
        scaled.autoscale = (0..10)
            .map(|i| crate::record::ScalePoint {
                t: f64::from(i) * 3.0,
                nodes: 2 + i / 4,
                ratio: 0.5 + f64::from(i % 4) * 0.3,
                wait_s: f64::from(i % 4) * 4.0,
                desired: 2 + (i + 1) / 4,
            })
            .collect();
        let page = html(&record(vec![scaled]));
        assert!(page.contains("Autoscaler: mean load ratio and nodes"));
        assert!(
            page.contains("Autoscaler: the nodes&#39; mean estimated wait (s)")
                || page.contains("Autoscaler: the nodes' mean estimated wait (s)")
        );
        assert!(page.contains("mean levee_load_ratio"));
    }

    #[test]
    fn empty_and_degenerate_runs_render_cleanly() {
        let empty = RunRecord {
            label: "empty".to_owned(),
            ..RunRecord::default()
        };
        let mut single = run("single", 0, true);
        single.seconds.truncate(1);
        single.events.clear();
        let mut zeros = run("zeros", 0, true);
        for s in &mut zeros.seconds {
            *s = Second {
                t: s.t,
                ..Second::default()
            };
        }
        let mut odd = run("odd", 80, true);
        odd.summary.send_success_before = f64::NAN;
        odd.summary.latency_during_ms = [f64::INFINITY, f64::NAN, -0.0];
        odd.summary.requests_per_admitted = f64::NAN;
        odd.events[0].at_s = f64::NAN;
        for s in &mut odd.seconds {
            s.messaging.p50_ms = Some(f64::NAN);
            s.messaging.p99_ms = Some(f64::INFINITY);
            s.messaging.p999_ms = None;
            s.admission_level = Some(f64::NAN);
        }
        for runs in [
            vec![],
            vec![empty.clone()],
            vec![single.clone()],
            vec![zeros.clone()],
            vec![odd.clone()],
            vec![empty, single, zeros, odd],
        ] {
            let page = html(&record(runs));
            assert_clean(&page);
        }
        let page = html(&record(vec![]));
        assert!(page.contains("no runs"));
    }

    #[test]
    fn single_second_draws_dots_and_empty_charts_say_so() {
        let mut single = run("single", 0, true);
        single.seconds.truncate(1);
        let page = html(&record(vec![single]));
        assert!(page.contains("<circle"));
        let empty = RunRecord::default();
        let page = html(&record(vec![empty]));
        assert_eq!(page.matches(">no data</text>").count(), 6);
    }

    #[test]
    fn all_none_latency_uses_default_decades() {
        let mut r = run("none", 80, true);
        for s in &mut r.seconds {
            s.messaging.p50_ms = None;
            s.messaging.p99_ms = None;
            s.messaging.p999_ms = None;
        }
        let scales = shared_scales(&[run_charts(&r)]);
        let latency = scales.get(3).map(|a| a.0.clone());
        assert_eq!(latency, Some(Scale::log10(None, None)));
        assert_clean(&html(&record(vec![r])));
    }

    #[test]
    fn both_runs_share_y_scales() {
        let on = run("admission on", 100, true);
        let off = run("admission off", 1000, true);
        let specs = vec![run_charts(&on), run_charts(&off)];
        let scales = shared_scales(&specs);
        assert_eq!(scales.len(), 6);
        // Messaging: the larger run (1000, plus headroom) decides the top, for both.
        let messaging = scales.first().map(|a| a.0.max);
        assert_eq!(messaging, Some(1500.0));
        // In the page, both runs' messaging charts (the first two SVGs) end at 1.5k.
        let page = html(&record(vec![on, off]));
        let all = svgs(&page);
        assert_eq!(all.len(), 12);
        for svg in all.iter().take(2) {
            assert!(svg.contains(">1.5k</text>"), "shared top tick missing");
        }
        // A run on its own gets its own, smaller scale.
        let alone = html(&record(vec![run("admission on", 100, true)]));
        let first = svgs(&alone).first().map(|s| s.contains(">1.5k</text>"));
        assert_eq!(first, Some(false));
    }

    #[test]
    fn linear_scale_is_nice_and_total() {
        let s = Scale::linear(1234.0, true, 5);
        assert_eq!(s.max, 1500.0);
        assert_eq!(s.ticks, vec![0.0, 500.0, 1000.0, 1500.0]);
        let s = Scale::linear(3.0, true, 5);
        assert_eq!(s.ticks, vec![0.0, 1.0, 2.0, 3.0]);
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let s = Scale::linear(bad, true, 5);
            assert_eq!(s.max, 1.0);
            assert_eq!(s.frac(0.5), 0.5);
        }
        assert_eq!(Scale::linear(1.0, true, 5).frac(f64::NAN), 0.0);
        assert_eq!(Scale::linear(1.0, true, 5).frac(7.0), 1.0);
    }

    #[test]
    fn log_scale_spans_whole_decades() {
        let s = Scale::log10(Some(1.5), Some(25_000.0));
        assert_eq!((s.min, s.max), (1.0, 100_000.0));
        assert_eq!(s.ticks.len(), 6);
        assert!((s.frac(100.0) - 0.4).abs() < 1e-9);
        assert_eq!(s.frac(0.0), 0.0);
        let s = Scale::log10(Some(10.0), Some(10.0));
        assert!(s.max > s.min);
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(12_345_678), "12,345,678");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(1500.0), "1.5k");
        assert_eq!(tick_label(2_000_000.0), "2M");
        assert_eq!(tick_label(0.001), "0.001");
        assert_eq!(tick_label(f64::NAN), "0");
        assert_eq!(percent(0.5), "50.00 %");
        assert_eq!(percent(f64::NAN), "n/a");
        assert_eq!(short_label("ééééé", 3), "éé…");
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }
}
