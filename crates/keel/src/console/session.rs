//! Signing in to the console: the session cookie, its renewal, CSRF, and the guard every
//! console page sits behind.
//!
//! The console is a backend for its own frontend: the browser holds one HttpOnly,
//! SameSite=Strict cookie (Secure outside development) with the account's access token,
//! refresh token and the session's CSRF token; no token is ever readable by a script.
//! When the access token expires the guard spends the refresh token through
//! `POST /auth/refresh` and sets the renewed cookie on the answer. Every state-changing
//! request must carry the CSRF token (a form field or the `x-csrf-token` header) and must
//! not come from another site.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{FromRequestParts, Request, State},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{auth::Principal, http::ratelimit::ClientIp};

use super::{ConsoleState, api::Caller, error::ConsoleError};

/// The cookie's name in development (plain HTTP on a developer's machine).
const COOKIE: &str = "keel_console";
/// The cookie's name over HTTPS: the `__Secure-` prefix makes browsers refuse it unless it
/// is Secure and was set over HTTPS.
const SECURE_COOKIE: &str = "__Secure-keel_console";
/// The cookie that carries the sign-in form's CSRF token before there is a session.
const LOGIN_COOKIE: &str = "keel_console_login";
/// Where the cookies are sent.
const PATH: &str = "/admin";
/// The largest form the guard reads to find the CSRF token.
const MAX_FORM: usize = 64 * 1024;
/// How long a renewed session is remembered, so that requests racing with the renewal
/// (several tabs, a page and its script) get the same session instead of spending the
/// refresh token twice, which the API would take for a stolen token.
const RENEWAL_REMEMBERED: Duration = Duration::from_secs(60);

/// What the session cookie holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The access token sent to the API.
    #[serde(rename = "a")]
    pub access: String,
    /// The refresh token that renews it.
    #[serde(rename = "r")]
    pub refresh: String,
    /// The token forms must send back.
    #[serde(rename = "c")]
    pub csrf: String,
}

impl Session {
    /// A session for a fresh token pair, with a new CSRF token.
    pub fn new(pair: PairReply) -> Result<Self, ConsoleError> {
        Ok(Self {
            access: pair.access_token,
            refresh: pair.refresh_token,
            csrf: random_token()?,
        })
    }

    fn encode(&self) -> Result<String, ConsoleError> {
        let json = serde_json::to_vec(self).map_err(|e| ConsoleError::Internal(e.into()))?;
        Ok(URL_SAFE_NO_PAD.encode(json))
    }

