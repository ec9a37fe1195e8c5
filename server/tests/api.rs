//! End-to-end API tests on SQLite and PostgreSQL with the real models and real photos.

mod common;

use std::process::Command;

use common::{
    error_of, group_photo, person_photo, send, send_error, send_json, spawn, spawn_with, Db,
};
use reqwest::Method;
use serde_json::{json, Value};

on_both_databases!(
    enrol_recognise_dedupe_and_export,
    bad_uploads_are_refused_and_nothing_is_half_written,
    json_validation_and_verbatim_storage,
    keys_scopes_and_status_codes,
    deleting_a_user_erases_biometrics,
);

async fn enrol_recognise_dedupe_and_export(db: Db) {
    let app = spawn(db).await;
    let obama = app.create_user("Barack Obama", "Office").await;
    let res = app.enroll(obama, &[person_photo("obama.jpg")]).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());

    // A different photo of the same person is recognised; the second sighting folds into the first mark.
    let first: Value = app
        .recognize_json(person_photo("obama2.jpg"), "door-1")
        .await;
    let faces = first["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1, "{first}");
    assert_eq!(faces[0]["user"]["id"], obama, "{first}");
    assert_eq!(faces[0]["attendance"]["recorded"], true);
    let mark = faces[0]["attendance"]["id"].as_i64().unwrap();
    for k in ["x", "y", "width", "height"] {
        assert!(faces[0]["box"][k].is_number());
    }
    let second: Value = app
        .recognize_json(person_photo("obama3.jpg"), "door-1")
        .await;
    assert_eq!(second["faces"][0]["user"]["id"], obama, "{second}");
    assert_eq!(
        second["faces"][0]["attendance"],
        json!({ "recorded": false, "id": mark })
    );

    // Someone never enrolled comes back unknown and marks nothing.
    let stranger: Value = app
        .recognize_json(person_photo("biden.jpg"), "door-1")
        .await;
    assert_eq!(stranger["faces"].as_array().unwrap().len(), 1);
    assert_eq!(stranger["faces"][0]["user"], Value::Null, "{stranger}");
    assert_eq!(stranger["faces"][0]["attendance"]["recorded"], false);

    let log: Value = send_json(app.get("/api/v1/attendance?camera_id=door-1")).await;
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{log}");
    assert_eq!(items[0]["user_name"], "Barack Obama");
    assert_eq!(items[0]["sightings"], 2);
    assert_eq!(log["next_page"], Value::Null);
    let none: Value = send_json(app.get("/api/v1/attendance?department=Nowhere")).await;
    assert!(none["items"].as_array().unwrap().is_empty());

    let csv = send(app.get("/api/v1/attendance/export?format=csv&department=Office")).await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("id,user_id,external_id,name,department,seen_at"),
        "{csv}"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[1].contains("Barack Obama") && lines[1].contains("door-1"),
        "{csv}"
    );

    let pdf = send(app.get("/api/v1/attendance/export?format=pdf")).await;
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    let bytes = pdf.bytes().await.unwrap();
    assert!(bytes.starts_with(b"%PDF"));
    let text = pdf_text(&bytes);
    for needle in [
        "Rollcall attendance report",
        "Period:",
        "Barack Obama",
        "Office",
        "Page 1 of 1",
    ] {
        assert!(text.contains(needle), "`{needle}` not in PDF text:\n{text}");
    }
}

