//! Real UDP gossip between in-process members on 127.0.0.1: joining by seed,
//! authentication, failure detection, goodbye on a clean stop, removal.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alldata_membership::{Listener, MemberInfo, MemberState, Membership, MembershipConfig};
use tokio::net::UdpSocket;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Up(String),
    Down(String, bool),
    Removed(String),
}

#[derive(Default)]
struct Record(Mutex<Vec<Seen>>);

impl Record {
    fn has(&self, seen: &Seen) -> bool {
        self.0.lock().unwrap().contains(seen)
    }
}

impl Listener for Record {
    fn member_up(&self, m: &MemberInfo) {
        self.0.lock().unwrap().push(Seen::Up(m.id.clone()));
    }
    fn member_down(&self, m: &MemberInfo, left: bool) {
        self.0.lock().unwrap().push(Seen::Down(m.id.clone(), left));
    }
    fn member_removed(&self, id: &str) {
        self.0.lock().unwrap().push(Seen::Removed(id.to_owned()));
    }
}

/// Fast timers so failure detection takes well under a second or two.
fn fast(mut c: MembershipConfig, seed: u64) -> MembershipConfig {
    c.foca.probe_period = Duration::from_millis(200);
    c.foca.probe_rtt = Duration::from_millis(80);
    c.foca.suspect_to_down_after = Duration::from_millis(600);
    if let Some(g) = c.foca.periodic_gossip.as_mut() {
        g.frequency = Duration::from_millis(100);
    }
    c.tick = Duration::from_millis(100);
    c.rng_seed = Some(seed);
    c
}

