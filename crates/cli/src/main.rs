//! The `alldata` command: `alldata node` runs one node of a cluster,
//! `alldata bench` load-tests a local cluster against baselines, `alldata
//! export` writes a range or a closed interval to an NDJSON or Parquet file,
//! `alldata admin` lists and removes members.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use alldata_coordinator::{CommitLevel, Location, Options};
use alldata_node::{Node, NodeConfig, PeerSpec, RepairOptions, parse_commit_level};
use alldata_storage_leveldb::{Durability, IntervalLength};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

mod admin;
mod bench;
mod export;

/// AllData: a masterless, append-only, replicated event store.
#[derive(Debug, Parser)]
#[command(name = "alldata", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node: the client API on --listen, the replica endpoint on --peer-listen.
    Node(NodeArgs),
    /// Load-test a local cluster over HTTP and compare it with null/fanout baselines.
    Bench(bench::BenchArgs),
    /// Export a range or a closed interval (cluster-wide by default) to an NDJSON or Parquet file.
    Export(export::ExportArgs),
    /// Cluster administration: list members, remove a member for good.
    Admin(admin::AdminArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Every acknowledged put is fsynced (group commit).
    Sync,
    /// OS-buffered writes: faster, survive a process crash but not a machine crash.
    Buffered,
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// This node's id, unique in the cluster.
    #[arg(long, env = "ALLDATA_ID")]
    id: String,
    /// HOST:PORT of the client API (HTTP + JSON).
    #[arg(long, env = "ALLDATA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HOST:PORT of the replica endpoint other nodes call.
    #[arg(long, env = "ALLDATA_PEER_LISTEN", default_value = "127.0.0.1:8081")]
    peer_listen: SocketAddr,
    /// LevelDB data directory (created if missing).
    #[arg(long, env = "ALLDATA_DATA_DIR")]
    data_dir: PathBuf,
    /// This node's region.
    #[arg(long, env = "ALLDATA_REGION", default_value = "default")]
    region: String,
    /// This node's zone inside its region.
    #[arg(long, env = "ALLDATA_ZONE", default_value = "default")]
    zone: String,
    /// A peer as ID=HOST:PORT@REGION/ZONE, where HOST:PORT is its --peer-listen.
    /// Repeatable; in the environment, separate peers with commas.
    #[arg(long = "peer", env = "ALLDATA_PEERS", value_delimiter = ',')]
    peers: Vec<PeerSpec>,
    /// HOST:PORT of a running member's peer endpoint to join through (the
    /// member list and gossip). Repeatable; in the environment, separate
    /// seeds with commas. A node with seeds and no --peer holds replicas but
    /// does not decide client keys (see README, "Membership").
    #[arg(long = "seed", env = "ALLDATA_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// HOST:PORT other nodes reach this node's peer endpoint (and gossip
    /// socket, UDP on the same port) at; default: --peer-listen. Needed when
    /// --peer-listen is 0.0.0.0.
    #[arg(long, env = "ALLDATA_ADVERTISE_PEER")]
    advertise_peer: Option<SocketAddr>,
    /// Turn live membership off (no gossip socket; members are the --peer list).
    /// The environment variable takes 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "ALLDATA_NO_GOSSIP", value_parser = clap::builder::BoolishValueParser::new())]
    no_gossip: bool,
    /// Gossip probe period in milliseconds: a member that does not answer a
    /// probe within half of it is suspected, and declared down (no longer
    /// placed on) four periods later unless it refutes.
    #[arg(long, env = "ALLDATA_GOSSIP_PROBE_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..))]
    gossip_probe_ms: u64,
    /// Replicas per event, the local one included.
    #[arg(long, env = "ALLDATA_REPLICATION_FACTOR", default_value_t = 1)]
    replication_factor: usize,
    /// Default commit level: one, quorum or all (a request may override it).
    #[arg(long, env = "ALLDATA_COMMIT_LEVEL", default_value = "quorum", value_parser = parse_commit_level)]
    commit_level: CommitLevel,
    /// Replicas placed in other zones of this region.
    #[arg(long, env = "ALLDATA_OTHER_ZONE_REPLICAS", default_value_t = 0)]
    other_zone_replicas: usize,
    /// Replicas placed in other regions.
    #[arg(long, env = "ALLDATA_OTHER_REGION_REPLICAS", default_value_t = 0)]
    other_region_replicas: usize,
    /// Storage durability.
    #[arg(long, env = "ALLDATA_DURABILITY", value_enum, default_value = "sync")]
    durability: DurabilityArg,
    /// Length of the consolidation intervals: P1D, PT3H, PT1H, PT15M or PT5M.
    /// Fixed for a data directory (a node refuses to open one written with
    /// another length).
    #[arg(long, env = "ALLDATA_INTERVAL", default_value = "P1D")]
    interval: IntervalLength,
    /// File holding the shared cluster secret (peers authenticate with it).
    #[arg(long, env = "ALLDATA_CLUSTER_SECRET_FILE")]
    cluster_secret_file: PathBuf,
    /// Per-replica write timeout in milliseconds; a slower replica write moves to an unused peer.
    #[arg(long, env = "ALLDATA_REPLICA_TIMEOUT_MS", default_value_t = 2000)]
    replica_timeout_ms: u64,
    /// Overall put deadline in milliseconds (504 after it; the outcome is then unknown).
    #[arg(long, env = "ALLDATA_DEADLINE_MS", default_value_t = 5000)]
    deadline_ms: u64,
    /// Largest accepted event in bytes (413 above it).
    #[arg(long, env = "ALLDATA_MAX_EVENT_BYTES", default_value_t = 1024 * 1024)]
    max_event_bytes: usize,
    /// Largest accepted batch body (`POST /events/batch`) in bytes (413 above it).
    #[arg(long, env = "ALLDATA_MAX_BATCH_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_batch_bytes: usize,
    /// Most events in one batch (413 above it, before anything is stored).
    #[arg(long, env = "ALLDATA_MAX_BATCH_EVENTS", default_value_t = 10_000)]
    max_batch_events: usize,
    /// Most events with replica writes running at once (foreground and
    /// background); over it a put is answered 503 `overloaded` at once, nothing written.
    #[arg(long, env = "ALLDATA_MAX_PUTS_IN_FLIGHT", default_value_t = 65_536)]
    max_puts_in_flight: usize,
    /// Most connections open at once on each port; over it a new connection is
    /// answered 503 `overloaded` at once and closed.
    #[arg(long, env = "ALLDATA_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// How long a connection may take to send a request's headers, and sit idle
    /// between requests, in milliseconds.
    #[arg(long, env = "ALLDATA_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// How long one request may take, body upload included, in milliseconds (408 after it).
    #[arg(long, env = "ALLDATA_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    request_timeout_ms: u64,
    /// LevelDB memtable size in MiB (1..=1024). Larger means less compaction work
    /// per event; the node may hold two memtables in memory.
    #[arg(long, env = "ALLDATA_WRITE_BUFFER_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    write_buffer_mb: u16,
    /// How often every peer is probed for `/health` (up or not, and what it
    /// promises: durability, event size), in milliseconds.
    #[arg(long, env = "ALLDATA_HEALTH_PROBE_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    health_probe_interval_ms: u64,
    /// Most `GET /events/tail` subscribers at once (503 `overloaded` over it).
    #[arg(long, env = "ALLDATA_MAX_TAIL_SUBSCRIBERS", default_value_t = 256)]
    max_tail_subscribers: usize,
    /// Events buffered for one tail subscriber; one that falls further behind
    /// is sent `event: lagged` and disconnected.
    #[arg(long, env = "ALLDATA_TAIL_BUFFER_EVENTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    tail_buffer_events: u64,
    /// Most exports running at once (503 `overloaded` over it); each holds a
    /// scan on every member while it runs.
    #[arg(long, env = "ALLDATA_MAX_EXPORTS", default_value_t = 8)]
    max_exports: usize,
    /// How long a tail subscriber may leave its buffer full (take nothing)
    /// before it is sent `event: lagged` and disconnected, in milliseconds.
    #[arg(long, env = "ALLDATA_TAIL_STALL_TIMEOUT_MS", default_value_t = 10_000)]
    tail_stall_timeout_ms: u64,
    /// Milliseconds between anti-entropy repair rounds (counted from the end
    /// of one to the start of the next); 0 disables repair.
    #[arg(long, env = "ALLDATA_REPAIR_INTERVAL_MS", default_value_t = 30_000)]
    repair_interval_ms: u64,
    /// Length of a repair time bucket, in seconds: a round exchanges one
    /// digest per bucket and member.
    #[arg(long, env = "ALLDATA_REPAIR_BUCKET_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    repair_bucket_secs: u64,
    /// How far back a repair round looks, in seconds.
    #[arg(long, env = "ALLDATA_REPAIR_LOOKBACK_SECS", default_value_t = 7_200,
          value_parser = clap::value_parser!(u64).range(1..))]
    repair_lookback_secs: u64,
    /// The newest milliseconds a repair round leaves alone (writes still in
    /// flight there would look under-replicated).
    #[arg(long, env = "ALLDATA_REPAIR_SETTLE_MS", default_value_t = 5_000)]
    repair_settle_ms: u64,
    /// Most events repair copies per second (0: no limit).
    #[arg(
        long,
        env = "ALLDATA_REPAIR_MAX_EVENTS_PER_SEC",
        default_value_t = 5_000
    )]
    repair_max_events_per_sec: u64,
    /// Most events one repair round copies; the rest waits for the next round.
    #[arg(long, env = "ALLDATA_REPAIR_MAX_EVENTS_PER_ROUND", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    repair_max_events_per_round: u64,
}

