//! The store conformance suite: every test runs against SQLite and PostgreSQL, so both
//! backends behave the same to the rest of Kiln.

use std::sync::Arc;

use kiln_auth::{ProjectScope, SecretBox};
use kiln_db::{Enrolment, EnrolmentLimits, EnrolmentRefusal, NodeFilter, Store, StoreError};
use kiln_test_utils::{BackendKind, TestDatabase};
use kiln_types::api::ProjectRole;
use kiln_types::discovery::parse_document;
use kiln_types::node::{NodeChange, NodeInput, NodeSpec};
use kiln_types::scoped_name::{NameReference, ScopedName};
use kiln_types::{MacAddress, ProvisionState};

async fn open(kind: BackendKind) -> Option<(Store, TestDatabase)> {
    let database = TestDatabase::new(kind).await?;
    let store = Store::open(&database.url, SecretBox::from_key([9; 32])).await.expect("opening the store");
    Some((store, database))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                let (store, _database) = super::open(kiln_test_utils::BackendKind::Sqlite).await.unwrap();
                super::$name(store).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                if let Some((store, _database)) = super::open(kiln_test_utils::BackendKind::Postgres).await {
                    super::$name(store).await;
                }
            })*
        }
    };
}

/// Tests that need a second store on the same database: a second replica.
macro_rules! conformance_two_replicas {
    ($($name:ident),* $(,)?) => {
        mod two_replicas_sqlite {
            $(#[tokio::test]
            async fn $name() {
                let (store, database) = super::open(kiln_test_utils::BackendKind::Sqlite).await.unwrap();
                let other = Store::open(&database.url, SecretBox::from_key([9; 32])).await.unwrap();
                super::$name(store, other).await;
            })*
            use super::*;
        }
        mod two_replicas_postgres {
            $(#[tokio::test]
            async fn $name() {
                if let Some((store, database)) = super::open(kiln_test_utils::BackendKind::Postgres).await {
                    let other = Store::open(&database.url, SecretBox::from_key([9; 32])).await.unwrap();
                    super::$name(store, other).await;
                }
            })*
            use super::*;
        }
    };
}

conformance_two_replicas!(
    inventory_follows_changes_made_by_another_replica,
    cloud_init_data_follows_replicas_and_cascades,
    provisioning_leases_give_each_node_to_one_replica,
);

conformance!(
    migrations_are_idempotent,
    nodes_round_trip_with_interfaces_groups_and_masked_password,
    unique_names_xnames_nids_and_macs,
    discovery_is_all_or_nothing_and_idempotent,
    listing_filters_and_pages,
    scopes_hide_other_projects,
    allocation_moves_nodes_between_projects,
    tokens_resolve_expire_and_revoke,
    web_sessions_live_until_they_end_or_expire,
    consoles_keep_their_last_bytes_and_offsets,
    bootstrap_creates_one_admin,
    groups_respect_project_ownership,
    events_record_changes,
    image_versions_tags_clones_and_blob_counts,
    image_uploads_and_gc_bookkeeping,
    enrolment_takes_only_unicast_macs_within_its_limits,
);

fn spec(yaml: &str) -> NodeSpec {
    let input: NodeInput = serde_yaml_from(yaml);
    NodeSpec::try_from(&input).unwrap()
}

fn serde_yaml_from<T: serde::de::DeserializeOwned>(text: &str) -> T {
    // The store tests need no YAML parser of their own: JSON is YAML.
    serde_json::from_str(text).unwrap()
}

fn five_nodes() -> serde_json::Value {
    let nodes: Vec<_> = (1..=5)
        .map(|n| {
            serde_json::json!({
                "name": format!("node{n:02}"), "nid": n, "xname": format!("x1000c0s0b{}n0", n - 1),
                "bmc_mac": format!("52:54:00:be:ee:{n:02}"), "bmc_ip": format!("172.16.0.10{n}"), "group": "compute",
                "interfaces": [{"mac_addr": format!("52:54:00:be:ef:{n:02}"), "ip_addrs": [{"name": "management", "ip_addr": format!("172.16.0.{n}")}]}]
            })
        })
        .collect();
    serde_json::Value::Array(nodes)
}

async fn migrations_are_idempotent(store: Store) {
    // Opening again runs the migrator again over an up-to-date schema.
    store.create_project("t", "p", "").await.unwrap();
    store.close().await;
}

