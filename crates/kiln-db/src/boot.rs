//! Boot parameters (OpenCHAMI BSS semantics) and the enrolment of machines seen booting.

use kiln_boot::{BootParams, BootTarget};
use kiln_types::node::{InterfaceView, Node};
use kiln_types::{MacAddress, ProvisionState};
use sqlx::{AnyConnection, Row as _};

use crate::events::{NewEvent, record};
use crate::{Store, StoreError};

fn describe(params: &BootParams) -> String {
    let targets = params.targets();
    match targets.len() {
        0 => "none".to_owned(),
        1 => format!("{}={}", targets[0].kind(), targets[0].value()),
        n => format!("{}={} and {} more", targets[0].kind(), targets[0].value(), n - 1),
    }
}

async fn load_entry(connection: &mut AnyConnection, id: &str) -> Result<Option<BootParams>, StoreError> {
    let Some(row) = sqlx::query("SELECT kernel, initrd, params FROM boot_params WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("reading boot parameters"))?
    else {
        return Ok(None);
    };
    let read = || StoreError::query("reading boot parameters");
    let base = BootParams {
        kernel: row.try_get("kernel").map_err(read())?,
        initrd: row.try_get("initrd").map_err(read())?,
        params: row.try_get("params").map_err(read())?,
        macs: vec![],
        hosts: vec![],
        nids: vec![],
        groups: vec![],
    };
    let rows = sqlx::query("SELECT kind, value FROM boot_targets WHERE params_id = $1 ORDER BY kind, value")
        .bind(id)
        .fetch_all(&mut *connection)
        .await
        .map_err(read())?;
    let mut targets = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get("kind").map_err(read())?;
        let value: String = row.try_get("value").map_err(read())?;
        targets.push(
            BootTarget::from_parts(&kind, &value).ok_or_else(|| StoreError::Corrupt { message: format!("boot target {kind}={value}") })?,
        );
    }
    Ok(Some(base.with_targets(&targets)))
}

async fn owner_of(connection: &mut AnyConnection, target: &BootTarget) -> Result<Option<String>, StoreError> {
    sqlx::query("SELECT params_id FROM boot_targets WHERE kind = $1 AND value = $2")
        .bind(target.kind())
        .bind(target.value())
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("looking up a boot target"))?
        .map(|row| row.try_get::<String, _>("params_id"))
        .transpose()
        .map_err(StoreError::query("looking up a boot target"))
}

/// Takes targets away from whatever entries hold them, deleting entries left with none.
async fn release_targets(connection: &mut AnyConnection, targets: &[BootTarget]) -> Result<usize, StoreError> {
    let mut released = 0;
    for target in targets {
        let Some(owner) = owner_of(connection, target).await? else { continue };
        sqlx::query("DELETE FROM boot_targets WHERE kind = $1 AND value = $2")
            .bind(target.kind())
            .bind(target.value())
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("releasing a boot target"))?;
        released += 1;
        let remaining: i64 = sqlx::query("SELECT COUNT(*) AS count FROM boot_targets WHERE params_id = $1")
            .bind(&owner)
            .fetch_one(&mut *connection)
            .await
            .and_then(|row| row.try_get("count"))
            .map_err(StoreError::query("releasing a boot target"))?;
        if remaining == 0 {
            sqlx::query("DELETE FROM boot_params WHERE id = $1")
                .bind(&owner)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("deleting boot parameters"))?;
        }
    }
    Ok(released)
}

