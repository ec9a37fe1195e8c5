//! Test harness: the real app on a random port with a fresh database (SQLite in a temp dir,
//! or a new PostgreSQL database), real models and real photos from `scripts/fetch-assets.sh`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;

use rand::Rng;
use reqwest::{Method, RequestBuilder, Response};
use rollcall_models::device::DeviceChoice;
use rollcall_server::app;
use rollcall_server::config::{CommonSettings, DetectorArg, ServeSettings};
use serde_json::Value;
use sqlx::Connection;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A running server and what tests need to talk to it.
pub struct TestApp {
    pub base: String,
    pub admin_key: String,
    pub client: reqwest::Client,
    pub photos_dir: PathBuf,
    pub database_url: String,
    _tmp: tempfile::TempDir,
}

pub use rollcall_models::fetched::{assets, model_dir};

/// Bytes of a photo of the face_recognition test set (`obama.jpg`, `biden.jpg`, …).
pub fn person_photo(name: &str) -> Vec<u8> {
    let path = assets().join("face_recognition/test_images").join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-assets.sh", path.display()))
}

/// Bytes of a face-api group photo (`sample1.jpg` …).
pub fn group_photo(name: &str) -> Vec<u8> {
    let path = model_dir().join("demo").join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-assets.sh", path.display()))
}

/// Base URL of the PostgreSQL server tests create databases on.
fn postgres_base() -> String {
    std::env::var("ROLLCALL_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A new, empty database of kind `db` (SQLite inside `tmp`).
pub async fn fresh_database(db: Db, tmp: &tempfile::TempDir) -> String {
    match db {
        Db::Sqlite => format!("sqlite://{}", tmp.path().join("rollcall.db").display()),
        Db::Postgres => {
            let name = format!("rollcall_test_{:016x}", rand::thread_rng().gen::<u64>());
            let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_base()))
                .await
                .expect("PostgreSQL must run at 127.0.0.1:5432 (scripts/test.sh starts it)");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create test database");
            format!("{}/{name}", postgres_base())
        }
    }
}

/// Default serve settings for tests; adjust before `spawn_with`.
pub fn settings(tmp: &tempfile::TempDir) -> ServeSettings {
    ServeSettings {
        bind: "127.0.0.1:0".parse().unwrap(),
        storage_url: tmp.path().join("photos").display().to_string(),
        match_threshold: rollcall_server::DEFAULT_MATCH_THRESHOLD,
        dedupe_window_secs: 300,
        max_upload_bytes: 10 * 1024 * 1024,
        max_pixels: 40_000_000,
        max_batch: None,
        max_wait_ms: 5,
        queue_capacity: 64,
        detector: DetectorArg::Ssd,
        min_confidence: 0.5,
        admin_key: Some(format!(
            "rc_test_admin_{:016x}",
            rand::thread_rng().gen::<u64>()
        )),
        session_key: None,
        redis_url: None,
        hnsw_threshold: 20_000,
        hnsw_ef_search: 64,
        index_snapshot: String::new(),
        snapshot_interval_secs: 300,
        result_cache_secs: 10,
    }
}

/// Starts the app on `db` with default settings.
pub async fn spawn(db: Db) -> TestApp {
    spawn_with(db, |_| {}).await
}

/// Starts the app on `db` after `tweak` adjusted the settings.
pub async fn spawn_with(db: Db, tweak: impl FnOnce(&mut ServeSettings)) -> TestApp {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(&tmp);
    tweak(&mut s);
    let database_url = fresh_database(db, &tmp).await;
    let common = CommonSettings {
        database_url: database_url.clone(),
        model_dir: model_dir(),
        device: DeviceChoice::Cpu,
    };
    let admin_key = s.admin_key.clone().unwrap();
    let (store, _) = app::open_store(&common, Some(&admin_key))
        .await
        .expect("open store");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let photos_dir = PathBuf::from(&s.storage_url);
    let state = app::build_state(&common, s, store)
        .await
        .expect("build state (models fetched?)");
    tokio::spawn(app::serve(state, listener).unwrap());
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        admin_key,
        client: reqwest::Client::new(),
        photos_dir,
        database_url,
        _tmp: tmp,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with `key` as bearer token, or anonymous when `key` is `None`.
    pub fn request_as(&self, method: Method, path: &str, key: Option<&str>) -> RequestBuilder {
        let req = self.client.request(method, self.url(path));
        match key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// An anonymous GET of `path` (the public endpoints).
    pub fn public_get(&self, path: &str) -> RequestBuilder {
        self.request_as(Method::GET, path, None)
    }

    /// A GET of `path` as admin.
    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request_as(Method::GET, path, Some(&self.admin_key))
    }

    /// A POST to `path` as admin.
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request_as(Method::POST, path, Some(&self.admin_key))
    }

    /// A PATCH of `path` as admin.
    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.request_as(Method::PATCH, path, Some(&self.admin_key))
    }

    /// A DELETE of `path` as admin.
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.request_as(Method::DELETE, path, Some(&self.admin_key))
    }

    /// Creates a user and returns its id.
    pub async fn create_user(&self, name: &str, department: &str) -> i64 {
        let res = send(
            self.post("/api/v1/users")
                .json(&serde_json::json!({ "name": name, "department": department })),
        )
        .await;
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    /// Posts photos to `/users/{id}/faces`.
    pub async fn enroll(&self, user: i64, photos: &[Vec<u8>]) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for (i, p) in photos.iter().enumerate() {
            form = form.part(
                "photo",
                reqwest::multipart::Part::bytes(p.clone()).file_name(format!("p{i}.jpg")),
            );
        }
        send(
            self.post(&format!("/api/v1/users/{user}/faces"))
                .multipart(form),
        )
        .await
    }

    /// Posts a raw image to `/recognize`.
    pub async fn recognize(&self, image: Vec<u8>, camera: &str) -> reqwest::Response {
        send(
            self.post(&format!("/api/v1/recognize?camera_id={camera}"))
                .body(image),
        )
        .await
    }

    /// Posts a raw image to `/recognize` and parses the JSON answer.
    pub async fn recognize_json(&self, image: Vec<u8>, camera: &str) -> Value {
        self.recognize(image, camera).await.json().await.unwrap()
    }

    /// Files under the photo folder.
    pub fn stored_photos(&self) -> usize {
        fn count(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .map(|e| {
                            if e.path().is_dir() {
                                count(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&self.photos_dir)
    }
}

/// Sends `req`; a failure to get any response panics.
pub async fn send(req: RequestBuilder) -> Response {
    req.send().await.unwrap()
}

/// Sends `req` and parses the JSON body of its response.
pub async fn send_json(req: RequestBuilder) -> Value {
    send(req).await.json().await.unwrap()
}

/// Sends `req` and returns the status and error code of its (error) response.
pub async fn send_error(req: RequestBuilder) -> (u16, String) {
    error_of(send(req).await).await
}

/// Status and `error.code` of an error response.
pub async fn error_of(res: Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {body}"))
            .to_owned(),
    )
}

/// Declares one async test per database backend.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::Db::Postgres).await })*
        }
    };
}
