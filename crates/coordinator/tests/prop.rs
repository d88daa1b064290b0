//! Property tests (proptest, seeded per case by proptest; failures print the
//! minimal case and are persisted for replay).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use alldata_coordinator::placement::{PlacementPolicy, place, replacement};
use alldata_coordinator::sim::{Fault, SimNetwork};
use alldata_coordinator::topology::Topology;
use alldata_coordinator::{
    Category, CommitLevel, Coordinator, Locality, Location, Options, Peer, PutError, PutOptions,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A peer's locality drawn from 3 zones and 3 regions.
fn locality() -> impl Strategy<Value = Locality> {
    prop_oneof![
        Just(Locality::LocalZone),
        (0..3u8).prop_map(|z| Locality::OtherZone(format!("z{z}"))),
        (0..3u8).prop_map(|r| Locality::OtherRegion(format!("r{r}"))),
    ]
}

fn topology(localities: &[Locality]) -> Topology {
    let mut t = Topology::new("local".into(), Location::default());
    for (i, l) in localities.iter().enumerate() {
        t.add_peer(Peer {
            id: format!("p{i}").into(),
            address: String::new(),
            locality: l.clone(),
        })
        .unwrap();
    }
    t
}

fn policy() -> impl Strategy<Value = PlacementPolicy> {
    (1usize..7, 0usize..4, 0usize..4).prop_map(|(rf, z, r)| {
        let z = z.min(rf - 1);
        let r = r.min(rf - 1 - z);
        PlacementPolicy {
            replication_factor: rf,
            other_zone_replicas: z,
            other_region_replicas: r,
        }
    })
}

fn distinct(peers: &[Peer], category: Category) -> usize {
    peers
        .iter()
        .filter(|p| p.locality.category() == category)
        .map(|p| format!("{:?}", p.locality))
        .collect::<BTreeSet<_>>()
        .len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// A node never holds two replicas of one event, and the local node is never a peer target.
    #[test]
    fn placement_picks_distinct_nodes(locs in proptest::collection::vec(locality(), 0..10), p in policy(), seed: u64) {
        let t = topology(&locs);
        match place(&t, &p, &mut StdRng::seed_from_u64(seed)) {
            Ok((peers, chosen)) => {
                prop_assert_eq!(peers.len(), p.replication_factor - 1);
                let ids: BTreeSet<_> = peers.iter().map(|x| x.id.clone()).collect();
                prop_assert_eq!(ids.len(), peers.len());
                prop_assert!(!ids.contains(&"local".into()));
                prop_assert_eq!(chosen.len(), p.replication_factor);
            }
            Err(e) => prop_assert!(t.node_count() < p.replication_factor, "{e}"),
        }
    }

    /// Other-zone replicas come first, then other-region ones, and each maximises
    /// the number of distinct zones/regions.
    #[test]
    fn placement_honours_order_and_spread(locs in proptest::collection::vec(locality(), 0..10), p in policy(), seed: u64) {
        let t = topology(&locs);
        let Ok((peers, _)) = place(&t, &p, &mut StdRng::seed_from_u64(seed)) else { return Ok(()); };
        let zone_peers = locs.iter().filter(|l| matches!(l, Locality::OtherZone(_))).count();
        let region_peers = locs.iter().filter(|l| matches!(l, Locality::OtherRegion(_))).count();
        let zones: BTreeSet<_> = locs.iter().filter(|l| matches!(l, Locality::OtherZone(_))).collect();
        let regions: BTreeSet<_> = locs.iter().filter(|l| matches!(l, Locality::OtherRegion(_))).collect();

        let nz = p.other_zone_replicas.min(zone_peers);
        let first_z = &peers[..nz];
        prop_assert!(first_z.iter().all(|x| x.locality.category() == Category::OtherZone));
        prop_assert_eq!(distinct(first_z, Category::OtherZone), nz.min(zones.len()));

        let nr = p.other_region_replicas.min(region_peers);
        let next_r = &peers[nz..nz + nr];
        prop_assert!(next_r.iter().all(|x| x.locality.category() == Category::OtherRegion));
        prop_assert_eq!(distinct(next_r, Category::OtherRegion), nr.min(regions.len()));

        // Then local-zone peers before any fill-in.
        let rest = &peers[nz + nr..];
        let local_peers = locs.iter().filter(|l| **l == Locality::LocalZone).count();
        let nl = rest.len().min(local_peers);
        prop_assert!(rest[..nl].iter().all(|x| x.locality == Locality::LocalZone));
    }

    /// Replacements never pick a used node and run out exactly when every peer is used.
    #[test]
    fn replacements_use_each_peer_at_most_once(locs in proptest::collection::vec(locality(), 1..10), seed: u64) {
        let t = topology(&locs);
        let mut rng = StdRng::seed_from_u64(seed);
        let p = PlacementPolicy { replication_factor: 1, other_zone_replicas: 0, other_region_replicas: 0 };
        let (_, mut chosen) = place(&t, &p, &mut rng).unwrap();
        let mut seen = BTreeSet::new();
        while let Some(peer) = replacement(&t, Category::OtherRegion, &mut chosen, &mut rng) {
            prop_assert!(seen.insert(peer.id.clone()));
        }
        prop_assert_eq!(seen.len(), locs.len());
    }

    /// QUORUM sets of one RF always intersect, and levels are ordered.
    #[test]
    fn quorums_intersect(rf in 1usize..64) {
        let q = CommitLevel::Quorum.required(rf);
        prop_assert!(2 * q > rf);
        prop_assert!(CommitLevel::One.required(rf) <= q && q <= CommitLevel::All.required(rf));
        prop_assert!((1..=rf).contains(&q));
    }
}

/// A fault that decides the outcome of a write unambiguously (no write lands
/// unacknowledged), so "acknowledged iff enough replicas hold it" is exact.
#[derive(Debug, Clone, Copy)]
enum PeerState {
    Ok,
    Slow,
    Error,
    Hang,
    Down,
}

fn peer_state() -> impl Strategy<Value = PeerState> {
    prop_oneof![
        3 => Just(PeerState::Ok),
        1 => Just(PeerState::Slow),
        1 => Just(PeerState::Error),
        1 => Just(PeerState::Hang),
        1 => Just(PeerState::Down),
    ]
}

fn level() -> impl Strategy<Value = CommitLevel> {
    prop_oneof![
        Just(CommitLevel::One),
        Just(CommitLevel::Quorum),
        Just(CommitLevel::All)
    ]
}

struct Outcome {
    result: Result<usize, PutError>,
    holders: usize,
    reachable: usize,
    rf: usize,
    stopped_by_cap: bool,
    max_calls: usize,
}

/// Runs one put (`batch == 1`, through `put_with`) or a batch of `batch`
/// events (through `put_many`) and returns each event's outcome.
fn run_put(
    peers: &[(Locality, PeerState)],
    rf: usize,
    level: CommitLevel,
    max_replacements: usize,
    seed: u64,
    batch: usize,
) -> Vec<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let net = SimNetwork::new();
        let storage = net.add_node("local");
        let options = Options {
            replication_factor: rf,
            replica_timeout: Duration::from_millis(100),
            deadline: Duration::from_secs(100),
            max_replacements,
            rng_seed: Some(seed),
            ..Options::default()
        };
        let coord = Coordinator::new(
            "local".into(),
            Location::default(),
            options,
            storage,
            net.transport("local"),
        )
        .unwrap();
        let mut reachable = 1;
        for (i, (loc, state)) in peers.iter().enumerate() {
            let id = format!("p{i}");
            net.add_node(id.as_str());
            coord
                .add_peer(id.as_str(), id.as_str(), loc.clone())
                .unwrap();
            match state {
                PeerState::Ok => reachable += 1,
                PeerState::Slow => {
                    reachable += 1;
                    net.set_fault(&id, Some(Fault::Delay(Duration::from_millis(30))));
                }
                PeerState::Error => net.set_fault(&id, Some(Fault::Error)),
                PeerState::Hang => net.set_fault(&id, Some(Fault::Hang)),
                PeerState::Down => net.set_down(&id, true),
            }
        }
        let mut reports = coord.subscribe_reports();
        let keys: Vec<_> = (0..batch).map(|_| coord.keys().generate()).collect();
        let event = bytes::Bytes::from_static(b"{}");
        let results = if batch == 1 {
            vec![
                coord
                    .put_with(keys[0], event, PutOptions::level(level))
                    .await,
            ]
        } else {
            let events = keys.iter().map(|k| (*k, event.clone())).collect();
            coord.put_many(events, PutOptions::level(level)).await
        };
        assert_eq!(results.len(), batch, "one result per event");
        let mut outcomes = Vec::with_capacity(batch);
        let mut waiting = BTreeMap::new();
        for (key, result) in keys.iter().zip(results) {
            let result = result.map(|ack| {
                assert_eq!(ack.key, *key, "results come in input order");
                // Every node named in the ack holds the event at answer time.
                for n in &ack.acked {
                    assert!(net.storage(n.as_str()).contains(key));
                }
                ack.acked.len()
            });
            if let Err(PutError::NotEnoughNodes { .. }) = result {
                // Nothing was started, so no report follows.
                assert!(net.holders(key).is_empty());
                outcomes.push(Outcome {
                    result,
                    holders: 0,
                    reachable,
                    rf,
                    stopped_by_cap: false,
                    max_calls: 0,
                });
            } else {
                waiting.insert(*key, result);
            }
        }
        while !waiting.is_empty() {
            let report = reports.recv().await.unwrap();
            let Some(result) = waiting.remove(&report.key) else {
                continue;
            };
            let key = report.key;
            let holders = net.holders(&key).len();
            assert_eq!(holders, report.holders.len(), "report matches storage");
            let max_calls = (0..peers.len())
                .map(|i| net.calls_for(&format!("p{i}"), &key))
                .max()
                .unwrap_or(0);
            outcomes.push(Outcome {
                result,
                holders,
                reachable,
                rf,
                stopped_by_cap: report.stopped_by_cap,
                max_calls,
            });
        }
        outcomes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Acknowledged at level L iff at least required(L) replicas hold the event;
    /// no node is asked twice; after the background writes finish, replicas =
    /// min(RF, reachable nodes) unless the replacement cap stopped it.
    #[test]
    fn put_outcome_laws(
        peers in proptest::collection::vec((locality(), peer_state()), 0..7),
        rf in 1usize..6,
        level in level(),
        cap in 0usize..6,
        seed: u64,
    ) {
        for out in run_put(&peers, rf, level, cap, seed, 1) {
            check_laws(&out, &peers, level, cap)?;
        }
    }

    /// The same laws hold for every event of a batch (`put_many`), whose
    /// writes are grouped per node and whose replacements are grouped too.
    #[test]
    fn put_many_outcome_laws(
        peers in proptest::collection::vec((locality(), peer_state()), 0..7),
        rf in 1usize..6,
        level in level(),
        cap in 0usize..6,
        seed: u64,
        batch in 2usize..12,
    ) {
        let outcomes = run_put(&peers, rf, level, cap, seed, batch);
        prop_assert_eq!(outcomes.len(), batch);
        for out in outcomes {
            check_laws(&out, &peers, level, cap)?;
        }
    }
}

