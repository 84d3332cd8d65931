//! Node groups: named sets of nodes (for boot parameters and cloud-init), global or owned by
//! a project.
//!
//! A group's name is unique within its project; the group is keyed by its
//! [`ScopedName`] (`PROJECT/NAME`, or `NAME` without a project), which is what members,
//! cloud-init configs, boot targets and a node's `groups` hold.

use kiln_auth::ProjectScope;
use kiln_types::api::Group;
use kiln_types::scoped_name::{NameReference, ScopedName};
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};
use crate::nodes::find_node;
use crate::{Store, StoreError};

pub(crate) struct GroupRow {
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) project: Option<String>,
    pub(crate) created_at: i64,
}

impl GroupRow {
    pub(crate) fn scoped_name(&self) -> ScopedName {
        ScopedName::new(self.project.as_deref(), &self.name)
    }
}

const GROUP_COLUMNS: &str = "key, name, description, project, created_at";

fn group_from_row(row: &sqlx::any::AnyRow) -> Result<GroupRow, StoreError> {
    let read = || StoreError::query("reading a group");
    Ok(GroupRow {
        key: row.try_get("key").map_err(read())?,
        name: row.try_get("name").map_err(read())?,
        description: row.try_get("description").map_err(read())?,
        project: row.try_get("project").map_err(read())?,
        created_at: row.try_get("created_at").map_err(read())?,
    })
}

/// The group with exactly this identity.
pub(crate) async fn group_row(connection: &mut AnyConnection, group: &ScopedName) -> Result<Option<GroupRow>, StoreError> {
    let row = sqlx::query(&format!("SELECT {GROUP_COLUMNS} FROM node_groups WHERE key = $1"))
        .bind(group.key())
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("reading a group"))?;
    row.as_ref().map(group_from_row).transpose()
}

