//! Who the coordinator can place replicas on, and where they are.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, OnceLock};

use alldata_keygen::{EventKey, origin_tag};

/// The name of a node (the local one or a peer). Unique within a cluster.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A node id from text.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

/// An absolute position: a zone inside a region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The region (e.g. a data centre group or cloud region).
    pub region: String,
    /// The zone inside the region (e.g. a rack or availability zone).
    pub zone: String,
}

impl Location {
    /// A location from region and zone names.
    pub fn new(region: impl Into<String>, zone: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            zone: zone.into(),
        }
    }

    /// Where `self` is, seen from a node at `local`.
    pub fn relative_to(&self, local: &Location) -> Locality {
        if self.region != local.region {
            Locality::OtherRegion(self.region.clone())
        } else if self.zone != local.zone {
            Locality::OtherZone(self.zone.clone())
        } else {
            Locality::LocalZone
        }
    }
}

impl Default for Location {
    fn default() -> Self {
        Self::new("default", "default")
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.region, self.zone)
    }
}

/// Where a peer is relative to the local node (the original's `add_peer(peer, zone | region | local)`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Locality {
    /// In the local node's zone.
    LocalZone,
    /// In another zone (named) of the local node's region.
    OtherZone(String),
    /// In another region (named).
    OtherRegion(String),
}

impl Locality {
    /// The placement category of this locality.
    pub fn category(&self) -> Category {
        match self {
            Locality::LocalZone => Category::LocalZone,
            Locality::OtherZone(_) => Category::OtherZone,
            Locality::OtherRegion(_) => Category::OtherRegion,
        }
    }

    /// The zone or region name that spreads replicas within the category.
    pub(crate) fn group(&self) -> &str {
        match self {
            Locality::LocalZone => "",
            Locality::OtherZone(z) => z,
            Locality::OtherRegion(r) => r,
        }
    }
}

/// The kind of place a replica lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Category {
    /// The local node's own storage.
    Local,
    /// A peer in the local zone.
    LocalZone,
    /// A peer in another zone of the local region.
    OtherZone,
    /// A peer in another region.
    OtherRegion,
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Category::Local => "local",
            Category::LocalZone => "local-zone",
            Category::OtherZone => "other-zone",
            Category::OtherRegion => "other-region",
        })
    }
}

/// A peer the coordinator may place replicas on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's node id.
    pub id: NodeId,
    /// How the transport reaches it (for HTTP: `host:port` of its peer endpoint).
    pub address: String,
    /// Where it is relative to the local node.
    pub locality: Locality,
}

/// What [`Topology::add_peer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// The peer was new.
    Added,
    /// The peer was known; its address or locality changed.
    Updated,
    /// The peer was known exactly like this; nothing changed.
    Unchanged,
}

/// Why a peer could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The peer id is the local node's own id (a node never holds two replicas).
    #[error("peer id {0} is the local node's own id")]
    SelfPeer(NodeId),
    /// The peer id is empty.
    #[error("peer id must not be empty")]
    EmptyId,
    /// The peer's id has the same origin tag (the 16-bit hash that generated
    /// keys carry) as another member's: the cluster could not tell which node
    /// made a key. Rename one of them.
    #[error("node ids {peer} and {other} share the origin tag {tag:#06x}; rename one of them")]
    OriginTagCollision {
        /// The peer being added.
        peer: NodeId,
        /// The member with the same tag.
        other: NodeId,
        /// The shared tag.
        tag: u16,
    },
    /// The peer's id has the origin tag of a member removed for good: its
    /// keys are decided by another member now, and a new node with that tag
    /// would take them over. Choose another id.
    #[error("node id {peer} has the origin tag {tag:#06x} of a removed member; choose another id")]
    RetiredOriginTag {
        /// The peer being added.
        peer: NodeId,
        /// Its tag.
        tag: u16,
    },
}

/// The local node and its known peers. Cheap to clone via `Arc`; the coordinator
/// swaps in a new snapshot on every change, so puts in flight keep a consistent view.
///
/// Two marks ride on members besides their address and place:
/// - *down* (failure detection said so, or the member left): placement
///   avoids it while enough other nodes exist, repair does not target it;
///   it stays a member (its keys keep their decider).
/// - *not a client-key decider* (a member that joined by gossip without
///   being configured statically): it holds replicas and decides the keys
///   its own generator made, but rendezvous hashing for client keys skips
///   it, so a join never moves a client key's decider.
#[derive(Debug, Clone)]
pub struct Topology {
    local: NodeId,
    location: Location,
    peers: BTreeMap<NodeId, Peer>,
    /// Members (the local node included) that do not decide client keys.
    not_deciders: BTreeSet<NodeId>,
    /// Peers detected down or gone.
    down: BTreeSet<NodeId>,
    /// Origin tags of members removed for good: their generated keys are
    /// decided like client keys from then on.
    retired: BTreeSet<u16>,
    /// [`Topology::groups`] of each peer category, made once per topology
    /// (placement asks for them on every put); emptied by every change of
    /// the peers.
    groups: OnceLock<[NamedGroups; 3]>,
}

