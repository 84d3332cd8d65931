//! What can go wrong in the blob store, one variant per failed operation.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("'{text}' is not a blob id (64 lowercase hex digits of SHA-256)")]
    InvalidId { text: String },
    #[error("blob {id} is not in the store")]
    NotFound { id: String },
    #[error("{operation} {}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{operation} {key} in the object store")]
    ObjectStore {
        operation: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("blob {id} is damaged: its bytes now have the SHA-256 {actual}")]
    Damaged { id: String, actual: String },
    #[error("configuring the object store")]
    Config {
        #[source]
        source: object_store::Error,
    },
}

impl BlobError {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BlobError {
        let path = path.into();
        move |source| BlobError::Io { operation, path, source }
    }

    /// Whether the failure is a full disk or quota, which the API reports as such.
    pub fn is_storage_full(&self) -> bool {
        match self {
            BlobError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull || source.kind() == std::io::ErrorKind::QuotaExceeded
            }
            _ => false,
        }
    }
}

pub use kiln_types::error_chain;
