//! Signing people in and out of the web console, and the session every page takes.
//!
//! A session is a random secret in an HttpOnly, SameSite=Strict cookie (Secure when the site
//! is reached over HTTPS); the store keeps only its SHA-256 and its end, so that any replica
//! serves it and a sign-out ends it everywhere. Forms that change something carry a CSRF
//! token derived from the secret (a different digest of it), which a page of another site can
//! neither read nor compute. The sign-in form has its own token, a random value in a cookie
//! of its own that the form must repeat (a double submit), so that another site cannot sign
//! a browser in as someone else either.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use kiln_auth::{AuthContext, hash_token, mint_token};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use super::{page_response, problem};
use crate::ApiState;
use crate::auth::Caller;

/// The session cookie: the session's secret.
const SESSION_COOKIE: &str = "kiln_session";
/// The sign-in form's double-submit cookie.
const SIGN_IN_COOKIE: &str = "kiln_sign_in";
/// Under HTTPS the cookies take the `__Host-` prefix, with which a browser accepts them only
/// from this host, over HTTPS, for the whole site: a sibling subdomain or a plain-HTTP answer
/// cannot plant one (which would defeat the double submit, or fix a session).
const SECURE_SESSION_COOKIE: &str = "__Host-kiln_session";
const SECURE_SIGN_IN_COOKIE: &str = "__Host-kiln_sign_in";

/// How the console keeps sessions.
#[derive(Debug, Clone, Copy)]
pub struct WebSettings {
    /// How long a session lasts from sign-in, whatever is done in it.
    pub session_lifetime: std::time::Duration,
    /// Cookies marked `Secure`: the site is reached over HTTPS.
    pub secure_cookies: bool,
}

impl WebSettings {
    fn session_cookie(&self) -> &'static str {
        if self.secure_cookies { SECURE_SESSION_COOKIE } else { SESSION_COOKIE }
    }

    fn sign_in_cookie(&self) -> &'static str {
        if self.secure_cookies { SECURE_SIGN_IN_COOKIE } else { SIGN_IN_COOKIE }
    }

    /// Where a cookie applies: `path`, or the whole site for a `__Host-` one (which requires it).
    fn cookie_path(&self, path: &'static str) -> &'static str {
        if self.secure_cookies { "/" } else { path }
    }
}

impl Default for WebSettings {
    fn default() -> WebSettings {
        WebSettings { session_lifetime: std::time::Duration::from_secs(8 * 3600), secure_cookies: false }
    }
}

/// A signed-in person: the same [`Caller`] the API's handlers take, and the token their
/// forms must carry.
pub(crate) struct Signed {
    pub(crate) caller: Caller,
    csrf: String,
}

impl Signed {
    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }

    /// The caller again, for handing to an API handler by value.
    pub(crate) fn caller(&self) -> Caller {
        Caller(self.caller.0.clone())
    }

    /// The refusal of a form whose token is not this session's (it came from another site, or
    /// from a page of a session that has ended); `None` when the token is right.
    pub(crate) fn csrf_refusal(&self, sent: &str) -> Option<Response> {
        if bool::from(sent.as_bytes().ct_eq(self.csrf.as_bytes())) {
            None
        } else {
            tracing::warn!(user = %self.caller.user, "a console form was refused: its CSRF token is not the session's");
            Some(problem(
                StatusCode::FORBIDDEN,
                "Form refused",
                "This form did not carry this session's token: it was sent from another site or from an old page. Reload the page and try again.",
            ))
        }
    }
}

/// The CSRF token of the session whose secret is `secret`.
fn csrf_token(secret: &str) -> String {
    hash_token(&format!("kiln console csrf\0{secret}"))
}

/// The store's key of the request's session, if it has a session cookie.
pub(crate) fn session_hash(settings: &WebSettings, headers: &HeaderMap) -> Option<String> {
    cookie(headers, settings.session_cookie()).map(hash_token)
}

/// The value of cookie `name`, from any `Cookie` header of the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn set_cookie(settings: &WebSettings, name: &str, value: &str, path: &'static str, max_age_seconds: Option<u64>) -> HeaderValue {
    let mut text = format!("{name}={value}; Path={}; HttpOnly; SameSite=Strict", settings.cookie_path(path));
    if let Some(seconds) = max_age_seconds {
        text.push_str(&format!("; Max-Age={seconds}"));
    }
    if settings.secure_cookies {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).expect("cookie values are token characters")
}

impl FromRequestParts<ApiState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let secret = cookie(&parts.headers, state.web.session_cookie());
        let identity = match secret {
            Some(secret) => state.store.identify_web_session(&hash_token(secret)).await.map_err(|error| {
                let error = crate::error::ApiError::from(error);
                problem(error.status, "The console could not read your session", &error.message)
            })?,
            None => None,
        };
        match (secret, identity) {
            (Some(secret), Some(identity)) => Ok(Signed {
                caller: Caller(AuthContext { user: identity.user, admin: identity.admin, memberships: identity.memberships }),
                csrf: csrf_token(secret),
            }),
            _ => {
                // Back to this page after signing in, when it is one to come back to.
                let here = parts.uri.path_and_query().map(|path| path.as_str()).unwrap_or("/ui/");
                let next = if parts.method == axum::http::Method::GET { safe_next(here) } else { "/ui/" };
                Err(Redirect::to(&format!("/ui/sign-in?next={}", form_encode(next))).into_response())
            }
        }
    }
}

