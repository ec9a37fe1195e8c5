//! Search latency of the face index, exact against HNSW, on synthetic clustered embeddings at
//! 500, 10k and 100k faces; and the cost of one enrolment (upsert) into each.
//! `cargo bench -p rollcall-benches --bench index` (the build times, recall and the million-face
//! run are in `--bin index_report`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rollcall_benches::synthetic::clustered;
use rollcall_server::index::{ExactIndex, FaceIndex, HnswIndex, HnswParams};

fn search(c: &mut Criterion) {
    let mut g = c.benchmark_group("index_search");
    for n in [500usize, 10_000, 100_000] {
        let data = clustered(n, 3, 256, 1);
        let exact = ExactIndex::build(&data.gallery);
        let hnsw = HnswIndex::build(&data.gallery, HnswParams::default());
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("exact", n), &data.queries, |b, q| {
            b.iter(|| {
                i = (i + 1) % q.len();
                exact.search(&q[i], 1)
            })
        });
        g.bench_with_input(BenchmarkId::new("hnsw", n), &data.queries, |b, q| {
            b.iter(|| {
                i = (i + 1) % q.len();
                hnsw.search(&q[i], 1)
            })
        });
    }
    g.finish();
}

fn upsert(c: &mut Criterion) {
    let data = clustered(10_000, 3, 1000, 2);
    let exact = ExactIndex::build(&data.gallery);
    let hnsw = HnswIndex::build(&data.gallery, HnswParams::default());
    let mut g = c.benchmark_group("index_upsert_10k");
    let mut id = 1_000_000i64;
    g.bench_function("exact", |b| {
        b.iter(|| {
            id += 1;
            exact.upsert(id, id, &data.queries[id as usize % 1000]);
        })
    });
    g.bench_function("hnsw", |b| {
        b.iter(|| {
            id += 1;
            hnsw.upsert(id, id, &data.queries[id as usize % 1000]);
        })
    });
    g.finish();
}

criterion_group!(benches, search, upsert);
criterion_main!(benches);