impl Store {
    /// Every entry, in creation order.
    pub async fn list_boot_params(&self) -> Result<Vec<BootParams>, StoreError> {
        let mut connection = self.read().await?;
        let ids: Vec<String> = sqlx::query("SELECT id FROM boot_params ORDER BY created_at, id")
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("listing boot parameters"))?
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<Result<_, _>>()
            .map_err(StoreError::query("listing boot parameters"))?;
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            entries.extend(load_entry(&mut connection, &id).await?);
        }
        Ok(entries)
    }

    /// Stores an entry. `replace: false` is BSS's `add`: it refuses if any target already
    /// has parameters. `replace: true` is `set`: the targets leave their old entries.
    pub async fn put_boot_params(&self, actor: &str, params: &BootParams, replace: bool) -> Result<BootParams, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let targets = params.targets();
        if replace {
            release_targets(connection, &targets).await?;
        } else {
            for target in &targets {
                if owner_of(connection, target).await?.is_some() {
                    return Err(StoreError::conflict(format!(
                        "{} {} already has boot parameters (use set to replace them)",
                        target.kind(),
                        target.value()
                    )));
                }
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let now = crate::now_millis();
        sqlx::query("INSERT INTO boot_params (id, kernel, initrd, params, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)")
            .bind(&id)
            .bind(params.kernel.as_deref())
            .bind(params.initrd.as_deref())
            .bind(&params.params)
            .bind(now)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("storing boot parameters"))?;
        for target in &targets {
            sqlx::query("INSERT INTO boot_targets (kind, value, params_id) VALUES ($1, $2, $3)")
                .bind(target.kind())
                .bind(target.value())
                .bind(&id)
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("storing boot parameters"))?;
        }
        let stored = load_entry(connection, &id).await?.ok_or_else(|| StoreError::not_found("boot parameters", id.clone()))?;
        let action = if replace { "boot_params.set" } else { "boot_params.add" };
        let after = serde_json::to_value(&stored).ok();
        record(
            connection,
            NewEvent { actor, action, target_kind: "boot_params", target: &describe(&stored), project: None, before: None, after },
        )
        .await?;
        transaction.commit().await?;
        Ok(stored)
    }

    /// Removes these targets from their entries (and entries left without targets).
    pub async fn delete_boot_params(&self, actor: &str, targets: &[BootTarget]) -> Result<usize, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let released = release_targets(connection, targets).await?;
        if released == 0 {
            return Err(StoreError::not_found(
                "boot parameters",
                targets.iter().map(|t| format!("{}={}", t.kind(), t.value())).collect::<Vec<_>>().join(", "),
            ));
        }
        let before = Some(serde_json::json!({ "targets": targets }));
        record(
            connection,
            NewEvent {
                actor,
                action: "boot_params.delete",
                target_kind: "boot_params",
                target: &format!("{released} targets"),
                project: None,
                before,
                after: None,
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(released)
    }

    /// Adds a machine seen booting with an unknown MAC as a `discovered` node, named after
    /// its MAC, within `limits` (decided in the transaction, so they hold across replicas).
    /// A MAC that is already a node's is that node.
    pub async fn enroll_discovered(&self, mac: MacAddress, limits: EnrolmentLimits) -> Result<Enrolment, StoreError> {
        if !mac.is_unicast() {
            return Ok(Enrolment::Refused(EnrolmentRefusal::NotUnicast));
        }
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let existing =
            crate::nodes::load_nodes(connection, "id IN (SELECT node_id FROM interfaces WHERE mac = $1)", &[mac.to_string()], "").await?;
        if let Some(snapshot) = existing.into_iter().next() {
            return Ok(Enrolment::Known(snapshot.node));
        }
        // The counts and the enrolment are one step across replicas: the event log's order
        // lock is held from here to the commit.
        crate::events::lock_event_order(connection).await?;
        let since = crate::now_millis() - 60_000;
        let last_minute: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE action = 'node.enroll' AND at > $1")
            .bind(since)
            .fetch_one(&mut *connection)
            .await
            .map_err(StoreError::query("counting recent enrolments"))?;
        if last_minute >= i64::from(limits.per_minute) {
            return Ok(Enrolment::Refused(EnrolmentRefusal::RateLimited { per_minute: limits.per_minute }));
        }
        let discovered: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE provision_state = $1")
            .bind(ProvisionState::Discovered.as_str())
            .fetch_one(&mut *connection)
            .await
            .map_err(StoreError::query("counting discovered nodes"))?;
        if discovered >= i64::from(limits.max_discovered) {
            return Ok(Enrolment::Refused(EnrolmentRefusal::TooManyDiscovered { max_discovered: limits.max_discovered }));
        }
        let now = crate::now();
        let node = Node {
            id: uuid::Uuid::new_v4().to_string(),
            name: format!("discovered-{}", mac.to_string().replace(':', "")),
            xname: None,
            nid: None,
            role: None,
            groups: vec![],
            interfaces: vec![InterfaceView { mac_addr: mac, ip_addrs: vec![] }],
            bmc: None,
            properties: Default::default(),
            project: None,
            provision_state: ProvisionState::Discovered,
            maintenance: false,
            created_at: now,
            updated_at: now,
        };
        crate::nodes::insert_plain_node(connection, &node).await?;
        let after = serde_json::to_value(&node).ok();
        record(
            connection,
            NewEvent { actor: "kiln", action: "node.enroll", target_kind: "node", target: &node.name, project: None, before: None, after },
        )
        .await?;
        transaction.commit().await?;
        tracing::info!(node = %node.name, %mac, "unknown machine enrolled as discovered");
        Ok(Enrolment::Enrolled(node))
    }

    /// Records that a node called back from a booted system (the lab's and the agent's
    /// proof of life).
    /// Records what was asked of a node's BMC (a power action, a boot device) and by whom.
    /// These change no stored state; the event is the record.
    pub async fn record_bmc_action(&self, actor: &str, node: &Node, action: &str, details: serde_json::Value) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let event = NewEvent {
            actor,
            action,
            target_kind: "node_bmc",
            target: &node.name,
            project: node.project.as_deref(),
            before: None,
            after: Some(details),
        };
        record(connection, event).await?;
        transaction.commit().await
    }

    /// Records a booted system's callback; `verified` (it came from the node's own
    /// address) says whether it counts as the callback a deploy may be waiting for.
    pub async fn record_phone_home(&self, node: &Node, address: &str, verified: bool) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let after = Some(serde_json::json!({ "id": node.id, "address": address, "verified": verified }));
        record(
            connection,
            NewEvent {
                actor: &format!("node:{}", node.name),
                action: "node.phone-home",
                target_kind: "node_boot",
                target: &node.name,
                project: node.project.as_deref(),
                before: None,
                after,
            },
        )
        .await?;
        if verified {
            Store::note_callback(connection, &node.id).await?;
        }
        transaction.commit().await
    }
}

