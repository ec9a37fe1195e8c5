//! End-to-end load: starts `rollcall serve` (SQLite in a temporary folder, 127.0.0.1 only),
//! enrols one person, and posts real 640×480 frames (face-api's group photos, JPEG) to
//! `/api/v1/recognize` at each concurrency: requests/s, latency p50/p95/p99 and the mean
//! inference batch (from `/metrics`); then the same with batching off (`ROLLCALL_MAX_BATCH=1`),
//! and the ratio. Bounded: at most `--requests` requests and `--seconds` seconds per level.
//!
//! `cargo build --release -p rollcall-server && cargo run --release -p rollcall-benches --bin loadgen --
//!  [--rollcall target/release/rollcall] [--requests 64] [--seconds 120] [--concurrency 1,4,16]`

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollcall_benches::{assets, frame, model_dir, percentile};

struct Args {
    rollcall: PathBuf,
    requests: usize,
    seconds: u64,
    concurrency: Vec<usize>,
}

fn args() -> Args {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let mut out = Args {
        rollcall: target.join("release/rollcall"),
        requests: 64,
        seconds: 120,
        concurrency: vec![1, 4, 16],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--rollcall" => out.rollcall = value().into(),
            "--requests" => out.requests = value().parse().expect("--requests N"),
            "--seconds" => out.seconds = value().parse().expect("--seconds S"),
            "--concurrency" => {
                out.concurrency = value()
                    .split(',')
                    .map(|v| v.parse().expect("--concurrency N,N"))
                    .collect()
            }
            other => panic!("unknown argument {other}"),
        }
    }
    out
}

/// A server of our own; killed on drop.
struct Server {
    child: Child,
    base: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(rollcall: &PathBuf, max_batch: usize, client: &reqwest::Client) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = format!("rc_loadgen_{:016x}", rand::random::<u64>());
    let child = Command::new(rollcall)
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("db.sqlite").display()),
        )
        .env("ROLLCALL_BIND", format!("127.0.0.1:{port}"))
        .env("ROLLCALL_ADMIN_KEY", &key)
        .env("ROLLCALL_MODEL_DIR", model_dir())
        .env("ROLLCALL_STORAGE_URL", dir.path().join("photos"))
        .env("ROLLCALL_INDEX_SNAPSHOT", "")
        .env("ROLLCALL_RESULT_CACHE_SECS", "0")
        .env("ROLLCALL_MAX_BATCH", max_batch.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build it with cargo build --release -p rollcall-server",
                rollcall.display()
            )
        });
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        key,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let user: serde_json::Value = client
        .post(format!("{}/api/v1/users", server.base))
        .bearer_auth(&server.key)
        .json(&serde_json::json!({ "name": "Barack Obama" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let photo = std::fs::read(assets().join("face_recognition/test_images/obama.jpg")).unwrap();
    let form = reqwest::multipart::Form::new().part(
        "photo",
        reqwest::multipart::Part::bytes(photo).file_name("o.jpg"),
    );
    let res = client
        .post(format!("{}/api/v1/users/{}/faces", server.base, user["id"]))
        .bearer_auth(&server.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "enrolment failed");
    server
}

/// `(sum, count)` of the batch-size histogram.
async fn batches(client: &reqwest::Client, base: &str) -> (f64, f64) {
    let body = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("rollcall_batch_size_sum"),
        value("rollcall_batch_size_count"),
    )
}

struct Level {
    done: usize,
    refused: usize,
    rps: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    batch: f64,
}

async fn level(
    client: &reqwest::Client,
    server: &Server,
    frames: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    args: &Args,
) -> Level {
    let (s0, c0) = batches(client, &server.base).await;
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, frames) = (client.clone(), next.clone(), frames.clone());
        let url = format!("{}/api/v1/recognize?camera_id=loadgen", server.base);
        let key = server.key.clone();
        let total = args.requests;
        workers.push(tokio::spawn(async move {
            let mut ms = Vec::new();
            let mut refused = 0;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let res = client
                    .post(&url)
                    .bearer_auth(&key)
                    .body(frames[i % frames.len()].clone())
                    .send()
                    .await
                    .expect("request");
                let ok = res.status().is_success();
                let _ = res.bytes().await;
                if ok {
                    ms.push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    refused += 1;
                }
            }
            (ms, refused)
        }));
    }
    let mut ms = Vec::new();
    let mut refused = 0;
    for w in workers {
        let (m, r) = w.await.unwrap();
        ms.extend(m);
        refused += r;
    }
    let wall = started.elapsed().as_secs_f64();
    let (s1, c1) = batches(client, &server.base).await;
    ms.sort_by(f64::total_cmp);
    Level {
        done: ms.len(),
        refused,
        rps: ms.len() as f64 / wall,
        p50: percentile(&ms, 50.0),
        p95: percentile(&ms, 95.0),
        p99: percentile(&ms, 99.0),
        batch: (s1 - s0) / (c1 - c0).max(1.0),
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    let client = reqwest::Client::new();
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (1..=6)
            .map(|i| {
                let mut out = std::io::Cursor::new(Vec::new());
                frame(i)
                    .write_to(&mut out, image::ImageFormat::Jpeg)
                    .expect("JPEG encoding");
                out.into_inner()
            })
            .collect(),
    );
    println!(
        "{} requests at most and {} s at most per level; 640x480 JPEG frames; {} cores",
        args.requests,
        args.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| batching | concurrency | requests | 503 | req/s | p50 ms | p95 ms | p99 ms | mean batch |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut rates: Vec<Vec<f64>> = Vec::new();
    for (label, max_batch) in [("max_batch=8", 8), ("off (max_batch=1)", 1)] {
        let server = start(&args.rollcall, max_batch, &client).await;
        // Warm-up: the first inferences allocate.
        for f in frames.iter().take(2) {
            let _ = client
                .post(format!("{}/api/v1/recognize", server.base))
                .bearer_auth(&server.key)
                .body(f.clone())
                .send()
                .await;
        }
        let mut row = Vec::new();
        for &c in &args.concurrency {
            let l = level(&client, &server, &frames, c, &args).await;
            println!(
                "| {label} | {c} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} |",
                l.done, l.refused, l.rps, l.p50, l.p95, l.p99, l.batch
            );
            row.push(l.rps);
        }
        rates.push(row);
    }
    for (i, c) in args.concurrency.iter().enumerate() {
        println!(
            "batching gain at concurrency {c}: {:.2}x requests/s",
            rates[0][i] / rates[1][i]
        );
    }
}
