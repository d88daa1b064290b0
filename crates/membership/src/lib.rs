//! Live cluster membership and failure detection for AllData nodes: SWIM
//! gossip by [foca](https://docs.rs/foca) (sans-IO), carried over a UDP
//! socket whose every datagram is authenticated with the cluster secret.
//!
//! A [`Membership`] owns the socket and one task that drives foca: it
//! delivers datagrams and timers, announces itself to seeds until some
//! member answers, and reports what changes to a [`Listener`] (a member is
//! up, down or left, or removed for good). [`Membership::members`] is the
//! list as gossip sees it, for `/health` and the admin commands.
//!
//! Besides foca's messages, two datagrams of our own ride on the socket: a
//! *goodbye* sent to every member on a clean stop ([`Membership::leave`]),
//! so they stop placing on the node at once, and the list of *removed* ids
//! ([`Membership::remove`]), sent to every member at once and then again
//! to a random member now and then, so a member that missed it still
//! learns it and stale gossip never brings a removed id back.
//!
//! ```no_run
//! use std::sync::Arc;
//! use alldata_membership::{MemberInfo, Membership, MembershipConfig, NoListener};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let socket = tokio::net::UdpSocket::bind("127.0.0.1:7101").await?;
//! let me = MemberInfo::new("n1", socket.local_addr()?, "127.0.0.1:7101", "eu", "a", true);
//! let mut config = MembershipConfig::new(me, "cluster-secret");
//! config.seeds = vec!["127.0.0.1:7102".parse().unwrap()];
//! let membership = Membership::start(config, socket, Arc::new(NoListener));
//! for m in membership.members() {
//!     println!("{} {} {:?}", m.info.id, m.info.peer_address, m.state);
//! }
//! membership.leave(std::time::Duration::from_millis(200)).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `wire.rs`: the datagram format and its HMAC tag.
//! - this file: the identity, the member list and the task driving foca.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod wire;

/// The SWIM library, for its [`foca::Config`].
pub use foca;

/// Most ids remembered as removed (older ones are forgotten first).
pub const MAX_REMOVED: usize = 1024;

/// Longest id, address, region or zone accepted in an identity (longer
/// ones make the identity refused).
const MAX_FIELD: usize = 255;

/// A member as gossip carries it: who it is, where its peer endpoint and
/// gossip socket are, where it sits, and its incarnation (a restarted node
/// comes back with a higher one and replaces its old self).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// The node id.
    pub id: String,
    /// Where its gossip socket is (the same port as its peer endpoint).
    pub gossip: SocketAddr,
    /// `HOST:PORT` of its peer endpoint (what replica writes go to).
    pub peer_address: String,
    /// Its region.
    pub region: String,
    /// Its zone inside the region.
    pub zone: String,
    /// Whether it was configured statically (`--peer`): such members decide
    /// client keys; members that joined by seed do not. Informative: each
    /// node decides with its own decider set.
    pub static_member: bool,
    /// Bumped on every start (start time in ms) and on every rejoin after
    /// being declared down; the higher one wins at one gossip address.
    pub incarnation: u64,
}

impl MemberInfo {
    /// An identity with the current time as incarnation.
    pub fn new(
        id: impl Into<String>,
        gossip: SocketAddr,
        peer_address: impl Into<String>,
        region: impl Into<String>,
        zone: impl Into<String>,
        static_member: bool,
    ) -> Self {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)
            .max(1);
        Self {
            id: id.into(),
            gossip,
            peer_address: peer_address.into(),
            region: region.into(),
            zone: zone.into(),
            static_member,
            incarnation,
        }
    }

    /// What stands in for a seed whose identity is not known yet: foca
    /// accepts an announce addressed to any identity at its address.
    fn seed(gossip: SocketAddr) -> Self {
        Self {
            id: String::new(),
            gossip,
            peer_address: String::new(),
            region: String::new(),
            zone: String::new(),
            static_member: false,
            incarnation: 0,
        }
    }

    fn acceptable(&self) -> bool {
        !self.id.is_empty()
            && self.incarnation > 0
            && [&self.id, &self.peer_address, &self.region, &self.zone]
                .iter()
                .all(|f| f.len() <= MAX_FIELD)
    }
}

impl foca::Identity for MemberInfo {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            incarnation: self.incarnation.wrapping_add(1).max(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, &self.id) > (adversary.incarnation, &adversary.id)
    }
}

/// How gossip sees a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering.
    Alive,
    /// Some member could not reach it; it is declared down unless it
    /// refutes that in time. Still used for placement.
    Suspect,
    /// Declared down by failure detection: not placed on.
    Down,
    /// Said goodbye on a clean stop: not placed on.
    Left,
}

