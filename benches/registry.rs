//! Hot paths of the node registry: the lookup every PORT_PLEASE2 makes, the
//! register/unregister pair of a node (re)starting, and the listing NAMES
//! builds. Run with `cargo bench --bench registry`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kube_epmd::codec::NodeInfo;
use kube_epmd::registry::Registry;

fn info(name: &str) -> NodeInfo {
    NodeInfo::erlang_node(name, 4200)
}

/// A registry holding `n` nodes named n0..n{n-1}.
fn filled(n: u64) -> Registry {
    let mut r = Registry::default();
    for i in 0..n {
        r.register(info(&format!("n{i}")), i, 10)
            .expect("fresh name");
    }
    r
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    let r = filled(100);
    g.bench_function("hit", |b| {
        b.iter(|| r.get(black_box("n42")).map(|n| n.port))
    });
    g.bench_function("miss", |b| {
        b.iter(|| r.get(black_box("absent")).map(|n| n.port))
    });
    g.finish();
}

fn churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("churn");
    // A name seen before: exercises the remembered-names path as a node
    // restarting does (creation = old counter + 1).
    let mut r = filled(10);
    let mut conn = 1_000u64;
    g.bench_function("register+unregister", |b| {
        b.iter(|| {
            conn += 1;
            let c = r.register(info("restarting"), conn, 11).expect("free");
            r.unregister("restarting", conn);
            c
        })
    });
    g.finish();
}

fn listing(c: &mut Criterion) {
    let mut g = c.benchmark_group("nodes");
    for n in [1u64, 10, 100] {
        let r = filled(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &r, |b, r| {
            b.iter(|| r.nodes().len())
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, churn, listing);
criterion_main!(benches);
