//! Provisioning faults, each against a real `kiln serve` and the real `kiln-agent` binary
//! (writing to a file instead of a disk): forged and replayed agent tokens, a download cut
//! mid-stream, a corrupted image, an agent that dies mid-write, the server killed mid-deploy
//! and restarted, and a power step interrupted by the server's death.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{ServerProcess, agent_binary, kiln, ok, token};

/// Short timeouts, no power sync: faults show in seconds. A boot listener, as machines have:
/// agents that are pointed at it get their image with sendfile(2).
const CONFIG: &str = "[boot]\nlisten = \"127.0.0.1:0\"\n\n[provisioning]\nagent_boot_timeout_seconds = 60\nheartbeat_timeout_seconds = 4\nlease_seconds = 2\n\n\
                      [bmc]\nsync_interval_seconds = 0\ntimeout_seconds = 5\n";

struct Site {
    directory: tempfile::TempDir,
    data: PathBuf,
    server: ServerProcess,
    token: String,
}

impl Site {
    fn start() -> Site {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path().join("data");
        let config = directory.path().join("kiln.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let server = ServerProcess::start(&data, &["--config", &config.display().to_string()]);
        let token = token(&data);
        let site = Site { directory, data, server, token };
        site.fake_ramdisk();
        site
    }

    /// A stand-in deploy ramdisk image: nothing boots it here (the test starts the agent),
    /// but boot scripts need one to name, and they carry the agent's credentials.
    fn fake_ramdisk(&self) {
        let mut kernel = vec![0u8; 4096];
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        let kernel_path = self.directory.path().join("kernel");
        std::fs::write(&kernel_path, kernel).unwrap();
        let initrd_path = self.directory.path().join("initrd");
        std::fs::write(&initrd_path, b"070701 not really a cpio archive").unwrap();
        self.kiln(&["image", "create", "kiln-deploy-ramdisk", "--visibility", "public"]);
        self.kiln(&[
            "image",
            "upload",
            "kiln-deploy-ramdisk",
            &format!("kernel={}", kernel_path.display()),
            &format!("initrd={}", initrd_path.display()),
        ]);
    }

    /// Restarts the server on the same data (a new port).
    fn restart(&mut self) {
        self.server.kill();
        let config = self.directory.path().join("kiln.toml");
        self.server = ServerProcess::start(&self.data, &["--config", &config.display().to_string()]);
    }

    /// Where machines (and so agents) talk to: the boot listener.
    fn boot_url(&self) -> String {
        self.server.boot_url.clone().expect("the server announced its boot listener")
    }

    fn kiln(&self, args: &[&str]) -> String {
        ok(kiln(&self.server, &self.token, args, None))
    }

    fn kiln_fails(&self, args: &[&str]) -> String {
        let output = kiln(&self.server, &self.token, args, None);
        assert!(!output.status.success(), "kiln {args:?} should have failed");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn status(&self, node: &str) -> serde_json::Value {
        serde_json::from_str(&self.kiln(&["node", "provision", node, "-F", "json"])).unwrap()
    }

    fn wait_for(&self, node: &str, what: &str, timeout: Duration, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(node);
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{node} never got to {what}: {status}\nserver log:\n{}", tail(&self.server.log()));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An image whose disk artifact is `bytes`, stored as given (raw).
    fn image(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.directory.path().join(format!("{name}.raw"));
        std::fs::write(&path, bytes).unwrap();
        self.kiln(&["image", "create", name]);
        self.kiln(&["image", "upload", name, &format!("disk={}", path.display())]);
        path
    }

    /// An available node without a BMC (it "powers on by itself": the agent is started by
    /// the test), reserved the address its "machine" speaks from: loopback, where the test
    /// asks for its boot script.
    fn node(&self, name: &str, mac: &str) {
        let node = serde_json::json!([{ "name": name, "interfaces": [{"mac_addr": mac, "ip_addrs": [{"name": "boot", "ip_addr": "127.0.0.1"}]}] }]);
        self.kiln(&["discover", "static", "-f", "json", "-d", &node.to_string()]);
        self.kiln(&["node", "manage", name, "--wait", "--timeout", "20"]);
        self.kiln(&["node", "provide", name, "--wait", "--timeout", "20"]);
    }

    /// The node id and agent token its boot script carries, once the reconciler has minted
    /// them (as a real machine would, by asking again).
    fn agent_credentials(&self, node: &str, mac: &str) -> (String, String) {
        self.wait_for(node, "waiting for its agent", Duration::from_secs(20), |s| s["step"] == "agent");
        let (status, script) = http("GET", &self.server.url, &format!("/boot/v1/bootscript?mac={mac}"), None, b"");
        assert_eq!(status, 200, "{script}");
        let find = |key: &str| {
            script.split_whitespace().find_map(|word| word.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in {script}")).to_owned()
        };
        (find("kiln.node="), find("kiln.token="))
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One HTTP/1.1 request with `Connection: close`; the status and body.
fn http(method: &str, base: &str, path: &str, bearer: Option<&str>, body: &[u8]) -> (u16, String) {
    let stream = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    http_on(stream, method, path, bearer, body)
}

/// The same request from another loopback address than the one the nodes reserve
/// (127.0.0.1): a machine on the segment that is not the node.
fn http_from_elsewhere(method: &str, base: &str, path: &str, bearer: Option<&str>, body: &[u8]) -> (u16, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into()).unwrap();
    let server: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    socket.connect(&server.into()).unwrap();
    http_on(socket.into(), method, path, bearer, body)
}

fn http_on(mut stream: TcpStream, method: &str, path: &str, bearer: Option<&str>, body: &[u8]) -> (u16, String) {
    let auth = bearer.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A server may answer (413) before it has read the whole body, and close: what it
    // answered is still read.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

fn start_agent(server_url: &str, node_id: &str, agent_token: &str, disk: &Path) -> Child {
    agent_command(server_url, node_id, agent_token, disk).spawn().unwrap()
}

/// The simulated agent's command, writing to `disk`, its output on standard error.
fn agent_command(server_url: &str, node_id: &str, agent_token: &str, disk: &Path) -> Command {
    let mut command = Command::new(agent_binary());
    command
        .args(["--server", server_url, "--node", node_id, "--token", agent_token, "--no-power", "--heartbeat-seconds", "1"])
        .arg("--disk-file")
        .arg(disk)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn agent_output(child: Child) -> (bool, String) {
    let output = child.wait_with_output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Bytes that do not compress, so a cut lands mid-stream whatever the buffer sizes.
fn noise(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A TCP proxy in front of the server: it can cut artifact downloads after some bytes, slow
/// them down, and follow the server to a new address after a restart.
struct Proxy {
    url: String,
    upstream: Arc<Mutex<SocketAddr>>,
    /// Artifact responses still to cut, and after how many bytes.
    cuts: Arc<AtomicUsize>,
    /// Artifact requests seen, with their Range header.
    artifact_requests: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: &str, cuts: usize, cut_after: usize, bytes_per_second: Option<usize>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = Arc::new(Mutex::new(upstream.trim_start_matches("http://").parse().unwrap()));
        let proxy = Proxy { url, upstream, cuts: Arc::new(AtomicUsize::new(cuts)), artifact_requests: Arc::default() };
        let (upstream, counter, requests) = (proxy.upstream.clone(), proxy.cuts.clone(), proxy.artifact_requests.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let (upstream, counter, requests) = (*upstream.lock().unwrap(), counter.clone(), requests.clone());
                std::thread::spawn(move || relay(client, upstream, counter, cut_after, bytes_per_second, requests));
            }
        });
        proxy
    }

    fn follow(&self, server: &ServerProcess) {
        *self.upstream.lock().unwrap() = server.url.trim_start_matches("http://").parse().unwrap();
    }
}

fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    cuts: Arc<AtomicUsize>,
    cut_after: usize,
    bytes_per_second: Option<usize>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let (client_half, server_half) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    relay_connection(client, server, cuts, cut_after, bytes_per_second, requests);
    // Both ends see the connection end, also the copier thread's.
    let _ = client_half.shutdown(std::net::Shutdown::Both);
    let _ = server_half.shutdown(std::net::Shutdown::Both);
}

fn relay_connection(
    mut client: TcpStream,
    mut server: TcpStream,
    cuts: Arc<AtomicUsize>,
    cut_after: usize,
    bytes_per_second: Option<usize>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    // The request's head, to see what it asks for.
    let mut request = vec![0u8; 64 * 1024];
    let Ok(read) = client.read(&mut request) else { return };
    let head = String::from_utf8_lossy(&request[..read]).into_owned();
    // The image itself, not its block map.
    let is_artifact = head.starts_with("GET ") && head.contains("/artifact ");
    if is_artifact {
        let range = head.lines().find(|line| line.to_ascii_lowercase().starts_with("range:")).unwrap_or("no range").to_owned();
        requests.lock().unwrap().push(range);
    }
    if server.write_all(&request[..read]).is_err() {
        return;
    }
    // Whatever else the client sends (a body written after its head) goes on as it comes.
    if let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) {
        std::thread::spawn(move || std::io::copy(&mut from_client, &mut to_server));
    }
    let cut = is_artifact && cuts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok();
    let mut sent = 0usize;
    let mut buffer = vec![0u8; 16 * 1024];
    let started = Instant::now();
    loop {
        let Ok(read) = server.read(&mut buffer) else { return };
        if read == 0 {
            return;
        }
        let mut chunk = &buffer[..read];
        if cut && sent + chunk.len() > cut_after {
            chunk = &chunk[..cut_after - sent];
            let _ = client.write_all(chunk);
            return; // the connection drops mid-body
        }
        if client.write_all(chunk).is_err() {
            return;
        }
        sent += chunk.len();
        if let (true, Some(rate)) = (is_artifact, bytes_per_second) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

#[test]
fn a_simulated_node_deploys_and_agent_tokens_cannot_be_forged_or_replayed() {
    let site = Site::start();
    let image = site.image("os", &noise(3 << 20, 1));
    site.node("sim1", "52:54:00:00:01:01");
    site.node("sim2", "52:54:00:00:01:02");
    site.kiln(&["node", "deploy", "sim1", "sim2", "--image", "os"]);
    let (node1, token1) = site.agent_credentials("sim1", "52:54:00:00:01:01");
    let (node2, token2) = site.agent_credentials("sim2", "52:54:00:00:01:02");
    assert_ne!(token1, token2, "one token per node and operation");
    let heartbeat =
        |node: &str, token: &str| http("POST", &site.server.url, &format!("/agent/v1/nodes/{node}/heartbeat"), Some(token), b"{}");
    // Forged, another node's, and a near miss: refused alike.
    let mut forged = token1.clone();
    forged.pop();
    forged.push(if token1.ends_with('A') { 'B' } else { 'A' });
    for (node, token) in [(&node1, "kiln_forged"), (&node1, token2.as_str()), (&node1, forged.as_str()), (&node2, token1.as_str())] {
        let (status, body) = heartbeat(node, token);
        assert_eq!(status, 401, "{body}");
    }
    assert_eq!(heartbeat(&node1, "").0, 401);

    let disk = site.directory.path().join("sim1.disk");
    let (done, log) = agent_output(start_agent(&site.boot_url(), &node1, &token1, &disk));
    assert!(done, "{log}");
    let artifact_path = format!("/agent/v1/nodes/{node1}/artifact");
    let sent = site.server.log().lines().any(|line| line.contains("boot file sent") && line.contains(&artifact_path));
    assert!(sent, "the image went out through the boot listener's sendfile path:\n{}", tail(&site.server.log()));
    site.wait_for("sim1", "active", Duration::from_secs(20), |s| s["provision_state"] == "active");
    assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&image).unwrap(), "the disk holds exactly the image");
    // The deploy is over: its token is dead, for heartbeats, results and the artifact alike.
    assert_eq!(heartbeat(&node1, &token1).0, 401);
    let result = serde_json::json!({"id": 1, "error": null, "inventory": null, "root_device": null}).to_string();
    assert_eq!(http("POST", &site.server.url, &format!("/agent/v1/nodes/{node1}/result"), Some(&token1), result.as_bytes()).0, 401);
    for base in [&site.server.url, &site.boot_url()] {
        assert_eq!(http("GET", base, &format!("/agent/v1/nodes/{node1}/artifact"), Some(&token1), b"").0, 401, "{base}");
    }
    // Nor does the boot listener send it for a token that was never good.
    assert_eq!(http("GET", &site.boot_url(), &format!("/agent/v1/nodes/{node2}/artifact"), Some("kiln_forged"), b"").0, 401);
    // A second result for a command is refused; the other node is still waiting.
    let (agent_done, _) = agent_output(start_agent(&site.server.url, &node1, &token1, &disk));
    assert!(agent_done, "a refused agent ends quietly");
    assert_eq!(site.status("sim2")["provision_state"], "wait-agent");
    // A second deploy while busy is a conflict, and so is a deploy of an active node.
    assert!(site.kiln_fails(&["node", "deploy", "sim2", "--image", "os"]).contains("busy"));
    assert!(site.kiln_fails(&["node", "deploy", "sim1", "--image", "os"]).contains("cannot deploy node 'sim1' in state active"));
}

/// A MAC is not a secret: the boot script that carries a deploying node's agent token is
/// served only to the node's own address (a reservation, or Kiln's DHCP lease), on both
/// listeners; from anywhere else the machine is told to wait and ask again.
#[test]
fn a_boot_script_carries_the_agent_token_only_to_the_node_s_own_address() {
    let site = Site::start();
    site.image("os", &noise(1 << 20, 2));
    // "far" is reserved 10.9.9.9: the test, on loopback, is not it. "near" is reserved
    // loopback.
    let far = serde_json::json!([{ "name": "far", "interfaces": [{"mac_addr": "52:54:00:00:02:01", "ip_addrs": [{"name": "boot", "ip_addr": "10.9.9.9"}]}] }]);
    site.kiln(&["discover", "static", "-f", "json", "-d", &far.to_string()]);
    site.kiln(&["node", "manage", "far", "--wait", "--timeout", "20"]);
    site.kiln(&["node", "provide", "far", "--wait", "--timeout", "20"]);
    site.node("near", "52:54:00:00:02:02");
    site.kiln(&["node", "deploy", "far", "near", "--image", "os"]);
    site.wait_for("far", "waiting for its agent", Duration::from_secs(20), |s| s["step"] == "agent");
    let (_, near_token) = site.agent_credentials("near", "52:54:00:00:02:02");
    assert!(near_token.starts_with("kiln_"), "the node's own address gets its token");
    for base in [site.server.url.clone(), site.boot_url()] {
        let (status, script) = http("GET", &base, "/boot/v1/bootscript?mac=52:54:00:00:02:01", None, b"");
        assert_eq!(status, 200, "{script}");
        assert!(!script.contains("kiln.token=") && !script.contains("kiln_"), "{base}: another address got the token:\n{script}");
    }
    assert!(site.server.log().contains("did not give this MAC"), "the refusal is logged");
}

/// The token a boot script carries is good once: exchanged for a session token that never
/// appears in a boot script; a second exchange, or any other use of it, is refused. A
/// ramdisk that boots again gets a fresh boot token, and the session before it dies.
#[test]
fn a_boot_token_is_exchanged_once_and_a_fresh_boot_script_ends_the_old_session() {
    let site = Site::start();
    site.image("os", &noise(1 << 20, 3));
    site.node("once", "52:54:00:00:03:01");
    site.kiln(&["node", "deploy", "once", "--image", "os"]);
    let (node, boot_token) = site.agent_credentials("once", "52:54:00:00:03:01");
    let agent = |method: &str, what: &str, token: &str| {
        http(method, &site.boot_url(), &format!("/agent/v1/nodes/{node}/{what}"), Some(token), b"{}")
    };
    // Before the exchange the boot token is good for nothing else.
    assert_eq!(agent("POST", "heartbeat", &boot_token).0, 401);
    assert_eq!(agent("GET", "artifact", &boot_token).0, 401);
    // From another address than the node's, the exchange is refused like a wrong token.
    let elsewhere = http_from_elsewhere("POST", &site.boot_url(), &format!("/agent/v1/nodes/{node}/session"), Some(&boot_token), b"{}");
    assert_eq!(elsewhere.0, 401, "{}", elsewhere.1);
    let (status, answer) = agent("POST", "session", &boot_token);
    assert_eq!(status, 200, "{answer}");
    let session: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let session = session["token"].as_str().unwrap().to_owned();
    assert_ne!(session, boot_token);
    assert_eq!(agent("POST", "heartbeat", &session).0, 200, "the session works");
    // What the machine sends is held to the stored fields' limit (64 KiB), naming the field,
    // on the API listener too (the boot listener takes no body over 64 KiB at all).
    let disks: Vec<serde_json::Value> = (0..2000)
        .map(|index| serde_json::json!({ "name": format!("sd{index}"), "size_bytes": 1, "rotational": false, "removable": false }))
        .collect();
    let inventory = serde_json::json!({ "id": 1, "inventory": { "cpu_count": 1, "cpu_arch": "x86_64", "memory_bytes": 1,
        "disks": disks, "interfaces": [], "dmi": {} } });
    let result = |body: &serde_json::Value| {
        http("POST", &site.server.url, &format!("/agent/v1/nodes/{node}/result"), Some(&session), body.to_string().as_bytes())
    };
    let (status, answer) = result(&inventory);
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("inventory"), "{answer}");
    let (status, answer) = result(&serde_json::json!({ "id": 1, "error": "e".repeat(100_000) }));
    assert!(status == 413 && answer.contains("error: "), "{status} {answer}");
    let progress = serde_json::json!({ "progress": { "phase": "p".repeat(100_000), "bytes_done": 0 } });
    let (status, answer) =
        http("POST", &site.server.url, &format!("/agent/v1/nodes/{node}/heartbeat"), Some(&session), progress.to_string().as_bytes());
    assert!(status == 413 && answer.contains("progress"), "{status} {answer}");
    assert_eq!(agent("POST", "heartbeat", &session).0, 200, "and nothing of it was taken");
    assert_eq!(agent("POST", "session", &boot_token).0, 401, "a second exchange is refused");
    assert_eq!(agent("POST", "session", &session).0, 401, "a session token is not a boot token");
    assert_eq!(agent("POST", "heartbeat", &boot_token).0, 401);
    // The ramdisk boots again: a fresh boot script, a fresh boot token, the old session dead.
    let (_, fresh) = site.agent_credentials("once", "52:54:00:00:03:01");
    assert_ne!(fresh, boot_token);
    assert_eq!(agent("POST", "heartbeat", &session).0, 401, "the session before it ended");
    let (status, _) = agent("POST", "session", &fresh);
    assert_eq!(status, 200);
    assert_eq!(agent("POST", "session", &boot_token).0, 401, "and the first boot token stays dead");
}

/// An exchange whose answer never reached the agent spent its boot token: the agent asks
/// for a fresh boot script from the node's address, as a ramdisk booting again would, and
/// deploys with the fresh token (the session the lost answer held dies with it).
#[test]
fn an_agent_whose_exchange_answer_was_lost_gets_a_fresh_token_and_deploys() {
    let site = Site::start();
    let image = site.image("os", &noise(1 << 20, 4));
    site.node("lost", "52:54:00:00:04:01");
    site.kiln(&["node", "deploy", "lost", "--image", "os"]);
    let (node, boot_token) = site.agent_credentials("lost", "52:54:00:00:04:01");
    let exchange = |token: &str| http("POST", &site.boot_url(), &format!("/agent/v1/nodes/{node}/session"), Some(token), b"{}");
    let (status, answer) = exchange(&boot_token);
    assert_eq!(status, 200, "the exchange is taken; its answer is what the agent never sees");
    let lost_session = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["token"].as_str().unwrap().to_owned();
    let disk = site.directory.path().join("lost.disk");
    let agent = agent_command(&site.boot_url(), &node, &boot_token, &disk).args(["--mac", "52:54:00:00:04:01"]).spawn().unwrap();
    let (done, log) = agent_output(agent);
    assert!(done && log.contains("asking for a fresh boot script"), "{log}");
    site.wait_for("lost", "active", Duration::from_secs(20), |s| s["provision_state"] == "active");
    assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&image).unwrap(), "the disk holds exactly the image");
    let heartbeat = http("POST", &site.boot_url(), &format!("/agent/v1/nodes/{node}/heartbeat"), Some(&lost_session), b"{}");
    assert_eq!(heartbeat.0, 401, "the session of the lost answer is dead");
}

/// A phone-home is recorded from anywhere, but completes a deploy waiting for its callback
/// only from the node's own address.
#[test]
fn only_the_node_s_own_phone_home_completes_its_deploy() {
    let site = Site::start();
    site.image("os", &noise(1 << 20, 4));
    site.node("cb", "52:54:00:00:06:01");
    site.kiln(&["node", "deploy", "cb", "--image", "os", "--wait-for-callback"]);
    let (node, token) = site.agent_credentials("cb", "52:54:00:00:06:01");
    let disk = site.directory.path().join("cb.disk");
    let (done, log) = agent_output(start_agent(&site.boot_url(), &node, &token, &disk));
    assert!(done, "{log}");
    site.wait_for("cb", "waiting for its callback", Duration::from_secs(20), |s| s["step"] == "wait-callback");
    let path = "/boot/v1/phone-home?mac=52:54:00:00:06:01";
    assert_eq!(http_from_elsewhere("GET", &site.boot_url(), path, None, b"").0, 204, "recorded");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(site.status("cb")["step"], "wait-callback", "another address's phone-home completed nothing");
    assert_eq!(http("GET", &site.boot_url(), path, None, b"").0, 204);
    site.wait_for("cb", "active", Duration::from_secs(20), |s| s["provision_state"] == "active");
}

/// Both ways an agent downloads: a raw image by its block map (range requests of data
/// chunks), and a compressed one as one stream.
#[test]
fn a_download_cut_mid_stream_resumes_where_it_stopped() {
    for compressed in [false, true] {
        let site = Site::start();
        let image = site.directory.path().join("os.raw");
        std::fs::write(&image, noise(6 << 20, 2)).unwrap();
        let stored = if compressed {
            let zst = site.directory.path().join("os.raw.zst");
            let status =
                Command::new("zstd").args(["-q", "-1"]).arg(&image).arg("-o").arg(&zst).status().expect("zstd (apt-get install zstd)");
            assert!(status.success());
            zst
        } else {
            image.clone()
        };
        site.kiln(&["image", "create", "os"]);
        site.kiln(&["image", "upload", "os", &format!("disk={}", stored.display())]);
        site.node("cut1", "52:54:00:00:02:01");
        site.kiln(&["node", "deploy", "cut1", "--image", "os"]);
        let (node, agent_token) = site.agent_credentials("cut1", "52:54:00:00:02:01");
        let proxy = Proxy::start(&site.boot_url(), 2, 1 << 20, None);
        let disk = site.directory.path().join("cut1.disk");
        let (done, log) = agent_output(start_agent(&proxy.url, &node, &agent_token, &disk));
        assert!(done, "{log}");
        assert!(log.contains("resuming"), "{log}");
        assert_eq!(log.contains("block map:"), !compressed, "{log}");
        site.wait_for("cut1", "active", Duration::from_secs(20), |s| s["provision_state"] == "active");
        assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&image).unwrap());
        let requests = proxy.artifact_requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 3, "{requests:?}");
        assert!(requests[1].contains("bytes=") && !requests[1].contains("bytes=0-"), "the second request resumes: {requests:?}");
    }
}

