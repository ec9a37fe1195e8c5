//! Time to a ready face index at boot with FACES faces (default 100000, two per person): from
//! PostgreSQL, from the Redis mirror, and from an index snapshot; each also with exact search
//! only, to separate reading from building the HNSW graph.
//!
//! Needs the local PostgreSQL (`ROLLCALL_BENCH_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432`; a scratch database is created and dropped) and Redis
//! (`ROLLCALL_BENCH_REDIS`, default `redis://127.0.0.1:6379/15`; that database is flushed).
//! `cargo run --release -p rollcall-benches --bin boot -- [FACES]`

use std::sync::Arc;
use std::time::Instant;

use rollcall_benches::synthetic::clustered;
use rollcall_server::cache::RedisCache;
use rollcall_server::index::snapshot;
use rollcall_server::index::IndexPolicy;
use rollcall_server::metrics::Metrics;
use rollcall_server::store::{embedding_to_bytes, Store};
use rollcall_server::sync::{self, BootReport};
use sqlx::Connection;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn row(what: &str, policy: &str, r: &BootReport) {
    println!(
        "| {what} | {policy} | {} | {} | {:.2} | {:.2} |",
        r.faces,
        r.kind,
        r.build.as_secs_f64(),
        r.elapsed.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let faces: usize = std::env::args()
        .nth(1)
        .map(|v| v.parse().expect("FACES is a number"))
        .unwrap_or(100_000);
    let pg = env(
        "ROLLCALL_BENCH_POSTGRES",
        "postgres://postgres@127.0.0.1:5432",
    );
    let redis_url = env("ROLLCALL_BENCH_REDIS", "redis://127.0.0.1:6379/15");
    for url in [&pg, &redis_url] {
        let host = url::Url::parse(url)?
            .host_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            host == "127.0.0.1" || host == "localhost",
            "the boot bench only talks to local servers, not {host}"
        );
    }
    let name = format!("rollcall_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&format!("{pg}/postgres")).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let db = format!("{pg}/{name}");
    let store = Store::connect(&db).await?;
    store.migrate().await?;

    let t = Instant::now();
    let data = clustered(faces, 2, 0, 3);
    let mut conn = sqlx::PgConnection::connect(&db).await?;
    sqlx::query(
        "INSERT INTO users (name, created_at, updated_at) SELECT 'person ' || g, 0, 0 FROM generate_series(1, $1) g",
    )
    .bind(faces.div_ceil(2) as i64)
    .execute(&mut conn)
    .await?;
    for chunk in data.gallery.chunks(5000) {
        let users: Vec<i64> = chunk.iter().map(|e| e.user_id).collect();
        let embeddings: Vec<Vec<u8>> = chunk
            .iter()
            .map(|e| embedding_to_bytes(&e.embedding))
            .collect();
        sqlx::query(
            "INSERT INTO faces (user_id, embedding, model_version, photo_key, quality, box_x, box_y, box_width, box_height, created_at) \
             SELECT u, e, 'bench', 'bench', 1, 0, 0, 100, 100, 0 FROM UNNEST($1::bigint[], $2::bytea[]) AS t(u, e)",
        )
        .bind(users)
        .bind(embeddings)
        .execute(&mut conn)
        .await?;
    }
    eprintln!("seeded {faces} faces in {:.1} s", t.elapsed().as_secs_f64());

    let hnsw = IndexPolicy::default();
    let exact = IndexPolicy {
        hnsw_threshold: usize::MAX,
        ..hnsw
    };
    println!("| source | index policy | faces | kind | build s | ready s |");
    println!("| --- | --- | ---: | --- | ---: | ---: |");
    let mut last = None;
    for (label, policy) in [("exact only", exact), ("default", hnsw)] {
        let (gallery, r) = sync::boot(&store, None, None, policy).await?;
        row("PostgreSQL", label, &r);
        last = Some(gallery);
    }

    let redis = RedisCache::open(&redis_url, Arc::new(Metrics::new())).await?;
    let mut rc = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut rc).await?;
    let t = Instant::now();
    redis.resync_mirror(&store).await?;
    eprintln!(
        "mirrored {faces} faces in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for (label, policy) in [("exact only", exact), ("default", hnsw)] {
        let (_, r) = sync::boot(&store, Some(&redis), None, policy).await?;
        assert_eq!(r.source, sync::Source::Mirror);
        row("Redis mirror", label, &r);
    }
    redis::cmd("FLUSHDB").query_async::<()>(&mut rc).await?;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("index.bin");
    snapshot::write(&path, "", &last.expect("booted"))?;
    eprintln!(
        "snapshot: {:.1} MiB",
        std::fs::metadata(&path)?.len() as f64 / (1024.0 * 1024.0)
    );
    for (label, policy) in [("exact only", exact), ("default", hnsw)] {
        let (_, r) = sync::boot(&store, None, Some(&path), policy).await?;
        assert_eq!(r.source, sync::Source::Snapshot);
        row("snapshot", label, &r);
    }

    drop(store);
    drop(conn);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}
