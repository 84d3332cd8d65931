//! The relay between the kernel's NBD driver and Kiln's gateway, which lets a network disk
//! outlive a restart of `kiln serve`. The kernel speaks to one end of a local socket pair;
//! the relay forwards its requests to the gateway and the replies back, and keeps every
//! request not yet answered. When the gateway's connection breaks (the server restarted, the
//! export process was stopped), the relay reconnects, negotiates the export again and sends
//! the unanswered requests again: NBD reads and writes at an offset, and flushes, are
//! idempotent, and a server may answer requests in any order, so the kernel sees its
//! requests answered late, never lost.
//!
//! An answered write is not yet a durable one: the export process keeps some of it in its
//! memory (a qcow2 clone's cluster tables) until a flush, so if that process is killed, a
//! write it answered but never flushed is gone, and sending the unanswered requests again
//! does not bring it back. The relay therefore keeps every answered write (and trim and
//! zeroing) in a journal until a flush sent after its answer has been answered, and after a
//! reconnect it writes the journal again, one request at a time, and flushes it, before it
//! sends anything else. Writes the kernel marked FUA are durable when answered and are not
//! kept. So that the journal stays small when the kernel writes much between its own
//! flushes, the relay sends a flush of its own whenever the journal holds more than
//! [`JOURNAL_FLUSH_AT`] bytes.
//!
//! Locks are never held across network IO that waits on the other direction: the map of
//! unanswered requests and the journal are locked only to look up or change them, and the
//! sending half has a lock of its own, so replies keep being read while a request is being
//! sent.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const COMMAND_READ: u16 = 0;
const COMMAND_WRITE: u16 = 1;
const COMMAND_DISCONNECT: u16 = 2;
const COMMAND_FLUSH: u16 = 3;
const COMMAND_TRIM: u16 = 4;
const COMMAND_WRITE_ZEROES: u16 = 6;
/// The request flag asking that the write be durable before it is answered.
const FLAG_FUA: u16 = 1;
/// Handles of the relay's own requests: the kernel's carry a small counter in their top
/// half, never all ones.
const RELAY_HANDLE: u64 = 0xffff_ffff_0000_0000;
/// Journal size above which the relay asks for a flush of its own.
const JOURNAL_FLUSH_AT: usize = 16 << 20;
/// How long the relay tries to reach the gateway again before giving up (the kernel then
/// fails the node's I/O, and the console says why).
const RECONNECT_FOR: Duration = Duration::from_secs(600);

/// A request the server has not answered.
struct Unanswered {
    bytes: Arc<Vec<u8>>,
    command: u16,
    /// Bytes of data its reply carries (a read's length).
    reply_data: usize,
    /// The connection it was last sent on; `None` while its first send is under way.
    sent_on: Option<u64>,
    /// For a flush: the journal's next mark when it was sent. Every entry with a smaller
    /// mark was answered before, so the flush makes it durable.
    covers_before: u64,
    /// The relay's own request, whose answer the kernel does not wait for.
    from_relay: bool,
}

impl Unanswered {
    /// A write whose answer does not mean it is durable: it goes to the journal.
    fn needs_journal(&self) -> bool {
        let flags = u16::from_be_bytes([self.bytes[4], self.bytes[5]]);
        matches!(self.command, COMMAND_WRITE | COMMAND_TRIM | COMMAND_WRITE_ZEROES) && flags & FLAG_FUA == 0
    }
}

/// Answered writes not yet covered by an answered flush, in the order they were answered.
#[derive(Default)]
struct Journal {
    entries: Vec<Journaled>,
    bytes: usize,
    next_mark: u64,
    /// A flush of the relay's own is on its way.
    flush_pending: bool,
}

struct Journaled {
    mark: u64,
    request: Arc<Vec<u8>>,
}

impl Journal {
    fn keep(&mut self, request: Arc<Vec<u8>>) {
        self.bytes += request.len();
        self.entries.push(Journaled { mark: self.next_mark, request });
        self.next_mark += 1;
    }

    /// Forgets the entries answered before a flush that has now been answered.
    fn flushed(&mut self, covers_before: u64) {
        self.entries.retain(|entry| entry.mark >= covers_before);
        self.bytes = self.entries.iter().map(|entry| entry.request.len()).sum();
    }
}

