//! The API end to end over real HTTP: a server started on port 0 with a real database
//! (SQLite, and PostgreSQL when configured), driven by the same client the CLI uses.

use kiln_client::{Client, ClientError};
use kiln_server::{ServerConfig, ServerConfigLayer, ServerHandle};
use kiln_test_utils::{BackendKind, TestDatabase};
use kiln_types::api::{CreatedToken, DiscoverySummary, Event, Page};
use kiln_types::node::Node;
use serde_json::{Value, json};

struct TestServer {
    handle: Option<ServerHandle>,
    admin: Client,
    admin_token: String,
    base_url: String,
    _database: TestDatabase,
    _data_dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(kind: BackendKind) -> Option<TestServer> {
        let database = TestDatabase::new(kind).await?;
        let data_dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::try_from(ServerConfigLayer {
            data_dir: Some(data_dir.path().to_owned()),
            listen: Some("127.0.0.1:0".to_owned()),
            database_url: Some(database.url.clone()),
            ..Default::default()
        })
        .unwrap();
        let handle = kiln_server::start(config).await.unwrap();
        let token = std::fs::read_to_string(data_dir.path().join("admin-token")).unwrap();
        let base_url = format!("http://{}", handle.local_addr());
        let admin_token = token.trim().to_owned();
        let admin = Client::new(&base_url, Some(admin_token.clone()));
        Some(TestServer { handle: Some(handle), admin, admin_token, base_url, _database: database, _data_dir: data_dir })
    }

    /// A user with a token, member (or reader) of `project`.
    async fn user(&self, name: &str, project: &str, role: &str) -> Client {
        let _: Value = self.admin.post("/v1/users", &json!({ "name": name })).await.unwrap();
        let _: Value = self.admin.put(&format!("/v1/projects/{project}/members"), &json!({ "user": name, "role": role })).await.unwrap();
        let token: CreatedToken = self.admin.post("/v1/tokens", &json!({ "name": "t", "user": name })).await.unwrap();
        Client::new(&self.base_url, Some(token.secret))
    }

    async fn stop(mut self) {
        self.handle.take().unwrap().shutdown().await;
    }
}

fn five_nodes() -> Value {
    let text = std::fs::read_to_string(kiln_test_utils::workspace_root().join("examples/nodes.yaml")).unwrap();
    serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap()).unwrap()
}

fn status(result: Result<Value, ClientError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(error) => error.status().map_or(0, |status| status.as_u16()),
    }
}

fn api_message(result: Result<Value, ClientError>) -> String {
    match result {
        Err(ClientError::Api { message, .. }) => message,
        other => panic!("expected an API error, got {other:?}"),
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                let server = super::TestServer::start(kiln_test_utils::BackendKind::Sqlite).await.unwrap();
                super::$name(&server).await;
                server.stop().await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                if let Some(server) = super::TestServer::start(kiln_test_utils::BackendKind::Postgres).await {
                    super::$name(&server).await;
                    server.stop().await;
                }
            })*
        }
    };
}

on_both_backends!(
    static_discovery_loads_the_tutorial_shape_idempotently,
    tenants_cannot_see_or_touch_each_other,
    revoked_expired_and_unknown_tokens_get_401,
    bad_input_gets_4xx_naming_the_problem_and_changes_nothing,
    bmc_passwords_never_leave_the_server,
    health_metrics_and_openapi,
    every_documented_operation_is_served,
);

async fn static_discovery_loads_the_tutorial_shape_idempotently(server: &TestServer) {
    let first: DiscoverySummary = server.admin.post("/v1/discover/static", &five_nodes()).await.unwrap();
    assert_eq!(first.created, ["nid001", "nid002", "nid003", "nid004", "nid005"]);
    let page: Page<Node> = server.admin.get("/v1/nodes?group=compute").await.unwrap();
    let seen: Vec<_> = page
        .items
        .iter()
        .map(|n| (n.xname.clone().unwrap(), n.nid.unwrap(), n.interfaces[0].mac_addr.to_string(), n.groups.clone()))
        .collect();
    for (index, (xname, nid, mac, groups)) in seen.iter().enumerate() {
        assert_eq!(xname, &format!("x1000c0s0b{index}n0"));
        assert_eq!(*nid, index as u32 + 1);
        assert_eq!(mac, &format!("52:54:00:be:ef:{:02}", index + 1));
        assert_eq!(groups, &["compute"]);
    }
    let events_before: Vec<Event> = server.admin.get("/v1/events?limit=1000").await.unwrap();
    let second: DiscoverySummary = server.admin.post("/v1/discover/static", &five_nodes()).await.unwrap();
    assert_eq!(second.unchanged.len(), 5);
    let again: Page<Node> = server.admin.get("/v1/nodes").await.unwrap();
    assert_eq!(again.items, page.items, "a second run changes nothing");
    let events_after: Vec<Event> = server.admin.get("/v1/events?limit=1000").await.unwrap();
    assert_eq!(events_before.len(), events_after.len());
    let by_mac: Page<Node> = server.admin.get("/v1/nodes?mac=52-54-00-BE-EF-04").await.unwrap();
    assert_eq!(by_mac.items[0].name, "nid004");
}

