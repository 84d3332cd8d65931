//! People's sessions in the web console: a row per signed-in browser, found by the SHA-256 of
//! the cookie's secret, ending at a fixed time or at sign-out. Kept in the database so that
//! any replica serves any session and a sign-out is seen by all of them at once.

use std::collections::BTreeMap;

use kiln_types::api::ProjectRole;
use sqlx::Row as _;

use crate::tenancy::memberships_of;
use crate::{Store, StoreError};

/// Who a live session belongs to, read afresh on every request, so that a membership or an
/// administrator's right taken away applies at once.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    pub user: String,
    pub admin: bool,
    pub memberships: BTreeMap<String, ProjectRole>,
    pub expires_at: jiff::Timestamp,
}

impl Store {
    /// Records a new session for `user`, found later by `hash`, ending `lifetime` from now;
    /// sessions already ended are swept in the same transaction, so the table holds only
    /// live ones and a little more.
    pub async fn create_web_session(&self, user: &str, hash: &str, lifetime: std::time::Duration) -> Result<jiff::Timestamp, StoreError> {
        let now = crate::now_millis();
        let lifetime_millis = i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX / 2);
        let expires_at = now.saturating_add(lifetime_millis);
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("sweeping ended sessions"))?;
        sqlx::query("INSERT INTO web_sessions (hash, user_name, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(hash)
            .bind(user)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("starting a session"))?;
        transaction.commit().await?;
        Ok(crate::timestamp(expires_at))
    }

    /// The live session of `hash`: `None` for an unknown, ended or expired one.
    pub async fn identify_web_session(&self, hash: &str) -> Result<Option<SessionIdentity>, StoreError> {
        let mut connection = self.read().await?;
        let row = sqlx::query(
            "SELECT s.user_name, s.expires_at, u.admin FROM web_sessions s \
             JOIN users u ON u.name = s.user_name WHERE s.hash = $1 AND s.expires_at > $2",
        )
        .bind(hash)
        .bind(crate::now_millis())
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("looking up a session"))?;
        let Some(row) = row else { return Ok(None) };
        let read = || StoreError::query("reading a session");
        let user: String = row.try_get("user_name").map_err(read())?;
        let expires_at: i64 = row.try_get("expires_at").map_err(read())?;
        let admin: Option<i64> = row.try_get("admin").map_err(read())?;
        let memberships = memberships_of(&mut connection, &user).await?;
        Ok(Some(SessionIdentity {
            admin: admin.unwrap_or(0) != 0,
            memberships: memberships.into_iter().map(|membership| (membership.project, membership.role)).collect(),
            expires_at: crate::timestamp(expires_at),
            user,
        }))
    }

    /// Ends the session of `hash` (sign-out); ending an unknown one is not an error.
    pub async fn end_web_session(&self, hash: &str) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        sqlx::query("DELETE FROM web_sessions WHERE hash = $1")
            .bind(hash)
            .execute(&mut *transaction.connection())
            .await
            .map_err(StoreError::query("ending a session"))?;
        transaction.commit().await?;
        Ok(())
    }
}