/// The sending half: the current connection and its number.
struct Sender {
    stream: TcpStream,
    connection: u64,
}

struct Shared {
    unanswered: Mutex<HashMap<u64, Unanswered>>,
    journal: Mutex<Journal>,
    sender: Mutex<Sender>,
    gateway: Gateway,
    relay_handles: std::sync::atomic::AtomicU64,
}

/// Where to reconnect to.
pub(crate) struct Gateway {
    pub(crate) server: String,
    pub(crate) export: String,
}

impl Gateway {
    fn connect(&self) -> anyhow::Result<TcpStream> {
        let mut stream = crate::nbd_root::connect_privileged(&self.server, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        kiln_nbd::negotiate_as_client(&mut stream, &self.export)?;
        stream.set_read_timeout(None)?;
        stream.set_nodelay(true).ok();
        Ok(stream)
    }
}

pub(crate) fn say(line: &str) {
    if let Ok(mut console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(console, "{line}");
    }
    eprintln!("{line}");
}

/// Relays until the kernel disconnects (or the gateway stays away past [`RECONNECT_FOR`]).
pub(crate) fn run(kernel: UnixStream, gateway: Gateway, first: TcpStream) -> anyhow::Result<()> {
    let reader = first.try_clone()?;
    let shared = Arc::new(Shared {
        unanswered: Mutex::new(HashMap::new()),
        journal: Mutex::new(Journal::default()),
        sender: Mutex::new(Sender { stream: first, connection: 0 }),
        gateway,
        relay_handles: std::sync::atomic::AtomicU64::new(0),
    });
    let replies = {
        let (kernel, shared) = (kernel.try_clone()?, shared.clone());
        std::thread::spawn(move || relay_replies(kernel, reader, &shared))
    };
    relay_requests(kernel, &shared)?;
    drop(replies);
    Ok(())
}

/// Kernel → gateway: every request is recorded before it is sent, and kept until answered.
fn relay_requests(mut kernel: UnixStream, shared: &Shared) -> anyhow::Result<()> {
    loop {
        let mut header = [0u8; 28];
        kernel.read_exact(&mut header)?;
        let magic = u32::from_be_bytes(header[..4].try_into().expect("four bytes"));
        anyhow::ensure!(magic == REQUEST_MAGIC, "the kernel sent a request with magic {magic:#x}");
        let command = u16::from_be_bytes([header[6], header[7]]);
        let handle = u64::from_be_bytes(header[8..16].try_into().expect("eight bytes"));
        let length = u32::from_be_bytes(header[24..28].try_into().expect("four bytes")) as usize;
        let mut bytes = header.to_vec();
        if command == COMMAND_WRITE {
            bytes.resize(28 + length, 0);
            kernel.read_exact(&mut bytes[28..])?;
        }
        if command == COMMAND_DISCONNECT {
            let _ = shared.sender.lock().expect("not poisoned").stream.write_all(&bytes);
            return Ok(());
        }
        let reply_data = if command == COMMAND_READ { length } else { 0 };
        send(shared, handle, command, Arc::new(bytes), reply_data, false);
    }
}

/// Records a request as unanswered and sends it. It is sent, and marked with the connection
/// it went on, under the sender's lock: a reconnect (which takes that lock to swap
/// connections) then finds it marked with the old one and sends it again. A failed send is
/// left to that reconnect.
fn send(shared: &Shared, handle: u64, command: u16, bytes: Arc<Vec<u8>>, reply_data: usize, from_relay: bool) {
    let covers_before = shared.journal.lock().expect("not poisoned").next_mark;
    let request = Unanswered { bytes: bytes.clone(), command, reply_data, sent_on: None, covers_before, from_relay };
    shared.unanswered.lock().expect("not poisoned").insert(handle, request);
    let sender = &mut *shared.sender.lock().expect("not poisoned");
    let _ = sender.stream.write_all(&bytes);
    if let Some(request) = shared.unanswered.lock().expect("not poisoned").get_mut(&handle) {
        request.sent_on = Some(sender.connection);
    }
}

/// A handle for a request the relay makes itself.
fn relay_handle(shared: &Shared) -> u64 {
    RELAY_HANDLE | shared.relay_handles.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A request header the relay makes itself.
fn relay_request(shared: &Shared, command: u16) -> (u64, Vec<u8>) {
    let handle = relay_handle(shared);
    let mut header = Vec::with_capacity(28);
    header.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&command.to_be_bytes());
    header.extend_from_slice(&handle.to_be_bytes());
    header.extend_from_slice(&[0; 12]);
    (handle, header)
}

/// Gateway → kernel: a reply goes to the kernel whole, once; a broken connection is
/// replaced and the unanswered requests sent again.
fn relay_replies(mut kernel: UnixStream, mut reader: TcpStream, shared: &Arc<Shared>) {
    loop {
        match read_reply(&mut reader, shared) {
            Ok(None) => {}
            Ok(Some(bytes)) => {
                if kernel.write_all(&bytes).is_err() {
                    return;
                }
            }
            Err(error) => {
                say(&format!("kiln-nbd: the connection to the network disk {} broke ({error}); reconnecting", shared.gateway.server));
                match reconnect(shared) {
                    Some(new_reader) => reader = new_reader,
                    None => {
                        say(&format!(
                            "kiln-nbd: the network disk {} stayed unreachable for {} s; its I/O now fails",
                            shared.gateway.server,
                            RECONNECT_FOR.as_secs()
                        ));
                        let _ = kernel.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            }
        }
    }
}

/// One whole reply (header and, for a successful read, its data) for the kernel, removed
/// from the unanswered; `None` for a reply to the relay's own request.
fn read_reply(reader: &mut TcpStream, shared: &Arc<Shared>) -> anyhow::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 16];
    reader.read_exact(&mut header)?;
    let magic = u32::from_be_bytes(header[..4].try_into().expect("four bytes"));
    anyhow::ensure!(magic == SIMPLE_REPLY_MAGIC, "a reply with magic {magic:#x}");
    let error = u32::from_be_bytes(header[4..8].try_into().expect("four bytes"));
    let handle = u64::from_be_bytes(header[8..].try_into().expect("eight bytes"));
    let reply_data = match shared.unanswered.lock().expect("not poisoned").get(&handle) {
        Some(request) => request.reply_data,
        None => anyhow::bail!("a reply to handle {handle:#x}, which is not waiting"),
    };
    let mut bytes = header.to_vec();
    if error == 0 && reply_data > 0 {
        bytes.resize(16 + reply_data, 0);
        reader.read_exact(&mut bytes[16..])?;
    }
    let Some(request) = shared.unanswered.lock().expect("not poisoned").remove(&handle) else {
        anyhow::bail!("a second reply to handle {handle:#x}");
    };
    if error == 0 {
        answered(shared, &request);
    }
    Ok((!request.from_relay).then_some(bytes))
}

/// Keeps an answered write in the journal, or forgets what an answered flush made durable;
/// asks for a flush of the relay's own when the journal grew large.
fn answered(shared: &Arc<Shared>, request: &Unanswered) {
    let mut journal = shared.journal.lock().expect("not poisoned");
    if request.command == COMMAND_FLUSH {
        journal.flushed(request.covers_before);
        if request.from_relay {
            journal.flush_pending = false;
        }
    } else if request.needs_journal() {
        journal.keep(request.bytes.clone());
        if journal.bytes > JOURNAL_FLUSH_AT && !journal.flush_pending {
            journal.flush_pending = true;
            // Sent from a thread of its own: this one must keep reading replies, or a
            // sender blocked on a full connection would never be released.
            let shared = shared.clone();
            std::thread::spawn(move || {
                let (handle, header) = relay_request(&shared, COMMAND_FLUSH);
                send(&shared, handle, COMMAND_FLUSH, Arc::new(header), 0, true);
            });
        }
    }
}

/// Writes the journal again on a new connection, one request at a time (answered writes
/// may overlap, and a server may reorder what is in flight), then flushes it; afterwards
/// the journal is empty. Runs before the connection is shared, so its replies are read here.
fn replay_journal(stream: &mut TcpStream, shared: &Shared) -> anyhow::Result<usize> {
    let (entries, replayed_before): (Vec<Arc<Vec<u8>>>, u64) = {
        let journal = shared.journal.lock().expect("not poisoned");
        (journal.entries.iter().map(|entry| entry.request.clone()).collect(), journal.next_mark)
    };
    let exchange = |stream: &mut TcpStream, header: &[u8], data: &[u8]| -> anyhow::Result<()> {
        stream.write_all(header)?;
        stream.write_all(data)?;
        let mut reply = [0u8; 16];
        stream.read_exact(&mut reply)?;
        let magic = u32::from_be_bytes(reply[..4].try_into().expect("four bytes"));
        anyhow::ensure!(magic == SIMPLE_REPLY_MAGIC, "a reply with magic {magic:#x}");
        let error = u32::from_be_bytes(reply[4..8].try_into().expect("four bytes"));
        anyhow::ensure!(error == 0, "the server answered with error {error}");
        Ok(())
    };
    for request in &entries {
        let handle = relay_handle(shared);
        let mut header = request[..28].to_vec();
        header[8..16].copy_from_slice(&handle.to_be_bytes());
        exchange(stream, &header, &request[28..])?;
    }
    if !entries.is_empty() {
        let (_, flush) = relay_request(shared, COMMAND_FLUSH);
        exchange(stream, &flush, &[])?;
        shared.journal.lock().expect("not poisoned").flushed(replayed_before);
    }
    Ok(entries.len())
}

/// Connects again and returns the new connection's reading half; the requests sent on
/// earlier connections and not answered are sent again by a thread of their own, so that
/// replies are read meanwhile. `None`: the gateway stayed away.
fn reconnect(shared: &Arc<Shared>) -> Option<TcpStream> {
    let started = Instant::now();
    let mut attempts = 0u32;
    let (stream, reader, replayed) = loop {
        let connected = shared.gateway.connect().and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            let replayed = replay_journal(&mut stream, shared).context("writing the journal again")?;
            stream.set_read_timeout(None)?;
            Ok((stream.try_clone()?, stream, replayed))
        });
        match connected {
            Ok((reader, stream, replayed)) => break (stream, reader, replayed),
            Err(error) if attempts.is_multiple_of(10) => {
                say(&format!("kiln-nbd: the network disk {} is unreachable ({error:#}); retrying", shared.gateway.server))
            }
            Err(_) => {}
        }
        attempts += 1;
        if started.elapsed() > RECONNECT_FOR {
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let connection = {
        let mut sender = shared.sender.lock().expect("not poisoned");
        let _ = sender.stream.shutdown(std::net::Shutdown::Both);
        sender.stream = stream;
        sender.connection += 1;
        sender.connection
    };
    let resend = shared.clone();
    std::thread::spawn(move || {
        let handles: Vec<u64> = resend
            .unanswered
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, request)| request.sent_on.is_some_and(|sent_on| sent_on < connection))
            .map(|(handle, _)| *handle)
            .collect();
        let count = handles.len();
        for handle in handles {
            let mut sender = resend.sender.lock().expect("not poisoned");
            if sender.connection != connection {
                return; // A newer reconnect resends what is left.
            }
            let bytes = match resend.unanswered.lock().expect("not poisoned").get(&handle) {
                Some(request) if request.sent_on.is_some_and(|sent_on| sent_on < connection) => request.bytes.clone(),
                _ => continue,
            };
            if sender.stream.write_all(&bytes).is_err() {
                return;
            }
            if let Some(request) = resend.unanswered.lock().expect("not poisoned").get_mut(&handle) {
                request.sent_on = Some(connection);
            }
        }
        say(&format!("kiln-nbd: reconnected to the network disk; {count} unanswered requests sent again"));
    });
    say(&format!(
        "kiln-nbd: reconnected to the network disk after {:.0} s; {replayed} answered but unflushed writes written again",
        started.elapsed().as_secs_f64()
    ));
    Some(reader)
}