fn check_laws(
    out: &Outcome,
    peers: &[(Locality, PeerState)],
    level: CommitLevel,
    cap: usize,
) -> Result<(), TestCaseError> {
    let required = level.required(out.rf);
    match &out.result {
        Ok(acked) => {
            prop_assert!(*acked >= required);
            prop_assert!(out.holders >= required);
        }
        Err(PutError::NotEnoughNodes { .. }) => prop_assert!(peers.len() + 1 < out.rf),
        Err(PutError::CommitNotReached { acked, .. }) => {
            prop_assert!(*acked < required);
            prop_assert!(
                out.holders < required,
                "failed but {} of {} hold it",
                out.holders,
                required
            );
        }
        Err(e) => prop_assert!(false, "unexpected error {e:?}"),
    }
    prop_assert!(out.max_calls <= 1, "a node was asked twice");
    if peers.len() + 1 >= out.rf {
        let want = out.rf.min(out.reachable);
        prop_assert!(
            out.holders == want || out.stopped_by_cap,
            "holders {} want {} ({:?})",
            out.holders,
            want,
            peers
        );
        if cap >= peers.len() {
            prop_assert_eq!(out.holders, want);
        }
    }
    Ok(())
}

/// Placement is a pure function of the seed.
#[test]
fn placement_is_deterministic_for_a_seed() {
    let locs: Vec<Locality> = (0..8)
        .map(|i| Locality::OtherZone(format!("z{}", i % 3)))
        .collect();
    let t = topology(&locs);
    let p = PlacementPolicy {
        replication_factor: 4,
        other_zone_replicas: 3,
        other_region_replicas: 0,
    };
    let run = |seed| place(&t, &p, &mut StdRng::seed_from_u64(seed)).unwrap().0;
    assert_eq!(run(42), run(42));
    let spread: BTreeMap<String, usize> = run(42).iter().fold(BTreeMap::new(), |mut m, x| {
        *m.entry(format!("{:?}", x.locality)).or_default() += 1;
        m
    });
    assert_eq!(spread.len(), 3, "three zones used before any repeats");
}
