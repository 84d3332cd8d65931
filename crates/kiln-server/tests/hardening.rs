//! What a caller with a token, or a machine on the provisioning network, can no longer do
//! (the security issue's holes, each tried as an attacker would over real HTTP): bodies
//! that lie about their length, stop arriving or trickle, JSON sent as a form, a page of
//! zero, and a reference to a project that does not exist.

use std::time::{Duration, Instant};

mod support;

use kiln_server::ServerConfigLayer;
use support::{TestServer, start_server};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn start(max_body_bytes: usize, body_idle_seconds: u64) -> TestServer {
    start_server(ServerConfigLayer {
        max_body_bytes: Some(max_body_bytes),
        body_idle_seconds: Some(body_idle_seconds),
        ..Default::default()
    })
    .await
}

/// Sends `head` (request line and headers, without the blank line) and `body` on a fresh
/// connection; returns the status and the answer's text, and how long the answer took.
async fn raw(server: &TestServer, head: &str, body: &[u8]) -> (u16, String, Duration) {
    let mut stream = tokio::net::TcpStream::connect(server.handle.local_addr()).await.unwrap();
    let started = Instant::now();
    let request = format!("{head}\r\nHost: kiln\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", server.admin_token);
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
async fn a_body_that_trickles_is_answered_408_once_its_total_time_is_up() {
    let layer = ServerConfigLayer { body_idle_seconds: Some(30), body_total_seconds: Some(2), ..Default::default() };
    let server = start_server(layer).await;
    let mut stream = tokio::net::TcpStream::connect(server.handle.local_addr()).await.unwrap();
    let head = format!(
        "POST /v1/nodes HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
        server.admin_token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every half second: never idle for the idle time, never done.
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), reader.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("within 2 s"), "{text}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "answered when the total time was up: {took:?}");
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
    let admin = Client::new(&base, Some(server.admin_token.clone()));
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

/// A web server on `address` that answers every request with `answer` (status line,
/// headers and body), as an internal service or a redirecting mirror would.
async fn web_server(address: &str, answer: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let bound = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    bound
}

fn ok_answer(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

/// A member of a project, with an image in it to import into.
async fn member_with_image(server: &TestServer) -> kiln_client::Client {
    use serde_json::{Value, json};
    let base = format!("http://{}", server.handle.local_addr());
    let admin = kiln_client::Client::new(&base, Some(server.admin_token.clone()));
    let _: Value = admin.post("/v1/projects", &json!({ "name": "lab-a" })).await.unwrap();
    let _: Value = admin.post("/v1/users", &json!({ "name": "mia" })).await.unwrap();
    let _: Value = admin.put("/v1/projects/lab-a/members", &json!({ "user": "mia", "role": "member" })).await.unwrap();
    let token: kiln_types::api::CreatedToken = admin.post("/v1/tokens", &json!({ "name": "t", "user": "mia" })).await.unwrap();
    let member = kiln_client::Client::new(&base, Some(token.secret));
    let _: Value = member.post("/v1/images", &json!({ "name": "img", "project": "lab-a" })).await.unwrap();
    member
}

/// What an import of `url` with a wrong checksum answers: status and message.
async fn import_answer(member: &kiln_client::Client, url: &str) -> (u16, String) {
    let body = serde_json::json!({ "url": url, "checksum": format!("sha256:{}", "0".repeat(64)), "kind": "disk" });
    match member.post::<_, serde_json::Value>("/v1/images/img/import", &body).await {
        Ok(answer) => (200, answer.to_string()),
        Err(kiln_client::ClientError::Api { status, message, .. }) => (status.as_u16(), message.replace(url, "URL")),
        Err(other) => panic!("{other:?}"),
    }
}

async fn start_allowing(networks: &[&str]) -> TestServer {
    start_server(ServerConfigLayer {
        images: Some(kiln_server::config::ImagesLayer {
            import_allowed_networks: networks.iter().map(|network| (*network).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn imports_cannot_reach_internal_addresses_nor_tell_open_ports_from_closed() {
    let server = start_allowing(&[]).await;
    let member = member_with_image(&server).await;
    let open = web_server("127.0.0.1:0", ok_answer("the internal service's secret")).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let tried = [
        format!("http://{open}/secret"),
        format!("http://{closed}/secret"),
        format!("http://localhost:{}/secret", open.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{}/secret", open.port()),
    ];
    let mut answers = Vec::new();
    for url in &tried {
        answers.push(import_answer(&member, url).await);
    }
    for (url, answer) in tried.iter().zip(&answers) {
        assert_eq!(answer, &(502, "could not fetch URL".to_owned()), "{url}");
    }
    server.handle.shutdown().await;
}

#[tokio::test]
async fn an_allowed_network_is_fetched_but_a_redirect_out_of_it_is_not_and_no_digest_is_told() {
    // The "mirror" is on 127.0.0.2, which the operator allows; 127.0.0.1 is not allowed.
    let server = start_allowing(&["127.0.0.2/32"]).await;
    let member = member_with_image(&server).await;
    let internal = web_server("127.0.0.1:0", ok_answer("the internal service's secret")).await;
    let mirror = web_server("127.0.0.2:0", ok_answer("a disk image, as far as the test goes")).await;
    let redirect = format!("HTTP/1.1 302 Found\r\nLocation: http://{internal}/secret\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let redirecting = web_server("127.0.0.2:0", redirect).await;
    let (status, message) = import_answer(&member, &format!("http://{mirror}/disk.img")).await;
    assert_eq!(status, 422, "the mirror was fetched; the checksum is wrong: {message}");
    assert!(message.contains("checksum mismatch"), "{message}");
    use sha2::Digest as _;
    let real = hex::encode(sha2::Sha256::digest(b"a disk image, as far as the test goes"));
    assert!(!message.contains(&real), "a member is not told the digest of what the URL answered: {message}");
    assert_eq!(import_answer(&member, &format!("http://{redirecting}/disk.img")).await, (502, "could not fetch URL".to_owned()));
    server.handle.shutdown().await;
}

/// This process's resident size, in MiB (nextest runs each test in a process of its own).
fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[tokio::test]
async fn free_form_fields_are_capped_and_the_largest_allowed_do_not_grow_the_server() {
    use serde_json::{Value, json};
    let server = start(64 << 20, 30).await;
    let base = format!("http://{}", server.handle.local_addr());
    let admin = kiln_client::Client::new(&base, Some(server.admin_token.clone()));
    let _: Value = admin.post("/v1/nodes", &json!({ "name": "n1" })).await.unwrap();
    // Over the cap: 413, naming the field; nothing stored.
    let too_large = json!({ "properties": { "blob": "x".repeat(70 << 10) } });
    match admin.patch::<_, Value>("/v1/nodes/n1", &too_large).await {
        Err(kiln_client::ClientError::Api { status, message, .. }) => {
            assert_eq!(status.as_u16(), 413, "{message}");
            assert!(message.starts_with("properties:"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let cloud_init = json!([{ "id": "n1", "rack-notes": "x".repeat(70 << 10) }]);
    let refused: Result<Value, _> = admin.post("/v1/cloud-init/nodes", &cloud_init).await;
    assert_eq!(refused.unwrap_err().status().map(|status| status.as_u16()), Some(413));
    // The largest allowed, a hundred times, then removed.
    let before = resident_mib();
    for round in 0..100 {
        let largest = json!({ "properties": { "blob": format!("{round:03}{}", "y".repeat((64 << 10) - 100)) } });
        let _: Value = admin.patch("/v1/nodes/n1", &largest).await.unwrap();
    }
    let _: Value = admin.patch("/v1/nodes/n1", &json!({ "properties": {} })).await.unwrap();
    let after = resident_mib();
    eprintln!("resident: {before} MiB before, {after} MiB after 100 patches of the largest properties and their removal");
    assert!(after < 200, "{after} MiB");
    server.handle.shutdown().await;
}
