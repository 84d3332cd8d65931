//! Provisioning records: the intent an operator recorded, the operation the reconciler is
//! carrying out, what the agent reported, and the lease that makes exactly one replica act
//! on a node at a time.

use kiln_auth::ProjectScope;
use kiln_types::ProvisionState;
use kiln_types::node::Node;
use kiln_types::provision::{AgentResult, Heartbeat, Intent, ProvisionRecord, ProvisionStatus, ProvisionStep, TokenChange, Transition};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};
use subtle::ConstantTimeEq as _;

use crate::events::{NewEvent, record};
use crate::nodes::{NodeSnapshot, find_node, load_nodes, save_changed_node};
use crate::{Store, StoreError};

/// A node the reconciler has claimed: its lease is held by the claimer until `lease_expires`.
#[derive(Debug, Clone)]
pub struct ProvisionWork {
    pub node: Node,
    pub record: ProvisionRecord,
    /// The replica that held the lease before it expired, when it was not the claimer:
    /// whatever that replica was doing was interrupted.
    pub taken_over_from: Option<String>,
}

const COLUMNS: &str = "node_id, intent, target, operation, step, command_id, agent_token_hash, agent_seen_at, progress, \
     agent_result, callback_at, last_error, state_entered_at, deadline, due_at, lease_owner, lease_expires";

pub(crate) fn json_column<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &str) -> Result<Option<T>, StoreError> {
    let text: Option<String> = row.try_get(column).map_err(StoreError::query("reading a provisioning record"))?;
    text.map(|text| serde_json::from_str(&text).map_err(|error| StoreError::corrupt(column, error))).transpose()
}

fn record_from_row(row: &AnyRow) -> Result<ProvisionRecord, StoreError> {
    let read = || StoreError::query("reading a provisioning record");
    let hash: Option<String> = row.try_get("agent_token_hash").map_err(read())?;
    let command_id: i64 = row.try_get("command_id").map_err(read())?;
    Ok(ProvisionRecord {
        intent: json_column(row, "intent")?,
        target: json_column(row, "target")?,
        operation: json_column(row, "operation")?.unwrap_or_default(),
        step: step_column(row)?,
        command_id: command_id.max(0) as u64,
        has_agent_token: hash.is_some(),
        agent_seen_at: row.try_get("agent_seen_at").map_err(read())?,
        progress: json_column(row, "progress")?,
        agent_result: json_column(row, "agent_result")?,
        callback_at: row.try_get("callback_at").map_err(read())?,
        last_error: row.try_get("last_error").map_err(read())?,
        state_entered_at: row.try_get("state_entered_at").map_err(read())?,
        deadline: row.try_get("deadline").map_err(read())?,
        due_at: row.try_get("due_at").map_err(read())?,
        lease_owner: row.try_get("lease_owner").map_err(read())?,
        lease_expires: row.try_get("lease_expires").map_err(read())?,
    })
}

/// The record's step. A word this version does not know (written by a newer replica, or
/// before a downgrade) reads as no step, which the planner fails cleanly for that node
/// alone, rather than an error that would stop every claim of the reconciler.
fn step_column(row: &AnyRow) -> Result<Option<ProvisionStep>, StoreError> {
    let text: Option<String> = row.try_get("step").map_err(StoreError::query("reading a provisioning record"))?;
    Ok(text.and_then(|text| {
        let step = ProvisionStep::parse(&text);
        if step.is_none() {
            tracing::warn!(step = %text, "unknown provisioning step in the store; read as none");
        }
        step
    }))
}

async fn record_of(connection: &mut AnyConnection, node_id: &str) -> Result<Option<ProvisionRecord>, StoreError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM node_provisioning WHERE node_id = $1"))
        .bind(node_id)
        .fetch_optional(&mut *connection)
        .await
        .map_err(StoreError::query("reading a provisioning record"))?;
    row.as_ref().map(record_from_row).transpose()
}

