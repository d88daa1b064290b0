//! `alldata bench`: a load generator for a local cluster, with baselines.
//!
//! It starts a cluster of `alldata node` child processes on 127.0.0.1 (or
//! targets one given with `--target`, loopback only), drives it over HTTP with
//! closed-loop workers, and prints events/s, p50/p90/p99/p99.9 latency and
//! errors by kind. In the same run it measures two baselines with the same load
//! generator on the same machine, and prints the results as ratios to them:
//!
//! - `null`: a minimal server on the node's HTTP stack answering 201 with no work;
//! - `fanout`: a minimal server that posts the body to two `null` peers in
//!   parallel before answering 201 (the shape of an RF=3 write without storage
//!   or coordination).
//!
//! `--matrix` runs the report matrix (RF 1/3 × ONE/QUORUM/ALL × single/batch ×
//! buffered/sync × concurrency 1/64, plus a concurrency sweep) and writes
//! `docs/BENCHMARKS.md`, `docs/bench/results.json` and a PNG plot.
//! The report's targets section, when there is one, comes from the data file
//! `docs/bench/targets.json` (see `targets`), not from the code.
//!
//! Every run is bounded in time (and optionally in count) and stops by itself.

mod args;
mod baseline;
mod load;
mod machine;
mod markdown;
mod model;
mod plot;
mod procs;
mod targets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub(crate) use args::{BenchArgs, Commit, Durability};
use model::{ResultsFile, RunResult, System};

/// One measured configuration of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cell {
    pub(crate) rf: usize,
    pub(crate) commit: Commit,
    pub(crate) durability: Durability,
    pub(crate) batch: usize,
    pub(crate) concurrency: usize,
}

/// Events per request in the report's batch cells.
pub(crate) const MATRIX_BATCH: usize = 100;
/// Concurrency levels of the report's matrix.
pub(crate) const MATRIX_CONCURRENCY: [usize; 2] = [1, 64];
/// Concurrency levels of the report's sweep (RF 3 QUORUM single events).
pub(crate) const SWEEP_CONCURRENCY: [usize; 4] = [1, 4, 16, 64];

/// The report's cells: RF 1 and 3 × ONE/QUORUM/ALL × single/batch ×
/// buffered/sync × concurrency 1 and 64, then the sweep's extra concurrency
/// levels for RF 3 QUORUM single events.
pub(crate) fn matrix_cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for rf in [1, 3] {
        for durability in [Durability::Buffered, Durability::Sync] {
            for commit in [Commit::One, Commit::Quorum, Commit::All] {
                for batch in [1, MATRIX_BATCH] {
                    for concurrency in MATRIX_CONCURRENCY {
                        cells.push(Cell {
                            rf,
                            commit,
                            durability,
                            batch,
                            concurrency,
                        });
                    }
                }
            }
        }
    }
    for durability in [Durability::Buffered, Durability::Sync] {
        for concurrency in SWEEP_CONCURRENCY {
            let cell = Cell {
                rf: 3,
                commit: Commit::Quorum,
                durability,
                batch: 1,
                concurrency,
            };
            if !cells.contains(&cell) {
                cells.push(cell);
            }
        }
    }
    cells
}

