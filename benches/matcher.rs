//! Micro-benchmark of subscription matching: `Snapshot::build` and
//! `Snapshot::matching` with 1,000 to 100,000 endpoints over 1,000 tenants, the raw
//! `TopicTrie`, and `Snapshot::receiving` (patterns, then payload filters) with none,
//! a fifth or all of the 100,000 endpoints carrying a filter. Target: ≤ 10 µs/event
//! with 100k subscriptions, filters included.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use herald::domain::{PayloadFilter, Signing, SigningSecret, Subject, TopicPattern, TopicTrie};
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
            filter: None,
            delivery: None,
            ordering: false,
        })
        .collect()
}

/// Filters as subscribers write them: amounts, currencies, countries, flags, `$or`.
const FILTERS: [&str; 4] = [
    r#"{"data.amount": {"$gte": 1000}, "data.currency": {"$in": ["EUR", "USD"]}}"#,
    r#"{"$or": [{"data.customer.vip": true}, {"data.amount": {"$gt": 5000}}]}"#,
    r#"{"data.customer.country": {"$in": ["FR", "DE", "ES", "IT", "NL"]}}"#,
    r#"{"data.lines.0.sku": {"$exists": true}, "data.status": {"$ne": "draft"}}"#,
];

/// An order as an ERP publishes it (≈ 400 bytes).
const ORDER: &str = r#"{"order_id": "SO-2026-004217", "status": "confirmed", "amount": 1250.5,
    "currency": "EUR", "customer": {"id": "C-88121", "name": "Dupont SARL", "vip": false,
    "country": "FR", "segment": "smb"}, "lines": [{"sku": "A-100", "qty": 3, "price": 250.0},
    {"sku": "B-220", "qty": 1, "price": 499.0}, {"sku": "C-310", "qty": 2, "price": 1.25}],
    "created_by": "erp-batch", "warehouse": "LYS-2"}"#;

/// Which of the 100,000 endpoints (by position) carry a filter.
type Carries = fn(usize) -> bool;

/// `endpoints`, with a filter on those `carries` picks (one of [`FILTERS`] in turn).
fn with_filters(tenants: usize, carries: Carries) -> Vec<ActiveEndpoint> {
    let mut list = endpoints(100_000, tenants);
    for (i, endpoint) in list.iter_mut().enumerate() {
        if carries(i) {
            let source = FILTERS[(i / (tenants * 5)) % FILTERS.len()];
            let filter = PayloadFilter::parse(serde_json::from_str(source).expect("literal"))
                .expect("literal filter");
            endpoint.filter = Some(Box::new(filter));
        }
    }
    list
}

/// `receiving` for one event of tenant-17 (40 of its 100 endpoints match the type) with
/// no filter, with a filter on a fifth of every tenant's endpoints (10 of the 40 matched),
/// and on every endpoint (40 evaluated). Each iteration is a new event: its data is
/// parsed again whenever a filter reads it.
fn filters(c: &mut Criterion) {
    const TENANTS: usize = 1_000;
    let data = serde_json::value::RawValue::from_string(ORDER.into()).expect("literal");
    let mut group = c.benchmark_group("receiving");
    group.sample_size(20);
    let cases: [(&str, Carries); 3] = [
        ("100000/no-filters", |_| false),
        ("100000/fifth-filtered", |i| (i / TENANTS) % 5 == 1),
        ("100000/all-filtered", |_| true),
    ];
    for (name, carries) in cases {
        let snapshot = Snapshot::build(with_filters(TENANTS, carries));
        group.bench_function(name, |b| {
            b.iter(|| {
                let event = Subject::new(
                    "evt-1",
                    black_box("sales.order.created"),
                    Some("tenant-17"),
                    &data,
                );
                black_box(snapshot.receiving(&event)).endpoints.len()
            })
        });
    }
    group.finish();
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

criterion_group!(benches, snapshot, trie, filters);
criterion_main!(benches);