/// One member of [`Membership::members`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberView {
    /// Its identity.
    #[serde(flatten)]
    pub info: MemberInfo,
    /// Its state.
    pub state: MemberState,
}

/// What a node does when membership changes. Called from the membership
/// task: keep it quick and never block.
pub trait Listener: Send + Sync + 'static {
    /// `member` is alive: new, back, or with a new identity (a restart).
    fn member_up(&self, member: &MemberInfo);
    /// `member` was declared down (`left` false) or said goodbye (`left` true).
    fn member_down(&self, member: &MemberInfo, left: bool);
    /// `id` was removed from the cluster for good.
    fn member_removed(&self, id: &str);
}

/// A [`Listener`] that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoListener;

impl Listener for NoListener {
    fn member_up(&self, _: &MemberInfo) {}
    fn member_down(&self, _: &MemberInfo, _: bool) {}
    fn member_removed(&self, _: &str) {}
}

/// How a [`Membership`] runs.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This node's identity (its `gossip` must be the socket's address as
    /// the others reach it).
    pub identity: MemberInfo,
    /// The cluster secret: datagrams are sealed with it, and any datagram
    /// without its tag is dropped.
    pub secret: String,
    /// Gossip addresses to announce to until some member answers (seeds
    /// and static peers).
    pub seeds: Vec<SocketAddr>,
    /// foca's timers (probe period, suspicion time, ...).
    pub foca: foca::Config,
    /// How often seeds are announced to while no member is known, and the
    /// removed ids are resent to a random member.
    pub tick: Duration,
    /// Ids already removed (kept across restarts by the node).
    pub removed: BTreeSet<String>,
    /// Seed of the gossip RNG (`None`: a random one, logged).
    pub rng_seed: Option<u64>,
}

impl MembershipConfig {
    /// foca's LAN settings for a cluster of about 32 nodes (a probe every
    /// second, down about 4 s after a failed probe), announcing every second.
    pub fn new(identity: MemberInfo, secret: impl Into<String>) -> Self {
        Self {
            identity,
            secret: secret.into(),
            seeds: Vec::new(),
            foca: default_foca_config(),
            tick: Duration::from_secs(1),
            removed: BTreeSet::new(),
            rng_seed: None,
        }
    }
}

/// The default gossip settings: foca's LAN settings for about 32 nodes (a
/// probe a second, 500 ms to answer, a suspect declared down after about
/// 6 s, gossip every 200 ms, datagrams of at most 1400 bytes).
pub fn default_foca_config() -> foca::Config {
    let mut c = foca::Config::new_lan(NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN));
    c.max_packet_size = NonZeroUsize::new(1400).unwrap_or(NonZeroUsize::MIN);
    c
}

/// Why a [`Membership`] call failed. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The membership task has stopped (the node is shutting down).
    #[error("membership has stopped")]
    Stopped,
    /// The id cannot be removed: it is this node's own.
    #[error("cannot remove this node itself ({0}); remove it from another member")]
    RemoveSelf(String),
    /// The id is empty.
    #[error("an empty id cannot be removed")]
    EmptyId,
}

enum Command {
    Announce(SocketAddr),
    Remove(String, oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
}

struct Shared {
    me: MemberInfo,
    members: BTreeMap<String, MemberView>,
    removed: BTreeSet<String>,
}

/// A running membership: the socket, the foca task and the member list.
pub struct Membership {
    commands: mpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    task: Mutex<Option<JoinHandle<()>>>,
    local_addr: Option<SocketAddr>,
    id: String,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("id", &self.id)
            .field("addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts gossiping on `socket` (already bound); announces to
    /// `config.seeds` until a member answers. Must run inside a tokio runtime.
    pub fn start(config: MembershipConfig, socket: UdpSocket, listener: Arc<dyn Listener>) -> Self {
        let seed = config.rng_seed.unwrap_or_else(|| rand::rng().random());
        tracing::info!(id = %config.identity.id, seed, "membership: gossip RNG seed");
        let shared = Arc::new(Mutex::new(Shared {
            me: config.identity.clone(),
            members: BTreeMap::new(),
            removed: config.removed.clone(),
        }));
        let (commands, rx) = mpsc::channel(16);
        let local_addr = socket.local_addr().ok();
        let id = config.identity.id.clone();
        let foca = Foca::new(
            config.identity.clone(),
            config.foca.clone(),
            StdRng::seed_from_u64(seed),
            PostcardCodec,
        );
        let driver = Driver {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket,
            sealer: wire::Sealer::new(config.secret.as_bytes()),
            seeds: config.seeds,
            timers: BTreeMap::new(),
            timer_seq: 0,
            shared: Arc::clone(&shared),
            listener,
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            tick: config.tick,
            ticks: 0,
        };
        let task = tokio::spawn(driver.run(rx));
        Self {
            commands,
            shared,
            task: Mutex::new(Some(task)),
            local_addr,
            id,
        }
    }

    /// The gossip socket's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Every member as gossip sees it, this node first (alive), then the
    /// others by id. Removed ids are not listed.
    pub fn members(&self) -> Vec<MemberView> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let me = MemberView {
            info: shared.me.clone(),
            state: MemberState::Alive,
        };
        std::iter::once(me)
            .chain(shared.members.values().cloned())
            .collect()
    }

