//! A real IPMI BMC for tests: OpenIPMI's `ipmi_sim` (Debian's `openipmi`) serving IPMI 2.0
//! RMCP+ on a loopback UDP port, one admin user, with a chassis-control script that keeps
//! the power and boot device in files the test can read. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Keeps power (0/1), the boot device and a line per reset in files beside it, as
/// `ipmi_sim`'s chassis_control protocol asks: `SCRIPT DEVICE get PARM…` prints
/// `PARM:VALUE` lines; `SCRIPT DEVICE set PARM VALUE…` prints nothing on success.
const CHASSIS_SCRIPT: &str = r#"#!/bin/sh
state=$(dirname "$0")/state
mkdir -p "$state"
shift
operation=$1
shift
case $operation in
  get)
    for parameter in "$@"; do
      case $parameter in
        power) echo "power:$(cat "$state/power" 2>/dev/null || echo 0)" ;;
        boot) echo "boot:$(cat "$state/boot" 2>/dev/null || echo default)" ;;
        *) echo "Invalid parameter: $parameter"; exit 1 ;;
      esac
    done ;;
  set)
    while [ $# -ge 2 ]; do
      case $1 in
        power) echo "$2" > "$state/power" ;;
        reset) echo reset >> "$state/resets" ;;
        boot) echo "$2" > "$state/boot" ;;
        identify) shift ;;
        *) echo "Invalid parameter: $1"; exit 1 ;;
      esac
      shift 2
    done ;;
  *) exit 1 ;;
esac
"#;

pub struct TestIpmi {
    child: Child,
    /// `127.0.0.1:PORT`
    pub address: String,
    directory: tempfile::TempDir,
}

impl Drop for TestIpmi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|directory| directory.join(program).exists()))
}

impl TestIpmi {
    /// Starts `ipmi_sim` with user `username`/`password` (admin). `None` when it or ipmitool
    /// is missing, unless `KILN_REQUIRE_BMC=1`.
    pub fn start(username: &str, password: &str) -> Option<TestIpmi> {
        if !installed("ipmi_sim") || !installed("ipmitool") {
            assert_ne!(
                std::env::var("KILN_REQUIRE_BMC").as_deref(),
                Ok("1"),
                "KILN_REQUIRE_BMC=1 but ipmi_sim or ipmitool is missing (apt-get install openipmi ipmitool)"
            );
            eprintln!("skipping: ipmi_sim or ipmitool is missing");
            return None;
        }
        let directory = tempfile::tempdir().unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|socket| socket.local_addr()).unwrap().port();
        let script = directory.path().join("chassis");
        std::fs::write(&script, CHASSIS_SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = format!(
            "name \"kilntest\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n  endlan\n  chassis_control \"{} 0x20\"\n\
             \x20 user 2 true \"{username}\" \"{password}\" admin 10 none md2 md5 straight\n",
            script.display()
        );
        std::fs::write(directory.path().join("lan.conf"), config).unwrap();
        std::fs::write(
            directory.path().join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )
        .unwrap();
        let log = std::fs::File::create(directory.path().join("ipmi_sim.log")).unwrap();
        let child = Command::new("ipmi_sim")
            .args(["-c", "lan.conf", "-f", "sim.emu", "-n", "-s"])
            .arg(directory.path().join("persist"))
            .current_dir(directory.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let simulator = TestIpmi { child, address: format!("127.0.0.1:{port}"), directory };
        // Ready when ipmitool gets an answer.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = Command::new("ipmitool")
                .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &port.to_string(), "-U", username, "-E", "-R", "1", "-N", "1"])
                .args(["chassis", "power", "status"])
                .env("IPMI_PASSWORD", password)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "ipmi_sim did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(simulator)
    }

    fn state(&self) -> PathBuf {
        self.directory.path().join("state")
    }

    /// What the chassis-control script last recorded for `parameter` (`power`, `boot`).
    pub fn recorded(&self, parameter: &str) -> Option<String> {
        std::fs::read_to_string(self.state().join(parameter)).ok().map(|text| text.trim().to_owned())
    }

    pub fn resets(&self) -> usize {
        std::fs::read_to_string(self.state().join("resets")).map(|text| text.lines().count()).unwrap_or(0)
    }

    pub fn directory(&self) -> &Path {
        self.directory.path()
    }
}
