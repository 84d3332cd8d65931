//! The TFTP server: one task per transfer on the shared runtime, every file confined to the
//! root directory.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt as _;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::packet::{self, Packet};

#[derive(Clone)]
pub struct TftpConfig {
    pub listen: SocketAddr,
    /// Files are served from here and nowhere else.
    pub root: PathBuf,
    /// Generated files served by name before the root is consulted (the iPXE chain script).
    pub generated: HashMap<String, Vec<u8>>,
    /// Asked after `generated` and before the root: files made for the client that asks, or
    /// kept outside the root.
    pub dynamic: Option<Arc<dyn DynamicFiles>>,
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    /// Retransmissions of one packet before a transfer is abandoned.
    pub retries: u32,
    pub default_timeout_seconds: u8,
}

impl TftpConfig {
    pub fn new(listen: SocketAddr, root: PathBuf) -> Self {
        TftpConfig {
            listen,
            root,
            generated: HashMap::new(),
            dynamic: None,
            max_sessions: 512,
            max_sessions_per_client: 8,
            retries: 5,
            default_timeout_seconds: 2,
        }
    }
}

/// A file [`DynamicFiles`] found.
pub enum DynamicFile {
    Bytes(Vec<u8>),
    File(std::fs::File),
}

/// Files whose content depends on the client asking (a machine's own boot configuration) or
/// that live outside the root (an image's kernel, a signed boot loader from its package).
/// `None`: not one of these; the root decides.
pub trait DynamicFiles: Send + Sync + 'static {
    fn open<'a>(&'a self, path: &'a str, client: IpAddr) -> Pin<Box<dyn Future<Output = Option<DynamicFile>> + Send + 'a>>;
}

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("binding the TFTP socket {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the TFTP root {path} cannot be read")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running TFTP server; dropping it stops the server.
pub struct TftpHandle {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TftpHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for TftpHandle {
    /// Stops the event loop; transfers under way end with it.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why a request is refused: the TFTP error code and the message the client sees.
type Refusal = (u16, &'static str);

/// Maps a requested name to a file under `root`, refusing anything that could leave it:
/// `..`, NUL, symlinks pointing out. A leading `/` is taken as relative to the root, as
/// `tftpd -s` does, because PXE firmware often sends one.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, Refusal> {
    let denied = (packet::ERROR_ACCESS_VIOLATION, "access violation");
    if requested.is_empty() || requested.contains('\0') {
        return Err(denied);
    }
    let relative = requested.replace('\\', "/");
    let relative = relative.trim_start_matches('/');
    let mut path = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => return Err(denied),
        }
    }
    let canonical = path.canonicalize().map_err(|_| (packet::ERROR_FILE_NOT_FOUND, "file not found"))?;
    if !canonical.starts_with(root) {
        return Err(denied);
    }
    if !canonical.is_file() {
        return Err((packet::ERROR_FILE_NOT_FOUND, "file not found"));
    }
    Ok(canonical)
}

struct Shared {
    config: TftpConfig,
    root: PathBuf,
    sessions: Mutex<HashMap<IpAddr, usize>>,
    total: tokio::sync::Semaphore,
}

/// Starts the server on a thread of its own running a single-threaded event loop: every
/// transfer is a task on that one loop, so a burst of boots cannot take the API's worker
/// threads, and an ACK's wake-up and the next send happen on the thread that polled the
/// socket. (Throughput measured the same as on the shared runtime: BENCHMARKS.md.)
pub async fn start(config: TftpConfig) -> Result<TftpHandle, TftpError> {
    let root = config.root.canonicalize().map_err(|source| TftpError::Root { path: config.root.clone(), source })?;
    let socket = std::net::UdpSocket::bind(config.listen).map_err(|source| TftpError::Bind { address: config.listen, source })?;
    socket.set_nonblocking(true).map_err(|source| TftpError::Bind { address: config.listen, source })?;
    let local_addr = socket.local_addr().map_err(|source| TftpError::Bind { address: config.listen, source })?;
    tracing::info!(address = %local_addr, root = %root.display(), "TFTP server listening");
    let shared = Arc::new(Shared { total: tokio::sync::Semaphore::new(config.max_sessions), config, root, sessions: Mutex::default() });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kiln-tftp".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "starting the TFTP event loop failed");
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    () = listen(socket, shared, local_addr) => {}
                    _ = stopped => {}
                }
            });
        })
        .map_err(|source| TftpError::Bind { address: local_addr, source })?;
    Ok(TftpHandle { local_addr, stop: Some(stop), thread: Some(thread) })
}

