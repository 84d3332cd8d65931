//! What the Ironic-compatible API keeps of a node beyond Kiln's own fields
//! ([`IronicFields`]), written in the same transaction as the node it belongs to, with an
//! event when it changes.

use std::collections::HashMap;

use kiln_auth::ProjectScope;
use kiln_types::MacAddress;
use kiln_types::ironic::IronicFields;
use kiln_types::node::{Node, NodeChange, NodeSpec};
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};

/// What a listing shows of a node's provisioning.
#[derive(Debug, Clone)]
pub struct ProvisionNote {
    pub state: kiln_types::ProvisionState,
    pub pending: Option<kiln_types::provision::Intent>,
    pub last_error: Option<String>,
}
use crate::{Store, StoreError};

async fn fields_in(connection: &mut AnyConnection, node_id: &str) -> Result<IronicFields, StoreError> {
    let row = sqlx::query("SELECT fields FROM ironic_nodes WHERE node_id = $1")
        .bind(node_id)
        .fetch_optional(connection)
        .await
        .map_err(StoreError::query("reading a node's Ironic fields"))?;
    match row {
        None => Ok(IronicFields::default()),
        Some(row) => {
            let text: String = row.try_get("fields").map_err(StoreError::query("reading a node's Ironic fields"))?;
            serde_json::from_str(&text).map_err(|error| StoreError::corrupt("a node's Ironic fields", error))
        }
    }
}

/// Writes `fields` for `node` when they changed, with an event.
async fn write_fields(connection: &mut AnyConnection, actor: &str, node: &Node, fields: &IronicFields) -> Result<(), StoreError> {
    let before = fields_in(connection, &node.id).await?;
    if &before == fields {
        return Ok(());
    }
    let text = serde_json::to_string(fields).expect("Ironic fields serialize");
    sqlx::query(
        "INSERT INTO ironic_nodes (node_id, fields, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (node_id) DO UPDATE SET fields = excluded.fields, updated_at = excluded.updated_at",
    )
    .bind(&node.id)
    .bind(&text)
    .bind(crate::now_millis())
    .execute(&mut *connection)
    .await
    .map_err(StoreError::query("writing a node's Ironic fields"))?;
    let event = NewEvent {
        actor,
        action: "node.ironic",
        target_kind: "node",
        target: &node.name,
        project: node.project.as_deref(),
        before: serde_json::to_value(&before).ok(),
        after: serde_json::to_value(fields).ok(),
    };
    record(connection, event).await
}

/// The node as its interfaces now are, its change recorded as an event (which is also how
/// every replica's inventory view learns of it).
async fn interface_changed(connection: &mut AnyConnection, actor: &str, before: &Node) -> Result<Node, StoreError> {
    sqlx::query("UPDATE nodes SET updated_at = $1 WHERE id = $2")
        .bind(crate::now_millis())
        .bind(&before.id)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("updating a node"))?;
    let after =
        crate::nodes::find_node(connection, &before.id).await?.ok_or_else(|| StoreError::not_found("node", before.id.clone()))?.node;
    let event = NewEvent {
        actor,
        action: "node.update",
        target_kind: "node",
        target: &after.name,
        project: after.project.as_deref(),
        before: serde_json::to_value(before).ok(),
        after: serde_json::to_value(&after).ok(),
    };
    record(connection, event).await?;
    Ok(after)
}

impl Store {
    /// Creates a node and its Ironic fields, all or none.
    pub async fn create_ironic_node(&self, actor: &str, spec: &NodeSpec, fields: &IronicFields) -> Result<Node, StoreError> {
        let mut transaction = self.write().await?;
        let node = self.create_node_in(transaction.connection(), actor, spec).await?;
        write_fields(transaction.connection(), actor, &node, fields).await?;
        transaction.commit().await?;
        Ok(node)
    }

    /// Changes a node the scope may write and its Ironic fields, all or none.
    pub async fn update_ironic_node(
        &self,
        actor: &str,
        key: &str,
        scope: &ProjectScope,
        change: &NodeChange,
        fields: &IronicFields,
    ) -> Result<Node, StoreError> {
        let mut transaction = self.write().await?;
        let node = self.update_node_in(transaction.connection(), actor, key, scope, change).await?;
        write_fields(transaction.connection(), actor, &node, fields).await?;
        transaction.commit().await?;
        Ok(node)
    }