/// The baseline measurements the matrix needs: (events per request, concurrency).
pub(crate) fn matrix_baseline_cells() -> Vec<(usize, usize)> {
    let mut cells: Vec<(usize, usize)> = SWEEP_CONCURRENCY.iter().map(|c| (1, *c)).collect();
    cells.extend(MATRIX_CONCURRENCY.iter().map(|c| (MATRIX_BATCH, *c)));
    cells
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        let ok_secs = |s: f64| s.is_finite() && s >= 0.0;
        if !ok_secs(self.duration_secs) || self.duration_secs > 600.0 || self.duration_secs == 0.0 {
            bail!("--duration-secs must be in (0, 600]");
        }
        if !ok_secs(self.warmup_secs) || self.warmup_secs > 60.0 {
            bail!("--warmup-secs must be in [0, 60]");
        }
        if self.requests.is_some_and(|n| n == 0 || n > 100_000_000) {
            bail!("--requests must be in 1..=100000000");
        }
        if self.concurrency.is_empty() || self.concurrency.iter().any(|c| *c == 0 || *c > 4096) {
            bail!("--concurrency values must be in 1..=4096");
        }
        if self.batch == 0 || self.batch > 10_000 {
            bail!("--batch must be in 1..=10000");
        }
        if self.event_bytes == 0 || self.event_bytes > 1024 * 1024 {
            bail!("--event-bytes must be in 1..=1048576");
        }
        if self.nodes == 0 || self.nodes > 16 {
            bail!("--nodes must be in 1..=16");
        }
        if self.rf == 0 || (self.target.is_empty() && self.rf > self.nodes) {
            bail!("--rf must be in 1..=--nodes ({})", self.nodes);
        }
        if self.repeat == 0 || self.repeat > 9 {
            bail!("--repeat must be in 1..=9");
        }
        if self.client_threads == 0 || self.client_threads > 64 {
            bail!("--client-threads must be in 1..=64");
        }
        procs::check_local(&self.target)?;
        if let Some(addr) = self.serve_baseline {
            procs::check_local(&[addr])?;
            procs::check_local(&self.forward)?;
        }
        Ok(())
    }

    fn cluster_spec(&self, cell: &Cell) -> procs::ClusterSpec {
        procs::ClusterSpec {
            nodes: self.nodes,
            rf: cell.rf,
            commit: cell.commit.as_str(),
            durability: cell.durability.as_str(),
            other_zone_replicas: self.other_zone_replicas,
            other_region_replicas: self.other_region_replicas,
            data_parent: self.data_dir.clone(),
        }
    }

    fn load_spec(
        &self,
        label: String,
        targets: Vec<SocketAddr>,
        path: String,
        batch: usize,
        concurrency: usize,
    ) -> load::LoadSpec {
        load::LoadSpec {
            label,
            targets,
            path,
            batch,
            event_bytes: self.event_bytes,
            concurrency,
            warmup: Duration::from_secs_f64(self.warmup_secs),
            duration: Duration::from_secs_f64(self.duration_secs),
            requests: self.requests,
            client_threads: self.client_threads,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }
}

fn events_path(batch: usize, commit: Option<Commit>) -> String {
    let path = if batch > 1 {
        "/events/batch"
    } else {
        "/events"
    };
    match commit {
        Some(c) => format!("{path}?commit={}", c.as_str()),
        None => path.to_owned(),
    }
}

/// Runs one load on the blocking pool (the load has its own client threads).
async fn measure(spec: load::LoadSpec) -> anyhow::Result<load::LoadOutcome> {
    tokio::task::spawn_blocking(move || load::run(spec))
        .await
        .context("the load generator panicked")?
}

/// Measures the baselines for every (events per request, concurrency) given.
async fn run_baselines(
    args: &BenchArgs,
    cells: &[(usize, usize)],
) -> anyhow::Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for system in [System::Null, System::Fanout] {
        let peers = if system == System::Fanout { 2 } else { 0 };
        let group = procs::Group::baseline(peers)
            .await
            .with_context(|| format!("starting the {} baseline", system.name()))?;
        for &(batch, concurrency) in cells {
            let label = format!("{} batch={batch} c={concurrency}", system.name());
            let spec = args.load_spec(
                label,
                group.apis.clone(),
                events_path(batch, None),
                batch,
                concurrency,
            );
            let outcome = measure(spec).await?;
            let r = RunResult::new(system, batch, concurrency, args.event_bytes, &outcome);
            eprintln!("{}", r.one_line());
            results.push(r);
        }
        drop(group);
    }
    Ok(results)
}