fn test_seed() -> u64 {
    let seed = std::env::var("ALLDATA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand_seed);
    println!("seed {seed} (reproduce with ALLDATA_TEST_SEED={seed})");
    seed
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

async fn member(
    id: &str,
    secret: &str,
    seeds: &[SocketAddr],
    seed: u64,
) -> (Membership, Arc<Record>, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let me = MemberInfo::new(
        id,
        addr,
        format!("127.0.0.1:{}", addr.port()),
        "r",
        "z",
        true,
    );
    let mut config = fast(MembershipConfig::new(me, secret), seed);
    config.seeds = seeds.to_vec();
    let record = Arc::new(Record::default());
    let m = Membership::start(config, socket, record.clone());
    (m, record, addr)
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + within;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state_of(m: &Membership, id: &str) -> Option<MemberState> {
    m.members()
        .into_iter()
        .find(|v| v.info.id == id)
        .map(|v| v.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_by_seed_learn_each_other() {
    let seed = test_seed();
    let (a, _, a_addr) = member("a", "s3cret", &[], seed).await;
    let (b, _, _) = member("b", "s3cret", &[a_addr], seed + 1).await;
    let (c, rc, _) = member("c", "s3cret", &[a_addr], seed + 2).await;
    until("everyone knows everyone", Duration::from_secs(5), || {
        [&a, &b, &c].iter().all(|m| {
            m.members()
                .iter()
                .filter(|v| v.state == MemberState::Alive)
                .count()
                == 3
        })
    })
    .await;
    // c learned b through gossip, not from its seed.
    assert!(rc.has(&Seen::Up("b".into())));
    let view = c.members();
    assert_eq!(view[0].info.id, "c", "the local node first");
    let b_view = view.iter().find(|v| v.info.id == "b").unwrap();
    assert_eq!(b_view.info.region, "r");
    assert!(b_view.info.peer_address.starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_with_a_wrong_secret_are_ignored() {
    let seed = test_seed();
    let (a, ra, a_addr) = member("a", "right", &[], seed).await;
    let (intruder, ri, _) = member("intruder", "wrong", &[a_addr], seed + 1).await;
    // A member with the right secret joins in the same time.
    let (b, _, _) = member("b", "right", &[a_addr], seed + 2).await;
    until("b joins", Duration::from_secs(5), || {
        state_of(&a, "b").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(state_of(&a, "intruder"), None, "a accepted the intruder");
    assert_eq!(state_of(&b, "intruder"), None);
    assert!(!ra.has(&Seen::Up("intruder".into())));
    assert_eq!(intruder.members().len(), 1, "the intruder learned members");
    assert!(ri.0.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_answering_is_declared_down_and_back_when_it_returns() {
    let seed = test_seed();
    let (a, ra, a_addr) = member("a", "s", &[], seed).await;
    let (b, _, _) = member("b", "s", &[a_addr], seed + 1).await;
    let (c, _, c_addr) = member("c", "s", &[a_addr], seed + 2).await;
    until("all alive", Duration::from_secs(5), || {
        a.members()
            .iter()
            .filter(|v| v.state == MemberState::Alive)
            .count()
            == 3
    })
    .await;
    // c crashes: no goodbye.
    c.abort();
    until("c declared down on a and b", Duration::from_secs(5), || {
        state_of(&a, "c") == Some(MemberState::Down) && state_of(&b, "c") == Some(MemberState::Down)
    })
    .await;
    assert!(ra.has(&Seen::Down("c".into(), false)));
    // c restarts at the same address with a new incarnation: alive again.
    let socket = UdpSocket::bind(c_addr).await.unwrap();
    let mut me = MemberInfo::new("c", c_addr, "127.0.0.1:1", "r", "z", true);
    me.incarnation += 1_000;
    let mut config = fast(MembershipConfig::new(me, "s"), seed + 3);
    config.seeds = vec![a_addr];
    let _c2 = Membership::start(config, socket, Arc::new(Record::default()));
    until("c alive again", Duration::from_secs(5), || {
        state_of(&a, "c") == Some(MemberState::Alive)
            && state_of(&b, "c") == Some(MemberState::Alive)
    })
    .await;
    let ups =
        ra.0.lock()
            .unwrap()
            .iter()
            .filter(|s| **s == Seen::Up("c".into()))
            .count();
    assert!(ups >= 2, "a did not hear c come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_leave_is_seen_by_the_others_at_once() {
    let seed = test_seed();
    let (a, ra, a_addr) = member("a", "s", &[], seed).await;
    let (b, _, _) = member("b", "s", &[a_addr], seed + 1).await;
    let (c, _, _) = member("c", "s", &[a_addr], seed + 2).await;
    until("all alive", Duration::from_secs(5), || {
        [&a, &b]
            .iter()
            .all(|m| state_of(m, "c") == Some(MemberState::Alive))
            && state_of(&c, "a") == Some(MemberState::Alive)
            && state_of(&c, "b") == Some(MemberState::Alive)
    })
    .await;
    let started = tokio::time::Instant::now();
    c.leave(Duration::from_secs(1)).await;
    until("c left on a and b", Duration::from_millis(300), || {
        state_of(&a, "c") == Some(MemberState::Left) && state_of(&b, "c") == Some(MemberState::Left)
    })
    .await;
    println!("leave seen after {:?}", started.elapsed());
    assert!(ra.has(&Seen::Down("c".into(), true)));
    // Failure detection's later "down" does not turn "left" into "down".
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(state_of(&a, "c"), Some(MemberState::Left));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_dropped_everywhere_and_never_comes_back() {
    let seed = test_seed();
    let (a, ra, a_addr) = member("a", "s", &[], seed).await;
    let (b, rb, _) = member("b", "s", &[a_addr], seed + 1).await;
    let (c, _, _) = member("c", "s", &[a_addr], seed + 2).await;
    until("all alive", Duration::from_secs(5), || {
        [&a, &b]
            .iter()
            .all(|m| state_of(m, "c") == Some(MemberState::Alive))
            && state_of(&a, "b") == Some(MemberState::Alive)
    })
    .await;
    a.remove("c").await.unwrap();
    assert_eq!(state_of(&a, "c"), None);
    until("b hears of the removal", Duration::from_secs(2), || {
        state_of(&b, "c").is_none()
    })
    .await;
    assert!(ra.has(&Seen::Removed("c".into())));
    assert!(rb.has(&Seen::Removed("c".into())));
    assert!(b.removed().contains("c"));
    // c keeps running and gossiping: it is never listed again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state_of(&a, "c"), None);
    assert_eq!(state_of(&b, "c"), None);
    assert!(a.remove("a").await.is_err(), "a node cannot remove itself");
    drop(c);
}
