//! Serial console capture: every node whose BMC offers a serial line Kiln can read (today the
//! lab's QEMU machines, through the socket beside their QMP socket) has a task that reads it,
//! appends what arrives to the node's console in the store (the last [`KEEP_BYTES`]), and
//! writes what people type (through the API's [`ConsoleHub`]).
//!
//! A scan every few seconds starts a task for a console that appeared and restarts one whose
//! connection ended (the machine was restarted, or the socket went away); dropping the
//! capture's task aborts every reader with it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_api::console::ConsoleHub;
use kiln_db::{Inventory, Store};
use kiln_types::node::Node;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;

/// How much of each node's console the store keeps.
pub const KEEP_BYTES: usize = 256 << 10;
/// How often a reader writes what it read to the store (each write adds one piece).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long typed bytes may take to go out.
const WRITE_WITHIN: Duration = Duration::from_secs(5);
/// How often new or lost consoles are looked for.
const SCAN_EVERY: Duration = Duration::from_secs(2);

/// Where Kiln reads the node's serial line, if it can.
fn serial_socket(node: &Node) -> Option<PathBuf> {
    let bmc = node.bmc.as_ref()?;
    match bmc.driver {
        kiln_types::BmcDriver::Lab => kiln_bmc::lab::serial_socket_of_address(bmc.address.as_deref()?),
        _ => None,
    }
}

/// Starts the capture; it runs until the handle is aborted, which aborts every reader too
/// (they live in its `JoinSet`).
pub fn spawn(store: Store, inventory: Arc<Inventory>, hub: Arc<ConsoleHub>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut readers: JoinSet<()> = JoinSet::new();
        // By node: the reader's task, the socket it reads and its handle.
        let mut reading: HashMap<String, (tokio::task::Id, PathBuf, tokio::task::AbortHandle)> = HashMap::new();
        loop {
            // A reader ended (the line closed, or it failed): the next scan starts another.
            while let Some(finished) = readers.try_join_next_with_id() {
                let task = match finished {
                    Ok((task, ())) => task,
                    Err(error) => error.id(),
                };
                reading.retain(|_, (id, _, _)| *id != task);
            }
            let view = inventory.view();
            // A node deleted, or whose BMC now names another socket, is read no more.
            reading.retain(|node_id, (_, socket, handle)| {
                let current = view.get(node_id).and_then(|node| serial_socket(node));
                let keep = current.as_ref() == Some(socket);
                if !keep {
                    handle.abort();
                }
                keep
            });
            for node in view.nodes() {
                if reading.contains_key(&node.id) {
                    continue;
                }
                let Some(socket) = serial_socket(node).filter(|socket| socket.exists()) else { continue };
                let handle = readers.spawn(read_console(store.clone(), hub.clone(), node.id.clone(), node.name.clone(), socket.clone()));
                reading.insert(node.id.clone(), (handle.id(), socket, handle));
            }
            tokio::time::sleep(SCAN_EVERY).await;
        }
    })
}

/// Reads one console until its connection ends.
async fn read_console(store: Store, hub: Arc<ConsoleHub>, node_id: String, node_name: String, socket: PathBuf) {
    let stream = match tokio::net::UnixStream::connect(&socket).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(node = %node_name, socket = %socket.display(), %error, "the serial console is not reachable");
            return;
        }
    };
    tracing::info!(node = %node_name, socket = %socket.display(), "reading the serial console");
    let (mut reader, mut writer) = stream.into_split();
    let (mut typed, _attachment) = hub.attach(&node_id);
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 16 << 10];
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            read = reader.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(count) => pending.extend_from_slice(&buffer[..count]),
            },
            Some(bytes) = typed.recv() => {
                // A line that takes nothing for this long is stuck: reading it goes on from a
                // new connection rather than stalling here.
                if !matches!(tokio::time::timeout(WRITE_WITHIN, writer.write_all(&bytes)).await, Ok(Ok(()))) {
                    break;
                }
            }
            _ = flush.tick() => flush_console(&store, &node_id, &node_name, &mut pending).await,
        }
        if pending.len() >= KEEP_BYTES {
            flush_console(&store, &node_id, &node_name, &mut pending).await;
        }
    }
    flush_console(&store, &node_id, &node_name, &mut pending).await;
    tracing::info!(node = %node_name, "the serial console closed");
}

async fn flush_console(store: &Store, node_id: &str, node_name: &str, pending: &mut Vec<u8>) {
    if pending.is_empty() {
        return;
    }
    if let Err(error) = store.append_console(node_id, pending, KEEP_BYTES).await {
        tracing::warn!(node = %node_name, error = %kiln_types::error_chain(&error), bytes = pending.len(), "console output was not recorded");
    }
    // Dropped either way: the buffer stays bounded when the store is away.
    pending.clear();
}