/// Text of a PDF through poppler's `pdftotext` (installed by scripts/test.sh).
fn pdf_text(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new("pdftotext")
        .arg("-layout")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn bad_uploads_are_refused_and_nothing_is_half_written(db: Db) {
    let app = spawn_with(db, |s| s.max_upload_bytes = 2 * 1024 * 1024).await;
    let user = app.create_user("Test Person", "QA").await;

    let big = vec![0xFFu8; 3 * 1024 * 1024];
    assert_eq!(
        error_of(app.recognize(big.clone(), "c").await).await,
        (413, "payload_too_large".into())
    );
    assert_eq!(error_of(app.enroll(user, &[big]).await).await.0, 413);

    // Format by magic bytes, whatever the name or content type says.
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
    assert_eq!(
        send_error(
            app.post("/api/v1/recognize")
                .header("content-type", "image/jpeg")
                .body(gif)
        )
        .await,
        (415, "unsupported_media_type".into())
    );

    let jpeg = person_photo("obama.jpg");
    assert_eq!(
        error_of(app.recognize(jpeg[..jpeg.len() / 3].to_vec(), "c").await).await,
        (422, "corrupt_image".into())
    );
    let bomb = PNG_BOMB.to_vec();
    assert!(bomb.len() < 100);
    assert_eq!(
        error_of(app.recognize(bomb.clone(), "c").await).await,
        (422, "image_too_large".into())
    );
    assert_eq!(
        error_of(app.enroll(user, &[bomb]).await).await,
        (422, "image_too_large".into())
    );

    // No face, several faces, and a good photo followed by a bad one: nothing is stored.
    assert_eq!(
        error_of(app.enroll(user, &[blank_png()]).await).await,
        (422, "no_face".into())
    );
    assert_eq!(
        error_of(app.enroll(user, &[group_photo("sample1.jpg")]).await).await,
        (422, "multiple_faces".into())
    );
    let res = app
        .enroll(
            user,
            &[person_photo("obama.jpg"), group_photo("sample2.jpg")],
        )
        .await;
    assert_eq!(error_of(res).await, (422, "multiple_faces".into()));
    let detail: Value = send_json(app.get(&format!("/api/v1/users/{user}"))).await;
    assert_eq!(detail["faces"], json!([]), "{detail}");
    assert_eq!(app.stored_photos(), 0);
    let seen: Value = app.recognize_json(person_photo("obama2.jpg"), "c").await;
    assert_eq!(
        seen["faces"][0]["user"],
        Value::Null,
        "a failed enrolment left an index entry: {seen}"
    );

    assert_eq!(
        error_of(app.enroll(9999, &[person_photo("obama.jpg")]).await).await,
        (404, "not_found".into())
    );
    assert_eq!(
        send_error(
            app.post(&format!("/api/v1/users/{user}/faces"))
                .multipart(reqwest::multipart::Form::new().text("x", "y"))
        )
        .await
        .0,
        400
    );
}

/// A PNG header claiming 30000×30000 pixels, a few bytes long (shared with rollcall-models).
const PNG_BOMB: &[u8] = include_bytes!("../../models/tests/fixtures/png-bomb-30000x30000.png");

fn blank_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(320, 240, image::Rgb([200, 180, 160]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn json_validation_and_verbatim_storage(db: Db) {
    let app = spawn(db).await;
    assert_eq!(
        send_error(
            app.post("/api/v1/users")
                .header("content-type", "application/json")
                .body("{\"name\": ")
        )
        .await,
        (400, "bad_request".into())
    );
    let (status, _) = send_error(
        app.post("/api/v1/users")
            .json(&json!({ "name": "A", "role": "x" })),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        send_error(app.post("/api/v1/users").json(&json!({ "name": "   " })))
            .await
            .0,
        400
    );
    assert_eq!(
        send_error(
            app.post("/api/v1/users")
                .json(&json!({ "name": "A", "email": "not-an-email" }))
        )
        .await
        .0,
        400
    );

    let nasty = "Robert'); DROP TABLE users;-- <script>alert(1)</script>";
    let res = send(
        app.post("/api/v1/users")
            .json(&json!({ "name": nasty, "department": "R&D \"<b>\"" })),
    )
    .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let back: Value = send_json(app.get(&format!("/api/v1/users/{id}"))).await;
    assert_eq!(back["name"], nasty);
    assert_eq!(back["department"], "R&D \"<b>\"");
    let found: Value = send_json(app.get("/api/v1/users?search=drop%20table")).await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);

    let res = send(
        app.patch(&format!("/api/v1/users/{id}"))
            .json(&json!({ "email": "a@b.org", "department": null })),
    )
    .await;
    let patched: Value = res.json().await.unwrap();
    assert_eq!(patched["email"], "a@b.org");
    assert_eq!(patched["department"], Value::Null);
    assert_eq!(patched["name"], nasty);

    assert_eq!(
        send_error(app.get("/api/v1/users/424242")).await,
        (404, "not_found".into())
    );
    assert_eq!(send_error(app.get("/api/v1/users/abc")).await.0, 404);
    assert_eq!(
        send_error(app.get("/api/v1/attendance?from=yesterday"))
            .await
            .0,
        400
    );
    assert_eq!(
        send_error(app.get("/api/v1/attendance/export?format=xls"))
            .await
            .0,
        400
    );

    // Paging.
    for i in 0..3 {
        app.create_user(&format!("Pager {i}"), "P").await;
    }
    let p1: Value = send_json(app.get("/api/v1/users?department=P&per_page=2")).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    assert_eq!(p1["next_page"], 2);
    let p2: Value = send_json(app.get("/api/v1/users?department=P&per_page=2&page=2")).await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_eq!(p2["next_page"], Value::Null);
}

async fn keys_scopes_and_status_codes(db: Db) {
    let app = spawn(db).await;
    assert_eq!(
        send_error(app.public_get("/api/v1/users")).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        send_error(app.request_as(Method::GET, "/api/v1/users", Some("rc_wrong")))
            .await
            .0,
        401
    );

    let created: Value = send_json(
        app.post("/api/v1/api-keys")
            .json(&json!({ "name": "kiosk", "scopes": ["recognize"] })),
    )
    .await;
    let kiosk = created["key"].as_str().unwrap().to_owned();
    let kiosk_id = created["api_key"]["id"].as_i64().unwrap();
    let listed: Value = send_json(app.get("/api/v1/api-keys")).await;
    assert!(
        !listed.to_string().contains(&kiosk),
        "secrets must never be listed"
    );

    // The kiosk may recognise (X-API-Key works too) but not list users or export.
    let res = send(
        app.request_as(Method::POST, "/api/v1/recognize", None)
            .header("x-api-key", &kiosk)
            .body(person_photo("biden.jpg")),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        send_error(app.request_as(Method::GET, "/api/v1/users", Some(&kiosk))).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        send_error(app.request_as(Method::GET, "/api/v1/attendance/export", Some(&kiosk)))
            .await
            .0,
        403
    );

    let res = send(app.delete(&format!("/api/v1/api-keys/{kiosk_id}"))).await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        send_error(
            app.request_as(Method::POST, "/api/v1/recognize", Some(&kiosk))
                .body(person_photo("biden.jpg"))
        )
        .await,
        (401, "unauthorized".into())
    );

    // Public endpoints.
    assert_eq!(send(app.public_get("/healthz")).await.status(), 200);
    let ready: Value = send_json(app.public_get("/readyz")).await;
    assert_eq!(ready["database"], "ok");
    assert_eq!(
        (&ready["device"], &ready["max_batch"]),
        (&Value::from("cpu"), &Value::from(8)),
        "the tests' CPU pipeline batches 8 images by default: {ready}"
    );
    assert_eq!(
        (&ready["status"], &ready["cache"], &ready["redis"]),
        (
            &Value::from("ready"),
            &Value::from("local"),
            &Value::from("disabled")
        )
    );
    let metrics = send(app.public_get("/metrics")).await.text().await.unwrap();
    for m in [
        "rollcall_http_requests_total",
        "rollcall_stage_duration_seconds",
        "rollcall_batch_size",
        "rollcall_queue_depth",
        "rollcall_index_faces",
        "rollcall_result_cache_total",
        "rollcall_redis_up",
    ] {
        assert!(metrics.contains(m), "{m} missing from /metrics");
    }
    let spec: Value = send_json(app.public_get("/api/v1/openapi.json")).await;
    for path in [
        "/api/v1/users",
        "/api/v1/users/{id}",
        "/api/v1/users/{id}/faces",
        "/api/v1/recognize",
        "/api/v1/attendance",
        "/api/v1/attendance/export",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert_eq!(send_error(app.get("/nope")).await.0, 404);
}

async fn deleting_a_user_erases_biometrics(db: Db) {
    let app = spawn(db).await;
    let user = app.create_user("Barack Obama", "Office").await;
    assert_eq!(
        app.enroll(
            user,
            &[person_photo("obama.jpg"), person_photo("obama3.jpg")]
        )
        .await
        .status(),
        201
    );
    assert_eq!(app.stored_photos(), 2);
    let other = app.create_user("Someone Else", "Office").await;
    let dup = app.enroll(other, &[person_photo("obama2.jpg")]).await;
    assert_eq!(
        error_of(dup).await,
        (409, "conflict".into()),
        "a duplicate of another user's face is reported"
    );

    let seen: Value = app.recognize_json(person_photo("obama2.jpg"), "c").await;
    assert_eq!(seen["faces"][0]["user"]["id"], user);
    let res = send(app.delete(&format!("/api/v1/users/{user}"))).await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.stored_photos(), 0);
    assert_eq!(
        send(app.get(&format!("/api/v1/users/{user}")))
            .await
            .status(),
        404
    );
    let seen: Value = app.recognize_json(person_photo("obama2.jpg"), "c").await;
    assert_eq!(seen["faces"][0]["user"], Value::Null, "{seen}");
    let log: Value = send_json(app.get(&format!("/api/v1/attendance?user_id={user}"))).await;
    assert!(log["items"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let app = spawn_with(Db::Sqlite, |s| {
        s.queue_capacity = 1;
        s.max_batch = Some(1);
        s.max_wait_ms = 0;
    })
    .await;
    let photo = group_photo("sample1.jpg");
    let requests = (0..12).map(|_| app.recognize(photo.clone(), "load"));
    let responses = futures_util::future::join_all(requests).await;
    let busy: Vec<_> = responses.iter().filter(|r| r.status() == 503).collect();
    assert!(
        !busy.is_empty(),
        "12 concurrent frames against a queue of 1 must overflow"
    );
    assert!(busy
        .iter()
        .all(|r| r.headers().get("retry-after").is_some()));
    assert!(responses.iter().any(|r| r.status() == 200));
}
