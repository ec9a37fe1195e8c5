//! Scale-out: two `rollcall serve` processes sharing one fresh PostgreSQL database and a Redis
//! server the test owns on its own port (so it can stop and start it); and a single replica
//! without Redis, whose in-process cache plays the same roles.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fresh_database, person_photo, send, send_json, spawn_with, Db};
use rollcall_server::index::{snapshot, HnswParams};
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it holds, failing after `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis server of the test's own, without persistence: a restart comes back empty.
struct TestRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl TestRedis {
    fn start(dir: &Path) -> Self {
        let mut r = Self {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn mirrored_faces(&self) -> usize {
        redis::cmd("HLEN")
            .arg(rollcall_server::cache::FACES_MIRROR)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `rollcall serve` process.
struct Replica {
    child: Child,
    base: String,
    key: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Starts a replica named `name`; `snapshot` is its index snapshot file (`None`: none).
    async fn start(
        name: &str,
        database_url: &str,
        redis_url: &str,
        key: &str,
        tmp: &Path,
        snapshot: Option<&Path>,
    ) -> Replica {
        let port = free_port();
        let log = tmp.join(format!("{name}-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env("ROLLCALL_BIND", format!("127.0.0.1:{port}"))
            .env("ROLLCALL_ADMIN_KEY", key)
            .env("ROLLCALL_MODEL_DIR", common::model_dir())
            .env("ROLLCALL_STORAGE_URL", tmp.join("photos"))
            .env("ROLLCALL_INDEX_SNAPSHOT", snapshot.unwrap_or(Path::new("")))
            .env("ROLLCALL_SNAPSHOT_INTERVAL_SECS", "1")
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut r = Replica {
            child,
            base: format!("http://127.0.0.1:{port}"),
            key: key.to_owned(),
            log,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if let Ok(res) = r.client.get(format!("{}/readyz", r.base)).send().await {
                if res.status() == 200 {
                    return r;
                }
            }
            let exited = r.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "replica {name} did not become ready ({exited:?}):\n{}",
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    async fn readyz(&self) -> Value {
        send_json(self.client.get(format!("{}/readyz", self.base))).await
    }

    async fn faces(&self) -> i64 {
        self.readyz().await["index_faces"].as_i64().unwrap()
    }

    async fn create_user(&self, name: &str) -> i64 {
        let res = send(
            self.request(reqwest::Method::POST, "/api/v1/users")
                .json(&json!({ "name": name })),
        )
        .await;
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    async fn enroll(&self, user: i64, photo: &str) {
        let form = reqwest::multipart::Form::new().part(
            "photo",
            reqwest::multipart::Part::bytes(person_photo(photo)).file_name("p.jpg"),
        );
        let res = send(
            self.request(
                reqwest::Method::POST,
                &format!("/api/v1/users/{user}/faces"),
            )
            .multipart(form),
        )
        .await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    }

    /// The first face of `photo` recognised: `(user id or null, attendance)`.
    async fn recognize(&self, photo: &str) -> (Value, Value) {
        let body = send_json(
            self.request(reqwest::Method::POST, "/api/v1/recognize?camera_id=hall")
                .body(person_photo(photo)),
        )
        .await;
        let face = &body["faces"][0];
        assert!(face.is_object(), "{body}");
        (face["user"]["id"].clone(), face["attendance"].clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_gallery_dedupe_and_survive_a_redis_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut redis = TestRedis::start(tmp.path());
    let db = fresh_database(Db::Postgres, &tmp).await;
    let key = format!("rc_test_admin_{:016x}", rand::random::<u64>());
    let a_snapshot = tmp.path().join("a-index.bin");
    let a = Replica::start("a", &db, &redis.url(), &key, tmp.path(), Some(&a_snapshot)).await;
    let b = Replica::start("b", &db, &redis.url(), &key, tmp.path(), None).await;
    for r in [&a, &b] {
        let ready = r.readyz().await;
        assert_eq!(
            (&ready["status"], &ready["redis"]),
            (&json!("ready"), &json!("ok")),
            "{ready}"
        );
    }

    // Enrolled on A, known to B within a second: B recognises another photo.
    let obama = a.create_user("Barack Obama").await;
    a.enroll(obama, "obama.jpg").await;
    within(
        Duration::from_secs(1),
        "B applies A's enrolment",
        || async { b.faces().await == 1 },
    )
    .await;
    assert_eq!(
        redis.mirrored_faces().await,
        1,
        "the mirror holds the embedding"
    );

    // Both replicas see him at the same moment: one attendance mark, two sightings.
    let ((ua, ma), (ub, mb)) = tokio::join!(a.recognize("obama2.jpg"), b.recognize("obama2.jpg"));
    assert_eq!((ua, ub), (json!(obama), json!(obama)));
    assert_eq!(ma["id"], mb["id"], "{ma} {mb}");
    assert_eq!(
        [&ma["recorded"], &mb["recorded"]]
            .iter()
            .filter(|r| ***r == json!(true))
            .count(),
        1
    );
    let log = send_json(a.request(
        reqwest::Method::GET,
        &format!("/api/v1/attendance?user_id={obama}"),
    ))
    .await;
    assert_eq!(log["items"].as_array().unwrap().len(), 1, "{log}");
    assert_eq!(log["items"][0]["sightings"], 2);
    let dedupe_key: Option<i64> = redis::cmd("GET")
        .arg(format!("rollcall:dedupe:300:{obama}"))
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_eq!(
        dedupe_key,
        ma["id"].as_i64(),
        "the dedupe key names the mark"
    );

    // Deleted on B, unknown to A within a second.
    let res = send(b.request(reqwest::Method::DELETE, &format!("/api/v1/users/{obama}"))).await;
    assert_eq!(res.status(), 204);
    within(Duration::from_secs(1), "A applies B's deletion", || async {
        a.faces().await == 0
    })
    .await;
    assert_eq!(a.recognize("obama2.jpg").await.0, Value::Null);
    assert_eq!(redis.mirrored_faces().await, 0);

    // Redis goes away: both keep serving from the database and memory, and say degraded.
    redis.stop();
    for r in [&a, &b] {
        within(Duration::from_secs(10), "degraded readiness", || async {
            let ready = r.readyz().await;
            ready["status"] == "degraded" && ready["redis"] == "unreachable"
        })
        .await;
    }
    let biden = a.create_user("Joe Biden").await;
    a.enroll(biden, "biden.jpg").await;
    assert_eq!(a.recognize("biden.jpg").await.0, json!(biden));
    assert_eq!(b.recognize("biden.jpg").await.0, Value::Null, "B missed it");
    assert!(a.log().contains("redis is unreachable"), "{}", a.log());

    // Redis returns, empty: the mirror is rebuilt and B catches up on what it missed.
    redis.restart();
    within(
        Duration::from_secs(20),
        "B catches up after the outage",
        || async { b.faces().await == 1 },
    )
    .await;
    assert_eq!(b.recognize("biden.jpg").await.0, json!(biden));
    within(
        Duration::from_secs(20),
        "the mirror is re-synced",
        || async { redis.mirrored_faces().await == 1 },
    )
    .await;
    for r in [&a, &b] {
        within(Duration::from_secs(10), "ready again", || async {
            r.readyz().await["status"] == "ready"
        })
        .await;
    }

    // A new replica warm-starts from the mirror.
    let c = Replica::start("c", &db, &redis.url(), &key, tmp.path(), None).await;
    let ready = c.readyz().await;
    assert_eq!(
        (&ready["index_source"], &ready["index_faces"]),
        (&json!("redis mirror"), &json!(1)),
        "{ready}"
    );
    drop(c);

    // A restarts from its snapshot (written within a second of a change) and resumes.
    within(
        Duration::from_secs(20),
        "A's snapshot holds Biden",
        || async {
            snapshot::read(&a_snapshot, HnswParams::default()).is_ok_and(|s| {
                s.index.face_ids().iter().map(|f| f.1).collect::<Vec<_>>() == [biden]
                    && !s.stream_id.is_empty()
            })
        },
    )
    .await;
    drop(a);
    let a = Replica::start("a", &db, &redis.url(), &key, tmp.path(), Some(&a_snapshot)).await;
    let ready = a.readyz().await;
    assert_eq!(
        (&ready["index_source"], &ready["index_faces"]),
        (&json!("snapshot"), &json!(1)),
        "{ready}"
    );
    assert_eq!(a.recognize("biden.jpg").await.0, json!(biden));
}

/// `name{labels} value` of a Prometheus text body.
fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_without_redis_caches_results_and_dedupes_in_process() {
    let app = spawn_with(Db::Sqlite, |s| s.hnsw_threshold = 1).await;
    let ready: Value = send_json(app.public_get("/readyz")).await;
    assert_eq!(
        (&ready["cache"], &ready["redis"], &ready["index_kind"]),
        (&json!("local"), &json!("disabled"), &json!("exact")),
        "{ready}"
    );
    let obama = app.create_user("Barack Obama", "Office").await;
    assert_eq!(
        app.enroll(obama, &[person_photo("obama.jpg")])
            .await
            .status(),
        201
    );
    within(
        Duration::from_secs(30),
        "the gallery turns to HNSW",
        || async { send_json(app.public_get("/readyz")).await["index_kind"] == "hnsw" },
    )
    .await;

    // The same frame twice: the second answer comes from the result cache and folds into the
    // first mark through the in-process dedupe.
    let first = app.recognize_json(person_photo("obama2.jpg"), "door").await;
    let second = app.recognize_json(person_photo("obama2.jpg"), "door").await;
    assert_eq!(first["faces"][0]["user"]["id"], obama, "{first}");
    assert_eq!(second["faces"][0]["user"]["id"], obama, "{second}");
    let mark = first["faces"][0]["attendance"]["id"].clone();
    assert_eq!(first["faces"][0]["attendance"]["recorded"], true);
    assert_eq!(
        second["faces"][0]["attendance"],
        json!({ "id": mark, "recorded": false })
    );
    let body = send(app.public_get("/metrics")).await.text().await.unwrap();
    assert_eq!(
        metric(&body, "rollcall_result_cache_total{outcome=\"hit\"}"),
        1.0
    );
    assert_eq!(
        metric(&body, "rollcall_result_cache_total{outcome=\"miss\"}"),
        1.0
    );

    // A deactivated user is not named from the cache.
    let res = send(
        app.patch(&format!("/api/v1/users/{obama}"))
            .json(&json!({ "active": false })),
    )
    .await;
    assert_eq!(res.status(), 200);
    let third = app.recognize_json(person_photo("obama2.jpg"), "door").await;
    assert_eq!(third["faces"][0]["user"], Value::Null, "{third}");
    let res = send(
        app.patch(&format!("/api/v1/users/{obama}"))
            .json(&json!({ "active": true })),
    )
    .await;
    assert_eq!(res.status(), 200);

    // A dedupe window of 0 makes every sighting its own mark.
    let res = send(app.request_as(reqwest::Method::PUT, "/api/v1/settings", Some(&app.admin_key)).json(
        &json!({ "match_threshold": 0.92, "dedupe_window_secs": 0, "work_start": null, "work_end": null }),
    ))
    .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    for _ in 0..2 {
        let r = app.recognize_json(person_photo("obama3.jpg"), "desk").await;
        assert_eq!(r["faces"][0]["attendance"]["recorded"], true, "{r}");
    }
    let log: Value = send_json(app.get("/api/v1/attendance?camera_id=desk")).await;
    assert_eq!(log["items"].as_array().unwrap().len(), 2, "{log}");
}
