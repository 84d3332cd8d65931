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
/// who is calling.
#[derive(Default)]
pub struct TokenCache {
    entries: RwLock<HashMap<String, CachedIdentity>>,
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
