//! A real Redfish service for tests: sushy-tools' emulator (`sushy-emulator --fake`, one
//! fake system whose power changes take effect after a few seconds), on a loopback port,
//! optionally behind HTTP basic authentication. Killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/install-deps` puts the emulator; `KILN_SUSHY_EMULATOR` overrides.
fn emulator() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("KILN_SUSHY_EMULATOR") {
        return Some(PathBuf::from(path));
    }
    let path = PathBuf::from(std::env::var("HOME").ok()?).join(".cache/kiln-tools/sushy-venv/bin/sushy-emulator");
    path.exists().then_some(path)
}

pub struct TestRedfish {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The (first) fake system's UUID and NIC MAC, distinct per emulator.
    pub uuid: String,
    pub mac: String,
    /// Every fake system's UUID and MAC.
    pub systems: Vec<(String, String)>,
    pub log: PathBuf,
    _directory: tempfile::TempDir,
}

impl Drop for TestRedfish {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).map(|address| address.port()).unwrap()
}

impl TestRedfish {
    /// Starts the emulator, with `credentials` required when given. `None` when it is not
    /// installed, unless `KILN_REQUIRE_BMC=1`, which makes that a failure.
    pub fn start(credentials: Option<(&str, &str)>) -> Option<TestRedfish> {
        Self::start_on(free_port(), credentials)
    }

    /// The same on a given port (for scans over a port range).
    pub fn start_on(port: u16, credentials: Option<(&str, &str)>) -> Option<TestRedfish> {
        Self::start_with(port, credentials, 1)
    }

    /// One emulator with `count` fake systems (`/redfish/v1/Systems/<uuid>` each).
    pub fn start_with(port: u16, credentials: Option<(&str, &str)>, count: usize) -> Option<TestRedfish> {
        Self::launch(port, credentials, count, "full")
    }

    /// An emulator of a plainer BMC: sushy's `minimum` feature set, with power and the boot
    /// override but no managers and no virtual media.
    pub fn start_minimal(credentials: Option<(&str, &str)>) -> Option<TestRedfish> {
        Self::launch(free_port(), credentials, 1, "minimum")
    }

    fn launch(port: u16, credentials: Option<(&str, &str)>, count: usize, feature_set: &str) -> Option<TestRedfish> {
        let Some(emulator) = emulator() else {
            assert_ne!(
                std::env::var("KILN_REQUIRE_BMC").as_deref(),
                Ok("1"),
                "KILN_REQUIRE_BMC=1 but sushy-emulator is not installed (scripts/install-deps)"
            );
            eprintln!("skipping: sushy-emulator is not installed (scripts/install-deps)");
            return None;
        };
        let directory = tempfile::tempdir().unwrap();
        let mut command = Command::new(&emulator);
        command.args(["--fake", "-i", "127.0.0.1", "-p", &port.to_string()]);
        // One fake system of its own per emulator (UUID and MAC from the port), its state
        // kept in this emulator's directory, so emulators and runs do not share it.
        let systems: Vec<(String, String)> = (0..count)
            .map(|index| {
                let uuid = format!("00000000-0000-4000-8{index:03x}-0000000{port:05}");
                let mac = format!("52:{:02x}:{:02x}:f0:{:02x}:{:02x}", index >> 8, index & 0xff, port >> 8, port & 0xff);
                (uuid, mac)
            })
            .collect();
        let entries: Vec<String> = systems
            .iter()
            .enumerate()
            .map(|(index, (uuid, mac))| {
                format!(
                    "{{'uuid': '{uuid}', 'name': 'fake-{port}-{index}', 'power_state': 'Off', 'external_notifier': False, \
                     'nics': [{{'mac': '{mac}', 'ip': '10.99.0.1'}}]}}"
                )
            })
            .collect();
        let mut config = format!(
            "SUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\nSUSHY_EMULATOR_FEATURE_SET = '{feature_set}'\n",
            directory.path().join("state").display(),
            entries.join(", ")
        );
        let (uuid, mac) = systems[0].clone();
        if let Some((username, password)) = credentials {
            // sushy accepts bcrypt entries only; its virtualenv has bcrypt.
            let python = emulator.with_file_name("python3");
            let output = Command::new(python)
                .args(["-c", "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(rounds=4)).decode())", password])
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let htpasswd = directory.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{username}:{}", String::from_utf8_lossy(&output.stdout).trim())).unwrap();
            config.push_str(&format!("SUSHY_EMULATOR_AUTH_FILE = '{}'\n", htpasswd.display()));
        }
        let config_file = directory.path().join("emulator.conf");
        std::fs::write(&config_file, config).unwrap();
        command.arg("--config").arg(&config_file);
        // Virtual media: the emulator downloads inserted images into its temporary directory,
        // which goes with this one.
        command.env("TMPDIR", directory.path());
        let log = directory.path().join("emulator.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = command.stdin(Stdio::null()).stdout(log_file.try_clone().unwrap()).stderr(log_file).spawn().unwrap();
        let redfish = TestRedfish { child, url: format!("http://127.0.0.1:{port}"), uuid, mac, systems, log, _directory: directory };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sushy-emulator did not start: {}", redfish.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(redfish)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
