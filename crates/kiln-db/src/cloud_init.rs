//! Cloud-init data: cluster defaults, group configs and per-node meta-data, secrets and
//! tokens. Every change records an event, which is how each replica's inventory view learns
//! of it (`cloud_init` for defaults and groups, `cloud_init_node` for one node).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_auth::ProjectScope;
use kiln_types::cloud_init::{
    CloudConfigFile, CloudInitDefaults, CloudInitGroup, CloudInitGroupSpec, CloudInitNode, CloudInitNodeInput, ContentEncoding,
};
use serde_json::{Map, Value};
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};
use crate::groups::{GroupRow, resolve_group, visible, writable};
use crate::{Store, StoreError};
use kiln_types::scoped_name::{NameReference, ScopedName};

/// The defaults row that applies to every node.
const CLUSTER_SCOPE: &str = "cluster";

/// A group as cloud-init uses it: every node group has one, with or without a config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloudInitGroupRecord {
    pub description: String,
    pub project: Option<String>,
    pub meta_data: Option<Map<String, Value>>,
    pub content: Option<String>,
}

/// A node's cloud-init data, secrets opened.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloudInitNodeRecord {
    pub meta_data: Map<String, Value>,
    pub secrets: Map<String, Value>,
    pub token_hash: Option<String>,
    pub generation: u64,
}

/// All cloud-init data, as the inventory view holds it.
#[derive(Debug, Clone, Default)]
pub struct CloudInitData {
    pub defaults: Arc<CloudInitDefaults>,
    pub groups: Arc<HashMap<String, CloudInitGroupRecord>>,
    /// By node id.
    pub nodes: HashMap<String, Arc<CloudInitNodeRecord>>,
    /// Node ids by token hash.
    pub tokens: HashMap<String, String>,
}

impl CloudInitData {
    pub(crate) fn set_node(&mut self, node_id: &str, record: Option<CloudInitNodeRecord>) {
        if let Some(old) = self.nodes.remove(node_id)
            && let Some(hash) = &old.token_hash
        {
            self.tokens.remove(hash);
        }
        if let Some(record) = record {
            if let Some(hash) = &record.token_hash {
                self.tokens.insert(hash.clone(), node_id.to_owned());
            }
            self.nodes.insert(node_id.to_owned(), Arc::new(record));
        }
    }
}

fn json_map(text: &str, what: &str) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::corrupt(what, error))
}

fn to_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("JSON values always serialize")
}

impl Store {
    fn open_secrets(&self, sealed: Option<&str>) -> Result<Map<String, Value>, StoreError> {
        match sealed {
            None => Ok(Map::new()),
            Some(sealed) => {
                let text = self
                    .secrets
                    .open(sealed)
                    .map_err(|error| StoreError::corrupt("a node's cloud-init secrets (cannot be opened with this key)", error))?;
                json_map(&text, "cloud-init secrets")
            }
        }
    }

    pub async fn cloud_init_defaults(&self) -> Result<CloudInitDefaults, StoreError> {
        let mut connection = self.read().await?;
        defaults_in(&mut connection).await
    }

