//! People's passwords: the argon2id hash an administrator or the user set, and the failed
//! sign-ins in a row that lock the account for a while. The hashing and the lockout rule are
//! `kiln-auth`'s; this is where they are kept, so that every replica sees one count.

use std::collections::BTreeMap;

use kiln_types::api::ProjectRole;
use sqlx::Row as _;

use crate::events::{NewEvent, record};
use crate::tenancy::memberships_of;
use crate::{Store, StoreError};

/// What signing in as a user needs to know.
#[derive(Debug, Clone)]
pub struct PasswordLogin {
    pub user: String,
    pub admin: bool,
    pub memberships: BTreeMap<String, ProjectRole>,
    /// `None`: the user has no password and cannot sign in with one.
    pub password_hash: Option<String>,
    pub failed_logins: u32,
    /// Milliseconds since the epoch until which sign-ins are refused unheard.
    pub locked_until: Option<i64>,
}

impl Store {
    /// Sets (`Some`) or removes (`None`) a user's password hash; failed attempts are forgotten.
    pub async fn set_password_hash(&self, actor: &str, user: &str, hash: Option<&str>) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let changed = sqlx::query("UPDATE users SET password_hash = $2, failed_logins = 0, locked_until = NULL WHERE name = $1")
            .bind(user)
            .bind(hash)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("setting a password"))?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::not_found("user", user));
        }
        let action = if hash.is_some() { "user.password.set" } else { "user.password.remove" };
        record(connection, NewEvent { actor, action, target_kind: "user", target: user, project: None, before: None, after: None }).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// What signing in as `user` needs, or `None` for no such user.
    pub async fn password_login(&self, user: &str) -> Result<Option<PasswordLogin>, StoreError> {
        let mut connection = self.read().await?;
        let row = sqlx::query("SELECT admin, password_hash, failed_logins, locked_until FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("reading a user's password"))?;
        let Some(row) = row else { return Ok(None) };
        let read = || StoreError::query("reading a user's password");
        let admin: i64 = row.try_get("admin").map_err(read())?;
        let failed: i64 = row.try_get("failed_logins").map_err(read())?;
        let memberships = memberships_of(&mut connection, user).await?;
        Ok(Some(PasswordLogin {
            user: user.to_owned(),
            admin: admin != 0,
            memberships: memberships.into_iter().map(|membership| (membership.project, membership.role)).collect(),
            password_hash: row.try_get("password_hash").map_err(read())?,
            failed_logins: u32::try_from(failed).unwrap_or(u32::MAX),
            locked_until: row.try_get("locked_until").map_err(read())?,
        }))
    }

    /// Counts a failed sign-in; `lockout` (from the new count) says how long the account
    /// then waits. Answers the new count. Counted in the database, so that attempts spread
    /// over replicas add up.
    pub async fn record_failed_login(&self, user: &str, lockout: impl Fn(u32) -> Option<std::time::Duration>) -> Result<u32, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        sqlx::query("UPDATE users SET failed_logins = failed_logins + 1 WHERE name = $1")
            .bind(user)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("counting a failed sign-in"))?;
        let failed: Option<i64> = sqlx::query_scalar("SELECT failed_logins FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("counting a failed sign-in"))?;
        let failed = u32::try_from(failed.unwrap_or(0)).unwrap_or(u32::MAX);
        if let Some(wait) = lockout(failed) {
            let until = crate::now_millis() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
            sqlx::query("UPDATE users SET locked_until = $2 WHERE name = $1")
                .bind(user)
                .bind(until)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("locking an account"))?;
        }
        transaction.commit().await?;
        Ok(failed)
    }

    /// Forgets failed sign-ins after a good one.
    pub async fn record_good_login(&self, user: &str) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        sqlx::query(
            "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE name = $1 AND (failed_logins <> 0 OR locked_until IS NOT NULL)",
        )
        .bind(user)
        .execute(&mut *transaction.connection())
        .await
        .map_err(StoreError::query("clearing failed sign-ins"))?;
        transaction.commit().await?;
        Ok(())
    }
}