async fn tenants_cannot_see_or_touch_each_other(server: &TestServer) {
    server.admin.post::<_, Value>("/v1/discover/static", &five_nodes()).await.unwrap();
    for project in ["a", "b"] {
        server.admin.post::<_, Value>("/v1/projects", &json!({ "name": project })).await.unwrap();
    }
    server.admin.post::<_, Value>("/v1/projects/a/allocate", &json!({ "nodes": ["nid001", "nid002"] })).await.unwrap();
    server.admin.post::<_, Value>("/v1/projects/b/allocate", &json!({ "nodes": ["nid003"] })).await.unwrap();
    let alice = server.user("alice", "a", "member").await;
    let carol = server.user("carol", "a", "reader").await;

    let listed: Page<Node> = alice.get("/v1/nodes").await.unwrap();
    assert_eq!(listed.items.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["nid001", "nid002"]);
    let filtered: Page<Node> = alice.get("/v1/nodes?project=b").await.unwrap();
    assert!(filtered.items.is_empty());
    // Another tenant's node and an unallocated node look exactly like a missing one.
    for node in ["nid003", "x1000c0s0b2n0", "nid004", "no-such-node"] {
        let path = format!("/v1/nodes/{node}");
        assert_eq!(status(alice.get(&path).await), 404, "show {node}");
        assert_eq!(status(alice.patch(&path, &json!({ "role": "x" })).await), 404, "update {node}");
        assert_eq!(status(alice.delete(&path).await), 404, "delete {node}");
        let message = api_message(alice.get(&path).await);
        assert_eq!(message, format!("node '{node}' not found"));
    }
    assert_eq!(status(alice.get("/v1/projects/b").await), 404);
    assert_eq!(status(alice.get("/v1/groups/nope").await), 404);
    // Members arrange their own nodes, but not the physical inventory; readers only read.
    let changed: Node = alice.patch("/v1/nodes/nid001", &json!({ "role": "Service", "properties": { "rack": 3 } })).await.unwrap();
    assert_eq!(changed.role.as_deref(), Some("Service"));
    assert_eq!(status(alice.patch("/v1/nodes/nid001", &json!({ "interfaces": [] })).await), 403);
    assert_eq!(status(alice.delete("/v1/nodes/nid001").await), 403);
    assert_eq!(status(alice.post("/v1/discover/static", &five_nodes()).await), 403);
    assert_eq!(status(carol.get("/v1/nodes/nid001").await), 200);
    assert_eq!(status(carol.patch("/v1/nodes/nid001", &json!({ "role": "x" })).await), 403);
    assert_eq!(status(alice.post("/v1/projects/b/allocate", &json!({ "nodes": ["nid001"] })).await), 403);
    // Groups: alice makes one for her project, cannot put b's node in it.
    alice.post::<_, Value>("/v1/groups", &json!({ "name": "mine", "project": "a", "members": ["nid001"] })).await.unwrap();
    assert_eq!(status(alice.patch("/v1/groups/mine", &json!({ "members": ["nid001", "nid003"] })).await), 404);
    // The change log shows alice's project only.
    let events: Vec<Event> = alice.get("/v1/events?limit=1000").await.unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|event| event.project.as_deref() == Some("a")), "{events:?}");
    // Taking a node back makes it invisible to the former tenant.
    server.admin.post::<_, Value>("/v1/projects/a/release", &json!({ "nodes": ["nid002"] })).await.unwrap();
    assert_eq!(status(alice.get("/v1/nodes/nid002").await), 404);
}

