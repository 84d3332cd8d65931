//! Projects, users, project memberships and API tokens.

use std::collections::BTreeMap;

use kiln_types::api::{Membership, Project, ProjectRole, Token, User};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};
use crate::{Store, StoreError};

/// What a token hash resolves to: enough to build the request's auth context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub token_id: String,
    pub user: String,
    pub admin: bool,
    pub memberships: BTreeMap<String, ProjectRole>,
    pub expires_at: Option<jiff::Timestamp>,
    pub revoked: bool,
}

fn project_from_row(row: &AnyRow) -> Result<Project, sqlx::Error> {
    Ok(Project {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        created_at: crate::timestamp(row.try_get("created_at")?),
    })
}

fn token_from_row(row: &AnyRow) -> Result<Token, sqlx::Error> {
    Ok(Token {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        user: row.try_get("user_name")?,
        created_at: crate::timestamp(row.try_get("created_at")?),
        expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(crate::timestamp),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(crate::timestamp),
    })
}

pub(crate) async fn memberships_of(connection: &mut AnyConnection, user: &str) -> Result<Vec<Membership>, StoreError> {
    let rows = sqlx::query("SELECT project, role FROM memberships WHERE user_name = $1 ORDER BY project")
        .bind(user)
        .fetch_all(connection)
        .await
        .map_err(StoreError::query("reading memberships"))?;
    rows.iter()
        .map(|row| {
            let project: String = row.try_get("project").map_err(StoreError::query("reading memberships"))?;
            let role: String = row.try_get("role").map_err(StoreError::query("reading memberships"))?;
            let role = role.parse().map_err(|message| StoreError::Corrupt { message })?;
            Ok(Membership { project, role })
        })
        .collect()
}

async fn user_in(connection: &mut AnyConnection, name: &str) -> Result<User, StoreError> {
    let row = sqlx::query("SELECT name, admin, created_at FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("reading a user"))?
        .ok_or_else(|| StoreError::not_found("user", name))?;
    let admin: i64 = row.try_get("admin").map_err(StoreError::query("reading a user"))?;
    let created_at: i64 = row.try_get("created_at").map_err(StoreError::query("reading a user"))?;
    Ok(User {
        name: name.to_owned(),
        admin: admin != 0,
        memberships: memberships_of(connection, name).await?,
        created_at: crate::timestamp(created_at),
    })
}

pub(crate) async fn project_exists(connection: &mut AnyConnection, name: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("SELECT 1 AS present FROM projects WHERE name = $1")
        .bind(name)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("looking up a project"))?
        .is_some())
}