impl NodeArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let secret = std::fs::read_to_string(&self.cluster_secret_file).with_context(|| {
            format!(
                "cannot read the cluster secret file {}",
                self.cluster_secret_file.display()
            )
        })?;
        let secret = secret.trim().to_owned();
        anyhow::ensure!(
            !secret.is_empty(),
            "the cluster secret file {} is empty",
            self.cluster_secret_file.display()
        );
        let mut config = NodeConfig::new(self.id, self.listen, self.peer_listen, self.data_dir);
        config.location = Location::new(self.region, self.zone);
        anyhow::ensure!(
            !self.seeds.is_empty() || self.replication_factor <= self.peers.len() + 1,
            "--replication-factor {} needs {} nodes, only {} configured (this node and {} --peer)",
            self.replication_factor,
            self.replication_factor,
            self.peers.len() + 1,
            self.peers.len()
        );
        config.peers = self.peers;
        config.seeds = self.seeds;
        config.advertise_peer = self.advertise_peer;
        config.gossip = !self.no_gossip;
        config.gossip_timers = Some(alldata_node::gossip_timers(Duration::from_millis(
            self.gossip_probe_ms,
        )));
        config.options = Options {
            replication_factor: self.replication_factor,
            commit_level: self.commit_level,
            other_zone_replicas: self.other_zone_replicas,
            other_region_replicas: self.other_region_replicas,
            replica_timeout: Duration::from_millis(self.replica_timeout_ms),
            deadline: Duration::from_millis(self.deadline_ms),
            max_puts_in_flight: self.max_puts_in_flight,
            ..Options::default()
        };
        config.durability = match self.durability {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Buffered => Durability::Buffered,
        };
        config.interval = self.interval;
        config.cluster_secret = secret;
        config.max_event_bytes = self.max_event_bytes;
        config.max_batch_bytes = self.max_batch_bytes;
        config.max_batch_events = self.max_batch_events;
        config.health_probe_interval = Duration::from_millis(self.health_probe_interval_ms);
        config.max_tail_subscribers = self.max_tail_subscribers;
        config.max_exports = self.max_exports;
        config.tail_stall_timeout = Duration::from_millis(self.tail_stall_timeout_ms);
        config.repair_interval = Duration::from_millis(self.repair_interval_ms);
        config.repair = RepairOptions {
            bucket: Duration::from_secs(self.repair_bucket_secs),
            lookback: Duration::from_secs(self.repair_lookback_secs),
            settle: Duration::from_millis(self.repair_settle_ms),
            max_events_per_sec: self.repair_max_events_per_sec,
            max_events_per_round: usize::try_from(self.repair_max_events_per_round)
                .unwrap_or(usize::MAX),
            ..RepairOptions::default()
        };
        config.tail_buffer_events = usize::try_from(self.tail_buffer_events).unwrap_or(usize::MAX);
        anyhow::ensure!(
            self.max_connections > 0,
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(
            self.header_timeout_ms > 0 && self.request_timeout_ms > 0,
            "--header-timeout-ms and --request-timeout-ms must be greater than zero"
        );
        config.limits = alldata_node::Limits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        };
        config.write_buffer_bytes = usize::from(self.write_buffer_mb) << 20;
        Ok(config)
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Raises the open-file limit to the hard limit: every connection and every
/// LevelDB file is a descriptor, and the usual soft limit (1024) is below the
/// default connection caps of the two ports.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    raise_file_limit();
    let config = args.into_config()?;
    let node = Node::start(config).await?;
    println!(
        "alldata node {} serving clients on {} and peers on {}",
        node.id(),
        node.api_addr(),
        node.peer_addr()
    );
    shutdown_signal().await;
    tracing::info!("shutdown requested: finishing in-flight requests");
    node.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// mimalloc instead of glibc's malloc: the node allocates per request (bodies,
/// batches, futures), and glibc's allocator showed up as about 13 % of the CPU
/// in profiles under load (see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Export(args) => export::run(args).await,
            Command::Admin(args) => admin::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
