//! Node groups: named sets of nodes (for boot parameters and cloud-init), global or owned by
//! a project.

use kiln_auth::ProjectScope;
use kiln_types::api::Group;
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};
use crate::nodes::find_node;
use crate::{Store, StoreError};

pub(crate) struct GroupRow {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) project: Option<String>,
    pub(crate) created_at: i64,
}

pub(crate) async fn group_row(connection: &mut AnyConnection, name: &str) -> Result<Option<GroupRow>, StoreError> {
    let row = sqlx::query("SELECT name, description, project, created_at FROM node_groups WHERE name = $1")
        .bind(name)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("reading a group"))?;
    row.map(|row| {
        Ok(GroupRow {
            name: row.try_get("name").map_err(StoreError::query("reading a group"))?,
            description: row.try_get("description").map_err(StoreError::query("reading a group"))?,
            project: row.try_get("project").map_err(StoreError::query("reading a group"))?,
            created_at: row.try_get("created_at").map_err(StoreError::query("reading a group"))?,
        })
    })
    .transpose()
}

/// Global groups (no project) are visible to everyone; project groups to that project.
pub(crate) fn visible(scope: &ProjectScope, project: Option<&str>) -> bool {
    match (scope, project) {
        (ProjectScope::All, _) | (_, None) => true,
        (ProjectScope::Projects(projects), Some(project)) => projects.iter().any(|p| p == project),
    }
}

/// Global groups are changed only by admins; project groups by the project's members.
pub(crate) fn writable(scope: &ProjectScope, project: Option<&str>) -> bool {
    match (scope, project) {
        (ProjectScope::All, _) => true,
        (_, None) => false,
        (ProjectScope::Projects(projects), Some(project)) => projects.iter().any(|p| p == project),
    }
}

/// Makes sure a node of `node_project` may be in `group`, creating the group (owned by the
/// node's project) when it does not exist yet, as static discovery does.
pub(crate) async fn ensure_group_for(connection: &mut AnyConnection, group: &str, node_project: Option<&str>) -> Result<(), StoreError> {
    match group_row(connection, group).await? {
        Some(row) => match row.project.as_deref() {
            None => Ok(()),
            Some(project) if Some(project) == node_project => Ok(()),
            // Same message as a missing group: another tenant's group must stay invisible.
            Some(_) => Err(StoreError::not_found("group", group)),
        },
        None => {
            sqlx::query("INSERT INTO node_groups (name, description, project, created_at) VALUES ($1, '', $2, $3)")
                .bind(group)
                .bind(node_project)
                .bind(crate::now_millis())
                .execute(connection)
                .await
                .map_err(StoreError::query("creating a group"))?;
            Ok(())
        }
    }
}

async fn members_of(connection: &mut AnyConnection, group: &str, scope: &ProjectScope) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT n.name, n.project FROM group_members m JOIN nodes n ON n.id = m.node_id WHERE m.group_name = $1 ORDER BY n.name",
    )
    .bind(group)
    .fetch_all(connection)
    .await
    .map_err(StoreError::query("reading group members"))?;
    let mut members = Vec::with_capacity(rows.len());
    for row in rows {
        let project: Option<String> = row.try_get("project").map_err(StoreError::query("reading group members"))?;
        // A global group may hold nodes of several tenants: each sees only its own.
        if crate::nodes_visible(scope, project.as_deref()) {
            members.push(row.try_get("name").map_err(StoreError::query("reading group members"))?);
        }
    }
    Ok(members)
}

async fn group_view(connection: &mut AnyConnection, row: GroupRow, scope: &ProjectScope) -> Result<Group, StoreError> {
    let members = members_of(connection, &row.name, scope).await?;
    Ok(Group { name: row.name, description: row.description, project: row.project, members, created_at: crate::timestamp(row.created_at) })
}

/// Replaces the member list of a group; every node must be writable by `scope` and
/// compatible with the group's project.
async fn set_members(connection: &mut AnyConnection, group: &GroupRow, members: &[String], scope: &ProjectScope) -> Result<(), StoreError> {
    let mut node_ids = Vec::with_capacity(members.len());
    for key in members {
        let snapshot = find_node(connection, key).await?;
        let node = match snapshot {
            Some(snapshot) if crate::nodes_visible(scope, snapshot.node.project.as_deref()) => snapshot.node,
            _ => return Err(StoreError::not_found("node", key)),
        };
        if group.project.is_some() && group.project != node.project {
            return Err(StoreError::conflict(format!(
                "node '{}' is not in project '{}', which owns group '{}'",
                node.name,
                group.project.as_deref().unwrap_or_default(),
                group.name
            )));
        }
        node_ids.push(node.id);
    }
    // Members the caller cannot see stay: a tenant editing a global group must not be able
    // to remove another tenant's nodes from it.
    let current = sqlx::query("SELECT m.node_id, n.project FROM group_members m JOIN nodes n ON n.id = m.node_id WHERE m.group_name = $1")
        .bind(&group.name)
        .fetch_all(&mut *connection)
        .await
        .map_err(StoreError::query("reading group members"))?;
    for row in current {
        let node_id: String = row.try_get("node_id").map_err(StoreError::query("reading group members"))?;
        let project: Option<String> = row.try_get("project").map_err(StoreError::query("reading group members"))?;
        if crate::nodes_visible(scope, project.as_deref()) && !node_ids.contains(&node_id) {
            sqlx::query("DELETE FROM group_members WHERE group_name = $1 AND node_id = $2")
                .bind(&group.name)
                .bind(&node_id)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("removing a group member"))?;
        }
    }
    for node_id in node_ids {
        sqlx::query(
            "INSERT INTO group_members (group_name, node_id, position) \
             SELECT $1, $2, COALESCE(MAX(position), -1) + 1 FROM group_members WHERE node_id = $2 \
             ON CONFLICT (group_name, node_id) DO NOTHING",
        )
        .bind(&group.name)
        .bind(&node_id)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("adding a group member"))?;
    }
    Ok(())
}

