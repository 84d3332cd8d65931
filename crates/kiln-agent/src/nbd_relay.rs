//! The relay between the kernel's NBD driver and Kiln's gateway, which lets a network disk
//! outlive a restart of `kiln serve`. The kernel speaks to one end of a local socket pair;
//! the relay forwards its requests to the gateway and the replies back, and keeps every
//! request not yet answered. When the gateway's connection breaks (the server restarted, the
//! export process was stopped), the relay reconnects, negotiates the export again and sends
//! the unanswered requests again: NBD reads and writes at an offset, and flushes, are
//! idempotent, and a server may answer requests in any order, so the kernel sees its
//! requests answered late, never lost.
//!
//! Locks are never held across network IO that waits on the other direction: the map of
//! unanswered requests is locked only to look up or change it, and the sending half has a
//! lock of its own, so replies keep being read while a request is being sent.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const COMMAND_READ: u16 = 0;
const COMMAND_WRITE: u16 = 1;
const COMMAND_DISCONNECT: u16 = 2;
/// How long the relay tries to reach the gateway again before giving up (the kernel then
/// fails the node's I/O, and the console says why).
const RECONNECT_FOR: Duration = Duration::from_secs(600);

/// A request the server has not answered.
struct Unanswered {
    bytes: Arc<Vec<u8>>,
    /// Bytes of data its reply carries (a read's length).
    reply_data: usize,
    /// The connection it was last sent on; `None` while its first send is under way.
    sent_on: Option<u64>,
}

/// The sending half: the current connection and its number.
struct Sender {
    stream: TcpStream,
    connection: u64,
}

struct Shared {
    unanswered: Mutex<HashMap<u64, Unanswered>>,
    sender: Mutex<Sender>,
    gateway: Gateway,
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
    let shared =
        Arc::new(Shared { unanswered: Mutex::new(HashMap::new()), sender: Mutex::new(Sender { stream: first, connection: 0 }), gateway });
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
        let bytes = Arc::new(bytes);
        let reply_data = if command == COMMAND_READ { length } else { 0 };
        shared.unanswered.lock().expect("not poisoned").insert(handle, Unanswered { bytes: bytes.clone(), reply_data, sent_on: None });
        // Sent, and marked with the connection it went on, under the sender's lock: a
        // reconnect (which takes that lock to swap connections) then finds it marked with
        // the old one and sends it again. A failed send is left to that reconnect.
        let sender = &mut *shared.sender.lock().expect("not poisoned");
        let _ = sender.stream.write_all(&bytes);
        if let Some(request) = shared.unanswered.lock().expect("not poisoned").get_mut(&handle) {
            request.sent_on = Some(sender.connection);
        }
    }
}

/// Gateway → kernel: a reply goes to the kernel whole, once; a broken connection is
/// replaced and the unanswered requests sent again.
fn relay_replies(mut kernel: UnixStream, mut reader: TcpStream, shared: &Arc<Shared>) {
    loop {
        match read_reply(&mut reader, shared) {
            Ok(bytes) => {
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

/// One whole reply (header and, for a successful read, its data), removed from the
/// unanswered.
fn read_reply(reader: &mut TcpStream, shared: &Shared) -> anyhow::Result<Vec<u8>> {
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
    shared.unanswered.lock().expect("not poisoned").remove(&handle);
    Ok(bytes)
}

/// Connects again and returns the new connection's reading half; the requests sent on
/// earlier connections and not answered are sent again by a thread of their own, so that
/// replies are read meanwhile. `None`: the gateway stayed away.
fn reconnect(shared: &Arc<Shared>) -> Option<TcpStream> {
    let started = Instant::now();
    let mut attempts = 0u32;
    let (stream, reader) = loop {
        match shared.gateway.connect().and_then(|stream| Ok((stream.try_clone()?, stream))) {
            Ok((reader, stream)) => break (stream, reader),
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
    say(&format!("kiln-nbd: reconnected to the network disk after {:.0} s", started.elapsed().as_secs_f64()));
    Some(reader)
}
