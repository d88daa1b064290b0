//! The results model: one measured run, latency percentiles, ratios to the
//! baselines, the median of repeated runs, the results table and the JSON
//! results file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::load::LoadOutcome;
use super::machine::Machine;
use super::{BenchArgs, Cell, Commit, Durability};

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    /// The `null` baseline.
    Null,
    /// The `fanout` baseline.
    Fanout,
    /// An AllData cluster.
    AllData { nodes: usize, cell: Cell },
}

impl System {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            System::Null => "null",
            System::Fanout => "fanout",
            System::AllData { .. } => "alldata",
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) mean: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

/// One measured run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunResult {
    /// `alldata`, `null` or `fanout`.
    pub(crate) system: String,
    pub(crate) nodes: Option<usize>,
    pub(crate) rf: Option<usize>,
    pub(crate) commit: Option<String>,
    pub(crate) durability: Option<String>,
    /// Events per request (1 = single-event requests).
    pub(crate) batch: usize,
    pub(crate) concurrency: usize,
    pub(crate) event_bytes: usize,
    pub(crate) seconds: f64,
    pub(crate) requests_ok: u64,
    pub(crate) events_ok: u64,
    pub(crate) events_per_sec: f64,
    pub(crate) requests_per_sec: f64,
    /// Per request (a whole batch for batch requests).
    pub(crate) latency_ms: Latency,
    /// Failed events by kind (`503 unavailable`, `timeout`, `batch:…`).
    pub(crate) errors: BTreeMap<String, u64>,
    /// With `--repeat`: events/s of every run of this cell, ascending; the
    /// other fields are the median run's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) runs: Vec<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl RunResult {
    pub(crate) fn new(
        system: System,
        batch: usize,
        concurrency: usize,
        event_bytes: usize,
        o: &LoadOutcome,
    ) -> Self {
        let secs = o.elapsed.as_secs_f64().max(1e-9);
        let h = &o.hist;
        let latency_ms = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                mean: h.mean() / 1000.0,
                p50: ms(h.value_at_quantile(0.5)),
                p90: ms(h.value_at_quantile(0.9)),
                p99: ms(h.value_at_quantile(0.99)),
                p999: ms(h.value_at_quantile(0.999)),
                max: ms(h.max()),
            }
        };
        let (nodes, rf, commit, durability) = match system {
            System::AllData { nodes, cell } => (
                Some(nodes),
                Some(cell.rf),
                Some(cell.commit.as_str().to_owned()),
                Some(cell.durability.as_str().to_owned()),
            ),
            _ => (None, None, None, None),
        };
        Self {
            system: system.name().to_owned(),
            nodes,
            rf,
            commit,
            durability,
            batch,
            concurrency,
            event_bytes,
            seconds: o.elapsed.as_secs_f64(),
            requests_ok: o.requests_ok,
            events_ok: o.events_ok,
            events_per_sec: o.events_ok as f64 / secs,
            requests_per_sec: o.requests_ok as f64 / secs,
            latency_ms,
            errors: o.errors.clone(),
            runs: Vec::new(),
        }
    }

    /// Whether `other` measured the same thing (system, shape, RF, level,
    /// durability, batch, concurrency).
    pub(crate) fn same_cell(&self, other: &RunResult) -> bool {
        (
            &self.system,
            self.nodes,
            self.rf,
            &self.commit,
            &self.durability,
            self.batch,
            self.concurrency,
        ) == (
            &other.system,
            other.nodes,
            other.rf,
            &other.commit,
            &other.durability,
            other.batch,
            other.concurrency,
        )
    }

    pub(super) fn is(
        &self,
        rf: usize,
        commit: Commit,
        durability: Durability,
        batch: usize,
        c: usize,
    ) -> bool {
        self.system == "alldata"
            && self.rf == Some(rf)
            && self.commit.as_deref() == Some(commit.as_str())
            && self.durability.as_deref() == Some(durability.as_str())
            && self.batch == batch
            && self.concurrency == c
    }

    fn shape(&self) -> String {
        match (self.rf, &self.commit, &self.durability) {
            (Some(rf), Some(c), Some(d)) => format!("RF{rf} {} {d}", c.to_uppercase()),
            _ => String::new(),
        }
    }

    /// A one-line summary for the log.
    pub(crate) fn one_line(&self) -> String {
        format!(
            "  {:<7} {:<20} batch={:<3} c={:<3} {:>9.0} events/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  errors: {}",
            self.system,
            self.shape(),
            self.batch,
            self.concurrency,
            self.events_per_sec,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.p999,
            errors_text(&self.errors)
        )
    }
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Our numbers divided by a baseline's at the same load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ratios {
    /// events/s ÷ baseline events/s (higher is better).
    pub(crate) events_per_sec: f64,
    /// p50 ÷ baseline p50 (lower is better).
    pub(crate) p50: f64,
    /// p99 ÷ baseline p99 (lower is better).
    pub(crate) p99: f64,
}

