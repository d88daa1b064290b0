//! Results: the table, ratios to the baselines, the JSON file, the markdown
//! report and the plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::load::LoadOutcome;
use super::{BenchArgs, Cell, Commit, Durability, MATRIX_BATCH};

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

    fn is(
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

fn div(a: f64, b: f64) -> f64 {
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
fn baseline_for<'a>(
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

fn fmt_int(x: f64) -> String {
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

fn mode(batch: usize) -> String {
    if batch <= 1 {
        "single".into()
    } else {
        format!("batch {batch}")
    }
}

/// A markdown table of `results`; AllData rows carry ratios to the baselines.
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

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) memory: String,
    pub(crate) data_filesystem: String,
}

impl Machine {
    fn detect(data_dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kb: u64 = m
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            memory,
            data_filesystem: super::procs::filesystem_of(data_dir)
                .unwrap_or_else(|| "unknown".into()),
        }
    }
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

fn find(
    results: &[RunResult],
    rf: usize,
    commit: Commit,
    durability: Durability,
    batch: usize,
    c: usize,
) -> Option<&RunResult> {
    results
        .iter()
        .find(|r| r.is(rf, commit, durability, batch, c))
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// The issue's targets, evaluated: (target, measured, verdict).
pub(crate) fn targets(results: &[RunResult]) -> Vec<(String, String, &'static str)> {
    use Commit::Quorum;
    use Durability::{Buffered, Sync};
    let mut rows = Vec::new();
    let fanout = |batch: usize, c: usize| {
        results
            .iter()
            .find(|r| r.system == "fanout" && r.batch == batch && r.concurrency == c)
    };

    // 1. RF=3 QUORUM single, c=64: >= 1.0x fanout, p99 <= 5 ms.
    for d in [Buffered, Sync] {
        let ours = find(results, 3, Quorum, d, 1, 64);
        let base = fanout(1, 64);
        let (text, ok) = match (ours, base) {
            (Some(o), Some(b)) => {
                let r = ratios(o, b);
                (
                    format!(
                        "{} events/s = {:.2}x fanout ({} req/s); p99 {:.2} ms",
                        fmt_int(o.events_per_sec),
                        r.events_per_sec,
                        fmt_int(b.events_per_sec),
                        o.latency_ms.p99
                    ),
                    Some(r.events_per_sec >= 1.0 && o.latency_ms.p99 <= 5.0),
                )
            }
            _ => ("-".into(), None),
        };
        rows.push((
            format!(
                "RF=3 QUORUM single, c=64 ({}): >= 1.0x fanout and p99 <= 5 ms",
                d.as_str()
            ),
            text,
            verdict(ok),
        ));
    }

    // 2. Sync >= 50% of buffered at the same settings.
    let mut parts = Vec::new();
    let mut all_ok = None;
    for batch in [1, MATRIX_BATCH] {
        for c in [1, 64] {
            if let (Some(s), Some(b)) = (
                find(results, 3, Quorum, Sync, batch, c),
                find(results, 3, Quorum, Buffered, batch, c),
            ) {
                let x = div(s.events_per_sec, b.events_per_sec);
                parts.push(format!("{} c={c}: {:.0}%", mode(batch), x * 100.0));
                all_ok = Some(all_ok.unwrap_or(true) && x >= 0.5);
            }
        }
    }
    rows.push((
        "Sync >= 50% of buffered (RF=3 QUORUM, each mode and concurrency)".into(),
        parts.join("; "),
        verdict(all_ok),
    ));

    // 3. Batch ingest RF=3 QUORUM >= 100k events/s.
    for d in [Buffered, Sync] {
        let best = [1, 64]
            .iter()
            .filter_map(|c| find(results, 3, Quorum, d, MATRIX_BATCH, *c))
            .max_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
        rows.push((
            format!(
                "Batch ({MATRIX_BATCH} events/request) RF=3 QUORUM ({}): >= 100k events/s",
                d.as_str()
            ),
            best.map_or("-".into(), |b| {
                format!(
                    "{} events/s at c={}",
                    fmt_int(b.events_per_sec),
                    b.concurrency
                )
            }),
            verdict(best.map(|b| b.events_per_sec >= 100_000.0)),
        ));
    }

    // 4. c=1 RF=3 QUORUM p50 <= 1.3x fanout's c=1 p50.
    for d in [Buffered, Sync] {
        let (text, ok) = match (find(results, 3, Quorum, d, 1, 1), fanout(1, 1)) {
            (Some(o), Some(b)) => {
                let r = ratios(o, b);
                (
                    format!(
                        "p50 {:.3} ms vs fanout {:.3} ms = {:.2}x",
                        o.latency_ms.p50, b.latency_ms.p50, r.p50
                    ),
                    Some(r.p50 <= 1.3),
                )
            }
            _ => ("-".into(), None),
        };
        rows.push((
            format!(
                "c=1 RF=3 QUORUM ({}): p50 <= 1.3x fanout c=1 p50",
                d.as_str()
            ),
            text,
            verdict(ok),
        ));
    }
    rows
}

fn include(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// `docs/BENCHMARKS.md`.
pub(crate) fn markdown(doc: &ResultsFile, docs_dir: &Path, plotted: bool) -> String {
    let results = &doc.results;
    let m = &doc.machine;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# AllData benchmarks\n\n\
         <!-- Generated by `scripts/bench.sh` (alldata bench --matrix); edit \
         docs/bench/analysis.md, not this file. -->\n\n\
         Generated {} by `scripts/bench.sh` (which builds the release binary, runs the \
         criterion micro-benchmarks into `docs/bench/micro.txt` and then \
         `alldata bench --matrix`). Raw numbers: [`bench/results.json`](bench/results.json).\n",
        doc.generated_utc
    );
    let _ = writeln!(
        s,
        "## Machine and method\n\n\
         - {} CPUs: {}; {} RAM; Linux {}; node data on {} (a fresh temporary directory per cell).\n\
         - Every cell starts a fresh cluster of 3 `alldata node` processes on 127.0.0.1 \
         (zones eu/a, eu/b, us/a; RF and durability as listed), waits for `/health`, runs \
         {} s of unmeasured warm-up and {} s of measurement, then kills the nodes.\n\
         - The load generator is `alldata bench` itself, in its own process on {} \
         single-threaded client runtime(s): `c` closed-loop workers, each with one keep-alive \
         HTTP/1.1 connection (hyper), spread round-robin over the nodes. Events are {} byte \
         JSON objects; *single* is `POST /events?commit=…` (201), *batch 100* is \
         100 NDJSON lines to `POST /events/batch?commit=…` (200 + one result line per event).\n\
         - Latency is per request (for a batch: the whole batch), from an HDR histogram.\n\
         - Each cell ran {} time(s), in rounds over the whole matrix; the table shows the \
         median run by events/s (its latencies too) and, in parentheses, the lowest and \
         highest events/s of the runs.\n\
         - Baselines, same load generator, same machine, same HTTP stack as the node \
         (axum/hyper, HTTP/1.1, TCP_NODELAY; forwarding with hyper-util's pooled HTTP/1.1 client, the client the peer transport uses too): \
         `null` answers 201 after reading the body; `fanout` posts the body to two `null` \
         processes in parallel and answers 201 when both have answered. The cluster and the \
         baselines share the same 2 cores with the load generator, so only ratios are meaningful.\n\
         - The whole matrix took {:.0} s.\n",
        m.cpus,
        m.cpu_model,
        m.memory,
        m.kernel,
        m.data_filesystem,
        doc.warmup_secs,
        doc.duration_secs,
        doc.client_threads,
        doc.event_bytes,
        doc.repeat,
        doc.total_secs
    );

    s.push_str("## Targets (issue 5)\n\n| target | measured | verdict |\n|---|---|---|\n");
    for (t, measured, v) in targets(results) {
        let _ = writeln!(s, "| {t} | {measured} | {v} |");
    }
    s.push('\n');

    s.push_str("## Baselines\n\n");
    let baselines: Vec<RunResult> = results
        .iter()
        .filter(|r| r.system != "alldata")
        .cloned()
        .collect();
    s.push_str(&table(&baselines));
    s.push('\n');

    s.push_str(
        "## Matrix\n\nRatios compare with the baseline at the same mode and concurrency \
         (events/s: higher is better; latency: lower is better). With RF=1 the commit level \
         makes no difference (every level needs the one local replica).\n\n",
    );
    let mut ours: Vec<RunResult> = results
        .iter()
        .filter(|r| r.system == "alldata")
        .cloned()
        .collect();
    let rank = |c: &Option<String>| match c.as_deref() {
        Some("one") => 0,
        Some("quorum") => 1,
        _ => 2,
    };
    ours.sort_by_key(|r| {
        (
            r.rf,
            r.durability.clone(),
            r.batch,
            rank(&r.commit),
            r.concurrency,
        )
    });
    // The ratio columns need the baselines in the slice; print only our rows.
    let mut with_base = baselines.clone();
    with_base.extend(ours.iter().cloned());
    let full = table(&with_base);
    let mut lines = full.lines();
    for line in lines.by_ref().take(2) {
        let _ = writeln!(s, "{line}");
    }
    for line in lines.filter(|l| l.starts_with("| alldata")) {
        let _ = writeln!(s, "{line}");
    }
    s.push('\n');

    s.push_str("## Throughput and p99 against concurrency\n\n");
    if plotted {
        s.push_str(
            "![events/s (left) and p99 latency in ms (right) against concurrency 1, 4, 16, 64 \
             for RF=3 QUORUM single events, buffered and sync, with the null and fanout \
             baselines](bench/throughput_p99.png)\n\n",
        );
    }
    s.push_str(
        "Left: events/s; right: p99 latency (ms); x: requests in flight (log scale). \
         RF=3 QUORUM single events against the baselines:\n\n\
         | c | buffered events/s | sync events/s | fanout req/s | null req/s | buffered p99 ms | sync p99 ms | fanout p99 ms | null p99 ms |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for c in super::SWEEP_CONCURRENCY {
        let get = |sys: &str, d: Option<Durability>| {
            results.iter().find(|r| {
                r.batch == 1
                    && r.concurrency == c
                    && match d {
                        Some(d) => r.is(3, Commit::Quorum, d, 1, c),
                        None => r.system == sys,
                    }
            })
        };
        let eps = |r: Option<&RunResult>| r.map_or("-".into(), |r| fmt_int(r.events_per_sec));
        let p99 =
            |r: Option<&RunResult>| r.map_or("-".into(), |r| format!("{:.2}", r.latency_ms.p99));
        let (b, y, f, n) = (
            get("", Some(Durability::Buffered)),
            get("", Some(Durability::Sync)),
            get("fanout", None),
            get("null", None),
        );
        let _ = writeln!(
            s,
            "| {c} | {} | {} | {} | {} | {} | {} | {} | {} |",
            eps(b),
            eps(y),
            eps(f),
            eps(n),
            p99(b),
            p99(y),
            p99(f),
            p99(n)
        );
    }
    s.push('\n');

    s.push_str("## Micro-benchmarks\n\n");
    match include(&docs_dir.join("bench/micro.txt")) {
        Some(text) => {
            s.push_str(
                "Written to `docs/bench/micro.txt` by `scripts/bench.sh`: criterion for keygen and \
                 the coordinator (`cargo bench -p alldata-keygen -p alldata-coordinator -- \
                 --warm-up-time 1 --measurement-time 3`; the coordinator puts go through the \
                 in-memory simulated network and storage; time per iteration as [low, estimate, \
                 high]), then the storage benchmark's own table (`ALLDATA_BENCH_PUTS=10000 \
                 ALLDATA_BENCH_SCAN_EVENTS=200000 cargo bench -p alldata-storage-leveldb`):\n\n```text\n",
            );
            s.push_str(text.trim_end());
            s.push_str("\n```\n\n");
        }
        None => s.push_str("Not run (see `scripts/bench.sh`).\n\n"),
    }

    s.push_str("## Analysis\n\n");
    match include(&docs_dir.join("bench/analysis.md")) {
        Some(text) => {
            s.push_str(text.trim_end());
            s.push('\n');
        }
        None => s.push_str("(none yet: write docs/bench/analysis.md)\n"),
    }
    s
}

fn register_font() -> bool {
    let mut candidates: Vec<String> = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Ok(out) = std::process::Command::new("fc-match")
        .args(["--format=%{file}", "sans-serif"])
        .output()
        && out.status.success()
    {
        candidates.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                bytes,
            )
            .is_ok()
            {
                return true;
            }
        }
    }
    false
}

