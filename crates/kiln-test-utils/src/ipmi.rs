//! A real IPMI BMC for tests: OpenIPMI's `ipmi_sim` (Debian's `openipmi`) serving IPMI 2.0
//! RMCP+ on a loopback UDP port, one admin user, with a chassis-control script that keeps
//! the power and boot device in files the test can read, or one that powers a lab machine
//! through its QMP socket ([`lab_machine_chassis`]), inside the lab's network namespace.
//! Killed when dropped.

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

/// A chassis-control script that is the BMC of a lab machine: power and resets go to QEMU
/// through the machine's QMP socket (as the lab's own BMC driver sends them), the power
/// state is read from it, and the boot device is kept in a file beside the script (a lab
/// machine always boots from the network, and Kiln's boot script hands over to its disk).
pub fn lab_machine_chassis(qmp: &Path) -> String {
    format!(
        r#"#!/usr/bin/env python3
import json, os, socket, sys
QMP = {qmp:?}
STATE = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "state")
os.makedirs(STATE, exist_ok=True)

def qmp(*commands):
    connection = socket.socket(socket.AF_UNIX)
    connection.settimeout(10)
    connection.connect(QMP)
    stream = connection.makefile("rw")
    stream.readline()
    def run(command):
        stream.write(json.dumps({{"execute": command}}) + "\n")
        stream.flush()
        while True:
            reply = json.loads(stream.readline())
            if "return" in reply or "error" in reply:
                return reply.get("return", {{}})
    run("qmp_capabilities")
    answers = [run(command) for command in commands]
    connection.close()
    return answers

def status():
    return qmp("query-status")[0].get("status", "")

operation, parameters = sys.argv[2], sys.argv[3:]
if operation == "get":
    for parameter in parameters:
        if parameter == "power":
            print("power:%d" % (1 if status() == "running" else 0))
        elif parameter == "boot":
            path = os.path.join(STATE, "boot")
            print("boot:" + (open(path).read().strip() if os.path.exists(path) else "default"))
        else:
            print("Invalid parameter: " + parameter)
            sys.exit(1)
elif operation == "set":
    for name, value in zip(parameters[::2], parameters[1::2]):
        if name == "power" and value == "1":
            qmp("system_reset", "cont") if status() == "shutdown" else qmp("cont")
        elif name == "power":
            qmp("stop", "system_reset")
        elif name == "reset":
            qmp("system_reset")
        elif name == "boot":
            open(os.path.join(STATE, "boot"), "w").write(value)
        elif name != "identify":
            print("Invalid parameter: " + name)
            sys.exit(1)
else:
    sys.exit(1)
"#
    )
}

/// Where a simulator runs and what its chassis control does.
#[derive(Debug, Clone, Default)]
pub struct IpmiOptions {
    /// A network namespace to run it in (it listens on that namespace's loopback).
    pub namespace: Option<String>,
    /// The chassis-control script; the default keeps power and boot device in files.
    pub chassis_script: Option<String>,
}

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
        TestIpmi::start_with(username, password, IpmiOptions::default())
    }

    /// Starts `ipmi_sim` as [`TestIpmi::start`] does, where and with what `options` say.
    pub fn start_with(username: &str, password: &str, options: IpmiOptions) -> Option<TestIpmi> {
        let in_namespace = |program: &str| {
            let mut command = match &options.namespace {
                Some(namespace) => {
                    let mut command = Command::new("ip");
                    command.args(["netns", "exec", namespace, program]);
                    command
                }
                None => Command::new(program),
            };
            command.stdin(Stdio::null());
            command
        };
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
        // A port free here; in a fresh namespace every port is free.
        let port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|socket| socket.local_addr()).unwrap().port();
        let script = directory.path().join("chassis");
        std::fs::write(&script, options.chassis_script.as_deref().unwrap_or(CHASSIS_SCRIPT)).unwrap();
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
        let child = in_namespace("ipmi_sim")
            .args(["-c", "lan.conf", "-f", "sim.emu", "-n", "-s"])
            .arg(directory.path().join("persist"))
            .current_dir(directory.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let simulator = TestIpmi { child, address: format!("127.0.0.1:{port}"), directory };
        // Ready when ipmitool gets an answer.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = in_namespace("ipmitool")
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
