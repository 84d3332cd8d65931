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
    #[error("configuring the object store: {message}")]
    Config { message: String },
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

/// An error and its causes on one line, `outer: inner: innermost`, for logs and replies.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
