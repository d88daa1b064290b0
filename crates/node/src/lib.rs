//! A complete AllData node: LevelDB storage, the coordinator, the HTTP peer
//! transport, the replica endpoint and the client API, wired together.
//!
//! Used by the `alldata node` command, `examples/cluster.rs` and the
//! multi-process tests; embedders can use it too, or wire the crates
//! themselves. Every failure to start is a typed [`NodeError`].
//!
//! ```no_run
//! use alldata_node::{Node, NodeConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), alldata_node::NodeError> {
//! let mut config = NodeConfig::new(
//!     "n1",
//!     "127.0.0.1:7001".parse().unwrap(),
//!     "127.0.0.1:7101".parse().unwrap(),
//!     "data/n1",
//! );
//! config.cluster_secret = "a-long-random-secret".into();
//! let node = Node::start(config).await?;
//! println!("serving clients on {}", node.api_addr());
//! node.shutdown(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use alldata_coordinator::{
    CommitLevel, Coordinator, Location, Options, OptionsError, Storage, TopologyError,
};
use alldata_peer_client_http::{ClientConfig, ClientError, HttpTransport};
use alldata_peer_server_http::{PeerState, ServerConfig};
use alldata_server_http::{ApiConfig, ApiState, Counter};
use alldata_storage_leveldb::{Durability, LevelDbStorage, OpenError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use alldata_server_http::Limits;

/// Why a node could not start. Nothing is left running when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No cluster secret was given; peers authenticate with it.
    #[error("a cluster secret is required (peers authenticate with it)")]
    MissingSecret,
    /// The coordinator options cannot work.
    #[error("invalid coordinator options: {0}")]
    Options(#[from] OptionsError),
    /// A port could not be bound.
    #[error("cannot listen on {addr} for the {what} (is the port taken?): {source}")]
    Bind {
        /// "client API" or "peer endpoint".
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The data directory could not be opened.
    #[error("cannot open the data directory {}: {source}", path.display())]
    Storage {
        /// The data directory.
        path: PathBuf,
        /// Why.
        source: OpenError,
    },
    /// The peer HTTP client could not be built.
    #[error("cannot build the peer HTTP client: {0}")]
    PeerClient(#[from] ClientError),
    /// A configured peer is not acceptable.
    #[error("bad peer {peer}: {source}")]
    Peer {
        /// The peer as configured.
        peer: String,
        /// Why.
        source: TopologyError,
    },
    /// The peer list would fake replicas: the same id twice, two peers at one
    /// address, or a peer at this node's own address (its copies would land
    /// on this node and count twice).
    #[error("the peer list would fake replicas: {0}")]
    FakeReplicas(String),
    /// Fewer nodes are configured than the replication factor: every put would
    /// fail.
    #[error(
        "replication factor {replication_factor} needs {replication_factor} nodes, only {nodes} configured (this node and {} peers)", nodes - 1
    )]
    NotEnoughNodes {
        /// The replication factor.
        replication_factor: usize,
        /// This node plus its peers.
        nodes: usize,
    },
}

/// Refuses a peer list that would fake replicas or cannot reach the
/// replication factor.
fn check_peers(config: &NodeConfig) -> Result<(), NodeError> {
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
            cluster_secret: String::new(),
            max_event_bytes: 1024 * 1024,
            max_batch_bytes: ApiConfig::default().max_batch_bytes,
            max_batch_events: ApiConfig::default().max_batch_events,
            limits: Limits::default(),
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
        }
    }
}

