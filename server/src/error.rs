//! The API's error type: every failure becomes `{"error": {"code", "message"}}` with the right status.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, wrong or revoked API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The key lacks the scope the route needs.
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    /// A signed-in request that changes something lacks the session's CSRF token.
    #[error("the request lacks a valid CSRF token; reload the page and try again")]
    CsrfRejected,
    /// The addressed resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Malformed request: bad JSON, unknown fields, bad parameters.
    #[error("{0}")]
    BadRequest(String),
    /// The body exceeds the upload limit.
    #[error("the upload exceeds the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The upload is not a JPEG, PNG or WebP image.
    #[error("unsupported media type: only JPEG, PNG and WebP images are accepted")]
    UnsupportedMediaType,
    /// The request is well-formed but cannot be processed (corrupt image, no face…).
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable reason.
        code: &'static str,
        /// Human-readable reason.
        message: String,
    },
    /// A unique value is already taken.
    #[error("{0}")]
    Conflict(String),
    /// The recognition queue is full; retry after the given seconds.
    #[error("the server is busy; retry in {0} s")]
    Overloaded(u64),
    /// An unexpected failure (details are logged, not returned).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable machine-readable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::CsrfRejected => "csrf_rejected",
            Self::NotFound(_) => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unprocessable { code, .. } => code,
            Self::Conflict(_) => "conflict",
            Self::Overloaded(_) => "overloaded",
            Self::Internal(_) => "internal",
        }
    }

    /// Wraps an unexpected error, logging it.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::Internal(err.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::CsrfRejected => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            Self::Overloaded(secs) => {
                res.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            Self::Unauthorized(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        res.json(json!({ "error": { "code": self.code(), "message": self.to_string() } }))
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::Conflict(what),
            other => Self::internal(other),
        }
    }
}

impl From<rollcall_models::ModelError> for ApiError {
    fn from(err: rollcall_models::ModelError) -> Self {
        use rollcall_models::ModelError;
        match err {
            ModelError::UnsupportedFormat => Self::UnsupportedMediaType,
            ModelError::TooManyPixels { .. } => Self::Unprocessable {
                code: "image_too_large",
                message: err.to_string(),
            },
            ModelError::Decode(_) => Self::Unprocessable {
                code: "corrupt_image",
                message: err.to_string(),
            },
            other => Self::internal(other),
        }
    }
}

/// JSON extractor errors (malformed JSON, unknown fields, wrong types) as 400s.
pub fn json_error(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    match err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => ApiError::PayloadTooLarge(limit).into(),
        other => ApiError::BadRequest(format!("invalid JSON body: {other}")).into(),
    }
}

/// Query-string extractor errors as 400s.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::BadRequest(format!("invalid query parameters: {err}")).into()
}

/// Path extractor errors (e.g. a non-numeric id) as 404s.
pub fn path_error(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::NotFound(format!("no such resource: {err}")).into()
}