async fn listen(socket: std::net::UdpSocket, shared: Arc<Shared>, local_addr: SocketAddr) {
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::error!(%error, "registering the TFTP socket failed");
            return;
        }
    };
    let mut buffer = vec![0u8; 2048];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else { continue };
        let request = match Packet::parse(&buffer[..length]) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%peer, %error, "malformed TFTP packet dropped");
                continue;
            }
        };
        match request {
            Packet::Read { filename, mode, options } => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { shared.serve(peer, filename, mode, options, local_addr).await });
            }
            Packet::Write { .. } => {
                let _ = socket.send_to(&packet::encode_error(packet::ERROR_ACCESS_VIOLATION, "this server is read-only"), peer).await;
            }
            // Stray ACKs and errors to the listening port belong to no transfer.
            _ => {}
        }
    }
}

/// Transfers under way at or below which waiting for an ACK spins before parking.
const SPIN_WHEN_AT_MOST: usize = 4;

/// On a LAN the ACK of a lock-step transfer arrives within microseconds: poll for it briefly
/// before parking the task, which saves the event loop's round trip through epoll per block.
fn spin_receive(socket: &UdpSocket, receive: &mut [u8]) -> Option<usize> {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_micros(30) {
        match socket.try_recv(receive) {
            Ok(length) => return Some(length),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(_) => return None,
        }
    }
    None
}

/// Where a transfer's bytes come from.
enum Source {
    File(std::fs::File, u64),
    Generated(Arc<[u8]>),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::File(_, length) => *length,
            Source::Generated(bytes) => bytes.len() as u64,
        }
    }

    fn read_block(&self, offset: u64, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::File(file, length) => {
                let wanted = buffer.len().min(length.saturating_sub(offset) as usize);
                let mut filled = 0;
                while filled < wanted {
                    let read = file.read_at(&mut buffer[filled..wanted], offset + filled as u64)?;
                    if read == 0 {
                        break;
                    }
                    filled += read;
                }
                Ok(filled)
            }
            Source::Generated(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = (start + buffer.len()).min(bytes.len());
                buffer[..end - start].copy_from_slice(&bytes[start..end]);
                Ok(end - start)
            }
        }
    }
}

/// Releases a client's session slot when the transfer ends, however it ends.
struct SessionSlot<'a> {
    shared: &'a Shared,
    client: IpAddr,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let mut sessions = self.shared.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = sessions.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                sessions.remove(&self.client);
            }
        }
    }
}

