//! What the process tests share: a real `kiln serve` process and the `kiln` CLI against it.

#![allow(dead_code)] // each test file uses its own part

pub(crate) mod console;
pub(crate) mod webdriver;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub(crate) const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A `kiln serve` process; killed when dropped, so a failing test leaves nothing running.
pub(crate) struct ServerProcess {
    pub child: Child,
    pub url: String,
    /// The boot listener's URL, when the configuration gives it one.
    pub boot_url: Option<String>,
    pub log: PathBuf,
}

impl ServerProcess {
    pub(crate) fn start(data_dir: &Path, extra_args: &[&str]) -> ServerProcess {
        Self::start_with_env(data_dir, extra_args, &[])
    }

    pub(crate) fn start_with_env(data_dir: &Path, extra_args: &[&str], environment: &[(&str, &str)]) -> ServerProcess {
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut child = Command::new(KILN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .env("KILN_LOG", "debug")
            .env_remove("KILN_DATABASE_URL")
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        // Copy stderr to the log file, and hand over the address line when it appears.
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut log_file = log_file;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("kiln: boot listener on ") {
                    let _ = sender.send(("boot", url.to_owned()));
                }
                if let Some(url) = line.strip_prefix("kiln: listening on ") {
                    let _ = sender.send(("api", url.to_owned()));
                }
                let _ = writeln!(log_file, "{line}");
            }
        });
        let mut boot_url = None;
        let url = loop {
            match receiver.recv_timeout(Duration::from_secs(60)) {
                Ok(("api", url)) => break url,
                Ok((_, url)) => boot_url = Some(url),
                Err(_) => {
                    let _ = child.kill();
                    panic!("kiln serve did not start: {}", std::fs::read_to_string(&log).unwrap_or_default())
                }
            }
        };
        ServerProcess { child, url, boot_url, log }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin-token")).unwrap().trim().to_owned()
}

pub(crate) fn kiln(server: &ServerProcess, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
    kiln_with_env_and_stdin(server, token, args, &[], stdin)
}

/// `kiln` with extra environment variables (secrets kept off the command line).
pub(crate) fn kiln_with_env(server: &ServerProcess, token: &str, args: &[&str], environment: &[(&str, &str)]) -> Output {
    kiln_with_env_and_stdin(server, token, args, environment, None)
}

fn kiln_with_env_and_stdin(
    server: &ServerProcess,
    token: &str,
    args: &[&str],
    environment: &[(&str, &str)],
    stdin: Option<&str>,
) -> Output {
    let mut child = Command::new(KILN)
        .args(args)
        .envs(environment.iter().copied())
        .env("KILN_URL", &server.url)
        .env("KILN_TOKEN", token)
        .env("HOME", "/nonexistent")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .current_dir(workspace_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

pub(crate) fn ok(output: Output) -> String {
    assert!(output.status.success(), "kiln failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The `kiln-agent` binary: the release build if there is one (much faster under TCG and
/// at hashing), else the debug build, from the target directory `kiln` was built in.
pub(crate) fn agent_binary() -> PathBuf {
    let target = Path::new(KILN).parent().and_then(Path::parent).expect("kiln lives in <target>/<profile>/");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("kiln-agent"))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no kiln-agent under {}: run `cargo build --release -p kiln-agent`", target.display()))
}

/// The `bin` directory of the virtualenv holding python-ironicclient and openstacksdk, as
/// `scripts/install-deps` makes it (`~/.cache/kiln-tools/ironic-venv`); `None` (the test
/// skips) without it, unless `KILN_REQUIRE_IRONIC=1` (CI), which makes that a failure.
pub(crate) fn ironic_clients() -> Option<PathBuf> {
    let tools = std::env::var_os("KILN_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/kiln-tools")))?;
    let bin = tools.join("ironic-venv/bin");
    if bin.join("baremetal").exists() {
        return Some(bin);
    }
    assert_ne!(
        std::env::var("KILN_REQUIRE_IRONIC").as_deref(),
        Ok("1"),
        "KILN_REQUIRE_IRONIC=1 but python-ironicclient is not installed (scripts/install-deps)"
    );
    eprintln!("skipping: python-ironicclient is not installed (scripts/install-deps)");
    None
}

/// The SHA-256 of a file, as hex.
pub(crate) fn sha256_of(path: &Path) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}
