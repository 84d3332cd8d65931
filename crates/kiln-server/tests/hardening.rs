//! What a caller with a token, or a machine on the provisioning network, can no longer do
//! (the security issue's holes, each tried as an attacker would over real HTTP): bodies
//! that lie about their length or stop arriving, JSON sent as a form, a page of zero, and a
//! reference to a project that does not exist.

use std::time::{Duration, Instant};

use kiln_server::{ServerConfig, ServerConfigLayer, ServerHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct TestServer {
    handle: ServerHandle,
    token: String,
    _data_dir: tempfile::TempDir,
}

async fn start(max_body_bytes: usize, body_idle_seconds: u64) -> TestServer {
    let data_dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::try_from(ServerConfigLayer {
        data_dir: Some(data_dir.path().to_owned()),
        listen: Some("127.0.0.1:0".to_owned()),
        max_body_bytes: Some(max_body_bytes),
        body_idle_seconds: Some(body_idle_seconds),
        ..Default::default()
    })
    .unwrap();
    let handle = kiln_server::start(config).await.unwrap();
    let token = std::fs::read_to_string(data_dir.path().join("admin-token")).unwrap().trim().to_owned();
    TestServer { handle, token, _data_dir: data_dir }
}

/// Sends `head` (request line and headers, without the blank line) and `body` on a fresh
/// connection; returns the status and the answer's text, and how long the answer took.
async fn raw(server: &TestServer, head: &str, body: &[u8]) -> (u16, String, Duration) {
    let mut stream = tokio::net::TcpStream::connect(server.handle.local_addr()).await.unwrap();
    let started = Instant::now();
    let request = format!("{head}\r\nHost: kiln\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", server.token);
    stream.write_all(request.as_bytes()).await.unwrap();
    // A server that answers before the body is all sent may close while it is being sent.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, text, started.elapsed())
}

const NODE: &str = r#"{"name":"n1"}"#;

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let server = start(64 << 10, 30).await;
    let head = "POST /v1/nodes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2000000000";
    let (status, text, took) = raw(&server, head, NODE.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    assert!(took < Duration::from_secs(5), "answered at once, not after a timeout: {took:?}");
    server.handle.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_without_a_declared_length_is_413_not_400() {
    let server = start(64 << 10, 30).await;
    // Chunked: the length is known only once read.
    let mut body = Vec::new();
    let chunk = format!(r#"{{"name":"n1","properties":{{"x":"{}"}}}}"#, "a".repeat(100 << 10));
    body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
    body.extend_from_slice(chunk.as_bytes());
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = "POST /v1/nodes HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked";
    let (status, text, _) = raw(&server, head, &body).await;
    assert_eq!(status, 413, "{text}");
    server.handle.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408() {
    let server = start(64 << 10, 1).await;
    let head = "POST /v1/nodes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100";
    // Ten bytes of a hundred, then nothing.
    let (status, text, took) = raw(&server, head, &NODE.as_bytes()[..10]).await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    server.handle.shutdown().await;
}

#[tokio::test]
async fn json_must_be_sent_as_json() {
    let server = start(64 << 10, 30).await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let head = format!("POST /v1/nodes HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {}", NODE.len());
        let (status, text, _) = raw(&server, &head, NODE.as_bytes()).await;
        assert_eq!(status, 415, "{content_type}: {text}");
        assert!(text.contains("application/json"), "the answer says what to send: {text}");
    }
    let head = format!("POST /v1/nodes HTTP/1.1\r\nContent-Length: {}", NODE.len());
    assert_eq!(raw(&server, &head, NODE.as_bytes()).await.0, 415, "no Content-Type at all");
    // Nothing was created by any of them.
    let (_, listing, _) = raw(&server, "GET /v1/nodes HTTP/1.1", b"").await;
    assert!(!listing.contains("\"n1\""), "{listing}");
    let head = format!("POST /v1/nodes HTTP/1.1\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}", NODE.len());
    assert_eq!(raw(&server, &head, NODE.as_bytes()).await.0, 201);
    server.handle.shutdown().await;
}

#[tokio::test]
async fn a_page_limit_outside_its_range_is_refused_naming_it() {
    let server = start(64 << 10, 30).await;
    for path in ["/v1/nodes?limit=0", "/v1/nodes?limit=1001", "/v1/events?limit=0"] {
        let (status, text, _) = raw(&server, &format!("GET {path} HTTP/1.1"), b"").await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("limit"), "{path}: {text}");
    }
    assert_eq!(raw(&server, "GET /v1/nodes?limit=1 HTTP/1.1", b"").await.0, 200);
    server.handle.shutdown().await;
}

#[tokio::test]
async fn a_project_that_does_not_exist_is_a_400_naming_the_field_not_a_500() {
    let server = start(64 << 10, 30).await;
    let head = format!("POST /v1/nodes HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}", NODE.len());
    assert_eq!(raw(&server, &head, NODE.as_bytes()).await.0, 201);
    let cases = [
        ("POST /v1/nodes", r#"{"name":"n2","project":"nowhere"}"#.to_owned()),
        ("POST /v1/projects/nowhere/allocate", r#"{"nodes":["n1"]}"#.to_owned()),
    ];
    for (line, body) in cases {
        let head = format!("{line} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}", body.len());
        let (status, text, _) = raw(&server, &head, body.as_bytes()).await;
        // A path names the project: a missing one is 404 there, as everywhere.
        assert_eq!(status, if line.contains("/projects/") { 404 } else { 400 }, "{line}: {text}");
        assert!(text.contains("project") && text.contains("nowhere"), "{line}: the answer names the field: {text}");
    }
    server.handle.shutdown().await;
}

#[tokio::test]
async fn a_reader_minting_a_cloud_init_token_is_forbidden_not_told_the_node_is_missing() {
    use kiln_client::Client;
    use serde_json::{Value, json};
    let server = start(64 << 10, 30).await;
    let base = format!("http://{}", server.handle.local_addr());
    let admin = Client::new(&base, Some(server.token.clone()));
    let _: Value = admin.post("/v1/projects", &json!({ "name": "lab-a" })).await.unwrap();
    let _: Value = admin.post("/v1/nodes", &json!({ "name": "n1", "project": "lab-a" })).await.unwrap();
    let _: Value = admin.post("/v1/users", &json!({ "name": "rita" })).await.unwrap();
    let _: Value = admin.put("/v1/projects/lab-a/members", &json!({ "user": "rita", "role": "reader" })).await.unwrap();
    let token: kiln_types::api::CreatedToken = admin.post("/v1/tokens", &json!({ "name": "t", "user": "rita" })).await.unwrap();
    let reader = Client::new(&base, Some(token.secret));
    let _: Value = reader.get("/v1/nodes/n1").await.expect("the reader sees the node");
    let minted: Result<Value, _> = reader.post("/v1/cloud-init/nodes/n1/token", &json!({})).await;
    assert_eq!(minted.unwrap_err().status().map(|status| status.as_u16()), Some(403));
    let missing: Result<Value, _> = reader.post("/v1/cloud-init/nodes/nowhere/token", &json!({})).await;
    assert_eq!(missing.unwrap_err().status().map(|status| status.as_u16()), Some(404));
    server.handle.shutdown().await;
}