impl Shared {
    fn claim(&self, client: IpAddr) -> Option<SessionSlot<'_>> {
        let permit = self.total.try_acquire().ok()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = sessions.entry(client).or_insert(0);
        if *count >= self.config.max_sessions_per_client {
            return None;
        }
        *count += 1;
        Some(SessionSlot { shared: self, client, _permit: permit })
    }

    async fn serve(&self, peer: SocketAddr, filename: String, mode: String, options: BTreeMap<String, String>, local: SocketAddr) {
        // A new socket per transfer: its port is the transfer's TID (RFC 1350).
        let Ok(socket) = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await else { return };
        if socket.connect(peer).await.is_err() {
            return;
        }
        let refuse = |(code, message): Refusal| {
            let socket = &socket;
            async move {
                let _ = socket.send(&packet::encode_error(code, message)).await;
            }
        };
        let Some(_slot) = self.claim(peer.ip()) else {
            tracing::warn!(%peer, "TFTP session limit reached; request refused");
            return refuse((packet::ERROR_NOT_DEFINED, "too many transfers")).await;
        };
        if mode != "octet" && mode != "netascii" {
            return refuse((packet::ERROR_ILLEGAL_OPERATION, "unsupported mode")).await;
        }
        let source = match self.open(&filename, peer.ip()).await {
            Ok(source) => source,
            Err(refusal) => {
                tracing::info!(%peer, file = %filename, reason = refusal.1, "TFTP request refused");
                return refuse(refusal).await;
            }
        };
        let negotiated = packet::negotiate(&options, source.len(), packet::MAX_BLOCK_SIZE, self.config.default_timeout_seconds);
        match self.send_file(&socket, &source, &negotiated).await {
            Ok(()) => {
                tracing::info!(%peer, file = %filename, bytes = source.len(), block_size = negotiated.block_size, window = negotiated.window_size, "TFTP transfer complete")
            }
            Err(reason) => tracing::info!(%peer, file = %filename, reason, "TFTP transfer abandoned"),
        }
    }

    /// Where a requested file's bytes come from: a generated file, a dynamic one, or the root.
    async fn open(&self, filename: &str, client: IpAddr) -> Result<Source, Refusal> {
        let name = filename.trim_start_matches('/');
        if let Some(bytes) = self.config.generated.get(name) {
            return Ok(Source::Generated(Arc::from(bytes.as_slice())));
        }
        let not_found = (packet::ERROR_FILE_NOT_FOUND, "file not found");
        let measured = |file: std::fs::File| -> Result<Source, Refusal> {
            let length = file.metadata().map_err(|_| not_found)?.len();
            Ok(Source::File(file, length))
        };
        if let Some(dynamic) = &self.config.dynamic
            && let Some(found) = dynamic.open(name, client).await
        {
            return match found {
                DynamicFile::Bytes(bytes) => Ok(Source::Generated(Arc::from(bytes))),
                DynamicFile::File(file) => measured(file),
            };
        }
        let path = resolve(&self.root, filename)?;
        measured(std::fs::File::open(&path).map_err(|_| not_found)?)
    }

    /// Sends `source` in windows of blocks, advancing on ACKs, resending the window from the
    /// first unacknowledged block on timeout. Duplicate ACKs do not trigger resends (the
    /// Sorcerer's Apprentice bug).
    async fn send_file(&self, socket: &UdpSocket, source: &Source, negotiated: &packet::Negotiated) -> Result<(), &'static str> {
        let timeout = Duration::from_secs(u64::from(negotiated.timeout_seconds));
        let mut receive = vec![0u8; 1024];
        if !negotiated.acknowledged.is_empty() {
            let oack = packet::encode_oack(&negotiated.acknowledged);
            self.send_until_acked(socket, &[oack], &mut receive, timeout, |block| (block == 0).then_some(0)).await?;
        }
        let block_size = negotiated.block_size;
        let total_blocks = source.len() / block_size as u64 + 1; // the last block is short, maybe empty
        let mut base: u64 = 1; // first block not yet acknowledged (1-based)
        let mut data = vec![0u8; block_size];
        while base <= total_blocks {
            let window_end = (base + u64::from(negotiated.window_size) - 1).min(total_blocks);
            let mut window = Vec::with_capacity((window_end - base + 1) as usize);
            for block in base..=window_end {
                let length = source.read_block((block - 1) * block_size as u64, &mut data).map_err(|_| "read error")?;
                let mut encoded = Vec::with_capacity(4 + length);
                packet::encode_data(block as u16, &data[..length], &mut encoded);
                window.push(encoded);
            }
            // Map the 16-bit wire number back into this window (it wraps).
            let accept = |block: u16| (base..=window_end).rev().find(|candidate| *candidate as u16 == block);
            let acknowledged = self.send_until_acked(socket, &window, &mut receive, timeout, accept).await?;
            base = acknowledged + 1;
        }
        Ok(())
    }

    /// Sends `packets` and waits for an ACK that `accept` maps to a block index, resending
    /// all of them on each timeout, up to the configured retries.
    async fn send_until_acked(
        &self,
        socket: &UdpSocket,
        packets: &[Vec<u8>],
        receive: &mut [u8],
        timeout: Duration,
        accept: impl Fn(u16) -> Option<u64>,
    ) -> Result<u64, &'static str> {
        for _ in 0..=self.config.retries {
            for packet in packets {
                socket.send(packet).await.map_err(|_| "send failed")?;
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                // Spinning only pays while the loop has little else to do: with many
                // transfers under way, another one is always ready to run instead.
                let few_transfers = self.config.max_sessions - self.total.available_permits() <= SPIN_WHEN_AT_MOST;
                let spun = if few_transfers { spin_receive(socket, receive) } else { None };
                let received = match spun {
                    Some(length) => Ok(Ok(length)),
                    None => tokio::time::timeout_at(deadline, socket.recv(receive)).await,
                };
                match received {
                    Err(_) => break,
                    Ok(Err(_)) => return Err("peer unreachable"),
                    Ok(Ok(length)) => match Packet::parse(&receive[..length]) {
                        Ok(Packet::Ack { block }) => {
                            if let Some(acknowledged) = accept(block) {
                                return Ok(acknowledged);
                            }
                        }
                        Ok(Packet::Error { .. }) => return Err("the client sent an error"),
                        _ => {}
                    },
                }
            }
        }
        Err("no acknowledgement")
    }
}