/// Where a sign-in may send the browser on: a console path of visible ASCII only, never
/// another site.
fn safe_next(next: &str) -> &str {
    let inside = next.starts_with("/ui/")
        && !next.contains("//")
        && !next.contains('\\')
        && !next.starts_with("/ui/sign-")
        && next.bytes().all(|byte| byte.is_ascii_graphic());
    if inside { next } else { "/ui/" }
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SignInQuery {
    #[serde(default)]
    next: String,
}

/// The sign-in page, with a fresh double-submit token.
pub(crate) async fn sign_in_page(
    State(state): State<ApiState>,
    crate::extract::QueryParams(query): crate::extract::QueryParams<SignInQuery>,
) -> Response {
    sign_in_form(&state, StatusCode::OK, safe_next(&query.next), "", None)
}

fn sign_in_form(state: &ApiState, status: StatusCode, next: &str, user: &str, error: Option<String>) -> Response {
    let token = mint_token();
    let page = kiln_web::Page::SignIn { csrf: token.clone(), next: next.to_owned(), user: user.to_owned() };
    let frame = kiln_web::Frame { error, ..kiln_web::Frame::default() };
    let mut response = page_response(status, &frame, &page);
    response.headers_mut().append(SET_COOKIE, set_cookie(&state.web, state.web.sign_in_cookie(), &token, "/ui/sign-in", Some(3600)));
    response
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

/// Checks the pair the way the API checks HTTP basic authentication (the same lockout and
/// the same one answer for every failure), then starts a session.
pub(crate) async fn sign_in(State(state): State<ApiState>, headers: HeaderMap, axum::Form(form): axum::Form<SignInForm>) -> Response {
    let next = safe_next(&form.next);
    let expected = cookie(&headers, state.web.sign_in_cookie()).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
        tracing::warn!("a console sign-in was refused: its form token is not the one its page was given");
        let message = "The sign-in form had expired or came from another site: sign in again.";
        return sign_in_form(&state, StatusCode::FORBIDDEN, next, &form.user, Some(message.to_owned()));
    }
    let context = match crate::auth::authenticate_password(&state, &form.user, &form.password).await {
        Ok(context) => context,
        Err(error) => return sign_in_form(&state, error.status, next, &form.user, Some(error.message)),
    };
    // A browser signing in again leaves no session of its own behind.
    if let Some(earlier) = session_hash(&state.web, &headers)
        && let Err(error) = state.store.end_web_session(&earlier).await
    {
        let error = crate::error::ApiError::from(error);
        return sign_in_form(&state, error.status, next, &form.user, Some(error.message));
    }
    let secret = mint_token();
    if let Err(error) = state.store.create_web_session(&context.user, &hash_token(&secret), state.web.session_lifetime).await {
        let error = crate::error::ApiError::from(error);
        return sign_in_form(&state, error.status, next, &form.user, Some(error.message));
    }
    tracing::info!(user = %context.user, "signed in to the console");
    let mut response = Redirect::to(next).into_response();
    let lifetime = state.web.session_lifetime.as_secs();
    response.headers_mut().append(SET_COOKIE, set_cookie(&state.web, state.web.session_cookie(), &secret, "/ui", Some(lifetime)));
    response.headers_mut().append(SET_COOKIE, set_cookie(&state.web, state.web.sign_in_cookie(), "", "/ui/sign-in", Some(0)));
    response
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub(crate) csrf: String,
}

/// Ends the session everywhere and forgets the cookie.
pub(crate) async fn sign_out(
    State(state): State<ApiState>,
    signed: Signed,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Some(refused) = signed.csrf_refusal(&form.csrf) {
        return refused;
    }
    if let Some(hash) = session_hash(&state.web, &headers)
        && let Err(error) = state.store.end_web_session(&hash).await
    {
        let error = crate::error::ApiError::from(error);
        return problem(error.status, "Signing out failed", &error.message);
    }
    tracing::info!(user = %signed.caller.user, "signed out of the console");
    let mut response = Redirect::to("/ui/sign-in").into_response();
    response.headers_mut().append(SET_COOKIE, set_cookie(&state.web, state.web.session_cookie(), "", "/ui", Some(0)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_only_sends_the_browser_on_within_the_console() {
        assert_eq!(safe_next("/ui/nodes?state=active"), "/ui/nodes?state=active");
        for hostile in
            ["https://evil.example/", "//evil.example/ui/", "/ui//evil", "/ui/\\evil", "/v1/nodes", "/ui/sign-out", "", "/ui/\n", "/ui/é"]
        {
            assert_eq!(safe_next(hostile), "/ui/", "{hostile}");
        }
    }

    #[test]
    fn cookies_are_read_from_any_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; kiln_session=secret"));
        headers.append(COOKIE, HeaderValue::from_static("kiln_sign_in=form"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("secret"));
        assert_eq!(cookie(&headers, SIGN_IN_COOKIE), Some("form"));
        assert_eq!(cookie(&headers, "kiln"), None);
    }

    #[test]
    fn under_https_the_cookies_are_host_only_for_the_whole_site() {
        let secure = WebSettings { secure_cookies: true, ..WebSettings::default() };
        let cookie = set_cookie(&secure, secure.session_cookie(), "secret", "/ui", Some(60));
        assert_eq!(cookie.to_str().unwrap(), "__Host-kiln_session=secret; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure");
        let plain = WebSettings::default();
        let cookie = set_cookie(&plain, plain.session_cookie(), "secret", "/ui", None);
        assert_eq!(cookie.to_str().unwrap(), "kiln_session=secret; Path=/ui; HttpOnly; SameSite=Strict");
    }

    #[test]
    fn the_csrf_token_is_not_the_session_s_lookup_digest() {
        assert_ne!(csrf_token("secret"), hash_token("secret"));
        assert_eq!(csrf_token("secret"), csrf_token("secret"));
    }
}
