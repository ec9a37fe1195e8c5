//! The web dashboard: askama templates from the top-level `templates/` folder, one stylesheet
//! and one script from `static/`, all served by this server (nothing from other hosts). Pages
//! read through the [`Store`](crate::store::Store); everything that changes data goes through
//! the JSON API, which accepts the signed-in session with its CSRF token.

mod charts;
mod login;
mod pages;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use askama::Template;

use crate::app::AppState;
use crate::error::ApiError;
use crate::session::Session;

/// The stylesheet.
const CSS: &str = include_str!("../../../static/dashboard.css");
/// The script.
const JS: &str = include_str!("../../../static/dashboard.js");
/// Same-origin only: no inline script, no other hosts; the camera stream and snapshots are blobs.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; \
                   style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                   form-action 'self'; base-uri 'none'";

/// Registers the dashboard's pages.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/login", web::get().to(login::form))
        .route("/login", web::post().to(login::submit))
        .route("/logout", web::post().to(login::logout))
        .route("/", web::get().to(pages::overview))
        .route("/people", web::get().to(pages::people))
        .route("/people/{id}", web::get().to(pages::person))
        .route("/enrol", web::get().to(pages::enrol))
        .route("/live", web::get().to(pages::live))
        .route("/kiosk", web::get().to(pages::kiosk))
        .route("/attendance", web::get().to(pages::attendance))
        .route("/keys", web::get().to(pages::keys))
        .route("/settings", web::get().to(pages::settings))
        .route(
            "/static/dashboard.css",
            web::get().to(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/static/dashboard.js",
            web::get().to(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        );
}

fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Nobody is signed in; carries the page to return to.
    #[error("sign in to see this page")]
    SignIn(String),
    /// The same failures the API reports.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A template failed to render.
    #[error("rendering the page: {0}")]
    Render(#[from] askama::Error),
}

impl From<crate::store::StoreError> for PageError {
    fn from(err: crate::store::StoreError) -> Self {
        Self::Api(err.into())
    }
}

/// The error page.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignIn(_) => StatusCode::SEE_OTHER,
            Self::Api(e) => e.status_code(),
            Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::SignIn(next) = self {
            let target = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("next", next)
                .finish();
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, format!("/login?{target}")))
                .finish();
        }
        let status = self.status_code();
        let message = match self {
            Self::Api(e) => e.to_string(),
            other => {
                tracing::error!(error = %other, "dashboard page failed");
                "something went wrong on the server".into()
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            message: &message,
        };
        match page.render() {
            Ok(body) => secured(HttpResponse::build(status)).body(body),
            Err(_) => HttpResponse::build(status).body(message),
        }
    }
}

/// What every signed-in page's layout shows.
pub struct Layout {
    /// Who is signed in.
    pub username: String,
    /// The session's CSRF token, for forms and script calls.
    pub csrf: String,
    /// Which navigation entry is current.
    pub active: &'static str,
}

impl Layout {
    fn new(session: Session, active: &'static str) -> Self {
        Self {
            username: session.username,
            csrf: session.csrf,
            active,
        }
    }
}

/// The signed-in session, or a redirect to the sign-in page that returns here.
fn signed_in(req: &HttpRequest, state: &AppState) -> Result<Session, PageError> {
    state
        .sessions
        .session(req)
        .ok_or_else(|| PageError::SignIn(req.uri().to_string()))
}

/// Adds the dashboard's security headers.
fn secured(mut res: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    res.insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/html; charset=utf-8");
    res
}

/// A rendered page with status 200.
fn page(template: &impl Template) -> Result<HttpResponse, PageError> {
    Ok(secured(HttpResponse::Ok()).body(template.render()?))
}
