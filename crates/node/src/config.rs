//! What a node is configured with: [`NodeConfig`], the peers ([`PeerSpec`])
//! and the checks that refuse a configuration that would fake replicas.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use alldata_coordinator::repair::RepairOptions;
use alldata_coordinator::{CommitLevel, Location, Options};
use alldata_server_http::{ApiConfig, Limits};
use alldata_storage_leveldb::{Durability, IntervalLength};

use crate::NodeError;

/// Refuses a peer list that would fake replicas or cannot reach the
/// replication factor (an empty list is allowed: peers may be added after
/// the start).
pub(crate) fn check_peers(config: &NodeConfig) -> Result<(), NodeError> {
    let mut ids = std::collections::BTreeSet::new();
    let mut addresses: std::collections::BTreeMap<String, &str> = Default::default();
    for p in &config.peers {
        if p.id == config.id {
            return Err(NodeError::FakeReplicas(format!(
                "peer {p} has this node's own id"
            )));
        }
        if !ids.insert(p.id.as_str()) {
            return Err(NodeError::FakeReplicas(format!(
                "peer id {} is given twice",
                p.id
            )));
        }
        let address = normalize(&p.address);
        if let Some(other) = addresses.insert(address.clone(), p.id.as_str()) {
            return Err(NodeError::FakeReplicas(format!(
                "peers {other} and {} share the address {address}",
                p.id
            )));
        }
        if is_own_address(&p.address, config.peer_listen) {
            return Err(NodeError::FakeReplicas(format!(
                "peer {p} is this node's own peer address {}",
                config.peer_listen
            )));
        }
    }
    let nodes = config.peers.len() + 1;
    let replication_factor = config.options.replication_factor;
    // No peers at all: an embedder adds them after the start
    // (`Coordinator::add_peer_at`); puts fail with `NotEnoughNodes` until then.
    if config.peers.is_empty() && replication_factor > 1 {
        tracing::warn!(
            replication_factor,
            "no peers configured: puts fail until peers are added"
        );
        return Ok(());
    }
    if replication_factor > nodes {
        return Err(NodeError::NotEnoughNodes {
            replication_factor,
            nodes,
        });
    }
    Ok(())
}

/// A peer address for comparison: lowercase, `localhost` as `127.0.0.1`.
fn normalize(address: &str) -> String {
    let lower = address.trim().to_ascii_lowercase();
    match lower.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => lower,
    }
}

/// Whether `address` names `own` (the node's peer listen address), also when
/// the node listens on all interfaces and the peer is given as loopback.
fn is_own_address(address: &str, own: SocketAddr) -> bool {
    let Ok(addr) = normalize(address).parse::<SocketAddr>() else {
        return false;
    };
    addr == own
        || (addr.port() == own.port() && own.ip().is_unspecified() && addr.ip().is_loopback())
}

/// A peer given on the command line as `ID=HOST:PORT@REGION/ZONE`, where
/// `HOST:PORT` is the peer's replica endpoint (its `--peer-listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's node id.
    pub id: String,
    /// `host:port` of its replica endpoint.
    pub address: String,
    /// Its absolute location.
    pub location: Location,
}

impl FromStr for PeerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("peer {s:?} is not ID=HOST:PORT@REGION/ZONE");
        let (id, rest) = s.split_once('=').ok_or_else(usage)?;
        let (address, place) = rest.rsplit_once('@').ok_or_else(usage)?;
        let (region, zone) = place.split_once('/').ok_or_else(usage)?;
        let (host, port) = address.rsplit_once(':').ok_or_else(usage)?;
        if [id, host, region, zone].iter().any(|p| p.trim().is_empty()) || zone.contains('/') {
            return Err(usage());
        }
        port.parse::<u16>()
            .map_err(|_| format!("peer {s:?}: port {port:?} is not a number 0-65535"))?;
        Ok(Self {
            id: id.to_owned(),
            address: address.to_owned(),
            location: Location::new(region, zone),
        })
    }
}