    /// Replaces the cluster defaults (`kiln cloud-init defaults set`).
    pub async fn set_cloud_init_defaults(&self, actor: &str, defaults: &CloudInitDefaults) -> Result<CloudInitDefaults, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let before = defaults_in(connection).await?;
        sqlx::query(
            "INSERT INTO cloud_init_defaults (scope, data, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (scope) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        )
        .bind(CLUSTER_SCOPE)
        .bind(to_text(defaults))
        .bind(crate::now_millis())
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("setting cloud-init defaults"))?;
        let event = NewEvent {
            actor,
            action: "cloud_init.defaults.set",
            target_kind: "cloud_init",
            target: "defaults",
            project: None,
            before: serde_json::to_value(&before).ok(),
            after: serde_json::to_value(defaults).ok(),
        };
        record(connection, event).await?;
        transaction.commit().await?;
        Ok(defaults.clone())
    }

    /// Sets the configs of `specs`, all in one transaction, creating each group that does not
    /// exist (owned by `spec.project`, or global, which only administrators may create).
    pub async fn put_cloud_init_groups(
        &self,
        actor: &str,
        specs: &[CloudInitGroupSpec],
        write_scope: &ProjectScope,
    ) -> Result<Vec<CloudInitGroup>, StoreError> {
        let mut transaction = self.write().await?;
        let mut groups = Vec::with_capacity(specs.len());
        for spec in specs {
            groups.push(put_group(transaction.connection(), actor, spec, write_scope).await?);
        }
        transaction.commit().await?;
        Ok(groups)
    }

    /// The config of the group `reference` names among those `read_scope` sees.
    pub async fn get_cloud_init_group(&self, reference: &NameReference, read_scope: &ProjectScope) -> Result<CloudInitGroup, StoreError> {
        let mut connection = self.read().await?;
        let missing = || StoreError::not_found("cloud-init group", reference.to_string());
        let group = resolve_group(&mut connection, reference, read_scope).await?.ok_or_else(missing)?;
        group_config_in(&mut connection, &group.key).await?.ok_or_else(missing)
    }

    pub async fn list_cloud_init_groups(&self, read_scope: &ProjectScope) -> Result<Vec<CloudInitGroup>, StoreError> {
        let mut connection = self.read().await?;
        let keys: Vec<String> =
            sqlx::query("SELECT c.group_key FROM cloud_init_groups c JOIN node_groups g ON g.key = c.group_key ORDER BY g.name, g.key")
                .fetch_all(&mut *connection)
                .await
                .map_err(StoreError::query("listing cloud-init groups"))?
                .iter()
                .map(|row| row.try_get("group_key"))
                .collect::<Result<_, _>>()
                .map_err(StoreError::query("listing cloud-init groups"))?;
        let mut groups = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(group) = group_config_in(&mut connection, &key).await?
                && visible(read_scope, group.project.as_deref())
            {
                groups.push(group);
            }
        }
        Ok(groups)
    }

    /// Removes a group's cloud-init config; the group itself stays.
    pub async fn delete_cloud_init_group(
        &self,
        actor: &str,
        reference: &NameReference,
        write_scope: &ProjectScope,
    ) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let missing = || StoreError::not_found("cloud-init group", reference.to_string());
        let group = match resolve_group(connection, reference, write_scope).await? {
            Some(group) if writable(write_scope, group.project.as_deref()) => group,
            _ => return Err(missing()),
        };
        let before = group_config_in(connection, &group.key).await?.ok_or_else(missing)?;
        sqlx::query("DELETE FROM cloud_init_groups WHERE group_key = $1")
            .bind(&group.key)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("deleting a group's cloud-init config"))?;
        let event = NewEvent {
            actor,
            action: "cloud_init.group.delete",
            target_kind: "cloud_init",
            target: &group.key,
            project: before.project.as_deref(),
            before: serde_json::to_value(&before).ok(),
            after: None,
        };
        record(connection, event).await?;
        transaction.commit().await
    }

    /// Sets the data of every listed node in one transaction: each entry replaces the node's
    /// meta-data overrides, and its secrets when it has `secret-data`.
    pub async fn set_cloud_init_nodes(
        &self,
        actor: &str,
        inputs: &[CloudInitNodeInput],
        write_scope: &ProjectScope,
    ) -> Result<Vec<CloudInitNode>, StoreError> {
        let mut transaction = self.write().await?;
        let mut nodes = Vec::with_capacity(inputs.len());
        for input in inputs {
            let node = self
                .set_node_data(transaction.connection(), actor, &input.id, &input.meta_data, input.secret_data.as_ref(), write_scope)
                .await?;
            nodes.push(node);
        }
        transaction.commit().await?;
        Ok(nodes)
    }

    async fn set_node_data(
        &self,
        connection: &mut AnyConnection,
        actor: &str,
        node_key: &str,
        meta_data: &Map<String, Value>,
        secrets: Option<&Map<String, Value>>,
        write_scope: &ProjectScope,
    ) -> Result<CloudInitNode, StoreError> {
        let node = writable_node(connection, node_key, write_scope).await?;
        let before = node_row_in(connection, &node.id).await?;
        let sealed = match secrets {
            Some(secrets) if secrets.is_empty() => None,
            Some(secrets) => Some(self.secrets.seal(&to_text(secrets))),
            None => before.as_ref().and_then(|row| row.sealed_secrets.clone()),
        };
        sqlx::query(
            "INSERT INTO cloud_init_nodes (node_id, meta_data, secrets, token_hash, generation, updated_at) \
             VALUES ($1, $2, $3, NULL, 0, $4) \
             ON CONFLICT (node_id) DO UPDATE SET meta_data = excluded.meta_data, secrets = excluded.secrets, \
             updated_at = excluded.updated_at",
        )
        .bind(&node.id)
        .bind(to_text(meta_data))
        .bind(sealed.as_deref())
        .bind(crate::now_millis())
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("setting a node's cloud-init data"))?;
        let after = node_row_in(connection, &node.id).await?.ok_or_else(|| StoreError::not_found("node", node_key))?;
        let view = |row: &NodeRow| self.node_view(&node.name, row);
        let event = NewEvent {
            actor,
            action: "cloud_init.node.set",
            target_kind: "cloud_init_node",
            target: &node.id,
            project: node.project.as_deref(),
            before: before.as_ref().and_then(|row| serde_json::to_value(view(row)).ok()),
            after: serde_json::to_value(view(&after)).ok(),
        };
        record(connection, event).await?;
        Ok(view(&after))
    }

    pub async fn get_cloud_init_node(&self, node_key: &str, read_scope: &ProjectScope) -> Result<CloudInitNode, StoreError> {
        let mut connection = self.read().await?;
        let node = match crate::nodes::find_node(&mut connection, node_key).await? {
            Some(snapshot) if crate::nodes_visible(read_scope, snapshot.node.project.as_deref()) => snapshot.node,
            _ => return Err(StoreError::not_found("node", node_key)),
        };
        let row = node_row_in(&mut connection, &node.id).await?.unwrap_or_default();
        Ok(self.node_view(&node.name, &row))
    }

    /// Mints the node's cloud-init token, replacing any earlier one. Returns the token,
    /// which is not kept: only its hash is.
    pub async fn mint_cloud_init_token(
        &self,
        actor: &str,
        node_key: &str,
        write_scope: &ProjectScope,
    ) -> Result<(String, String), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let node = writable_node(connection, node_key, write_scope).await?;
        let token = kiln_auth::mint_token();
        sqlx::query(
            "INSERT INTO cloud_init_nodes (node_id, meta_data, secrets, token_hash, generation, updated_at) \
             VALUES ($1, '{}', NULL, $2, 0, $3) \
             ON CONFLICT (node_id) DO UPDATE SET token_hash = excluded.token_hash, updated_at = excluded.updated_at",
        )
        .bind(&node.id)
        .bind(kiln_auth::hash_token(&token))
        .bind(crate::now_millis())
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("minting a node's cloud-init token"))?;
        let event = NewEvent {
            actor,
            action: "cloud_init.node.token",
            target_kind: "cloud_init_node",
            target: &node.id,
            project: node.project.as_deref(),
            before: None,
            after: Some(serde_json::json!({ "node": node.name })),
        };
        record(connection, event).await?;
        transaction.commit().await?;
        Ok((node.name, token))
    }

    /// Every group and every node's data: what the inventory view serves from.
    pub(crate) async fn load_cloud_init(&self) -> Result<CloudInitData, StoreError> {
        let mut connection = self.read().await?;
        let defaults = defaults_in(&mut connection).await?;
        let groups = groups_in(&mut connection).await?;
        let rows = sqlx::query("SELECT node_id, meta_data, secrets, token_hash, generation FROM cloud_init_nodes")
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("loading cloud-init node data"))?;
        let mut data = CloudInitData { defaults: Arc::new(defaults), groups: Arc::new(groups), ..Default::default() };
        for row in rows {
            let node_id: String = row.try_get("node_id").map_err(StoreError::query("loading cloud-init node data"))?;
            let record = self.node_record(&node_row(&row)?)?;
            data.set_node(&node_id, Some(record));
        }
        Ok(data)
    }

    /// Defaults and groups only: what a `cloud_init` event may have changed.
    pub(crate) async fn load_cloud_init_shared(&self) -> Result<(CloudInitDefaults, HashMap<String, CloudInitGroupRecord>), StoreError> {
        let mut connection = self.read().await?;
        Ok((defaults_in(&mut connection).await?, groups_in(&mut connection).await?))
    }

    /// One node's data: what a `cloud_init_node` event changed.
    pub(crate) async fn load_cloud_init_node(&self, node_id: &str) -> Result<Option<CloudInitNodeRecord>, StoreError> {
        let mut connection = self.read().await?;
        node_row_in(&mut connection, node_id).await?.map(|row| self.node_record(&row)).transpose()
    }

    fn node_record(&self, row: &NodeRow) -> Result<CloudInitNodeRecord, StoreError> {
        Ok(CloudInitNodeRecord {
            meta_data: row.meta_data.clone(),
            secrets: self.open_secrets(row.sealed_secrets.as_deref())?,
            token_hash: row.token_hash.clone(),
            generation: row.generation,
        })
    }

    fn node_view(&self, node_name: &str, row: &NodeRow) -> CloudInitNode {
        let secret_keys =
            self.open_secrets(row.sealed_secrets.as_deref()).map(|secrets| secrets.keys().cloned().collect()).unwrap_or_default();
        CloudInitNode { node: node_name.to_owned(), meta_data: row.meta_data.clone(), secret_keys, has_token: row.token_hash.is_some() }
    }
}

