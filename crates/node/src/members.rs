//! Live membership wired to the coordinator: gossip's news changes the
//! topology, the member list is served to `/health` and the admin routes,
//! removals are kept on disk.
//!
//! # The client-key decider set
//!
//! A client key's decider is chosen by rendezvous hashing over the members
//! that decide client keys (`Topology::decider`). Write-once (I2) holds only
//! while every node agrees on that set, so it never changes by gossip:
//! - a node with `--peer` flags decides client keys, with its static peers;
//! - a node started with `--seed` only takes the set from a seed before it
//!   serves (the seed's own set, removals included), and does not decide
//!   client keys itself (it holds replicas and decides its own generated
//!   keys);
//! - members learned by gossip join as non-deciders unless they are in the
//!   set already;
//! - `admin remove` takes a member out of it on every node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use alldata_coordinator::{Coordinator, Location, NodeId};
use alldata_membership::{Listener, MemberInfo, MemberState, Membership};
use alldata_peer_client_http::HttpTransport;
use alldata_peer_server_http::MembersAdmin;
use serde::{Deserialize, Serialize};

/// The file in the data directory that keeps the removed ids, one a line.
pub(crate) const REMOVED_FILE: &str = "removed-members";

/// A member that decides client keys, as the member list carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Decider {
    pub(crate) id: String,
    pub(crate) peer_address: String,
    pub(crate) region: String,
    pub(crate) zone: String,
}

impl From<&crate::PeerSpec> for Decider {
    /// A static peer decides client keys.
    fn from(peer: &crate::PeerSpec) -> Self {
        Self {
            id: peer.id.clone(),
            peer_address: peer.address.clone(),
            region: peer.location.region.clone(),
            zone: peer.location.zone.clone(),
        }
    }
}

/// One member in the list the node serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemberEntry {
    id: String,
    peer_address: String,
    region: String,
    zone: String,
    /// alive, suspect, down, left, or unknown (configured, never heard by gossip).
    state: String,
    decides_client_keys: bool,
    /// Whether it said it was configured statically (`--peer`).
    static_member: Option<bool>,
    incarnation: Option<u64>,
    gossip: Option<String>,
}

/// What `GET /peer/v1/members` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemberList {
    pub(crate) node: String,
    pub(crate) members: Vec<MemberEntry>,
    pub(crate) deciders: Vec<Decider>,
    pub(crate) removed: Vec<String>,
}

impl MemberList {
    /// Whether `id` is in the list (a member, a client-key decider or a
    /// removed one): a node joining under it was a member before.
    pub(crate) fn knows(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
            || self.deciders.iter().any(|d| d.id == id)
            || self.removed.iter().any(|r| r == id)
    }

    /// The ids of members listed as down or left.
    pub(crate) fn down_members(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|m| m.state == "down" || m.state == "left")
            .map(|m| m.id.as_str())
    }
}

/// The node's side of membership: it turns gossip's news into topology
/// changes and answers the member routes.
pub(crate) struct Cluster {
    local: String,
    coordinator: Coordinator,
    /// The client-key decider set (the local node included when it decides).
    deciders: Mutex<BTreeMap<String, Decider>>,
    removed: Mutex<BTreeSet<String>>,
    removed_file: PathBuf,
    membership: OnceLock<Arc<Membership>>,
}

impl Cluster {
    pub(crate) fn new(
        local: String,
        coordinator: Coordinator,
        deciders: BTreeMap<String, Decider>,
        removed: BTreeSet<String>,
        removed_file: PathBuf,
    ) -> Self {
        Self {
            local,
            coordinator,
            deciders: Mutex::new(deciders),
            removed: Mutex::new(removed),
            removed_file,
            membership: OnceLock::new(),
        }
    }

    pub(crate) fn set_membership(&self, membership: Arc<Membership>) {
        let _ = self.membership.set(membership);
    }

    pub(crate) fn membership(&self) -> Option<&Arc<Membership>> {
        self.membership.get()
    }

    /// Adds `d` to the client-key decider set (a static peer added after
    /// the start).
    pub(crate) fn add_decider(&self, d: Decider) {
        self.deciders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.id.clone(), d);
    }

    fn decides(&self, id: &str) -> bool {
        self.deciders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// The member list: gossip's view, then configured peers gossip has
    /// not heard of.
    pub(crate) fn list(&self) -> MemberList {
        let topology = self.coordinator.topology();
        let mut members: Vec<MemberEntry> = Vec::new();
        let mut seen = BTreeSet::new();
        if let Some(m) = self.membership.get() {
            for v in m.members() {
                seen.insert(v.info.id.clone());
                members.push(MemberEntry {
                    decides_client_keys: topology.decides_client_keys(&NodeId::new(&v.info.id))
                        && (topology.peer(&NodeId::new(&v.info.id)).is_some()
                            || v.info.id == self.local),
                    state: state_name(v.state).to_owned(),
                    static_member: Some(v.info.static_member),
                    incarnation: Some(v.info.incarnation),
                    gossip: Some(v.info.gossip.to_string()),
                    id: v.info.id,
                    peer_address: v.info.peer_address,
                    region: v.info.region,
                    zone: v.info.zone,
                });
            }
        }
        let deciders = self
            .deciders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in topology.peers() {
            if seen.contains(p.id.as_str()) {
                continue;
            }
            let (region, zone) = deciders
                .get(p.id.as_str())
                .map(|d| (d.region.clone(), d.zone.clone()))
                .unwrap_or_default();
            members.push(MemberEntry {
                id: p.id.to_string(),
                peer_address: p.address.clone(),
                region,
                zone,
                state: "unknown".into(),
                decides_client_keys: topology.decides_client_keys(&p.id),
                static_member: None,
                incarnation: None,
                gossip: None,
            });
        }
        MemberList {
            node: self.local.clone(),
            members,
            deciders: deciders.into_values().collect(),
            removed: self
                .removed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }

    fn save_removed(&self) {
        let text: String = self
            .removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|id| format!("{id}\n"))
            .collect();
        let tmp = self.removed_file.with_extension("tmp");
        let written =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.removed_file));
        if let Err(error) = written {
            tracing::warn!(%error, file = %self.removed_file.display(), "cannot save the removed members");
        }
    }
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}