/// Measures one cluster cell on a fresh cluster (or the `--target` one).
async fn run_cell(args: &BenchArgs, cell: &Cell) -> anyhow::Result<RunResult> {
    let group = if args.target.is_empty() {
        Some(
            procs::Group::cluster(&args.cluster_spec(cell))
                .await
                .context("starting the cluster")?,
        )
    } else {
        None
    };
    let targets = match &group {
        Some(g) if args.hang_nodes > 0 => {
            anyhow::ensure!(
                args.hang_nodes < args.nodes,
                "--hang-nodes {} leaves no node to send load to (--nodes {})",
                args.hang_nodes,
                args.nodes
            );
            let hung = g.hang_last(args.hang_nodes)?;
            eprintln!("hung (SIGSTOP) nodes at {hung:?}; load goes to the others");
            g.apis[..args.nodes - args.hang_nodes].to_vec()
        }
        Some(g) => g.apis.clone(),
        None => args.target.clone(),
    };
    let label = format!(
        "RF{} {} {} batch={} c={}",
        cell.rf,
        cell.commit.as_str(),
        cell.durability.as_str(),
        cell.batch,
        cell.concurrency
    );
    let spec = args.load_spec(
        label,
        targets,
        events_path(cell.batch, Some(cell.commit)),
        cell.batch,
        cell.concurrency,
    );
    let outcome = measure(spec).await?;
    drop(group);
    let nodes = if args.target.is_empty() {
        args.nodes
    } else {
        args.target.len()
    };
    let r = RunResult::new(
        System::AllData { nodes, cell: *cell },
        cell.batch,
        cell.concurrency,
        args.event_bytes,
        &outcome,
    );
    eprintln!("{}", r.one_line());
    Ok(r)
}

/// Runs `alldata bench` with `args` (see [`BenchArgs`]).
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    if let Some(listen) = args.serve_baseline {
        return baseline::serve(listen, args.forward.clone()).await;
    }
    if args.matrix {
        return run_matrix(&args).await;
    }
    let started = Instant::now();
    let mut results = Vec::new();
    for round in 1..=args.repeat {
        if args.repeat > 1 {
            eprintln!("round {round}/{}", args.repeat);
        }
        if !args.no_baselines {
            let cells: Vec<(usize, usize)> =
                args.concurrency.iter().map(|c| (args.batch, *c)).collect();
            results.extend(run_baselines(&args, &cells).await?);
        }
        for &concurrency in &args.concurrency {
            let cell = Cell {
                rf: args.rf,
                commit: args.commit,
                durability: args.durability,
                batch: args.batch,
                concurrency,
            };
            results.push(run_cell(&args, &cell).await?);
        }
    }
    let results = model::medians(results);
    println!("{}", model::table(&results));
    println!("({:.0} s in all)", started.elapsed().as_secs_f64());
    if let Some(out) = &args.out {
        let doc = ResultsFile::new(&args, &results, started.elapsed());
        model::write_json(out, &doc)?;
        println!("results written to {}", out.display());
    }
    Ok(())
}

/// Writes the plot and the markdown from `doc`; true if the plot was drawn.
fn render(args: &BenchArgs, doc: &ResultsFile) -> anyhow::Result<PathBuf> {
    let png = args.docs_dir.join("bench").join("throughput_p99.png");
    let plotted = match plot::plot(&doc.results, &png) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("warning: no plot: {e:#}");
            false
        }
    };
    let md = args.docs_dir.join("BENCHMARKS.md");
    let text = markdown::markdown(doc, &args.docs_dir, plotted)?;
    std::fs::write(&md, text).with_context(|| format!("cannot write {}", md.display()))?;
    Ok(md)
}

