//! Keys per second from one generator, single-threaded.

use alldata_keygen::KeyGenerator;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn generate(c: &mut Criterion) {
    let g = KeyGenerator::new();
    let mut group = c.benchmark_group("keygen");
    group.throughput(Throughput::Elements(1));
    group.bench_function("generate", |b| b.iter(|| black_box(g.generate())));
    group.bench_function("generate+to_string", |b| {
        b.iter(|| black_box(g.generate().to_string()))
    });
    group.finish();
}

criterion_group!(benches, generate);
criterion_main!(benches);
