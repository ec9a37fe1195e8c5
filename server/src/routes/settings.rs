//! Runtime settings (admin scope).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::app::AppState;
use crate::auth::{authorize, Scope};
use crate::error::ApiError;
use crate::settings::RuntimeSettings;

/// `GET /settings`: the settings in force.
pub async fn get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.store, Scope::Admin).await?;
    let current = RuntimeSettings::load(&state.store, &state.settings).await?;
    Ok(HttpResponse::Ok().json(current))
}

/// `PUT /settings`: replaces every setting (`null` work hours clear them).
pub async fn put(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<RuntimeSettings>,
) -> Result<HttpResponse, ApiError> {
    let admin = authorize(&req, &state.store, Scope::Admin).await?;
    let new = body.into_inner().validated()?;
    new.save(&state.store).await?;
    state
        .store
        .audit(
            &admin.actor(),
            "settings.update",
            None,
            json!({ "match_threshold": new.match_threshold, "dedupe_window_secs": new.dedupe_window_secs }),
        )
        .await?;
    Ok(HttpResponse::Ok().json(new))
}