#[test]
fn a_corrupted_image_fails_the_deploy_and_leaves_the_disk_unbootable() {
    let site = Site::start();
    site.image("os", &noise(2 << 20, 3));
    // Rot in the blob store, behind the server's back.
    let version: serde_json::Value = serde_json::from_str(&site.kiln(&["image", "versions", "os", "-F", "json"])).unwrap();
    let sha = version[0]["artifacts"][0]["sha256"].as_str().unwrap().to_owned();
    let blob = site.data.join("blobs/sha256").join(&sha[..2]).join(&sha);
    let mut rotten = std::fs::read(&blob).unwrap();
    rotten[1 << 20] ^= 0xff;
    std::fs::write(&blob, rotten).unwrap();

    site.node("rot1", "52:54:00:00:03:01");
    site.kiln(&["node", "deploy", "rot1", "--image", "os"]);
    let (node, agent_token) = site.agent_credentials("rot1", "52:54:00:00:03:01");
    // The disk had a bootable system on it before.
    let disk = site.directory.path().join("rot1.disk");
    let mut old = vec![0x42u8; 4 << 20];
    old[510] = 0x55;
    old[511] = 0xaa;
    std::fs::write(&disk, &old).unwrap();
    // Through the boot listener: the file leaves by sendfile, unchecked; the agent checks.
    let (_, log) = agent_output(start_agent(&site.boot_url(), &node, &agent_token, &disk));
    let status = site.wait_for("rot1", "deploy-failed", Duration::from_secs(20), |s| s["provision_state"] == "deploy-failed");
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("checksum mismatch") && error.contains(&sha), "{error}\n{log}");
    let after = std::fs::read(&disk).unwrap();
    assert!(after[..1 << 20].iter().all(|&byte| byte == 0), "the boot sector and partition table are wiped");
    // `kiln image verify` finds the rot; a good image deploys.
    let verify = kiln(&site.server, &site.token, &["image", "verify", "-F", "json"], None);
    let report = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(!verify.status.success() && report.contains(&sha), "{report}");
    let good = site.image("os-fixed", &noise(2 << 20, 33));
    site.kiln(&["node", "deploy", "rot1", "--image", "os-fixed"]);
    let (node, agent_token) = site.agent_credentials("rot1", "52:54:00:00:03:01");
    let (done, log) = agent_output(start_agent(&site.server.url, &node, &agent_token, &disk));
    assert!(done, "{log}");
    site.wait_for("rot1", "active", Duration::from_secs(20), |s| s["provision_state"] == "active");
    assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&good).unwrap());
}