impl fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}@{}/{}",
            self.id, self.address, self.location.region, self.location.zone
        )
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (unique in the cluster).
    pub id: String,
    /// Address of the client API.
    pub listen: SocketAddr,
    /// Address of the replica endpoint peers call.
    pub peer_listen: SocketAddr,
    /// LevelDB directory (created if missing).
    pub data_dir: PathBuf,
    /// This node's location.
    pub location: Location,
    /// The peers.
    pub peers: Vec<PeerSpec>,
    /// Coordinator options (RF, commit level, placement, timeouts).
    pub options: Options,
    /// Storage durability.
    pub durability: Durability,
    /// The length of the storage's consolidation intervals (default `P1D`).
    /// Fixed for a data directory: opening one written with another length
    /// fails.
    pub interval: IntervalLength,
    /// The shared cluster secret peers authenticate with.
    pub cluster_secret: String,
    /// Largest accepted event in bytes.
    pub max_event_bytes: usize,
    /// Largest accepted batch body in bytes (`POST /events/batch`).
    pub max_batch_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Bounds of the connections of both ports (cap, header read and
    /// per-request time limits).
    pub limits: Limits,
    /// LevelDB's memtable size in bytes. Larger memtables mean fewer level-0
    /// files and less compaction per event (see `docs/BENCHMARKS.md`); the node
    /// holds up to two of them in memory. Default 64 MiB.
    pub write_buffer_bytes: usize,
    /// How often every peer's health (and what it promises: durability,
    /// event size) is probed for `/health`. Default 10 s.
    pub health_probe_interval: std::time::Duration,
    /// Most `GET /events/tail` subscribers at once. Default 256.
    pub max_tail_subscribers: usize,
    /// Events buffered per tail subscriber before it is sent `lagged` and
    /// disconnected. Default 1024.
    pub tail_buffer_events: usize,
    /// Most exports running at once. Default 8.
    pub max_exports: usize,
    /// How long a tail subscriber may leave its buffer full before it is
    /// sent `lagged`. Default 10 s.
    pub tail_stall_timeout: Duration,
    /// How often an anti-entropy repair round starts (after the previous one
    /// ends); zero disables repair. Default 30 s.
    pub repair_interval: std::time::Duration,
    /// What a repair round covers and how fast it copies.
    pub repair: RepairOptions,
    /// `HOST:PORT` peer endpoints of running members to join through
    /// (gossip and the member list). A node with seeds and no `peers` joins
    /// as a member that does not decide client keys (see the README).
    pub seeds: Vec<String>,
    /// Live membership by gossip on a UDP socket at the peer endpoint's
    /// address and port (default on).
    pub gossip: bool,
    /// The peer endpoint address other nodes reach this node at, announced
    /// by gossip (default: the bound `peer_listen`).
    pub advertise_peer: Option<SocketAddr>,
    /// How long a node with seeds only waits for a seed's member list
    /// before giving up its start (default 10 s).
    pub join_timeout: Duration,
    /// foca's gossip timers (default: `alldata_membership`'s LAN settings:
    /// a probe a second, a silent member down after about 6 s).
    pub gossip_timers: Option<alldata_membership::foca::Config>,
}

/// The node's default LevelDB memtable size (64 MiB).
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

impl NodeConfig {
    /// A config with defaults for everything but the identity, addresses and data
    /// directory: RF 1, QUORUM, sync durability, 1 MiB events.
    pub fn new(
        id: impl Into<String>,
        listen: SocketAddr,
        peer_listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            id: id.into(),
            listen,
            peer_listen,
            data_dir: data_dir.into(),
            location: Location::default(),
            peers: Vec::new(),
            options: Options::default(),
            durability: Durability::Sync,
            interval: IntervalLength::Day,
            cluster_secret: String::new(),
            max_event_bytes: 1024 * 1024,
            max_batch_bytes: ApiConfig::default().max_batch_bytes,
            max_batch_events: ApiConfig::default().max_batch_events,
            limits: Limits::default(),
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            health_probe_interval: std::time::Duration::from_secs(10),
            max_tail_subscribers: 256,
            tail_buffer_events: 1024,
            max_exports: 8,
            tail_stall_timeout: Duration::from_secs(10),
            repair_interval: std::time::Duration::from_secs(30),
            repair: RepairOptions::default(),
            seeds: Vec::new(),
            gossip: true,
            advertise_peer: None,
            join_timeout: Duration::from_secs(10),
            gossip_timers: None,
        }
    }
}

/// Parses a commit level for the command line.
pub fn parse_commit_level(s: &str) -> Result<CommitLevel, String> {
    s.parse().map_err(|e| format!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_specs_parse_and_print() {
        let p: PeerSpec = "n2=127.0.0.1:7002@eu/b".parse().unwrap();
        assert_eq!(p.id, "n2");
        assert_eq!(p.address, "127.0.0.1:7002");
        assert_eq!(p.location, Location::new("eu", "b"));
        assert_eq!(p.to_string(), "n2=127.0.0.1:7002@eu/b");
        for bad in [
            "",
            "n2",
            "n2=127.0.0.1:7002",
            "n2=127.0.0.1@eu/b",
            "=h:1@r/z",
            "n=h:x@r/z",
            "n=h:1@r",
            "n=h:1@r/z/y",
        ] {
            assert!(bad.parse::<PeerSpec>().is_err(), "{bad:?} accepted");
        }
    }
}
