//! Liveness, readiness, metrics and the OpenAPI document.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::app::AppState;
use crate::index::FaceIndex;

/// The OpenAPI 3 document of the API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// `GET /healthz`: the process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: models loaded (they are before the server listens) and on which device, the
/// database reachable, and the shared cache: `degraded` (still 200) while Redis is unreachable,
/// when requests are served from the database and memory.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = state.store.ping().await;
    let cache = state.cache.health().await;
    let status = match (database, cache.ok) {
        (false, _) => "unavailable",
        (true, false) => "degraded",
        (true, true) => "ready",
    };
    let body = json!({
        "status": status,
        "models": "loaded",
        "device": state.device,
        "max_batch": state.queue.config().max_batch,
        "database": if database { "ok" } else { "unreachable" },
        "cache": cache.backend,
        "redis": match (cache.backend, cache.ok) {
            ("redis", true) => "ok",
            ("redis", false) => "unreachable",
            _ => "disabled",
        },
        "index_faces": state.index.len(),
        "index_kind": state.index.kind(),
        "index_source": state.index_source.as_str(),
    });
    if database {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.index_size.set(state.index.len() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Middleware counting requests and their latency per route pattern.
pub async fn track_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        let status = res.status().as_u16().to_string();
        m.http_requests
            .with_label_values(&[&route, &method, &status])
            .inc();
        m.http_latency
            .with_label_values(&[&route])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}
