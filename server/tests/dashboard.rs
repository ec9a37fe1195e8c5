//! The dashboard end to end: headless Chromium driven through WebDriver (`chromedriver`, from
//! `scripts/deps.sh`) against the real app on 127.0.0.1, with the real models, real photos and
//! a fake camera fed a video made from a real photo. Screenshots of each page are saved under
//! `target/screenshots/` (`$CARGO_TARGET_DIR/screenshots/` when set).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assets, person_photo, send_json, spawn, Db, TestApp};
use fantoccini::{Client, ClientBuilder, Locator};
use image::imageops::FilterType;
use serde_json::{json, Value};

const ADMIN: &str = "office";
const PASSWORD: &str = "correct horse battery";
/// A name with markup: it must show as text everywhere, never as HTML.
const MARKUP_NAME: &str = "Barack <b>Obama</b> & \"Co\"";

/// Where screenshots go.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sets an administrator's password through the real CLI, the password on standard input.
fn set_password_with_cli(app: &TestApp, username: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["--database-url", &app.database_url])
        .args(["admin", "set-password", "--username", username])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("password set"));
}

/// A headless Chromium session through a chromedriver of its own (its whole process group is
/// killed on drop, so no browser outlives the test).
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    downloads: PathBuf,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start(fake_video: Option<&Path>) -> Browser {
        use std::os::unix::process::CommandExt;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (scripts/deps.sh installs chromium-driver)");
        let profile = tempfile::tempdir().unwrap();
        let downloads = profile.path().join("downloads");
        std::fs::create_dir_all(&downloads).unwrap();
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,1000".into(),
            format!(
                "--user-data-dir={}",
                profile.path().join("chrome").display()
            ),
        ];
        if let Some(video) = fake_video {
            args.push("--use-fake-device-for-media-stream".into());
            args.push("--use-fake-ui-for-media-stream".into());
            args.push(format!(
                "--use-file-for-fake-video-capture={}",
                video.display()
            ));
        }
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            }
        });
        let caps = match caps {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let started = Instant::now();
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot start Chromium through chromedriver: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
            downloads,
            shots: screenshot_dir(),
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn fill(&self, css: &str, value: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap();
        el.clear().await.unwrap();
        el.send_keys(value).await.unwrap();
    }

    /// Chooses the file at `path` in the file input `css`.
    async fn choose_file(&self, css: &str, path: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.send_keys(path).await.unwrap();
    }

    /// How many elements match `css`.
    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Waits until the text of `css` contains `needle`, returning it.
    async fn wait_text(&self, css: &str, needle: &str, secs: u64) -> String {
        let started = Instant::now();
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            if started.elapsed() > Duration::from_secs(secs) {
                let page = self.client.source().await.unwrap_or_default();
                self.shot("failure").await;
                panic!("`{css}` never contained {needle:?}; last text {text:?}\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_url(&self, pred: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let url = self.client.current_url().await.unwrap().to_string();
            if pred(&url) {
                return url;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "stuck at {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn sign_in(&self, app: &TestApp, password: &str) {
        self.goto(&app.url("/login")).await;
        self.fill("#username", ADMIN).await;
        self.fill("#password", password).await;
        self.click("#login-form button[type=submit]").await;
    }
}

/// A y4m video (4:2:0) of `photo` scaled to 640 px wide: a header and raw I420 frames.
fn y4m_from_photo(photo: &[u8], frames: usize) -> Vec<u8> {
    let img = image::load_from_memory(photo).unwrap().to_rgb8();
    let w = 640u32;
    let h = ((img.height() * w / img.width()) / 2) * 2;
    let img = image::imageops::resize(&img, w, h, FilterType::Triangle);
    let luma = |p: &image::Rgb<u8>| {
        let [r, g, b] = p.0.map(f32::from);
        (16.0 + 0.257 * r + 0.504 * g + 0.098 * b).round() as u8
    };
    let mut y = Vec::with_capacity((w * h) as usize);
    for p in img.pixels() {
        y.push(luma(p));
    }
    let (cw, ch) = (w / 2, h / 2);
    let (mut u, mut v) = (Vec::new(), Vec::new());
    for cy in 0..ch {
        for cx in 0..cw {
            let mut sum = [0f32; 3];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = img.get_pixel(cx * 2 + dx, cy * 2 + dy).0;
                for k in 0..3 {
                    sum[k] += f32::from(p[k]) / 4.0;
                }
            }
            let [r, g, b] = sum;
            u.push(
                (128.0 - 0.148 * r - 0.291 * g + 0.439 * b)
                    .round()
                    .clamp(0.0, 255.0) as u8,
            );
            v.push(
                (128.0 + 0.439 * r - 0.368 * g - 0.071 * b)
                    .round()
                    .clamp(0.0, 255.0) as u8,
            );
        }
    }
    let mut out = format!("YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n").into_bytes();
    for _ in 0..frames {
        out.extend_from_slice(b"FRAME\n");
        out.extend_from_slice(&y);
        out.extend_from_slice(&u);
        out.extend_from_slice(&v);
    }
    out
}

/// Canonical path of a test photo (WebDriver uploads need canonical paths).
fn test_image(name: &str) -> String {
    canonical(&assets().join("face_recognition/test_images").join(name))
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-assets.sh", path.display()))
        .display()
        .to_string()
}

/// Sign-in, people, enrolment (refused and accepted), recognition of an uploaded photo, the log,
/// the CSV export, the overview, keys, settings and deletion, all through the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_works_through_the_pages() {
    let app = spawn(Db::Sqlite).await;
    set_password_with_cli(&app, ADMIN, PASSWORD);
    let b = Browser::start(None).await;

    // Pages need a session: the browser is sent to sign in and comes back afterwards.
    b.goto(&app.url("/people")).await;
    b.wait_url(|u| u.contains("/login?next=%2Fpeople")).await;
    b.shot("login").await;
    b.fill("#username", ADMIN).await;
    b.fill("#password", "wrong password").await;
    b.click("#login-form button[type=submit]").await;
    let refused = b
        .wait_text("#login-error", "Wrong username or password", 10)
        .await;
    assert!(refused.contains("Wrong"));
    assert!(b
        .client
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/login"));
    b.shot("login-refused").await;
    b.fill("#password", PASSWORD).await;
    b.click("#login-form button[type=submit]").await;
    b.wait_url(|u| u.ends_with("/people")).await;

    // Add a person whose name is markup.
    b.fill("#new-name", MARKUP_NAME).await;
    b.fill("#new-department", "Office").await;
    b.click("#add-person-form button[type=submit]").await;
    let person_url = b
        .wait_url(|u| u.contains("/people/") && !u.ends_with("/people/"))
        .await;
    let user_id: i64 = person_url.rsplit('/').next().unwrap().parse().unwrap();
    assert_eq!(b.text("#person-name").await, MARKUP_NAME);
    assert_eq!(b.count("#person-name b").await, 0);

    // A group photo is refused with the server's reason; a photo of one face is enrolled.
    b.goto(&app.url(&format!("/enrol?user={user_id}"))).await;
    let group = canonical(&common::model_dir().join("demo/sample1.jpg"));
    b.choose_file("#enrol-photos", &group).await;
    b.click("#enrol-submit").await;
    let reason = b.wait_text("#alert", "faces were found", 60).await;
    assert!(reason.contains("exactly one person"), "{reason}");
    b.shot("enrol-refused").await;
    b.goto(&app.url(&format!("/enrol?user={user_id}"))).await;
    b.choose_file("#enrol-photos", &test_image("obama.jpg"))
        .await;
    b.click("#enrol-submit").await;
    b.wait_text("#enrol-result", "Enrolled 1 face", 60).await;
    assert_eq!(
        b.count(".facebox").await,
        1,
        "the detected face box is drawn"
    );
    b.shot("enrol").await;

    // Recognise an uploaded photo of the same person.
    b.goto(&app.url("/live")).await;
    b.choose_file("#recognize-photo", &test_image("obama2.jpg"))
        .await;
    b.click("#recognize-form button[type=submit]").await;
    let line = b.wait_text("#recognize-result", "marked present", 60).await;
    assert!(line.contains(MARKUP_NAME), "{line}");
    b.shot("recognize-upload").await;

    // The mark is in the log, and the CSV export with the page's filters holds it.
    b.goto(&app.url("/attendance?department=Office")).await;
    let log = b.text("#log tbody").await;
    assert!(log.contains(MARKUP_NAME) && log.contains("upload"), "{log}");
    b.shot("attendance").await;
    b.click("#export-csv").await;
    let started = Instant::now();
    let csv = loop {
        let done = std::fs::read_dir(&b.downloads)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "csv"));
        if let Some(path) = done {
            break std::fs::read_to_string(path).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no CSV was downloaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(header.contains("name") || header.contains("user"), "{csv}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "{csv}");
    assert!(
        rows[0].contains("Barack <b>Obama</b>") && rows[0].contains("Office"),
        "{csv}"
    );

    // The overview counts today's presence and shows the face thumbnail.
    b.goto(&app.url("/")).await;
    assert_eq!(b.text("#present-today").await, "1");
    assert_eq!(b.text("#enrolled").await, "1");
    assert_eq!(b.count("svg.chart rect.bar").await, 30 + 24);
    let thumb_width = b
        .client
        .execute(
            "const i = document.querySelector('.recent img'); return i.decode().then(() => i.naturalWidth);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(thumb_width, json!(128));
    b.shot("overview").await;
    b.goto(&app.url("/people")).await;
    b.shot("people").await;
    // A phone-sized window: the layout reflows with no sideways scrolling of the page.
    b.client.set_window_size(390, 844).await.unwrap();
    b.goto(&app.url("/")).await;
    let overflow = b
        .client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "page wider than a phone: {overflow}"
    );
    b.shot("overview-phone").await;
    b.client.set_window_size(1280, 1000).await.unwrap();

    // Keys: the new secret is shown once and works.
    b.goto(&app.url("/keys")).await;
    b.fill("#key-name", "Front door").await;
    b.click("#create-key-form button[type=submit]").await;
    let secret = b.wait_text("#new-key-secret", "rc_", 10).await;
    b.shot("keys").await;
    let res = app
        .client
        .get(app.url("/api/v1/attendance"))
        .bearer_auth(secret.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        403,
        "a recognize-only key cannot read the log"
    );

    // Settings are saved through the API; a bad value is refused in words.
    b.goto(&app.url("/settings")).await;
    // A time input's typing order depends on the locale; set its value as a picker would.
    b.client
        .execute(
            "document.getElementById('work-start').value = '09:00';",
            vec![],
        )
        .await
        .unwrap();
    b.fill("#dedupe-window", "120").await;
    b.click("#settings-form button[type=submit]").await;
    b.wait_text("#settings-result", "Saved", 10).await;
    b.shot("settings").await;
    let saved: Value = send_json(app.get("/api/v1/settings")).await;
    assert_eq!(saved["dedupe_window_secs"], 120);
    assert_eq!(saved["work_start"], "09:00");

    // Deleting warns that biometric data will be erased, then erases it.
    b.goto(&app.url(&format!("/people/{user_id}"))).await;
    b.shot("person").await;
    b.click("#delete-person").await;
    let warning = b.text("#delete-dialog").await;
    assert!(warning.contains("biometric data"), "{warning}");
    b.shot("person-delete").await;
    b.click("#confirm-delete").await;
    b.wait_url(|u| u.ends_with("/people")).await;
    assert!(b.text("#people tbody").await.contains("Nobody matches"));
    assert_eq!(app.stored_photos(), 0, "the enrolment photo is erased");

    // Signing out ends the session.
    b.click(".logout button").await;
    b.wait_url(|u| u.ends_with("/login")).await;
    b.goto(&app.url("/")).await;
    b.wait_url(|u| u.contains("/login?next=")).await;
    b.client.clone().close().await.unwrap();
}

/// The live page with Chromium's fake camera showing a real photo marks the enrolled person
/// present; the kiosk, opened with a recognize key, sees them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_camera_marks_the_enrolled_person_present() {
    let app = spawn(Db::Sqlite).await;
    set_password_with_cli(&app, ADMIN, PASSWORD);
    let obama = app.create_user("Barack Obama", "Office").await;
    let res = app.enroll(obama, &[person_photo("obama.jpg")]).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let video_dir = tempfile::tempdir().unwrap();
    let video = video_dir.path().join("obama2.y4m");
    std::fs::write(&video, y4m_from_photo(&person_photo("obama2.jpg"), 10)).unwrap();

    let b = Browser::start(Some(&video)).await;
    b.sign_in(&app, PASSWORD).await;
    b.wait_url(|u| u.ends_with('/')).await;
    b.goto(&app.url("/live")).await;
    b.fill("#camera-id", "front-door").await;
    b.click("#live-start").await;
    let marked = b.wait_text("#marked", "marked present", 240).await;
    assert!(
        marked.contains("Barack Obama: marked present at"),
        "{marked}"
    );
    b.wait_text("#live-status", "1 face in view: Barack Obama", 240)
        .await;
    b.shot("live").await;
    // Frames keep flowing: later sightings fold into the one mark.
    let started = Instant::now();
    let log = loop {
        let log: Value = send_json(app.get("/api/v1/attendance")).await;
        if log["items"][0]["sightings"].as_i64().unwrap_or(0) >= 3 {
            break log;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "frames stopped: {log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{log}");
    assert_eq!(items[0]["user_id"], obama);
    assert_eq!(items[0]["source"], "live");
    assert_eq!(items[0]["camera_id"], "front-door");
    assert_eq!(
        b.count("#marked li").await,
        1,
        "the person is listed once, however many frames saw them"
    );

    // Kiosk: signed out, with only a recognize key.
    b.click(".logout button").await;
    b.wait_url(|u| u.ends_with("/login")).await;
    let key: Value = app
        .post("/api/v1/api-keys")
        .json(&json!({ "name": "kiosk", "scopes": ["recognize"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = key["key"].as_str().unwrap();
    b.goto(&app.url(&format!("/kiosk#key={secret}"))).await;
    b.wait_text("#live-status", "1 face in view: Barack Obama", 240)
        .await;
    assert_eq!(
        b.count("nav").await,
        0,
        "the kiosk shows only the live view"
    );
    assert!(!b
        .client
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains(secret));
    b.shot("kiosk").await;
    b.client.clone().close().await.unwrap();
}

on_both_databases!(sessions_csrf_and_runtime_settings);

/// The `name=value` of cookie `name` set by `res`, with its attributes.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// Cookies, CSRF and settings at the HTTP level (no redirects followed), on both databases.
async fn sessions_csrf_and_runtime_settings(db: Db) {
    let app = spawn(db).await;
    set_password_with_cli(&app, ADMIN, PASSWORD);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http.get(app.url("/login")).send().await.unwrap();
    let form_cookie = set_cookie(&login, "rollcall_login_csrf").unwrap();
    assert!(form_cookie.contains("HttpOnly") && form_cookie.contains("SameSite=Strict"));
    let form_cookie = form_cookie.split(';').next().unwrap().to_owned();
    let html = login.text().await.unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let post_login = |fields: Vec<(&'static str, String)>| {
        http.post(app.url("/login"))
            .header(reqwest::header::COOKIE, form_cookie.clone())
            .form(&fields)
            .send()
    };

    // A form POST without its CSRF token is refused, whatever the password.
    let res = post_login(vec![
        ("username", ADMIN.into()),
        ("password", PASSWORD.into()),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    let res = post_login(vec![
        ("username", ADMIN.into()),
        ("password", "not it".into()),
        ("csrf", token.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), 401);
    assert!(set_cookie(&res, "rollcall_session").is_none());
    let res = post_login(vec![
        ("username", ADMIN.into()),
        ("password", PASSWORD.into()),
        ("csrf", token.clone()),
        ("next", "https://elsewhere.example/".into()),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/", "no open redirect");
    let session = set_cookie(&res, "rollcall_session").unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    let session = session.split(';').next().unwrap().to_owned();

    // The page's CSRF token, as the script reads it.
    let page = http
        .get(app.url("/"))
        .header(reqwest::header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();

    // The session authorises the API; changes need the CSRF header.
    let api = |method: reqwest::Method, path: &str| {
        http.request(method, app.url(path))
            .header(reqwest::header::COOKIE, &session)
    };
    assert_eq!(
        api(reqwest::Method::GET, "/api/v1/users")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = api(reqwest::Method::POST, "/api/v1/users")
        .json(&json!({ "name": "Barack Obama" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "csrf_rejected");
    let res = api(reqwest::Method::POST, "/api/v1/users")
        .header("x-csrf-token", &csrf)
        .json(&json!({ "name": "Barack Obama" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let user = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();

    // A forged or tampered cookie is no session.
    let mut forged = session.clone();
    forged.insert(session.find('=').unwrap() + 2, 'x');
    let res = http
        .get(app.url("/api/v1/users"))
        .header(reqwest::header::COOKIE, forged)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // The dedupe window is read from the settings table at runtime: at 0 s every sighting marks.
    let res = api(reqwest::Method::PUT, "/api/v1/settings")
        .header("x-csrf-token", &csrf)
        .json(&json!({ "match_threshold": 1.5, "dedupe_window_secs": 0, "work_start": null, "work_end": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("match_threshold"));
    let res = api(reqwest::Method::PUT, "/api/v1/settings")
        .header("x-csrf-token", &csrf)
        .json(&json!({ "match_threshold": 0.92, "dedupe_window_secs": 0, "work_start": "08:30", "work_end": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(
        app.enroll(user, &[person_photo("obama.jpg")])
            .await
            .status(),
        201
    );
    for _ in 0..2 {
        let seen: Value = app
            .recognize(person_photo("obama2.jpg"), "door")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(seen["faces"][0]["attendance"]["recorded"], true, "{seen}");
    }
    // A threshold above every similarity makes the same face unknown.
    let res = api(reqwest::Method::PUT, "/api/v1/settings")
        .header("x-csrf-token", &csrf)
        .json(&json!({ "match_threshold": 1.0, "dedupe_window_secs": 300, "work_start": null, "work_end": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: Value = app
        .recognize(person_photo("obama2.jpg"), "door")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["faces"][0]["user"], Value::Null, "{seen}");

    // The thumbnail of the enrolled face is a small JPEG.
    let faces: Value = app
        .get(&format!("/api/v1/users/{user}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let face = faces["faces"][0]["id"].as_i64().unwrap();
    let thumb = api(
        reqwest::Method::GET,
        &format!("/api/v1/faces/{face}/thumbnail"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    let img = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    assert_eq!(img.width(), 128);

    // Signing out needs the token too.
    let res = http
        .post(app.url("/logout"))
        .header(reqwest::header::COOKIE, &session)
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = http
        .post(app.url("/logout"))
        .header(reqwest::header::COOKIE, &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(set_cookie(&res, "rollcall_session")
        .unwrap()
        .contains("Max-Age=0"));
}