impl Listener for Cluster {
    fn member_up(&self, m: &MemberInfo) {
        if m.id == self.local {
            return;
        }
        let location = Location::new(&m.region, &m.zone);
        let decides = self.decides(&m.id);
        match self.coordinator.add_member_at(
            m.id.as_str(),
            m.peer_address.as_str(),
            &location,
            decides,
        ) {
            Ok(change) => tracing::debug!(id = %m.id, ?change, decides, "topology: member up"),
            Err(error) => {
                tracing::warn!(id = %m.id, %error, "a member gossip announced cannot be added");
                return;
            }
        }
        self.coordinator.set_peer_down(&NodeId::new(&m.id), false);
    }

    fn member_down(&self, m: &MemberInfo, left: bool) {
        if self.coordinator.set_peer_down(&NodeId::new(&m.id), true) {
            tracing::info!(id = %m.id, left, "topology: member down, no longer placed on");
        }
    }

    fn member_removed(&self, id: &str) {
        let inserted = self
            .removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned());
        self.deciders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let dropped = self.coordinator.remove_member(&NodeId::new(id));
        tracing::warn!(%id, dropped, "topology: member removed for good");
        if inserted {
            self.save_removed();
        }
    }
}

/// The member routes of the peer endpoint.
pub(crate) struct Admin(pub(crate) Arc<Cluster>);

impl MembersAdmin for Admin {
    fn list(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0.list()).unwrap_or_default()
    }

    fn remove(&self, id: String) -> futures::future::BoxFuture<'static, Result<Vec<u8>, String>> {
        let cluster = Arc::clone(&self.0);
        Box::pin(async move {
            if id == cluster.local {
                return Err(format!(
                    "{id} is this node; ask another member to remove it"
                ));
            }
            let known = cluster
                .coordinator
                .topology()
                .peer(&NodeId::new(&id))
                .is_some()
                || cluster
                    .membership
                    .get()
                    .is_some_and(|m| m.members().iter().any(|v| v.info.id == id));
            let already = cluster
                .removed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id);
            if !known && !already {
                return Err(format!("no member {id}"));
            }
            // Without gossip: this node only.
            if let Some(m) = cluster.membership.get() {
                m.remove(&id).await.map_err(|e| e.to_string())?;
            }
            // The membership's listener has run; make sure this node's
            // topology is updated even when gossip already knew the id as
            // removed.
            cluster.member_removed(&id);
            Ok(serde_json::to_vec(&serde_json::json!({ "removed": id })).unwrap_or_default())
        })
    }
}

/// At a start with static peers: takes the member list from the first peer
/// that answers (trying for `within`) and marks down the members it sees down
/// or gone that gossip has not reported on here yet (gossip only reports a
/// member down after it saw it up, so a peer already down at this node's
/// start would otherwise look up).
pub(crate) async fn learn_down_from_peers(
    cluster: std::sync::Weak<Cluster>,
    transport: HttpTransport,
    peers: Vec<String>,
    within: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Holds no reference to the node while it waits, and ends with it.
    let list = tokio::select! {
        _ = stop.wait_for(|s| *s) => return,
        list = fetch_from_seeds(&transport, &peers, within) => list,
    };
    let (Ok(list), Some(cluster)) = (list, cluster.upgrade()) else {
        return;
    };
    let heard: BTreeSet<String> = cluster
        .membership()
        .map(|m| m.members().into_iter().map(|v| v.info.id).collect())
        .unwrap_or_default();
    for id in list.down_members() {
        if id != cluster.local
            && !heard.contains(id)
            && cluster.coordinator.set_peer_down(&NodeId::new(id), true)
        {
            tracing::info!(%id, from = %list.node, "member down at start (as a peer sees it)");
        }
    }
}

/// The removed ids kept in `file` (none when it does not exist).
pub(crate) fn load_removed(file: &std::path::Path) -> BTreeSet<String> {
    match std::fs::read_to_string(file) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(error) => {
            tracing::warn!(%error, file = %file.display(), "cannot read the removed members");
            BTreeSet::new()
        }
    }
}

/// Asks the seeds, in turn, for their member list until one answers or
/// `within` passes.
pub(crate) async fn fetch_from_seeds(
    transport: &HttpTransport,
    seeds: &[String],
    within: Duration,
) -> Result<MemberList, String> {
    let end = tokio::time::Instant::now() + within;
    let mut last = String::from("no seed given");
    loop {
        for seed in seeds {
            match transport.members(seed).await {
                Ok(body) => match serde_json::from_slice::<MemberList>(&body) {
                    Ok(list) => return Ok(list),
                    Err(e) => last = format!("seed {seed}: malformed member list: {e}"),
                },
                Err(e) => last = format!("seed {seed}: {e}"),
            }
        }
        if tokio::time::Instant::now() >= end {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
