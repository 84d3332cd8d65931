//! The DHCP server: a socket bound to one interface, the inventory for reservations, and a
//! small in-memory pool for machines without one.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use kiln_db::{Inventory, Store};
use kiln_types::MacAddress;
use kiln_types::node::Node;
use tokio::net::UdpSocket;

use crate::config::{DhcpConfig, DhcpMode};
use crate::decide::{Binding, client_mac, decide};
use crate::leases::{LeaseLog, now_unix};

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("reading or compacting the DHCP lease log {path}")]
    Leases {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the DHCP socket on interface {interface}, port {port}")]
    Socket {
        interface: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// A running DHCP server; dropping it stops the server.
pub struct DhcpHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DhcpHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Pool leases: in memory for the packet path, persisted by [`LeaseLog`] in batches.
#[derive(Default)]
struct Pool {
    /// Address and expiry (unix seconds) by client.
    by_mac: HashMap<MacAddress, (Ipv4Addr, u64)>,
    taken: HashSet<Ipv4Addr>,
    /// Where the search for a free address resumes, so handing out N addresses costs O(N)
    /// in all rather than O(N) each.
    cursor: u32,
}

struct Server {
    config: DhcpConfig,
    inventory: Arc<Inventory>,
    store: Store,
    pool: Mutex<Pool>,
    enrolling: Mutex<HashSet<MacAddress>>,
    leases: Option<LeaseLog>,
}

/// An offered address is held this long for the client's REQUEST.
const OFFER_HOLD_SECONDS: u64 = 60;

const MAX_ENROLMENTS_IN_FLIGHT: usize = 8;

/// The PXE boot server port: in proxy mode clients send their ProxyDHCP REQUEST here.
const PXE_PORT: u16 = 4011;

fn open_socket(config: &DhcpConfig, port: u16) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    // Bound to the interface, the server neither hears nor answers other segments.
    socket.bind_device(Some(config.interface.as_bytes()))?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

pub async fn start(config: DhcpConfig, store: Store, inventory: Arc<Inventory>) -> Result<DhcpHandle, DhcpError> {
    let open = |port| open_socket(&config, port).map_err(|source| DhcpError::Socket { interface: config.interface.clone(), port, source });
    let socket = open(config.port)?;
    let pxe_socket = match config.mode {
        DhcpMode::Proxy => Some(open(PXE_PORT)?),
        DhcpMode::Authoritative => None,
    };
    tracing::info!(interface = %config.interface, mode = ?config.mode, server = %config.server_address, "DHCP server listening");
    let mut pool = Pool::default();
    let mut tasks = Vec::new();
    let leases = match &config.lease_file {
        Some(path) => {
            let lease_error = |source| DhcpError::Leases { path: path.clone(), source };
            let live = crate::leases::load(path, now_unix()).map_err(lease_error)?;
            crate::leases::compact(path, &live).map_err(lease_error)?;
            tracing::info!(leases = live.len(), path = %path.display(), "DHCP leases restored");
            for (mac, (address, expires)) in live {
                pool.taken.insert(address);
                pool.by_mac.insert(mac, (address, expires));
            }
            let (log, writer) = LeaseLog::start(path.clone()).map_err(lease_error)?;
            tasks.push(writer);
            Some(log)
        }
        None => None,
    };
    let server = Arc::new(Server { config, inventory, store, pool: Mutex::new(pool), enrolling: Mutex::default(), leases });
    tasks.push(tokio::spawn(serve(Arc::clone(&server), socket, Port::Dhcp)));
    if let Some(pxe_socket) = pxe_socket {
        tasks.push(tokio::spawn(serve(server, pxe_socket, Port::Pxe)));
    }
    Ok(DhcpHandle { tasks })
}

/// Which socket a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// 67: DHCP, and in proxy mode the broadcast DISCOVER of PXE clients.
    Dhcp,
    /// 4011: in proxy mode, the unicast ProxyDHCP REQUEST.
    Pxe,
}

async fn serve(server: Arc<Server>, socket: UdpSocket, port: Port) {
    let mut buffer = vec![0u8; 1500];
    loop {
        let (length, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "receiving a DHCP packet failed");
                continue;
            }
        };
        // A packet must never take the server down, whatever a decoder does with it.
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.handle(&buffer[..length], port, peer)));
        let Some((answer, destination)) = handled.unwrap_or_else(|_| {
            tracing::error!(%peer, length, "a DHCP packet made the decoder panic; dropped");
            None
        }) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(548);
        if let Err(error) = answer.encode(&mut Encoder::new(&mut bytes)) {
            tracing::warn!(%error, "encoding a DHCP answer failed");
            continue;
        }
        if let Err(error) = socket.send_to(&bytes, destination).await {
            tracing::warn!(%error, %peer, %destination, "sending a DHCP answer failed");
        }
    }
}