impl Store {
    pub async fn create_project(&self, actor: &str, name: &str, description: &str) -> Result<Project, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        if project_exists(connection, name).await? {
            return Err(StoreError::conflict(format!("project '{name}' already exists")));
        }
        let project = Project { name: name.to_owned(), description: description.to_owned(), created_at: crate::now() };
        sqlx::query("INSERT INTO projects (name, description, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(description)
            .bind(project.created_at.as_millisecond())
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("creating a project"))?;
        let after = serde_json::to_value(&project).ok();
        record(
            connection,
            NewEvent { actor, action: "project.create", target_kind: "project", target: name, project: Some(name), before: None, after },
        )
        .await?;
        transaction.commit().await?;
        Ok(project)
    }

    /// `names: None` lists every project.
    pub async fn list_projects(&self, names: Option<&[String]>) -> Result<Vec<Project>, StoreError> {
        let mut connection = self.read().await?;
        let rows = match names {
            None => sqlx::query("SELECT name, description, created_at FROM projects ORDER BY name").fetch_all(&mut *connection).await,
            Some([]) => return Ok(Vec::new()),
            Some(names) => {
                let sql = format!(
                    "SELECT name, description, created_at FROM projects WHERE name IN ({}) ORDER BY name",
                    crate::placeholders(1, names.len())
                );
                let mut query = sqlx::query(&sql);
                for name in names {
                    query = query.bind(name.as_str());
                }
                query.fetch_all(&mut *connection).await
            }
        }
        .map_err(StoreError::query("listing projects"))?;
        rows.iter().map(|row| project_from_row(row).map_err(StoreError::query("reading a project"))).collect()
    }

    pub async fn get_project(&self, name: &str) -> Result<Project, StoreError> {
        let mut connection = self.read().await?;
        let row = sqlx::query("SELECT name, description, created_at FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("reading a project"))?
            .ok_or_else(|| StoreError::not_found("project", name))?;
        project_from_row(&row).map_err(StoreError::query("reading a project"))
    }

    /// Refuses while nodes or groups still belong to the project: take them back first.
    pub async fn delete_project(&self, actor: &str, name: &str) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        if !project_exists(connection, name).await? {
            return Err(StoreError::not_found("project", name));
        }
        for (table, what) in [("nodes", "nodes"), ("node_groups", "groups"), ("images", "images")] {
            let sql = format!("SELECT COUNT(*) AS count FROM {table} WHERE project = $1");
            let count: i64 = sqlx::query(&sql)
                .bind(name)
                .fetch_one(&mut *connection)
                .await
                .and_then(|row| row.try_get("count"))
                .map_err(StoreError::query("counting a project's resources"))?;
            if count > 0 {
                return Err(StoreError::conflict(format!("project '{name}' still has {count} {what}; release them first")));
            }
        }
        sqlx::query("DELETE FROM projects WHERE name = $1")
            .bind(name)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("deleting a project"))?;
        record(
            connection,
            NewEvent {
                actor,
                action: "project.delete",
                target_kind: "project",
                target: name,
                project: Some(name),
                before: None,
                after: None,
            },
        )
        .await?;
        transaction.commit().await
    }

    pub async fn create_user(&self, actor: &str, name: &str, admin: bool) -> Result<User, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let user = insert_user(connection, actor, name, admin).await?;
        transaction.commit().await?;
        Ok(user)
    }

    pub async fn get_user(&self, name: &str) -> Result<User, StoreError> {
        let mut connection = self.read().await?;
        user_in(&mut connection, name).await
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let mut connection = self.read().await?;
        let names: Vec<String> = sqlx::query("SELECT name FROM users ORDER BY name")
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("listing users"))?
            .iter()
            .map(|row| row.try_get("name"))
            .collect::<Result<_, _>>()
            .map_err(StoreError::query("listing users"))?;
        let mut users = Vec::with_capacity(names.len());
        for name in names {
            users.push(user_in(&mut connection, &name).await?);
        }
        Ok(users)
    }

    /// Deletes the user and, with it, their tokens and memberships. The last administrator
    /// cannot be deleted: nobody could manage the server afterwards.
    pub async fn delete_user(&self, actor: &str, name: &str) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let user = user_in(connection, name).await?;
        if user.admin {
            let admins: i64 = sqlx::query("SELECT COUNT(*) AS count FROM users WHERE admin = 1")
                .fetch_one(&mut *connection)
                .await
                .and_then(|row| row.try_get("count"))
                .map_err(StoreError::query("counting administrators"))?;
            if admins <= 1 {
                return Err(StoreError::conflict(format!("'{name}' is the last administrator")));
            }
        }
        sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("deleting a user"))?;
        let before = serde_json::to_value(&user).ok();
        record(
            connection,
            NewEvent { actor, action: "user.delete", target_kind: "user", target: name, project: None, before, after: None },
        )
        .await?;
        transaction.commit().await
    }

    pub async fn set_membership(&self, actor: &str, project: &str, user: &str, role: ProjectRole) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        if !project_exists(connection, project).await? {
            return Err(StoreError::not_found("project", project));
        }
        user_in(connection, user).await?;
        sqlx::query(
            "INSERT INTO memberships (project, user_name, role) VALUES ($1, $2, $3) \
             ON CONFLICT (project, user_name) DO UPDATE SET role = excluded.role",
        )
        .bind(project)
        .bind(user)
        .bind(role.as_str())
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("setting a membership"))?;
        let after = Some(serde_json::json!({ "user": user, "role": role }));
        record(
            connection,
            NewEvent {
                actor,
                action: "project.member.set",
                target_kind: "project",
                target: project,
                project: Some(project),
                before: None,
                after,
            },
        )
        .await?;
        transaction.commit().await
    }

    pub async fn remove_membership(&self, actor: &str, project: &str, user: &str) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let removed = sqlx::query("DELETE FROM memberships WHERE project = $1 AND user_name = $2")
            .bind(project)
            .bind(user)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("removing a membership"))?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::not_found("membership", format!("{user} in {project}")));
        }
        let before = Some(serde_json::json!({ "user": user }));
        record(
            connection,
            NewEvent {
                actor,
                action: "project.member.remove",
                target_kind: "project",
                target: project,
                project: Some(project),
                before,
                after: None,
            },
        )
        .await?;
        transaction.commit().await
    }

    /// Stores a new token for `user`; the caller minted the secret and passes only its hash.
    pub async fn create_token(
        &self,
        actor: &str,
        user: &str,
        name: &str,
        hash: &str,
        expires_at: Option<jiff::Timestamp>,
    ) -> Result<Token, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        user_in(connection, user).await?;
        let token = insert_token(connection, actor, user, name, hash, expires_at).await?;
        transaction.commit().await?;
        Ok(token)
    }

    /// `user: None` lists every user's tokens.
    pub async fn list_tokens(&self, user: Option<&str>) -> Result<Vec<Token>, StoreError> {
        let mut connection = self.read().await?;
        let columns = "id, name, user_name, created_at, expires_at, revoked_at";
        let rows = match user {
            Some(user) => {
                sqlx::query(&format!("SELECT {columns} FROM tokens WHERE user_name = $1 ORDER BY created_at, id"))
                    .bind(user)
                    .fetch_all(&mut *connection)
                    .await
            }
            None => sqlx::query(&format!("SELECT {columns} FROM tokens ORDER BY created_at, id")).fetch_all(&mut *connection).await,
        }
        .map_err(StoreError::query("listing tokens"))?;
        rows.iter().map(|row| token_from_row(row).map_err(StoreError::query("reading a token"))).collect()
    }

    pub async fn get_token(&self, id: &str) -> Result<Token, StoreError> {
        let mut connection = self.read().await?;
        let row = sqlx::query("SELECT id, name, user_name, created_at, expires_at, revoked_at FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("reading a token"))?
            .ok_or_else(|| StoreError::not_found("token", id))?;
        token_from_row(&row).map_err(StoreError::query("reading a token"))
    }

    /// Revoking twice is not an error: the token stays revoked at its first revocation time.
    pub async fn revoke_token(&self, actor: &str, id: &str) -> Result<Token, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let updated = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(crate::now_millis())
            .bind(id)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("revoking a token"))?
            .rows_affected();
        let row = sqlx::query("SELECT id, name, user_name, created_at, expires_at, revoked_at FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("reading a token"))?
            .ok_or_else(|| StoreError::not_found("token", id))?;
        let token = token_from_row(&row).map_err(StoreError::query("reading a token"))?;
        if updated > 0 {
            let after = serde_json::to_value(&token).ok();
            record(
                connection,
                NewEvent { actor, action: "token.revoke", target_kind: "token", target: id, project: None, before: None, after },
            )
            .await?;
        }
        transaction.commit().await?;
        Ok(token)
    }

    /// Resolves a token hash to its user and memberships, or `None` for an unknown token.
    /// Expiry and revocation are reported, not judged: the caller decides.
    pub async fn identify_token(&self, hash: &str) -> Result<Option<TokenIdentity>, StoreError> {
        let mut connection = self.read().await?;
        let row = sqlx::query(
            "SELECT t.id, t.user_name, t.expires_at, t.revoked_at, u.admin FROM tokens t \
             JOIN users u ON u.name = t.user_name WHERE t.hash = $1",
        )
        .bind(hash)
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("looking up a token"))?;
        let Some(row) = row else { return Ok(None) };
        let read = StoreError::query("reading a token");
        let user: String = row.try_get("user_name").map_err(read)?;
        let memberships = memberships_of(&mut connection, &user).await?;
        let get_i64 = |column: &str| row.try_get::<Option<i64>, _>(column).map_err(StoreError::query("reading a token"));
        Ok(Some(TokenIdentity {
            token_id: row.try_get("id").map_err(StoreError::query("reading a token"))?,
            admin: get_i64("admin")?.unwrap_or(0) != 0,
            expires_at: get_i64("expires_at")?.map(crate::timestamp),
            revoked: get_i64("revoked_at")?.is_some(),
            memberships: memberships.into_iter().map(|m| (m.project, m.role)).collect(),
            user,
        }))
    }

    /// On a database with no users, creates the administrator `admin` with a token of the
    /// given hash and returns true; otherwise does nothing and returns false. Atomic, so two
    /// replicas starting on one empty database create one administrator between them.
    pub async fn bootstrap_admin(&self, token_hash: &str) -> Result<bool, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let claimed = sqlx::query("INSERT INTO settings (key, value) VALUES ('bootstrapped', $1) ON CONFLICT (key) DO NOTHING")
            .bind(crate::now_millis().to_string())
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("claiming the bootstrap"))?
            .rows_affected();
        if claimed == 0 {
            return Ok(false);
        }
        insert_user(connection, "kiln", "admin", true).await?;
        insert_token(connection, "kiln", "admin", "bootstrap", token_hash, None).await?;
        transaction.commit().await?;
        Ok(true)
    }
}