#[cfg(test)]
mod tests {
    //! The relay against a real qemu-nbd serving a qcow2 file, killed with SIGKILL between
    //! answered writes and any flush: the writes are on the disk afterwards.

    use super::*;

    const WRITE_LENGTH: usize = 64 << 10;

    fn request(command: u16, handle: u64, offset: u64, length: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(28);
        bytes.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        bytes.extend_from_slice(&0u16.to_be_bytes());
        bytes.extend_from_slice(&command.to_be_bytes());
        bytes.extend_from_slice(&handle.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&(length as u32).to_be_bytes());
        bytes
    }

    /// Reads one simple reply and its data; returns the handle.
    fn reply(kernel: &mut UnixStream, data: usize) -> (u64, Vec<u8>) {
        let mut header = [0u8; 16];
        kernel.read_exact(&mut header).unwrap();
        assert_eq!(u32::from_be_bytes(header[4..8].try_into().unwrap()), 0, "the request succeeded");
        let mut bytes = vec![0; data];
        kernel.read_exact(&mut bytes).unwrap();
        (u64::from_be_bytes(header[8..].try_into().unwrap()), bytes)
    }

    /// A qemu-nbd this test started, killed when dropped (also when the test fails).
    struct Export(std::process::Child);

    impl Drop for Export {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn serve(disk: &std::path::Path, port: u16) -> Export {
        let child = std::process::Command::new("qemu-nbd")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--export-name", "disk", "--format", "qcow2"])
            .args(["--persistent", "--shared", "4", "--cache", "writeback"])
            .arg(disk)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let export = Export(child);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return export;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("qemu-nbd did not listen on {port}");
    }

