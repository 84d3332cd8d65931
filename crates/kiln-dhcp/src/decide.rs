//! The DHCP protocol logic: what to answer to one request. No IO and no state: the server
//! looks the client up first and passes what it found as a [`Binding`].

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use kiln_types::MacAddress;

use crate::config::{DhcpConfig, DhcpMode};

/// What the server knows of a client: the address it may have and its host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub address: Ipv4Addr,
    pub hostname: Option<String>,
}

/// What the inventory says of how the client's node boots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeBoot {
    /// Marked for Secure Boot: an x64 UEFI PXE client gets shim, not iPXE (which no Secure
    /// Boot firmware with Microsoft's keys runs).
    pub secure_boot: bool,
}

/// What a booting client should load next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootChoice {
    /// A file name on Kiln's TFTP server (next-server is this server).
    Tftp(String),
    /// A URL (iPXE scripts, UEFI HTTP boot).
    Http(String),
}

/// The client's hardware address, if it is Ethernet-shaped.
pub fn client_mac(request: &Message) -> Option<MacAddress> {
    // hlen first: dhcproto's chaddr() slices by hlen and panics when a packet claims more
    // than the 16 bytes the field has (found by the lab's hostile-client test).
    if request.hlen() != 6 {
        return None;
    }
    let chaddr = request.chaddr();
    (chaddr.len() >= 6).then(|| MacAddress([chaddr[0], chaddr[1], chaddr[2], chaddr[3], chaddr[4], chaddr[5]]))
}

fn vendor_class(request: &Message) -> Option<&[u8]> {
    match request.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(bytes)) => Some(bytes),
        _ => None,
    }
}

fn architecture(request: &Message) -> Option<u16> {
    match request.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => Some(u16::from(*arch)),
        _ => None,
    }
}

fn is_ipxe(request: &Message) -> bool {
    // iPXE sends the bare string "iPXE" as its user class (not RFC 3004's framing).
    matches!(request.opts().get(OptionCode::UserClass), Some(DhcpOption::UserClass(bytes)) if bytes.windows(4).any(|w| w == b"iPXE"))
}

/// Chooses the boot file by client kind (RFC 4578 architecture, vendor and user class). A
/// client that is already iPXE gets its HTTP boot script, so it never loads iPXE again.
pub fn boot_choice(request: &Message, config: &DhcpConfig, mac: MacAddress, node: NodeBoot) -> Option<BootChoice> {
    if is_ipxe(request) {
        return Some(BootChoice::Http(format!("{}/boot/v1/bootscript?mac={mac}", config.http_base_url)));
    }
    let vendor = vendor_class(request).unwrap_or_default();
    let arch = architecture(request);
    let file = |arch: Option<u16>| match arch {
        Some(11) | Some(19) => &config.boot_files.uefi_arm64,
        Some(6) | Some(7) | Some(9) | Some(16) => &config.boot_files.uefi_x64,
        _ => &config.boot_files.bios,
    };
    if vendor.starts_with(b"HTTPClient") {
        return Some(BootChoice::Http(format!("{}/boot/ipxe/{}", config.http_base_url, file(arch))));
    }
    if vendor.starts_with(b"PXEClient") || arch.is_some() {
        if node.secure_boot && matches!(arch, Some(7) | Some(9)) {
            return Some(BootChoice::Tftp(config.boot_files.uefi_x64_secure_boot.clone()));
        }
        return Some(BootChoice::Tftp(file(arch).clone()));
    }
    None
}

/// The answer to `request`, or `None` when the server should stay silent.
pub fn decide(request: &Message, config: &DhcpConfig, binding: Option<&Binding>, node: NodeBoot) -> Option<Message> {
    if request.opcode() != Opcode::BootRequest {
        return None;
    }
    let mac = client_mac(request)?;
    let kind = request.opts().msg_type()?;
    match config.mode {
        DhcpMode::Authoritative => authoritative(request, config, binding, mac, kind, node),
        DhcpMode::Proxy => proxy(request, config, mac, kind, node),
    }
}

