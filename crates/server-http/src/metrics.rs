//! The API's own counters and histograms, rendered as Prometheus text.
//!
//! No process-global recorder: every [`crate::ApiState`] owns its metrics, so
//! several nodes in one process (tests, embedders) never mix their numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alldata_coordinator::{CommitLevel, NodeId, ReplicationReport, Stats};

const LEVELS: [CommitLevel; 3] = [CommitLevel::One, CommitLevel::Quorum, CommitLevel::All];

fn level_index(level: CommitLevel) -> usize {
    match level {
        CommitLevel::One => 0,
        CommitLevel::Quorum => 1,
        CommitLevel::All => 2,
    }
}

/// How one client put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutOutcome {
    Created,
    Existing,
    Conflict,
    Rejected,
    NotEnoughNodes,
    CommitNotReached,
    Timeout,
    Overloaded,
    Error,
}

impl PutOutcome {
    const ALL: [PutOutcome; 9] = [
        PutOutcome::Created,
        PutOutcome::Existing,
        PutOutcome::Conflict,
        PutOutcome::Rejected,
        PutOutcome::NotEnoughNodes,
        PutOutcome::CommitNotReached,
        PutOutcome::Timeout,
        PutOutcome::Overloaded,
        PutOutcome::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            PutOutcome::Created => "created",
            PutOutcome::Existing => "existing",
            PutOutcome::Conflict => "conflict",
            PutOutcome::Rejected => "rejected",
            PutOutcome::NotEnoughNodes => "not_enough_nodes",
            PutOutcome::CommitNotReached => "commit_not_reached",
            PutOutcome::Timeout => "timeout",
            PutOutcome::Overloaded => "overloaded",
            PutOutcome::Error => "error",
        }
    }
}

/// Where a `GET /events/{key}` found its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadAnswer {
    Local,
    Peer,
    NotFound,
    Unavailable,
    Error,
}