    /// Announces this node to the member at gossip address `to` (a peer
    /// added after the start); it is also announced to until some member
    /// answers, like the seeds.
    pub async fn announce(&self, to: SocketAddr) -> Result<(), MembershipError> {
        self.commands
            .send(Command::Announce(to))
            .await
            .map_err(|_| MembershipError::Stopped)
    }

    /// The ids removed for good.
    pub fn removed(&self) -> BTreeSet<String> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .removed
            .clone()
    }

    /// Removes `id` for good: it leaves this node's member list at once
    /// (the [`Listener`] hears of it), every member is told, and gossip
    /// about it is ignored from then on. Removing an id twice is a no-op.
    pub async fn remove(&self, id: &str) -> Result<(), MembershipError> {
        if id.is_empty() {
            return Err(MembershipError::EmptyId);
        }
        if id == self.id {
            return Err(MembershipError::RemoveSelf(id.to_owned()));
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Remove(id.to_owned(), tx))
            .await
            .map_err(|_| MembershipError::Stopped)?;
        rx.await.map_err(|_| MembershipError::Stopped)
    }

    /// Leaves the cluster (a clean stop): tells foca, sends a goodbye to
    /// every member, and stops the task (waits at most `timeout`). Later
    /// calls do nothing.
    pub async fn leave(&self, timeout: Duration) {
        let Some(mut task) = self.take_task() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
        // The task ends after the goodbye; it holds the listener until then.
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops the task without a goodbye (as a crash would look to others).
    pub fn abort(&self) {
        if let Some(task) = self.take_task() {
            task.abort();
        }
    }

    fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.abort();
    }
}

type Gossip = Foca<MemberInfo, PostcardCodec, StdRng, NoCustomBroadcast>;