pub(super) fn div(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

pub(crate) fn ratios(ours: &RunResult, base: &RunResult) -> Ratios {
    Ratios {
        events_per_sec: div(ours.events_per_sec, base.events_per_sec),
        p50: div(ours.latency_ms.p50, base.latency_ms.p50),
        p99: div(ours.latency_ms.p99, base.latency_ms.p99),
    }
}

/// The baseline run at the same events per request and concurrency.
pub(super) fn baseline_for<'a>(
    results: &'a [RunResult],
    system: &str,
    ours: &RunResult,
) -> Option<&'a RunResult> {
    results
        .iter()
        .find(|r| r.system == system && r.batch == ours.batch && r.concurrency == ours.concurrency)
}

fn fmt_ratio(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.2}x"),
        _ => "-".into(),
    }
}

pub(super) fn fmt_int(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub(super) fn mode(batch: usize) -> String {
    if batch <= 1 {
        "single".into()
    } else {
        format!("batch {batch}")
    }
}

/// One result per cell: the median run (by events/s) of each cell's repeats,
/// carrying every run's events/s in `runs`. Cells keep their first-seen order.
pub(crate) fn medians(results: Vec<RunResult>) -> Vec<RunResult> {
    let mut groups: Vec<Vec<RunResult>> = Vec::new();
    for r in results {
        match groups.iter_mut().find(|g| g[0].same_cell(&r)) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|mut g| {
            if g.len() == 1 {
                return g.remove(0);
            }
            g.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
            let runs = g.iter().map(|r| r.events_per_sec).collect();
            let mut median = g.swap_remove((g.len() - 1) / 2);
            median.runs = runs;
            median
        })
        .collect()
}

/// Events/s, with the range of the repeats when there were several.
fn fmt_eps(r: &RunResult) -> String {
    match (r.runs.first(), r.runs.last()) {
        (Some(lo), Some(hi)) if r.runs.len() > 1 => format!(
            "{} ({}–{})",
            fmt_int(r.events_per_sec),
            fmt_int(*lo),
            fmt_int(*hi)
        ),
        _ => fmt_int(r.events_per_sec),
    }
}

/// A markdown table of `results`; AllData rows carry ratios to the baselines.
pub(crate) fn table(results: &[RunResult]) -> String {
    let mut s = String::new();
    s.push_str("| system | RF | commit | durability | mode | c | events/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | ev/s ÷ null | ev/s ÷ fanout | p50 ÷ fanout | p99 ÷ fanout |\n");
    s.push_str("|---|---|---|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|\n");
    for r in results {
        let (null, fanout) = if r.system == "alldata" {
            (
                baseline_for(results, "null", r).map(|b| ratios(r, b)),
                baseline_for(results, "fanout", r).map(|b| ratios(r, b)),
            )
        } else {
            (None, None)
        };
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            r.system,
            r.rf.map_or("-".into(), |x| x.to_string()),
            opt(&r.commit.as_ref().map(|c| c.to_uppercase())),
            opt(&r.durability),
            mode(r.batch),
            r.concurrency,
            fmt_eps(r),
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.p999,
            errors_text(&r.errors),
            fmt_ratio(null.map(|x| x.events_per_sec)),
            fmt_ratio(fanout.map(|x| x.events_per_sec)),
            fmt_ratio(fanout.map(|x| x.p50)),
            fmt_ratio(fanout.map(|x| x.p99)),
        );
    }
    s
}

fn one() -> usize {
    1
}

/// The JSON result file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResultsFile {
    pub(crate) generated_utc: String,
    pub(crate) command: String,
    pub(crate) machine: Machine,
    pub(crate) warmup_secs: f64,
    pub(crate) duration_secs: f64,
    pub(crate) requests: Option<u64>,
    pub(crate) event_bytes: usize,
    pub(crate) client_threads: usize,
    /// Runs per cell (the tables show the median).
    #[serde(default = "one")]
    pub(crate) repeat: usize,
    pub(crate) total_secs: f64,
    pub(crate) results: Vec<RunResult>,
}

impl ResultsFile {
    pub(crate) fn new(args: &BenchArgs, results: &[RunResult], took: Duration) -> Self {
        let data = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        Self {
            generated_utc: utc_now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: Machine::detect(&data),
            warmup_secs: args.warmup_secs,
            duration_secs: args.duration_secs,
            requests: args.requests,
            event_bytes: args.event_bytes,
            client_threads: args.client_threads,
            repeat: args.repeat,
            total_secs: took.as_secs_f64(),
            results: results.to_vec(),
        }
    }
}