fn to_json<T: serde::Serialize>(value: &Option<T>) -> Option<String> {
    value.as_ref().map(|value| serde_json::to_string(value).expect("provisioning values serialize"))
}

fn status(node: &Node, record: Option<&ProvisionRecord>) -> ProvisionStatus {
    let time = |millis: Option<i64>| millis.map(crate::timestamp);
    ProvisionStatus {
        node: node.name.clone(),
        provision_state: node.provision_state,
        maintenance: node.maintenance,
        step: record.and_then(|r| r.step),
        pending: record.and_then(|r| r.intent.clone()),
        target: record.and_then(|r| r.target.clone()),
        progress: record.and_then(|r| r.progress.clone()),
        last_error: record.and_then(|r| r.last_error.clone()),
        state_entered_at: time(record.map(|r| r.state_entered_at).filter(|at| *at > 0)),
        deadline: time(record.and_then(|r| r.deadline)),
        agent_seen_at: time(record.and_then(|r| r.agent_seen_at)),
        owner: record.and_then(|r| r.lease_owner.clone()),
    }
}

/// States in which a node is being worked on: a new request must wait for them to end.
fn busy(state: ProvisionState) -> bool {
    use ProvisionState::*;
    matches!(state, Inspecting | Deploying | WaitAgent | Undeploying | Cleaning | Capturing)
}

