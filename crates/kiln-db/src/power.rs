//! What the power-state sync reads from BMCs: the last power state of each node, its run of
//! failures, and the maintenance the sync sets after too many and lifts when the BMC answers
//! again. A changed state, entering and leaving maintenance are events.

use kiln_types::api::PowerReading;
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};
use crate::nodes::{find_node, save_changed_node};
use crate::{Store, StoreError};

/// One read of a node's BMC.
#[derive(Debug, Clone)]
pub enum PowerRead {
    State(String),
    Failed { fault: String, message: String },
}

struct Row {
    power_state: Option<String>,
    checked_at: i64,
    failures: i64,
    fault: Option<String>,
    fault_message: Option<String>,
    maintenance_set: bool,
}

async fn row_of(connection: &mut AnyConnection, node_id: &str) -> Result<Option<Row>, StoreError> {
    let row =
        sqlx::query("SELECT power_state, checked_at, failures, fault, fault_message, maintenance_set FROM node_power WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(connection)
            .await
            .map_err(StoreError::query("reading a power reading"))?;
    row.map(|row| {
        let read = || StoreError::query("reading a power reading");
        let maintenance_set: i64 = row.try_get("maintenance_set").map_err(read())?;
        Ok(Row {
            power_state: row.try_get("power_state").map_err(read())?,
            checked_at: row.try_get("checked_at").map_err(read())?,
            failures: row.try_get("failures").map_err(read())?,
            fault: row.try_get("fault").map_err(read())?,
            fault_message: row.try_get("fault_message").map_err(read())?,
            maintenance_set: maintenance_set != 0,
        })
    })
    .transpose()
}

impl Store {
    /// Records one read of `node_key`'s BMC. After `fault_threshold` failures in a row the
    /// node goes into maintenance (unless an operator already put it there); the first
    /// success after that takes it out, if the sync put it in.
    pub async fn record_power_read(&self, node_key: &str, read: &PowerRead, fault_threshold: u32) -> Result<PowerReading, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let before = find_node(connection, node_key).await?.ok_or_else(|| StoreError::not_found("node", node_key))?;
        let node = before.node.clone();
        let previous = row_of(connection, &node.id).await?;
        let now = crate::now_millis();
        let mut next = Row {
            power_state: previous.as_ref().and_then(|row| row.power_state.clone()),
            checked_at: now,
            failures: 0,
            fault: None,
            fault_message: None,
            maintenance_set: previous.as_ref().is_some_and(|row| row.maintenance_set),
        };
        let mut maintenance = None;
        match read {
            PowerRead::State(state) => {
                next.power_state = Some(state.clone());
                if next.maintenance_set {
                    maintenance = Some(false);
                    next.maintenance_set = false;
                }
            }
            PowerRead::Failed { fault, message } => {
                next.failures = previous.as_ref().map_or(0, |row| row.failures) + 1;
                next.fault = Some(fault.clone());
                next.fault_message = Some(message.clone());
                if next.failures >= i64::from(fault_threshold) && !node.maintenance && !next.maintenance_set {
                    maintenance = Some(true);
                    next.maintenance_set = true;
                }
            }
        }
        sqlx::query(
            "INSERT INTO node_power (node_id, power_state, checked_at, failures, fault, fault_message, maintenance_set) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (node_id) DO UPDATE SET power_state = excluded.power_state, \
             checked_at = excluded.checked_at, failures = excluded.failures, fault = excluded.fault, \
             fault_message = excluded.fault_message, maintenance_set = excluded.maintenance_set",
        )
        .bind(&node.id)
        .bind(next.power_state.as_deref())
        .bind(next.checked_at)
        .bind(next.failures)
        .bind(next.fault.as_deref())
        .bind(next.fault_message.as_deref())
        .bind(i64::from(next.maintenance_set))
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("recording a power reading"))?;
        let previous_state = previous.as_ref().and_then(|row| row.power_state.clone());
        if let PowerRead::State(state) = read
            && previous_state.as_deref() != Some(state.as_str())
        {
            let event = NewEvent {
                actor: "power-sync",
                action: "node.power-state",
                target_kind: "node_bmc",
                target: &node.name,
                project: node.project.as_deref(),
                before: previous_state.map(|state| serde_json::json!({ "power_state": state })),
                after: Some(serde_json::json!({ "power_state": state })),
            };
            record(connection, event).await?;
        }
        if let Some(maintenance) = maintenance {
            let mut after = before.clone();
            after.node.maintenance = maintenance;
            let action = if maintenance { "node.maintenance.fault" } else { "node.maintenance.recovered" };
            save_changed_node(connection, "power-sync", action, node.project.as_deref(), &before, &mut after).await?;
            match maintenance {
                true => tracing::warn!(node = %node.name, fault = ?next.fault, "BMC failing: node put into maintenance"),
                false => tracing::info!(node = %node.name, "BMC answers again: node out of maintenance"),
            }
        }
        transaction.commit().await?;
        Ok(reading(&node.name, &next))
    }

    pub async fn power_reading(&self, node_key: &str, scope: &kiln_auth::ProjectScope) -> Result<Option<PowerReading>, StoreError> {
        let mut connection = self.read().await?;
        let node = match find_node(&mut connection, node_key).await? {
            Some(snapshot) if crate::nodes_visible(scope, snapshot.node.project.as_deref()) => snapshot.node,
            _ => return Err(StoreError::not_found("node", node_key)),
        };
        Ok(row_of(&mut connection, &node.id).await?.map(|row| reading(&node.name, &row)))
    }
}

fn reading(node: &str, row: &Row) -> PowerReading {
    PowerReading {
        node: node.to_owned(),
        power_state: row.power_state.clone(),
        checked_at: crate::timestamp(row.checked_at),
        failures: row.failures.max(0) as u32,
        fault: row.fault.clone(),
        fault_message: row.fault_message.clone(),
        maintenance_set: row.maintenance_set,
    }
}
