//! `POST /recognize`: every face of a frame identified or unknown, attendance marked.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use rollcall_models::pipeline::Face;

use crate::app::AppState;
use crate::auth::{authorize, Scope};
use crate::cache::{CachedResult, ResultKey};
use crate::dedupe;
use crate::error::ApiError;
use crate::index::FaceIndex;
use crate::phash::face_hash;
use crate::queue::QueueError;
use crate::settings::RuntimeSettings;
use crate::store::{Sighting, StoreError, User};
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

/// Who a face is, if anyone.
#[derive(Default)]
struct Identified {
    /// The matched, active user.
    user: Option<User>,
    /// Similarity of the best face, matched or not.
    similarity: Option<f32>,
}

/// The active user `id`, or `None` when they were deleted or deactivated (an index or cache
/// entry not yet updated).
async fn active_user(state: &AppState, id: i64) -> Result<Option<User>, ApiError> {
    match state.store.get_user(id).await {
        Ok(u) if u.active => Ok(Some(u)),
        Ok(_) | Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Identifies an acceptable face: a recent result for the same face (perceptual hash) when
/// there is one, else the index at `threshold`. Only matches are cached, and a cached match
/// is used only while its user is still active.
async fn identify(
    state: &AppState,
    face: &Face,
    key: Option<ResultKey>,
    threshold: f32,
) -> Result<Identified, ApiError> {
    if let Some(key) = key {
        let cached = state.cache.recent_result(key).await;
        let outcome = if cached.is_some() { "hit" } else { "miss" };
        state
            .metrics
            .result_cache
            .with_label_values(&[outcome])
            .inc();
        if let Some(c) = cached {
            if let Some(user) = active_user(state, c.user_id).await? {
                return Ok(Identified {
                    user: Some(user),
                    similarity: Some(c.similarity),
                });
            }
        }
    }
    let Some(hit) = state.index.search(&face.embedding, 1).into_iter().next() else {
        return Ok(Identified::default());
    };
    let user = if hit.similarity >= threshold {
        active_user(state, hit.user_id).await?
    } else {
        None
    };
    if let (Some(key), Some(_)) = (key, &user) {
        let ttl = std::time::Duration::from_secs(state.settings.result_cache_secs);
        let result = CachedResult {
            user_id: hit.user_id,
            face_id: hit.face_id,
            similarity: hit.similarity,
        };
        state.cache.remember_result(key, result, ttl).await;
    }
    Ok(Identified {
        user,
        similarity: Some(hit.similarity),
    })
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
    // The frame stays here for the faces' perceptual hashes (a copy of a camera frame costs
    // far less than the inference it might save a replica).
    let frame = (state.settings.result_cache_secs > 0).then(|| image.clone());
    let faces = state.queue.submit(image).await.map_err(queue_error)?;
    let inference_ms = t.elapsed().as_secs_f64() * 1e3;

    let t = Instant::now();
    let now = Utc::now();
    let mut out: Vec<Value> = Vec::with_capacity(faces.len());
    for face in &faces {
        let key = frame.as_ref().map(|f| ResultKey {
            hash: face_hash(f, face.detection.bbox),
            threshold_bits: runtime.match_threshold.to_bits(),
        });
        let identified = if face.quality.acceptable {
            identify(&state, face, key, runtime.match_threshold).await?
        } else {
            Identified::default()
        };
        let outcome = match (face.quality.acceptable, &identified.user) {
            (false, _) => "low_quality",
            (true, Some(_)) => "known",
            (true, None) => "unknown",
        };
        state.metrics.faces.with_label_values(&[outcome]).inc();
        let (user, attendance) = match identified.user {
            Some(user) => {
                let marked = dedupe::mark(
                    &state.store,
                    &*state.cache,
                    &Sighting {
                        user_id: user.id,
                        at: now,
                        camera_id: camera_id.clone(),
                        similarity: identified.similarity.unwrap_or_default(),
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
            "similarity": identified.similarity,
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
