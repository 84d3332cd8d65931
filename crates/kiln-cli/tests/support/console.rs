//! The web console's test fixtures: a site with two projects, a member of each with a
//! password and a node in each, and a browser over plain HTTP (a cookie jar, GET and form
//! POST, redirects not followed) for the tests that look at answers rather than pixels.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use super::{ServerProcess, kiln, ok, token};

/// One answer: status, headers (names lowercased), body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The value of the hidden `csrf` field of the page's first form that has one.
    pub(crate) fn csrf(&self) -> String {
        let start = self.body.find(r#"name="csrf" value=""#).expect("a form with a CSRF token") + r#"name="csrf" value=""#.len();
        self.body[start..].split('"').next().unwrap().to_owned()
    }
}

/// A browser as far as the console cares: a cookie jar, GET and form POST, no redirects
/// followed (the tests look at them).
pub(crate) struct Browser {
    address: String,
    pub(crate) cookies: HashMap<String, String>,
}

impl Browser {
    pub(crate) fn new(server: &ServerProcess) -> Browser {
        Browser { address: server.url.trim_start_matches("http://").to_owned(), cookies: HashMap::new() }
    }

    pub(crate) fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.address);
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect();
            head.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        let body = body.unwrap_or_default();
        if method == "POST" {
            head.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len()));
        }
        stream.write_all(format!("{head}\r\n{body}").as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        for (_, cookie) in headers.iter().filter(|(name, _)| name == "set-cookie") {
            let (pair, attributes) = cookie.split_once(';').unwrap_or((cookie, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Answer { status, headers, body: body.to_owned() }
    }

    /// What a stream (server-sent events) at `path` sends within `within`.
    pub(crate) fn stream_for(&mut self, path: &str, within: std::time::Duration) -> String {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        let jar: Vec<String> = self.cookies.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n", self.address, jar.join("; "));
        stream.write_all(head.as_bytes()).unwrap();
        let deadline = std::time::Instant::now() + within;
        let mut received = Vec::new();
        let mut buffer = [0; 4096];
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            stream.set_read_timeout(Some(left.max(std::time::Duration::from_millis(1)))).unwrap();
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
        String::from_utf8_lossy(&received).into_owned()
    }

    pub(crate) fn get(&mut self, path: &str) -> Answer {
        self.request("GET", path, None)
    }

    pub(crate) fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let body: Vec<String> = form.iter().map(|(name, value)| format!("{name}={}", encode(value))).collect();
        self.request("POST", path, Some(&body.join("&")))
    }

    pub(crate) fn sign_in(&mut self, user: &str, password: &str) -> Answer {
        let page = self.get("/ui/sign-in?next=/ui/nodes");
        assert_eq!(page.status, 200);
        self.post("/ui/sign-in", &[("csrf", &page.csrf()), ("next", "/ui/nodes"), ("user", user), ("password", password)])
    }
}

pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A server with projects alpha and beta, a member of each with a password, and a node in
/// each (alpha's with a BMC password that must never be shown).
pub(crate) struct Site {
    pub(crate) server: ServerProcess,
    pub(crate) admin: String,
    _directory: tempfile::TempDir,
}

impl Site {
    pub(crate) fn start(config: &str) -> Site {
        let directory = tempfile::tempdir().unwrap();
        let data_dir = directory.path().join("data");
        let config_path = directory.path().join("kiln.toml");
        std::fs::write(&config_path, config).unwrap();
        let server = ServerProcess::start(&data_dir, &["--config", config_path.to_str().unwrap()]);
        let admin = token(&data_dir);
        let site = Site { server, admin, _directory: directory };
        for (project, user, node) in [("alpha", "alice", "alpha-node"), ("beta", "bob", "beta-node")] {
            site.kiln(&["project", "create", project]);
            site.kiln(&["user", "create", user]);
            site.kiln(&["project", "add-member", project, user]);
            let document = serde_json::json!({
                "name": node, "interfaces": [{"mac_addr": if project == "alpha" { "52:54:00:aa:00:01" } else { "52:54:00:bb:00:01" }}],
                "bmc": {"driver": "redfish", "address": "127.0.0.1:9", "username": "root", "password": "calvin-bmc-secret"},
            });
            site.kiln(&["node", "create", "-d", &document.to_string()]);
            site.kiln(&["node", "allocate", "--project", project, node]);
            ok(kiln(&site.server, &site.admin, &["user", "set-password", user], Some(&format!("{user}-long-password\n"))));
        }
        site
    }

    /// A directory of the test's own, removed with the site.
    pub(crate) fn scratch_directory(&self) -> &std::path::Path {
        self._directory.path()
    }

    pub(crate) fn kiln(&self, args: &[&str]) -> String {
        ok(kiln(&self.server, &self.admin, args, None))
    }
}
