//! Which peers receive the replicas of one put: a pure function of the topology,
//! the policy and an injected RNG, so it can be property-tested exhaustively.

use std::collections::HashSet;

use rand::{Rng, RngExt};

use crate::topology::{Category, NamedGroups, NodeId, Peer, Topology};

/// How many replicas go where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementPolicy {
    /// Total replicas, the local one included (at least 1).
    pub replication_factor: usize,
    /// Replicas to place in other zones of the local region.
    pub other_zone_replicas: usize,
    /// Replicas to place in other regions.
    pub other_region_replicas: usize,
}

/// Placement failed before anything was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "replication factor {replication_factor} needs {replication_factor} nodes, only {nodes} known"
)]
pub struct NotEnoughNodes {
    /// The requested replication factor.
    pub replication_factor: usize,
    /// Nodes that could hold a replica (peers + the local node).
    pub nodes: usize,
}

/// Replicas already chosen for one put, so later picks (replacements) keep
/// spreading over zones and regions and never reuse a node.
#[derive(Debug, Clone, Default)]
pub struct Chosen {
    used: HashSet<NodeId>,
    /// Replicas per zone or region chosen so far (a few entries: looked
    /// through, no key to allocate per lookup).
    per_group: Vec<(Category, String, usize)>,
}

impl Chosen {
    /// Whether the node already has (or had) a write of this put.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.used.contains(id)
    }

    /// The number of nodes used so far.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no node was used yet.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Marks `id` used without counting it in a zone or region (the local
    /// node, or a node that must not be chosen).
    pub(crate) fn mark(&mut self, id: NodeId) {
        self.used.insert(id);
    }

    pub(crate) fn record(&mut self, peer: &Peer) {
        self.used.insert(peer.id.clone());
        let (category, group) = (peer.locality.category(), peer.locality.group());
        match self
            .per_group
            .iter_mut()
            .find(|(c, g, _)| *c == category && g == group)
        {
            Some((_, _, n)) => *n += 1,
            None => self.per_group.push((category, group.to_owned(), 1)),
        }
    }

    /// Replicas chosen so far in `group` of `category`.
    fn in_group(&self, category: Category, group: &str) -> usize {
        self.per_group
            .iter()
            .find(|(c, g, _)| *c == category && g == group)
            .map_or(0, |(_, _, n)| *n)
    }
}

/// Chooses the `replication_factor - 1` peers for one put (the local node is
/// always the first replica and is not in the result), in the order:
/// other zones (distinct zones first), other regions (distinct regions first),
/// the local zone, then any unused peer (other zones, other regions, local zone).
///
/// Returns the chosen peers in placement order and the [`Chosen`] set (the local
/// node included) for later replacements. Fails when fewer than
/// `replication_factor` nodes exist.
pub fn place(
    topology: &Topology,
    policy: &PlacementPolicy,
    rng: &mut impl Rng,
) -> Result<(Vec<Peer>, Chosen), NotEnoughNodes> {
    let rf = policy.replication_factor.max(1);
    if topology.node_count() < rf {
        return Err(NotEnoughNodes {
            replication_factor: rf,
            nodes: topology.node_count(),
        });
    }
    place_into(topology, policy, Chosen::default(), rng)
}

/// [`place`] with some nodes already marked used.
fn place_into(
    topology: &Topology,
    policy: &PlacementPolicy,
    mut chosen: Chosen,
    rng: &mut impl Rng,
) -> Result<(Vec<Peer>, Chosen), NotEnoughNodes> {
    let rf = policy.replication_factor.max(1);
    chosen.used.insert(topology.local().clone());
    let mut out = Vec::with_capacity(rf - 1);
    let mut need = rf - 1;

    let zones = topology.groups(Category::OtherZone);
    let regions = topology.groups(Category::OtherRegion);
    let local = topology.groups(Category::LocalZone);

    let steps = [
        (&zones, policy.other_zone_replicas),
        (&regions, policy.other_region_replicas),
        (&local, usize::MAX),
        // A category with too few peers: fill from any unused peer.
        (&zones, usize::MAX),
        (&regions, usize::MAX),
    ];
    for (groups, wanted) in steps {
        let n = wanted.min(need);
        need -= pick_spread(groups, n, &mut chosen, rng, &mut out);
        if need == 0 {
            break;
        }
    }
    debug_assert_eq!(need, 0, "node_count >= rf guarantees enough peers");
    Ok((out, chosen))
}

/// [`place`], avoiding the peers in `avoid` (graylisted: slow or failing
/// lately) as long as enough other nodes exist; they stay unused for this
/// put's replacements too. With too few other nodes, placement ignores
/// `avoid`.
pub fn place_avoiding(
    topology: &Topology,
    policy: &PlacementPolicy,
    avoid: &HashSet<NodeId>,
    rng: &mut impl Rng,
) -> Result<(Vec<Peer>, Chosen), NotEnoughNodes> {
    let avoided = topology.peers().filter(|p| avoid.contains(&p.id)).count();
    if avoided == 0 || topology.node_count() - avoided < policy.replication_factor.max(1) {
        return place(topology, policy, rng);
    }
    let mut chosen = Chosen::default();
    chosen.used.extend(
        topology
            .peers()
            .filter(|p| avoid.contains(&p.id))
            .map(|p| p.id.clone()),
    );
    place_into(topology, policy, chosen, rng)
}

