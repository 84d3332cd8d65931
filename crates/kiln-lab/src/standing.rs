//! A lab that outlives the command that made it (`kiln lab up|down|status`): its processes
//! run detached, and what `down` must remove is recorded in `lab.json` in its directory.
//!
//! `down` ends only processes the lab started: a recorded process id is signalled only while
//! its command line still names the lab's directory (ids are reused), and every process
//! left inside the lab's namespace is the lab's own, since nothing else runs there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{Lab, LabDirectory, run};

/// The file in a lab directory that marks it as one (so `up` may clear it and `down` may
/// remove it) and records what runs.
pub const RECORD_FILE: &str = "lab.json";
const MARKER_FILE: &str = ".kiln-lab";

/// What a standing lab is made of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabRecord {
    pub namespace: String,
    pub directory: PathBuf,
    /// The API inside the namespace.
    pub api_url: String,
    pub server_pid: u32,
    pub machines: Vec<MachineRecord>,
    pub started_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineRecord {
    pub node: String,
    pub mac: String,
    pub pid: u32,
    pub console: PathBuf,
    pub disk: Option<PathBuf>,
}

impl Lab {
    /// A lab whose processes outlive this one, named `namespace`, keeping its files in
    /// `directory`. Refuses when that namespace exists, or when `directory` is neither
    /// absent, empty nor a lab directory that is down (its files are then replaced).
    pub fn create_standing(namespace: &str, directory: &Path) -> anyhow::Result<Lab> {
        if Path::new("/run/netns").join(namespace).exists() {
            bail!("the lab network {namespace} exists already: `kiln lab down` removes it");
        }
        if directory.join(RECORD_FILE).exists() {
            bail!("{} holds a lab that is up: `kiln lab down` first", directory.display());
        }
        prepare_directory(directory)?;
        let directory = std::path::absolute(directory).with_context(|| format!("resolving {}", directory.display()))?;
        Lab::create_with(namespace.to_owned(), LabDirectory::Kept(directory), true)
    }

    /// Leaves the lab running and returns what `down` needs to remove it, also written to
    /// the lab directory. `nodes` names the machines, in the order they were added.
    pub fn keep(mut self, nodes: &[&str]) -> anyhow::Result<LabRecord> {
        let server_pid = self.server.as_ref().context("the lab has no server")?.id();
        let machines = self
            .machines
            .iter()
            .zip(nodes)
            .map(|(machine, node)| MachineRecord {
                node: (*node).to_owned(),
                mac: machine.mac.clone(),
                pid: machine.child.id(),
                console: machine.console.clone(),
                disk: machine.disk.clone(),
            })
            .collect();
        let record = LabRecord {
            namespace: self.namespace.clone(),
            directory: self.directory.path().to_owned(),
            api_url: self.server_url(),
            server_pid,
            machines,
            started_at: jiff::Timestamp::now().to_string(),
        };
        let text = serde_json::to_string_pretty(&record)?;
        std::fs::write(self.directory.path().join(RECORD_FILE), text).context("writing the lab record")?;
        self.kept = true;
        for machine in &mut self.machines {
            machine.kept = true;
        }
        Ok(record)
    }
}

fn prepare_directory(directory: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(directory) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading {}", directory.display())),
        Ok(mut entries) => {
            let empty = entries.next().is_none();
            if !empty && !directory.join(MARKER_FILE).exists() {
                bail!("{} exists and is not a Kiln lab directory: choose another with --dir", directory.display());
            }
            // What a lab that failed to come up left for reading; replaced now.
            std::fs::remove_dir_all(directory).with_context(|| format!("clearing {}", directory.display()))?;
        }
    }
    std::fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    std::fs::write(directory.join(MARKER_FILE), "a Kiln lab directory: `kiln lab down` removes it\n")?;
    Ok(())
}

/// Reads the record of the lab in `directory`, if one is up there.
pub fn read_record(directory: &Path) -> anyhow::Result<Option<LabRecord>> {
    match std::fs::read_to_string(directory.join(RECORD_FILE)) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("reading {}", directory.join(RECORD_FILE).display()))?)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", directory.join(RECORD_FILE).display())),
    }
}

/// Whether process `pid` runs and its command line mentions `needle`.
pub fn process_mentions(pid: u32, needle: &Path) -> bool {
    let Ok(command_line) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let needle = needle.as_os_str().as_encoded_bytes();
    command_line.windows(needle.len()).any(|window| window == needle)
}

/// The processes inside `namespace`.
fn processes_in(namespace: &str) -> Vec<u32> {
    let Ok(output) = Command::new("ip").args(["netns", "pids", namespace]).output() else { return Vec::new() };
    String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|pid| pid.parse().ok()).collect()
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions; the pid was checked to be the lab's.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: it only waits for a parent (gone) to be reaped by init.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or_default().trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// What `down` removed.
#[derive(Debug, Default, Serialize)]
pub struct DownReport {
    pub processes_ended: Vec<u32>,
    pub namespace_removed: Option<String>,
    pub directory_removed: Option<PathBuf>,
}

/// Ends the lab's processes (SIGTERM, then SIGKILL after a grace period), deletes its
/// namespace (with the bridge and taps in it) and removes its directory. `namespace` is used
/// when the directory holds no record (a lab that failed half-way).
pub fn down(directory: &Path, namespace: &str) -> anyhow::Result<DownReport> {
    let record = read_record(directory)?;
    let namespace = record.as_ref().map(|r| r.namespace.clone()).unwrap_or_else(|| namespace.to_owned());
    let mut targets: Vec<u32> = Vec::new();
    if let Some(record) = &record {
        let recorded = std::iter::once(record.server_pid).chain(record.machines.iter().map(|m| m.pid));
        targets.extend(recorded.filter(|&pid| process_mentions(pid, &record.directory)));
    }
    let namespace_exists = Path::new("/run/netns").join(&namespace).exists();
    if namespace_exists {
        for pid in processes_in(&namespace) {
            if !targets.contains(&pid) {
                targets.push(pid);
            }
        }
    }
    let mut report = DownReport::default();
    for &pid in &targets {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while targets.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &pid in &targets {
        if alive(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
    report.processes_ended = targets;
    if namespace_exists {
        run(Command::new("ip").args(["netns", "delete", &namespace]))?;
        report.namespace_removed = Some(namespace);
    }
    if directory.join(MARKER_FILE).exists() {
        std::fs::remove_dir_all(directory).with_context(|| format!("removing {}", directory.display()))?;
        report.directory_removed = Some(directory.to_owned());
    } else if directory.exists() && std::fs::read_dir(directory)?.next().is_some() {
        bail!("{} is not a Kiln lab directory: left as it is", directory.display());
    }
    Ok(report)
}