/// The group `reference` names for a caller with `scope`, among the groups it sees (any
/// other is exactly like a missing one): `PROJECT/NAME` names that project's group; a bare
/// `NAME` the caller's own project's group of that name, else the one without a project,
/// else (for administrators) the only project group of that name. Two candidates at one
/// step are ambiguous, and the answer names them.
pub(crate) async fn resolve_group(
    connection: &mut AnyConnection,
    reference: &NameReference,
    scope: &ProjectScope,
) -> Result<Option<GroupRow>, StoreError> {
    let rows = sqlx::query(&format!("SELECT {GROUP_COLUMNS} FROM node_groups WHERE name = $1 ORDER BY key"))
        .bind(&reference.name)
        .fetch_all(&mut *connection)
        .await
        .map_err(StoreError::query("reading a group"))?;
    let mut visible_groups = Vec::new();
    for row in &rows {
        let group = group_from_row(row)?;
        if visible(scope, group.project.as_deref()) {
            visible_groups.push(group);
        }
    }
    crate::resolve::pick_named("group", reference, visible_groups, scope, GroupRow::scoped_name)
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

/// The groups a node of `node_project` may mean by `reference`, most specific first: named
/// with its project, only that project's group, and only if it is the node's own (another
/// project's group is as missing as an absent one); a bare name, the node's project's group,
/// then the group without a project.
fn group_candidates(reference: &NameReference, node_project: Option<&str>) -> Result<Vec<ScopedName>, StoreError> {
    let own = ScopedName::new(node_project, &reference.name);
    match &reference.project {
        Some(project) if Some(project.as_str()) == node_project => Ok(vec![own]),
        Some(_) => Err(StoreError::not_found("group", reference.to_string())),
        None if node_project.is_some() => Ok(vec![own, ScopedName::new(None, &reference.name)]),
        None => Ok(vec![own]),
    }
}

fn parse_group_reference(reference: &str) -> Result<NameReference, StoreError> {
    NameReference::parse("groups", reference).map_err(|error| StoreError::Invalid { message: error.to_string() })
}

/// The key of the existing group a node of `node_project` means by `reference` (see
/// [`group_candidates`]), if there is one.
pub(crate) async fn existing_group_for(
    connection: &mut AnyConnection,
    reference: &str,
    node_project: Option<&str>,
) -> Result<Option<String>, StoreError> {
    for candidate in group_candidates(&parse_group_reference(reference)?, node_project)? {
        if group_row(connection, &candidate).await?.is_some() {
            return Ok(Some(candidate.key()));
        }
    }
    Ok(None)
}

/// The key of the group a node of `node_project` joins when its `groups` say `reference`:
/// the existing group it means (see [`group_candidates`]), else a new group owned by the
/// node's project, as static discovery creates them.
pub(crate) async fn ensure_group_for(
    connection: &mut AnyConnection,
    reference: &str,
    node_project: Option<&str>,
) -> Result<String, StoreError> {
    if let Some(key) = existing_group_for(connection, reference, node_project).await? {
        return Ok(key);
    }
    let created = ScopedName::new(node_project, &parse_group_reference(reference)?.name);
    // Another writer may create it meanwhile (PostgreSQL): theirs is the same group.
    sqlx::query(
        "INSERT INTO node_groups (key, name, project, description, created_at) VALUES ($1, $2, $3, '', $4) ON CONFLICT (key) DO NOTHING",
    )
    .bind(created.key())
    .bind(&created.name)
    .bind(created.project.as_deref())
    .bind(crate::now_millis())
    .execute(connection)
    .await
    .map_err(StoreError::query("creating a group"))?;
    Ok(created.key())
}

async fn members_of(connection: &mut AnyConnection, group: &str, scope: &ProjectScope) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT n.name, n.project FROM group_members m JOIN nodes n ON n.id = m.node_id WHERE m.group_key = $1 ORDER BY n.name",
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
    let members = members_of(connection, &row.key, scope).await?;
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
                group.key
            )));
        }
        node_ids.push(node.id);
    }
    // Members the caller cannot see stay: a tenant editing a global group must not be able
    // to remove another tenant's nodes from it.
    let current = sqlx::query("SELECT m.node_id, n.project FROM group_members m JOIN nodes n ON n.id = m.node_id WHERE m.group_key = $1")
        .bind(&group.key)
        .fetch_all(&mut *connection)
        .await
        .map_err(StoreError::query("reading group members"))?;
    for row in current {
        let node_id: String = row.try_get("node_id").map_err(StoreError::query("reading group members"))?;
        let project: Option<String> = row.try_get("project").map_err(StoreError::query("reading group members"))?;
        if crate::nodes_visible(scope, project.as_deref()) && !node_ids.contains(&node_id) {
            sqlx::query("DELETE FROM group_members WHERE group_key = $1 AND node_id = $2")
                .bind(&group.key)
                .bind(&node_id)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("removing a group member"))?;
        }
    }
    for node_id in node_ids {
        sqlx::query(
            "INSERT INTO group_members (group_key, node_id, position) \
             SELECT $1, $2, COALESCE(MAX(position), -1) + 1 FROM group_members WHERE node_id = $2 \
             ON CONFLICT (group_key, node_id) DO NOTHING",
        )
        .bind(&group.key)
        .bind(&node_id)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("adding a group member"))?;
    }
    Ok(())
}

