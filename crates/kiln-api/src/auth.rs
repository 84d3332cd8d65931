//! Bearer-token authentication. Handlers that need a caller take [`Caller`] as an argument;
//! what the caller may do is decided in the handler, by asking its [`AuthContext`].

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use kiln_auth::{AuthContext, hash_token};

use crate::ApiState;
use crate::error::ApiError;

/// How long a resolved token is trusted without asking the database again. A revocation is
/// seen at once by the replica that made it (it clears its cache) and by other replicas
/// within this time.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);
const TOKEN_CACHE_CAPACITY: usize = 10_000;

struct CachedIdentity {
    context: AuthContext,
    expires_at: Option<jiff::Timestamp>,
    fetched: Instant,
}

/// Resolved tokens by hash, so that a request does not pay a database round trip to learn
/// who is calling; and the permits for password verifications.
pub struct TokenCache {
    entries: RwLock<HashMap<String, CachedIdentity>>,
    /// Argon2 is slow and memory-hard on purpose: verifications run a few at a time, one per
    /// core, so that a flood of sign-ins queues instead of taking every core and
    /// 19 MiB each.
    password_verifications: tokio::sync::Semaphore,
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        TokenCache { entries: RwLock::default(), password_verifications: tokio::sync::Semaphore::new(cores) }
    }
}

impl TokenCache {
    pub fn clear(&self) {
        self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }
}

/// The authenticated caller of a request.
pub struct Caller(pub AuthContext);

impl std::ops::Deref for Caller {
    type Target = AuthContext;

    fn deref(&self) -> &AuthContext {
        &self.0
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token (Authorization: Bearer …)"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <token>'"))?;
        authenticate(state, token).await.map(Caller)
    }
}

pub(crate) async fn authenticate(state: &ApiState, token: &str) -> Result<AuthContext, ApiError> {
    let hash = hash_token(token);
    let now = jiff::Timestamp::now();
    let expired = |expires_at: Option<jiff::Timestamp>| expires_at.is_some_and(|at| at <= now);
    {
        let entries = state.tokens.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = entries.get(&hash)
            && cached.fetched.elapsed() < TOKEN_CACHE_TTL
        {
            if expired(cached.expires_at) {
                return Err(ApiError::unauthorized("the token has expired"));
            }
            return Ok(cached.context.clone());
        }
    }
    let identity = state.store.identify_token(&hash).await?.ok_or_else(|| ApiError::unauthorized("unknown token"))?;
    if identity.revoked {
        return Err(ApiError::unauthorized("the token has been revoked"));
    }
    if expired(identity.expires_at) {
        return Err(ApiError::unauthorized("the token has expired"));
    }
    let context = AuthContext { user: identity.user, admin: identity.admin, memberships: identity.memberships };
    let mut entries = state.tokens.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if entries.len() >= TOKEN_CACHE_CAPACITY {
        entries.clear();
    }
    entries.insert(hash, CachedIdentity { context: context.clone(), expires_at: identity.expires_at, fetched: Instant::now() });
    Ok(context)
}

/// How long a sign-in waits for a verification permit before it is turned away.
const PASSWORD_PERMIT_WAIT: Duration = Duration::from_secs(10);

/// The one answer to a failed sign-in by password, whatever failed (no such user, no
/// password, a wrong one, an account waiting out its lockout), so that the answers do not
/// tell which users exist or which are locked. The log says which.
const PASSWORD_REFUSED: &str = "invalid user name or password (after repeated failures, wait before trying again)";

/// A stand-in hash to verify against when the user has none, so that an unknown user costs
/// the same time as a known one.
static DECOY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| kiln_auth::hash_password("kiln decoy password").expect("a decoy hash can be made"));

/// Signs `user` in with `password` (HTTP basic authentication). A good pair is remembered
/// for as long as tokens are ([`TOKEN_CACHE_TTL`]), keyed by a digest of the pair, so that
/// a client's run of requests costs one argon2 verification. Failed attempts in a row lock
/// the account for a while (`kiln_auth::lockout_after`), counted in the store so that every
/// replica sees them.
pub(crate) async fn authenticate_password(state: &ApiState, user: &str, password: &str) -> Result<AuthContext, ApiError> {
    let key = format!("{}{}", password_cache_prefix(user), hash_token(&format!("{user}\0{password}")));
    {
        let entries = state.tokens.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = entries.get(&key)
            && cached.fetched.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(cached.context.clone());
        }
    }
    // A permit first, waited for a bounded time: a flood of sign-ins is answered 503 before
    // it reaches the store, rather than queueing without end.
    let permit = match tokio::time::timeout(PASSWORD_PERMIT_WAIT, state.tokens.password_verifications.acquire()).await {
        Ok(permit) => permit.expect("the semaphore is never closed"),
        Err(_) => {
            tracing::warn!("a sign-in by password was turned away: every verification permit stayed busy");
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                kiln_types::api::ErrorCode::Busy,
                "too many sign-ins at once: try again in a moment",
            ));
        }
    };
    // Counted before it is checked, so that guesses sent together are held to the lockout
    // rule too; every path verifies one hash, so that the time taken tells nothing.
    let attempt = state.store.begin_password_attempt(user, kiln_auth::lockout_after).await?;
    let stored = match &attempt {
        kiln_db::PasswordAttempt::Admitted(login) => login.password_hash.clone(),
        _ => None,
    };
    let matched = verify_password(stored, password).await;
    drop(permit);
    let login = match attempt {
        kiln_db::PasswordAttempt::Admitted(login) if matched => login,
        kiln_db::PasswordAttempt::Admitted(login) => {
            // A pair remembered from before no longer passes unheard once guessing starts.
            let prefix = password_cache_prefix(user);
            state.tokens.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner()).retain(|key, _| !key.starts_with(&prefix));
            tracing::warn!(user, failures = login.failed_logins, "a sign-in by password failed");
            return Err(ApiError::unauthorized(PASSWORD_REFUSED));
        }
        kiln_db::PasswordAttempt::Locked { until } => {
            let until = jiff::Timestamp::from_millisecond(until).map(|at| at.to_string()).unwrap_or_default();
            tracing::warn!(user, %until, "a sign-in by password refused unheard: the account is locked after failed attempts");
            return Err(ApiError::unauthorized(PASSWORD_REFUSED));
        }
        kiln_db::PasswordAttempt::NoSuchUser => {
            tracing::warn!("a sign-in by password named no such user");
            return Err(ApiError::unauthorized(PASSWORD_REFUSED));
        }
    };
    state.store.record_good_login(user).await?;
    let context = AuthContext { user: login.user, admin: login.admin, memberships: login.memberships };
    let mut entries = state.tokens.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if entries.len() >= TOKEN_CACHE_CAPACITY {
        entries.clear();
    }
    entries.insert(key, CachedIdentity { context: context.clone(), expires_at: None, fetched: Instant::now() });
    Ok(context)
}

/// Verifies `password` against `stored`, or against the decoy when there is none (no such
/// user, no password, a locked account). The caller holds a verification permit.
async fn verify_password(stored: Option<String>, password: &str) -> bool {
    let candidate = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let matched = kiln_auth::verify_password(stored.as_deref().unwrap_or(&DECOY_HASH), &candidate);
        matched && stored.is_some()
    })
    .await
    .expect("no panic")
}

/// Where the remembered sign-ins of `user` are kept in the token cache (token hashes are hex,
/// so they never start so).
fn password_cache_prefix(user: &str) -> String {
    format!("password:{}:", hash_token(user))
}
