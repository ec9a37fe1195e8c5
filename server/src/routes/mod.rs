//! HTTP routes under `/api/v1`, plus health, readiness and metrics.

pub mod attendance;
pub mod keys;
pub mod recognize;
pub mod settings;
pub mod system;
pub mod users;

use actix_web::web;

use crate::error::ApiError;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(system::healthz))
        .route("/readyz", web::get().to(system::readyz))
        .route("/metrics", web::get().to(system::metrics))
        .service(
            web::scope("/api/v1")
                .route("/openapi.json", web::get().to(system::openapi))
                .route("/users", web::post().to(users::create))
                .route("/users", web::get().to(users::list))
                .route("/users/{id}", web::get().to(users::get))
                .route("/users/{id}", web::patch().to(users::update))
                .route("/users/{id}", web::delete().to(users::delete))
                .route("/users/{id}/faces", web::post().to(users::enroll))
                .route("/faces/{id}/thumbnail", web::get().to(users::thumbnail))
                .route("/recognize", web::post().to(recognize::recognize))
                .route("/attendance", web::get().to(attendance::list))
                .route("/attendance/export", web::get().to(attendance::export))
                .route("/api-keys", web::get().to(keys::list))
                .route("/api-keys", web::post().to(keys::create))
                .route("/api-keys/{id}", web::delete().to(keys::revoke))
                .route("/settings", web::get().to(settings::get))
                .route("/settings", web::put().to(settings::put)),
        )
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::NotFound("no such route".into()))
        }));
}

/// Page parameters shared by list endpoints.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1-based page number.
    pub page: Option<i64>,
    /// Items per page (1..=500, default 50).
    pub per_page: Option<i64>,
}

impl PageQuery {
    /// Validated page request.
    pub fn page(page: Option<i64>, per_page: Option<i64>) -> Result<crate::store::Page, ApiError> {
        let number = page.unwrap_or(1);
        let size = per_page.unwrap_or(50);
        if number < 1 || !(1..=500).contains(&size) {
            return Err(ApiError::BadRequest(
                "page must be >= 1 and per_page within 1..=500".into(),
            ));
        }
        Ok(crate::store::Page { number, size })
    }
}