    /// Adds an interface with `mac` to the node `key` the scope may write (Ironic's port), as
    /// one row: additions racing each other never lose one, and a MAC is one node's only.
    pub async fn add_node_interface(&self, actor: &str, key: &str, scope: &ProjectScope, mac: MacAddress) -> Result<Node, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let before = crate::nodes::find_visible_node(connection, key, scope).await?;
        let taken = sqlx::query("SELECT 1 AS taken FROM interfaces WHERE mac = $1")
            .bind(mac.to_string())
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("looking up a MAC"))?
            .is_some();
        if taken {
            return Err(StoreError::conflict(format!("A port with MAC address {mac} already exists.")));
        }
        sqlx::query(
            "INSERT INTO interfaces (mac, node_id, position, ip_addrs) \
             SELECT $1, $2, COALESCE(MAX(position), -1) + 1, '[]' FROM interfaces WHERE node_id = $2",
        )
        .bind(mac.to_string())
        .bind(&before.node.id)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("adding an interface"))?;
        let node = interface_changed(connection, actor, &before.node).await?;
        transaction.commit().await?;
        Ok(node)
    }

    /// Removes the interface `mac` from the node `key` the scope may write.
    pub async fn remove_node_interface(&self, actor: &str, key: &str, scope: &ProjectScope, mac: MacAddress) -> Result<Node, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let before = crate::nodes::find_visible_node(connection, key, scope).await?;
        let removed = sqlx::query("DELETE FROM interfaces WHERE mac = $1 AND node_id = $2")
            .bind(mac.to_string())
            .bind(&before.node.id)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("removing an interface"))?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::not_found("port", mac.to_string()));
        }
        let node = interface_changed(connection, actor, &before.node).await?;
        transaction.commit().await?;
        Ok(node)
    }

    /// A node's Ironic fields (empty for a node made by Kiln's own API).
    pub async fn ironic_fields(&self, node_id: &str) -> Result<IronicFields, StoreError> {
        let mut connection = self.read().await?;
        fields_in(&mut connection, node_id).await
    }

    /// The power state last read of every node that has one (`on`, `off`…), by node id, for
    /// listings.
    pub async fn all_power_states(&self) -> Result<HashMap<String, String>, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query("SELECT node_id, power_state FROM node_power WHERE power_state IS NOT NULL")
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("reading power states"))?;
        rows.iter()
            .map(|row| {
                let read = || StoreError::query("reading power states");
                Ok((row.try_get("node_id").map_err(read())?, row.try_get("power_state").map_err(read())?))
            })
            .collect()
    }

    /// Every node's provision state, pending request and last error, by node id, read in one
    /// statement (so each node's three agree), for listings.
    pub async fn all_provision_notes(&self) -> Result<HashMap<String, ProvisionNote>, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query(
            "SELECT n.id, n.provision_state, p.intent, p.last_error FROM nodes n LEFT JOIN node_provisioning p ON p.node_id = n.id",
        )
        .fetch_all(&mut *connection)
        .await
        .map_err(StoreError::query("reading nodes' provisioning"))?;
        let mut all = HashMap::with_capacity(rows.len());
        for row in rows {
            let read = || StoreError::query("reading nodes' provisioning");
            let node_id: String = row.try_get("id").map_err(read())?;
            let state: String = row.try_get("provision_state").map_err(read())?;
            let state = state.parse().map_err(|error| StoreError::corrupt("node provision_state", error))?;
            let note = ProvisionNote {
                state,
                pending: crate::provision::json_column(&row, "intent")?,
                last_error: row.try_get("last_error").map_err(read())?,
            };
            all.insert(node_id, note);
        }
        Ok(all)
    }

    /// Every node's Ironic fields, by node id, for listings.
    pub async fn all_ironic_fields(&self) -> Result<HashMap<String, IronicFields>, StoreError> {
        let mut connection = self.read().await?;
        let rows = sqlx::query("SELECT node_id, fields FROM ironic_nodes")
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("reading nodes' Ironic fields"))?;
        let mut all = HashMap::with_capacity(rows.len());
        for row in rows {
            let read = || StoreError::query("reading nodes' Ironic fields");
            let node_id: String = row.try_get("node_id").map_err(read())?;
            let text: String = row.try_get("fields").map_err(read())?;
            all.insert(node_id, serde_json::from_str(&text).map_err(|error| StoreError::corrupt("a node's Ironic fields", error))?);
        }
        Ok(all)
    }
}