async fn insert_user(connection: &mut AnyConnection, actor: &str, name: &str, admin: bool) -> Result<User, StoreError> {
    let exists = sqlx::query("SELECT 1 AS present FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("looking up a user"))?
        .is_some();
    if exists {
        return Err(StoreError::conflict(format!("user '{name}' already exists")));
    }
    let user = User { name: name.to_owned(), admin, memberships: Vec::new(), created_at: crate::now() };
    sqlx::query("INSERT INTO users (name, admin, created_at) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(i64::from(admin))
        .bind(user.created_at.as_millisecond())
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("creating a user"))?;
    let after = serde_json::to_value(&user).ok();
    record(connection, NewEvent { actor, action: "user.create", target_kind: "user", target: name, project: None, before: None, after })
        .await?;
    Ok(user)
}

async fn insert_token(
    connection: &mut AnyConnection,
    actor: &str,
    user: &str,
    name: &str,
    hash: &str,
    expires_at: Option<jiff::Timestamp>,
) -> Result<Token, StoreError> {
    let token = Token {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        user: user.to_owned(),
        created_at: crate::now(),
        expires_at,
        revoked_at: None,
    };
    sqlx::query("INSERT INTO tokens (id, name, user_name, hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&token.id)
        .bind(name)
        .bind(user)
        .bind(hash)
        .bind(token.created_at.as_millisecond())
        .bind(expires_at.map(|at| at.as_millisecond()))
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("creating a token"))?;
    let after = serde_json::to_value(&token).ok();
    record(
        connection,
        NewEvent { actor, action: "token.create", target_kind: "token", target: &token.id, project: None, before: None, after },
    )
    .await?;
    Ok(token)
}
