//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution
//! server) on a loopback port with its storage in a temporary directory. Without it the
//! tests that need it skip, unless `KILN_REQUIRE_LAB=1`, which CI sets.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry; stopped and its storage removed when dropped.
pub struct TestRegistry {
    /// `127.0.0.1:PORT`, as an image reference's registry part.
    pub address: String,
    child: Child,
    _directory: tempfile::TempDir,
}

impl TestRegistry {
    pub fn start() -> Option<TestRegistry> {
        let binary = std::path::Path::new("/usr/bin/docker-registry");
        if !binary.exists() {
            assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "docker-registry is not installed (scripts/install-deps)");
            eprintln!("skipping: docker-registry is not installed (scripts/install-deps)");
            return None;
        }
        let directory = tempfile::tempdir().expect("a temporary directory");
        let port = crate::redfish::free_port();
        let address = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
            directory.path().join("storage").display()
        );
        let config_path = directory.path().join("config.yml");
        std::fs::write(&config_path, config).expect("writing the registry's config");
        let log = std::fs::File::create(directory.path().join("registry.log")).expect("creating the registry's log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let registry = TestRegistry { address, child, _directory: directory };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on {}", registry.address);
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
