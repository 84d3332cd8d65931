//! Pool leases on disk: an append-only log written in batches (one write and one fdatasync
//! per batch, never per packet), replayed and compacted when the server starts.
//!
//! Each line is `<mac> <address> <expires, unix seconds>`; 0 means released. The last line
//! for a MAC wins. A torn last line (a crash mid-write) is skipped on replay.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_types::MacAddress;
use tokio::sync::mpsc;

/// At most this long between a lease and its fdatasync.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
const BATCH_LIMIT: usize = 4096;

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

fn parse_line(line: &str) -> Option<(MacAddress, Ipv4Addr, u64)> {
    let mut fields = line.split(' ');
    let mac = fields.next()?.parse().ok()?;
    let address = fields.next()?.parse().ok()?;
    let expires = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((mac, address, expires))
}

/// The live leases recorded in `path` (none if it does not exist).
pub fn load(path: &Path, now: u64) -> std::io::Result<HashMap<MacAddress, (Ipv4Addr, u64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(error) => return Err(error),
    };
    let mut leases = HashMap::new();
    for (mac, address, expires) in text.lines().filter_map(parse_line) {
        leases.insert(mac, (address, expires));
    }
    leases.retain(|_, (_, expires)| *expires > now);
    Ok(leases)
}

/// Rewrites the log with only `leases`: a temporary file, fsync, rename.
pub fn compact(path: &Path, leases: &HashMap<MacAddress, (Ipv4Addr, u64)>) -> std::io::Result<()> {
    let temporary = path.with_extension("compacting");
    let mut file = std::fs::File::create(&temporary)?;
    let mut text = String::with_capacity(leases.len() * 40);
    for (mac, (address, expires)) in leases {
        text.push_str(&format!("{mac} {address} {expires}\n"));
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Sends lease changes to the writer task.
#[derive(Clone)]
pub struct LeaseLog {
    sender: mpsc::UnboundedSender<String>,
}

impl LeaseLog {
    pub fn record(&self, mac: MacAddress, address: Ipv4Addr, expires: u64) {
        let _ = self.sender.send(format!("{mac} {address} {expires}\n"));
    }

    /// Starts the writer task that appends to `path` in batches.
    pub fn start(path: PathBuf) -> std::io::Result<(LeaseLog, tokio::task::JoinHandle<()>)> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let (sender, mut receiver) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let file = std::sync::Arc::new(file);
            while let Some(first) = receiver.recv().await {
                let mut batch = first;
                let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
                let mut count = 1;
                while count < BATCH_LIMIT {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(line)) => {
                            batch.push_str(&line);
                            count += 1;
                        }
                        _ => break,
                    }
                }
                let file = std::sync::Arc::clone(&file);
                let written =
                    tokio::task::spawn_blocking(move || (&*file).write_all(batch.as_bytes()).and_then(|()| file.sync_data())).await;
                if !matches!(written, Ok(Ok(()))) {
                    tracing::error!(path = %path.display(), "writing DHCP leases failed; leases are kept in memory");
                }
            }
        });
        Ok((LeaseLog { sender }, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_survive_a_restart_and_compaction_keeps_only_live_ones() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("leases.log");
        let (log, task) = LeaseLog::start(path.clone()).unwrap();
        let mac = |n: u8| MacAddress([0x52, 0x54, 0, 0, 0, n]);
        let now = now_unix();
        log.record(mac(1), Ipv4Addr::new(10, 0, 0, 1), now + 600);
        log.record(mac(2), Ipv4Addr::new(10, 0, 0, 2), now + 600);
        log.record(mac(2), Ipv4Addr::new(10, 0, 0, 2), 0); // released
        log.record(mac(3), Ipv4Addr::new(10, 0, 0, 3), now - 1); // expired
        drop(log);
        task.await.unwrap();
        // A torn line from a crash mid-write is skipped.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"52:54:00:00:00:04 10.0.").unwrap();
        let leases = load(&path, now).unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[&mac(1)].0, Ipv4Addr::new(10, 0, 0, 1));
        compact(&path, &leases).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(load(&path, now).unwrap(), leases);
    }
}