async fn nodes_round_trip_with_interfaces_groups_and_masked_password(store: Store) {
    let node = store
        .create_node(
            "test",
            &spec(
                r#"{"name": "n1", "xname": "x1000c0s0b0n0", "nid": 1, "groups": ["compute", "gpu"],
                 "interfaces": [{"mac_addr": "52:54:00:BE:EF:01", "ip_addrs": [{"name": "mgmt", "ip_addr": "10.0.0.1"}]}],
                 "bmc": {"driver": "redfish", "address": "127.0.0.1:8000", "username": "root", "password": "calvin"},
                 "properties": {"cpu_count": 4}}"#,
            ),
        )
        .await
        .unwrap();
    assert_eq!(node.provision_state, ProvisionState::Enroll);
    let fetched = store.get_node("x1000c0s0b0n0", &ProjectScope::All).await.unwrap();
    assert_eq!(fetched, node);
    assert_eq!(fetched.groups, vec!["compute", "gpu"]);
    assert_eq!(fetched.interfaces[0].mac_addr.to_string(), "52:54:00:be:ef:01");
    assert_eq!(fetched.properties["cpu_count"], 4);
    let bmc = fetched.bmc.unwrap();
    assert_eq!(bmc.password.as_deref(), Some("******"));
    assert_eq!(store.bmc_password("n1").await.unwrap().as_deref(), Some("calvin"));
    let serialized = serde_json::to_string(&store.get_node(&node.id, &ProjectScope::All).await.unwrap()).unwrap();
    assert!(!serialized.contains("calvin"));

    // Echoing the mask back keeps the password; a new one replaces it.
    let keep = NodeChange::try_from(
        &serde_json::from_str(r#"{"bmc": {"driver": "redfish", "address": "127.0.0.1:8000", "password": "******"}}"#).unwrap(),
    )
    .unwrap();
    store.update_node("test", "n1", &ProjectScope::All, &keep).await.unwrap();
    assert_eq!(store.bmc_password("n1").await.unwrap().as_deref(), Some("calvin"));
    let replace = NodeChange::try_from(
        &serde_json::from_str(r#"{"bmc": {"driver": "ipmi", "address": "127.0.0.1:623", "password": "s3cret"}}"#).unwrap(),
    )
    .unwrap();
    let updated = store.update_node("test", "n1", &ProjectScope::All, &replace).await.unwrap();
    assert_eq!(store.bmc_password("n1").await.unwrap().as_deref(), Some("s3cret"));
    assert_eq!(updated.bmc.unwrap().username.as_deref(), Some("root"));

    store.delete_node("test", "n1", &ProjectScope::All).await.unwrap();
    assert!(matches!(store.get_node("n1", &ProjectScope::All).await, Err(StoreError::NotFound { .. })));
    // The MAC is free again once its node is gone.
    store.create_node("test", &spec(r#"{"name": "n2", "interfaces": [{"mac_addr": "52:54:00:be:ef:01"}]}"#)).await.unwrap();
}

async fn unique_names_xnames_nids_and_macs(store: Store) {
    store
        .create_node("test", &spec(r#"{"name": "a", "xname": "x1c0s0b0n0", "nid": 1, "interfaces": [{"mac_addr": "52:54:00:00:00:01"}]}"#))
        .await
        .unwrap();
    let clashes = [
        (r#"{"name": "a"}"#, "name 'a' is already used by node 'a'"),
        (r#"{"name": "b", "xname": "x1c0s0b0n0"}"#, "xname x1c0s0b0n0 is already used by node 'a'"),
        (r#"{"name": "b", "nid": 1}"#, "NID 1 is already used by node 'a'"),
        (r#"{"name": "b", "interfaces": [{"mac_addr": "52:54:00:00:00:01"}]}"#, "MAC 52:54:00:00:00:01 is already used by node 'a'"),
    ];
    for (input, message) in clashes {
        match store.create_node("test", &spec(input)).await {
            Err(StoreError::Conflict { message: got }) => assert_eq!(got, message),
            other => panic!("{input}: expected a conflict, got {other:?}"),
        }
    }
    let page = store.list_nodes(&NodeFilter::new(ProjectScope::All)).await.unwrap();
    assert_eq!(page.items.len(), 1, "a refused create must leave nothing behind");
}

async fn discovery_is_all_or_nothing_and_idempotent(store: Store) {
    let specs = parse_document(&five_nodes()).unwrap();
    let first = store.discover("admin", &specs).await.unwrap();
    assert_eq!(first.created.len(), 5);
    let events_after_first = store.list_events(&kiln_db::EventFilter { limit: 1000, ..Default::default() }).await.unwrap().len();
    let second = store.discover("admin", &specs).await.unwrap();
    assert_eq!((second.created.len(), second.updated.len(), second.unchanged.len()), (0, 0, 5));
    let events_after_second = store.list_events(&kiln_db::EventFilter { limit: 1000, ..Default::default() }).await.unwrap().len();
    assert_eq!(events_after_first, events_after_second, "an unchanged re-run records nothing");

    // A change to one node updates that node only.
    let mut changed = five_nodes();
    changed[2]["interfaces"][0]["ip_addrs"][0]["ip_addr"] = "172.16.0.33".into();
    let third = store.discover("admin", &parse_document(&changed).unwrap()).await.unwrap();
    assert_eq!(third.updated, vec!["node03"]);

    // A MAC that belongs to a node outside the document rejects the whole document.
    store.create_node("admin", &spec(r#"{"name": "other", "interfaces": [{"mac_addr": "52:54:00:aa:aa:aa"}]}"#)).await.unwrap();
    let mut clash = five_nodes();
    clash.as_array_mut().unwrap().push(serde_json::json!({"name": "node06", "xname": "x1000c0s0b5n0", "nid": 6,
        "interfaces": [{"mac_addr": "52:54:00:aa:aa:aa"}]}));
    clash[0]["nid"] = 100.into();
    match store.discover("admin", &parse_document(&clash).unwrap()).await {
        Err(StoreError::Conflict { message }) => {
            assert_eq!(message, "entry 6 (node06): MAC 52:54:00:aa:aa:aa is already used by node 'other'")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(store.get_node("node06", &ProjectScope::All).await.is_err());
    assert_eq!(store.get_node("node01", &ProjectScope::All).await.unwrap().nid, Some(1), "the earlier entries were rolled back");
}

async fn listing_filters_and_pages(store: Store) {
    store.discover("admin", &parse_document(&five_nodes()).unwrap()).await.unwrap();
    store.create_node("admin", &spec(r#"{"name": "lone", "groups": ["storage"]}"#)).await.unwrap();
    let all = NodeFilter::new(ProjectScope::All);
    let names = |page: kiln_types::api::Page<kiln_types::node::Node>| page.items.into_iter().map(|n| n.name).collect::<Vec<_>>();
    assert_eq!(names(store.list_nodes(&all).await.unwrap()), ["lone", "node01", "node02", "node03", "node04", "node05"]);
    let compute = NodeFilter { group: Some("compute".into()), ..all.clone() };
    assert_eq!(store.list_nodes(&compute).await.unwrap().items.len(), 5);
    let mac: MacAddress = "52:54:00:be:ef:03".parse().unwrap();
    assert_eq!(names(store.list_nodes(&NodeFilter { mac: Some(mac), ..all.clone() }).await.unwrap()), ["node03"]);
    let search = |text: &str| NodeFilter { search: Some(text.to_owned()), ..all.clone() };
    assert_eq!(names(store.list_nodes(&search("BE:EF:03")).await.unwrap()), ["node03"], "a search finds a MAC, case aside");
    assert_eq!(names(store.list_nodes(&search("NODE0")).await.unwrap()).len(), 5, "and names");
    assert!(store.list_nodes(&search("%")).await.unwrap().items.is_empty(), "a search's % is only a percent sign");
    let state = NodeFilter { state: Some(ProvisionState::Active), ..all.clone() };
    assert!(store.list_nodes(&state).await.unwrap().items.is_empty());
    let mut page = store.list_nodes(&NodeFilter { limit: 4, ..all.clone() }).await.unwrap();
    assert_eq!(page.items.len(), 4);
    assert_eq!(page.next.as_deref(), Some("node03"));
    page = store.list_nodes(&NodeFilter { limit: 4, after: page.next, ..all.clone() }).await.unwrap();
    assert_eq!(names(page.clone()), ["node04", "node05"]);
    assert_eq!(page.next, None);
}

async fn scopes_hide_other_projects(store: Store) {
    store.create_project("admin", "a", "").await.unwrap();
    store.create_project("admin", "b", "").await.unwrap();
    store.create_node("admin", &spec(r#"{"name": "na", "project": "a"}"#)).await.unwrap();
    store.create_node("admin", &spec(r#"{"name": "nb", "project": "b"}"#)).await.unwrap();
    store.create_node("admin", &spec(r#"{"name": "free"}"#)).await.unwrap();
    let scope_a = ProjectScope::Projects(vec!["a".into()]);
    let listed = store.list_nodes(&NodeFilter::new(scope_a.clone())).await.unwrap();
    assert_eq!(listed.items.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["na"]);
    for key in ["nb", "free"] {
        assert!(matches!(store.get_node(key, &scope_a).await, Err(StoreError::NotFound { .. })));
        let change = NodeChange { role: Some("x".into()), ..Default::default() };
        assert!(matches!(store.update_node("u", key, &scope_a, &change).await, Err(StoreError::NotFound { .. })));
        assert!(matches!(store.delete_node("u", key, &scope_a).await, Err(StoreError::NotFound { .. })));
    }
    assert!(store.get_node("nb", &ProjectScope::All).await.is_ok(), "nothing was deleted");
    let empty = ProjectScope::Projects(vec![]);
    assert!(store.list_nodes(&NodeFilter::new(empty)).await.unwrap().items.is_empty());
}

async fn allocation_moves_nodes_between_projects(store: Store) {
    store.create_project("admin", "a", "").await.unwrap();
    store.create_node("admin", &spec(r#"{"name": "n1"}"#)).await.unwrap();
    store.create_node("admin", &spec(r#"{"name": "n2"}"#)).await.unwrap();
    let nodes = store.set_nodes_project("admin", &["n1".into(), "n2".into()], Some("a"), None).await.unwrap();
    assert!(nodes.iter().all(|n| n.project.as_deref() == Some("a")));
    assert!(matches!(store.delete_project("admin", "a").await, Err(StoreError::Conflict { .. })));
    // All or none: an unknown node leaves the others where they were.
    assert!(store.set_nodes_project("admin", &["n1".into(), "missing".into()], None, Some("a")).await.is_err());
    assert_eq!(store.get_node("n1", &ProjectScope::All).await.unwrap().project.as_deref(), Some("a"));
    // Releasing from a project the node is not in is refused, and changes nothing.
    assert!(matches!(store.set_nodes_project("admin", &["n1".into()], None, Some("other")).await, Err(StoreError::NotFound { .. })));
    store.set_nodes_project("admin", &["n1".into(), "n2".into()], None, Some("a")).await.unwrap();
    store.delete_project("admin", "a").await.unwrap();
    assert!(matches!(store.set_nodes_project("admin", &["n1".into()], Some("nope"), None).await, Err(StoreError::NotFound { .. })));
}

async fn tokens_resolve_expire_and_revoke(store: Store) {
    store.create_project("admin", "a", "").await.unwrap();
    store.create_user("admin", "alice", false).await.unwrap();
    store.set_membership("admin", "a", "alice", ProjectRole::Member).await.unwrap();
    let token = store.create_token("admin", "alice", "laptop", "hash-1", None).await.unwrap();
    let identity = store.identify_token("hash-1").await.unwrap().unwrap();
    assert_eq!(identity.user, "alice");
    assert!(!identity.admin && !identity.revoked);
    assert_eq!(identity.memberships.get("a"), Some(&ProjectRole::Member));
    assert!(store.identify_token("hash-2").await.unwrap().is_none());
    let revoked = store.revoke_token("admin", &token.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(store.identify_token("hash-1").await.unwrap().unwrap().revoked);
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    store.create_token("admin", "alice", "old", "hash-3", Some(past)).await.unwrap();
    assert!(store.identify_token("hash-3").await.unwrap().unwrap().expires_at.unwrap() < jiff::Timestamp::now());
    assert_eq!(store.list_tokens(Some("alice")).await.unwrap().len(), 2);
    store.delete_user("admin", "alice").await.unwrap();
    assert!(store.identify_token("hash-3").await.unwrap().is_none(), "a deleted user's tokens go with them");
}

async fn web_sessions_live_until_they_end_or_expire(store: Store) {
    use std::time::Duration;
    store.create_project("admin", "a", "").await.unwrap();
    store.create_user("admin", "alice", false).await.unwrap();
    store.set_membership("admin", "a", "alice", ProjectRole::Member).await.unwrap();
    store.create_web_session("alice", "live", Duration::from_secs(3600)).await.unwrap();
    store.create_web_session("alice", "short", Duration::from_millis(1)).await.unwrap();
    let identity = store.identify_web_session("live").await.unwrap().expect("a live session");
    assert_eq!(identity.user, "alice");
    assert!(!identity.admin);
    assert_eq!(identity.memberships.get("a"), Some(&ProjectRole::Member));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store.identify_web_session("short").await.unwrap().is_none(), "an expired session is not found");
    assert!(store.identify_web_session("unknown").await.unwrap().is_none());
    store.end_web_session("live").await.unwrap();
    assert!(store.identify_web_session("live").await.unwrap().is_none(), "a session signed out is not found");
    store.create_web_session("alice", "again", Duration::from_secs(3600)).await.unwrap();
    store.set_password_hash("admin", "alice", Some("$argon2id$stand-in")).await.unwrap();
    assert!(store.identify_web_session("again").await.unwrap().is_none(), "a password change ends the user's sessions");
    store.create_web_session("alice", "again", Duration::from_secs(3600)).await.unwrap();
    store.delete_user("admin", "alice").await.unwrap();
    assert!(store.identify_web_session("again").await.unwrap().is_none(), "a deleted user's sessions go with them");
}

async fn consoles_keep_their_last_bytes_and_offsets(store: Store) {
    let node = store.create_node("admin", &spec(r#"{"name": "n1"}"#)).await.unwrap();
    assert_eq!(store.read_console(&node.id, None).await.unwrap(), kiln_db::ConsoleTail::default());
    store.append_console(&node.id, b"iPXE 1.21\r\n", 64).await.unwrap();
    store.append_console(&node.id, b"login: \xff", 64).await.unwrap();
    let all = store.read_console(&node.id, None).await.unwrap();
    assert_eq!((all.start, all.end, all.truncated), (0, 19, false));
    assert_eq!(all.data, b"iPXE 1.21\r\nlogin: \xff");
    let after = store.read_console(&node.id, Some(13)).await.unwrap();
    assert_eq!((after.start, after.data.as_slice(), after.truncated), (13, &b"gin: \xff"[..], false), "from inside a piece");
    assert!(store.read_console(&node.id, Some(19)).await.unwrap().data.is_empty(), "nothing new");
    // Keeping 8 bytes: the first piece falls out of the window, whole.
    store.append_console(&node.id, b"root\r\n", 8).await.unwrap();
    let kept = store.read_console(&node.id, None).await.unwrap();
    assert_eq!((kept.start, kept.end, kept.data.as_slice()), (11, 25, &b"login: \xffroot\r\n"[..]));
    let behind = store.read_console(&node.id, Some(1)).await.unwrap();
    assert!(behind.truncated && behind.start == 11, "a reader behind what is kept is told so");
    store.delete_node("admin", "n1", &ProjectScope::All).await.unwrap();
    assert_eq!(store.read_console(&node.id, None).await.unwrap().end, 0, "the console goes with its node");
}

async fn bootstrap_creates_one_admin(store: Store) {
    assert!(store.bootstrap_admin("first").await.unwrap());
    assert!(!store.bootstrap_admin("second").await.unwrap());
    assert!(store.identify_token("first").await.unwrap().unwrap().admin);
    assert!(store.identify_token("second").await.unwrap().is_none());
    assert!(matches!(store.delete_user("x", "admin").await, Err(StoreError::Conflict { .. })), "the last admin stays");
}

async fn groups_respect_project_ownership(store: Store) {
    store.create_project("admin", "a", "").await.unwrap();
    store.create_project("admin", "b", "").await.unwrap();
    store.create_node("admin", &spec(r#"{"name": "na", "project": "a"}"#)).await.unwrap();
    store.create_node("admin", &spec(r#"{"name": "nb", "project": "b"}"#)).await.unwrap();
    let scope_a = ProjectScope::Projects(vec!["a".into()]);
    let scope_b = ProjectScope::Projects(vec!["b".into()]);
    let group = store.create_group("alice", "ga", "", Some("a"), &["na".into()], &scope_a).await.unwrap();
    assert_eq!(group.members, ["na"]);
    assert!(matches!(store.create_group("alice", "gx", "", Some("b"), &[], &scope_a).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.get_group(&reference("ga"), &scope_b).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.get_group(&reference("a/ga"), &scope_b).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(
        store.update_group("bob", &scoped(Some("a"), "ga"), Some("x"), None, &scope_b).await,
        Err(StoreError::NotFound { .. })
    ));
    // A node of project b cannot join a group of project a: named by its project it is
    // missing, and a bare name means b's own group, made when it does not exist.
    let join = NodeChange { groups: Some(vec!["a/ga".into()]), ..Default::default() };
    assert!(matches!(store.update_node("bob", "nb", &scope_b, &join).await, Err(StoreError::NotFound { kind: "group", .. })));
    let join = NodeChange { groups: Some(vec!["ga".into()]), ..Default::default() };
    assert_eq!(store.update_node("bob", "nb", &scope_b, &join).await.unwrap().groups, ["b/ga"]);
    assert_eq!(store.get_group(&reference("ga"), &scope_b).await.unwrap().members, ["nb"]);
    assert_eq!(store.get_group(&reference("ga"), &scope_a).await.unwrap().members, ["na"]);
    // The same name in two projects is no conflict; an administrator must say which.
    store.create_group("bob", "gb", "", Some("b"), &[], &scope_b).await.unwrap();
    store.create_group("alice", "gb", "", Some("a"), &[], &scope_a).await.unwrap();
    let ambiguous = store.get_group(&reference("gb"), &ProjectScope::All).await;
    assert!(
        matches!(&ambiguous, Err(StoreError::Conflict { message }) if message.contains("a/gb") && message.contains("b/gb")),
        "{ambiguous:?}"
    );
    assert_eq!(store.get_group(&reference("b/gb"), &ProjectScope::All).await.unwrap().project.as_deref(), Some("b"));
    // A global group holds nodes of both projects; each tenant sees only its own.
    store.create_group("admin", "compute", "", None, &["na".into(), "nb".into()], &ProjectScope::All).await.unwrap();
    assert_eq!(store.get_group(&reference("compute"), &scope_a).await.unwrap().members, ["na"]);
    assert_eq!(store.get_group(&reference("compute"), &ProjectScope::All).await.unwrap().members, ["na", "nb"]);
    assert!(matches!(store.delete_group("alice", &scoped(None, "compute"), &scope_a).await, Err(StoreError::NotFound { .. })));
    store.delete_group("alice", &scoped(Some("a"), "ga"), &scope_a).await.unwrap();
    assert_eq!(store.get_node("na", &ProjectScope::All).await.unwrap().groups, ["compute"]);
    assert_eq!(store.get_node("nb", &ProjectScope::All).await.unwrap().groups, ["b/ga", "compute"], "b's group of the same name stays");
    // A node's stored groups stay exactly the groups they are: rewriting its list never moves
    // it from the global `compute` to its project's, though a bare name newly given means
    // the project's.
    store.create_group("alice", "compute", "", Some("a"), &[], &scope_a).await.unwrap();
    let rewrite = NodeChange { groups: Some(vec!["compute".into(), "extra".into()]), ..Default::default() };
    assert_eq!(store.update_node("alice", "na", &scope_a, &rewrite).await.unwrap().groups, ["compute", "a/extra"]);
    let join = NodeChange { groups: Some(vec!["compute".into()]), ..Default::default() };
    store.update_node("bob", "nb", &scope_b, &NodeChange { groups: Some(Vec::new()), ..Default::default() }).await.unwrap();
    store.create_group("bob", "compute", "", Some("b"), &[], &scope_b).await.unwrap();
    assert_eq!(store.update_node("bob", "nb", &scope_b, &join).await.unwrap().groups, ["b/compute"]);
}

fn reference(text: &str) -> NameReference {
    NameReference::parse("name", text).unwrap()
}

fn scoped(project: Option<&str>, name: &str) -> ScopedName {
    ScopedName::new(project, name)
}

async fn events_record_changes(store: Store) {
    store.create_project("admin", "a", "").await.unwrap();
    store
        .create_node("admin", &spec(r#"{"name": "n1", "project": "a", "bmc": {"address": "127.0.0.1", "password": "pw"}}"#))
        .await
        .unwrap();
    let change = NodeChange { role: Some("Service".into()), ..Default::default() };
    store.update_node("alice", "n1", &ProjectScope::All, &change).await.unwrap();
    let events =
        store.list_events(&kiln_db::EventFilter { projects: Some(vec!["a".into()]), limit: 100, ..Default::default() }).await.unwrap();
    let actions: Vec<_> = events.iter().map(|e| (e.actor.as_str(), e.action.as_str())).collect();
    assert_eq!(actions, [("admin", "project.create"), ("admin", "node.create"), ("alice", "node.update")]);
    let update = &events[2];
    assert_eq!(update.before.as_ref().unwrap()["role"], serde_json::Value::Null);
    assert_eq!(update.after.as_ref().unwrap()["role"], "Service");
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("\"pw\""), "events never hold secrets");
    let later = store.list_events(&kiln_db::EventFilter { after: Some(events[1].id), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(later.len(), 1);
    let newest = kiln_db::EventFilter { projects: Some(vec!["a".into()]), limit: 2, newest_first: true, ..Default::default() };
    let newest: Vec<_> = store.list_events(&newest).await.unwrap().into_iter().map(|event| event.action).collect();
    assert_eq!(newest, ["node.update", "node.create"], "the most recent first");
}

async fn inventory_follows_changes_made_by_another_replica(store: Store, other: Store) {
    use kiln_db::Inventory;
    store.discover("admin", &parse_document(&five_nodes()).unwrap()).await.unwrap();
    let inventory = Inventory::load(store.clone()).await.unwrap();
    let view = inventory.view();
    assert_eq!(view.len(), 5);
    assert_eq!(view.get("x1000c0s0b2n0").unwrap().name, "node03");
    let mac: MacAddress = "52:54:00:be:ef:04".parse().unwrap();
    assert_eq!(view.by_mac(&mac).unwrap().name, "node04");

    // Another replica renames one node, deletes another, adds one and regroups.
    let rename = NodeChange { name: Some("renamed".into()), ..Default::default() };
    other.update_node("bob", "node01", &ProjectScope::All, &rename).await.unwrap();
    other.delete_node("bob", "node02", &ProjectScope::All).await.unwrap();
    other.create_node("bob", &spec(r#"{"name": "fresh", "interfaces": [{"mac_addr": "52:54:00:00:00:99"}]}"#)).await.unwrap();
    assert_eq!(inventory.view().len(), 5, "nothing changes before a refresh");
    let view = inventory.refresh().await.unwrap();
    let names: Vec<_> = view.list(&NodeFilter::new(ProjectScope::All)).items.into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["fresh", "node03", "node04", "node05", "renamed"]);
    assert!(view.get("node01").is_none() && view.get("node02").is_none());
    assert_eq!(view.get("x1000c0s0b0n0").unwrap().name, "renamed");
    assert_eq!(view.by_mac(&"52:54:00:00:00:99".parse().unwrap()).unwrap().name, "fresh");

    other.create_group("bob", "gpu", "", None, &["node03".into()], &ProjectScope::All).await.unwrap();
    let view = inventory.refresh().await.unwrap();
    assert_eq!(view.get("node03").unwrap().groups, ["compute", "gpu"]);
    let gpu = NodeFilter { group: Some("gpu".into()), ..NodeFilter::new(ProjectScope::All) };
    assert_eq!(view.list(&gpu).items.len(), 1);
    let searched = NodeFilter { search: Some("DE03".into()), ..NodeFilter::new(ProjectScope::All) };
    assert_eq!(view.list(&searched), store.list_nodes(&searched).await.unwrap(), "a search finds in memory what the store finds");

    // The view lists exactly what the store lists, page by page.
    let mut filter = NodeFilter { limit: 2, ..NodeFilter::new(ProjectScope::All) };
    loop {
        let from_store = store.list_nodes(&filter).await.unwrap();
        assert_eq!(view.list(&filter), from_store);
        match from_store.next {
            Some(next) => filter.after = Some(next),
            None => break,
        }
    }
    let unchanged = inventory.refresh().await.unwrap();
    assert!(Arc::ptr_eq(&unchanged, &view), "no new events, no new view");
}

async fn cloud_init_data_follows_replicas_and_cascades(store: Store, other: Store) {
    use kiln_db::Inventory;
    use kiln_types::cloud_init::{CloudInitDefaults, CloudInitGroupInput, CloudInitGroupSpec, CloudInitNodeInput};
    store.discover("admin", &parse_document(&five_nodes()).unwrap()).await.unwrap();
    let inventory = Inventory::load(store.clone()).await.unwrap();
    let node01 = inventory.view().get("node01").unwrap().id.clone();

    // Another replica sets everything.
    let defaults: CloudInitDefaults = serde_json::from_value(serde_json::json!({"cluster-name": "demo", "nid-length": 3})).unwrap();
    other.set_cloud_init_defaults("bob", &defaults).await.unwrap();
    let group: CloudInitGroupInput = serde_json::from_value(serde_json::json!({
        "name": "compute", "description": "compute config", "meta-data": {"role": "cn"},
        "file": {"encoding": "plain", "content": "#cloud-config\n{}\n"},
    }))
    .unwrap();
    other.put_cloud_init_groups("bob", &[CloudInitGroupSpec::try_from(&group).unwrap()], &ProjectScope::All).await.unwrap();
    let data: CloudInitNodeInput = serde_json::from_value(serde_json::json!({
        "id": "node01", "local-hostname": "compute1", "secret-data": {"munge": "plaintext-secret"},
    }))
    .unwrap();
    other.set_cloud_init_nodes("bob", &[data], &ProjectScope::All).await.unwrap();
    let (_, token) = other.mint_cloud_init_token("bob", "node02", &ProjectScope::All).await.unwrap();

    let view = inventory.refresh().await.unwrap();
    let cloud_init = view.cloud_init();
    assert_eq!(cloud_init.defaults.cluster_name.as_deref(), Some("demo"));
    let compute = &cloud_init.groups["compute"];
    assert_eq!((compute.description.as_str(), compute.content.as_deref()), ("compute config", Some("#cloud-config\n{}\n")));
    assert_eq!(compute.meta_data.as_ref().unwrap()["role"], "cn");
    let record = &cloud_init.nodes[&node01];
    assert_eq!(record.meta_data["local-hostname"], "compute1");
    assert_eq!(record.secrets["munge"], "plaintext-secret");
    assert_eq!(view.by_cloud_init_token(&kiln_auth::hash_token(&token)).unwrap().name, "node02");
    assert_eq!(view.by_ip(&"172.16.0.3".parse().unwrap()).unwrap().name, "node03");
    let shown = store.get_cloud_init_node("node01", &ProjectScope::All).await.unwrap();
    assert_eq!((shown.secret_keys, shown.has_token), (vec!["munge".to_owned()], false), "secrets are shown by name only");

    // A new token replaces the old one; two nodes claiming one address identify neither.
    let (_, newer) = other.mint_cloud_init_token("bob", "node02", &ProjectScope::All).await.unwrap();
    other.create_node("bob", &spec(r#"{"name": "dup", "interfaces": [{"mac_addr": "52:54:00:00:00:98", "ip_addrs": [{"name": "m", "ip_addr": "172.16.0.3"}]}]}"#)).await.unwrap();
    let view = inventory.refresh().await.unwrap();
    assert!(view.by_cloud_init_token(&kiln_auth::hash_token(&token)).is_none());
    assert_eq!(view.by_cloud_init_token(&kiln_auth::hash_token(&newer)).unwrap().name, "node02");
    assert!(view.by_ip(&"172.16.0.3".parse().unwrap()).is_none());

    // A node's data goes with the node, a group's config with the group.
    other.delete_node("bob", "node01", &ProjectScope::All).await.unwrap();
    other.delete_group("bob", &scoped(None, "compute"), &ProjectScope::All).await.unwrap();
    let view = inventory.refresh().await.unwrap();
    assert!(!view.cloud_init().nodes.contains_key(&node01));
    assert!(!view.cloud_init().groups.contains_key("compute"));
    assert!(matches!(store.get_cloud_init_group(&reference("compute"), &ProjectScope::All).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(store.get_cloud_init_node("node01", &ProjectScope::All).await, Err(StoreError::NotFound { .. })));
    let reloaded = Inventory::load(store.clone()).await.unwrap().view();
    assert_eq!(reloaded.cloud_init().nodes.len(), view.cloud_init().nodes.len(), "a fresh load agrees with the followed view");
}

fn artifact(kind: kiln_types::image::ArtifactKind, sha_digit: char, size: u64) -> kiln_db::NewArtifact {
    kiln_db::NewArtifact {
        artifact: kiln_types::image::Artifact {
            kind,
            sha256: sha_digit.to_string().repeat(64),
            format: kiln_types::image::ImageFormat::Raw,
            compression: None,
            size,
            virtual_size: Some(size),
            checksums: [("sha256".to_owned(), sha_digit.to_string().repeat(64))].into(),
            source_url: Some("http://example.invalid/disk.img".to_owned()),
        },
        source_etag: Some("\"v1\"".to_owned()),
        source_modified: None,
    }
}

fn new_image(name: &str) -> kiln_db::NewImage {
    kiln_db::NewImage {
        name: name.to_owned(),
        project: None,
        visibility: kiln_types::image::Visibility::Public,
        shared_with: vec![],
        description: String::new(),
        os: Some("debian".to_owned()),
        arch: None,
    }
}

fn version(number: Option<i64>, base: Option<i64>, artifacts: Vec<kiln_db::NewArtifact>, tags: &[&str]) -> kiln_db::NewVersion {
    kiln_db::NewVersion {
        version: number,
        base: base.map(kiln_types::image::VersionRef::Number),
        artifacts,
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        note: String::new(),
    }
}

async fn image_versions_tags_clones_and_blob_counts(store: Store) {
    use kiln_types::image::{ArtifactKind, VersionRef};
    store.create_image("admin", &new_image("debian")).await.unwrap();
    let debian = scoped(None, "debian");
    for (digit, size) in [('a', 100), ('b', 10), ('c', 200)] {
        store.touch_blob(&digit.to_string().repeat(64), size).await.unwrap();
    }
    let first = store
        .create_version(
            "admin",
            &debian,
            &version(None, None, vec![artifact(ArtifactKind::Root, 'a', 100), artifact(ArtifactKind::Kernel, 'b', 10)], &["stable"]),
        )
        .await
        .unwrap();
    assert_eq!((first.version, first.tags.clone()), (1, vec!["latest".to_owned(), "stable".to_owned()]));
    let second =
        store.create_version("admin", &debian, &version(None, Some(1), vec![artifact(ArtifactKind::Root, 'c', 200)], &[])).await.unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(second.artifact(ArtifactKind::Kernel), first.artifact(ArtifactKind::Kernel), "carried over from the base");
    // A taken number is refused; an unknown blob is refused; neither leaves a version.
    let taken = store.create_version("admin", &debian, &version(Some(2), None, vec![artifact(ArtifactKind::Root, 'a', 100)], &[])).await;
    assert!(matches!(taken, Err(StoreError::Conflict { .. })), "{taken:?}");
    let unknown = store.create_version("admin", &debian, &version(None, None, vec![artifact(ArtifactKind::Root, 'f', 1)], &[])).await;
    assert!(matches!(unknown, Err(StoreError::Invalid { .. })), "{unknown:?}");
    assert_eq!(store.list_versions(&debian).await.unwrap().len(), 2);
    assert_eq!(store.get_version(&debian, &VersionRef::Tag("latest".into())).await.unwrap().version, 2);
    assert_eq!(store.get_version(&debian, &VersionRef::Tag("stable".into())).await.unwrap().version, 1);
    store.set_tag("admin", &debian, "stable", &VersionRef::Number(2)).await.unwrap();
    store.delete_tag("admin", &debian, "stable").await.unwrap();
    let import = store.last_import(&debian, ArtifactKind::Root).await.unwrap().unwrap();
    assert_eq!((import.version, import.etag.as_deref()), (2, Some("\"v1\"")));

    let clone = store.clone_image("admin", &debian, &VersionRef::Number(1), &new_image("copy")).await.unwrap();
    assert_eq!(clone.latest_version, Some(1));
    // Every blob is in use: 'a' by debian:1 and copy:1, 'b' by three versions, 'c' by one.
    assert!(store.unused_blobs(i64::MAX).await.unwrap().is_empty());
    store.delete_image("admin", &debian).await.unwrap();
    assert!(store.unused_blobs(i64::MAX).await.unwrap().iter().map(|blob| blob.sha256.chars().next().unwrap()).eq(['c']));
    store.delete_version("admin", &scoped(None, "copy"), &VersionRef::Number(1)).await.unwrap();
    let unused: Vec<char> = store.unused_blobs(i64::MAX).await.unwrap().iter().map(|blob| blob.sha256.chars().next().unwrap()).collect();
    assert_eq!(unused, ['a', 'b', 'c']);
    // Recently touched blobs are spared; forgetting is conditional.
    assert!(store.unused_blobs(0).await.unwrap().is_empty());
    assert!(!store.forget_blob(&"a".repeat(64), 0).await.unwrap());
    assert!(store.forget_blob(&"a".repeat(64), i64::MAX).await.unwrap());
    assert_eq!(store.known_blobs().await.unwrap().len(), 2);
}

async fn image_uploads_and_gc_bookkeeping(store: Store) {
    store.create_project("admin", "lab", "").await.unwrap();
    let upload = store.create_upload("admin", Some("lab"), Some("md5:00112233445566778899aabbccddeeff")).await.unwrap();
    let read = store.get_upload(&upload.id).await.unwrap();
    assert_eq!((read.project.as_deref(), read.checksum), (Some("lab"), upload.checksum.clone()));
    assert!(store.stale_uploads(0).await.unwrap().is_empty());
    assert_eq!(store.stale_uploads(i64::MAX).await.unwrap().len(), 1);
    assert!(store.delete_upload(&upload.id).await.unwrap());
    assert!(!store.delete_upload(&upload.id).await.unwrap(), "only one finisher wins");
    assert!(matches!(store.create_upload("admin", Some("nope"), None).await, Err(StoreError::NotFound { .. })));
    // A project with images cannot be deleted.
    let mut image = new_image("lab-image");
    image.project = Some("lab".to_owned());
    store.create_image("admin", &image).await.unwrap();
    assert!(matches!(store.delete_project("admin", "lab").await, Err(StoreError::Conflict { .. })));
}

/// Two replicas claiming the same due nodes at once split them; a live lease keeps the
/// other replica out (and its transitions are refused); an expired one is taken over, and
/// the claimer learns whose work it interrupted.
async fn provisioning_leases_give_each_node_to_one_replica(store: Store, other: Store) {
    use kiln_types::provision::{Intent, TokenChange, Transition};
    let mut names = Vec::new();
    for index in 0..40 {
        let name = format!("lease{index:02}");
        store.create_node("admin", &spec(&format!("{{\"name\": \"{name}\"}}"))).await.unwrap();
        store.request_provision("admin", &name, &ProjectScope::All, &Intent::Manage).await.unwrap();
        names.push(name);
    }
    let (first, second) = tokio::join!(store.claim_provisioning("a", 30_000, 100), other.claim_provisioning("b", 30_000, 100));
    let (first, second) = (first.unwrap(), second.unwrap());
    let mut claimed: Vec<String> = first.iter().chain(&second).map(|work| work.node.name.clone()).collect();
    claimed.sort();
    assert_eq!(claimed, names, "every due node claimed exactly once ({} by a, {} by b)", first.len(), second.len());
    assert!(other.claim_provisioning("b", 30_000, 100).await.unwrap().len() == second.len(), "b sees only its own again");

    // b may not record a step for a node a holds.
    let held_by_a = first.first().or(second.first()).unwrap();
    let owner = if first.is_empty() { "b" } else { "a" };
    let intruder = if owner == "a" { "b" } else { "a" };
    let transition = Transition {
        state: kiln_types::ProvisionState::Manageable,
        step: None,
        target: None,
        operation: Default::default(),
        token: TokenChange::Keep,
        new_command: false,
        deadline: None,
        due_at: None,
        last_error: None,
        consume_intent: true,
        consume_result: false,
        keep_lease: false,
        inventory: None,
        reason: "test".into(),
    };
    assert!(store.apply_transition(intruder, held_by_a, &transition).await.unwrap().is_none());
    assert!(store.apply_transition(owner, held_by_a, &transition).await.unwrap().is_some());
    assert!(store.apply_transition(owner, held_by_a, &transition).await.unwrap().is_none(), "a step planned twice is applied once");
    assert_eq!(store.get_node(&held_by_a.node.name, &ProjectScope::All).await.unwrap().provision_state.as_str(), "manageable");
    // A claim read before that step was applied is stale: re-read, the lease it took is gone
    // (the step released it), so the step is not planned again from the old state.
    assert!(store.held_provisioning(owner, &held_by_a.node.id).await.unwrap().is_none(), "the released lease is not held");
    let still_held = first.iter().chain(&second).find(|work| work.node.id != held_by_a.node.id).unwrap();
    let its_owner = still_held.record.lease_owner.as_deref().expect("a claim records its owner");
    let current = store.held_provisioning(its_owner, &still_held.node.id).await.unwrap().expect("a live lease is held");
    assert_eq!((current.node.provision_state, current.record.command_id), (still_held.node.provision_state, still_held.record.command_id));
    let not_its_owner = if its_owner == "a" { "b" } else { "a" };
    assert!(store.held_provisioning(not_its_owner, &still_held.node.id).await.unwrap().is_none(), "another replica's lease is not held");
    // A step that leaves a request pending (an abort during a powering step) makes the node
    // due at once, not at the deadline the step set.
    let before_step = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let far = before_step + 365 * 86_400_000;
    let leaves_the_request =
        Transition { state: still_held.node.provision_state, consume_intent: false, due_at: Some(far), ..transition.clone() };
    assert!(store.apply_transition(its_owner, &current, &leaves_the_request).await.unwrap().is_some());
    let record = store.provision_record(&still_held.node.id).await.unwrap().unwrap();
    assert!(record.intent.is_some() && record.due_at.is_some_and(|due| due >= before_step && due < far), "{record:?}");

    // Leases that lapse (their replica died) go to whoever claims next, who is told.
    let mut names = Vec::new();
    for index in 0..5 {
        let name = format!("lapse{index}");
        store.create_node("admin", &spec(&format!("{{\"name\": \"{name}\"}}"))).await.unwrap();
        store.request_provision("admin", &name, &ProjectScope::All, &Intent::Manage).await.unwrap();
        names.push(name);
    }
    let dying = store.claim_provisioning("dead-replica", 1, 100).await.unwrap();
    assert!(dying.iter().filter(|work| work.node.name.starts_with("lapse")).count() == 5);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let taken = other.claim_provisioning("survivor", 30_000, 100).await.unwrap();
    let lapsed: Vec<_> = taken.iter().filter(|work| work.node.name.starts_with("lapse")).collect();
    assert_eq!(lapsed.len(), 5);
    assert!(lapsed.iter().all(|work| work.taken_over_from.as_deref() == Some("dead-replica")));
}

async fn enrolment_takes_only_unicast_macs_within_its_limits(store: Store) {
    let mac = |text: &str| text.parse::<MacAddress>().unwrap();
    let limits = EnrolmentLimits { per_minute: 3, max_discovered: 4 };
    for group in ["ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "01:00:5e:00:00:01", "33:33:00:00:00:01"] {
        assert_eq!(store.enroll_discovered(mac(group), limits).await.unwrap(), Enrolment::Refused(EnrolmentRefusal::NotUnicast), "{group}");
    }
    for n in 1..=3 {
        let enrolment = store.enroll_discovered(mac(&format!("52:54:00:00:00:0{n}")), limits).await.unwrap();
        assert!(matches!(enrolment, Enrolment::Enrolled(_)), "{enrolment:?}");
    }
    assert_eq!(
        store.enroll_discovered(mac("52:54:00:00:00:04"), limits).await.unwrap(),
        Enrolment::Refused(EnrolmentRefusal::RateLimited { per_minute: 3 })
    );
    // A machine already enrolled is found whatever the limits say.
    assert!(matches!(store.enroll_discovered(mac("52:54:00:00:00:01"), limits).await.unwrap(), Enrolment::Known(_)));
    let roomier = EnrolmentLimits { per_minute: 100, max_discovered: 4 };
    assert!(matches!(store.enroll_discovered(mac("52:54:00:00:00:04"), roomier).await.unwrap(), Enrolment::Enrolled(_)));
    assert_eq!(
        store.enroll_discovered(mac("52:54:00:00:00:05"), roomier).await.unwrap(),
        Enrolment::Refused(EnrolmentRefusal::TooManyDiscovered { max_discovered: 4 })
    );
    let discovered = store.list_nodes(&NodeFilter::new(ProjectScope::All)).await.unwrap();
    assert_eq!(discovered.items.len(), 4, "refusals add nothing");
}
