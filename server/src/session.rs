//! Dashboard sign-in: argon2 password hashes, and sessions in an HMAC-signed, HttpOnly,
//! SameSite=Strict cookie that carries the administrator's name, expiry and CSRF token.

use std::fmt;

use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::HttpRequest;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreResult};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "rollcall_session";
/// Name of the cookie holding the sign-in form's CSRF token.
pub const LOGIN_CSRF_COOKIE: &str = "rollcall_login_csrf";
/// Header carrying the session's CSRF token on API calls that change something.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The settings row holding the generated signing key, shared by every replica.
const SESSION_KEY_SETTING: &str = "session_key";
/// How long a sign-in lasts.
const LIFETIME_HOURS: i64 = 12;

/// Why a password cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Too short or absurdly long.
    #[error("the password must be 8 to 1024 characters long")]
    Length,
    /// The hasher failed.
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// An argon2id hash (PHC string) of `password`.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if !(8..=1024).contains(&password.chars().count()) {
        return Err(PasswordError::Length);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random token of 32 alphanumerics (~190 bits).
pub fn random_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Compares two secrets in time independent of where they differ.
pub fn tokens_match(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A signed-in administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who signed in.
    pub username: String,
    /// The token every state-changing request of this session must carry.
    pub csrf: String,
    /// Expiry, UTC milliseconds.
    pub expires_at: i64,
}

/// The key that signs session cookies.
#[derive(Clone)]
pub struct SessionKeys {
    key: Vec<u8>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// The configured key (`ROLLCALL_SESSION_KEY`), or one generated once and kept in the
    /// database so that every replica signs and accepts the same cookies.
    pub async fn load(store: &Store, configured: Option<&str>) -> StoreResult<Self> {
        let secret = match configured.filter(|k| !k.is_empty()) {
            Some(k) => k.to_owned(),
            None => {
                let fresh = hex::encode(rand::thread_rng().gen::<[u8; 32]>());
                store.setting_or_insert(SESSION_KEY_SETTING, &fresh).await?
            }
        };
        Ok(Self {
            key: Sha256::digest(secret.as_bytes()).to_vec(),
        })
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// `value` with its signature appended.
    pub fn seal(&self, value: &str) -> String {
        let mut mac = self.mac();
        mac.update(value.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(value),
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The value of a token made by [`SessionKeys::seal`], if its signature is valid.
    pub fn open(&self, token: &str) -> Option<String> {
        let (value, sig) = token.split_once('.')?;
        let value = String::from_utf8(URL_SAFE_NO_PAD.decode(value).ok()?).ok()?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = self.mac();
        mac.update(value.as_bytes());
        mac.verify_slice(&sig).ok()?;
        Some(value)
    }

    /// A new session for `username` and its cookie.
    pub fn issue(&self, req: &HttpRequest, username: &str) -> (Session, Cookie<'static>) {
        let session = Session {
            username: username.to_owned(),
            csrf: random_token(),
            expires_at: Utc::now().timestamp_millis() + LIFETIME_HOURS * 3_600_000,
        };
        let value = self.seal(&format!(
            "{}\n{}\n{}",
            session.expires_at, session.csrf, session.username
        ));
        let cookie = cookie(
            req,
            SESSION_COOKIE,
            value,
            CookieDuration::hours(LIFETIME_HOURS),
        );
        (session, cookie)
    }

    /// The unexpired session whose signed cookie `req` carries.
    pub fn session(&self, req: &HttpRequest) -> Option<Session> {
        let value = self.open(req.cookie(SESSION_COOKIE)?.value())?;
        let mut parts = value.splitn(3, '\n');
        let expires_at: i64 = parts.next()?.parse().ok()?;
        let csrf = parts.next()?.to_owned();
        let username = parts.next()?.to_owned();
        (expires_at > Utc::now().timestamp_millis()).then_some(Session {
            username,
            csrf,
            expires_at,
        })
    }
}

/// An HttpOnly, SameSite=Strict cookie for the whole site, `Secure` when served over HTTPS.
pub fn cookie(
    req: &HttpRequest,
    name: &'static str,
    value: String,
    max_age: CookieDuration,
) -> Cookie<'static> {
    Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(req.connection_info().scheme() == "https")
        .max_age(max_age)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(matches!(hash_password("short"), Err(PasswordError::Length)));
    }

    #[test]
    fn sealed_values_reject_tampering() {
        let keys = SessionKeys { key: b"k".to_vec() };
        let token = keys.seal("123\ncsrf\nadmin");
        assert_eq!(keys.open(&token).as_deref(), Some("123\ncsrf\nadmin"));
        let (_, sig) = token.split_once('.').unwrap();
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode("999\ncsrf\nroot"));
        assert_eq!(keys.open(&forged), None);
        let other = SessionKeys {
            key: b"other".to_vec(),
        };
        assert_eq!(other.open(&token), None);
        assert!(tokens_match("abc", "abc") && !tokens_match("abc", "abd"));
    }
}
