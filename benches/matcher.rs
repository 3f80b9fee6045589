//! Micro-benchmark of subscription matching: `Snapshot::build` and
//! `Snapshot::matching` with 1,000 to 100,000 endpoints over 1,000 tenants, and the
//! raw `TopicTrie`. Target: matching ≤ 10 µs/event with 100k subscriptions.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use herald::domain::{Signing, SigningSecret, TopicPattern, TopicTrie};
use herald::store::endpoints::ActiveEndpoint;
use herald::subscriptions::Snapshot;
use uuid::Uuid;

const PATTERNS: [&str; 10] = [
    "sales.order.created",
    "sales.order.*",
    "sales.#",
    "billing.invoice.paid",
    "billing.*.paid",
    "#.created",
    "inventory.stock.moved",
    "inventory.#",
    "hr.employee.*",
    "*.*.sent",
];

fn endpoints(count: usize, tenants: usize) -> Vec<ActiveEndpoint> {
    let secret = SigningSecret::generate();
    let url = "http://127.0.0.1:9/hook".parse().expect("literal url");
    (0..count)
        .map(|i| ActiveEndpoint {
            id: Uuid::now_v7(),
            url: Clone::clone(&url),
            tenant_id: Some(format!("tenant-{}", i % tenants).into()),
            event_types: Box::new([PATTERNS[(i / tenants) % PATTERNS.len()]
                .parse()
                .expect("literal pattern")]),
            signing: Signing::Standard(Box::new([secret.clone()])),
            headers: Default::default(),
            rate_limit: None,
        })
        .collect()
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    for count in [1_000usize, 100_000] {
        let list = endpoints(count, 1_000);
        group.bench_with_input(BenchmarkId::new("build", count), &list, |b, list| {
            b.iter(|| Snapshot::build(black_box(list.clone())))
        });
        let snapshot = Snapshot::build(list);
        group.bench_function(BenchmarkId::new("matching", count), |b| {
            b.iter(|| {
                black_box(snapshot.matching(black_box("sales.order.created"), Some("tenant-17")))
                    .len()
            })
        });
    }
    group.finish();
}

fn trie(c: &mut Criterion) {
    let mut trie = TopicTrie::new();
    for i in 0..100_000usize {
        let pattern: TopicPattern = PATTERNS[i % PATTERNS.len()]
            .parse()
            .expect("literal pattern");
        trie.insert(&pattern, i);
    }
    c.bench_function("trie/matches/100000", |b| {
        b.iter(|| black_box(trie.matches(black_box("sales.order.created"))).len())
    });
}

criterion_group!(benches, snapshot, trie);
criterion_main!(benches);