fn authoritative(
    request: &Message,
    config: &DhcpConfig,
    binding: Option<&Binding>,
    mac: MacAddress,
    kind: MessageType,
    node: NodeBoot,
) -> Option<Message> {
    match kind {
        MessageType::Discover => {
            let binding = binding?;
            Some(reply(request, config, MessageType::Offer, binding.address, Some(binding), mac, node))
        }
        MessageType::Request => {
            if let Some(DhcpOption::ServerIdentifier(server)) = request.opts().get(OptionCode::ServerIdentifier)
                && *server != config.server_address
            {
                return None; // The client took another server's offer.
            }
            let requested = match request.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(address)) => *address,
                _ => request.ciaddr(),
            };
            match binding {
                Some(binding) if binding.address == requested => {
                    Some(reply(request, config, MessageType::Ack, binding.address, Some(binding), mac, node))
                }
                // We know this client and it asks for another address (it moved, or its
                // reservation changed): tell it so, so it starts over at once.
                Some(_) if config.contains(requested) || requested.is_unspecified() => Some(nak(request, config)),
                _ => None,
            }
        }
        MessageType::Inform => {
            let mut answer = reply(request, config, MessageType::Ack, Ipv4Addr::UNSPECIFIED, binding, mac, node);
            answer.opts_mut().remove(OptionCode::AddressLeaseTime);
            answer.opts_mut().remove(OptionCode::Renewal);
            answer.opts_mut().remove(OptionCode::Rebinding);
            Some(answer)
        }
        _ => None, // DECLINE and RELEASE change lease state only; they get no answer.
    }
}

/// ProxyDHCP (PXE specification, RFC 4578): answer PXE clients with boot information only.
fn proxy(request: &Message, config: &DhcpConfig, mac: MacAddress, kind: MessageType, node: NodeBoot) -> Option<Message> {
    let pxe = vendor_class(request).is_some_and(|vendor| vendor.starts_with(b"PXEClient")) || is_ipxe(request);
    if !pxe {
        return None;
    }
    let answer_kind = match kind {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => MessageType::Ack,
        _ => return None,
    };
    let mut answer = base_reply(request, config, answer_kind, Ipv4Addr::UNSPECIFIED);
    answer.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    // PXE discovery control = 8: boot from the file named here, skip the boot server dance.
    answer.opts_mut().insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    set_boot(&mut answer, request, config, mac, node);
    Some(answer)
}

fn base_reply(request: &Message, config: &DhcpConfig, kind: MessageType, yiaddr: Ipv4Addr) -> Message {
    let mut answer = Message::default();
    answer
        .set_opcode(Opcode::BootReply)
        .set_htype(request.htype())
        .set_xid(request.xid())
        .set_flags(request.flags())
        .set_chaddr(request.chaddr())
        .set_giaddr(request.giaddr())
        .set_ciaddr(request.ciaddr())
        .set_yiaddr(yiaddr)
        .set_siaddr(config.server_address);
    answer.opts_mut().insert(DhcpOption::MessageType(kind));
    answer.opts_mut().insert(DhcpOption::ServerIdentifier(config.server_address));
    answer
}