struct Driver {
    foca: Gossip,
    runtime: AccumulatingRuntime<MemberInfo>,
    socket: UdpSocket,
    sealer: wire::Sealer,
    seeds: Vec<SocketAddr>,
    timers: BTreeMap<(Instant, u64), Timer<MemberInfo>>,
    timer_seq: u64,
    shared: Arc<Mutex<Shared>>,
    listener: Arc<dyn Listener>,
    rng: StdRng,
    tick: Duration,
    ticks: u64,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; wire::MAX_DATAGRAM];
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(&buf[..n], from),
                    // An ICMP "port unreachable" from an earlier send shows
                    // up here on some systems: nothing to do.
                    Err(error) => tracing::trace!(%error, "membership: receive failed"),
                },
                () = sleep_until(next) => self.fire_timers(),
                _ = tick.tick() => self.on_tick(),
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(Command::Announce(to)) => {
                        if !self.seeds.contains(&to) && self.seeds.len() < 1024 {
                            self.seeds.push(to);
                        }
                        if let Err(error) = self.foca.announce(MemberInfo::seed(to), &mut self.runtime) {
                            tracing::debug!(%to, %error, "membership: announce");
                        }
                    }
                    Some(Command::Remove(id, done)) => {
                        self.remove(id, true);
                        self.send_removed_to_all().await;
                        let _ = done.send(());
                    }
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        return;
                    }
                },
            }
            self.flush().await;
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let Some((kind, payload)) = self.sealer.open(datagram) else {
            tracing::debug!(%from, len = datagram.len(), "membership: unauthenticated datagram dropped");
            return;
        };
        match kind {
            wire::FOCA => {
                if let Err(error) = self.foca.handle_data(payload, &mut self.runtime) {
                    tracing::debug!(%from, %error, "membership: gossip message refused");
                }
            }
            wire::GOODBYE => match postcard::from_bytes::<(String, u64)>(payload) {
                Ok((id, incarnation)) => self.goodbye(&id, incarnation),
                Err(error) => tracing::debug!(%from, %error, "membership: malformed goodbye"),
            },
            wire::REMOVED => match postcard::from_bytes::<Vec<String>>(payload) {
                Ok(ids) => {
                    for id in ids.into_iter().take(MAX_REMOVED) {
                        self.remove(id, false);
                    }
                }
                Err(error) => tracing::debug!(%from, %error, "membership: malformed removed list"),
            },
            other => tracing::debug!(%from, kind = other, "membership: unknown datagram kind"),
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                tracing::debug!(%error, "membership: timer");
            }
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        // Until some member answers, keep announcing to every seed.
        if self.foca.num_members() == 0 {
            let own = self.foca.identity().gossip;
            for seed in self.seeds.clone() {
                if seed != own
                    && let Err(error) = self
                        .foca
                        .announce(MemberInfo::seed(seed), &mut self.runtime)
                {
                    tracing::debug!(%seed, %error, "membership: announce");
                }
            }
        }
    }

    /// Sends what foca asked for, schedules its timers and handles its
    /// notifications.
    async fn flush(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.send(wire::FOCA, &data, to.gossip).await;
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq += 1;
            self.timers
                .insert((Instant::now() + after, self.timer_seq), timer);
        }
        while let Some(n) = self.runtime.to_notify() {
            self.notified(n);
        }
        // Every few ticks, resend the removed ids to a random member.
        if self.ticks >= 5 {
            self.ticks = 0;
            let target = {
                let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                let alive: Vec<SocketAddr> = shared
                    .members
                    .values()
                    .filter(|m| m.state == MemberState::Alive)
                    .map(|m| m.info.gossip)
                    .collect();
                (!shared.removed.is_empty() && !alive.is_empty())
                    .then(|| alive[self.rng.random_range(0..alive.len())])
            };
            if let Some(to) = target {
                let payload = self.removed_payload();
                self.send(wire::REMOVED, &payload, to).await;
            }
        }
        self.refresh_suspects();
    }

    async fn send(&self, kind: u8, payload: &[u8], to: SocketAddr) {
        match self.sealer.seal(kind, payload) {
            Some(datagram) => {
                if let Err(error) = self.socket.send_to(&datagram, to).await {
                    tracing::trace!(%to, %error, "membership: send failed");
                }
            }
            None => tracing::warn!(
                len = payload.len(),
                "membership: datagram too large, not sent"
            ),
        }
    }

    fn notified(&mut self, n: OwnedNotification<MemberInfo>) {
        match n {
            OwnedNotification::MemberUp(m) => self.up(m),
            OwnedNotification::Rename(_, m) => {
                let active = self.foca.iter_members().any(|x| x.id() == &m);
                if active {
                    self.up(m);
                } else {
                    self.update_info(m);
                }
            }
            OwnedNotification::MemberDown(m) => self.down(&m),
            OwnedNotification::Rejoin(me) => {
                tracing::info!(
                    incarnation = me.incarnation,
                    "membership: rejoined after being declared down"
                );
                self.shared.lock().unwrap_or_else(|e| e.into_inner()).me = me;
            }
            OwnedNotification::Defunct => {
                tracing::warn!("membership: this node was declared down");
            }
            OwnedNotification::Active | OwnedNotification::Idle => {}
        }
    }

    fn up(&mut self, m: MemberInfo) {
        if !m.acceptable() {
            tracing::warn!(member = ?m, "membership: member with an unacceptable identity ignored");
            return;
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.removed.contains(&m.id) || shared.me.id == m.id {
            return;
        }
        let changed = match shared.members.get(&m.id) {
            Some(v) => v.state != MemberState::Alive || v.info != m,
            None => true,
        };
        // An older incarnation never replaces a newer one of the same id
        // (at another address: a node moved, and its old self lingers).
        if shared
            .members
            .get(&m.id)
            .is_some_and(|v| v.info.incarnation > m.incarnation)
        {
            return;
        }
        shared.members.insert(
            m.id.clone(),
            MemberView {
                info: m.clone(),
                state: MemberState::Alive,
            },
        );
        drop(shared);
        if changed {
            tracing::info!(id = %m.id, peer = %m.peer_address, region = %m.region, zone = %m.zone, "membership: member up");
            self.listener.member_up(&m);
        }
    }

    fn update_info(&mut self, m: MemberInfo) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = shared.members.get_mut(&m.id)
            && v.info.incarnation <= m.incarnation
        {
            v.info = m;
        }
    }

    fn down(&mut self, m: &MemberInfo) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let Some(v) = shared.members.get_mut(&m.id) else {
            return;
        };
        // News about an older identity than the one known says nothing.
        if v.info.incarnation > m.incarnation || v.state == MemberState::Down {
            return;
        }
        let left = v.state == MemberState::Left;
        if !left {
            v.state = MemberState::Down;
        }
        let info = v.info.clone();
        drop(shared);
        if !left {
            tracing::warn!(id = %info.id, "membership: member declared down");
            self.listener.member_down(&info, false);
        }
    }

    fn goodbye(&mut self, id: &str, incarnation: u64) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let Some(v) = shared.members.get_mut(id) else {
            return;
        };
        if v.info.incarnation != incarnation || v.state == MemberState::Left {
            return;
        }
        v.state = MemberState::Left;
        let info = v.info.clone();
        drop(shared);
        tracing::info!(id = %info.id, "membership: member left");
        self.listener.member_down(&info, true);
    }

    /// Records `id` as removed; `local` when the request came to this node.
    fn remove(&mut self, id: String, local: bool) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if id.is_empty() || shared.removed.contains(&id) || shared.me.id == id {
            if shared.me.id == id && !shared.removed.contains(&id) {
                tracing::warn!("membership: this node was removed from the cluster; stop it");
            }
            return;
        }
        while shared.removed.len() >= MAX_REMOVED {
            if shared.removed.pop_first().is_none() {
                break;
            }
        }
        shared.removed.insert(id.clone());
        shared.members.remove(&id);
        drop(shared);
        tracing::warn!(%id, by_request = local, "membership: member removed for good");
        self.listener.member_removed(&id);
    }

    fn removed_payload(&self) -> Vec<u8> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<&String> = shared.removed.iter().collect();
        postcard::to_allocvec(&ids).unwrap_or_default()
    }

    async fn send_removed_to_all(&mut self) {
        let payload = self.removed_payload();
        for to in self.member_addrs() {
            self.send(wire::REMOVED, &payload, to).await;
        }
    }

    fn member_addrs(&self) -> Vec<SocketAddr> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared
            .members
            .values()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .map(|m| m.info.gossip)
            .collect()
    }

    async fn leave(&mut self) {
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(%error, "membership: leave");
        }
        while let Some((to, data)) = self.runtime.to_send() {
            self.send(wire::FOCA, &data, to.gossip).await;
        }
        let me = self.foca.identity().clone();
        let payload = postcard::to_allocvec(&(&me.id, me.incarnation)).unwrap_or_default();
        for to in self.member_addrs() {
            self.send(wire::GOODBYE, &payload, to).await;
        }
        tracing::info!(id = %me.id, "membership: left the cluster");
    }

    /// Alive members that foca currently suspects show as suspect.
    fn refresh_suspects(&mut self) {
        let suspects: BTreeSet<&str> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| m.id().id.as_str())
            .collect();
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for (id, v) in shared.members.iter_mut() {
            match v.state {
                MemberState::Alive if suspects.contains(id.as_str()) => {
                    v.state = MemberState::Suspect
                }
                MemberState::Suspect if !suspects.contains(id.as_str()) => {
                    v.state = MemberState::Alive
                }
                _ => {}
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    /// Random bytes, and random payloads sealed with the right secret (of
    /// every kind), never stop a member: it still joins a cluster after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_datagrams_do_not_harm_a_member() {
        let seed: u64 = std::env::var("ALLDATA_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random());
        println!("seed {seed} (reproduce with ALLDATA_TEST_SEED={seed})");
        let mut rng = StdRng::seed_from_u64(seed);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let me = MemberInfo::new("a", addr, "127.0.0.1:1", "r", "z", true);
        let a = Membership::start(MembershipConfig::new(me, "s"), socket, Arc::new(NoListener));
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sealer = wire::Sealer::new(b"s");
        for i in 0..600u32 {
            let len = rng.random_range(0..2000);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let datagram = match i % 3 {
                0 => bytes,
                _ => sealer.seal((i % 4) as u8, &bytes).unwrap(),
            };
            sender.send_to(&datagram, addr).await.unwrap();
        }
        // Still alive and working: a new member joins through it.
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b_addr = socket.local_addr().unwrap();
        let me = MemberInfo::new("b", b_addr, "127.0.0.1:2", "r", "z", true);
        let mut config = MembershipConfig::new(me, "s");
        config.seeds = vec![addr];
        let b = Membership::start(config, socket, Arc::new(NoListener));
        let end = Instant::now() + Duration::from_secs(5);
        while !a.members().iter().any(|m| m.info.id == "b") {
            assert!(Instant::now() < end, "a no longer works after garbage");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(b.members().iter().any(|m| m.info.id == "a"));
    }
}