async fn revoked_expired_and_unknown_tokens_get_401(server: &TestServer) {
    let created: CreatedToken = server.admin.post("/v1/tokens", &json!({ "name": "short" })).await.unwrap();
    let client = Client::new(&server.base_url, Some(created.secret.clone()));
    assert_eq!(status(client.get("/v1/whoami").await), 200);
    server.admin.delete::<Value>(&format!("/v1/tokens/{}", created.token.id)).await.unwrap();
    let message = api_message(client.get("/v1/nodes").await);
    assert_eq!(message, "the token has been revoked");
    assert_eq!(status(client.get("/v1/nodes").await), 401);

    let expiring: CreatedToken = server.admin.post("/v1/tokens", &json!({ "name": "brief", "expires_in_seconds": 1 })).await.unwrap();
    let client = Client::new(&server.base_url, Some(expiring.secret));
    assert_eq!(status(client.get("/v1/whoami").await), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(api_message(client.get("/v1/whoami").await), "the token has expired");

    for token in [Some("kiln_not-a-real-token".to_owned()), None] {
        let client = Client::new(&server.base_url, token);
        assert_eq!(status(client.get("/v1/nodes").await), 401);
    }
}

async fn bad_input_gets_4xx_naming_the_problem_and_changes_nothing(server: &TestServer) {
    server.admin.post::<_, Value>("/v1/discover/static", &five_nodes()).await.unwrap();
    server
        .admin
        .post::<_, Value>("/v1/nodes", &json!({ "name": "other", "interfaces": [{ "mac_addr": "52:54:00:aa:00:01" }] }))
        .await
        .unwrap();
    let nodes_before: Page<Node> = server.admin.get("/v1/nodes").await.unwrap();
    let events_before: Vec<Event> = server.admin.get("/v1/events?limit=1000").await.unwrap();
    let mut duplicate_mac = five_nodes();
    duplicate_mac[4]["interfaces"][0]["mac_addr"] = "52:54:00:be:ef:01".into();
    let mut bad_xname = five_nodes();
    bad_xname[2]["xname"] = "x1000c0s0b2".into();
    let mut bad_mac = five_nodes();
    bad_mac[1]["interfaces"][0]["mac_addr"] = "52:54:00:be:ef".into();
    let mut bad_ip = five_nodes();
    bad_ip[3]["interfaces"][0]["ip_addrs"][0]["ip_addr"] = "172.16.0.256".into();
    let mut taken_mac = five_nodes();
    taken_mac
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "nid006", "nid": 6, "xname": "x1000c0s0b5n0", "interfaces": [{ "mac_addr": "52:54:00:aa:00:01" }] }));
    let cases = [
        (duplicate_mac, 400, "entry 5 (nid005): interfaces[0].mac_addr: MAC 52:54:00:be:ef:01 is also used by entry 1"),
        (
            bad_xname,
            400,
            "entry 3 (nid003): xname: 'x1000c0s0b2' is not a node xname (expected x<cabinet>c<chassis>s<slot>b<bmc>n<node>, e.g. x1000c0s0b0n0)",
        ),
        (
            bad_mac,
            400,
            "entry 2 (nid002): interfaces[0].mac_addr: '52:54:00:be:ef' is not a MAC address (expected six hex pairs like 52:54:00:be:ef:01)",
        ),
        (bad_ip, 400, "entry 4 (nid004): interfaces[0].ip_addrs[0].ip_addr: '172.16.0.256' is not an IPv4 or IPv6 address"),
        (taken_mac, 409, "entry 6 (nid006): MAC 52:54:00:aa:00:01 is already used by node 'other'"),
        (json!({ "nodes": "x" }), 400, "the document must be a list of nodes, or an object with a `nodes` list"),
    ];
    for (document, expected_status, expected_message) in cases {
        let result = server.admin.post::<_, Value>("/v1/discover/static", &document).await;
        match result {
            Err(ClientError::Api { status, message, .. }) => {
                assert_eq!((status.as_u16(), message.as_str()), (expected_status, expected_message));
            }
            other => panic!("expected {expected_status}, got {other:?}"),
        }
    }
    // Malformed JSON and unknown fields on node create.
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/nodes", server.base_url))
        .bearer_auth(std::fs::read_to_string(server._data_dir.path().join("admin-token")).unwrap().trim())
        .header("content-type", "application/json")
        .body("{\"name\": \"x\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_input");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("invalid JSON body: EOF while parsing"), "{body}");
    let unknown = api_message(server.admin.post("/v1/nodes", &json!({ "name": "x", "colour": "blue" })).await);
    assert!(unknown.starts_with("invalid JSON body: unknown field `colour`"), "{unknown}");
    let bad_bmc = api_message(server.admin.post("/v1/nodes", &json!({ "name": "x", "bmc": { "driver": "telnet" } })).await);
    assert_eq!(bad_bmc, "bmc.driver: 'telnet' is not a BMC driver (redfish, ipmi, lab or none)");
    let bad_name = api_message(server.admin.post("/v1/nodes", &json!({ "name": "bad name" })).await);
    assert!(bad_name.starts_with("name: 'bad name' is not a valid name"), "{bad_name}");
    assert_eq!(status(server.admin.get("/v1/nodes?state=flying").await), 400);
    assert_eq!(status(server.admin.get("/v1/nodes?limit=lots").await), 400);
    assert_eq!(status(server.admin.patch("/v1/nodes/nid001", &json!({ "nid": 2 })).await), 409);

    let nodes_after: Page<Node> = server.admin.get("/v1/nodes").await.unwrap();
    assert_eq!(nodes_after.items, nodes_before.items, "refused input left the store unchanged");
    let events_after: Vec<Event> = server.admin.get("/v1/events?limit=1000").await.unwrap();
    assert_eq!(events_after.len(), events_before.len());
}

