//! Nodes' serial output: the last bytes of each node's console, kept in the store so that any
//! replica serves them and they outlive a restart, with the count of every byte received, so
//! that a reader following the console asks for what came after its offset.

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
    /// Bytes after the reader's offset were dropped to keep the buffer bounded.
    pub truncated: bool,
}

impl Store {
    /// Appends `bytes` to the node's console, keeping its last `keep` bytes.
    pub async fn append_console(&self, node_id: &str, bytes: &[u8], keep: usize) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        let row = sqlx::query("SELECT data, total FROM console_output WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("reading a console"))?;
        let (mut data, total) = match row {
            Some(row) => {
                let data: Vec<u8> = row.try_get("data").map_err(StoreError::query("reading a console"))?;
                let total: i64 = row.try_get("total").map_err(StoreError::query("reading a console"))?;
                (data, total)
            }
            None => (Vec::new(), 0),
        };
        data.extend_from_slice(bytes);
        if data.len() > keep {
            data.drain(..data.len() - keep);
        }
        let total = total.saturating_add(i64::try_from(bytes.len()).unwrap_or(i64::MAX));
        sqlx::query(
            "INSERT INTO console_output (node_id, data, total, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (node_id) DO UPDATE SET data = excluded.data, total = excluded.total, updated_at = excluded.updated_at",
        )
        .bind(node_id)
        .bind(data)
        .bind(total)
        .bind(crate::now_millis())
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("recording console output"))?;
        transaction.commit().await?;
        Ok(())
    }

    /// The node's console bytes after offset `after` (all that is kept when `None`).
    pub async fn read_console(&self, node_id: &str, after: Option<u64>) -> Result<ConsoleTail, StoreError> {
        let mut connection = self.read().await?;
        let row = sqlx::query("SELECT data, total FROM console_output WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&mut *connection)
            .await
            .map_err(StoreError::query("reading a console"))?;
        let Some(row) = row else { return Ok(ConsoleTail::default()) };
        let data: Vec<u8> = row.try_get("data").map_err(StoreError::query("reading a console"))?;
        let total: i64 = row.try_get("total").map_err(StoreError::query("reading a console"))?;
        let end = u64::try_from(total).unwrap_or(0);
        let held_from = end.saturating_sub(data.len() as u64);
        let from = after.unwrap_or(held_from).clamp(held_from, end);
        let skip = usize::try_from(from - held_from).unwrap_or(data.len());
        Ok(ConsoleTail { start: from, end, data: data[skip..].to_vec(), truncated: after.is_some_and(|after| after < held_from) })
    }
}
