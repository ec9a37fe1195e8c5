//! `POST /recognize`: every face of a frame identified or unknown, attendance marked.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{authorize, Scope};
use crate::error::ApiError;
use crate::queue::QueueError;
use crate::settings::RuntimeSettings;
use crate::store::Sighting;
use crate::upload::{decode, read_upload};

/// Seconds a client should wait after a 503 from a full queue.
const RETRY_AFTER_SECS: u64 = 1;

/// Query of `POST /recognize` (the same names also work as multipart fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecognizeQuery {
    camera_id: Option<String>,
    source: Option<String>,
}

/// Maps queue failures to API errors: a full queue is a 503 with `Retry-After`.
pub fn queue_error(err: QueueError) -> ApiError {
    match err {
        QueueError::Full => ApiError::Overloaded(RETRY_AFTER_SECS),
        other => ApiError::internal(other),
    }
}

fn label(value: Option<&str>, field: &str) -> Result<Option<String>, ApiError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v)
            if v.len() > 100
                || !v
                    .chars()
                    .all(|c| c.is_alphanumeric() || "-_.: ".contains(c)) =>
        {
            Err(ApiError::BadRequest(format!(
                "`{field}` may hold up to 100 letters, digits, spaces and - _ . :"
            )))
        }
        other => Ok(other.map(str::to_owned)),
    }
}

/// `POST /recognize`: multipart field `image` or a raw image body; `camera_id` and `source`
/// (`api` by default, e.g. `live` from the webcam page) as query or form fields.
pub async fn recognize(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<RecognizeQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    authorize(&req, &state.store, Scope::Recognize).await?;
    let runtime = RuntimeSettings::load(&state.store, &state.settings).await?;
    let upload = read_upload(&req, payload, state.settings.max_upload_bytes).await?;
    let camera_id = label(
        query.camera_id.as_deref().or(upload.field("camera_id")),
        "camera_id",
    )?;
    let source = label(query.source.as_deref().or(upload.field("source")), "source")?
        .unwrap_or_else(|| "api".into());
    let bytes = upload
        .files
        .into_iter()
        .find(|(n, _)| n == "image" || n == "raw")
        .map(|(_, b)| b)
        .ok_or_else(|| {
            ApiError::BadRequest("send the image as the body or in multipart field `image`".into())
        })?;

    let t = Instant::now();
    let image = decode(bytes, state.settings.max_pixels).await?;
    let decode_ms = t.elapsed().as_secs_f64() * 1e3;
    state.metrics.stage("decode", decode_ms / 1e3);

    let t = Instant::now();
    let faces = state.queue.submit(image).await.map_err(queue_error)?;
    let inference_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let now = Utc::now();
    let mut out: Vec<Value> = Vec::with_capacity(faces.len());
    for face in &faces {
        let hit = face
            .quality
            .acceptable
            .then(|| state.index.search(&face.embedding, 1).into_iter().next())
            .flatten();
        let similarity = hit.map(|h| h.similarity);
        let matched = hit.filter(|h| h.similarity >= runtime.match_threshold);
        let outcome = match (face.quality.acceptable, matched) {
            (false, _) => "low_quality",
            (true, Some(_)) => "known",
            (true, None) => "unknown",
        };
        state.metrics.faces.with_label_values(&[outcome]).inc();
        let (user, attendance) = match matched {
            Some(h) => {
                let user = state.store.get_user(h.user_id).await?;
                let marked = state
                    .store
                    .record_sighting(
                        &Sighting {
                            user_id: user.id,
                            at: now,
                            camera_id: camera_id.clone(),
                            similarity: h.similarity,
                            bbox: face.detection.bbox,
                            source: source.clone(),
                        },
                        runtime.dedupe_window(),
                    )
                    .await?;
                (json!(user), json!(marked))
            }
            None => (Value::Null, json!({ "recorded": false, "id": null })),
        };
        out.push(json!({
            "box": face.detection.bbox,
            "score": face.detection.score,
            "quality": face.quality,
            "user": user,
            "similarity": similarity,
            "attendance": attendance,
        }));
    }
    let match_ms = t.elapsed().as_secs_f64() * 1e3;
    state.metrics.stage("match", match_ms / 1e3);
    Ok(HttpResponse::Ok().json(json!({
        "faces": out,
        "timings_ms": {
            "decode": decode_ms,
            "inference": inference_ms,
            "match_and_store": match_ms,
            "total": started.elapsed().as_secs_f64() * 1e3,
        },
    })))
}
