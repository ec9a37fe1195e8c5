//! The face index at gallery sizes up to a million: build time, memory per face, search
//! latency (p50/p99, one query at a time) and recall@1 of HNSW against exact search, on
//! synthetic clustered embeddings and on real embeddings of the photos among them.
//!
//! `cargo run --release -p rollcall-benches --bin index_report -- [SIZE…] [--queries N] [--ef E,E…] [--dims D]`
//! (sizes default to 500 10000 100000 1000000).

use std::time::Instant;

use rollcall_benches::synthetic::{clustered_in, IDENTITY_DIMS};
use rollcall_benches::{percentile, resident_bytes};
use rollcall_server::index::{ExactIndex, FaceIndex, HnswIndex, HnswParams, StoredEmbedding};

struct Args {
    sizes: Vec<usize>,
    queries: usize,
    efs: Vec<usize>,
    dims: usize,
}

fn args() -> Args {
    let mut out = Args {
        sizes: Vec::new(),
        queries: 500,
        efs: vec![HnswParams::default().ef_search],
        dims: IDENTITY_DIMS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dims" => out.dims = it.next().and_then(|v| v.parse().ok()).expect("--dims D"),
            "--queries" => {
                out.queries = it.next().and_then(|v| v.parse().ok()).expect("--queries N")
            }
            "--ef" => {
                out.efs = it
                    .next()
                    .expect("--ef E,E")
                    .split(',')
                    .map(|v| v.parse().expect("--ef takes numbers"))
                    .collect()
            }
            n => out.sizes.push(n.parse().expect("sizes are numbers")),
        }
    }
    if out.sizes.is_empty() {
        out.sizes = vec![500, 10_000, 100_000, 1_000_000];
    }
    out
}

/// Latencies in milliseconds of `search` over `queries`, sorted, and the top hits.
fn timed(index: &dyn FaceIndex, queries: &[Vec<f32>]) -> (Vec<f64>, Vec<Option<(i64, i64)>>) {
    let mut ms = Vec::with_capacity(queries.len());
    let mut tops = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let hit = index.search(q, 1).first().map(|h| (h.face_id, h.user_id));
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        tops.push(hit);
    }
    ms.sort_by(f64::total_cmp);
    (ms, tops)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args = args();
    let params = HnswParams::default();
    println!(
        "HNSW M={} ef_construction={}; 3 faces per identity, identities along {} directions; {} queries per size, one at a time; {} cores",
        params.max_connections,
        params.ef_construction,
        args.dims,
        args.queries,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| faces | index | ef | build s | bytes/face | p50 ms | p99 ms | recall@1 face | recall@1 user |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &n in &args.sizes {
        let data = clustered_in(n, 3, args.queries, 42, args.dims);
        let before = resident_bytes();
        let t = Instant::now();
        let exact = ExactIndex::build(&data.gallery);
        let exact_build = t.elapsed().as_secs_f64();
        let exact_mem = resident_bytes().saturating_sub(before);
        let (ms, truth) = timed(&exact, &data.queries);
        println!(
            "| {n} | exact | – | {exact_build:.2} | {:.0} | {:.3} | {:.3} | 1 | 1 |",
            exact_mem as f64 / n as f64,
            percentile(&ms, 50.0),
            percentile(&ms, 99.0)
        );
        let before = resident_bytes();
        let t = Instant::now();
        let mut hnsw = HnswIndex::build(&data.gallery, params);
        let build = t.elapsed().as_secs_f64();
        let mem = resident_bytes().saturating_sub(before);
        for &ef in &args.efs {
            hnsw.set_ef_search(ef);
            let (ms, tops) = timed(&hnsw, &data.queries);
            let face = truth.iter().zip(&tops).filter(|(a, b)| a == b).count();
            let user = truth
                .iter()
                .zip(&tops)
                .filter(|(a, b)| a.map(|x| x.1) == b.map(|x| x.1))
                .count();
            println!(
                "| {n} | hnsw | {ef} | {build:.2} | {:.0} | {:.3} | {:.3} | {:.4} | {:.4} |",
                mem as f64 / n as f64,
                percentile(&ms, 50.0),
                percentile(&ms, 99.0),
                face as f64 / tops.len() as f64,
                user as f64 / tops.len() as f64,
            );
        }
        eprintln!(
            "{n} faces: exact index {:.1} MiB, HNSW {:.1} MiB",
            mib(exact_mem),
            mib(mem)
        );
    }
    real_embeddings(
        args.sizes
            .iter()
            .copied()
            .filter(|&n| n <= 100_000)
            .max()
            .unwrap_or(10_000),
    );
}

/// Real embeddings of the photos hidden among `distractors` synthetic faces: obama.jpg and
/// every face of face-api's group photos enrolled, obama2/obama3 and biden as queries.
fn real_embeddings(distractors: usize) {
    use candle_core::Device;
    use rollcall_models::pipeline::{FacePipeline, PipelineConfig};
    let pipeline = FacePipeline::load(
        &rollcall_benches::model_dir(),
        &Device::Cpu,
        PipelineConfig::default(),
    )
    .expect("models; run scripts/fetch-assets.sh");
    let photo = |name: &str| {
        rollcall_benches::load(
            rollcall_benches::assets()
                .join("face_recognition/test_images")
                .join(name),
        )
    };
    let embed = |img: image::RgbImage| -> Vec<Vec<f32>> {
        pipeline
            .process(&[img])
            .expect("inference")
            .faces
            .remove(0)
            .into_iter()
            .map(|f| f.embedding)
            .collect()
    };
    let mut gallery = clustered_in(distractors, 3, 0, 7, IDENTITY_DIMS).gallery;
    let mut next = gallery.len() as i64 + 1;
    let obama_user = -1;
    for e in embed(photo("obama.jpg")) {
        gallery.push(StoredEmbedding {
            face_id: next,
            user_id: obama_user,
            embedding: e,
        });
        next += 1;
    }
    let mut group = 0;
    for i in 1..=6 {
        for e in embed(rollcall_benches::frame(i)) {
            group += 1;
            gallery.push(StoredEmbedding {
                face_id: next,
                user_id: -1 - next,
                embedding: e,
            });
            next += 1;
        }
    }
    let exact = ExactIndex::build(&gallery);
    let hnsw = HnswIndex::build(&gallery, HnswParams::default());
    println!("\nReal embeddings among {distractors} synthetic faces (obama.jpg and {group} group-photo faces enrolled):");
    println!("| query | exact best (similarity) | HNSW best (similarity) |");
    println!("| --- | --- | --- |");
    for name in ["obama2.jpg", "obama3.jpg", "biden.jpg"] {
        for q in embed(photo(name)) {
            let e = exact.search(&q, 1)[0];
            let h = hnsw.search(&q, 1)[0];
            let who = |u: i64| match u {
                -1 => "obama".to_owned(),
                u if u < -1 => "group face".to_owned(),
                _ => "synthetic".to_owned(),
            };
            println!(
                "| {name} | {} ({:.4}) | {} ({:.4}) |",
                who(e.user_id),
                e.similarity,
                who(h.user_id),
                h.similarity
            );
        }
    }
}
