//! Schema migrations, embedded in the binary (written once where both backends take the same
//! SQL, per backend where they differ), applied in order in one transaction each, and
//! recorded in `schema_migrations`.

use sqlx::Row as _;

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
];

impl Store {
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        let mut transaction = self.write().await?;
        let connection = transaction.connection();
        if self.backend == Backend::Postgres {
            // Replicas starting together must not both apply the same migration.
            sqlx::query("SELECT pg_advisory_xact_lock(7283640561)")
                .execute(&mut *connection)
                .await
                .map_err(StoreError::query("locking for migrations"))?;
        }
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
        for migration in MIGRATIONS.iter().filter(|migration| migration.version > applied) {
            let sql = migration.sql(self.backend);
            let fail = |source| StoreError::Migrate { version: migration.version, name: migration.name, source };
            sqlx::raw_sql(sql).execute(&mut *connection).await.map_err(fail)?;
            sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                .bind(migration.version)
                .bind(migration.name)
                .bind(crate::now_millis())
                .execute(&mut *connection)
                .await
                .map_err(fail)?;
            tracing::info!(version = migration.version, name = migration.name, "applied database migration");
        }
        transaction.commit().await
    }
}