#[test]
fn an_agent_that_dies_mid_write_times_out_and_the_node_is_redeployable() {
    let site = Site::start();
    let image = site.image("os", &noise(8 << 20, 4));
    site.node("dead1", "52:54:00:00:04:01");
    site.kiln(&["node", "deploy", "dead1", "--image", "os"]);
    let (node, agent_token) = site.agent_credentials("dead1", "52:54:00:00:04:01");
    // 1 MiB/s: the write takes eight seconds; the machine "loses power" after the first
    // progress report.
    let proxy = Proxy::start(&site.server.url, 0, 0, Some(1 << 20));
    let disk = site.directory.path().join("dead1.disk");
    let mut agent = start_agent(&proxy.url, &node, &agent_token, &disk);
    site.wait_for("dead1", "progress", Duration::from_secs(20), |s| s["progress"]["bytes_done"].as_u64().unwrap_or(0) > 0);
    agent.kill().unwrap();
    agent.wait().unwrap();
    let status = site.wait_for("dead1", "deploy-failed", Duration::from_secs(30), |s| s["provision_state"] == "deploy-failed");
    assert!(status["last_error"].as_str().unwrap().contains("stopped heartbeating"), "{status}");

    site.kiln(&["node", "deploy", "dead1", "--image", "os"]);
    let (node, agent_token) = site.agent_credentials("dead1", "52:54:00:00:04:01");
    let (done, log) = agent_output(start_agent(&site.server.url, &node, &agent_token, &disk));
    assert!(done, "{log}");
    site.wait_for("dead1", "active", Duration::from_secs(20), |s| s["provision_state"] == "active");
    assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&image).unwrap());
}

