//! A complete AllData node: LevelDB storage, the coordinator, the HTTP peer
//! transport, the replica endpoint and the client API, wired together.
//!
//! Used by the `alldata node` binary, `examples/cluster.rs` and the multi-process
//! tests; embedders can use it too, or wire the crates themselves.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coordinator::{CommitLevel, Coordinator, Location, Options, Storage};
use crate::keygen::{Clock, SystemClock};
use crate::peer_client_http::{ClientConfig, HttpTransport};
use crate::peer_server_http::{PeerState, ServerConfig};
use crate::server_http::{ApiConfig, ApiState};
use crate::storage_leveldb::{Durability, LevelDbStorage};

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

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} (is the port taken?)"))
}

impl Node {
    /// Binds both ports, opens the storage and starts serving.
    ///
    /// Fails with a clear message on a taken port, a locked or unwritable data
    /// directory, impossible options, or an empty cluster secret with peers.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Self> {
        if config.cluster_secret.is_empty() {
            bail!("a cluster secret is required (peers authenticate with it)");
        }
        config
            .options
            .validate()
            .context("invalid coordinator options")?;
        let api_listener = bind(config.listen, "client API").await?;
        let peer_listener = bind(config.peer_listen, "peer endpoint").await?;
        let api_addr = api_listener.local_addr()?;
        let peer_addr = peer_listener.local_addr()?;

        let storage_options = crate::storage_leveldb::Options::new(&config.data_dir)
            .durability(config.durability)
            .write_buffer_bytes(config.write_buffer_bytes);
        let storage = Arc::new(
            LevelDbStorage::open(storage_options)
                .await
                .with_context(|| {
                    format!(
                        "cannot open the data directory {}",
                        config.data_dir.display()
                    )
                })?,
        );
        let dyn_storage: Arc<dyn Storage> = storage.clone();
        if let Some(mut closed) = storage.closed_intervals() {
            let id = config.id.clone();
            tokio::spawn(async move {
                while let Some(c) = closed.recv().await {
                    tracing::info!(node = %id, interval = %c.name, start = %c.start, end = %c.end, events = c.events, "interval closed");
                }
            });
        }

        let transport = HttpTransport::new(
            ClientConfig::new(config.cluster_secret.clone())
                .with_attempt_timeout(config.options.replica_timeout),
        )
        .context("cannot build the peer HTTP client")?;
        let coordinator = Coordinator::new(
            config.id.as_str().into(),
            config.location.clone(),
            config.options.clone(),
            Arc::clone(&dyn_storage),
            Arc::new(transport.clone()),
        )
        .context("invalid coordinator options")?;
        for p in &config.peers {
            coordinator
                .add_peer_at(p.id.as_str(), p.address.as_str(), &p.location)
                .with_context(|| format!("bad peer {p}"))?;
        }

        let (window, length) = (storage.accept_window(), storage.interval_length());
        let api_config = ApiConfig::default()
            .with_max_event_bytes(config.max_event_bytes)
            // The storage's own window check, so a PUT with an unacceptable key is
            // a 400 before any replica is written.
            .with_key_validator(move |key| window.check(length, SystemClock.now_ms(), 0, key));
        let api_state = ApiState::new(coordinator.clone(), Some(Arc::new(transport)), api_config);
        let peer_state = PeerState::new(
            Arc::clone(&dyn_storage),
            ServerConfig::new(config.cluster_secret.clone())
                .with_max_body_bytes((config.max_event_bytes + 1024).max(8 * 1024 * 1024)),
        );

        let (stop, stopped) = watch::channel(false);
        let signal = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let servers = vec![
            tokio::spawn(crate::peer_server_http::serve(
                peer_listener,
                peer_state,
                signal(stopped.clone()),
            )),
            tokio::spawn(crate::server_http::serve(
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

    /// Graceful shutdown: stop accepting, finish requests in flight, let
    /// background replica writes finish (at most `drain_for`), flush and close
    /// the storage.
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
        for s in servers {
            match s.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(%id, error = %e, "server ended with an error"),
                Err(e) => tracing::warn!(%id, error = %e, "server task failed"),
            }
        }
        if tokio::time::timeout(drain_for, coordinator.drain())
            .await
            .is_err()
        {
            tracing::warn!(%id, running = coordinator.running_puts(), "background replica writes still running at shutdown");
        }
        drop(coordinator);
        match Arc::try_unwrap(storage) {
            Ok(storage) => storage.close().await,
            Err(_) => {
                tracing::warn!(%id, "storage still in use at shutdown; it closes when released")
            }
        }
        tracing::info!(%id, "node stopped");
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
