//! Network-mode nodes' disks: which image version each node's clone was made from, and the
//! export name that is the clone's credential (minted per clone like an agent token: kept as
//! a hash for the gateway's look-up, sealed for the boot script that hands it to the node).

use sqlx::Row as _;

use crate::{Store, StoreError};

/// A node's network disk, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDiskRecord {
    pub node_id: String,
    /// The image's key (`PROJECT/NAME`).
    pub image: String,
    pub version: i64,
    /// The blob the clone's base was expanded from.
    pub base_sha256: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

fn record_of(row: &sqlx::any::AnyRow) -> Result<NetworkDiskRecord, sqlx::Error> {
    Ok(NetworkDiskRecord {
        node_id: row.try_get("node_id")?,
        image: row.try_get("image")?,
        version: row.try_get("version")?,
        base_sha256: row.try_get("base_sha256")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Records `node_id`'s new clone, replacing any earlier record (and so revoking the
    /// earlier clone's export name), and returns the new export name.
    pub async fn record_network_disk(&self, node_id: &str, image: &str, version: i64, base_sha256: &str) -> Result<String, StoreError> {
        let export = kiln_auth::mint_token();
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        sqlx::query("DELETE FROM network_disks WHERE node_id = $1")
            .bind(node_id)
            .execute(&mut *connection)
            .await
            .map_err(StoreError::query("replacing a network disk"))?;
        sqlx::query(
            "INSERT INTO network_disks (node_id, image, version, base_sha256, export_hash, export_sealed, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(node_id)
        .bind(image)
        .bind(version)
        .bind(base_sha256)
        .bind(kiln_auth::hash_token(&export))
        .bind(self.secrets.seal(&export))
        .bind(crate::now_millis())
        .execute(&mut *connection)
        .await
        .map_err(StoreError::query("recording a network disk"))?;
        transaction.commit().await?;
        Ok(export)
    }

    pub async fn network_disk(&self, node_id: &str) -> Result<Option<NetworkDiskRecord>, StoreError> {
        let row = sqlx::query("SELECT node_id, image, version, base_sha256, created_at FROM network_disks WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(StoreError::query("reading a network disk"))?;
        row.as_ref().map(record_of).transpose().map_err(StoreError::query("reading a network disk"))
    }

    /// Every recorded network disk (the exports a restarted server serves again).
    pub async fn network_disks(&self) -> Result<Vec<NetworkDiskRecord>, StoreError> {
        let rows = sqlx::query("SELECT node_id, image, version, base_sha256, created_at FROM network_disks ORDER BY node_id")
            .fetch_all(&mut *self.read().await?)
            .await
            .map_err(StoreError::query("listing network disks"))?;
        rows.iter().map(record_of).collect::<Result<_, _>>().map_err(StoreError::query("listing network disks"))
    }

    /// The export name of `node_id`'s clone, for its boot script only.
    pub async fn network_disk_export(&self, node_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT export_sealed FROM network_disks WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(StoreError::query("reading a network disk's export"))?;
        let Some(row) = row else { return Ok(None) };
        let sealed: String = row.try_get("export_sealed").map_err(StoreError::query("reading a network disk's export"))?;
        self.secrets.open(&sealed).map(Some).map_err(|error| StoreError::corrupt("network disk export", error))
    }

    /// The node whose clone `export` names, if any.
    pub async fn network_disk_by_export(&self, export: &str) -> Result<Option<NetworkDiskRecord>, StoreError> {
        let row = sqlx::query("SELECT node_id, image, version, base_sha256, created_at FROM network_disks WHERE export_hash = $1")
            .bind(kiln_auth::hash_token(export))
            .fetch_optional(&mut *self.read().await?)
            .await
            .map_err(StoreError::query("looking up a network disk"))?;
        row.as_ref().map(record_of).transpose().map_err(StoreError::query("looking up a network disk"))
    }

    pub async fn remove_network_disk(&self, node_id: &str) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        sqlx::query("DELETE FROM network_disks WHERE node_id = $1")
            .bind(node_id)
            .execute(transaction.connection())
            .await
            .map_err(StoreError::query("removing a network disk"))?;
        transaction.commit().await?;
        Ok(())
    }
}