async fn put_group(
    connection: &mut AnyConnection,
    actor: &str,
    spec: &CloudInitGroupSpec,
    write_scope: &ProjectScope,
) -> Result<CloudInitGroup, StoreError> {
    // Without a project, the name is resolved among the groups the caller may see, so that
    // another project's group of that name is exactly like none.
    let reference = NameReference { project: spec.project.clone(), name: spec.name.clone() };
    let group = match resolve_group(connection, &reference, write_scope).await? {
        Some(row) if writable(write_scope, row.project.as_deref()) => row,
        Some(_) => return Err(StoreError::not_found("group", reference.to_string())),
        None => create_group_for_config(connection, spec, write_scope).await?,
    };
    let before = group_config_in(connection, &group.key).await?;
    if let Some(description) = &spec.description {
        sqlx::query("UPDATE node_groups SET description = $1 WHERE key = $2")
            .bind(description)
            .bind(&group.key)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("setting a group's description"))?;
    }
    sqlx::query(
        "INSERT INTO cloud_init_groups (group_key, meta_data, content, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (group_key) DO UPDATE SET meta_data = excluded.meta_data, content = excluded.content, \
         updated_at = excluded.updated_at",
    )
    .bind(&group.key)
    .bind(to_text(&spec.meta_data))
    .bind(spec.content.as_deref())
    .bind(crate::now_millis())
    .execute(&mut *connection)
    .await
    .map_err(StoreError::query("setting a group's cloud-init config"))?;
    let after = group_config_in(connection, &group.key).await?.ok_or_else(|| StoreError::not_found("group", group.key.clone()))?;
    let event = NewEvent {
        actor,
        action: "cloud_init.group.set",
        target_kind: "cloud_init",
        target: &group.key,
        project: group.project.as_deref(),
        before: before.and_then(|group| serde_json::to_value(group).ok()),
        after: serde_json::to_value(&after).ok(),
    };
    record(connection, event).await?;
    Ok(after)
}

