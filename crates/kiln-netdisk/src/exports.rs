//! Export processes: one `qemu-nbd` per clone in use, serving it on a Unix socket that only
//! Kiln's gateway connects to. Started on the first connection (so exports come back by
//! themselves after a restart), restarted when found dead, stopped before their clone is
//! replaced or removed, and killed by the kernel if Kiln dies (`PR_SET_PDEATHSIG`), so that
//! a restarted Kiln never finds a clone still locked by an orphan.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{CloneBackend, NetdiskError};

/// How long a starting export process may take to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

struct ExportProcess {
    child: tokio::process::Child,
    socket: PathBuf,
}

/// A node's export process, if one runs. Locked while it is started or stopped, so that one
/// node's slow start holds up that node's connections only, not everyone's.
type Slot = Arc<tokio::sync::Mutex<Option<ExportProcess>>>;

/// The running export processes, by node.
pub struct Exports {
    run_dir: PathBuf,
    clones: Arc<dyn CloneBackend>,
    processes: std::sync::Mutex<HashMap<String, Slot>>,
    /// Nodes whose clone is being replaced, snapshotted or removed: no export process starts
    /// for them meanwhile (a node's relay reconnecting would otherwise reopen the clone).
    fenced: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Exports {
    pub(crate) fn new(run_dir: PathBuf, clones: Arc<dyn CloneBackend>) -> Result<Exports, NetdiskError> {
        std::fs::create_dir_all(&run_dir).map_err(|source| NetdiskError::CreateDirectory { path: run_dir.clone(), source })?;
        Ok(Exports { run_dir, clones, processes: Default::default(), fenced: Default::default() })
    }

    fn slot(&self, node_id: &str) -> Slot {
        self.processes.lock().expect("not poisoned").entry(node_id.to_owned()).or_default().clone()
    }

    fn slots(&self) -> Vec<(String, Slot)> {
        self.processes.lock().expect("not poisoned").iter().map(|(node, slot)| (node.clone(), slot.clone())).collect()
    }

    /// The socket of `node_id`'s export process, starting one if none is running.
    pub async fn socket_for(&self, node_id: &str) -> Result<PathBuf, NetdiskError> {
        let slot = self.slot(node_id);
        let mut process = slot.lock().await;
        if self.fenced.lock().expect("not poisoned").contains(node_id) {
            return Err(NetdiskError::ExportNotReady { node_id: node_id.to_owned(), reason: "its clone is being changed".into() });
        }
        if let Some(running) = process.as_mut() {
            match running.child.try_wait() {
                Ok(None) => return Ok(running.socket.clone()),
                Ok(Some(status)) => tracing::warn!(node = node_id, %status, "network disk export process had exited; restarting it"),
                Err(error) => tracing::warn!(node = node_id, %error, "network disk export process lost; restarting it"),
            }
            *process = None;
        }
        let clone = self.clones.clone_file(node_id).ok_or_else(|| NetdiskError::NoClone { node_id: node_id.to_owned() })?;
        let socket = self.run_dir.join(format!("{node_id}.sock"));
        let _ = std::fs::remove_file(&socket);
        // qemu-nbd's messages go to a file: a pipe nobody reads would stop it once full.
        let log_path = self.run_dir.join(format!("{node_id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| NetdiskError::StartTool { command: format!("qemu-nbd (its log {})", log_path.display()), source })?;
        let mut command = tokio::process::Command::new("qemu-nbd");
        // `--shared`: the gateway opens one connection per node connection; writeback cache
        // with the node's flushes honoured (the kernel client sends them on fsync).
        command
            .arg("--socket")
            .arg(&socket)
            .args(["--format", "qcow2", "--persistent", "--shared", "8", "--cache", "writeback", "--discard", "unmap"])
            .arg(&clone)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the child asks to be killed when Kiln dies.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child =
            command.spawn().map_err(|source| NetdiskError::StartTool { command: "qemu-nbd (install qemu-utils)".into(), source })?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = logged.lines().last().unwrap_or_default().to_owned();
                return Err(NetdiskError::ExportNotReady {
                    node_id: node_id.to_owned(),
                    reason: format!("qemu-nbd exited ({status}): {last}"),
                });
            }
            if Instant::now() > deadline {
                return Err(NetdiskError::ExportNotReady { node_id: node_id.to_owned(), reason: "no socket after 10 s".into() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(node = node_id, pid = child.id(), clone = %clone.display(), "network disk export process started");
        *process = Some(ExportProcess { child, socket: socket.clone() });
        Ok(socket)
    }

    /// Stops `node_id`'s export process and starts none for it until [`Exports::unfence`].
    pub async fn fence(&self, node_id: &str) {
        self.fenced.lock().expect("not poisoned").insert(node_id.to_owned());
        self.stop(node_id).await;
    }

    pub fn unfence(&self, node_id: &str) {
        self.fenced.lock().expect("not poisoned").remove(node_id);
    }

    /// Stops `node_id`'s export process, if one runs: its connections end, and the clone is
    /// closed cleanly (qemu-nbd writes out its metadata on SIGTERM).
    pub async fn stop(&self, node_id: &str) {
        let slot = self.slot(node_id);
        let process = slot.lock().await.take();
        if let Some(process) = process {
            stop_process(process).await;
            tracing::info!(node = node_id, "network disk export process stopped");
        }
    }

    pub async fn stop_all(&self) {
        for (_, slot) in self.slots() {
            let process = slot.lock().await.take();
            if let Some(process) = process {
                stop_process(process).await;
            }
        }
    }

    /// The process ids of the running export processes (for tests and status).
    pub async fn running(&self) -> Vec<(String, u32)> {
        let mut running = Vec::new();
        for (node, slot) in self.slots() {
            if let Some(pid) = slot.lock().await.as_ref().and_then(|process| process.child.id()) {
                running.push((node, pid));
            }
        }
        running
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within five seconds.
async fn stop_process(mut process: ExportProcess) {
    if let Some(pid) = process.child.id() {
        // SAFETY: signalling our own child, which has not been reaped (we hold it).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(5), process.child.wait()).await.is_err() {
            let _ = process.child.kill().await;
        }
    }
    let _ = std::fs::remove_file(&process.socket);
}