impl Server {
    /// Decodes, looks up, decides. Anything malformed is dropped without an answer.
    fn handle(self: &Arc<Self>, packet: &[u8], port: Port, peer: SocketAddr) -> Option<(Message, SocketAddr)> {
        let request = Message::decode(&mut Decoder::new(packet)).ok()?;
        let mac = client_mac(&request)?;
        let kind = request.opts().msg_type()?;
        if self.config.mode == DhcpMode::Proxy {
            // A proxy answers DISCOVERs on 67 and REQUESTs on 4011; the REQUEST a client
            // broadcasts on 67 belongs to the site's DHCP server.
            let expected = if port == Port::Dhcp { MessageType::Discover } else { MessageType::Request };
            if kind != expected {
                return None;
            }
        }
        let view = self.inventory.view();
        let node = view.by_mac(&mac);
        if node.is_none() && self.config.auto_enroll && kind == MessageType::Discover {
            self.enroll(mac);
        }
        let binding = self.binding(mac, node.map(|node| &**node), kind, &request);
        let answer = decide(&request, &self.config, binding.as_ref())?;
        tracing::debug!(%mac, ?kind, answer = ?answer.opts().msg_type(), address = %answer.yiaddr(), "DHCP answer");
        if matches!(answer.opts().msg_type(), Some(MessageType::Ack)) {
            tracing::info!(%mac, address = %answer.yiaddr(), node = node.map(|n| n.name.as_str()), "lease acknowledged");
        }
        let destination = if port == Port::Pxe {
            peer
        } else if !request.giaddr().is_unspecified() {
            SocketAddr::from((request.giaddr(), 67))
        } else if !request.ciaddr().is_unspecified() && kind != MessageType::Discover {
            SocketAddr::from((request.ciaddr(), 68))
        } else {
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
        };
        Some((answer, destination))
    }

    /// The reservation from the inventory (an address of the booting interface inside the
    /// subnet, else of any interface), or a pool address.
    fn binding(&self, mac: MacAddress, node: Option<&Node>, kind: MessageType, request: &Message) -> Option<Binding> {
        if let Some(node) = node {
            let booting = node.interfaces.iter().filter(|interface| interface.mac_addr == mac);
            let others = node.interfaces.iter().filter(|interface| interface.mac_addr != mac);
            let reserved = booting
                .chain(others)
                .flat_map(|interface| interface.ip_addrs.iter())
                .filter_map(|entry| entry.ip_addr.parse::<Ipv4Addr>().ok())
                .find(|address| self.config.contains(*address));
            let hostname = Some(match node.nid {
                Some(nid) => format!("{}{:0width$}", self.config.hostname_prefix, nid, width = self.config.nid_length),
                None => node.name.clone(),
            });
            if let Some(address) = reserved {
                return Some(Binding { address, hostname });
            }
            return self.pool_address(mac, kind, request).map(|address| Binding { address, hostname });
        }
        self.pool_address(mac, kind, request).map(|address| Binding { address, hostname: None })
    }

    fn pool_address(&self, mac: MacAddress, kind: MessageType, request: &Message) -> Option<Ipv4Addr> {
        let (first, last) = self.config.pool?;
        let now = now_unix();
        let mut pool = self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let pool = &mut *pool;
        if let Some(&(address, _)) = pool.by_mac.get(&mac) {
            match kind {
                MessageType::Release | MessageType::Decline => {
                    pool.by_mac.remove(&mac);
                    // A declined address is in use by someone else: keep it out of the pool.
                    if kind == MessageType::Release {
                        pool.taken.remove(&address);
                    }
                    if let Some(leases) = &self.leases {
                        leases.record(mac, address, 0);
                    }
                    return None;
                }
                MessageType::Request => {
                    let expires = now + u64::from(self.config.lease_seconds);
                    pool.by_mac.insert(mac, (address, expires));
                    if let Some(leases) = &self.leases {
                        leases.record(mac, address, expires);
                    }
                }
                _ => {}
            }
            return Some(address);
        }
        if kind != MessageType::Discover {
            // A REQUEST for an address we never offered (a lease from before the log, or
            // from another server): honour it if it is free and in the pool.
            let requested = match request.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(address)) => *address,
                _ => request.ciaddr(),
            };
            let in_pool = (u32::from(first)..=u32::from(last)).contains(&u32::from(requested));
            if kind == MessageType::Request && in_pool && !pool.taken.contains(&requested) {
                let expires = now + u64::from(self.config.lease_seconds);
                pool.taken.insert(requested);
                pool.by_mac.insert(mac, (requested, expires));
                if let Some(leases) = &self.leases {
                    leases.record(mac, requested, expires);
                }
                return Some(requested);
            }
            return None;
        }
        let (first, last) = (u32::from(first), u32::from(last));
        let find_free = |pool: &Pool| {
            let start = pool.cursor.clamp(first, last);
            (start..=last).chain(first..start).map(Ipv4Addr::from).find(|address| !pool.taken.contains(address))
        };
        let free = match find_free(pool) {
            Some(free) => free,
            None => {
                // Full: take back expired leases and unanswered offers, then look again.
                let expired: Vec<_> =
                    pool.by_mac.iter().filter(|(_, (_, expires))| *expires <= now).map(|(mac, (a, _))| (*mac, *a)).collect();
                for (mac, address) in expired {
                    pool.by_mac.remove(&mac);
                    pool.taken.remove(&address);
                }
                find_free(pool)?
            }
        };
        pool.cursor = u32::from(free).saturating_add(1);
        pool.taken.insert(free);
        pool.by_mac.insert(mac, (free, now + OFFER_HOLD_SECONDS));
        Some(free)
    }

    /// Adds an unknown machine to the inventory off the packet path; its next DISCOVER finds
    /// it there.
    fn enroll(self: &Arc<Self>, mac: MacAddress) {
        {
            let mut enrolling = self.enrolling.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // A flood of made-up MACs must not become a flood of database writes: beyond a
            // few enrolments at a time, unknown machines wait for their next DISCOVER.
            if enrolling.len() >= MAX_ENROLMENTS_IN_FLIGHT || !enrolling.insert(mac) {
                return;
            }
        }
        let server = Arc::clone(self);
        tokio::spawn(async move {
            match server.store.enroll_discovered(mac).await {
                Ok(_) => {
                    if let Err(error) = server.inventory.refresh().await {
                        tracing::warn!(%error, "refreshing the inventory after an enrolment failed");
                    }
                }
                Err(error) => tracing::warn!(%mac, %error, "enrolling an unknown machine failed"),
            }
            server.enrolling.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&mac);
        });
    }
}
