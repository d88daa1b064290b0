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
use std::sync::Arc;
use std::time::Duration;

use alldata_coordinator::digest_index::DigestIndex;
use alldata_coordinator::feed::{DEFAULT_FEED_CAPACITY, Feed};
use alldata_coordinator::{Coordinator, OptionsError, Storage, TopologyError};
use alldata_peer_client_http::{ClientConfig, ClientError, HttpTransport};
use alldata_peer_server_http::{NodeHooks, PeerState, ServerConfig};
use alldata_peer_wire::Durability as WireDurability;
use alldata_server_http::{
    ApiConfig, ApiState, Counter, IntervalInfo, IntervalRef, IntervalSource,
};
use alldata_storage_leveldb::{
    Durability, Interval, IntervalClosed, IntervalLength, LevelDbStorage, OpenError,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use alldata_coordinator::repair::{RepairOptions, RepairStats};
pub use alldata_server_http::Limits;
pub use config::{DEFAULT_WRITE_BUFFER_BYTES, NodeConfig, PeerSpec, parse_commit_level};

mod config;
mod members;

use config::check_peers;

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
    /// The largest event is over what peers exchange in one frame.
    #[error(
        "--max-event-bytes {max_event_bytes} is over the largest event peers exchange ({limit} bytes)"
    )]
    EventTooLarge {
        /// The configured largest event.
        max_event_bytes: usize,
        /// The protocol's limit.
        limit: usize,
    },
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
    /// A node with seeds only could not get the member list from any seed
    /// (it needs the client-key decider set before it serves).
    #[error("cannot join through the seeds: {0}")]
    Join(String),
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