    fn decode(raw: &str) -> Option<Self> {
        let json = URL_SAFE_NO_PAD.decode(raw).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// 256 random bits, base64url: made as refresh tokens are.
pub fn random_token() -> Result<String, ConsoleError> {
    crate::auth::sessions::new_token().map_err(|e| ConsoleError::Internal(e.into()))
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// How the console's cookies are set.
#[derive(Debug, Clone, Copy)]
pub struct CookiePolicy {
    /// Secure, with the `__Secure-` name (everywhere but development).
    pub secure: bool,
    /// How long a session may last: the refresh token's lifetime.
    pub max_age: Duration,
}

impl CookiePolicy {
    fn name(self) -> &'static str {
        if self.secure { SECURE_COOKIE } else { COOKIE }
    }

    fn build(self, name: &'static str, value: String, max_age: Duration) -> HeaderValue {
        let cookie = Cookie::build((name, value))
            .path(PATH)
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Strict)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
            ))
            .build();
        HeaderValue::try_from(cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that stores `session`.
    pub fn set(self, session: &Session) -> Result<HeaderValue, ConsoleError> {
        Ok(self.build(self.name(), session.encode()?, self.max_age))
    }

    /// The `Set-Cookie` value that removes the session.
    pub fn clear(self) -> HeaderValue {
        self.build(self.name(), String::new(), Duration::ZERO)
    }

    /// The `Set-Cookie` value of the sign-in form's CSRF token.
    pub fn login(self, token: &str) -> HeaderValue {
        self.build(LOGIN_COOKIE, token.to_owned(), Duration::from_secs(3600))
    }

    /// The session in `headers`' cookies.
    pub fn session(self, headers: &HeaderMap) -> Option<Session> {
        cookie_value(headers, self.name()).and_then(|raw| Session::decode(&raw))
    }
}

/// The sign-in form's CSRF token in `headers`' cookies.
pub fn login_token(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, LOGIN_COOKIE)
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// The signed-in admin of a console request, put there by [`guard`].
#[derive(Debug, Clone)]
pub struct Signed {
    /// Their session.
    pub session: Session,
    /// What API calls made for them carry.
    pub caller: Caller,
}

impl<S: Send + Sync> FromRequestParts<S> for Signed {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ConsoleError> {
        parts
            .extensions
            .get::<Signed>()
            .cloned()
            .ok_or_else(|| ConsoleError::Internal(anyhow::anyhow!("console route without guard")))
    }
}

/// The caller of a request that is not signed in (the sign-in form).
pub fn anonymous(parts: &Parts) -> Caller {
    Caller {
        token: None,
        ip: client_ip(parts),
        request_id: parts
            .headers
            .get(crate::http::request_id::X_REQUEST_ID)
            .cloned(),
    }
}

fn client_ip(parts: &Parts) -> ClientIp {
    parts
        .extensions
        .get::<ClientIp>()
        .copied()
        .unwrap_or(ClientIp(ClientIp::peer(&parts.extensions)))
}

/// Lets a request through only for a signed-in admin: renews an expired access token,
/// checks CSRF on state-changing requests, and sends anyone else to the sign-in page with
/// the page they wanted.
pub async fn guard(State(state): State<ConsoleState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Some(session) = state.cookies.session(&parts.headers) else {
        return to_sign_in(&parts, None);
    };
    let (principal, session, renewed) = match state.auth.tokens.verify(&session.access) {
        Ok(principal) => (principal, session, false),
        Err(_) => match renew(&state, &parts, &session).await {
            Some((principal, session)) => (principal, session, true),
            None => return to_sign_in(&parts, Some(state.cookies.clear())),
        },
    };
    if !principal.is_admin() {
        // The role changed since sign-in (which also ends the sessions) or the cookie is
        // someone else's: either way, not a console session.
        return to_sign_in(&parts, Some(state.cookies.clear()));
    }
    let body = if is_safe(&parts.method) {
        body
    } else {
        match check_csrf(&parts, body, &session.csrf).await {
            Ok(body) => body,
            Err(error) => return error.into_response(),
        }
    };
    let caller = Caller {
        token: Some(session.access.clone()),
        ip: client_ip(&parts),
        request_id: parts
            .headers
            .get(crate::http::request_id::X_REQUEST_ID)
            .cloned(),
    };
    let set_cookie = if renewed {
        state.cookies.set(&session).ok()
    } else {
        None
    };
    parts.extensions.insert(Signed { session, caller });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a state-changing request from another site or without the session's CSRF
/// token; gives back the body it had to read.
pub async fn check_csrf(parts: &Parts, body: Body, expected: &str) -> Result<Body, ConsoleError> {
    if parts
        .headers
        .get("sec-fetch-site")
        .is_some_and(|site| site != "same-origin" && site != "none")
    {
        return Err(ConsoleError::Forbidden(
            "this form was sent from another site",
        ));
    }
    if let Some(token) = parts.headers.get("x-csrf-token") {
        let ok = token.to_str().is_ok_and(|t| same_secret(t, expected));
        return if ok {
            Ok(body)
        } else {
            Err(ConsoleError::Forbidden(
                "the form's security token is wrong; reload the page",
            ))
        };
    }
    let bytes = axum::body::to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| ConsoleError::Forbidden("the form is too large"))?;
    let token = form_urlencoded::parse(&bytes)
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.into_owned());
    match token {
        Some(token) if same_secret(&token, expected) => Ok(Body::from(bytes)),
        _ => Err(ConsoleError::Forbidden(
            "the form's security token is missing or out of date; reload the page and send it again",
        )),
    }
}

