//! Kiln's NBD listener for nodes. Every connection negotiates with Kiln first: the export
//! name must be a clone's (a per-clone secret) and the peer the address Kiln gave that
//! clone's node, as the [`ExportAuthority`] decides; a guessed name, another node's name or
//! a wrong address is refused with the protocol's own errors before any byte of a disk is
//! reached. Then the node is joined to its clone's export process, and bytes are copied
//! both ways until either side closes.

use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kiln_nbd::{ExportInfo, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, OptionCode, ReplyType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::{NetdiskError, NetworkDisks};

/// A negotiation that takes longer than this is dropped (a peer holding connections open).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Options a peer may send before asking for an export.
const MAX_OPTIONS: usize = 16;

/// Why an export is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportRefusal {
    /// No clone has this export name (a guess, or a clone since replaced).
    Unknown,
    /// The name is a clone's, but the peer is not an address Kiln gave that clone's node.
    NotThisPeer { node_id: String },
    /// The peer's port is not a privileged one (below 1024): not the node's root.
    UnprivilegedPort { port: u16 },
    /// The decision could not be made (the store did not answer).
    Unavailable { reason: String },
}

/// Decides whether `peer` may use the export named `export`, and whose it is.
pub trait ExportAuthority: Send + Sync {
    fn authorize<'a>(&'a self, export: &'a str, peer: SocketAddr) -> BoxFuture<'a, Result<String, ExportRefusal>>;
}

/// The running gateway. Dropping it stops accepting; [`GatewayHandle::shutdown`] also ends
/// the connections in flight.
pub struct GatewayHandle {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl GatewayHandle {
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves nodes on `listener`.
pub fn start(listener: TcpListener, disks: Arc<NetworkDisks>, authority: Arc<dyn ExportAuthority>) -> std::io::Result<GatewayHandle> {
    let local_addr = listener.local_addr()?;
    let current = Arc::new(CurrentConnections::default());
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "network disk gateway: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (disks, authority, current) = (disks.clone(), authority.clone(), current.clone());
            connections.spawn(async move {
                let _ = stream.set_nodelay(true);
                // A machine reset sends no FIN: keepalives find the dead connection.
                let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)).with_interval(Duration::from_secs(10));
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                if let Err(error) = serve(stream, peer, &disks, authority.as_ref(), &current).await {
                    tracing::info!(%peer, error = %kiln_types::error_chain(&error), "network disk connection ended with an error");
                }
            });
        }
    });
    tracing::info!(address = %local_addr, "network disk gateway (NBD) listening");
    Ok(GatewayHandle { local_addr, task })
}

