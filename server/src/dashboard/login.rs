//! Signing in and out.

use std::sync::LazyLock;

use actix_web::cookie::time::Duration as CookieDuration;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use serde::Deserialize;
use serde_json::json;

use super::{secured, PageError};
use crate::app::AppState;
use crate::error::ApiError;
use crate::session::{
    cookie, hash_password, random_token, tokens_match, verify_password, LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
};

/// A hash checked when the username is unknown, so both failures take as long.
static UNKNOWN_USER_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("no such administrator").unwrap_or_default());

/// The sign-in page.
#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    next: &'a str,
    username: &'a str,
    error: Option<&'a str>,
}

/// Query of `GET /login`.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// Fields of the sign-in form (all optional so a tampered form gets a readable refusal).
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

/// Fields of the sign-out form.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// Only same-site paths are followed after signing in.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

/// The sign-in form with a fresh CSRF token (also set as a cookie: the form must echo it).
fn login_page(
    req: &HttpRequest,
    status: StatusCode,
    next: &str,
    username: &str,
    error: Option<&str>,
) -> Result<HttpResponse, PageError> {
    let token = random_token();
    let body = LoginPage {
        csrf: &token,
        next: safe_next(next),
        username,
        error,
    }
    .render()?;
    Ok(secured(HttpResponse::build(status))
        .cookie(cookie(
            req,
            LOGIN_CSRF_COOKIE,
            token,
            CookieDuration::hours(1),
        ))
        .body(body))
}

fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_owned()))
        .finish()
}

/// `GET /login`.
pub async fn form(
    req: HttpRequest,
    state: web::Data<AppState>,
    q: web::Query<LoginQuery>,
) -> Result<HttpResponse, PageError> {
    if state.sessions.session(&req).is_some() {
        return Ok(redirect(safe_next(&q.next)));
    }
    login_page(&req, StatusCode::OK, &q.next, "", None)
}

/// `POST /login`: 403 without the form's CSRF token, 401 with a wrong name or password.
pub async fn submit(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, PageError> {
    let form = form.into_inner();
    let expected = req
        .cookie(LOGIN_CSRF_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if expected.is_empty() || !tokens_match(&form.csrf, &expected) {
        return Err(ApiError::CsrfRejected.into());
    }
    let username = form.username.trim().to_owned();
    let stored = state.store.admin_password_hash(&username).await?;
    let known = stored.is_some();
    let hash = stored.unwrap_or_else(|| UNKNOWN_USER_HASH.clone());
    let password = form.password;
    let valid = web::block(move || verify_password(&password, &hash))
        .await
        .map_err(ApiError::internal)?;
    if !(known && valid) {
        tracing::warn!(username, "dashboard sign-in refused");
        return login_page(
            &req,
            StatusCode::UNAUTHORIZED,
            &form.next,
            &username,
            Some("Wrong username or password."),
        );
    }
    let (_, session_cookie) = state.sessions.issue(&req, &username);
    state
        .store
        .audit(
            &format!("admin:{username}"),
            "admin.sign_in",
            None,
            json!({}),
        )
        .await?;
    let mut spent = cookie(&req, LOGIN_CSRF_COOKIE, String::new(), CookieDuration::ZERO);
    spent.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, safe_next(&form.next).to_owned()))
        .cookie(session_cookie)
        .cookie(spent)
        .finish())
}

/// `POST /logout`: ends the session (403 without its CSRF token).
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LogoutForm>,
) -> Result<HttpResponse, PageError> {
    let session = super::signed_in(&req, &state)?;
    if !tokens_match(&form.csrf, &session.csrf) {
        return Err(ApiError::CsrfRejected.into());
    }
    let mut gone = cookie(&req, SESSION_COOKIE, String::new(), CookieDuration::ZERO);
    gone.make_removal();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/login"))
        .cookie(gone)
        .finish())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(safe_next("/people?x=1"), "/people?x=1");
        for bad in ["https://evil.example", "//evil.example", "/\\evil", ""] {
            assert_eq!(safe_next(bad), "/");
        }
    }
}
