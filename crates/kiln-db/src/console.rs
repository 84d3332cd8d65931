//! Nodes' serial output: the last bytes of each node's console, kept in the store so that any
//! replica serves them and they outlive a restart. Output is stored as the pieces it arrived
//! in, each at its offset among every byte the console has sent; appending writes only the
//! new piece, and pieces that fall out of the kept window are deleted whole.

use sqlx::Row as _;

use crate::{Store, StoreError};

/// The console bytes a reader asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsoleTail {
    /// The offset (in all bytes ever received) of the first byte of `data`.
    pub start: u64,
    /// How many bytes have been received in all: the offset to ask from next.
    pub end: u64,
    pub data: Vec<u8>,
    /// Bytes after the reader's offset were dropped to keep the console bounded.
    pub truncated: bool,
}

/// The offsets of a node's kept output: where it starts and where it ends.
async fn held_range(connection: &mut sqlx::AnyConnection, node_id: &str) -> Result<Option<(i64, i64)>, StoreError> {
    let row = sqlx::query("SELECT MIN(start) AS held_from, MAX(start + length(data)) AS total FROM console_chunks WHERE node_id = $1")
        .bind(node_id)
        .fetch_one(&mut *connection)
        .await
        .map_err(StoreError::query("reading a console"))?;
    let held_from: Option<i64> = row.try_get("held_from").map_err(StoreError::query("reading a console"))?;
    let total: Option<i64> = row.try_get("total").map_err(StoreError::query("reading a console"))?;
    Ok(held_from.zip(total))
}

impl Store {
    /// Appends `bytes` to the node's console, keeping at least its last `keep` bytes (whole
    /// pieces: a little more).
    pub async fn append_console(&self, node_id: &str, bytes: &[u8], keep: usize) -> Result<(), StoreError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let total = held_range(connection, node_id).await?.map_or(0, |(_, total)| total);
        sqlx::query("INSERT INTO console_chunks (node_id, start, data, at) VALUES ($1, $2, $3, $4)")
            .bind(node_id)
            .bind(total)
            .bind(bytes.to_vec())
            .bind(crate::now_millis())
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("recording console output"))?;
        let new_total = total.saturating_add(i64::try_from(bytes.len()).unwrap_or(i64::MAX));
        let keep_from = new_total.saturating_sub(i64::try_from(keep).unwrap_or(i64::MAX));
        sqlx::query("DELETE FROM console_chunks WHERE node_id = $1 AND start + length(data) <= $2")
            .bind(node_id)
            .bind(keep_from)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("dropping old console output"))?;
        transaction.commit().await?;
        Ok(())
    }

    /// The node's console bytes after offset `after` (all that is kept when `None`). Asking
    /// from the end costs one small query and sends nothing.
    pub async fn read_console(&self, node_id: &str, after: Option<u64>) -> Result<ConsoleTail, StoreError> {
        let mut connection = self.read().await?;
        let Some((held_from, total)) = held_range(&mut connection, node_id).await? else { return Ok(ConsoleTail::default()) };
        let (held_from, end) = (u64::try_from(held_from).unwrap_or(0), u64::try_from(total).unwrap_or(0));
        let from = after.unwrap_or(held_from).clamp(held_from, end);
        let truncated = after.is_some_and(|after| after < held_from);
        if from == end {
            return Ok(ConsoleTail { start: end, end, data: Vec::new(), truncated });
        }
        let rows = sqlx::query("SELECT start, data FROM console_chunks WHERE node_id = $1 AND start + length(data) > $2 ORDER BY start")
            .bind(node_id)
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .fetch_all(&mut *connection)
            .await
            .map_err(StoreError::query("reading a console"))?;
        let mut data = Vec::new();
        let mut first_start = None;
        for row in rows {
            let start: i64 = row.try_get("start").map_err(StoreError::query("reading a console"))?;
            let piece: Vec<u8> = row.try_get("data").map_err(StoreError::query("reading a console"))?;
            first_start.get_or_insert(u64::try_from(start).unwrap_or(0));
            data.extend_from_slice(&piece);
        }
        let skip = usize::try_from(from.saturating_sub(first_start.unwrap_or(from))).unwrap_or(0).min(data.len());
        data.drain(..skip);
        Ok(ConsoleTail { start: from, end, data, truncated })
    }
}