/// Chooses one unused peer to take over a failed replica write, preferring the
/// failed target's category so the placement intent survives, then other zones,
/// other regions and the local zone. `None` when every known peer is used.
pub fn replacement(
    topology: &Topology,
    failed: Category,
    chosen: &mut Chosen,
    rng: &mut impl Rng,
) -> Option<Peer> {
    let preferred = match failed {
        Category::Local => Category::LocalZone,
        c => c,
    };
    let order = [
        preferred,
        Category::OtherZone,
        Category::OtherRegion,
        Category::LocalZone,
    ];
    let mut out = Vec::with_capacity(1);
    for category in order {
        if pick_spread(topology.groups(category), 1, chosen, rng, &mut out) == 1 {
            return out.pop();
        }
    }
    None
}

/// Picks up to `n` unused peers, each from a random group among those holding the
/// fewest replicas of this put so far: distinct zones/regions first, then spread.
/// Returns how many were picked.
fn pick_spread(
    groups: &NamedGroups,
    n: usize,
    chosen: &mut Chosen,
    rng: &mut impl Rng,
    out: &mut Vec<Peer>,
) -> usize {
    let mut picked = 0;
    let mut candidates: Vec<(&str, usize)> = Vec::with_capacity(groups.len());
    let mut free: Vec<&Peer> = Vec::new();
    while picked < n {
        candidates.clear();
        for (name, peers) in groups {
            let name = name.as_str();
            if peers.iter().any(|p| !chosen.contains(&p.id)) {
                let category = peers[0].locality.category();
                let count = chosen.in_group(category, name);
                candidates.push((name, count));
            }
        }
        let Some(least) = candidates.iter().map(|c| c.1).min() else {
            break;
        };
        candidates.retain(|c| c.1 == least);
        let group = candidates[rng.random_range(0..candidates.len())].0;
        free.clear();
        free.extend(groups[group].iter().filter(|p| !chosen.contains(&p.id)));
        let peer = free[rng.random_range(0..free.len())];
        chosen.record(peer);
        out.push(peer.clone());
        picked += 1;
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Locality, Location};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn topo(peers: &[(&str, Locality)]) -> Topology {
        let mut t = Topology::new("local".into(), Location::default());
        for (id, l) in peers {
            t.add_peer(Peer {
                id: (*id).into(),
                address: String::new(),
                locality: l.clone(),
            })
            .unwrap();
        }
        t
    }

    fn policy(rf: usize, zone: usize, region: usize) -> PlacementPolicy {
        PlacementPolicy {
            replication_factor: rf,
            other_zone_replicas: zone,
            other_region_replicas: region,
        }
    }

    fn ids(peers: &[Peer]) -> Vec<&str> {
        peers.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn too_few_nodes_fails_before_anything() {
        let t = topo(&[("a", Locality::LocalZone)]);
        let err = place(&t, &policy(3, 0, 0), &mut StdRng::seed_from_u64(1)).unwrap_err();
        assert_eq!(
            err,
            NotEnoughNodes {
                replication_factor: 3,
                nodes: 2
            }
        );
    }

    #[test]
    fn zone_replicas_take_distinct_zones_first() {
        let z = |s: &str| Locality::OtherZone(s.into());
        let t = topo(&[
            ("a1", z("a")),
            ("a2", z("a")),
            ("a3", z("a")),
            ("b1", z("b")),
        ]);
        for seed in 0..50 {
            let (p, _) = place(&t, &policy(3, 2, 0), &mut StdRng::seed_from_u64(seed)).unwrap();
            assert!(ids(&p).contains(&"b1"), "seed {seed}: {:?}", ids(&p));
        }
    }

    #[test]
    fn avoided_peers_are_skipped_while_others_suffice() {
        let t = topo(&[
            ("a", Locality::LocalZone),
            ("b", Locality::LocalZone),
            ("c", Locality::LocalZone),
        ]);
        let avoid: HashSet<NodeId> = ["a".into()].into_iter().collect();
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (p, mut chosen) = place_avoiding(&t, &policy(3, 0, 0), &avoid, &mut rng).unwrap();
            assert!(!ids(&p).contains(&"a"), "seed {seed}: {:?}", ids(&p));
            // Not a replacement either.
            assert!(replacement(&t, Category::LocalZone, &mut chosen, &mut rng).is_none());
        }
        // Too few others: the avoided peer is used after all.
        let (p, _) =
            place_avoiding(&t, &policy(4, 0, 0), &avoid, &mut StdRng::seed_from_u64(1)).unwrap();
        assert!(ids(&p).contains(&"a"));
    }

    #[test]
    fn replacement_prefers_the_failed_category() {
        let t = topo(&[
            ("l1", Locality::LocalZone),
            ("z1", Locality::OtherZone("z".into())),
            ("z2", Locality::OtherZone("z".into())),
            ("r1", Locality::OtherRegion("r".into())),
        ]);
        let mut rng = StdRng::seed_from_u64(7);
        let (p, mut chosen) = place(&t, &policy(2, 0, 1), &mut rng).unwrap();
        assert_eq!(ids(&p), ["r1"]);
        // The only region peer is used: the replacement comes from other zones.
        let r = replacement(&t, Category::OtherRegion, &mut chosen, &mut rng).unwrap();
        assert!(r.id.as_str().starts_with('z'));
        let r = replacement(&t, Category::LocalZone, &mut chosen, &mut rng).unwrap();
        assert_eq!(r.id.as_str(), "l1");
        let r = replacement(&t, Category::LocalZone, &mut chosen, &mut rng).unwrap();
        assert!(r.id.as_str().starts_with('z'));
        assert!(replacement(&t, Category::LocalZone, &mut chosen, &mut rng).is_none());
    }
}
