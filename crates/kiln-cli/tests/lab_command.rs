//! `kiln lab up|status|exec|down` as a user runs them: the lab comes up with both machines
//! active (one deployed to disk, one live), outlives the command, and `down` leaves no
//! process, network or file behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use support::agent_binary;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn kiln_lab(args: &[&str], dir: &Path, name: &str) -> Output {
    Command::new(KILN).arg("lab").args(args).arg("--dir").arg(dir).args(["--name", name]).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Takes the lab down when the test ends, however it ends.
struct Down<'a> {
    dir: &'a Path,
    name: &'a str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = kiln_lab(&["down"], self.dir, self.name);
    }
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

#[test]
fn lab_up_deploys_two_machines_and_lab_down_leaves_nothing() {
    if let Err(reason) = kiln_lab::available() {
        assert_ne!(std::env::var("KILN_REQUIRE_LAB").as_deref(), Ok("1"), "KILN_REQUIRE_LAB=1 but the lab cannot run: {reason}");
        eprintln!("skipping: {reason}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir: PathBuf = work.path().join("lab");
    let name = format!("kiln-lab-t{}", std::process::id());
    let _down = Down { dir: &dir, name: &name };

    // A directory that is not a lab's is refused, and left alone.
    let foreign = work.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let agent = agent_binary();
    let refused = kiln_lab(&["up", "--agent", &agent.display().to_string()], &foreign, &name);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("is not a Kiln lab directory"), "{}", text(&refused));
    assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "mine");
    assert!(!Path::new("/run/netns").join(&name).exists());

    let started = Instant::now();
    let up = Command::new(KILN)
        .args(["lab", "up", "--agent"])
        .arg(&agent)
        .arg("--dir")
        .arg(&dir)
        .args(["--name", &name, "--timeout", "600"])
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(up.status.success(), "kiln lab up failed:\n{}", text(&up));
    eprintln!("kiln lab up: both machines active in {seconds:.0} s\n{}", text(&up));

    // The lab outlives the command: its processes run, its nodes are active.
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    let mut pids = vec![record["server_pid"].as_u64().unwrap()];
    pids.extend(record["machines"].as_array().unwrap().iter().map(|m| m["pid"].as_u64().unwrap()));
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&pid| alive(pid)), "{record}");
    let status = kiln_lab(&["status"], &dir, &name);
    assert!(status.status.success(), "{}", text(&status));
    let shown = text(&status);
    assert_eq!(shown.matches("running").count(), 3, "{shown}");
    assert!(shown.contains("lab-disk") && shown.contains("lab-live"), "{shown}");
    for node in ["lab-disk", "lab-live"] {
        let output = Command::new(KILN)
            .args(["lab", "exec", "--dir"])
            .arg(&dir)
            .args(["--name", &name, "--", "kiln", "node", "provision", node, "-F", "json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let provision: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(provision["provision_state"], "active", "{provision}");
    }
    // The deployed system and the live one run on after calling back.
    let disk_console = std::fs::read_to_string(dir.join("console-5254004b0001.log")).unwrap_or_default();
    assert!(disk_console.contains("kiln-lab: up and running"), "{disk_console}");
    let live_console = std::fs::read_to_string(dir.join("console-5254004b0002.log")).unwrap_or_default();
    assert!(live_console.contains("KILN-LIVE-RUNNING"), "{live_console}");

    // The server reads each machine's serial line: `kiln node console` shows what the console
    // file shows, and a line typed through it reaches the machine, which answers.
    let in_lab = |args: &[&str]| {
        Command::new(KILN).args(["lab", "exec", "--dir"]).arg(&dir).args(["--name", &name, "--", "kiln"]).args(args).output().unwrap()
    };
    // The server stores what it reads about once a second: it may be a moment behind the file.
    let mut shown = in_lab(&["node", "console", "lab-disk"]);
    for _ in 0..20 {
        if !shown.status.success() || String::from_utf8_lossy(&shown.stdout).contains("kiln-lab: up and running") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        shown = in_lab(&["node", "console", "lab-disk"]);
    }
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("kiln-lab: up and running"), "{}", text(&shown));
    let sent = in_lab(&["node", "console", "lab-disk", "--send", "hello-from-kiln\\r"]);
    assert!(sent.status.success(), "{}", text(&sent));
    let heard = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(500));
        String::from_utf8_lossy(&in_lab(&["node", "console", "lab-disk"]).stdout).contains("kiln-lab: heard hello-from-kiln")
    });
    assert!(
        heard,
        "the machine answered the typed line: {}",
        std::fs::read_to_string(dir.join("console-5254004b0001.log")).unwrap_or_default()
    );

    // A second `up` on the same lab is refused.
    let again = kiln_lab(&["up", "--agent", &agent.display().to_string()], &dir, &name);
    assert!(!again.status.success() && text(&again).contains("exists already"), "{}", text(&again));

    let down = kiln_lab(&["down"], &dir, &name);
    assert!(down.status.success(), "{}", text(&down));
    assert!(text(&down).contains("3 processes ended"), "{}", text(&down));
    assert!(!Path::new("/run/netns").join(&name).exists(), "the network is gone");
    assert!(!dir.exists(), "the directory is gone");
    assert!(pids.iter().all(|&pid| !alive(pid)), "no process is left");
    let nothing = kiln_lab(&["down"], &dir, &name);
    assert!(nothing.status.success() && text(&nothing).contains("nothing to remove"), "{}", text(&nothing));
}
