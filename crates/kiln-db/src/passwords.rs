//! People's passwords: the argon2id hash an administrator or the user set, and the failed
//! sign-ins in a row that lock the account for a while. The hashing and the lockout rule are
//! `kiln-auth`'s; this is where they are kept, so that every replica sees one count.

use std::collections::BTreeMap;

use kiln_types::api::ProjectRole;
use sqlx::Row as _;

use crate::events::{NewEvent, record};
use crate::tenancy::memberships_of;
use crate::{Store, StoreError};

/// What checking a user's password needs to know.
#[derive(Debug, Clone)]
pub struct PasswordLogin {
    pub user: String,
    pub admin: bool,
    pub memberships: BTreeMap<String, ProjectRole>,
    /// `None`: the user has no password and cannot sign in with one.
    pub password_hash: Option<String>,
    /// Failed attempts in a row, this one counted.
    pub failed_logins: u32,
}

/// How a sign-in attempt starts ([`Store::begin_password_attempt`]).
#[derive(Debug, Clone)]
pub enum PasswordAttempt {
    NoSuchUser,
    /// Refused unheard and uncounted until then (milliseconds since the epoch).
    Locked {
        until: i64,
    },
    /// Counted as failed until the password is found good.
    Admitted(PasswordLogin),
}

impl Store {
    /// Sets (`Some`) or removes (`None`) a user's password hash; failed attempts are forgotten
    /// and the user's console sessions end, so that a password taken by someone else stops
    /// serving them once it is changed.
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
        sqlx::query("DELETE FROM web_sessions WHERE user_name = $1")
            .bind(user)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("ending a user's sessions"))?;
        let action = if hash.is_some() { "user.password.set" } else { "user.password.remove" };
        record(connection, NewEvent { actor, action, target_kind: "user", target: user, project: None, before: None, after: None }).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Starts a sign-in as `user`: unless the account is locked, the attempt is counted as
    /// failed before the password is checked, and `lockout` (from the new count) locks the
    /// account at once, so that guesses sent together cannot all be heard before the count
    /// catches up: at most as many as `lockout` lets through are ever checked. A good
    /// password then clears the count ([`Store::record_good_login`]). Counted in the
    /// database, in one transaction, so that attempts spread over replicas add up.
    pub async fn begin_password_attempt(
        &self,
        user: &str,
        lockout: impl Fn(u32) -> Option<std::time::Duration>,
    ) -> Result<PasswordAttempt, StoreError> {
        let now = crate::now_millis();
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let counting = || StoreError::query("counting a sign-in attempt");
        let admitted = sqlx::query(
            "UPDATE users SET failed_logins = failed_logins + 1 WHERE name = $1 AND (locked_until IS NULL OR locked_until <= $2)",
        )
        .bind(user)
        .bind(now)
        .execute(&mut *connection)
        .await
        .map_err(counting())?
        .rows_affected();
        let row = sqlx::query("SELECT admin, password_hash, failed_logins, locked_until FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("reading a user's password"))?;
        let Some(row) = row else { return Ok(PasswordAttempt::NoSuchUser) };
        let read = || StoreError::query("reading a user's password");
        if admitted == 0 {
            let until: Option<i64> = row.try_get("locked_until").map_err(read())?;
            return Ok(PasswordAttempt::Locked { until: until.unwrap_or(now) });
        }
        let admin: i64 = row.try_get("admin").map_err(read())?;
        let failed: i64 = row.try_get("failed_logins").map_err(read())?;
        let failed = u32::try_from(failed).unwrap_or(u32::MAX);
        if let Some(wait) = lockout(failed) {
            let until = now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
            sqlx::query("UPDATE users SET locked_until = $2 WHERE name = $1")
                .bind(user)
                .bind(until)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("locking an account"))?;
        }
        let memberships = memberships_of(connection, user).await?;
        let login = PasswordLogin {
            user: user.to_owned(),
            admin: admin != 0,
            memberships: memberships.into_iter().map(|membership| (membership.project, membership.role)).collect(),
            password_hash: row.try_get("password_hash").map_err(read())?,
            failed_logins: failed,
        };
        transaction.commit().await?;
        Ok(PasswordAttempt::Admitted(login))
    }

    /// Forgets failed sign-ins after a good one.
    pub async fn record_good_login(&self, user: &str) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE name = $1")
            .bind(user)
            .execute(&mut *transaction.connection())
            .await
            .map_err(StoreError::query("clearing failed sign-ins"))?;
        transaction.commit().await?;
        Ok(())
    }
}