/// What ended a connection.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("the peer's handshake")]
    Protocol(#[source] kiln_nbd::NbdError),
    #[error("the connection")]
    Io(#[source] std::io::Error),
    #[error("the handshake took longer than {} s", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout,
    #[error("more than {MAX_OPTIONS} options without an export")]
    TooManyOptions,
    #[error("reaching the clone")]
    Export(#[source] NetdiskError),
}

/// An export granted during the handshake: the node's clone, connected.
struct Granted {
    node_id: String,
    upstream: tokio::net::UnixStream,
}

/// Each node's one connection: a node that connects again (it rebooted, or its relay
/// reconnected) ends its older connection, whose peer is gone, so that dead connections do
/// not pile up on its export process.
#[derive(Default)]
struct CurrentConnections {
    by_node: std::sync::Mutex<std::collections::HashMap<String, (u64, Arc<tokio::sync::Notify>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl CurrentConnections {
    /// Makes this connection `node_id`'s current one, ending the one before.
    fn replace(&self, node_id: &str) -> (u64, Arc<tokio::sync::Notify>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let superseded = Arc::new(tokio::sync::Notify::new());
        let previous = self.by_node.lock().expect("not poisoned").insert(node_id.to_owned(), (id, superseded.clone()));
        if let Some((_, previous)) = previous {
            previous.notify_one();
        }
        (id, superseded)
    }

    fn remove(&self, node_id: &str, id: u64) {
        let mut by_node = self.by_node.lock().expect("not poisoned");
        if by_node.get(node_id).is_some_and(|(current, _)| *current == id) {
            by_node.remove(node_id);
        }
    }
}

/// Each direction's buffer: a node's reads and writes come in requests of up to 128 KiB or
/// more, which tokio's default 8 KiB buffer moves in sixteen reads and writes each (the
/// benchmark's server CPU per GiB, `BENCHMARKS.md`).
const RELAY_BUFFER: usize = 256 << 10;

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    disks: &NetworkDisks,
    authority: &dyn ExportAuthority,
    current: &CurrentConnections,
) -> Result<(), ConnectionError> {
    let granted = match tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate(&mut stream, peer, disks, authority)).await {
        Ok(result) => result?,
        Err(_) => return Err(ConnectionError::Timeout),
    };
    let Some(Granted { node_id, mut upstream }) = granted else { return Ok(()) };
    let (id, superseded) = current.replace(&node_id);
    tracing::info!(node = %node_id, %peer, "network disk connected");
    tokio::select! {
        copied = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut upstream, RELAY_BUFFER, RELAY_BUFFER) => match copied {
            Ok((to_disk, to_node)) => {
                tracing::info!(node = %node_id, %peer, bytes_from_node = to_disk, bytes_to_node = to_node, "network disk disconnected")
            }
            Err(error) => tracing::info!(node = %node_id, %peer, %error, "network disk connection broke"),
        },
        _ = superseded.notified() => tracing::info!(node = %node_id, %peer, "network disk connection replaced by the node's newer one"),
    }
    current.remove(&node_id, id);
    Ok(())
}

async fn read_exact<const N: usize>(stream: &mut TcpStream) -> Result<[u8; N], ConnectionError> {
    let mut bytes = [0u8; N];
    stream.read_exact(&mut bytes).await.map_err(ConnectionError::Io)?;
    Ok(bytes)
}

async fn reply(stream: &mut TcpStream, option: OptionCode, reply: ReplyType, message: &str) -> Result<(), ConnectionError> {
    stream.write_all(&kiln_nbd::option_reply(option, reply, message.as_bytes())).await.map_err(ConnectionError::Io)
}

/// The fixed-newstyle negotiation, as a server. `None`: the peer aborted or was refused.
async fn negotiate(
    stream: &mut TcpStream,
    peer: SocketAddr,
    disks: &NetworkDisks,
    authority: &dyn ExportAuthority,
) -> Result<Option<Granted>, ConnectionError> {
    stream.write_all(&kiln_nbd::server_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)).await.map_err(ConnectionError::Io)?;
    let client_flags = kiln_nbd::decode_client_flags(&read_exact::<4>(stream).await?);
    let no_zeroes = client_flags & FLAG_NO_ZEROES != 0;
    for _ in 0..MAX_OPTIONS {
        let header = kiln_nbd::decode_option_header(&read_exact::<16>(stream).await?).map_err(ConnectionError::Protocol)?;
        let mut data = vec![0u8; header.length as usize];
        stream.read_exact(&mut data).await.map_err(ConnectionError::Io)?;
        let code = header.code;
        match code {
            OptionCode::ExportName | OptionCode::Info | OptionCode::Go => {
                let request = match kiln_nbd::decode_export_request(code, &data) {
                    Ok(request) => request,
                    // EXPORT_NAME has no error reply: the connection just closes.
                    Err(error) if code == OptionCode::ExportName => return Err(ConnectionError::Protocol(error)),
                    Err(error) => {
                        reply(stream, code, ReplyType::ErrorInvalid, &error.to_string()).await?;
                        continue;
                    }
                };
                let node_id = match authority.authorize(&request.name, peer).await {
                    Ok(node_id) => node_id,
                    Err(refusal) => {
                        let (kind, message) = match &refusal {
                            ExportRefusal::Unknown => (ReplyType::ErrorUnknown, "no such export".to_owned()),
                            ExportRefusal::NotThisPeer { .. } => (ReplyType::ErrorPolicy, "this export is not this machine's".to_owned()),
                            ExportRefusal::UnprivilegedPort { .. } => {
                                (ReplyType::ErrorPolicy, "connect from a privileged port (below 1024)".to_owned())
                            }
                            // What went wrong inside stays in the server's log.
                            ExportRefusal::Unavailable { .. } => {
                                (ReplyType::ErrorPolicy, "the server cannot decide now; try again".to_owned())
                            }
                        };
                        tracing::warn!(%peer, ?refusal, "network disk export refused");
                        if code == OptionCode::ExportName {
                            return Ok(None);
                        }
                        reply(stream, code, kind, &message).await?;
                        continue;
                    }
                };
                let (upstream, export) = match connect_export(disks, &node_id).await {
                    Ok(connected) => connected,
                    Err(error) => {
                        tracing::warn!(node = %node_id, %peer, error = %kiln_types::error_chain(&error), "network disk export unavailable");
                        if code == OptionCode::ExportName {
                            return Err(ConnectionError::Export(error));
                        }
                        reply(stream, code, ReplyType::ErrorPolicy, "the disk is not available now; try again").await?;
                        continue;
                    }
                };
                let answer = match code {
                    OptionCode::ExportName => kiln_nbd::export_name_granted(export, no_zeroes),
                    _ => kiln_nbd::export_granted(code, export),
                };
                stream.write_all(&answer).await.map_err(ConnectionError::Io)?;
                if code == OptionCode::Info {
                    continue;
                }
                return Ok(Some(Granted { node_id, upstream }));
            }
            OptionCode::Abort => {
                reply(stream, code, ReplyType::Ack, "").await?;
                return Ok(None);
            }
            OptionCode::List => reply(stream, code, ReplyType::ErrorPolicy, "exports are not listed").await?,
            _ => reply(stream, code, ReplyType::ErrorUnsupported, "not supported").await?,
        }
    }
    Err(ConnectionError::TooManyOptions)
}

/// Connects to `node_id`'s export process and negotiates its (only) export.
async fn connect_export(disks: &NetworkDisks, node_id: &str) -> Result<(tokio::net::UnixStream, ExportInfo), NetdiskError> {
    let socket = disks.exports().socket_for(node_id).await?;
    let node = node_id.to_owned();
    let connected = tokio::task::spawn_blocking(move || -> Result<_, kiln_nbd::NbdError> {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).map_err(kiln_nbd::NbdError::Io)?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(kiln_nbd::NbdError::Io)?;
        let export = kiln_nbd::negotiate_as_client(&mut stream, "")?;
        stream.set_read_timeout(None).map_err(kiln_nbd::NbdError::Io)?;
        stream.set_nonblocking(true).map_err(kiln_nbd::NbdError::Io)?;
        Ok((stream, export))
    })
    .await
    .unwrap_or_else(|panic| Err(kiln_nbd::NbdError::Io(std::io::Error::other(panic.to_string()))));
    let (stream, export) = connected.map_err(|source| NetdiskError::ConnectExport { node_id: node.clone(), source })?;
    let stream = tokio::net::UnixStream::from_std(stream)
        .map_err(|source| NetdiskError::ConnectExport { node_id: node, source: kiln_nbd::NbdError::Io(source) })?;
    Ok((stream, export))
}