/// A running node. Stop it with [`Node::shutdown`]; dropping it leaves its
/// servers running until the runtime ends.
pub struct Node {
    id: String,
    api_addr: SocketAddr,
    peer_addr: SocketAddr,
    coordinator: Coordinator,
    storage: Arc<LevelDbStorage>,
    feed: Feed,
    closed: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<IntervalClosed>>>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    repair: Option<JoinHandle<()>>,
    cluster: Arc<members::Cluster>,
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
        if config.max_event_bytes > alldata_peer_wire::MAX_TAIL_EVENT {
            return Err(NodeError::EventTooLarge {
                max_event_bytes: config.max_event_bytes,
                limit: alldata_peer_wire::MAX_TAIL_EVENT,
            });
        }
        check_peers(&config)?;
        // A node with seeds only takes the client-key decider set from a
        // seed before anything else (see `members`).
        let joined = if config.peers.is_empty() && !config.seeds.is_empty() {
            let probe = HttpTransport::new(ClientConfig::new(config.cluster_secret.clone()))?;
            let list = members::fetch_from_seeds(&probe, &config.seeds, config.join_timeout)
                .await
                .map_err(NodeError::Join)?;
            tracing::info!(seed_node = %list.node, members = list.members.len(), deciders = list.deciders.len(), "member list taken from a seed");
            Some(list)
        } else {
            None
        };
        // The storage first: after a crash its open recounts the open
        // intervals, and until the ports are bound peers see a refused
        // connection (a clear "not here"), not one that never answers.
        let storage_options = alldata_storage_leveldb::Options::new(&config.data_dir)
            .durability(config.durability)
            .interval_length(config.interval)
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
            // Gossip: UDP at the peer endpoint's own address and port.
            let udp = if config.gossip {
                let socket = tokio::net::UdpSocket::bind(peer.1)
                    .await
                    .map_err(|source| NodeError::Bind {
                        what: "gossip socket (UDP)",
                        addr: peer.1,
                        source,
                    })?;
                Some(socket)
            } else {
                None
            };
            Ok::<_, NodeError>((api, peer, udp))
        };
        let ((api_listener, api_addr), (peer_listener, peer_addr), udp) = match bound.await {
            Ok(bound) => bound,
            Err(e) => {
                storage.close().await;
                return Err(e);
            }
        };
        let storage = Arc::new(storage);
        // Repair digests in memory: every key stored through the wrapper is
        // added to its cell (the index is filled below, once the members are
        // known).
        let digest_index = DigestIndex::new(
            config.repair.lookback + config.repair.settle + Duration::from_secs(60),
        );
        let indexed: Arc<dyn Storage> = digest_index.wrap(storage.clone());
        // Every event stored through this wrapper (local writes and peers'
        // replica writes) is published on the live feed `GET /events/tail`
        // and peers' tails read.
        let (fed, feed) = Feed::wrap(indexed, DEFAULT_FEED_CAPACITY);
        let dyn_storage: Arc<dyn Storage> = fed;
        // Kept for an embedder (`Node::closed_intervals`): one small
        // notification per closed interval queues until it is taken.
        let closed = storage.closed_intervals();

        // The peer protocol carries the durability: in sync mode a peer that
        // stores buffered refuses this node's replicas instead of counting
        // as a durable copy.
        let wire_durability = match config.durability {
            Durability::Sync => WireDurability::Sync,
            Durability::Buffered => WireDurability::Buffered,
        };
        let transport = HttpTransport::new(
            ClientConfig::new(config.cluster_secret.clone())
                .with_attempt_timeout(config.options.replica_timeout)
                .with_durability(wire_durability),
        )?;
        let coordinator = Coordinator::new(
            config.id.as_str().into(),
            config.location.clone(),
            config.options.clone(),
            Arc::clone(&dyn_storage),
            Arc::new(transport.clone()),
        )?
        .with_peer_reader(Arc::new(transport.clone()));
        let removed_file = config.data_dir.join(members::REMOVED_FILE);
        let mut removed = members::load_removed(&removed_file);
        let mut deciders = std::collections::BTreeMap::new();
        match &joined {
            Some(list) => {
                removed.extend(list.removed.iter().cloned());
                for d in &list.deciders {
                    if !removed.contains(&d.id) {
                        deciders.insert(d.id.clone(), d.clone());
                    }
                }
            }
            None => {
                deciders.insert(
                    config.id.clone(),
                    members::Decider {
                        id: config.id.clone(),
                        peer_address: peer_addr.to_string(),
                        region: config.location.region.clone(),
                        zone: config.location.zone.clone(),
                    },
                );
                for p in config.peers.iter().filter(|p| !removed.contains(&p.id)) {
                    deciders.insert(p.id.clone(), members::Decider::from(p));
                }
            }
        }
        for id in &removed {
            coordinator.remove_member(&alldata_coordinator::NodeId::new(id));
        }
        let local_decides = deciders.contains_key(&config.id);
        coordinator.set_local_decides_client_keys(local_decides);
        // A joiner learns the static members from the seed's list (a node
        // with static peers adds them below).
        if joined.is_some() {
            for d in deciders.values().filter(|d| d.id != config.id) {
                coordinator
                    .add_member_at(
                        d.id.as_str(),
                        d.peer_address.as_str(),
                        &alldata_coordinator::Location::new(&d.region, &d.zone),
                        true,
                    )
                    .map_err(|source| NodeError::Peer {
                        peer: d.id.clone(),
                        source,
                    })?;
            }
        }
        // Members the seed sees down or gone: not placed on until gossip
        // says they are up (gossip never reports a member down that it
        // never saw up).
        for m in joined.iter().flat_map(|l| l.down_members()) {
            coordinator.set_peer_down(&alldata_coordinator::NodeId::new(m), true);
        }
        coordinator.set_digest_index(Arc::clone(&digest_index));
        // An empty storage under an id that may have held events (a replaced
        // disk): catch up before deciding keys it may have lost or counting
        // as a holder (see `alldata_coordinator::catch_up`). A fresh cluster
        // goes through it too, for its first rounds.
        let empty =
            futures::StreamExt::next(&mut storage.scan(alldata_coordinator::ScanRange::all(), 1))
                .await
                .is_none();
        // A node joining by seed under an id the cluster never had is new, not
        // replaced: nothing to catch up on.
        let known_before = match &joined {
            Some(list) => list.knows(&config.id),
            None => !config.peers.is_empty(),
        };
        if empty && known_before {
            if config.repair_interval.is_zero() {
                tracing::warn!(
                    "the storage is empty and repair is disabled: this node will not catch up on what it held before"
                );
            } else {
                coordinator.catch_up().begin(now_ms());
                tracing::info!("the storage is empty: catching up from the other members");
            }
        }
        digest_index.set_topology(coordinator.topology_source());
        for p in &config.peers {
            if removed.contains(&p.id) {
                tracing::warn!(peer = %p, "configured peer was removed from the cluster; left out");
                continue;
            }
            coordinator
                .add_peer_at(p.id.as_str(), p.address.as_str(), &p.location)
                .map_err(|source| NodeError::Peer {
                    peer: p.to_string(),
                    source,
                })?;
        }
        // One scan of the lookback fills the digest index, once the members
        // are known (client keys are indexed per decider) and before
        // anything is served or written.
        let started = std::time::Instant::now();
        match digest_index.build(storage.as_ref(), now_ms()).await {
            Ok(events) => tracing::info!(
                events,
                took_ms = started.elapsed().as_millis() as u64,
                "repair digest index built"
            ),
            Err(error) => {
                tracing::warn!(%error, "repair digest index not built; digests are computed by scans")
            }
        }

        let cluster = Arc::new(members::Cluster::new(
            config.id.clone(),
            coordinator.clone(),
            deciders,
            removed.clone(),
            removed_file,
        ));
        if let Some(socket) = udp {
            let advertise = config.advertise_peer.unwrap_or(peer_addr);
            let identity = alldata_membership::MemberInfo::new(
                config.id.clone(),
                advertise,
                advertise.to_string(),
                config.location.region.clone(),
                config.location.zone.clone(),
                local_decides,
            );
            let mut seeds = Vec::new();
            for s in config
                .seeds
                .iter()
                .chain(config.peers.iter().map(|p| &p.address))
            {
                match tokio::net::lookup_host(s.as_str()).await {
                    Ok(mut addrs) => seeds.extend(addrs.next()),
                    Err(error) => {
                        tracing::warn!(seed = %s, %error, "cannot resolve a seed or peer for gossip")
                    }
                }
            }
            let mut mc =
                alldata_membership::MembershipConfig::new(identity, config.cluster_secret.clone());
            mc.seeds = seeds;
            mc.removed = removed;
            if let Some(timers) = &config.gossip_timers {
                mc.foca = timers.clone();
            }
            let membership = alldata_membership::Membership::start(mc, socket, cluster.clone());
            cluster.set_membership(Arc::new(membership));
        }

        // The storage's own window check, so a PUT with an unacceptable key is a
        // 400 before any replica is written. A weak handle: the API must not
        // keep the database open after shutdown.
        let window = Arc::downgrade(&storage);
        // Peers' replica writes go through the coordinator's guarded storage,
        // like its own local writes: the guard keeps fast appends safe.
        // Rings the repair loop when a member catching up asks for a round.
        let repair_nudge = Arc::new(tokio::sync::Notify::new());
        let peer_state = PeerState::new(
            Arc::clone(coordinator.storage()),
            ServerConfig::new(config.cluster_secret.clone())
                .with_max_body_bytes((config.max_event_bytes + 1024).max(8 * 1024 * 1024))
                .with_limits(config.limits)
                .with_durability(wire_durability)
                .with_max_event_bytes(config.max_event_bytes),
        )
        .with_feed(feed.clone())
        .with_digest_index(Arc::clone(&digest_index))
        .with_node({
            let progress = coordinator.clone();
            let catching = coordinator.clone();
            let guards = coordinator.clone();
            let repairs = !config.repair_interval.is_zero();
            NodeHooks {
                repair_progress: Arc::new(move || {
                    let stats = progress.repair_stats();
                    repairs.then(|| (stats.rounds_started(), stats.last_settled_round()))
                }),
                catching_up: Arc::new(move || catching.catch_up().is_catching_up()),
                // Asked only while catching up (see `NodeHooks::guards`).
                guards: Arc::new(move |key| guards.catch_up().guards(&guards.topology(), key)),
                nudge_repair: {
                    let nudge = Arc::clone(&repair_nudge);
                    Arc::new(move || nudge.notify_one())
                },
            }
        })
        .with_topology({
            let coordinator = coordinator.clone();
            Arc::new(move || coordinator.topology())
        })
        .with_members(Arc::new(members::Admin(cluster.clone())));
        let api_config = ApiConfig::default()
            .with_max_event_bytes(config.max_event_bytes)
            .with_durability(wire_durability.as_str())
            .with_health_probe_interval(Some(config.health_probe_interval))
            .with_feed(feed.clone())
            .with_max_exports(config.max_exports)
            .with_tail_stall_timeout(config.tail_stall_timeout)
            .with_tail_limits(
                config.max_tail_subscribers,
                config.tail_buffer_events,
                Duration::from_secs(15),
            )
            .with_max_batch_bytes(config.max_batch_bytes)
            .with_max_batch_events(config.max_batch_events)
            .with_limits(config.limits)
            .with_key_validator(move |key| window.upgrade().map_or(Ok(()), |s| s.check_key(key)))
            .with_intervals(StorageIntervals {
                storage: Arc::downgrade(&storage),
                length: config.interval,
            })
            .with_counters(peer_counters(peer_state.clone(), transport.clone()))
            .with_counters(repair_counters(coordinator.clone(), transport.clone()))
            .with_members({
                let cluster = cluster.clone();
                move || serde_json::to_value(cluster.list()).unwrap_or_default()
            });
        let tail_feed = feed;
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
        if cluster.membership().is_some() && joined.is_none() && !config.peers.is_empty() {
            tokio::spawn(members::learn_down_from_peers(
                Arc::downgrade(&cluster),
                transport.clone(),
                config.peers.iter().map(|p| p.address.clone()).collect(),
                config.join_timeout,
                stop.subscribe(),
            ));
        }
        let repair = (!config.repair_interval.is_zero()).then(|| {
            let store = Arc::downgrade(&storage);
            // Writes older than the storage's acceptance window are refused,
            // so a round never looks back past it.
            let oldest = move |now_ms| {
                store
                    .upgrade()
                    .map(|s| s.accept_window().oldest_ms(s.interval_length(), now_ms))
            };
            tokio::spawn(repair_loop(
                coordinator.clone(),
                config.repair.clone(),
                oldest,
                config.repair_interval,
                repair_nudge,
                stop.subscribe(),
            ))
        });
        tracing::info!(id = %config.id, %api_addr, %peer_addr, location = %config.location, peers = config.peers.len(), "node started");
        Ok(Self {
            id: config.id,
            api_addr,
            peer_addr,
            coordinator,
            storage,
            feed: tail_feed,
            closed: std::sync::Mutex::new(closed),
            stop,
            servers,
            repair,
            cluster,
        })
    }

    /// The member list as this node serves it (`GET /peer/v1/members` and
    /// `/health`'s `members`): gossip's view with each member's state.
    pub fn members(&self) -> serde_json::Value {
        serde_json::to_value(self.cluster.list()).unwrap_or_default()
    }

    /// Adds a static peer after the start, as a `--peer` flag would have:
    /// it decides client keys (every node must list the same static peers)
    /// and is announced to by gossip. For a node that joins a running
    /// cluster, use [`NodeConfig::seeds`] instead.
    pub async fn add_peer(&self, peer: &PeerSpec) -> Result<(), NodeError> {
        self.coordinator
            .add_member_at(
                peer.id.as_str(),
                peer.address.as_str(),
                &peer.location,
                true,
            )
            .map_err(|source| NodeError::Peer {
                peer: peer.to_string(),
                source,
            })?;
        self.coordinator
            .set_decides_client_keys(&alldata_coordinator::NodeId::new(&peer.id), true);
        self.cluster.add_decider(members::Decider::from(peer));
        if let Some(m) = self.cluster.membership()
            && let Ok(mut addrs) = tokio::net::lookup_host(peer.address.as_str()).await
            && let Some(addr) = addrs.next()
        {
            let _ = m.announce(addr).await;
        }
        Ok(())
    }

    /// Removes member `id` for good (as `alldata admin remove` does).
    pub async fn remove_member(&self, id: &str) -> Result<(), String> {
        use alldata_peer_server_http::MembersAdmin;
        members::Admin(self.cluster.clone())
            .remove(id.to_owned())
            .await
            .map(|_| ())
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

    /// The "interval closed" notifications of the node's storage, in closing
    /// order, from the node's start on: each interval once, empty ones too,
    /// and those that closed while the node was down at its start (see
    /// `LevelDbStorage::closed_intervals`). A batch job waits on this to
    /// export an interval; `GET /intervals?closed_since=NAME` is the same for
    /// pollers. The receiver is handed out once; later calls return `None`.
    pub fn closed_intervals(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<IntervalClosed>> {
        self.closed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The live feed of the node's storage: with
    /// [`Coordinator::tail`](alldata_coordinator::Coordinator::tail) it gives
    /// an embedder the cluster's new events as a `Stream`, as
    /// `GET /events/tail` does over HTTP.
    pub fn feed(&self) -> &Feed {
        &self.feed
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
            feed,
            closed,
            stop,
            servers,
            repair,
            cluster,
            ..
        } = self;
        // Goodbye first: the members stop placing on this node at once.
        if let Some(m) = cluster.membership() {
            m.leave(Duration::from_millis(500)).await;
        }
        drop(cluster);
        // Tails are endless responses: end them, or they hold the shutdown.
        feed.close();
        let _ = stop.send(true);
        // A round in flight is cut off (it holds the coordinator and so the
        // storage); its copies so far stay, the rest waits for the next start.
        if let Some(mut r) = repair
            && tokio::time::timeout(Duration::from_millis(200), &mut r)
                .await
                .is_err()
        {
            r.abort();
            let _ = r.await;
        }
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
        // The feed (and its subscriptions) hold the storage too.
        drop(feed);
        drop(closed);
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

/// Gossip timers scaled to a probe period: probes answered within half of
/// it, a suspect declared down after four periods, gossip five times per
/// period.
pub fn gossip_timers(probe_period: Duration) -> alldata_membership::foca::Config {
    let mut c = alldata_membership::default_foca_config();
    c.probe_period = probe_period;
    c.probe_rtt = probe_period / 2;
    c.suspect_to_down_after = probe_period * 4;
    if let Some(g) = c.periodic_gossip.as_mut() {
        g.frequency = probe_period / 5;
    }
    c
}

/// The storage's consolidation intervals for the client API. A weak handle:
/// the API must not keep the database open after shutdown.
struct StorageIntervals {
    storage: std::sync::Weak<LevelDbStorage>,
    length: IntervalLength,
}

#[async_trait::async_trait]
impl IntervalSource for StorageIntervals {
    fn length(&self) -> String {
        self.length.to_string()
    }

    async fn list(&self) -> Result<Vec<IntervalInfo>, String> {
        let storage = self
            .storage
            .upgrade()
            .ok_or_else(|| "the storage is closed".to_owned())?;
        let states = storage.intervals().await.map_err(|e| e.to_string())?;
        Ok(states
            .into_iter()
            .map(|s| IntervalInfo {
                name: s.interval.name(),
                start: s.interval.start_utc(),
                end: s.interval.end_utc(),
                closed: s.closed,
                events: s.events,
            })
            .collect())
    }

    fn lookup(&self, name: &str) -> Option<IntervalRef> {
        let interval = Interval::from_name(name).filter(|i| i.length() == self.length)?;
        let closed = self
            .storage
            .upgrade()
            .is_some_and(|s| s.is_closed(&interval));
        Some(IntervalRef {
            range: interval.key_range(),
            closed,
        })
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

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs a repair round every `interval` (counted from the end of the
/// previous one) until `stop` says so.
async fn repair_loop(
    coordinator: Coordinator,
    options: RepairOptions,
    oldest_accepted: impl Fn(u64) -> Option<u64> + Send + 'static,
    interval: Duration,
    nudge: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        // While catching up, rounds come at once and then every second at
        // most, so that the node is back to full service soon.
        let catching_up = coordinator.catch_up().is_catching_up();
        let wait = match (catching_up, first) {
            (true, true) => Duration::ZERO,
            (true, false) => interval.min(Duration::from_secs(1)),
            (false, _) => interval,
        };
        first = false;
        // A member catching up asks for a round soon (it waits for one of
        // ours that started after it asked).
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
            () = nudge.notified() => {}
        }
        let now = now_ms();
        let mut round = options.clone();
        if catching_up
            && coordinator.catch_up().phase()
                == alldata_coordinator::catch_up::CatchUpPhase::OwnKeys
        {
            // Until its own keys are back, a node catching up looks over
            // every key its storage accepts, past and ahead, not only the
            // lookback: a key it decides and does not get back would be
            // decided anew by the next put of it.
            round.ahead = CATCH_UP_AHEAD;
            if let Some(oldest) = oldest_accepted(now) {
                let window =
                    now.saturating_add(CATCH_UP_AHEAD.as_millis() as u64) - oldest.min(now);
                round.lookback = Duration::from_millis(window);
            }
        } else if let Some(oldest) = oldest_accepted(now) {
            let settle = round.settle.as_millis() as u64;
            let window = now.saturating_sub(settle).saturating_sub(oldest);
            round.lookback = round.lookback.min(Duration::from_millis(window));
        }
        let report = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            report = coordinator.repair_round(&round, now) => report,
        };
        if catching_up {
            let phase = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                phase = coordinator.catch_up_step() => phase,
            };
            tracing::debug!(
                phase = phase.as_str(),
                complete = report.complete,
                "catching up"
            );
        }
        if report.repaired > 0 || report.conflicts > 0 || report.mismatches > 0 {
            tracing::info!(
                buckets = report.buckets,
                mismatches = report.mismatches,
                repaired = report.repaired,
                conflicts = report.conflicts,
                failures = report.failures,
                complete = report.complete,
                "repair round"
            );
        }
    }
}

/// How far ahead of now the rounds of a node catching up look: beyond any
/// key a storage accepts (LevelDB: up to the end of the next day).
const CATCH_UP_AHEAD: Duration = Duration::from_secs(2 * 24 * 3600);

/// The repair rounds' counters, for `GET /metrics`.
fn repair_counters(
    coordinator: Coordinator,
    client: HttpTransport,
) -> impl Fn() -> Vec<Counter> + Send + Sync + 'static {
    move || {
        let stats = coordinator.repair_stats();
        vec![
            Counter {
                name: "alldata_repair_rounds_total",
                help: "Anti-entropy repair rounds run.",
                value: stats.rounds(),
            },
            Counter {
                name: "alldata_repair_complete_rounds_total",
                help: "Repair rounds that compared every bucket with every member and attempted every copy.",
                value: stats.complete_rounds(),
            },
            Counter {
                name: "alldata_repair_events_total",
                help: "Missing copies stored by repair (on peers or on this node).",
                value: stats.repaired(),
            },
            Counter {
                name: "alldata_repair_read_repairs_total",
                help: "Copies to a decider that lacked an event, made by reads that found it elsewhere.",
                value: stats.read_repairs(),
            },
            Counter {
                name: "alldata_repair_bytes_total",
                help: "Event bytes copied by repair.",
                value: stats.bytes(),
            },
            Counter {
                name: "alldata_repair_mismatches_total",
                help: "Time buckets whose digests disagreed.",
                value: stats.mismatches(),
            },
            Counter {
                name: "alldata_repair_conflicts_total",
                help: "Repair copies refused because the target holds other bytes (never overwritten).",
                value: stats.conflicts(),
            },
            Counter {
                name: "alldata_repair_quarantined_total",
                help: "Copies on members with other bytes than this node (their decider) held for a key, moved aside by repair (write-once: the decider's bytes are the acknowledged ones).",
                value: stats.quarantined(),
            },
            Counter {
                name: "alldata_repair_failures_total",
                help: "Repair copies or key lists that failed (retried next round).",
                value: stats.failures(),
            },
            Counter {
                name: "alldata_repair_last_settled_round_timestamp_seconds",
                help: "When the last complete repair round ended (Unix seconds; 0 before the first). Age: time() minus this.",
                value: stats.last_complete_ms().map_or(0, |ms| ms / 1000),
            },
            Counter {
                name: "alldata_repair_digest_scanned_events_total",
                help: "Events read from storage to answer repair digest requests (this node's and its peers'); the rest is answered from the in-memory digest index.",
                value: coordinator
                    .digest_index()
                    .map_or(0, |i| i.stats().scanned_events()),
            },
            Counter {
                name: "alldata_repair_digest_cached_cells_total",
                help: "One-second cells of repair digests answered from memory.",
                value: coordinator
                    .digest_index()
                    .map_or(0, |i| i.stats().cached_cells()),
            },
            Counter {
                name: "alldata_repair_protocol_requests_total",
                help: "Digest and key list requests this node sent.",
                value: client.stats().repair_requests(),
            },
            Counter {
                name: "alldata_repair_protocol_bytes_total",
                help: "Bytes of those requests' URLs and answer bodies (HTTP headers not included).",
                value: client.stats().repair_bytes(),
            },
        ]
    }
}
