//! The DHCP server: a socket bound to one interface, the inventory for reservations, and a
//! small in-memory pool for machines without one.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use kiln_db::{Inventory, InventoryView, Store};
use kiln_types::MacAddress;
use kiln_types::node::Node;
use tokio::net::UdpSocket;

use crate::config::{DhcpConfig, DhcpMode};
use crate::decide::{Binding, NodeBoot, client_mac, decide};
use crate::leases::{LeaseLog, now_unix};
use crate::pool::{Lease, Pool, PoolContext, PoolRequest};

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
    leases: Arc<dyn kiln_types::lease::LeaseLookup>,
}

impl DhcpHandle {
    /// Who holds which of the pool's addresses, for the HTTP side's address rule.
    pub fn lease_lookup(&self) -> Arc<dyn kiln_types::lease::LeaseLookup> {
        Arc::clone(&self.leases)
    }
}

impl kiln_types::lease::LeaseLookup for Server {
    fn leased_address(&self, mac: MacAddress) -> Option<Ipv4Addr> {
        let pool = self.pool.as_ref()?.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.lease_of(&mac).filter(|lease| lease.expires > now_unix()).map(|lease| lease.address)
    }
}

impl Drop for DhcpHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Server {
    config: DhcpConfig,
    inventory: Arc<Inventory>,
    store: Store,
    /// `None` without a configured pool; leases persisted by [`LeaseLog`] in batches.
    pool: Option<Mutex<Pool>>,
    enrolling: Mutex<HashSet<MacAddress>>,
    leases: Option<LeaseLog>,
}

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
    let mut pool = config.pool.map(|(first, last)| Pool::new(first, last));
    let mut tasks = Vec::new();
    let leases = match &config.lease_file {
        Some(path) => {
            let lease_error = |source| DhcpError::Leases { path: path.clone(), source };
            let live = crate::leases::load(path, now_unix()).map_err(lease_error)?;
            crate::leases::compact(path, &live).map_err(lease_error)?;
            tracing::info!(leases = live.len(), path = %path.display(), "DHCP leases restored");
            if let Some(pool) = &mut pool {
                pool.restore(live.into_iter().map(|(mac, (address, expires))| (mac, Lease { address, expires })));
            }
            let (log, writer) = LeaseLog::start(path.clone()).map_err(lease_error)?;
            tasks.push(writer);
            Some(log)
        }
        None => None,
    };
    let server = Arc::new(Server { config, inventory, store, pool: pool.map(Mutex::new), enrolling: Mutex::default(), leases });
    tasks.push(tokio::spawn(serve(Arc::clone(&server), socket, Port::Dhcp)));
    if let Some(pxe_socket) = pxe_socket {
        tasks.push(tokio::spawn(serve(Arc::clone(&server), pxe_socket, Port::Pxe)));
    }
    Ok(DhcpHandle { tasks, leases: server })
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
        if node.is_none() && self.config.auto_enroll && kind == MessageType::Discover && mac.is_unicast() {
            self.enroll(mac);
        }
        let binding = self.binding(&view, mac, node.map(|node| &**node), kind, &request);
        let node_boot = NodeBoot { secure_boot: node.is_some_and(|node| node.secure_boot()) };
        let answer = decide(&request, &self.config, binding.as_ref(), node_boot)?;
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
    fn binding(&self, view: &InventoryView, mac: MacAddress, node: Option<&Node>, kind: MessageType, request: &Message) -> Option<Binding> {
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
            return self.pool_address(view, mac, kind, request).map(|address| Binding { address, hostname });
        }
        self.pool_address(view, mac, kind, request).map(|address| Binding { address, hostname: None })
    }

    /// The pool's decision for a machine without a reservation, persisted when it changes
    /// a lease. Addresses the inventory reserves for nodes are never handed out.
    fn pool_address(&self, view: &InventoryView, mac: MacAddress, kind: MessageType, request: &Message) -> Option<Ipv4Addr> {
        let pool = self.pool.as_ref()?;
        let pool_request = match kind {
            MessageType::Discover => PoolRequest::Discover,
            MessageType::Request => PoolRequest::Request {
                requested: match request.opts().get(OptionCode::RequestedIpAddress) {
                    Some(DhcpOption::RequestedIpAddress(address)) => *address,
                    _ => request.ciaddr(),
                },
            },
            MessageType::Release => PoolRequest::Release,
            MessageType::Decline => PoolRequest::Decline,
            _ => PoolRequest::Other,
        };
        let reserved = |address: Ipv4Addr| view.is_assigned(&std::net::IpAddr::V4(address));
        let context = PoolContext { now: now_unix(), lease_seconds: self.config.lease_seconds, reserved: &reserved };
        let answer = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).decide(mac, pool_request, &context);
        if let (Some(change), Some(leases)) = (answer.change, &self.leases) {
            leases.record(change.mac, change.lease.address, change.lease.expires);
        }
        answer.address
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
            match server.store.enroll_discovered(mac, server.config.enrolment).await {
                Ok(kiln_db::Enrolment::Refused(reason)) => tracing::debug!(%mac, %reason, "unknown machine not enrolled"),
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