/// Peers of one category by zone or region name.
pub(crate) type NamedGroups = BTreeMap<String, Vec<Peer>>;

/// The groups of the local node's own category: none.
static NO_GROUPS: NamedGroups = BTreeMap::new();

impl Topology {
    /// A topology with only the local node.
    pub fn new(local: NodeId, location: Location) -> Self {
        Self {
            local,
            location,
            peers: BTreeMap::new(),
            not_deciders: BTreeSet::new(),
            down: BTreeSet::new(),
            retired: BTreeSet::new(),
            groups: OnceLock::new(),
        }
    }

    /// Whether member `id` (a peer or the local node) decides client keys
    /// (see [`Topology::decider`]); every member does unless set otherwise.
    pub fn decides_client_keys(&self, id: &NodeId) -> bool {
        !self.not_deciders.contains(id)
    }

    /// Sets whether member `id` (a peer or the local node) decides client
    /// keys. Changing it moves the deciders of some client keys: only do it
    /// when a member is added (before any put sees it) or removed for good.
    pub fn set_decides_client_keys(&mut self, id: &NodeId, decides: bool) {
        if decides {
            self.not_deciders.remove(id);
        } else {
            self.not_deciders.insert(id.clone());
        }
    }

    /// Marks peer `id` down (`true`) or up again. Placement avoids a down
    /// peer while enough other nodes exist, and repair does not target it.
    /// Returns whether the mark changed; unknown ids are ignored.
    pub fn set_down(&mut self, id: &NodeId, down: bool) -> bool {
        if down {
            self.peers.contains_key(id) && self.down.insert(id.clone())
        } else {
            self.down.remove(id)
        }
    }

    /// Whether peer `id` is marked down.
    pub fn is_down(&self, id: &NodeId) -> bool {
        self.down.contains(id)
    }

    /// The peers marked down, by id.
    pub fn down_peers(&self) -> impl Iterator<Item = &NodeId> {
        self.down.iter()
    }

    /// The local node's id.
    pub fn local(&self) -> &NodeId {
        &self.local
    }

    /// The local node's location.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Adds a peer, or updates its address/locality when the id is known.
    pub fn add_peer(&mut self, peer: Peer) -> Result<PeerChange, TopologyError> {
        if peer.id.as_str().is_empty() {
            return Err(TopologyError::EmptyId);
        }
        if peer.id == self.local {
            return Err(TopologyError::SelfPeer(peer.id));
        }
        let tag = origin_tag(peer.id.as_str());
        if self.retired.contains(&tag) && !self.peers.contains_key(&peer.id) {
            return Err(TopologyError::RetiredOriginTag { peer: peer.id, tag });
        }
        if let Some(other) = self
            .members()
            .find(|m| **m != peer.id && origin_tag(m.as_str()) == tag)
        {
            return Err(TopologyError::OriginTagCollision {
                peer: peer.id,
                other: other.clone(),
                tag,
            });
        }
        let change = match self.peers.get_mut(&peer.id) {
            Some(known) if *known == peer => return Ok(PeerChange::Unchanged),
            Some(known) => {
                *known = peer;
                PeerChange::Updated
            }
            None => {
                self.peers.insert(peer.id.clone(), peer);
                PeerChange::Added
            }
        };
        self.groups = OnceLock::new();
        Ok(change)
    }

    /// Adds a peer at an absolute location, classified relative to the local node.
    pub fn add_peer_at(
        &mut self,
        id: NodeId,
        address: impl Into<String>,
        location: &Location,
    ) -> Result<PeerChange, TopologyError> {
        let locality = location.relative_to(&self.location);
        self.add_peer(Peer {
            id,
            address: address.into(),
            locality,
        })
    }

    /// Removes a peer (and its marks); returns whether it was known.
    pub fn drop_peer(&mut self, id: &NodeId) -> bool {
        self.groups = OnceLock::new();
        self.down.remove(id);
        self.not_deciders.remove(id);
        self.peers.remove(id).is_some()
    }

