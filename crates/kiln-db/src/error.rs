//! What can go wrong in the store, one variant per kind of failure the API must tell apart.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {url} (expected sqlite://PATH or postgres://…)")]
    UnsupportedUrl { url: String },
    #[error("connecting to the database at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying database migration {version} ({name})")]
    Migrate {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the database schema is at version {found}, newer than this Kiln knows ({known}); upgrade Kiln")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database error while {operation}")]
    Query {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{kind} '{key}' not found")]
    NotFound { kind: &'static str, key: String },
    #[error("{message}")]
    Conflict { message: String },
    #[error("{message}")]
    Invalid { message: String },
    #[error("a stored value is corrupt: {message}")]
    Corrupt { message: String },
    #[error("a stored value is corrupt: {what}")]
    CorruptValue {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub(crate) fn query(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| {
            // A unique constraint that a pre-check did not catch (a race with another
            // writer) is still a conflict, not a server error.
            if let sqlx::Error::Database(database_error) = &source
                && database_error.is_unique_violation()
            {
                return StoreError::Conflict {
                    message: format!("{operation}: a unique value is already taken ({})", database_error.message()),
                };
            }
            // A reference to a row that is not there (a project, a user) is the input's
            // fault: every such field is checked first, by name; this is the net under them.
            if let sqlx::Error::Database(database_error) = &source
                && database_error.is_foreign_key_violation()
            {
                return StoreError::Invalid { message: format!("{operation}: refers to something that does not exist") };
            }
            StoreError::Query { operation, source }
        }
    }

    /// A stored value that does not read back (bad JSON, a secret this key cannot open).
    pub(crate) fn corrupt(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::CorruptValue { what: what.into(), source: source.into() }
    }

    pub(crate) fn not_found(kind: &'static str, key: impl Into<String>) -> StoreError {
        StoreError::NotFound { kind, key: key.into() }
    }

    pub(crate) fn conflict(message: impl Into<String>) -> StoreError {
        StoreError::Conflict { message: message.into() }
    }
}