/// Creates the group a cloud-init config names when it does not exist yet: in the named
/// project, or without one (only administrators).
async fn create_group_for_config(
    connection: &mut AnyConnection,
    spec: &CloudInitGroupSpec,
    write_scope: &ProjectScope,
) -> Result<GroupRow, StoreError> {
    if !writable(write_scope, spec.project.as_deref()) {
        return Err(match &spec.project {
            Some(project) => StoreError::not_found("project", project),
            None => StoreError::Invalid {
                message: format!(
                    "group '{}' does not exist and only administrators create groups without a project; pass a project",
                    spec.name
                ),
            },
        });
    }
    if let Some(project) = &spec.project
        && !crate::tenancy::project_exists(connection, project).await?
    {
        return Err(StoreError::not_found("project", project));
    }
    let identity = ScopedName::new(spec.project.as_deref(), &spec.name);
    let row = GroupRow {
        key: identity.key(),
        name: spec.name.clone(),
        description: String::new(),
        project: spec.project.clone(),
        created_at: crate::now_millis(),
    };
    // Another writer may create it meanwhile (PostgreSQL): theirs is the same group.
    sqlx::query(
        "INSERT INTO node_groups (key, name, project, description, created_at) VALUES ($1, $2, $3, '', $4) ON CONFLICT (key) DO NOTHING",
    )
    .bind(&row.key)
    .bind(&row.name)
    .bind(row.project.as_deref())
    .bind(row.created_at)
    .execute(&mut *connection)
    .await
    .map_err(StoreError::query("creating a group"))?;
    Ok(row)
}