type Series = (String, plotters::style::RGBColor, Vec<(f64, f64)>);

/// Throughput and p99 against concurrency (log2 x axis) as a PNG.
pub(crate) fn plot(results: &[RunResult], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    anyhow::ensure!(
        register_font(),
        "no TrueType font found (install fonts-dejavu-core)"
    );
    let pick = |pred: &dyn Fn(&RunResult) -> bool| {
        let mut v: Vec<&RunResult> = results.iter().filter(|r| pred(r)).collect();
        v.sort_by_key(|r| r.concurrency);
        v
    };
    let lines: Vec<(String, RGBColor, Vec<&RunResult>)> = vec![
        (
            "AllData RF=3 QUORUM buffered".into(),
            RGBColor(31, 119, 180),
            pick(&|r| {
                r.batch == 1 && r.is(3, Commit::Quorum, Durability::Buffered, 1, r.concurrency)
            }),
        ),
        (
            "AllData RF=3 QUORUM sync".into(),
            RGBColor(214, 39, 40),
            pick(&|r| r.batch == 1 && r.is(3, Commit::Quorum, Durability::Sync, 1, r.concurrency)),
        ),
        (
            "fanout baseline".into(),
            RGBColor(44, 160, 44),
            pick(&|r| r.system == "fanout" && r.batch == 1),
        ),
        (
            "null baseline".into(),
            RGBColor(127, 127, 127),
            pick(&|r| r.system == "null" && r.batch == 1),
        ),
    ];
    let series = |metric: fn(&RunResult) -> f64| -> Vec<Series> {
        lines
            .iter()
            .filter(|(_, _, v)| !v.is_empty())
            .map(|(name, color, v)| {
                let pts = v
                    .iter()
                    .map(|r| ((r.concurrency as f64).log2(), metric(r)))
                    .collect();
                (name.clone(), *color, pts)
            })
            .collect()
    };
    let panels: [(&str, &str, Vec<Series>); 2] = [
        ("Throughput", "events/s", series(|r| r.events_per_sec)),
        ("p99 latency", "ms", series(|r| r.latency_ms.p99)),
    ];
    let max_x = results
        .iter()
        .map(|r| (r.concurrency as f64).log2())
        .fold(1.0f64, f64::max);

    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let halves = root.split_evenly((1, 2));
    for (area, (title, unit, data)) in halves.iter().zip(panels) {
        let max_y = data
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
            .fold(0.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 26))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.2f64..max_x + 0.2, 0f64..max_y.max(1e-3))?;
        chart
            .configure_mesh()
            .x_desc("concurrency (requests in flight)")
            .y_desc(unit)
            .x_labels(((max_x + 0.4) as usize) + 1)
            .x_label_formatter(&|x| format!("{}", 2f64.powf(x.round()).round()))
            .y_label_formatter(&|y| {
                if *y >= 1000.0 {
                    format!("{:.0}k", y / 1000.0)
                } else if *y >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.1}")
                }
            })
            .label_style(("sans-serif", 16))
            .draw()?;
        for (name, color, pts) in data {
            let style = color.stroke_width(3);
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(system: &str, eps: f64, p50: f64, p99: f64) -> RunResult {
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
        let verdicts = targets(&rows);
        assert!(verdicts[0].1.contains("0.50x fanout"), "{:?}", verdicts[0]);
        assert_eq!(verdicts[0].2, "**missed**");
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