#[test]
fn the_server_killed_mid_deploy_carries_on_after_a_restart() {
    let mut site = Site::start();
    let image = site.image("os", &noise(8 << 20, 5));
    site.node("crash1", "52:54:00:00:05:01");
    site.kiln(&["node", "deploy", "crash1", "--image", "os"]);
    let (node, agent_token) = site.agent_credentials("crash1", "52:54:00:00:05:01");
    let proxy = Proxy::start(&site.server.url, 0, 0, Some(1 << 20));
    let disk = site.directory.path().join("crash1.disk");
    let agent = start_agent(&proxy.url, &node, &agent_token, &disk);
    site.wait_for("crash1", "progress", Duration::from_secs(20), |s| s["progress"]["bytes_done"].as_u64().unwrap_or(0) > 0);
    // SIGKILL mid-download, then a new server process on the same data.
    site.restart();
    proxy.follow(&site.server);
    let (done, log) = agent_output(agent);
    assert!(done, "{log}");
    assert!(log.contains("resuming"), "the cut download resumed from the new server:\n{log}");
    let status = site.wait_for("crash1", "active", Duration::from_secs(30), |s| s["provision_state"] == "active");
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(std::fs::read(&disk).unwrap(), std::fs::read(&image).unwrap());
}

#[test]
fn a_power_step_interrupted_by_the_server_s_death_fails_with_the_reason() {
    let mut site = Site::start();
    site.image("os", &noise(1 << 20, 6));
    // A BMC that accepts connections and never answers: the power step hangs.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", hung.local_addr().unwrap());
    site.node("hang1", "52:54:00:00:06:01");
    let bmc = serde_json::json!({"bmc": {"driver": "redfish", "address": address, "username": "u", "password": "p"}});
    site.kiln(&["node", "update", "hang1", "-f", "json", "-d", &bmc.to_string()]);
    site.kiln(&["node", "deploy", "hang1", "--image", "os"]);
    site.wait_for("hang1", "the power step", Duration::from_secs(10), |s| s["step"] == "powering");
    site.restart();
    let status = site.wait_for("hang1", "deploy-failed", Duration::from_secs(30), |s| s["provision_state"] == "deploy-failed");
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("interrupted") && error.contains("powering"), "{error}");
    drop(hung);
}

