//! Debian's Chromium driven through `chromedriver` by the W3C WebDriver protocol (JSON over
//! HTTP on loopback), for the console's browser tests; and axe-core, from npm, run inside
//! the page.
//!
//! Chromium starts headless with a fresh profile and with its background networking off, so
//! that it speaks to nothing but the test's server. `scripts/install-deps` installs the
//! packages and axe-core (`~/.cache/kiln-tools/axe`); without them the browser tests are
//! skipped, unless `KILN_REQUIRE_BROWSER=1` (CI), which makes that a failure.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where `scripts/install-deps` puts axe-core.
fn axe_script() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/kiln-tools/axe/node_modules/axe-core/axe.min.js")
}

/// Whether the browser tests can run here; panics when CI requires them and they cannot.
pub(crate) fn browser_available() -> bool {
    let present = std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists() && axe_script().exists();
    if !present && std::env::var("KILN_REQUIRE_BROWSER").is_ok_and(|value| value == "1") {
        panic!("Chromium, chromedriver or axe-core is missing and KILN_REQUIRE_BROWSER=1: run scripts/install-deps");
    }
    if !present {
        eprintln!("skipped: Chromium, chromedriver or axe-core is not installed (scripts/install-deps)");
    }
    present
}

/// One headless Chromium, and its driver; both end when this is dropped.
pub(crate) struct Chrome {
    driver: Child,
    address: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Chrome {
    pub(crate) fn start() -> Chrome {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let profile = tempfile::tempdir().unwrap();
        // Chromium's own scratch directories go into the profile's, removed with it.
        let driver = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()])
            .env("TMPDIR", profile.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut chrome = Chrome { driver, address: format!("127.0.0.1:{port}"), session: String::new(), _profile: profile };
        let started = Instant::now();
        while chrome.raw("GET", "/status", None).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let arguments = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|argument| argument.to_string())
        .chain([format!("--user-data-dir={}", chrome._profile.path().display())])
        .collect::<Vec<_>>();
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": arguments},
        }}});
        let created = chrome.call("POST", "/session", Some(capabilities));
        chrome.session = created["sessionId"].as_str().expect("a WebDriver session").to_owned();
        chrome
    }

    fn raw(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> std::io::Result<serde_json::Value> {
        let mut stream = TcpStream::connect(&self.address)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let body = body.map(serde_json::Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.address,
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        // chromedriver keeps the connection open whatever the request asks: read the head,
        // then exactly the body its length gives (or its chunks).
        let mut reader = std::io::BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut reader, &mut line)? == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let head = head.to_ascii_lowercase();
        let length =
            head.lines().find_map(|line| line.strip_prefix("content-length:")).and_then(|length| length.trim().parse::<usize>().ok());
        let body = match length {
            Some(length) => {
                let mut body = vec![0; length];
                reader.read_exact(&mut body)?;
                String::from_utf8_lossy(&body).into_owned()
            }
            None => {
                let mut body = String::new();
                reader.read_to_string(&mut body)?;
                if head.contains("transfer-encoding: chunked") { unchunk(&body) } else { body }
            }
        };
        serde_json::from_str(&body).map_err(std::io::Error::other)
    }

    /// A WebDriver command; its `value`, or a panic naming the command and the error.
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let answer = self.raw(method, path, body.as_ref()).unwrap_or_else(|error| panic!("WebDriver {method} {path}: {error}"));
        let value = answer["value"].clone();
        if let Some(error) = value.get("error").and_then(|error| error.as_str()) {
            panic!("WebDriver {method} {path}: {error}: {}", value["message"]);
        }
        value
    }

    fn session_call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub(crate) fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(serde_json::json!({"url": url})));
    }

    pub(crate) fn url(&self) -> String {
        self.session_call("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// The element `css` selects, waiting up to 20 s for it to appear.
    pub(crate) fn find(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            let found = self.raw(
                "POST",
                &format!("/session/{}/element", self.session),
                Some(&serde_json::json!({"using": "css selector", "value": css})),
            );
            if let Ok(found) = found
                && let Some(id) = found["value"].as_object().and_then(|value| value.values().next()).and_then(|id| id.as_str())
            {
                return id.to_owned();
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no element '{css}' on {}", self.url());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.session_call("POST", &format!("/element/{element}/value"), Some(serde_json::json!({"text": text})));
    }

    pub(crate) fn click(&self, css: &str) {
        let element = self.find(css);
        self.session_call("POST", &format!("/element/{element}/click"), Some(serde_json::json!({})));
    }

    pub(crate) fn text(&self, css: &str) -> String {
        let element = self.find(css);
        self.session_call("GET", &format!("/element/{element}/text"), None).as_str().unwrap_or_default().to_owned()
    }

    pub(crate) fn source(&self) -> String {
        self.session_call("GET", "/source", None).as_str().unwrap_or_default().to_owned()
    }

    /// Presses keys on whatever has the focus (W3C key actions), such as Tab or Enter.
    pub(crate) fn press(&self, keys: &str) {
        let actions: Vec<serde_json::Value> = keys
            .chars()
            .flat_map(|key| [serde_json::json!({"type": "keyDown", "value": key}), serde_json::json!({"type": "keyUp", "value": key})])
            .collect();
        self.session_call(
            "POST",
            "/actions",
            Some(serde_json::json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// Runs `script` (a function body) in the page, with `arguments`.
    pub(crate) fn execute(&self, script: &str, arguments: serde_json::Value) -> serde_json::Value {
        self.session_call("POST", "/execute/sync", Some(serde_json::json!({"script": script, "args": arguments})))
    }

    /// Saves what the window shows as a PNG at `path`.
    pub(crate) fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let encoded = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap_or_default()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Where screenshots of the console's pages go, when asked for
    /// (`KILN_SCREENSHOTS=docs/screenshots`, for the README).
    pub(crate) fn screenshot_as(&self, name: &str) {
        if let Ok(directory) = std::env::var("KILN_SCREENSHOTS") {
            let directory = super::workspace_root().join(directory);
            std::fs::create_dir_all(&directory).unwrap();
            self.screenshot(&directory.join(format!("{name}.png")));
        }
    }

    /// Runs `script` (a function body whose last argument is the callback it calls with its
    /// answer) in the page.
    pub(crate) fn execute_async(&self, script: &str) -> serde_json::Value {
        self.session_call("POST", "/execute/async", Some(serde_json::json!({"script": script, "args": []})))
    }

    /// Runs axe-core in the page; the violations of serious or critical impact, as
    /// `rule: what (how many)` lines.
    pub(crate) fn serious_accessibility_violations(&self) -> Vec<String> {
        let axe = std::fs::read_to_string(axe_script()).unwrap();
        self.execute(&axe, serde_json::json!([]));
        let answer = self.session_call(
            "POST",
            "/execute/async",
            Some(serde_json::json!({"script": "const done = arguments[arguments.length - 1]; \
                axe.run(document).then(result => done(result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length})))) \
                .catch(error => done([{id: 'axe-failed', impact: 'critical', help: String(error), nodes: 0}]));", "args": []})),
        );
        answer
            .as_array()
            .unwrap()
            .iter()
            .filter(|violation| matches!(violation["impact"].as_str(), Some("serious" | "critical")))
            .map(|violation| format!("{}: {} ({})", violation["id"], violation["help"], violation["nodes"]))
            .collect()
    }

    /// Waits up to `within` for `condition` (a script returning a boolean) to hold.
    pub(crate) fn wait_until(&self, condition: &str, within: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.execute(condition, serde_json::json!([])).as_bool() == Some(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn unchunk(body: &str) -> String {
    let mut rest = body;
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
