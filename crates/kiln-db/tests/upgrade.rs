//! Upgrading a database an older Kiln left: a schema-7 database (image and group names
//! global) holding project images, project and global groups, their members, cloud-init
//! configs, group boot targets and a deploy under way, opened by today's store, on both
//! backends.

use kiln_auth::{ProjectScope, SecretBox};
use kiln_db::Store;
use kiln_test_utils::{BackendKind, TestDatabase};
use kiln_types::image::Visibility;
use kiln_types::provision::Intent;
use kiln_types::scoped_name::NameReference;
use sqlx::Connection as _;

/// What schema 7 held, written as an older Kiln wrote it.
const SCHEMA_7_ROWS: &[&str] = &[
    "INSERT INTO projects (name, description, created_at) VALUES ('a', '', 0), ('b', '', 0)",
    "INSERT INTO nodes (id, name, project, provision_state, maintenance, properties, created_at, updated_at) \
     VALUES ('id-1', 'n1', 'a', 'deploying', 0, '{}', 0, 0), ('id-2', 'n2', NULL, 'available', 0, '{}', 0, 0)",
    "INSERT INTO images (id, name, project, visibility, description, created_at, updated_at) \
     VALUES ('img-a', 'debian', 'a', 'private', '', 0, 0), ('img-base', 'base_os', NULL, 'public', '', 0, 0)",
    "INSERT INTO node_groups (name, description, project, created_at) VALUES ('compute', 'a''s', 'a', 0), ('all', '', NULL, 0)",
    "INSERT INTO group_members (group_name, node_id, position) VALUES ('compute', 'id-1', 0), ('all', 'id-1', 1), ('all', 'id-2', 0)",
    "INSERT INTO cloud_init_groups (group_name, meta_data, content, updated_at) VALUES ('compute', '{\"role\":\"cn\"}', '#cloud-config\n{}\n', 0)",
    "INSERT INTO boot_params (id, kernel, initrd, params, created_at, updated_at) VALUES ('bp-1', 'k', 'i', 'quiet', 0, 0)",
    "INSERT INTO boot_targets (kind, value, params_id) VALUES ('group', 'compute', 'bp-1'), ('group', 'all', 'bp-1')",
    "INSERT INTO node_provisioning (node_id, intent, target, operation, command_id, state_entered_at) VALUES ('id-1', \
     '{\"action\":\"capture\",\"image\":\"debian\"}', '{\"image\":\"debian\",\"version\":1,\"mode\":\"disk\"}', \
     '{\"capture_image\":\"debian\"}', 0, 0)",
];

async fn upgrade_keeps_every_reference(kind: BackendKind) {
    // None only for PostgreSQL without a server, which KILN_REQUIRE_POSTGRES (CI) forbids.
    let Some(database) = TestDatabase::new(kind).await else { return };
    Store::migrate_to_version(&database.url, 7).await.expect("making a schema-7 database");
    let url = if kind == BackendKind::Sqlite { format!("{}?mode=rwc", database.url) } else { database.url.clone() };
    let mut connection = sqlx::AnyConnection::connect(&url).await.expect("connecting to the schema-7 database");
    for statement in SCHEMA_7_ROWS {
        sqlx::query(statement).execute(&mut connection).await.unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
    connection.close().await.unwrap();

    let store = Store::open(&database.url, SecretBox::from_key([9; 32])).await.expect("upgrading");
    let scope_a = ProjectScope::Projects(vec!["a".into()]);
    let scope_b = ProjectScope::Projects(vec!["b".into()]);
    let reference = |text: &str| NameReference::parse("name", text).unwrap();

    // Images: a's image is a's, b may now take the same name, the public one is still public.
    assert_eq!(store.get_image(&reference("debian"), &scope_a).await.unwrap().project.as_deref(), Some("a"));
    assert!(store.get_image(&reference("debian"), &scope_b).await.is_err());
    let spec = kiln_db::NewImage {
        name: "debian".into(),
        project: Some("b".into()),
        visibility: Visibility::Private,
        shared_with: Vec::new(),
        description: String::new(),
        os: None,
        arch: None,
    };
    store.create_image("bob", &spec).await.expect("another project's name no longer collides");
    assert_eq!(store.get_public_image(&reference("base_os")).await.unwrap().name, "base_os");

    // Groups: the project group is keyed by its project, members and configs follow it.
    assert_eq!(store.get_node("n1", &ProjectScope::All).await.unwrap().groups, ["a/compute", "all"]);
    assert_eq!(store.get_node("n2", &ProjectScope::All).await.unwrap().groups, ["all"]);
    let compute = store.get_group(&reference("compute"), &scope_a).await.unwrap();
    assert_eq!(
        (compute.project.as_deref(), compute.description.as_str(), compute.members.as_slice()),
        (Some("a"), "a's", &["n1".to_owned()][..])
    );
    assert!(store.get_group(&reference("compute"), &scope_b).await.is_err());
    let config = store.get_cloud_init_group(&reference("compute"), &scope_a).await.unwrap();
    assert_eq!(config.file.map(|file| file.content), Some("#cloud-config\n{}\n".to_owned()));

    // Boot targets name the group's key; the global group's key is its name, as before.
    let params = store.list_boot_params().await.unwrap();
    let mut groups: Vec<&str> = params.iter().flat_map(|params| params.groups.iter().map(String::as_str)).collect();
    groups.sort_unstable();
    assert_eq!(groups, ["a/compute", "all"]);

    // The deploy under way and the capture asked for name the image by its key.
    let record = store.provision_record("id-1").await.unwrap().unwrap();
    assert_eq!(record.target.unwrap().image, "a/debian");
    assert_eq!(record.intent, Some(Intent::Capture { image: "a/debian".into() }));
    assert_eq!(record.operation.capture_image.as_deref(), Some("a/debian"), "and so does a capture under way");

    // Opening again changes nothing.
    store.close().await;
    let again = Store::open(&database.url, SecretBox::from_key([9; 32])).await.expect("opening an upgraded database");
    assert_eq!(again.get_node("n1", &ProjectScope::All).await.unwrap().groups, ["a/compute", "all"]);
    again.close().await;
}

#[tokio::test]
async fn a_schema_7_sqlite_database_upgrades_keeping_every_reference() {
    upgrade_keeps_every_reference(BackendKind::Sqlite).await;
}

#[tokio::test]
async fn a_schema_7_postgres_database_upgrades_keeping_every_reference() {
    upgrade_keeps_every_reference(BackendKind::Postgres).await;
}
