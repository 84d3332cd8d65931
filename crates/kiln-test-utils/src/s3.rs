//! A real S3 server for tests: a one-node Garage cluster in a temporary directory on
//! loopback ports, and an HTTP proxy in front of it that can answer chosen requests with 500
//! to inject faults.
//!
//! Garage is found as `$KILN_GARAGE`, else `garage` on the PATH, else where `.ci/run` installs
//! it (`~/.cache/kiln-tools/bin/garage`). Without it the S3 tests skip, unless
//! `KILN_REQUIRE_S3=1`, which CI sets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

/// Fixed credentials: the cluster is private to one test.
pub const ACCESS_KEY_ID: &str = "GK0123456789abcdef01234567";
pub const SECRET_ACCESS_KEY: &str = "6b696c6e2d746573742d7365637265742d6b65792d6e6f742d7265616c2d3031";
pub const REGION: &str = "garage";
pub const BUCKET: &str = "kiln";

/// A running Garage server; stopped and removed when dropped.
pub struct TestS3 {
    pub endpoint: String,
    child: Child,
    _directory: tempfile::TempDir,
}

fn garage_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("KILN_GARAGE")
        && !path.is_empty()
    {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("garage")).find(|path| path.is_file()))
        .unwrap_or_default();
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let installed = PathBuf::from(home).join(".cache/kiln-tools/bin/garage");
        installed.is_file().then_some(installed)
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("binding port 0")
}

impl TestS3 {
    /// Starts Garage with a bucket and a key, or returns `None` (skip) when it is not
    /// installed and not required.
    pub fn start() -> Option<TestS3> {
        let Some(garage) = garage_binary() else {
            if std::env::var("KILN_REQUIRE_S3").as_deref() == Ok("1") {
                panic!("KILN_REQUIRE_S3=1 but garage is not installed (scripts/install-deps installs it)");
            }
            eprintln!("skipping an S3 test: garage is not installed");
            return None;
        };
        let directory = tempfile::tempdir().expect("creating a temporary directory");
        let (rpc_port, s3_port) = (free_port(), free_port());
        let config = directory.path().join("garage.toml");
        let mut secret_bytes = [0u8; 32];
        getrandom::fill(&mut secret_bytes).expect("the OS has randomness");
        let secret: String = secret_bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\nroot_domain = \".s3.garage.localhost\"\n",
                meta = directory.path().join("meta").display(),
                data = directory.path().join("data").display(),
            ),
        )
        .expect("writing the garage configuration");
        let log = std::fs::File::create(directory.path().join("garage.log")).expect("creating the garage log");
        let child = Command::new(&garage)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", garage.display()));
        let server = TestS3 { endpoint: format!("http://127.0.0.1:{s3_port}"), child, _directory: directory };
        let run = |args: &[&str]| -> String {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let output = Command::new(&garage).arg("-c").arg(&config).args(args).output().expect("running garage");
                if output.status.success() {
                    return String::from_utf8_lossy(&output.stdout).into_owned();
                }
                if Instant::now() > deadline {
                    panic!("garage {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        let node = run(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().expect("a node id").to_owned();
        run(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        run(&["layout", "apply", "--version", "1"]);
        run(&["key", "import", "--yes", ACCESS_KEY_ID, SECRET_ACCESS_KEY, "-n", "kiln"]);
        run(&["bucket", "create", BUCKET]);
        run(&["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "kiln"]);
        Some(server)
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decides whether the proxy fails a request: given the method and the path with query.
pub type FaultRule = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// An HTTP proxy to an upstream server that answers 500 to requests its rule picks.
pub struct FaultProxy {
    pub endpoint: String,
    /// Requests answered with 500 so far.
    pub failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str, rule: FaultRule) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding port 0");
        let address: SocketAddr = listener.local_addr().expect("a bound address");
        let failed = Arc::new(AtomicU64::new(0));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            rule,
            failed: failed.clone(),
            client: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(forward).with_state(Arc::new(state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { endpoint: format!("http://{address}"), failed, task }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ProxyState {
    upstream: String,
    rule: FaultRule,
    failed: Arc<AtomicU64>,
    client: reqwest::Client,
}

async fn forward(
    axum::extract::State(state): axum::extract::State<Arc<ProxyState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let method = request.method().as_str().to_owned();
    let path = request.uri().path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    if (state.rule)(&method, &path) {
        state.failed.fetch_add(1, Ordering::Relaxed);
        // Read the body first, as a real server would before failing.
        let _ = axum::body::to_bytes(request.into_body(), usize::MAX).await;
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>injected fault</Message></Error>";
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "application/xml")], body).into_response();
    }
    let mut upstream = state.client.request(request.method().clone(), format!("{}{path}", state.upstream));
    for (name, value) in request.headers() {
        // The Host header is signed by the client, so it goes through unchanged.
        if name != axum::http::header::CONTENT_LENGTH && name != axum::http::header::TRANSFER_ENCODING {
            upstream = upstream.header(name, value);
        }
    }
    let length = request.headers().get(axum::http::header::CONTENT_LENGTH).cloned();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX).await.unwrap_or_default();
    if length.is_some() || !body.is_empty() {
        upstream = upstream.body(body);
    }
    match upstream.send().await {
        Ok(response) => {
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.unwrap_or_default();
            let mut reply = (status, bytes).into_response();
            for (name, value) in &headers {
                if name != axum::http::header::TRANSFER_ENCODING && name != axum::http::header::CONTENT_LENGTH {
                    reply.headers_mut().insert(name, value.clone());
                }
            }
            reply
        }
        Err(error) => (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
