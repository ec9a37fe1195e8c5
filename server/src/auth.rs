//! API-key authentication: keys are random secrets shown once and stored only as SHA-256
//! hashes; each route requires a scope.

use std::fmt;
use std::str::FromStr;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::ApiError;
use crate::session::{tokens_match, CSRF_HEADER};
use crate::store::{ApiKey, Store, StoreResult};

/// What a key may do. `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything, including users and keys.
    Admin,
    /// Create users and enrol faces.
    Enroll,
    /// Submit frames for recognition (a kiosk or camera).
    Recognize,
    /// Read attendance and reports.
    Read,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::Enroll, Scope::Recognize, Scope::Read];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Enroll => "enroll",
            Scope::Recognize => "recognize",
            Scope::Read => "read",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s.trim())
            .ok_or_else(|| {
                format!("unknown scope `{s}` (expected admin, enroll, recognize or read)")
            })
    }
}

/// Parses a comma-separated scope list.
pub fn parse_scopes(list: &str) -> Result<Vec<Scope>, String> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Scope::from_str)
        .collect()
}

/// SHA-256 of a key, hex-encoded: what the database stores.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key: `rc_` and 40 alphanumerics (~238 bits).
pub fn generate_key() -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("rc_{body}")
}

/// Creates a key with `scopes`, returning the stored record and the secret (shown once).
pub async fn create_key(
    store: &Store,
    name: &str,
    scopes: &[Scope],
) -> StoreResult<(ApiKey, String)> {
    let secret = generate_key();
    let record = store
        .create_api_key(name, &secret[..8], &hash_key(&secret), scopes)
        .await?;
    Ok((record, secret))
}

/// Stores an operator-chosen key (e.g. from `ROLLCALL_ADMIN_KEY`) unless it already exists.
pub async fn ensure_key(
    store: &Store,
    name: &str,
    secret: &str,
    scopes: &[Scope],
) -> StoreResult<()> {
    if store.authenticate(&hash_key(secret)).await?.is_none() {
        let prefix: String = secret.chars().take(8).collect();
        store
            .create_api_key(name, &prefix, &hash_key(secret), scopes)
            .await?;
    }
    Ok(())
}

fn presented_key(req: &HttpRequest) -> Option<&str> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(str::trim);
    }
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Who made an authorised request: an API key, or an administrator signed in to the dashboard.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An API key.
    Key(ApiKey),
    /// A dashboard session (administrators hold every scope).
    Admin(String),
}

impl Principal {
    /// How this principal appears in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Self::Key(key) => key.actor(),
            Self::Admin(username) => format!("admin:{username}"),
        }
    }
}

/// Authenticates the request and checks `scope`. An API key (`Authorization: Bearer` or
/// `X-API-Key`) is checked first; without one, a signed dashboard session counts as admin,
/// and requests that change something must also carry its CSRF token in `X-CSRF-Token`.
/// 401 without valid credentials, 403 when the key lacks the scope or the CSRF token is wrong.
pub async fn authorize(
    req: &HttpRequest,
    store: &Store,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let Some(key) = presented_key(req).filter(|k| !k.is_empty()) else {
        return authorize_session(req);
    };
    let record = store
        .authenticate(&hash_key(key))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the API key is invalid or revoked".into()))?;
    if record.scopes.contains(&Scope::Admin) || record.scopes.contains(&scope) {
        Ok(Principal::Key(record))
    } else {
        Err(ApiError::Forbidden(scope.as_str()))
    }
}

fn authorize_session(req: &HttpRequest) -> Result<Principal, ApiError> {
    let session = req
        .app_data::<web::Data<AppState>>()
        .and_then(|state| state.sessions.session(req))
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "an API key is required (Authorization: Bearer KEY or X-API-Key), or sign in to the dashboard"
                    .into(),
            )
        })?;
    if !req.method().is_safe() {
        let token = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !tokens_match(token, &session.csrf) {
            return Err(ApiError::CsrfRejected);
        }
    }
    Ok(Principal::Admin(session.username))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_reject_unknown() {
        assert_eq!(
            parse_scopes("admin, read").unwrap(),
            vec![Scope::Admin, Scope::Read]
        );
        assert!(parse_scopes("admin,root").unwrap_err().contains("root"));
    }

    #[test]
    fn keys_are_random_and_hashed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_key(&a).len(), 64);
        assert_ne!(hash_key(&a), hash_key(&b));
    }
}
