//! The event log: every change, with who made it and the state before and after.

use kiln_types::api::Event;
use sqlx::{AnyConnection, Row as _};

use crate::{Store, StoreError};

/// What to read from the log. `projects: None` means every project (admins).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub projects: Option<Vec<String>>,
    pub target_kind: Option<String>,
    pub target: Option<String>,
    /// Only events with an id greater than this.
    pub after: Option<i64>,
    pub limit: u32,
    /// The newest first (the most recent `limit`), rather than the oldest after `after`.
    pub newest_first: bool,
}

pub(crate) struct NewEvent<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target: &'a str,
    pub project: Option<&'a str>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Held from an event's insert to its transaction's commit on PostgreSQL, so that event ids
/// become visible in the order they were allocated: a reader of "events after N" never
/// misses one that commits late. (SQLite has one writer, which gives the same order.)
const EVENT_ORDER_LOCK: i64 = 7283640562;

/// The most an event keeps of a state before or after: the log is an audit trail, not a
/// second copy of every large value (a larger state is kept as its size).
const MAX_EVENT_STATE_BYTES: usize = 128 << 10;

/// A state as the event log keeps it: whole, or a note of its size when over the bound.
fn bounded_state(value: serde_json::Value) -> String {
    let text = value.to_string();
    if text.len() <= MAX_EVENT_STATE_BYTES {
        return text;
    }
    serde_json::json!({ "truncated": true, "bytes": text.len() }).to_string()
}

/// Takes the event log's order lock for the rest of the transaction (PostgreSQL; SQLite's
/// one writer is the same already). Also what makes a count of recent events and the event
/// written after it one step, across replicas.
pub(crate) async fn lock_event_order(connection: &mut AnyConnection) -> Result<(), StoreError> {
    if connection.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_ORDER_LOCK)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("ordering the event log"))?;
    }
    Ok(())
}

pub(crate) async fn record(connection: &mut AnyConnection, event: NewEvent<'_>) -> Result<(), StoreError> {
    lock_event_order(connection).await?;
    sqlx::query(
        "INSERT INTO events (at, actor, action, target_kind, target, project, state_before, state_after) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(crate::now_millis())
    .bind(event.actor)
    .bind(event.action)
    .bind(event.target_kind)
    .bind(event.target)
    .bind(event.project)
    .bind(event.before.map(bounded_state))
    .bind(event.after.map(bounded_state))
    .execute(connection)
    .await
    .map_err(StoreError::query("recording an event"))?;
    Ok(())
}

impl Store {
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let mut sql =
            String::from("SELECT id, at, actor, action, target_kind, target, project, state_before, state_after FROM events WHERE id > $1");
        let mut text_binds: Vec<String> = Vec::new();
        if let Some(kind) = &filter.target_kind {
            text_binds.push(kind.clone());
            sql.push_str(&format!(" AND target_kind = ${}", text_binds.len() + 1));
        }
        if let Some(target) = &filter.target {
            text_binds.push(target.clone());
            sql.push_str(&format!(" AND target = ${}", text_binds.len() + 1));
        }
        if let Some(projects) = &filter.projects {
            if projects.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(&format!(" AND project IN ({})", crate::placeholders(text_binds.len() + 2, projects.len())));
            text_binds.extend(projects.iter().cloned());
        }
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        sql.push_str(&format!(" ORDER BY id {order} LIMIT {}", filter.limit.clamp(1, crate::MAX_PAGE_SIZE)));
        let mut query = sqlx::query(&sql).bind(filter.after.unwrap_or(0));
        for value in &text_binds {
            query = query.bind(value.as_str());
        }
        let mut connection = self.read().await?;
        let rows = query.fetch_all(&mut *connection).await.map_err(StoreError::query("listing events"))?;
        rows.iter()
            .map(|row| {
                let json = |column: &str| -> Result<Option<serde_json::Value>, StoreError> {
                    let text: Option<String> = row.try_get(column).map_err(StoreError::query("reading an event"))?;
                    text.map(|text| serde_json::from_str(&text))
                        .transpose()
                        .map_err(|error| StoreError::corrupt(format!("event {column}"), error))
                };
                Ok(Event {
                    id: row.try_get("id").map_err(StoreError::query("reading an event"))?,
                    at: crate::timestamp(row.try_get("at").map_err(StoreError::query("reading an event"))?),
                    actor: row.try_get("actor").map_err(StoreError::query("reading an event"))?,
                    action: row.try_get("action").map_err(StoreError::query("reading an event"))?,
                    target_kind: row.try_get("target_kind").map_err(StoreError::query("reading an event"))?,
                    target: row.try_get("target").map_err(StoreError::query("reading an event"))?,
                    project: row.try_get("project").map_err(StoreError::query("reading an event"))?,
                    before: json("state_before")?,
                    after: json("state_after")?,
                })
            })
            .collect()
    }
}