async fn run_matrix(args: &BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.render_only {
        let json = args.docs_dir.join("bench").join("results.json");
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("cannot read {}", json.display()))?;
        let doc: ResultsFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a results file", json.display()))?;
        let md = render(args, &doc)?;
        println!("rewrote {} from {}", md.display(), json.display());
        return Ok(());
    }
    let cells = matrix_cells();
    let base_cells = matrix_baseline_cells();
    eprintln!(
        "matrix: {} cluster cells + {} baseline cells, {:.0}+{:.0} s each, {} round(s)",
        cells.len(),
        base_cells.len() * 2,
        args.warmup_secs,
        args.duration_secs,
        args.repeat
    );
    let mut results = Vec::new();
    for round in 1..=args.repeat {
        results.extend(run_baselines(args, &base_cells).await?);
        for (i, cell) in cells.iter().enumerate() {
            eprintln!(
                "round {round}/{}, cell {}/{}",
                args.repeat,
                i + 1,
                cells.len()
            );
            results.push(run_cell(args, cell).await?);
        }
    }
    let results = model::medians(results);
    println!("{}", model::table(&results));
    let doc = ResultsFile::new(args, &results, started.elapsed());
    let bench_dir = args.docs_dir.join("bench");
    std::fs::create_dir_all(&bench_dir)
        .with_context(|| format!("cannot create {}", bench_dir.display()))?;
    let json = bench_dir.join("results.json");
    model::write_json(&json, &doc)?;
    let md = render(args, &doc)?;
    if let Some(out) = &args.out {
        model::write_json(out, &doc)?;
    }
    println!(
        "wrote {} and {} in {:.0} s",
        md.display(),
        json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().bench
    }

    #[test]
    fn defaults_and_lists_parse() {
        let a = parse(&[]);
        assert_eq!((a.nodes, a.rf, a.commit), (3, 3, Commit::Quorum));
        assert_eq!(a.durability, Durability::Buffered);
        assert_eq!(a.concurrency, vec![1, 64]);
        assert_eq!((a.event_bytes, a.batch, a.duration_secs), (1024, 1, 5.0));
        assert!(!a.no_baselines && !a.matrix && a.requests.is_none());
        a.validate().unwrap();

        let a = parse(&[
            "--concurrency",
            "1,4",
            "--concurrency",
            "16",
            "--commit",
            "all",
            "--durability",
            "sync",
            "--batch",
            "100",
            "--requests",
            "500",
            "--no-baselines",
        ]);
        assert_eq!(a.concurrency, vec![1, 4, 16]);
        assert_eq!((a.commit, a.durability), (Commit::All, Durability::Sync));
        assert_eq!((a.batch, a.requests), (100, Some(500)));
        assert!(a.no_baselines);
        a.validate().unwrap();
    }

    #[test]
    fn unbounded_or_remote_runs_are_refused() {
        assert!(parse(&["--duration-secs", "100000"]).validate().is_err());
        assert!(parse(&["--concurrency", "0"]).validate().is_err());
        assert!(parse(&["--rf", "4"]).validate().is_err());
        assert!(parse(&["--target", "10.0.0.1:8080"]).validate().is_err());
        parse(&["--target", "127.0.0.1:8080"]).validate().unwrap();
    }

    #[test]
    fn matrix_covers_the_report() {
        let cells = matrix_cells();
        // 2 RF × 2 durability × 3 commit × 2 modes × 2 concurrency + 2×2 sweep extras.
        assert_eq!(cells.len(), 48 + 4);
        for rf in [1, 3] {
            for commit in [Commit::One, Commit::Quorum, Commit::All] {
                for durability in [Durability::Buffered, Durability::Sync] {
                    for batch in [1, MATRIX_BATCH] {
                        for concurrency in [1, 64] {
                            let cell = Cell {
                                rf,
                                commit,
                                durability,
                                batch,
                                concurrency,
                            };
                            assert_eq!(cells.iter().filter(|c| **c == cell).count(), 1);
                        }
                    }
                }
            }
        }
        let sweep = cells
            .iter()
            .filter(|c| c.rf == 3 && c.commit == Commit::Quorum && c.batch == 1)
            .filter(|c| c.durability == Durability::Buffered)
            .count();
        assert_eq!(sweep, SWEEP_CONCURRENCY.len());
        assert_eq!(
            matrix_baseline_cells(),
            vec![(1, 1), (1, 4), (1, 16), (1, 64), (100, 1), (100, 64)]
        );
        assert_eq!(
            events_path(1, Some(Commit::Quorum)),
            "/events?commit=quorum"
        );
        assert_eq!(events_path(100, None), "/events/batch");
    }
}