/// Spends the refresh token for a new pair, once per token however many requests race.
async fn renew(
    state: &ConsoleState,
    parts: &Parts,
    session: &Session,
) -> Option<(Principal, Session)> {
    let key = hex::encode(Sha256::digest(session.refresh.as_bytes()));
    let _one_at_a_time = state.renewals.lock.lock().await;
    let renewed = match state.renewals.done.get(&key) {
        Some(renewed) => renewed,
        None => {
            let caller = anonymous(parts);
            let reply = state
                .api
                .call(
                    &caller,
                    Method::POST,
                    "/auth/refresh",
                    Some(&serde_json::json!({ "refresh_token": session.refresh })),
                    &[],
                )
                .await
                .ok()?;
            if !reply.ok() {
                return None;
            }
            let pair: PairReply = reply.json().ok()?;
            let renewed = Session {
                access: pair.access_token,
                refresh: pair.refresh_token,
                csrf: session.csrf.clone(),
            };
            state.renewals.done.insert(key, renewed.clone());
            renewed
        }
    };
    let principal = state.auth.tokens.verify(&renewed.access).ok()?;
    Some((principal, renewed))
}

/// The token pair `/auth/login` and `/auth/refresh` answer.
#[derive(Debug, Deserialize)]
pub struct PairReply {
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
}

/// Renewals made in the last minute, and the lock that makes them one at a time.
#[derive(Debug, Clone)]
pub struct Renewals {
    lock: Arc<tokio::sync::Mutex<()>>,
    done: moka::sync::Cache<String, Session>,
}

impl Default for Renewals {
    fn default() -> Self {
        Self {
            lock: Arc::default(),
            done: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(RENEWAL_REMEMBERED)
                .build(),
        }
    }
}

/// Where a request that is not signed in goes: the sign-in page, which comes back to the
/// page asked for (for a form, the page it was sent from).
fn to_sign_in(parts: &Parts, clear: Option<HeaderValue>) -> Response {
    let wanted = if is_safe(&parts.method) {
        parts.uri.path_and_query().map(|pq| pq.as_str().to_owned())
    } else {
        parts
            .headers
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .and_then(|referer| url::Url::parse(referer).ok())
            .map(|url| match url.query() {
                Some(query) => format!("{}?{query}", url.path()),
                None => url.path().to_owned(),
            })
    };
    let next = wanted.filter(|path| safe_next(path));
    let location = match next {
        Some(next) => format!(
            "/admin/login?next={}",
            form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        ),
        None => "/admin/login".to_owned(),
    };
    // A script's request (the live-events page asking for a ticket) cannot follow a
    // redirect to a page: it gets 401 and sends the browser to sign in itself.
    let mut response = if parts.headers.contains_key("x-csrf-token") {
        (StatusCode::UNAUTHORIZED, [(header::LOCATION, location)]).into_response()
    } else {
        Redirect::to(&location).into_response()
    };
    if let Some(clear) = clear {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    response
}

/// Whether `path` is a console page to come back to after signing in (never another site).
pub fn safe_next(path: &str) -> bool {
    path.starts_with("/admin/")
        && !path.starts_with("/admin/login")
        && !path.contains("//")
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_pages_are_come_back_to() {
        assert!(safe_next("/admin/users?q=ada"));
        assert!(safe_next("/admin/"));
        for path in [
            "//evil.example/admin/",
            "/admin//evil.example",
            "https://evil.example/admin/",
            "/admin/\\evil.example",
            "/docs",
            "/admin/login?next=/admin/",
            "/admin/\nx",
        ] {
            assert!(!safe_next(path), "{path}");
        }
    }

    #[test]
    fn a_session_survives_its_cookie_and_a_tampered_cookie_is_no_session() {
        let policy = CookiePolicy {
            secure: true,
            max_age: Duration::from_secs(60),
        };
        let session = Session {
            access: "a.b.c".into(),
            refresh: "r".into(),
            csrf: "c".into(),
        };
        let set = policy.set(&session).unwrap();
        let set = set.to_str().unwrap();
        assert!(set.starts_with("__Secure-keel_console="));
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/admin",
            "Max-Age=60",
        ] {
            assert!(set.contains(attribute), "{set}");
        }
        let pair = set.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(pair).unwrap());
        let read = policy.session(&headers).unwrap();
        assert_eq!((read.access, read.csrf), ("a.b.c".into(), "c".into()));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("__Secure-keel_console=not-base64!"),
        );
        assert!(policy.session(&headers).is_none());
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