async fn writable_node(
    connection: &mut AnyConnection,
    key: &str,
    write_scope: &ProjectScope,
) -> Result<kiln_types::node::Node, StoreError> {
    match crate::nodes::find_node(connection, key).await? {
        Some(snapshot) if crate::nodes_visible(write_scope, snapshot.node.project.as_deref()) => Ok(snapshot.node),
        _ => Err(StoreError::not_found("node", key)),
    }
}

async fn defaults_in(connection: &mut AnyConnection) -> Result<CloudInitDefaults, StoreError> {
    let row = sqlx::query("SELECT data FROM cloud_init_defaults WHERE scope = $1")
        .bind(CLUSTER_SCOPE)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("reading cloud-init defaults"))?;
    match row {
        None => Ok(CloudInitDefaults::default()),
        Some(row) => {
            let text: String = row.try_get("data").map_err(StoreError::query("reading cloud-init defaults"))?;
            serde_json::from_str(&text).map_err(|error| StoreError::corrupt("cloud-init defaults", error))
        }
    }
}

async fn groups_in(connection: &mut AnyConnection) -> Result<HashMap<String, CloudInitGroupRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT g.key, g.description, g.project, c.meta_data, c.content \
         FROM node_groups g LEFT JOIN cloud_init_groups c ON c.group_key = g.key",
    )
    .fetch_all(connection)
    .await
    .map_err(StoreError::query("loading groups for cloud-init"))?;
    let mut groups = HashMap::with_capacity(rows.len());
    for row in rows {
        let read = || StoreError::query("loading groups for cloud-init");
        let key: String = row.try_get("key").map_err(read())?;
        let meta_data: Option<String> = row.try_get("meta_data").map_err(read())?;
        let record = CloudInitGroupRecord {
            description: row.try_get("description").map_err(read())?,
            project: row.try_get("project").map_err(read())?,
            meta_data: meta_data.map(|text| json_map(&text, "a group's cloud-init meta-data")).transpose()?,
            content: row.try_get("content").map_err(read())?,
        };
        groups.insert(key, record);
    }
    Ok(groups)
}

async fn group_config_in(connection: &mut AnyConnection, key: &str) -> Result<Option<CloudInitGroup>, StoreError> {
    let row = sqlx::query(
        "SELECT g.name, g.description, g.project, c.meta_data, c.content \
         FROM cloud_init_groups c JOIN node_groups g ON g.key = c.group_key WHERE c.group_key = $1",
    )
    .bind(key)
    .fetch_optional(connection)
    .await
    .map_err(StoreError::query("reading a group's cloud-init config"))?;
    let Some(row) = row else { return Ok(None) };
    let read = || StoreError::query("reading a group's cloud-init config");
    let meta_data: String = row.try_get("meta_data").map_err(read())?;
    let content: Option<String> = row.try_get("content").map_err(read())?;
    Ok(Some(CloudInitGroup {
        name: row.try_get("name").map_err(read())?,
        description: row.try_get("description").map_err(read())?,
        meta_data: json_map(&meta_data, "a group's cloud-init meta-data")?,
        file: content.map(|content| CloudConfigFile { encoding: ContentEncoding::Plain, content }),
        project: row.try_get("project").map_err(read())?,
    }))
}

#[derive(Debug, Default)]
struct NodeRow {
    meta_data: Map<String, Value>,
    sealed_secrets: Option<String>,
    token_hash: Option<String>,
    generation: u64,
}

fn node_row(row: &sqlx::any::AnyRow) -> Result<NodeRow, StoreError> {
    let read = || StoreError::query("reading a node's cloud-init data");
    let meta_data: String = row.try_get("meta_data").map_err(read())?;
    let generation: i64 = row.try_get("generation").map_err(read())?;
    Ok(NodeRow {
        meta_data: json_map(&meta_data, "a node's cloud-init meta-data")?,
        sealed_secrets: row.try_get("secrets").map_err(read())?,
        token_hash: row.try_get("token_hash").map_err(read())?,
        generation: generation.max(0) as u64,
    })
}

async fn node_row_in(connection: &mut AnyConnection, node_id: &str) -> Result<Option<NodeRow>, StoreError> {
    let row = sqlx::query("SELECT meta_data, secrets, token_hash, generation FROM cloud_init_nodes WHERE node_id = $1")
        .bind(node_id)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("reading a node's cloud-init data"))?;
    row.as_ref().map(node_row).transpose()
}