impl Store {
    /// Creates a group. `scope` is the caller's write scope: members may create groups only
    /// in their own projects, and only admins create global ones. The name need only be
    /// free in its project.
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
        let identity = ScopedName::new(project, name);
        if group_row(connection, &identity).await?.is_some() {
            return Err(StoreError::conflict(format!("group '{identity}' already exists")));
        }
        let row = GroupRow {
            key: identity.key(),
            name: name.to_owned(),
            description: description.to_owned(),
            project: project.map(str::to_owned),
            created_at: crate::now_millis(),
        };
        sqlx::query("INSERT INTO node_groups (key, name, project, description, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&row.key)
            .bind(&row.name)
            .bind(row.project.as_deref())
            .bind(&row.description)
            .bind(row.created_at)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("creating a group"))?;
        set_members(connection, &row, members, scope).await?;
        let target = row.key.clone();
        let group = group_view(connection, row, &ProjectScope::All).await?;
        let after = serde_json::to_value(&group).ok();
        record(connection, NewEvent { actor, action: "group.create", target_kind: "group", target: &target, project, before: None, after })
            .await?;
        transaction.commit().await?;
        Ok(group)
    }

    pub async fn get_group(&self, reference: &NameReference, scope: &ProjectScope) -> Result<Group, StoreError> {
        let mut connection = self.read().await?;
        match resolve_group(&mut connection, reference, scope).await? {
            Some(row) => group_view(&mut connection, row, scope).await,
            None => Err(StoreError::not_found("group", reference.to_string())),
        }
    }

    pub async fn list_groups(&self, scope: &ProjectScope) -> Result<Vec<Group>, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query(&format!("SELECT {GROUP_COLUMNS} FROM node_groups ORDER BY name, key"))
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("listing groups"))?;
        let mut groups = Vec::new();
        for row in &rows {
            let row = group_from_row(row)?;
            if visible(scope, row.project.as_deref()) {
                groups.push(group_view(&mut connection, row, scope).await?);
            }
        }
        Ok(groups)
    }

    /// `group` is the exact identity the caller resolved (with its read scope, so that a
    /// reader gets "forbidden" for a group it can see); `write_scope` decides whether it
    /// may be changed.
    pub async fn update_group(
        &self,
        actor: &str,
        group: &ScopedName,
        description: Option<&str>,
        members: Option<&[String]>,
        write_scope: &ProjectScope,
    ) -> Result<Group, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let row = match group_row(connection, group).await? {
            Some(row) if writable(write_scope, row.project.as_deref()) => row,
            _ => return Err(StoreError::not_found("group", group.key())),
        };
        let before = group_view(connection, clone_row(&row), &ProjectScope::All).await?;
        if let Some(description) = description {
            sqlx::query("UPDATE node_groups SET description = $1 WHERE key = $2")
                .bind(description)
                .bind(&row.key)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("updating a group"))?;
        }
        if let Some(members) = members {
            set_members(connection, &row, members, write_scope).await?;
        }
        let row = group_row(connection, group).await?.ok_or_else(|| StoreError::not_found("group", group.key()))?;
        let project = row.project.clone();
        let after = group_view(connection, row, &ProjectScope::All).await?;
        if after != before {
            let (old, new) = (serde_json::to_value(&before).ok(), serde_json::to_value(&after).ok());
            let target = group.key();
            record(
                connection,
                NewEvent {
                    actor,
                    action: "group.update",
                    target_kind: "group",
                    target: &target,
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

    pub async fn delete_group(&self, actor: &str, group: &ScopedName, write_scope: &ProjectScope) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let row = match group_row(connection, group).await? {
            Some(row) if writable(write_scope, row.project.as_deref()) => row,
            _ => return Err(StoreError::not_found("group", group.key())),
        };
        let project = row.project.clone();
        let key = row.key.clone();
        let before = group_view(connection, row, &ProjectScope::All).await?;
        for statement in ["DELETE FROM group_members WHERE group_key = $1", "DELETE FROM node_groups WHERE key = $1"] {
            sqlx::query(statement).bind(&key).execute(&mut *connection).await.map_err(StoreError::query("deleting a group"))?;
        }
        let old = serde_json::to_value(&before).ok();
        record(
            connection,
            NewEvent {
                actor,
                action: "group.delete",
                target_kind: "group",
                target: &key,
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
    GroupRow {
        key: row.key.clone(),
        name: row.name.clone(),
        description: row.description.clone(),
        project: row.project.clone(),
        created_at: row.created_at,
    }
}