pub(crate) fn write_json(path: &Path, doc: &ResultsFile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(doc)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A run of `system` at batch 1, c=64 with these events/s and latencies.
    pub(crate) fn result(system: &str, eps: f64, p50: f64, p99: f64) -> RunResult {
        RunResult {
            system: system.into(),
            nodes: None,
            rf: None,
            commit: None,
            durability: None,
            batch: 1,
            concurrency: 64,
            event_bytes: 1024,
            seconds: 3.0,
            requests_ok: (eps * 3.0) as u64,
            events_ok: (eps * 3.0) as u64,
            events_per_sec: eps,
            requests_per_sec: eps,
            latency_ms: Latency {
                p50,
                p99,
                ..Latency::default()
            },
            errors: BTreeMap::new(),
            runs: Vec::new(),
        }
    }

    #[test]
    fn medians_pick_each_cells_middle_run_and_keep_the_range() {
        let mut other = result("alldata", 9_000.0, 9.0, 9.0);
        other.concurrency = 1;
        let runs = vec![
            result("alldata", 30_000.0, 3.0, 6.0),
            other.clone(),
            result("alldata", 10_000.0, 1.0, 2.0),
            result("fanout", 20_000.0, 2.0, 4.0),
            result("alldata", 20_000.0, 2.0, 5.0),
        ];
        let m = medians(runs);
        assert_eq!(m.len(), 3, "three distinct cells, in first-seen order");
        assert_eq!(m[0].events_per_sec, 20_000.0);
        assert_eq!(m[0].latency_ms.p99, 5.0, "the median run's own latencies");
        assert_eq!(m[0].runs, vec![10_000.0, 20_000.0, 30_000.0]);
        assert_eq!(m[1], other, "a single run is kept as it is");
        assert_eq!(m[2].system, "fanout");
        assert!(table(&m).contains("| 20,000 (10,000–30,000) |"));
    }

    #[test]
    fn ratios_divide_ours_by_the_baseline() {
        let ours = result("alldata", 15_000.0, 3.0, 6.0);
        let base = result("fanout", 20_000.0, 2.0, 4.0);
        let r = ratios(&ours, &base);
        assert!((r.events_per_sec - 0.75).abs() < 1e-9);
        assert!((r.p50 - 1.5).abs() < 1e-9);
        assert!((r.p99 - 1.5).abs() < 1e-9);
        assert!(ratios(&ours, &result("null", 0.0, 0.0, 0.0)).p50.is_nan());
        assert_eq!(fmt_ratio(Some(f64::NAN)), "-");
        assert_eq!(fmt_ratio(Some(1.234)), "1.23x");
    }

    #[test]
    fn stats_come_from_the_histogram() {
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            hist.record(us * 10).unwrap(); // 10 µs .. 10 ms
        }
        let outcome = LoadOutcome {
            hist,
            requests_ok: 1000,
            events_ok: 100_000,
            errors: BTreeMap::from([("503 unavailable".to_owned(), 7)]),
            elapsed: Duration::from_secs(2),
        };
        let r = RunResult::new(System::Null, 100, 8, 1024, &outcome);
        assert_eq!(r.events_per_sec, 50_000.0);
        assert_eq!(r.requests_per_sec, 500.0);
        assert!(
            (r.latency_ms.p50 - 5.0).abs() < 0.01,
            "{}",
            r.latency_ms.p50
        );
        assert!(
            (r.latency_ms.p99 - 9.9).abs() < 0.01,
            "{}",
            r.latency_ms.p99
        );
        assert!((r.latency_ms.max - 10.0).abs() < 0.01);
        assert_eq!(errors_text(&r.errors), "503 unavailable: 7");
        assert_eq!(fmt_int(1_234_567.4), "1,234,567");
        assert_eq!(fmt_int(999.0), "999");
    }

    #[test]
    fn the_table_puts_ratios_on_our_rows() {
        let mut ours = result("alldata", 10_000.0, 4.0, 8.0);
        ours.rf = Some(3);
        ours.commit = Some("quorum".into());
        ours.durability = Some("buffered".into());
        let rows = vec![
            result("null", 40_000.0, 1.0, 2.0),
            result("fanout", 20_000.0, 2.0, 4.0),
            ours,
        ];
        let t = table(&rows);
        let line = t.lines().find(|l| l.starts_with("| alldata")).unwrap();
        assert!(
            line.ends_with("| 0.25x | 0.50x | 2.00x | 2.00x |"),
            "{line}"
        );
    }

    #[test]
    fn dates_are_civil() {
        let s = utc_now();
        assert!(
            s.len() == 20 && s.ends_with(" UTC") && s.starts_with("20"),
            "{s}"
        );
    }
}