impl Store {
    /// Records what an operator asks of a node, for the reconciler to carry out. A node in
    /// maintenance, one with work under way or a request pending, or one in a state the
    /// request cannot start from is a conflict, reported at once.
    pub async fn request_provision(
        &self,
        actor: &str,
        key: &str,
        scope: &ProjectScope,
        intent: &Intent,
    ) -> Result<ProvisionStatus, StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let snapshot = match find_node(connection, key).await? {
            Some(snapshot) if crate::nodes_visible(scope, snapshot.node.project.as_deref()) => snapshot,
            _ => return Err(StoreError::not_found("node", key)),
        };
        let node = &snapshot.node;
        let current = record_of(connection, &node.id).await?;
        if node.maintenance {
            return Err(StoreError::conflict(format!("node '{}' is in maintenance: take it out first", node.name)));
        }
        if let Some(pending) = current.as_ref().and_then(|r| r.intent.as_ref()) {
            // A deploy waiting for its start is a reservation: say whose time it is. Nothing
            // else is taken until it starts (one request at a time per node).
            if let Intent::Deploy(reserved) = pending
                && let Some(start) = reserved.start_at
            {
                let until = reserved.end_at.map_or_else(|| "until it is undeployed".to_owned(), |end| format!("to {end}"));
                let advice = match intent {
                    Intent::Deploy(_) => "choose another node",
                    _ => "no other request is taken for it until that deploy starts",
                };
                return Err(StoreError::conflict(format!(
                    "node '{}' has a deploy of {} scheduled from {start} {until}: {advice}",
                    node.name, reserved.image
                )));
            }
            return Err(StoreError::conflict(format!("node '{}' already has a '{}' request pending", node.name, pending.name())));
        }
        if let Intent::Deploy(_) = intent
            && node.provision_state == ProvisionState::Active
            && let Some(end) = current.as_ref().and_then(|r| r.target.as_ref()).and_then(|target| target.end_at)
            && end.as_millisecond() > crate::now_millis()
        {
            return Err(StoreError::conflict(format!(
                "node '{}' is reserved until {end} by the deploy on it: undeploy it first or choose another node",
                node.name
            )));
        }
        // An abort is for a busy node; its own states say which.
        if busy(node.provision_state) && *intent != Intent::Abort {
            return Err(StoreError::conflict(format!("node '{}' is busy: {}", node.name, node.provision_state)));
        }
        if !intent.allowed_from().contains(&node.provision_state) {
            let allowed: Vec<&str> = intent.allowed_from().iter().map(|state| state.as_str()).collect();
            return Err(StoreError::conflict(format!(
                "cannot {} node '{}' in state {} (only from {})",
                intent.name(),
                node.name,
                node.provision_state,
                allowed.join(", ")
            )));
        }
        let now = crate::now_millis();
        let intent_json = serde_json::to_string(intent).expect("intents serialize");
        sqlx::query(
            "INSERT INTO node_provisioning (node_id, intent, command_id, state_entered_at, due_at) VALUES ($1, $2, 0, $3, $3) \
             ON CONFLICT (node_id) DO UPDATE SET intent = excluded.intent, due_at = excluded.due_at",
        )
        .bind(&node.id)
        .bind(&intent_json)
        .bind(now)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("recording a provisioning request"))?;
        let event = NewEvent {
            actor,
            action: "node.provision.requested",
            target_kind: "node_provision",
            target: &node.name,
            project: node.project.as_deref(),
            before: None,
            after: serde_json::to_value(intent).ok(),
        };
        record(connection, event).await?;
        let after = record_of(connection, &node.id).await?;
        transaction.commit().await?;
        Ok(status(node, after.as_ref()))
    }

    pub async fn provision_status(&self, key: &str, scope: &ProjectScope) -> Result<ProvisionStatus, StoreError> {
        let mut connection = self.read().await?;
        let node = match find_node(&mut connection, key).await? {
            Some(snapshot) if crate::nodes_visible(scope, snapshot.node.project.as_deref()) => snapshot.node,
            _ => return Err(StoreError::not_found("node", key)),
        };
        let record = record_of(&mut connection, &node.id).await?;
        // The state is read again after the record: a transition that consumed the record's
        // request between the two reads has then moved the state too, so a request is never
        // seen gone while the state is still the one it left (clients that wait would read
        // that as settled).
        let node = find_node(&mut connection, &node.id).await?.map_or(node, |snapshot| snapshot.node);
        Ok(status(&node, record.as_ref()))
    }

    /// A node's provisioning record, for the boot script (which has the node already).
    pub async fn provision_record(&self, node_id: &str) -> Result<Option<ProvisionRecord>, StoreError> {
        let mut connection = self.read().await?;
        record_of(&mut connection, node_id).await
    }

    /// Claims up to `limit` nodes that are due for the reconciler and whose lease is free,
    /// expired or already `owner`'s, holding each for `lease_millis`. Each claim is a
    /// compare-and-set on the lease columns, so two replicas never both win a node.
    pub async fn claim_provisioning(&self, owner: &str, lease_millis: i64, limit: u32) -> Result<Vec<ProvisionWork>, StoreError> {
        let now = crate::now_millis();
        let candidates = {
            let mut connection = self.read().await?;
            sqlx::query(
                "SELECT node_id, lease_owner, lease_expires FROM node_provisioning \
                 WHERE due_at IS NOT NULL AND due_at <= $1 AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires < $1) \
                 ORDER BY due_at LIMIT $3",
            )
            .bind(now)
            .bind(owner)
            .bind(i64::from(limit))
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("finding due nodes"))?
        };
        let mut claimed = Vec::new();
        for row in candidates {
            let read = || StoreError::query("finding due nodes");
            let node_id: String = row.try_get("node_id").map_err(read())?;
            let previous_owner: Option<String> = row.try_get("lease_owner").map_err(read())?;
            let previous_expiry: Option<i64> = row.try_get("lease_expires").map_err(read())?;
            let mut transaction = self.write().await?;
            let connection = transaction.connection();
            let taken = sqlx::query(
                "UPDATE node_provisioning SET lease_owner = $1, lease_expires = $2 WHERE node_id = $3 \
                 AND COALESCE(lease_owner, '') = $4 AND COALESCE(lease_expires, 0) = $5",
            )
            .bind(owner)
            .bind(now + lease_millis)
            .bind(&node_id)
            .bind(previous_owner.clone().unwrap_or_default())
            .bind(previous_expiry.unwrap_or(0))
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("claiming a node"))?
            .rows_affected()
                == 1;
            if !taken {
                continue;
            }
            let Some(record) = record_of(connection, &node_id).await? else { continue };
            let Some(snapshot) = load_nodes(connection, "id = $1", std::slice::from_ref(&node_id), "").await?.pop() else { continue };
            transaction.commit().await?;
            let taken_over_from = previous_owner.filter(|previous| previous != owner);
            claimed.push(ProvisionWork { node: snapshot.node, record, taken_over_from });
        }
        Ok(claimed)
    }

    /// `node_id`'s work as it stands now, if `owner` still holds its lease. A claim read
    /// while another task of the same replica was still working on the node is stale once
    /// that task is done: its step would run again (a clone made twice, a booting machine
    /// reset) before `apply_transition` refused to record it.
    pub async fn held_provisioning(&self, owner: &str, node_id: &str) -> Result<Option<ProvisionWork>, StoreError> {
        // In one transaction, so the record and the node are read from one state.
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let Some(record) = record_of(connection, node_id).await? else { return Ok(None) };
        if record.lease_owner.as_deref() != Some(owner) {
            return Ok(None);
        }
        let Some(snapshot) = load_nodes(connection, "id = $1", &[node_id.to_owned()], "").await?.pop() else { return Ok(None) };
        transaction.commit().await?;
        Ok(Some(ProvisionWork { node: snapshot.node, record, taken_over_from: None }))
    }

    /// Applies one reconciler step, if `owner` still holds the node's lease (a replica that
    /// lost it, say after a long pause, must not overwrite its successor's work) and the node
    /// is still where `seen` says the step was planned from (state, step and command), so
    /// that a step planned twice is applied once. Returns whether it was applied, with the
    /// agent token minted by the step, if any. A request the step did not take up (an abort
    /// that came during a `powering` step) makes the node due at once, not at the step's
    /// deadline.
    pub async fn apply_transition(
        &self,
        owner: &str,
        seen: &ProvisionWork,
        transition: &Transition,
    ) -> Result<Option<Option<String>>, StoreError> {
        let node_id = seen.node.id.as_str();
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let Some(current) = record_of(connection, node_id).await? else { return Ok(None) };
        if current.lease_owner.as_deref() != Some(owner) {
            return Ok(None);
        }
        let before: NodeSnapshot = load_nodes(connection, "id = $1", &[node_id.to_owned()], "")
            .await?
            .pop()
            .ok_or_else(|| StoreError::not_found("node", node_id))?;
        if before.node.provision_state != seen.node.provision_state
            || current.step != seen.record.step
            || current.command_id != seen.record.command_id
        {
            return Ok(None);
        }
        let now = crate::now_millis();
        let (token, token_hash, token_sealed) = match transition.token {
            TokenChange::Keep => (None, None, None),
            TokenChange::Mint => {
                let token = kiln_auth::mint_token();
                let hash = kiln_auth::hash_token(&token);
                let sealed = self.secrets.seal(&token);
                (Some(token), Some(hash), Some(sealed))
            }
            TokenChange::Clear => (None, None, None),
        };
        let state_changed = before.node.provision_state != transition.state;
        let sql = "UPDATE node_provisioning SET intent = CASE WHEN $2 = 1 THEN NULL ELSE intent END, target = $3, operation = $4, step = $5, \
             command_id = command_id + $6, deadline = $7, last_error = $9, \
             due_at = CASE WHEN $10 = 0 AND (agent_result IS NOT NULL OR callback_at IS NOT NULL) THEN $14 \
                           WHEN $2 = 0 AND intent IS NOT NULL THEN $14 ELSE $8 END, \
             agent_result = CASE WHEN $10 = 1 THEN NULL ELSE agent_result END, \
             callback_at = CASE WHEN $10 = 1 THEN NULL ELSE callback_at END, \
             state_entered_at = CASE WHEN $11 = 1 THEN $14 ELSE state_entered_at END, \
             agent_seen_at = CASE WHEN $11 = 1 THEN NULL ELSE agent_seen_at END, \
             progress = CASE WHEN $11 = 1 THEN NULL ELSE progress END, \
             lease_owner = CASE WHEN $15 = 1 THEN lease_owner ELSE NULL END, \
             lease_expires = CASE WHEN $15 = 1 THEN lease_expires ELSE NULL END, \
             agent_token_hash = CASE WHEN $16 = 1 THEN agent_token_hash ELSE $12 END, \
             agent_token_sealed = CASE WHEN $16 = 1 THEN agent_token_sealed ELSE $13 END \
             WHERE node_id = $1";
        sqlx::query(sql)
            .bind(node_id)
            .bind(i64::from(transition.consume_intent))
            .bind(to_json(&transition.target))
            .bind(serde_json::to_string(&transition.operation).expect("operations serialize"))
            .bind(transition.step.map(ProvisionStep::as_str))
            .bind(i64::from(transition.new_command))
            .bind(transition.deadline)
            .bind(transition.due_at)
            .bind(transition.last_error.as_deref())
            .bind(i64::from(transition.consume_result))
            .bind(i64::from(state_changed))
            .bind(token_hash)
            .bind(token_sealed)
            .bind(now)
            .bind(i64::from(transition.keep_lease))
            .bind(i64::from(transition.token == TokenChange::Keep))
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("applying a provisioning step"))?;
        if state_changed || transition.inventory.is_some() {
            let mut after = before.clone();
            after.node.provision_state = transition.state;
            if let Some(inventory) = &transition.inventory {
                merge_inventory(&mut after.node.properties, inventory);
            }
            let action = format!("node.provision.{}", transition.state);
            save_changed_node(connection, "reconciler", &action, before.node.project.as_deref(), &before, &mut after).await?;
        }
        let event = NewEvent {
            actor: "reconciler",
            action: "node.provision.step",
            target_kind: "node_provision",
            target: &before.node.name,
            project: before.node.project.as_deref(),
            before: Some(serde_json::json!({ "state": before.node.provision_state, "step": current.step })),
            after: Some(serde_json::json!({
                "state": transition.state, "step": transition.step, "reason": transition.reason, "error": transition.last_error,
                "owner": owner,
            })),
        };
        record(connection, event).await?;
        transaction.commit().await?;
        Ok(Some(token))
    }

    /// Gives up `owner`'s lease on a node, to be looked at again at `due_at` (never, when
    /// `None`, until something is recorded for it). If something was recorded since the
    /// claim (a request, a result, a callback: each moves `due_at`, which was `seen_due_at`
    /// at the claim), the recorded time stands.
    pub async fn release_provisioning(&self, owner: &str, seen: &ProvisionWork, due_at: Option<i64>) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        sqlx::query(
            "UPDATE node_provisioning SET lease_owner = NULL, lease_expires = NULL, \
             due_at = CASE WHEN COALESCE(due_at, -1) <> $4 THEN due_at ELSE $3 END \
             WHERE node_id = $1 AND lease_owner = $2",
        )
        .bind(&seen.node.id)
        .bind(owner)
        .bind(due_at)
        .bind(seen.record.due_at.unwrap_or(-1))
        .execute(transaction.connection())
        .await
        .map_err(StoreError::query("releasing a node's lease"))?;
        transaction.commit().await
    }

    /// The boot token of a node in agent work, for its boot script (never for the API).
    /// A boot token is good once, for [`Store::exchange_agent_token`]; after it was
    /// exchanged, a new boot script means a rebooted ramdisk: a fresh boot token is minted,
    /// and the session of the agent that ran before dies with the old one.
    pub async fn boot_agent_token(&self, node_id: &str) -> Result<Option<String>, StoreError> {
        // Twice at most: a mint that lost a race (another replica minted, or the operation
        // ended) reads again what won.
        for _ in 0..2 {
            let Some(AgentTokens { hash, sealed }) = agent_tokens(&mut *self.read().await?, node_id).await? else { return Ok(None) };
            match (hash, sealed) {
                // No operation with an agent: no token.
                (None, _) => return Ok(None),
                (Some(_), Some(sealed)) => {
                    return self.secrets.open(&sealed).map(Some).map_err(|error| StoreError::corrupt("agent token", error));
                }
                (Some(session_hash), None) => {
                    let token = kiln_auth::mint_token();
                    let mut transaction = self.write().await?;
                    // Only over the session that was read: never over a cleared token (the
                    // operation ended meanwhile) or a boot token minted meanwhile.
                    let changed = sqlx::query(
                        "UPDATE node_provisioning SET agent_token_hash = $3, agent_token_sealed = $4 \
                         WHERE node_id = $1 AND agent_token_hash = $2 AND agent_token_sealed IS NULL",
                    )
                    .bind(node_id)
                    .bind(&session_hash)
                    .bind(kiln_auth::hash_token(&token))
                    .bind(self.secrets.seal(&token))
                    .execute(transaction.connection())
                    .await
                    .map_err(StoreError::query("minting a fresh boot token"))?
                    .rows_affected();
                    if changed == 1 {
                        transaction.commit().await?;
                        tracing::info!(node = %node_id, "a fresh boot token for a ramdisk booted again; the previous agent's session ends");
                        return Ok(Some(token));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Exchanges a node's boot token (the one its boot script carried) for the session
    /// token its agent uses from then on, which never appears in a boot script. Good once:
    /// `None` for a token that is not the node's current, unexchanged boot token.
    pub async fn exchange_agent_token(&self, node_id: &str, boot_token: &str) -> Result<Option<String>, StoreError> {
        let mut transaction = self.write().await?;
        let session = kiln_auth::mint_token();
        // One statement decides: of two exchanges of one token, one changes the row.
        let changed = sqlx::query(
            "UPDATE node_provisioning SET agent_token_hash = $3, agent_token_sealed = NULL \
             WHERE node_id = $1 AND agent_token_hash = $2 AND agent_token_sealed IS NOT NULL",
        )
        .bind(node_id)
        .bind(kiln_auth::hash_token(boot_token))
        .bind(kiln_auth::hash_token(&session))
        .execute(transaction.connection())
        .await
        .map_err(StoreError::query("exchanging a boot token"))?
        .rows_affected();
        if changed != 1 {
            return Ok(None);
        }
        transaction.commit().await?;
        Ok(Some(session))
    }

    /// The node and provisioning record an agent's session token belongs to, or `None`
    /// when the token is not the node's current session (forged, replayed after its
    /// operation, for another node, or a boot token not yet exchanged). The comparison
    /// takes the same time wherever the hashes differ.
    pub async fn authenticate_agent(&self, node_id: &str, token: &str) -> Result<Option<(Node, ProvisionRecord)>, StoreError> {
        let mut connection = self.read().await?;
        let Some(AgentTokens { hash: Some(stored), sealed }) = agent_tokens(&mut connection, node_id).await? else { return Ok(None) };
        let presented = kiln_auth::hash_token(token);
        // A sealed token is a boot token not yet exchanged: good only for the exchange.
        if !bool::from(presented.as_bytes().ct_eq(stored.as_bytes())) || sealed.is_some() {
            return Ok(None);
        }
        let Some(record) = record_of(&mut connection, node_id).await? else { return Ok(None) };
        let Some(snapshot) = load_nodes(&mut connection, "id = $1", &[node_id.to_owned()], "").await?.pop() else { return Ok(None) };
        Ok(Some((snapshot.node, record)))
    }

    /// Records an agent's heartbeat: when it was seen and how far it got.
    pub async fn record_heartbeat(&self, node_id: &str, heartbeat: &Heartbeat) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        // The first heartbeat makes the node due, so the reconciler starts watching the
        // agent's silences rather than the boot deadline.
        sqlx::query(
            "UPDATE node_provisioning SET due_at = CASE WHEN agent_seen_at IS NULL THEN $2 ELSE due_at END, \
             agent_seen_at = $2, progress = COALESCE($3, progress) WHERE node_id = $1",
        )
        .bind(node_id)
        .bind(crate::now_millis())
        .bind(to_json(&heartbeat.progress))
        .execute(transaction.connection())
        .await
        .map_err(StoreError::query("recording a heartbeat"))?;
        transaction.commit().await
    }

    /// Records how an agent's command ended, for the reconciler. A result for another command
    /// than the current one, or a second result, is refused.
    pub async fn record_agent_result(&self, node_id: &str, result: &AgentResult) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let now = crate::now_millis();
        let updated = sqlx::query(
            "UPDATE node_provisioning SET agent_result = $2, agent_seen_at = $3, due_at = $3 \
             WHERE node_id = $1 AND command_id = $4 AND agent_result IS NULL",
        )
        .bind(node_id)
        .bind(serde_json::to_string(result).expect("results serialize"))
        .bind(now)
        .bind(result.id as i64)
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("recording an agent result"))?
        .rows_affected();
        if updated != 1 {
            return Err(StoreError::conflict(format!("command {} is not the node's current command, or was already answered", result.id)));
        }
        transaction.commit().await
    }

    /// A deployed system called back: if the reconciler waits for that, it is told.
    pub(crate) async fn note_callback(connection: &mut AnyConnection, node_id: &str) -> Result<(), StoreError> {
        let now = crate::now_millis();
        sqlx::query("UPDATE node_provisioning SET callback_at = $2, due_at = $2 WHERE node_id = $1 AND step = 'wait-callback'")
            .bind(node_id)
            .bind(now)
            .execute(connection)
            .await
            .map_err(StoreError::query("recording a callback"))?;
        Ok(())
    }
}

/// Inspection's findings in a node's properties: Ironic's flat keys (`cpus`, `cpu_arch`,
/// `memory_mb`, `local_gb`) for scheduling, and the whole inventory under `inventory`.
fn merge_inventory(properties: &mut serde_json::Map<String, serde_json::Value>, inventory: &kiln_types::provision::HardwareInventory) {
    let largest_disk = inventory.disks.iter().map(|disk| disk.size_bytes).max().unwrap_or(0);
    properties.insert("cpus".into(), inventory.cpu_count.into());
    properties.insert("cpu_arch".into(), inventory.cpu_arch.clone().into());
    properties.insert("memory_mb".into(), (inventory.memory_bytes >> 20).into());
    properties.insert("local_gb".into(), (largest_disk >> 30).into());
    properties.insert("inventory".into(), serde_json::to_value(inventory).expect("inventories serialize"));
}

/// A node's agent token as stored: the hash of the current token, and the token sealed for
/// the boot script while it is a boot token not yet exchanged.
struct AgentTokens {
    hash: Option<String>,
    sealed: Option<String>,
}

/// The node's agent tokens; `None` for a node without a provisioning record.
async fn agent_tokens(connection: &mut AnyConnection, node_id: &str) -> Result<Option<AgentTokens>, StoreError> {
    let failed = || StoreError::query("reading an agent token");
    let row = sqlx::query("SELECT agent_token_hash, agent_token_sealed FROM node_provisioning WHERE node_id = $1")
        .bind(node_id)
        .fetch_optional(connection)
        .await
        .map_err(failed())?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(AgentTokens {
        hash: row.try_get("agent_token_hash").map_err(failed())?,
        sealed: row.try_get("agent_token_sealed").map_err(failed())?,
    }))
}
