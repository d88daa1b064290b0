//! The flags of `alldata bench` and the names of what it measures.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::ValueEnum;

/// Commit level of the benchmarked writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Commit {
    /// One replica (the local one) acknowledged.
    One,
    /// floor(RF/2)+1 replicas acknowledged.
    Quorum,
    /// All RF replicas acknowledged.
    All,
}

impl Commit {
    /// The query/flag value (`one`, `quorum`, `all`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Commit::One => "one",
            Commit::Quorum => "quorum",
            Commit::All => "all",
        }
    }
}

/// Storage durability of the benchmarked nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Durability {
    /// OS-buffered writes.
    Buffered,
    /// fsync before acknowledging (group commit).
    Sync,
}

impl Durability {
    /// The `--durability` value of `alldata node`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Durability::Buffered => "buffered",
            Durability::Sync => "sync",
        }
    }
}

/// `alldata bench`: drive a local cluster over HTTP and compare it with baselines.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Nodes in the local cluster, each an `alldata node` child process on 127.0.0.1.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// Replication factor (replicas per event, the local one included).
    #[arg(long, default_value_t = 3)]
    pub(crate) rf: usize,
    /// Commit level of every write.
    #[arg(long, value_enum, default_value = "quorum")]
    pub(crate) commit: Commit,
    /// Storage durability of the nodes.
    #[arg(long, value_enum, default_value = "buffered")]
    pub(crate) durability: Durability,
    /// Placement strategy: replicas put in other zones of the region (nodes are
    /// spread round-robin over eu/a, eu/b, us/a).
    #[arg(long, default_value_t = 0)]
    pub(crate) other_zone_replicas: usize,
    /// Placement strategy: replicas put in other regions.
    #[arg(long, default_value_t = 0)]
    pub(crate) other_region_replicas: usize,
    /// Requests in flight (closed-loop workers, one connection each); a comma
    /// list or repeated flag runs one measurement per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64])]
    pub(crate) concurrency: Vec<usize>,
    /// Size of one JSON event in bytes.
    #[arg(long, default_value_t = 1024)]
    pub(crate) event_bytes: usize,
    /// Events per request: 1 sends single events to `POST /events`, more sends
    /// NDJSON batches to `POST /events/batch`.
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// Measured seconds per run (at most 600).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration_secs: f64,
    /// Measure this many requests instead of a duration (still stops after 600 s).
    #[arg(long)]
    pub(crate) requests: Option<u64>,
    /// Unmeasured warm-up seconds before each run.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup_secs: f64,
    /// Run every measurement this many times (in rounds) and report each
    /// cell's median run by events/s, with the range of the runs (1..=9).
    #[arg(long, default_value_t = 1)]
    pub(crate) repeat: usize,
    /// Skip the `null` and `fanout` baselines.
    #[arg(long)]
    pub(crate) no_baselines: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Run the full report matrix and write `BENCHMARKS.md`, `bench/results.json`
    /// and `bench/throughput_p99.png` under `--docs-dir` (ignores the cluster
    /// shape flags above; uses the duration, warm-up and event size).
    #[arg(long)]
    pub(crate) matrix: bool,
    /// Where `--matrix` writes the report.
    #[arg(long, default_value = "docs")]
    pub(crate) docs_dir: PathBuf,
    /// With `--matrix`: measure nothing, rewrite the report (markdown and plot)
    /// from the existing `bench/results.json` under `--docs-dir`.
    #[arg(long, requires = "matrix")]
    pub(crate) render_only: bool,
    /// Load an already running cluster instead of starting one: its client API
    /// addresses (127.0.0.1 only; repeatable or comma list).
    #[arg(long, value_delimiter = ',')]
    pub(crate) target: Vec<SocketAddr>,
    /// Client threads of the load generator (each a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub(crate) client_threads: usize,
    /// Parent directory of the nodes' temporary data directories (default: the
    /// system temp dir). Sync numbers mean little on tmpfs.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) request_timeout_ms: u64,
    /// Nodes to hang (SIGSTOP: the kernel still accepts their connections,
    /// nothing answers) once the cluster is up, the last ones started; they
    /// stay members, and load goes to the others. Shows the write path with
    /// a hung peer.
    #[arg(long, default_value_t = 0)]
    pub(crate) hang_nodes: usize,
    /// Internal: serve a baseline on this address (null, or fanout with --forward).
    #[arg(long, hide = true)]
    pub(crate) serve_baseline: Option<SocketAddr>,
    /// Internal: the peers a fanout baseline forwards to.
    #[arg(long, hide = true)]
    pub(crate) forward: Vec<SocketAddr>,
}