/// A running node. Stop it with [`Node::shutdown`]; dropping it leaves its
/// servers running until the runtime ends.
pub struct Node {
    id: String,
    api_addr: SocketAddr,
    peer_addr: SocketAddr,
    coordinator: Coordinator,
    storage: Arc<LevelDbStorage>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("api", &self.api_addr)
            .field("peer", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(TcpListener, SocketAddr), NodeError> {
    let bound = async {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok((listener, local))
    };
    bound
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

impl Node {
    /// Opens the storage (recounting after a crash), binds both ports and
    /// starts serving.
    ///
    /// Fails with a typed [`NodeError`] on a taken port, a locked or
    /// unwritable data directory, impossible options, a bad peer, or an empty
    /// cluster secret.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        if config.cluster_secret.is_empty() {
            return Err(NodeError::MissingSecret);
        }
        config.options.validate()?;
        check_peers(&config)?;
        // The storage first: after a crash its open recounts the open
        // intervals, and until the ports are bound peers see a refused
        // connection (a clear "not here"), not one that never answers.
        let storage_options = alldata_storage_leveldb::Options::new(&config.data_dir)
            .durability(config.durability)
            .write_buffer_bytes(config.write_buffer_bytes);
        let storage = LevelDbStorage::open(storage_options)
            .await
            .map_err(|source| NodeError::Storage {
                path: config.data_dir.clone(),
                source,
            })?;
        let bound = async {
            let api = bind(config.listen, "client API").await?;
            let peer = bind(config.peer_listen, "peer endpoint").await?;
            Ok::<_, NodeError>((api, peer))
        };
        let ((api_listener, api_addr), (peer_listener, peer_addr)) = match bound.await {
            Ok(bound) => bound,
            Err(e) => {
                storage.close().await;
                return Err(e);
            }
        };
        let storage = Arc::new(storage);
        let dyn_storage: Arc<dyn Storage> = storage.clone();
        // The storage logs each closed interval itself and nothing in the node
        // consumes the notifications, so the receiver is dropped rather than
        // left to queue them.
        drop(storage.closed_intervals());

        let transport = HttpTransport::new(
            ClientConfig::new(config.cluster_secret.clone())
                .with_attempt_timeout(config.options.replica_timeout),
        )?;
        let coordinator = Coordinator::new(
            config.id.as_str().into(),
            config.location.clone(),
            config.options.clone(),
            Arc::clone(&dyn_storage),
            Arc::new(transport.clone()),
        )?
        .with_peer_reader(Arc::new(transport.clone()));
        for p in &config.peers {
            coordinator
                .add_peer_at(p.id.as_str(), p.address.as_str(), &p.location)
                .map_err(|source| NodeError::Peer {
                    peer: p.to_string(),
                    source,
                })?;
        }

        // The storage's own window check, so a PUT with an unacceptable key is a
        // 400 before any replica is written. A weak handle: the API must not
        // keep the database open after shutdown.
        let window = Arc::downgrade(&storage);
        let peer_state = PeerState::new(
            Arc::clone(&dyn_storage),
            ServerConfig::new(config.cluster_secret.clone())
                .with_max_body_bytes((config.max_event_bytes + 1024).max(8 * 1024 * 1024))
                .with_limits(config.limits),
        );
        let api_config = ApiConfig::default()
            .with_max_event_bytes(config.max_event_bytes)
            .with_max_batch_bytes(config.max_batch_bytes)
            .with_max_batch_events(config.max_batch_events)
            .with_limits(config.limits)
            .with_key_validator(move |key| window.upgrade().map_or(Ok(()), |s| s.check_key(key)))
            .with_counters(peer_counters(peer_state.clone(), transport.clone()));
        let api_state = ApiState::new(coordinator.clone(), api_config);

        let (stop, stopped) = watch::channel(false);
        let signal = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let servers = vec![
            tokio::spawn(alldata_peer_server_http::serve(
                peer_listener,
                peer_state,
                signal(stopped.clone()),
            )),
            tokio::spawn(alldata_server_http::serve(
                api_listener,
                api_state,
                signal(stopped),
            )),
        ];
        tracing::info!(id = %config.id, %api_addr, %peer_addr, location = %config.location, peers = config.peers.len(), "node started");
        Ok(Self {
            id: config.id,
            api_addr,
            peer_addr,
            coordinator,
            storage,
            stop,
            servers,
        })
    }

    /// The node id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the client API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where the replica endpoint listens.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The node's coordinator.
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// Graceful shutdown within `drain_for`: stop accepting, let requests in
    /// flight and background replica writes finish (cut off at the deadline),
    /// record a clean stop and close the storage (when background writes still
    /// hold it at the deadline, its writer is stopped anyway and the database
    /// closes once they let go).
    pub async fn shutdown(self, drain_for: Duration) {
        let Node {
            id,
            coordinator,
            storage,
            stop,
            servers,
            ..
        } = self;
        let _ = stop.send(true);
        // Requests in flight finish, within the same deadline as the drain.
        let until = tokio::time::Instant::now() + drain_for;
        for mut s in servers {
            match tokio::time::timeout_at(until, &mut s).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(%id, error = %e, "server ended with an error"),
                Ok(Err(e)) => tracing::warn!(%id, error = %e, "server task failed"),
                Err(_) => {
                    tracing::warn!(%id, "requests still running at the shutdown deadline; cut off");
                    s.abort();
                }
            }
        }
        if tokio::time::timeout_at(until, coordinator.drain())
            .await
            .is_err()
        {
            tracing::warn!(%id, running = coordinator.running_puts(), "background replica writes still running at the shutdown deadline");
        }
        drop(coordinator);
        match Arc::try_unwrap(storage) {
            Ok(storage) => storage.close().await,
            Err(storage) => {
                // Background writes still hold the store: stop its writer
                // anyway, so the clean stop is recorded; their late writes
                // fail, and the database closes when they let go.
                storage.shutdown().await;
                tracing::warn!(%id, "storage shut down while background writes still held it");
            }
        }
        tracing::info!(%id, "node stopped");
    }
}

/// The replica endpoint's and the peer client's counters, for `GET /metrics`.
fn peer_counters(
    server: PeerState,
    client: HttpTransport,
) -> impl Fn() -> Vec<Counter> + Send + Sync + 'static {
    move || {
        let (s, c) = (server.stats(), client.stats());
        vec![
            Counter {
                name: "alldata_peer_server_batches_total",
                help: "Replica batches received from peers and stored (whatever the per-event results).",
                value: s.batches(),
            },
            Counter {
                name: "alldata_peer_server_events_total",
                help: "Events received from peers in those batches.",
                value: s.events(),
            },
            Counter {
                name: "alldata_peer_server_refused_total",
                help: "Peer requests refused as a whole (400, 401, 413).",
                value: s.refused(),
            },
            Counter {
                name: "alldata_peer_server_connections_accepted_total",
                help: "Peer connections accepted.",
                value: server.connection_stats().accepted(),
            },
            Counter {
                name: "alldata_peer_server_connections_rejected_total",
                help: "Peer connections refused at once because the connection cap was reached.",
                value: server.connection_stats().rejected(),
            },
            Counter {
                name: "alldata_peer_client_requests_total",
                help: "Replica batch requests sent to peers.",
                value: c.requests(),
            },
            Counter {
                name: "alldata_peer_client_events_total",
                help: "Events sent to peers in those requests.",
                value: c.events(),
            },
            Counter {
                name: "alldata_peer_client_abandoned_total",
                help: "Queued replica writes not sent because their deadline had passed.",
                value: c.abandoned(),
            },
        ]
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