    #[test]
    fn answered_writes_survive_a_killed_export_process() {
        let qemu_nbd = std::process::Command::new("qemu-nbd").arg("--version").output().is_ok_and(|output| output.status.success());
        // SAFETY: geteuid has no preconditions.
        if !qemu_nbd || unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs qemu-nbd (qemu-utils) and root for a privileged source port");
            return;
        }
        let directory = tempfile::tempdir().unwrap();
        let disk = directory.path().join("clone.qcow2");
        let status = std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("8M").status().unwrap();
        assert!(status.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let export = serve(&disk, port);
        let gateway = Gateway { server: format!("127.0.0.1:{port}"), export: "disk".into() };
        let first = gateway.connect().unwrap();
        let (mut kernel, relay_end) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || run(relay_end, gateway, first));

        let patterns = [(0u64, 0xa5u8), (1 << 20, 0x5a)];
        for (index, (offset, byte)) in patterns.iter().enumerate() {
            let mut bytes = request(COMMAND_WRITE, index as u64 + 1, *offset, WRITE_LENGTH);
            bytes.extend(std::iter::repeat_n(*byte, WRITE_LENGTH));
            kernel.write_all(&bytes).unwrap();
            assert_eq!(reply(&mut kernel, 0).0, index as u64 + 1);
        }
        // Killed with both writes answered and none flushed; a new process serves the file.
        drop(export);
        let export = serve(&disk, port);
        kernel.write_all(&request(COMMAND_READ, 7, 0, WRITE_LENGTH)).unwrap();
        let (handle, read) = reply(&mut kernel, WRITE_LENGTH);
        assert_eq!(handle, 7);
        assert!(read.iter().all(|&byte| byte == 0xa5), "the first write is there after the reconnect");
        kernel.write_all(&request(COMMAND_DISCONNECT, 8, 0, 0)).unwrap();
        relay.join().unwrap().unwrap();
        drop(export);

        let raw = directory.path().join("clone.raw");
        let status = std::process::Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&disk).arg(&raw).status().unwrap();
        assert!(status.success());
        let bytes = std::fs::read(&raw).unwrap();
        for (offset, byte) in patterns {
            let written = &bytes[offset as usize..offset as usize + WRITE_LENGTH];
            assert!(written.iter().all(|&found| found == byte), "the answered write at {offset} is on the disk");
        }
    }

    #[test]
    fn a_flush_forgets_only_what_was_answered_before_it_was_sent() {
        let mut journal = Journal::default();
        journal.keep(Arc::new(vec![0; 100]));
        let covers_before = journal.next_mark;
        journal.keep(Arc::new(vec![0; 50]));
        journal.flushed(covers_before);
        assert_eq!(journal.entries.len(), 1);
        assert_eq!(journal.bytes, 50);
    }
}