/// How many unknown machines may become `discovered` nodes: a flood of boot requests with
/// made-up MACs must not grow the inventory without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EnrolmentLimits {
    /// Enrolments across all replicas in any minute.
    pub per_minute: u32,
    /// `discovered` nodes at once; an operator manages or deletes them to make room.
    pub max_discovered: u32,
}

impl Default for EnrolmentLimits {
    fn default() -> EnrolmentLimits {
        EnrolmentLimits { per_minute: 60, max_discovered: 1000 }
    }
}

/// What became of a machine asking to be enrolled.
#[derive(Debug, Clone, PartialEq)]
pub enum Enrolment {
    /// The MAC is already a node's.
    Known(Node),
    Enrolled(Node),
    Refused(EnrolmentRefusal),
}

impl Enrolment {
    /// The node the MAC now belongs to, if any.
    pub fn node(self) -> Option<Node> {
        match self {
            Enrolment::Known(node) | Enrolment::Enrolled(node) => Some(node),
            Enrolment::Refused(_) => None,
        }
    }
}

/// Why an unknown machine was not enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnrolmentRefusal {
    #[error("not a unicast MAC (broadcast, multicast or all zero)")]
    NotUnicast,
    #[error("more than {per_minute} enrolments in the last minute")]
    RateLimited { per_minute: u32 },
    #[error("{max_discovered} discovered nodes already; manage or delete some")]
    TooManyDiscovered { max_discovered: u32 },
}