    /// Removes member `id` for good (it need not be known): its peer entry
    /// goes, and the keys its generator made are decided like client keys
    /// (by rendezvous over the client-key deciders) from then on, so repair
    /// brings them back to RF. Every node must retire the same ids.
    /// Returns whether the peer was known.
    pub fn retire(&mut self, id: &NodeId) -> bool {
        if *id != self.local {
            self.retired.insert(origin_tag(id.as_str()));
        }
        self.drop_peer(id)
    }

    /// A known peer by id.
    pub fn peer(&self, id: &NodeId) -> Option<&Peer> {
        self.peers.get(id)
    }

    /// All known peers, ordered by id.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// The number of known peers (the local node not included).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The number of nodes that can hold a replica: the peers plus the local node.
    pub fn node_count(&self) -> usize {
        self.peers.len() + 1
    }

    /// Every member: the local node, then the peers by id.
    pub fn members(&self) -> impl Iterator<Item = &NodeId> {
        std::iter::once(&self.local).chain(self.peers.keys())
    }

    /// The node that decides which bytes `key` holds: every write of the key
    /// goes to it first, and its write-once storage accepts one value only.
    ///
    /// For a generated key, the node whose generator made it (its
    /// [`EventKey::origin`] tag); when that node was removed for good
    /// ([`Topology::retire`]), the client-key decider that ranks first for
    /// the tag ([`Topology::tag_decider`]); `None` when no member has that
    /// tag otherwise. For a
    /// client key, the member that ranks highest for the key by rendezvous
    /// hashing among the members that decide client keys (the same on every
    /// node that knows the same deciders); `None` when there is none.
    /// Whether a member is down does not matter here: a key's decider
    /// changes only when the decider set does.
    pub fn decider(&self, key: &EventKey) -> Option<NodeId> {
        match key.origin() {
            Some(tag) if self.tag_owner(tag).is_some() || self.retired.contains(&tag) => {
                Some(self.tag_decider(tag))
            }
            Some(_) => None,
            None => self.client_decider(key).cloned(),
        }
    }

    /// The client-key decider of `key`: the highest rendezvous score among
    /// the members that decide client keys.
    fn client_decider(&self, key: &EventKey) -> Option<&NodeId> {
        self.client_deciders()
            .max_by_key(|m| (rendezvous(key, m), *m))
    }

    /// The members that decide client keys.
    fn client_deciders(&self) -> impl Iterator<Item = &NodeId> {
        self.members().filter(|m| !self.not_deciders.contains(*m))
    }

    /// The node that repairs `key`: for a generated key the member chosen
    /// for its origin tag by [`Topology::tag_decider`] (its decider, or for a
    /// node that left without being retired, a member chosen for the tag),
    /// for a client key its [`Topology::decider`]. Every node that knows the
    /// same members computes the same.
    pub fn repair_decider(&self, key: &EventKey) -> Option<NodeId> {
        match key.origin() {
            Some(tag) => Some(self.tag_decider(tag)),
            None => self.decider(key),
        }
    }

    /// The member that decides (and repairs) the generated keys of origin
    /// `tag`: the member whose id has that tag; for a member removed for
    /// good ([`Topology::retire`]), the client-key decider ranking first for
    /// the tag by rendezvous hashing; for a tag no member has and none
    /// retired (a node that left the configuration), the member ranking
    /// first for the tag. One member per tag, so repair's digests stay per
    /// tag.
    pub fn tag_decider(&self, tag: u16) -> NodeId {
        self.tag_owner(tag)
            .or_else(|| {
                let key = tag.to_be_bytes();
                if self.retired.contains(&tag) {
                    self.client_deciders().max_by_key(|m| (score(&key, m), *m))
                } else {
                    self.members().max_by_key(|m| (score(&key, m), *m))
                }
            })
            .cloned()
            .unwrap_or_else(|| self.local.clone())
    }

    /// The member whose id has origin tag `tag`.
    fn tag_owner(&self, tag: u16) -> Option<&NodeId> {
        self.members().find(|m| origin_tag(m.as_str()) == tag)
    }

    /// A fingerprint of the client-key deciders (equal sets, equal
    /// fingerprints; never 0): what the deciders of client keys depend on.
    pub fn client_deciders_fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut ids: Vec<&NodeId> = self.client_deciders().collect();
        ids.sort();
        for id in ids {
            for b in id.as_str().as_bytes().iter().chain([0xff].iter()) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h | 1
    }

