//! Kiln's store: the only crate that knows SQL.
//!
//! One [`Store`] type over two backends: SQLite (embedded default, WAL mode) and PostgreSQL
//! (for several `kiln serve` replicas). Both run the same statements through sqlx's `Any`
//! driver; where their SQL differs the migrations say so, one directory per backend. Every
//! change is made in one transaction together with the event that records it, so a crash
//! leaves either both or neither.

mod boot;
mod cloud_init;
mod console;
mod error;
mod events;
mod groups;
mod images;
mod inventory;
mod ironic;
mod migrations;
mod network_disks;
mod nodes;
mod passwords;
mod power;
mod provision;
mod reservations;
mod resolve;
mod tenancy;
mod web_sessions;

use std::time::Duration;

use kiln_auth::SecretBox;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor as _};

pub use boot::{Enrolment, EnrolmentLimits, EnrolmentRefusal};
pub use cloud_init::{CloudInitData, CloudInitGroupRecord, CloudInitNodeRecord};
pub use console::ConsoleTail;
pub use error::StoreError;
pub use events::EventFilter;
pub use images::{ImageChange, ImportSource, NewArtifact, NewImage, NewVersion, UnusedBlob};
pub use inventory::{Inventory, InventoryView};
pub use ironic::ProvisionNote;
pub use network_disks::NetworkDiskRecord;
pub use nodes::{NodeFilter, NodeSnapshot};
pub use passwords::{PasswordAttempt, PasswordLogin};
pub use power::PowerRead;
pub use provision::ProvisionWork;
pub use tenancy::TokenIdentity;
pub use web_sessions::SessionIdentity;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite reader connections. sqlx runs each SQLite connection on a thread of its own and
/// hands every statement over a channel; on a small machine more readers than cores cost
/// more in context switches than they gain in parallelism (measured: BENCHMARKS.md).
const SQLITE_READERS: u32 = 4;

/// Listings return at most this many items per page.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where write transactions run. For SQLite this is a pool of one connection: SQLite
    /// allows one writer at a time, and a deferred transaction that reads and then writes
    /// fails with SQLITE_BUSY (rather than waiting) when another connection wrote in
    /// between. One connection also orders the rollback of a transaction dropped on error
    /// before the next writer's statements. For PostgreSQL it is the main pool.
    write_pool: AnyPool,
    backend: Backend,
    secrets: SecretBox,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:******{}", &url[..scheme_end + 3], &credentials[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`), creating an SQLite file if
    /// needed, and brings the schema up to date.
    pub async fn open(url: &str, secrets: SecretBox) -> Result<Store, StoreError> {
        let store = Store::connect(url, secrets).await?;
        store.migrate(i64::MAX).await?;
        Ok(store)
    }

    /// Brings the database at `url` to schema `version` and no further, then closes it: how
    /// upgrade tests make a database as an older Kiln left it. Not for serving: today's
    /// store reads only today's schema.
    #[doc(hidden)]
    pub async fn migrate_to_version(url: &str, version: i64) -> Result<(), StoreError> {
        let store = Store::connect(url, SecretBox::from_key([0; 32])).await?;
        let migrated = store.migrate(version).await;
        store.close().await;
        migrated
    }

    async fn connect(url: &str, secrets: SecretBox) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl { url: redact_url(url) });
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let options: AnyConnectOptions = url.parse().map_err(|source| StoreError::Connect { url: redact_url(&url), source })?;
        let pool_options = |max_connections| {
            AnyPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                // A ping before every acquire would double the round trips of a one-statement
                // request; a broken connection fails its statement instead and is replaced.
                .test_before_acquire(false)
                .after_connect(move |connection, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // synchronous=NORMAL is durable in WAL mode except for the last
                            // transactions before a power cut; it never corrupts the database.
                            connection
                                .execute(
                                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                                 PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
                                )
                                .await?;
                        }
                        Ok(())
                    })
                })
        };
        let connect_error = |source| StoreError::Connect { url: redact_url(&url), source };
        let (pool, write_pool) = match backend {
            Backend::Sqlite => {
                // The writer first, so that it creates the file and switches it to WAL
                // before readers open it.
                let write_pool = pool_options(1).connect_with(options.clone()).await.map_err(connect_error)?;
                let pool = pool_options(SQLITE_READERS).connect_with(options).await.map_err(connect_error)?;
                (pool, write_pool)
            }
            Backend::Postgres => {
                let pool = pool_options(16).connect_with(options).await.map_err(connect_error)?;
                (pool.clone(), pool)
            }
        };
        Ok(Store { pool, write_pool, backend, secrets })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection; waits for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
        self.write_pool.close().await;
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.read().await?;
        connection.ping().await.map_err(|source| StoreError::Query { operation: "ping", source })
    }

    async fn read(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        self.pool.acquire().await.map_err(|source| StoreError::Query { operation: "acquiring a connection", source })
    }

    /// Starts a write transaction. Dropping it without `commit` rolls it back.
    async fn write(&self) -> Result<WriteTransaction, StoreError> {
        let transaction =
            self.write_pool.begin().await.map_err(|source| StoreError::Query { operation: "starting a transaction", source })?;
        Ok(WriteTransaction { transaction })
    }
}

struct WriteTransaction {
    transaction: sqlx::Transaction<'static, sqlx::Any>,
}

impl WriteTransaction {
    fn connection(&mut self) -> &mut AnyConnection {
        &mut self.transaction
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.transaction.commit().await.map_err(|source| StoreError::Query { operation: "committing", source })
    }
}

/// Whether a node (or image) of `project` is inside `scope`. Resources without a project
/// (the unallocated pool) are visible to admins only.
pub(crate) fn nodes_visible(scope: &kiln_auth::ProjectScope, project: Option<&str>) -> bool {
    match scope {
        kiln_auth::ProjectScope::All => true,
        kiln_auth::ProjectScope::Projects(projects) => project.is_some_and(|project| projects.iter().any(|p| p == project)),
    }
}

/// Now, at the millisecond resolution the store keeps, so that what a write returns equals
/// what a later read returns.
pub(crate) fn now() -> jiff::Timestamp {
    timestamp(now_millis())
}

pub(crate) fn now_millis() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

pub(crate) fn timestamp(millis: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(millis).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// `$first, $first+1, …` for `count` values: the placeholders of an `IN (…)` list. Both
/// SQLite and PostgreSQL accept numbered `$N` parameters.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}