/// Two `kiln serve` replicas on one PostgreSQL (and one blob directory) share the nodes'
/// work: every step is carried out once, by one replica. The replica the agents talk to
/// dies mid-deploy (SIGKILL); the agents' address moves to the other (as a virtual IP
/// would), which carries every node through to `active`.
#[test]
fn two_replicas_share_the_work_and_one_carries_on_when_the_other_dies() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let Some(database) = runtime.block_on(kiln_test_utils::TestDatabase::new(kiln_test_utils::BackendKind::Postgres)) else { return };
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("kiln.toml");
    let shared = |name: &str| directory.path().join(name).display().to_string();
    let text = format!("secret_key_file = \"{}\"\n\n{CONFIG}\n[images]\nblob_dir = \"{}\"\n", shared("secret.key"), shared("blobs"));
    std::fs::write(&config, text).unwrap();
    let environment = [("KILN_DATABASE_URL", database.url.as_str())];
    let start = |name: &str| {
        ServerProcess::start_with_env(&directory.path().join(name), &["--config", &config.display().to_string()], &environment)
    };
    let mut first = start("replica-a");
    let second = start("replica-b");
    let admin = token(&directory.path().join("replica-a"));
    let site = |server: &ServerProcess, args: &[&str]| ok(kiln(server, &admin, args, None));

    // A stand-in ramdisk and an image, through either replica.
    let mut kernel = vec![0u8; 4096];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(directory.path().join("kernel"), kernel).unwrap();
    std::fs::write(directory.path().join("initrd"), b"070701 stand-in").unwrap();
    site(&first, &["image", "create", "kiln-deploy-ramdisk", "--visibility", "public"]);
    site(
        &first,
        &["image", "upload", "kiln-deploy-ramdisk", &format!("kernel={}", shared("kernel")), &format!("initrd={}", shared("initrd"))],
    );
    let image = noise(4 << 20, 7);
    std::fs::write(directory.path().join("os.raw"), &image).unwrap();
    site(&second, &["image", "create", "os"]);
    site(&second, &["image", "upload", "os", &format!("disk={}", shared("os.raw"))]);

    let count = 8;
    let nodes: Vec<(String, String)> = (0..count).map(|i| (format!("rep{i}"), format!("52:54:00:00:07:{i:02x}"))).collect();
    for (index, (name, mac)) in nodes.iter().enumerate() {
        let server = if index % 2 == 0 { &first } else { &second };
        let node = serde_json::json!([{ "name": name, "interfaces": [{"mac_addr": mac, "ip_addrs": [{"name": "boot", "ip_addr": "127.0.0.1"}]}] }]);
        site(server, &["discover", "static", "-f", "json", "-d", &node.to_string()]);
        site(server, &["node", "manage", name, "--wait", "--timeout", "20"]);
        site(server, &["node", "provide", name, "--wait", "--timeout", "20"]);
        site(server, &["node", "deploy", name, "--image", "os"]);
    }
    // The agents reach "the server" through one address, in front of replica a; slowly, so
    // that a dies with every download under way.
    let proxy = Proxy::start(&first.url, 0, 0, Some(1 << 20));
    let mut agents = Vec::new();
    for (name, mac) in &nodes {
        let status = |server: &ServerProcess| -> serde_json::Value {
            serde_json::from_str(&site(server, &["node", "provision", name, "-F", "json"])).unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while status(&second)["step"] != "agent" {
            assert!(Instant::now() < deadline, "{name} never waited for its agent: {}", status(&second));
            std::thread::sleep(Duration::from_millis(200));
        }
        let (status_code, script) = http("GET", &second.url, &format!("/boot/v1/bootscript?mac={mac}"), None, b"");
        assert_eq!(status_code, 200);
        let find = |key: &str| script.split_whitespace().find_map(|word| word.strip_prefix(key)).unwrap().to_owned();
        let disk = directory.path().join(format!("{name}.disk"));
        agents.push((name.clone(), disk.clone(), start_agent(&proxy.url, &find("kiln.node="), &find("kiln.token="), &disk)));
    }
    std::thread::sleep(Duration::from_millis(1500));
    first.kill();
    proxy.follow(&second);
    for (name, disk, agent) in agents {
        let (done, log) = agent_output(agent);
        assert!(done, "{name}: {log}");
        assert_eq!(std::fs::read(&disk).unwrap(), image, "{name}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, _) in &nodes {
        loop {
            let status: serde_json::Value = serde_json::from_str(&site(&second, &["node", "provision", name, "-F", "json"])).unwrap();
            if status["provision_state"] == "active" {
                break;
            }
            let log: Vec<String> =
                second.log().lines().filter(|line| line.contains(name.as_str()) && !line.contains("sqlx")).map(str::to_owned).collect();
            assert!(Instant::now() < deadline, "{name} is not active: {status}\n{}", log.join("\n"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Each node's steps happened once each: one power step, one end of deploy.
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&site(&second, &["events", "--kind", "node_provision", "--limit", "1000", "-F", "json"])).unwrap();
    let mut owners = std::collections::BTreeSet::new();
    for (name, _) in &nodes {
        let steps: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["target"] == name.as_str() && e["action"] == "node.provision.step").collect();
        let into = |state: &str| steps.iter().filter(|e| e["after"]["state"] == state).count();
        let summary: Vec<String> = steps.iter().map(|e| format!("{} by {}", e["after"]["state"], e["after"]["owner"])).collect();
        assert_eq!((into("deploying"), into("wait-agent"), into("active")), (1, 1, 1), "{name}: {summary:?}");
        owners.extend(steps.iter().map(|e| e["after"]["owner"].as_str().unwrap().to_owned()));
    }
    assert!(owners.len() >= 2, "both replicas carried out steps: {owners:?}");
}

/// BAAS-style reservations: a deploy that starts at a given time, and a reservation that
/// ends at a given time, after which the node is undeployed and its disk cleaned.
#[test]
fn a_reservation_starts_at_its_time_and_ends_with_the_disk_cleaned() {
    let site = Site::start();
    site.image("os", &noise(1 << 20, 8));
    site.node("res1", "52:54:00:00:08:01");
    let requested = Instant::now();
    site.kiln(&["node", "deploy", "res1", "--image", "os", "--at", "+3s", "--until", "+12s"]);
    let status = site.status("res1");
    assert_eq!((status["provision_state"].as_str(), status["pending"]["action"].as_str()), (Some("available"), Some("deploy")), "{status}");
    let refused = site.kiln_fails(&["node", "inspect", "res1"]);
    assert!(refused.contains("has a deploy of os scheduled from") && refused.contains("until that deploy starts"), "{refused}");
    let (node, agent_token) = site.agent_credentials("res1", "52:54:00:00:08:01");
    assert!(requested.elapsed() >= Duration::from_secs(3), "the deploy started early: {:?}", requested.elapsed());
    let disk = site.directory.path().join("res1.disk");
    let (done, log) = agent_output(start_agent(&site.server.url, &node, &agent_token, &disk));
    assert!(done, "{log}");
    site.wait_for("res1", "active", Duration::from_secs(10), |s| s["provision_state"] == "active");
    assert!(std::fs::read(&disk).unwrap()[..4096].iter().any(|&byte| byte != 0));
    // At the end of the reservation the node is undeployed: an agent boots to clean it.
    site.wait_for("res1", "cleaning", Duration::from_secs(30), |s| s["provision_state"] == "cleaning" && s["step"] == "agent");
    assert!(requested.elapsed() >= Duration::from_secs(12), "the reservation ended early: {:?}", requested.elapsed());
    let (node, agent_token) = site.agent_credentials("res1", "52:54:00:00:08:01");
    let (done, log) = agent_output(start_agent(&site.server.url, &node, &agent_token, &disk));
    assert!(done, "{log}");
    site.wait_for("res1", "available", Duration::from_secs(10), |s| s["provision_state"] == "available");
    assert!(std::fs::read(&disk).unwrap()[..1 << 20].iter().all(|&byte| byte == 0), "the disk was cleaned");
    // A reservation must end after it starts.
    let refused = site.kiln_fails(&["node", "deploy", "res1", "--image", "os", "--at", "+1h", "--until", "+30m"]);
    assert!(refused.contains("must be after start_at"), "{refused}");
}

/// Capture: a deployed node's disk, read by its agent, becomes a new version of an image
/// whose bytes are the disk's; the node is active again, and a capture cannot be aimed at
/// an image the requester may not change.
#[test]
fn a_deployed_node_s_disk_is_captured_as_a_new_image_version() {
    let site = Site::start();
    let mut bytes = noise(2 << 20, 9);
    bytes.extend(std::iter::repeat_n(0u8, 6 << 20)); // a disk is mostly empty
    site.image("os", &bytes);
    site.node("cap1", "52:54:00:00:09:01");
    site.kiln(&["node", "deploy", "cap1", "--image", "os"]);
    let (node, agent_token) = site.agent_credentials("cap1", "52:54:00:00:09:01");
    let disk = site.directory.path().join("cap1.disk");
    let (done, log) = agent_output(start_agent(&site.server.url, &node, &agent_token, &disk));
    assert!(done, "{log}");
    site.wait_for("cap1", "active", Duration::from_secs(20), |s| s["provision_state"] == "active");
    // The node's system changed its disk since the deploy.
    let mut changed = std::fs::read(&disk).unwrap();
    changed[3 << 20..(3 << 20) + 11].copy_from_slice(b"hello, kiln");
    std::fs::write(&disk, &changed).unwrap();

    site.kiln(&["image", "create", "golden"]);
    site.kiln(&["node", "capture", "cap1", "--image", "golden"]);
    let (node, agent_token) = site.agent_credentials("cap1", "52:54:00:00:09:01");
    let (done, log) = agent_output(start_agent(&site.server.url, &node, &agent_token, &disk));
    assert!(done, "{log}");
    assert!(log.contains("the disk is now version 1"), "{log}");
    let status = site.wait_for("cap1", "active", Duration::from_secs(20), |s| s["provision_state"] == "active");
    assert!(status["last_error"].is_null(), "{status}");
    let versions: serde_json::Value = serde_json::from_str(&site.kiln(&["image", "versions", "golden", "-F", "json"])).unwrap();
    let artifact = &versions[0]["artifacts"][0];
    assert_eq!((artifact["kind"].as_str(), artifact["compression"].as_str()), (Some("disk"), Some("zstd")), "{versions}");
    assert!(artifact["size"].as_u64().unwrap() < 3 << 20, "zero blocks cost nothing: {artifact}");
    assert!(versions[0]["note"].as_str().unwrap().contains("cap1"));
    let downloaded = site.directory.path().join("golden.zst");
    site.kiln(&["image", "download", "golden:1", "-o", &downloaded.display().to_string()]);
    let unpacked = Command::new("zstd").args(["-d", "-c", "-q"]).arg(&downloaded).output().unwrap();
    assert!(unpacked.status.success());
    assert!(unpacked.stdout == changed, "the new version's bytes are the disk's");

    // Someone else's image: refused up front, and a node must be deployed to be captured.
    let refused = site.kiln_fails(&["node", "capture", "cap1", "--image", "no-such-image"]);
    assert!(refused.contains("not found"), "{refused}");
    site.node("cap2", "52:54:00:00:09:02");
    assert!(site.kiln_fails(&["node", "capture", "cap2", "--image", "golden"]).contains("cannot capture node 'cap2' in state available"));
}

/// `kiln serve` asked to stop (SIGTERM) drains what is in flight before it exits: a power
/// step whose BMC is slow finishes and records its outcome (not "interrupted", as a killed
/// server's would be), and a download from the boot listener completes, while new
/// connections are refused.
#[test]
fn sigterm_lets_a_power_step_and_a_boot_download_in_flight_finish() {
    let mut site = Site::start();
    site.image("os", &noise(1 << 20, 8));
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", hung.local_addr().unwrap());
    site.node("drain1", "52:54:00:00:08:01");
    let bmc = serde_json::json!({"bmc": {"driver": "redfish", "address": address, "username": "u", "password": "p"}});
    site.kiln(&["node", "update", "drain1", "-f", "json", "-d", &bmc.to_string()]);
    let file_size = 24 << 20;
    let files_dir = site.data.join("boot-files");
    std::fs::create_dir_all(&files_dir).unwrap();
    std::fs::write(files_dir.join("big"), noise(file_size, 9)).unwrap();

    site.kiln(&["node", "deploy", "drain1", "--image", "os"]);
    site.wait_for("drain1", "the power step", Duration::from_secs(10), |s| s["step"] == "powering");
    let boot = site.boot_url();
    let boot_address = boot.trim_start_matches("http://").to_owned();
    let mut download = TcpStream::connect(&boot_address).unwrap();
    write!(download, "GET /boot/files/big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut received = vec![0u8; 1 << 20];
    download.read_exact(&mut received).unwrap();

    let pid = i32::try_from(site.server.child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(TcpStream::connect(&boot_address).is_err(), "the draining boot listener refuses new connections");
    // The rest of the download, at about 8 MiB/s: it outlasts the moment of the signal.
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        let read = download.read(&mut chunk).unwrap();
        if read == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..read]);
        std::thread::sleep(Duration::from_millis(30));
    }
    let head_end = received.windows(4).position(|window| window == b"\r\n\r\n").expect("a response head") + 4;
    let body = &received[head_end..];
    assert!(received.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&received[..head_end]));
    assert_eq!(body.len(), file_size, "the whole file arrived after the signal");

    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(status) = site.server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kiln serve did not exit after SIGTERM:\n{}", tail(&site.server.log()));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit}\n{}", tail(&site.server.log()));
    let log = site.server.log();
    let config = site.directory.path().join("kiln.toml");
    site.server = ServerProcess::start(&site.data, &["--config", &config.display().to_string()]);
    let status = site.status("drain1");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert_eq!(status["provision_state"], "deploy-failed", "{status}\n{}", tail(&log));
    assert!(error.contains("answer") && !error.contains("interrupted"), "the step finished before the exit: {error}");
    assert!(
        log.contains("finishing the steps in flight") && log.contains("in_flight=1"),
        "the step was in flight at the signal:\n{}",
        tail(&log)
    );
    drop(hung);
}
