//! API key management (admin scope).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::auth::{authorize, create_key, Scope};
use crate::error::ApiError;

/// Body of `POST /api-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
    scopes: Vec<Scope>,
}

/// `GET /api-keys`: every key without its secret.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.store, Scope::Admin).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "items": state.store.list_api_keys().await?, "next_page": null })))
}

/// `POST /api-keys`: the secret is in this response only.
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let admin = authorize(&req, &state.store, Scope::Admin).await?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 || body.scopes.is_empty() {
        return Err(ApiError::BadRequest(
            "a key needs a name (1-100 characters) and at least one scope".into(),
        ));
    }
    let (record, secret) = create_key(&state.store, name, &body.scopes).await?;
    state
        .store
        .audit(
            &admin.actor(),
            "api_key.create",
            Some(record.id.to_string()),
            json!({ "scopes": record.scopes }),
        )
        .await?;
    Ok(HttpResponse::Created().json(json!({ "key": secret, "api_key": record })))
}

/// `DELETE /api-keys/{id}`.
pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let admin = authorize(&req, &state.store, Scope::Admin).await?;
    state.store.revoke_api_key(*id).await?;
    state
        .store
        .audit(
            &admin.actor(),
            "api_key.revoke",
            Some(id.to_string()),
            json!({}),
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