fn set_boot(answer: &mut Message, request: &Message, config: &DhcpConfig, mac: MacAddress, node: NodeBoot) {
    let Some(choice) = boot_choice(request, config, mac, node) else { return };
    let file = match choice {
        BootChoice::Tftp(file) => file,
        BootChoice::Http(url) => {
            if vendor_class(request).is_some_and(|vendor| vendor.starts_with(b"HTTPClient")) {
                // UEFI HTTP boot only takes an offer that says it is for HTTPClient.
                answer.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
            }
            url
        }
    };
    if vendor_class(request).is_some_and(|vendor| vendor.starts_with(b"PXEClient")) {
        answer.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        // PXE discovery control = 8: boot the file named in this offer. Without it UEFI PXE
        // (EDK2) takes a PXEClient offer for one that needs a boot server discovery.
        answer.opts_mut().insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    // The `file` header field holds 128 bytes; option 67 carries longer names.
    if file.len() < 128 {
        answer.set_fname_str(&file);
    }
    answer.opts_mut().insert(DhcpOption::BootfileName(file.into_bytes()));
}

fn reply(
    request: &Message,
    config: &DhcpConfig,
    kind: MessageType,
    yiaddr: Ipv4Addr,
    binding: Option<&Binding>,
    mac: MacAddress,
    node: NodeBoot,
) -> Message {
    let mut answer = base_reply(request, config, kind, yiaddr);
    let options = answer.opts_mut();
    options.insert(DhcpOption::AddressLeaseTime(config.lease_seconds));
    options.insert(DhcpOption::Renewal(config.lease_seconds / 2));
    options.insert(DhcpOption::Rebinding(config.lease_seconds / 8 * 7));
    options.insert(DhcpOption::SubnetMask(config.netmask()));
    if let Some(router) = config.router {
        options.insert(DhcpOption::Router(vec![router]));
    }
    if !config.dns_servers.is_empty() {
        options.insert(DhcpOption::DomainNameServer(config.dns_servers.clone()));
    }
    if let Some(domain) = &config.domain {
        options.insert(DhcpOption::DomainName(domain.clone()));
    }
    if let Some(hostname) = binding.and_then(|binding| binding.hostname.clone()) {
        options.insert(DhcpOption::Hostname(hostname));
    }
    set_boot(&mut answer, request, config, mac, node);
    answer
}

fn nak(request: &Message, config: &DhcpConfig) -> Message {
    let mut answer = base_reply(request, config, MessageType::Nak, Ipv4Addr::UNSPECIFIED);
    answer.set_siaddr(Ipv4Addr::UNSPECIFIED).set_ciaddr(Ipv4Addr::UNSPECIFIED);
    // A NAK must reach a client that has no address: always broadcast.
    answer.set_flags(Flags::default().set_broadcast());
    answer
}

/// One fuzzing step: decode `bytes` and decide an answer under a fixed configuration, with
/// and without a reservation, in both modes. Used by `fuzz/` and by the corpus replay test.
pub fn fuzz_one(bytes: &[u8]) {
    use dhcproto::Decodable as _;
    // dhcproto has debug assertions that malformed input trips (BulkLeaseQuery option
    // lengths, found by this fuzzer); the server catches decoder panics the same way.
    let decoded = std::panic::catch_unwind(|| Message::decode(&mut dhcproto::Decoder::new(bytes)));
    let Ok(Ok(request)) = decoded else { return };
    let binding = Binding { address: Ipv4Addr::new(10, 77, 0, 11), hostname: Some("nid001".into()) };
    for mode in [DhcpMode::Authoritative, DhcpMode::Proxy] {
        let config = DhcpConfig {
            mode,
            interface: "fuzz0".into(),
            server_address: Ipv4Addr::new(10, 77, 0, 1),
            subnet: Ipv4Addr::new(10, 77, 0, 0),
            prefix_length: 24,
            router: None,
            dns_servers: vec![],
            domain: None,
            lease_seconds: 600,
            pool: None,
            hostname_prefix: "nid".into(),
            nid_length: 3,
            boot_files: Default::default(),
            http_base_url: "http://10.77.0.1:8080".into(),
            auto_enroll: false,
            enrolment: kiln_db::EnrolmentLimits::default(),
            port: 67,
            lease_file: None,
        };
        for reservation in [None, Some(&binding)] {
            if let Some(answer) = decide(&request, &config, reservation, NodeBoot { secure_boot: reservation.is_some() }) {
                let mut encoded = Vec::new();
                let _ = dhcproto::Encodable::encode(&answer, &mut dhcproto::Encoder::new(&mut encoded));
            }
        }
    }
}

#[cfg(test)]
mod tests;