impl ReadAnswer {
    const ALL: [ReadAnswer; 5] = [
        ReadAnswer::Local,
        ReadAnswer::Peer,
        ReadAnswer::NotFound,
        ReadAnswer::Unavailable,
        ReadAnswer::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ReadAnswer::Local => "local",
            ReadAnswer::Peer => "peer",
            ReadAnswer::NotFound => "not_found",
            ReadAnswer::Unavailable => "unavailable",
            ReadAnswer::Error => "error",
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations, lock-free.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        // The count is the +Inf bucket, so the two always agree.
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A counter that another part of the node keeps (the replica endpoint, the
/// peer client), rendered with the API's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The metric name, e.g. `alldata_peer_server_batches_total`.
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The current value.
    pub value: u64,
}

/// Reads a set of [`Counter`]s when `GET /metrics` renders.
pub type CounterSource = std::sync::Arc<dyn Fn() -> Vec<Counter> + Send + Sync>;

/// The metrics of one API instance.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    puts: [[AtomicU64; PutOutcome::ALL.len()]; 3],
    put_latency: [Histogram; 3],
    batch_requests: AtomicU64,
    batch_lines: AtomicU64,
    reads: [AtomicU64; ReadAnswer::ALL.len()],
    scans: AtomicU64,
    scanned_events: AtomicU64,
    exports: AtomicU64,
    exported_events: AtomicU64,
    export_source_failures: AtomicU64,
    export_conflicts: AtomicU64,
    reports_complete: AtomicU64,
    reports_under_replicated: AtomicU64,
    reports_stopped_by_cap: AtomicU64,
    /// `(peer, outcome) -> count` of replica writes, from replication reports.
    replica_writes: Mutex<BTreeMap<(NodeId, &'static str), u64>>,
    /// Responses by status code (100 to 599, the only codes HTTP has):
    /// counted without a lock on every request.
    responses: StatusCounts,
}

/// A counter per HTTP status code.
struct StatusCounts([AtomicU64; 500]);

impl Default for StatusCounts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl std::fmt::Debug for StatusCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl StatusCounts {
    fn count(&self, status: u16) {
        if let Some(n) = status
            .checked_sub(100)
            .and_then(|i| self.0.get(usize::from(i)))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(status, count)` of the codes seen, in order.
    fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        (100u16..).zip(&self.0).filter_map(|(status, n)| {
            let n = n.load(Ordering::Relaxed);
            (n > 0).then_some((status, n))
        })
    }
}

impl Metrics {
    pub(crate) fn put(&self, level: CommitLevel, outcome: PutOutcome, elapsed: Duration) {
        let l = level_index(level);
        let o = PutOutcome::ALL
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(PutOutcome::ALL.len() - 1);
        self.puts[l][o].fetch_add(1, Ordering::Relaxed);
        self.put_latency[l].observe(elapsed);
    }

    pub(crate) fn batch(&self, lines: usize) {
        self.batch_requests.fetch_add(1, Ordering::Relaxed);
        self.batch_lines.fetch_add(lines as u64, Ordering::Relaxed);
    }

    pub(crate) fn read(&self, outcome: ReadAnswer) {
        let i = ReadAnswer::ALL
            .iter()
            .position(|x| *x == outcome)
            .unwrap_or(0);
        self.reads[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn scan(&self) {
        self.scans.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn scanned(&self, events: u64) {
        self.scanned_events.fetch_add(events, Ordering::Relaxed);
    }

    pub(crate) fn export(&self) {
        self.exports.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn exported(&self, events: u64) {
        self.exported_events.fetch_add(events, Ordering::Relaxed);
    }

    pub(crate) fn export_source_failed(&self) {
        self.export_source_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn export_conflict(&self) {
        self.export_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn response(&self, status: u16) {
        self.responses.count(status);
    }

    /// Counts a put's final replication outcome.
    pub(crate) fn report(&self, report: &ReplicationReport) {
        if report.is_complete() {
            self.reports_complete.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reports_under_replicated
                .fetch_add(1, Ordering::Relaxed);
        }
        if report.stopped_by_cap {
            self.reports_stopped_by_cap.fetch_add(1, Ordering::Relaxed);
        }
        let mut map = self
            .replica_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for holder in &report.holders {
            // A node id is shared, not copied: no allocation per write.
            *map.entry((holder.clone(), "ok")).or_default() += 1;
        }
        for failure in &report.failures {
            *map.entry((failure.node.clone(), failure.error.kind().as_str()))
                .or_default() += 1;
        }
    }

    /// Renders everything in the Prometheus text format (version 0.0.4).
    /// `peers_up` is `(peer, up)` for every known peer; `extra` are the
    /// embedder's counters ([`crate::ApiConfig::with_counters`]).
    pub(crate) fn render(
        &self,
        stats: &Stats,
        peers_up: &[(String, bool)],
        extra: &[Counter],
        catching_up: bool,
    ) -> String {
        let mut out = String::with_capacity(8 * 1024);

        header(
            &mut out,
            "alldata_api_puts_total",
            "counter",
            "Client puts by commit level and outcome.",
        );
        for (l, level) in LEVELS.iter().enumerate() {
            for (o, outcome) in PutOutcome::ALL.iter().enumerate() {
                let n = self.puts[l][o].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "alldata_api_puts_total{{level=\"{level}\",outcome=\"{}\"}} {n}",
                    outcome.as_str()
                );
            }
        }

        header(
            &mut out,
            "alldata_api_put_duration_seconds",
            "histogram",
            "Time from request to answer of client puts, by commit level.",
        );
        for (l, level) in LEVELS.iter().enumerate() {
            self.put_latency[l].render(
                &mut out,
                "alldata_api_put_duration_seconds",
                &format!("level=\"{level}\""),
            );
        }

        counter(
            &mut out,
            "alldata_api_batch_requests_total",
            "Batch requests received.",
            self.batch_requests.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "alldata_api_batch_lines_total",
            "Events received in batches.",
            self.batch_lines.load(Ordering::Relaxed),
        );

        header(
            &mut out,
            "alldata_api_reads_total",
            "counter",
            "Reads of one event by where the answer came from.",
        );
        for (i, outcome) in ReadAnswer::ALL.iter().enumerate() {
            let n = self.reads[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "alldata_api_reads_total{{outcome=\"{}\"}} {n}",
                outcome.as_str()
            );
        }
        counter(
            &mut out,
            "alldata_api_scans_total",
            "Scans started.",
            self.scans.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "alldata_api_scanned_events_total",
            "Events streamed by scans.",
            self.scanned_events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "alldata_api_exports_total",
            "Exports started (GET /export, GET /intervals/{name}/export).",
            self.exports.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "alldata_api_exported_events_total",
            "Events streamed by exports.",
            self.exported_events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "alldata_api_cluster_read_source_failures_total",
            "Members whose scan failed in the middle of a cluster-wide export or scan.",
            self.export_source_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "alldata_api_cluster_read_conflicts_total",
            "Keys for which two members returned different bytes in a cluster-wide read (the first was kept).",
            self.export_conflicts.load(Ordering::Relaxed),
        );

        header(
            &mut out,
            "alldata_api_responses_total",
            "counter",
            "HTTP responses by status code.",
        );
        for (status, n) in self.responses.iter() {
            let _ = writeln!(
                out,
                "alldata_api_responses_total{{status=\"{status}\"}} {n}"
            );
        }

        header(
            &mut out,
            "alldata_replica_writes_total",
            "counter",
            "Finished replica writes by node and outcome (from replication reports).",
        );
        for ((peer, outcome), n) in self
            .replica_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "alldata_replica_writes_total{{peer=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(peer.as_str())
            );
        }

        header(
            &mut out,
            "alldata_replication_reports_total",
            "counter",
            "Puts whose replica writes all finished, by final outcome.",
        );
        let _ = writeln!(
            out,
            "alldata_replication_reports_total{{outcome=\"complete\"}} {}",
            self.reports_complete.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "alldata_replication_reports_total{{outcome=\"under_replicated\"}} {}",
            self.reports_under_replicated.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "alldata_replication_stopped_by_cap_total",
            "Puts whose replacement cap stopped further attempts before RF replicas.",
            self.reports_stopped_by_cap.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "alldata_coordinator_puts_acked_total",
            "Puts the coordinator acknowledged.",
            stats.puts_acked,
        );
        counter(
            &mut out,
            "alldata_coordinator_puts_failed_total",
            "Puts the coordinator answered with an error.",
            stats.puts_failed,
        );
        counter(
            &mut out,
            "alldata_coordinator_replacements_total",
            "Replacement writes started on unused peers (retries).",
            stats.replacements,
        );
        header(
            &mut out,
            "alldata_peer_up",
            "gauge",
            "1 when the peer answered lately, else 0.",
        );
        for (peer, up) in peers_up {
            let _ = writeln!(
                out,
                "alldata_peer_up{{peer=\"{}\"}} {}",
                escape(peer),
                u8::from(*up)
            );
        }
        for c in extra {
            counter(&mut out, c.name, c.help, c.value);
        }
        header(
            &mut out,
            "alldata_catching_up",
            "gauge",
            "1 while this node catches up after starting with an empty storage (it decides no key it may have lost and its \"not found\" does not count), else 0.",
        );
        let _ = writeln!(out, "alldata_catching_up {}", u8::from(catching_up));
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_keep_every_http_code_in_order_and_ignore_the_rest() {
        let counts = StatusCounts::default();
        for status in [503, 201, 201, 100, 599, 99, 600, 0, u16::MAX] {
            counts.count(status);
        }
        assert_eq!(
            counts.iter().collect::<Vec<_>>(),
            [(100, 1), (201, 2), (503, 1), (599, 1)]
        );
    }

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "level=\"one\"");
        assert!(out.contains("x_bucket{level=\"one\",le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_bucket{level=\"one\",le=\"0.025\"} 2\n"));
        assert!(out.contains("x_bucket{level=\"one\",le=\"10\"} 2\n"));
        assert!(out.contains("x_bucket{level=\"one\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{level=\"one\"} 3\n"));
        assert!(out.contains("x_sum{level=\"one\"} 60.0203\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
