//! Schema migrations, embedded in the binary (written once where both backends take the same
//! SQL, per backend where they differ), applied in order in one transaction each, and
//! recorded in `schema_migrations`.

use sqlx::{Connection as _, Row as _};

use crate::{Backend, Store, StoreError};

struct Migration {
    version: i64,
    name: &'static str,
    sql: Sql,
}

/// A migration's statements: one text where both backends take the same SQL
/// (`migrations/common`), or one per backend where their dialects differ.
enum Sql {
    Common(&'static str),
    PerBackend { sqlite: &'static str, postgres: &'static str },
}

impl Migration {
    fn sql(&self, backend: Backend) -> &'static str {
        match (&self.sql, backend) {
            (Sql::Common(sql), _) => sql,
            (Sql::PerBackend { sqlite, .. }, Backend::Sqlite) => sqlite,
            (Sql::PerBackend { postgres, .. }, Backend::Postgres) => postgres,
        }
    }
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: Sql::PerBackend {
            sqlite: include_str!("../migrations/sqlite/0001_initial.sql"),
            postgres: include_str!("../migrations/postgres/0001_initial.sql"),
        },
    },
    Migration {
        version: 2,
        name: "boot",
        sql: Sql::PerBackend {
            sqlite: include_str!("../migrations/sqlite/0002_boot.sql"),
            postgres: include_str!("../migrations/postgres/0002_boot.sql"),
        },
    },
    Migration {
        version: 3,
        name: "images",
        sql: Sql::PerBackend {
            sqlite: include_str!("../migrations/sqlite/0003_images.sql"),
            postgres: include_str!("../migrations/postgres/0003_images.sql"),
        },
    },
    Migration { version: 4, name: "cloud_init", sql: Sql::Common(include_str!("../migrations/common/0004_cloud_init.sql")) },
    Migration { version: 5, name: "power", sql: Sql::Common(include_str!("../migrations/common/0005_power.sql")) },
    Migration { version: 6, name: "provisioning", sql: Sql::Common(include_str!("../migrations/common/0006_provisioning.sql")) },
    Migration { version: 7, name: "enrolment_index", sql: Sql::Common(include_str!("../migrations/common/0007_enrolment_index.sql")) },
    Migration {
        version: 8,
        name: "image_names_per_project",
        sql: Sql::PerBackend {
            sqlite: include_str!("../migrations/sqlite/0008_image_names_per_project.sql"),
            postgres: include_str!("../migrations/postgres/0008_image_names_per_project.sql"),
        },
    },
    Migration { version: 9, name: "group_keys", sql: Sql::Common(include_str!("../migrations/common/0009_group_keys.sql")) },
    Migration { version: 10, name: "deploy_image_keys", sql: Sql::Common(include_str!("../migrations/common/0010_deploy_image_keys.sql")) },
    Migration { version: 11, name: "ironic_nodes", sql: Sql::Common(include_str!("../migrations/common/0011_ironic_nodes.sql")) },
    Migration { version: 12, name: "user_passwords", sql: Sql::Common(include_str!("../migrations/common/0012_user_passwords.sql")) },
    Migration { version: 13, name: "web_sessions", sql: Sql::Common(include_str!("../migrations/common/0013_web_sessions.sql")) },
    Migration {
        version: 14,
        name: "console_output",
        sql: Sql::PerBackend {
            sqlite: include_str!("../migrations/sqlite/0014_console_output.sql"),
            postgres: include_str!("../migrations/postgres/0014_console_output.sql"),
        },
    },
    Migration { version: 15, name: "network_disks", sql: Sql::Common(include_str!("../migrations/common/0015_network_disks.sql")) },
];

impl Store {
    /// Applies every migration newer than the database's schema, up to `up_to`.
    pub(crate) async fn migrate(&self, up_to: i64) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => {
                let mut transaction = self.write().await?;
                // Replicas starting together must not both apply the same migration.
                sqlx::query("SELECT pg_advisory_xact_lock(7283640561)")
                    .execute(transaction.connection())
                    .await
                    .map_err(StoreError::query("locking for migrations"))?;
                apply_migrations(transaction.connection(), self.backend, up_to).await?;
                transaction.commit().await
            }
            Backend::Sqlite => self.migrate_sqlite(up_to).await,
        }
    }

    /// SQLite changes a table's constraints only by rebuilding it, and dropping the old
    /// table with foreign keys on would cascade into its children's rows. SQLite's own
    /// procedure: foreign keys off outside the transaction, on one connection held
    /// throughout (a fresh connection would have them on again), and checked before the
    /// commit, so a migration that breaks a reference is rolled back.
    async fn migrate_sqlite(&self, up_to: i64) -> Result<(), StoreError> {
        let pragma = |operation| move |source| StoreError::Query { operation, source };
        let mut connection = self.write_pool.acquire().await.map_err(pragma("acquiring a connection"))?;
        sqlx::query("PRAGMA foreign_keys=OFF").execute(&mut *connection).await.map_err(pragma("turning foreign keys off"))?;
        let migrated = async {
            let mut transaction = connection.begin().await.map_err(pragma("starting a transaction"))?;
            apply_migrations(&mut transaction, self.backend, up_to).await?;
            let broken = sqlx::query("PRAGMA foreign_key_check")
                .fetch_all(&mut *transaction)
                .await
                .map_err(pragma("checking foreign keys after migrating"))?;
            if !broken.is_empty() {
                return Err(StoreError::Corrupt { message: format!("{} rows refer to missing rows after migrating", broken.len()) });
            }
            transaction.commit().await.map_err(pragma("committing"))
        }
        .await;
        sqlx::query("PRAGMA foreign_keys=ON").execute(&mut *connection).await.map_err(pragma("turning foreign keys on"))?;
        migrated
    }
}

/// Applies, in order, each migration newer than the recorded schema version, up to `up_to`.
async fn apply_migrations(connection: &mut sqlx::AnyConnection, backend: Backend, up_to: i64) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *connection)
    .await
    .map_err(StoreError::query("creating schema_migrations"))?;
    let applied: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations")
        .fetch_one(&mut *connection)
        .await
        .map_err(StoreError::query("reading the schema version"))?
        .try_get("version")
        .map_err(StoreError::query("reading the schema version"))?;
    let known = MIGRATIONS.last().map_or(0, |migration| migration.version);
    if applied > known {
        return Err(StoreError::SchemaTooNew { found: applied, known });
    }
    for migration in MIGRATIONS.iter().filter(|migration| migration.version > applied && migration.version <= up_to) {
        let fail = |source| StoreError::Migrate { version: migration.version, name: migration.name, source };
        sqlx::raw_sql(migration.sql(backend)).execute(&mut *connection).await.map_err(fail)?;
        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(crate::now_millis())
            .execute(&mut *connection)
            .await
            .map_err(fail)?;
        tracing::info!(version = migration.version, name = migration.name, "applied database migration");
    }
    Ok(())
}
