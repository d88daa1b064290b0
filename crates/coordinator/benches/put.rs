//! Puts per second through the coordinator with an in-memory transport that
//! does no work beyond storing into memory: the cost of placement, spawning,
//! commit tracking and bookkeeping, at RF 1 and RF 3. Also the hash of an
//! event's bytes that every write computes for repair's digest index.

use alldata_coordinator::sim::SimNetwork;
use alldata_coordinator::{CommitLevel, Coordinator, Locality, Location, Options, PutOptions};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn node(rf: usize) -> Coordinator {
    let net = SimNetwork::new();
    let storage = net.add_node("n0");
    let options = Options {
        replication_factor: rf,
        rng_seed: Some(1),
        ..Options::default()
    };
    let c = Coordinator::new(
        "n0".into(),
        Location::default(),
        options,
        storage,
        net.transport("n0"),
    )
    .expect("valid options");
    for i in 1..5 {
        let id = format!("n{i}");
        net.add_node(id.as_str());
        c.add_peer(id.as_str(), id.as_str(), Locality::LocalZone)
            .expect("peer");
    }
    c
}

fn puts(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let event = Bytes::from(vec![b'x'; 1024]);
    let mut group = c.benchmark_group("coordinator_put");
    group.throughput(Throughput::Elements(1));
    for rf in [1, 3] {
        for level in [CommitLevel::One, CommitLevel::Quorum, CommitLevel::All] {
            if rf == 1 && level != CommitLevel::Quorum {
                continue;
            }
            let coord = node(rf);
            let event = event.clone();
            group.bench_function(format!("rf{rf}_{level}"), |b| {
                b.to_async(&rt).iter(|| {
                    let (coord, event) = (coord.clone(), event.clone());
                    async move {
                        coord
                            .append_with(event, PutOptions::level(level))
                            .await
                            .expect("put succeeds")
                    }
                })
            });
        }
    }
    group.finish();
}

fn value_hash(c: &mut Criterion) {
    let event = vec![b'x'; 1024];
    let mut group = c.benchmark_group("repair_value_hash");
    group.throughput(Throughput::Bytes(event.len() as u64));
    group.bench_function("1KiB", |b| {
        b.iter(|| alldata_coordinator::repair::value_hash(std::hint::black_box(&event)))
    });
    group.finish();
}

criterion_group!(benches, puts, value_hash);
criterion_main!(benches);