    /// Peers of one category grouped by zone (other zones) or region (other
    /// regions), down peers included (placement avoids those by marking them
    /// used, see `placement::place_avoiding`).
    pub(crate) fn groups(&self, category: Category) -> &NamedGroups {
        let groups = self.groups.get_or_init(|| {
            let mut groups: [NamedGroups; 3] = Default::default();
            for p in self.peers.values() {
                let at = match p.locality.category() {
                    Category::Local => continue,
                    Category::LocalZone => 0,
                    Category::OtherZone => 1,
                    Category::OtherRegion => 2,
                };
                groups[at]
                    .entry(p.locality.group().to_owned())
                    .or_default()
                    .push(p.clone());
            }
            groups
        });
        match category {
            Category::Local => &NO_GROUPS,
            Category::LocalZone => &groups[0],
            Category::OtherZone => &groups[1],
            Category::OtherRegion => &groups[2],
        }
    }
}

/// The rendezvous score of `node` for `key`: FNV-1a over both, then a
/// splitmix64 finalizer (stable across builds and platforms).
fn rendezvous(key: &EventKey, node: &NodeId) -> u64 {
    score(key.as_bytes(), node)
}

/// FNV-1a over `bytes`, a separator and `node`, then a splitmix64 finalizer.
fn score(bytes: &[u8], node: &NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes
        .iter()
        .chain([0xff].iter())
        .chain(node.as_str().as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group_names(t: &Topology, category: Category) -> Vec<String> {
        t.groups(category).keys().cloned().collect()
    }

    #[test]
    fn the_cached_groups_follow_every_change_of_the_peers() {
        let mut t = Topology::new("a".into(), Location::new("r1", "z1"));
        t.add_peer_at("b".into(), "b:1", &Location::new("r1", "z2"))
            .unwrap();
        assert_eq!(group_names(&t, Category::OtherZone), ["z2"]);
        t.add_peer_at("c".into(), "c:1", &Location::new("r1", "z3"))
            .unwrap();
        assert_eq!(group_names(&t, Category::OtherZone), ["z2", "z3"]);
        // A clone keeps what it had; the original moves on.
        let before = t.clone();
        t.add_peer_at("c".into(), "c:1", &Location::new("r2", "z1"))
            .unwrap();
        assert_eq!(group_names(&before, Category::OtherZone), ["z2", "z3"]);
        assert_eq!(group_names(&t, Category::OtherZone), ["z2"]);
        assert_eq!(group_names(&t, Category::OtherRegion), ["r2"]);
        assert!(t.groups(Category::Local).is_empty());
        t.drop_peer(&"b".into());
        assert!(group_names(&t, Category::OtherZone).is_empty());
        t.retire(&"c".into());
        assert!(group_names(&t, Category::OtherRegion).is_empty());
        t.add_peer_at("d".into(), "d:1", &Location::new("r1", "z1"))
            .unwrap();
        assert_eq!(t.groups(Category::LocalZone)[""].len(), 1);
    }

    fn peer(id: &str, locality: Locality) -> Peer {
        Peer {
            id: id.into(),
            address: format!("{id}:1"),
            locality,
        }
    }

    #[test]
    fn absolute_locations_are_classified_relative_to_local() {
        let local = Location::new("eu", "a");
        assert_eq!(
            Location::new("eu", "a").relative_to(&local),
            Locality::LocalZone
        );
        assert_eq!(
            Location::new("eu", "b").relative_to(&local),
            Locality::OtherZone("b".into())
        );
        assert_eq!(
            Location::new("us", "a").relative_to(&local),
            Locality::OtherRegion("us".into())
        );
    }

    #[test]
    fn add_is_idempotent_updates_address_and_drop_removes() {
        let mut t = Topology::new("me".into(), Location::default());
        assert_eq!(
            t.add_peer(peer("p", Locality::LocalZone)),
            Ok(PeerChange::Added)
        );
        assert_eq!(
            t.add_peer(peer("p", Locality::LocalZone)),
            Ok(PeerChange::Unchanged)
        );
        assert_eq!(t.peer_count(), 1);
        let mut moved = peer("p", Locality::LocalZone);
        moved.address = "elsewhere:2".into();
        assert_eq!(t.add_peer(moved), Ok(PeerChange::Updated));
        assert_eq!(t.peer(&"p".into()).unwrap().address, "elsewhere:2");
        assert_eq!(t.peer_count(), 1);
        assert!(t.drop_peer(&"p".into()));
        assert!(!t.drop_peer(&"p".into()));
        assert_eq!(t.peer_count(), 0);
    }

    #[test]
    fn deciders_agree_across_nodes_and_spread_client_keys() {
        let ids = ["a", "b", "c", "d", "e"];
        let views: Vec<Topology> = ids
            .iter()
            .map(|me| {
                let mut t = Topology::new((*me).into(), Location::default());
                for id in ids.iter().filter(|id| *id != me) {
                    t.add_peer(peer(id, Locality::LocalZone)).unwrap();
                }
                t
            })
            .collect();
        let client = alldata_keygen::KeyGenerator::new();
        let mut per_node = std::collections::BTreeMap::new();
        for _ in 0..2000 {
            let key = client.generate();
            let d = views[0].decider(&key).unwrap();
            for v in &views[1..] {
                assert_eq!(v.decider(&key).as_ref(), Some(&d));
            }
            *per_node.entry(d).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 5);
        assert!(per_node.values().all(|n| *n > 250), "{per_node:?}");
        // A generated key is decided by the node that made it, or by nobody.
        let made_by_c = alldata_keygen::KeyGenerator::new()
            .with_origin(origin_tag("c"))
            .generate();
        for v in &views {
            assert_eq!(v.decider(&made_by_c), Some("c".into()));
        }
        let stranger = alldata_keygen::KeyGenerator::new()
            .with_origin(origin_tag("zz"))
            .generate();
        assert_eq!(views[0].decider(&stranger), None);
    }

    #[test]
    fn members_that_do_not_decide_client_keys_never_become_deciders() {
        let mut t = Topology::new("a".into(), Location::default());
        for id in ["b", "c"] {
            t.add_peer(peer(id, Locality::LocalZone)).unwrap();
        }
        let client = alldata_keygen::KeyGenerator::new();
        let keys: Vec<EventKey> = (0..500).map(|_| client.generate()).collect();
        let before: Vec<_> = keys.iter().map(|k| t.decider(k)).collect();
        // A joiner that does not decide client keys changes no decider.
        t.add_peer(peer("joiner", Locality::LocalZone)).unwrap();
        t.set_decides_client_keys(&"joiner".into(), false);
        let after: Vec<_> = keys.iter().map(|k| t.decider(k)).collect();
        assert_eq!(before, after);
        // It still decides the keys its own generator made.
        let made = alldata_keygen::KeyGenerator::new()
            .with_origin(origin_tag("joiner"))
            .generate();
        assert_eq!(t.decider(&made), Some("joiner".into()));
        // Down marks change no decider either.
        assert!(t.set_down(&"b".into(), true));
        assert!(!t.set_down(&"b".into(), true));
        assert!(!t.set_down(&"nobody".into(), true));
        let down: Vec<_> = keys.iter().map(|k| t.decider(k)).collect();
        assert_eq!(before, down);
        assert!(t.is_down(&"b".into()));
        // A local node that does not decide: only the others do.
        t.set_decides_client_keys(&"a".into(), false);
        assert!(keys.iter().all(|k| t.decider(k) != Some("a".into())));
        // A retired member's generated keys go to the client-key deciders.
        let mut retired = t.clone();
        assert!(retired.retire(&"joiner".into()));
        assert!(!retired.retire(&"joiner".into()));
        let d = retired.decider(&made).expect("decided after retirement");
        assert!(retired.decides_client_keys(&d) && d != "joiner".into());
        // Every key of the tag has that one decider (write and repair alike).
        assert_eq!(retired.tag_decider(origin_tag("joiner")), d);
        assert_eq!(retired.repair_decider(&made), Some(d));
        // A new member with the removed one's tag would take its keys over.
        assert!(matches!(
            retired.add_peer(peer("joiner", Locality::LocalZone)),
            Err(TopologyError::RetiredOriginTag { .. })
        ));
        // Dropping a peer forgets its marks.
        assert!(t.drop_peer(&"b".into()));
        assert!(!t.is_down(&"b".into()));
    }

    #[test]
    fn the_local_node_and_empty_ids_are_not_peers() {
        let mut t = Topology::new("me".into(), Location::default());
        assert_eq!(
            t.add_peer(peer("me", Locality::LocalZone)),
            Err(TopologyError::SelfPeer("me".into()))
        );
        assert_eq!(
            t.add_peer(peer("", Locality::LocalZone)),
            Err(TopologyError::EmptyId)
        );
    }
}
