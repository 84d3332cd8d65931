//! Helpers for Kiln's tests: throwaway SQLite and PostgreSQL databases, a real S3 server,
//! BMC emulators, a registry, and a web server for one file.
//!
//! PostgreSQL tests run when `KILN_TEST_POSTGRES_URL` names a server the tests may create
//! databases on (`.ci/run` starts a throwaway cluster and sets it). When
//! `KILN_REQUIRE_POSTGRES=1` is set as well, a missing server fails the tests instead of
//! skipping them, so CI cannot pass without having run them.

mod files;
pub mod ipmi;
pub mod redfish;
pub mod registry;
pub mod s3;

use std::path::PathBuf;

pub use files::OneFileServer;

/// The two store backends every conformance test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

/// A database that exists for one test and is removed after it.
pub struct TestDatabase {
    pub url: String,
    _directory: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// A fresh database of the given kind, or `None` for PostgreSQL when no server is
    /// configured (and not required).
    pub async fn new(kind: BackendKind) -> Option<TestDatabase> {
        match kind {
            BackendKind::Sqlite => {
                let directory = tempfile::tempdir().expect("creating a temporary directory");
                let url = format!("sqlite://{}", directory.path().join("kiln.db").display());
                Some(TestDatabase { url, _directory: Some(directory), postgres: None })
            }
            BackendKind::Postgres => {
                let Some(admin_url) = postgres_admin_url() else {
                    eprintln!("skipping a PostgreSQL test: KILN_TEST_POSTGRES_URL is not set");
                    return None;
                };
                let name = format!("kiln_test_{}", uuid::Uuid::new_v4().simple());
                execute_on(&admin_url, &format!("CREATE DATABASE {name}")).await;
                let url = replace_database(&admin_url, &name);
                Some(TestDatabase { url, _directory: None, postgres: Some((admin_url, name)) })
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.postgres.take() {
            // Drop runs inside the test's runtime, which cannot be blocked on: use a thread
            // with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(execute_on(&admin_url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")));
            })
            .join();
        }
    }
}

fn postgres_admin_url() -> Option<String> {
    match std::env::var("KILN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("KILN_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("KILN_REQUIRE_POSTGRES=1 but KILN_TEST_POSTGRES_URL is not set");
            }
            None
        }
    }
}

/// `postgres://user@host:port/DB?params` with DB replaced.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let authority = match path_start {
        Some(start) => &base[..start],
        None => base,
    };
    format!("{authority}/{database}{query}")
}

async fn execute_on(url: &str, sql: &str) {
    use sqlx::Connection as _;
    use sqlx::Executor as _;
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap_or_else(|error| panic!("connecting to {url}: {error}"));
    connection.execute(sql).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
}

/// The directory of the workspace, for finding `examples/` and fixtures from any crate.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root exists")
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_keeping_parameters() {
        assert_eq!(
            replace_database("postgres://postgres@localhost:5432/postgres?host=/tmp", "x"),
            "postgres://postgres@localhost:5432/x?host=/tmp"
        );
        assert_eq!(replace_database("postgres://u:p@h/db", "x"), "postgres://u:p@h/x");
        assert_eq!(replace_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }
}