async fn bmc_passwords_never_leave_the_server(server: &TestServer) {
    const PASSWORD: &str = "Sup3r-S3cret-BMC-pw";
    server.admin.post::<_, Value>("/v1/projects", &json!({ "name": "a" })).await.unwrap();
    let node: Value = server
        .admin
        .post("/v1/nodes", &json!({ "name": "n1", "project": "a", "bmc": { "driver": "redfish", "address": "127.0.0.1:8000", "username": "root", "password": PASSWORD } }))
        .await
        .unwrap();
    assert_eq!(node["bmc"]["password"], "******");
    server
        .admin
        .patch::<_, Value>("/v1/nodes/n1", &json!({ "bmc": { "address": "127.0.0.1:8001", "password": format!("{PASSWORD}2") } }))
        .await
        .unwrap();
    let alice = server.user("alice", "a", "member").await;
    let mut everything = Vec::new();
    for client in [&server.admin, &alice] {
        for path in ["/v1/nodes", "/v1/nodes/n1", "/v1/events?limit=1000", "/v1/whoami", "/v1/groups", "/v1/projects", "/v1/openapi.json"] {
            everything.push(client.get::<Value>(path).await.unwrap().to_string());
        }
    }
    let all = everything.join("\n");
    assert!(!all.contains(PASSWORD), "a BMC password leaked into an API response");
    assert!(all.contains("******"));
}

async fn health_metrics_and_openapi(server: &TestServer) {
    let http = reqwest::Client::new();
    let health = http.get(format!("{}/healthz", server.base_url)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let _: Value = server.admin.get("/v1/nodes").await.unwrap();
    let metrics = http.get(format!("{}/metrics", server.base_url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("kiln_http_requests_total{method=\"GET\",route=\"/v1/nodes\",status=\"200\"}"), "{metrics}");
    let served = http.get(format!("{}/v1/openapi.json", server.base_url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(served, kiln_api::openapi_document());
    let missing = http.get(format!("{}/v2/nothing", server.base_url)).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

/// The document's side of the route table: every operation it lists is answered by a
/// handler, not by the router's fallback (404 "no such endpoint") or a 405. The served side
/// (no route outside the document) is `kiln-api`'s `routes::tests`.
async fn every_documented_operation_is_served(server: &TestServer) {
    let http = reqwest::Client::new();
    let token = &server.admin_token;
    let document: Value = http.get(format!("{}/v1/openapi.json", server.base_url)).send().await.unwrap().json().await.unwrap();
    let paths = document["paths"].as_object().expect("the document has paths");
    let mut probed = 0;
    for (template, item) in paths {
        // Parameters get a value no resource has: a handler answers 404 naming the resource.
        let path = template.split('/').map(|part| if part.starts_with('{') { "x" } else { part }).collect::<Vec<_>>().join("/");
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let request = http.request(method.to_uppercase().parse().unwrap(), format!("{}{path}", server.base_url)).bearer_auth(token);
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {template} is documented but not served: {body}");
            assert!(!(status == 404 && body.contains("no such endpoint")), "{method} {template} is documented but not served");
            probed += 1;
        }
    }
    assert!(probed >= 90, "only {probed} operations in the document");
}