impl Store {
    /// Creates a group. `scope` is the caller's write scope: members may create groups only
    /// in their own projects, and only admins create global ones.
    pub async fn create_group(
        &self,
        actor: &str,
        name: &str,
        description: &str,
        project: Option<&str>,
        members: &[String],
        scope: &ProjectScope,
    ) -> Result<Group, StoreError> {
        if !writable(scope, project) {
            return Err(match project {
                Some(project) => StoreError::not_found("project", project),
                None => StoreError::Invalid { message: "only administrators create groups without a project; pass a project".to_owned() },
            });
        }
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        if let Some(project) = project
            && !crate::tenancy::project_exists(connection, project).await?
        {
            return Err(StoreError::not_found("project", project));
        }
        if group_row(connection, name).await?.is_some() {
            return Err(StoreError::conflict(format!("group '{name}' already exists")));
        }
        let row = GroupRow {
            name: name.to_owned(),
            description: description.to_owned(),
            project: project.map(str::to_owned),
            created_at: crate::now_millis(),
        };
        sqlx::query("INSERT INTO node_groups (name, description, project, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&row.name)
            .bind(&row.description)
            .bind(row.project.as_deref())
            .bind(row.created_at)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("creating a group"))?;
        set_members(connection, &row, members, scope).await?;
        let group = group_view(connection, row, &ProjectScope::All).await?;
        let after = serde_json::to_value(&group).ok();
        record(connection, NewEvent { actor, action: "group.create", target_kind: "group", target: name, project, before: None, after })
            .await?;
        transaction.commit().await?;
        Ok(group)
    }

    pub async fn get_group(&self, name: &str, scope: &ProjectScope) -> Result<Group, StoreError> {
        let mut connection = self.read().await?;
        match group_row(&mut connection, name).await? {
            Some(row) if visible(scope, row.project.as_deref()) => group_view(&mut connection, row, scope).await,
            _ => Err(StoreError::not_found("group", name)),
        }
    }

    pub async fn list_groups(&self, scope: &ProjectScope) -> Result<Vec<Group>, StoreError> {
        let mut connection = self.read().await?;
        let names: Vec<String> = sqlx::query("SELECT name FROM node_groups ORDER BY name")
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("listing groups"))?
            .iter()
            .map(|row| row.try_get("name"))
            .collect::<Result<_, _>>()
            .map_err(StoreError::query("listing groups"))?;
        let mut groups = Vec::new();
        for name in names {
            if let Some(row) = group_row(&mut connection, &name).await?
                && visible(scope, row.project.as_deref())
            {
                groups.push(group_view(&mut connection, row, scope).await?);
            }
        }
        Ok(groups)
    }

    /// `read_scope` decides whether the group is found at all; `write_scope` whether it may
    /// be changed, so a reader gets "forbidden" for a group it can see.
    pub async fn update_group(
        &self,
        actor: &str,
        name: &str,
        description: Option<&str>,
        members: Option<&[String]>,
        write_scope: &ProjectScope,
    ) -> Result<Group, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let row = match group_row(connection, name).await? {
            Some(row) if writable(write_scope, row.project.as_deref()) => row,
            _ => return Err(StoreError::not_found("group", name)),
        };
        let before = group_view(connection, clone_row(&row), &ProjectScope::All).await?;
        if let Some(description) = description {
            sqlx::query("UPDATE node_groups SET description = $1 WHERE name = $2")
                .bind(description)
                .bind(name)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("updating a group"))?;
        }
        if let Some(members) = members {
            set_members(connection, &row, members, write_scope).await?;
        }
        let row = group_row(connection, name).await?.ok_or_else(|| StoreError::not_found("group", name))?;
        let project = row.project.clone();
        let after = group_view(connection, row, &ProjectScope::All).await?;
        if after != before {
            let (old, new) = (serde_json::to_value(&before).ok(), serde_json::to_value(&after).ok());
            record(
                connection,
                NewEvent {
                    actor,
                    action: "group.update",
                    target_kind: "group",
                    target: name,
                    project: project.as_deref(),
                    before: old,
                    after: new,
                },
            )
            .await?;
        }
        transaction.commit().await?;
        Ok(after)
    }

    pub async fn delete_group(&self, actor: &str, name: &str, write_scope: &ProjectScope) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let row = match group_row(connection, name).await? {
            Some(row) if writable(write_scope, row.project.as_deref()) => row,
            _ => return Err(StoreError::not_found("group", name)),
        };
        let project = row.project.clone();
        let before = group_view(connection, row, &ProjectScope::All).await?;
        sqlx::query("DELETE FROM group_members WHERE group_name = $1")
            .bind(name)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("deleting a group"))?;
        sqlx::query("DELETE FROM node_groups WHERE name = $1")
            .bind(name)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("deleting a group"))?;
        let old = serde_json::to_value(&before).ok();
        record(
            connection,
            NewEvent {
                actor,
                action: "group.delete",
                target_kind: "group",
                target: name,
                project: project.as_deref(),
                before: old,
                after: None,
            },
        )
        .await?;
        transaction.commit().await
    }
}

fn clone_row(row: &GroupRow) -> GroupRow {
    GroupRow { name: row.name.clone(), description: row.description.clone(), project: row.project.clone(), created_at: row.created_at }
}
