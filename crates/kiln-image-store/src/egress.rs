//! Where the server may fetch from when a user asks it to import a URL: not its own
//! loopback, link-local or cloud-metadata addresses, private networks or the networks it
//! has an address on, unless the operator allows the network (`import_allowed_networks`).
//! Every address is checked after DNS resolution, for the first request and each redirect,
//! so that a name that resolves inside, or a public server that redirects inside, is
//! refused just like an address written in the URL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The addresses imports may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Networks the operator allows although they would be refused (a mirror on the site's
    /// own network, a test server on loopback).
    pub allowed: Vec<IpNet>,
    /// The networks of the server's own interfaces.
    pub own_networks: Vec<IpNet>,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EgressRefusal {
    #[error("a loopback address")]
    Loopback,
    #[error("an unspecified address")]
    Unspecified,
    #[error("a link-local address (cloud metadata services live there)")]
    LinkLocal,
    #[error("a multicast or broadcast address")]
    Multicast,
    #[error("a private network's address")]
    Private,
    #[error("an address on one of the server's own networks")]
    OwnNetwork,
}

/// An import's address was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} ({address}) is {reason}, which imports may not reach; an operator can allow it with [images] import_allowed_networks")]
pub struct EgressRefused {
    pub host: String,
    pub address: IpAddr,
    #[source]
    pub reason: EgressRefusal,
}

impl EgressPolicy {
    /// The policy with the networks of this machine's interfaces as its own.
    pub fn with_local_networks(allowed: Vec<IpNet>) -> EgressPolicy {
        EgressPolicy { allowed, own_networks: local_networks() }
    }

    /// Whether an import may reach `address`.
    pub fn check(&self, address: IpAddr) -> Result<(), EgressRefusal> {
        // An IPv4 address carried in IPv6 (mapped, compatible, NAT64, 6to4) reaches that
        // IPv4 address, and is judged as it.
        let address = match address {
            IpAddr::V6(v6) => embedded_ipv4(v6).map_or(address, IpAddr::V4),
            v4 => v4,
        };
        if self.allowed.iter().any(|network| network.contains(&address)) {
            return Ok(());
        }
        let refusal = match address {
            IpAddr::V4(v4) => v4_refusal(v4),
            IpAddr::V6(v6) => v6_refusal(v6),
        };
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        if self.own_networks.iter().any(|network| network.contains(&address)) {
            return Err(EgressRefusal::OwnNetwork);
        }
        Ok(())
    }

    /// The refusal, if any, for `host` reached at `address`.
    pub fn check_host(&self, host: &str, address: IpAddr) -> Result<(), EgressRefused> {
        self.check(address).map_err(|reason| EgressRefused { host: host.to_owned(), address, reason })
    }
}

/// The IPv4 address an IPv6 address stands for: `::ffff:a.b.c.d` (mapped), `::a.b.c.d`
/// (compatible), `64:ff9b::a.b.c.d` and `64:ff9b:1::/48` (NAT64), `2002:aabb:ccdd::` (6to4).
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = address.segments();
    let octets = address.octets();
    let last_four = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    if let Some(mapped) = address.to_ipv4_mapped() {
        return Some(mapped);
    }
    match segments {
        [0, 0, 0, 0, 0, 0, _, _] if !address.is_loopback() && !address.is_unspecified() => Some(last_four),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last_four),
        [0x64, 0xff9b, 1, ..] => Some(last_four),
        [0x2002, high, low, ..] => Some(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))),
        _ => None,
    }
}

fn v4_refusal(address: Ipv4Addr) -> Option<EgressRefusal> {
    let [first, second, ..] = address.octets();
    if address.is_loopback() {
        Some(EgressRefusal::Loopback)
    } else if address.is_unspecified() || first == 0 {
        Some(EgressRefusal::Unspecified)
    } else if address.is_link_local() {
        Some(EgressRefusal::LinkLocal)
    } else if address.is_multicast() || address.is_broadcast() || first >= 240 {
        Some(EgressRefusal::Multicast)
    } else if address.is_private() || (first == 100 && (64..128).contains(&second)) {
        // RFC 1918, and the carrier-grade NAT range (RFC 6598).
        Some(EgressRefusal::Private)
    } else {
        None
    }
}

fn v6_refusal(address: Ipv6Addr) -> Option<EgressRefusal> {
    let first = address.segments()[0];
    if address.is_loopback() {
        Some(EgressRefusal::Loopback)
    } else if address.is_unspecified() {
        Some(EgressRefusal::Unspecified)
    } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
        // Link-local, and the deprecated site-local fec0::/10.
        Some(EgressRefusal::LinkLocal)
    } else if address.is_multicast() {
        Some(EgressRefusal::Multicast)
    } else if first & 0xfe00 == 0xfc00 {
        // Unique local addresses (fd00:ec2::254 is a cloud's metadata service).
        Some(EgressRefusal::Private)
    } else {
        None
    }
}

/// The networks of this machine's interfaces (`getifaddrs`), so that imports cannot reach
/// the provisioning network's BMCs and services through the server.
fn local_networks() -> Vec<IpNet> {
    let mut networks = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; on failure it is
    // left null and nothing is read.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        tracing::warn!("listing the server's interfaces failed; imports are refused only the usual internal ranges");
        return networks;
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let interface = unsafe { &*entry };
        // SAFETY: the address and mask, when set, point at sockaddrs of the family they say.
        if let (Some(address), Some(mask)) = unsafe { (socket_ip(interface.ifa_addr), socket_ip(interface.ifa_netmask)) } {
            let prefix = match mask {
                IpAddr::V4(mask) => u32::from(mask).count_ones() as u8,
                IpAddr::V6(mask) => u128::from(mask).count_ones() as u8,
            };
            if let Ok(network) = IpNet::new(address, prefix) {
                networks.push(network.trunc());
            }
        }
        entry = interface.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    networks
}

/// The IP address of a `sockaddr`, for the IPv4 and IPv6 families.
///
/// # Safety
/// `address` is null or points at a sockaddr whose family field says what follows.
unsafe fn socket_ip(address: *const libc::sockaddr) -> Option<IpAddr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: per the contract, the family tells the layout.
    unsafe {
        match i32::from((*address).sa_family) {
            libc::AF_INET => {
                let v4 = &*(address as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let v6 = &*(address as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

/// reqwest's resolver under the policy: names are resolved by the system, and only the
/// addresses the policy permits are given to the connection.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    pub policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|address| match policy.check_host(&host, address.ip()) {
                    Ok(()) => true,
                    Err(error) => {
                        refused.get_or_insert(error);
                        false
                    }
                })
                .collect();
            match (permitted.is_empty(), refused) {
                (true, Some(refused)) => Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The literal IP address a URL's host is, if it is one (those never reach the resolver).
pub fn literal_address(url: &reqwest::Url) -> Option<IpAddr> {
    url.host_str()?.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// An HTTP client for imports that reaches only what `policy` permits, on the first request
/// and on every redirect (at most ten).
pub fn import_client(policy: Arc<EgressPolicy>, builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
    let redirects = Arc::clone(&policy);
    let redirect = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("more than ten redirects");
        }
        let url = attempt.url().clone();
        match literal_address(&url).map(|address| redirects.check_host(url.host_str().unwrap_or_default(), address)) {
            Some(Err(refused)) => attempt.error(refused),
            _ => attempt.follow(),
        }
    });
    // No proxy from the environment: a proxy would resolve and connect on the server's
    // behalf, past the policy.
    builder.no_proxy().redirect(redirect).dns_resolver(Arc::new(PolicyResolver { policy })).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], own: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allowed: allowed.iter().map(|text| text.parse().unwrap()).collect(),
            own_networks: own.iter().map(|text| text.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_taken() {
        let policy = policy(&[], &["10.77.0.0/24", "203.0.113.0/24"]);
        let check = |text: &str| policy.check(text.parse().unwrap());
        for (address, refusal) in [
            ("127.0.0.1", EgressRefusal::Loopback),
            ("127.8.9.10", EgressRefusal::Loopback),
            ("::1", EgressRefusal::Loopback),
            ("::ffff:127.0.0.1", EgressRefusal::Loopback),
            ("0.0.0.0", EgressRefusal::Unspecified),
            ("169.254.169.254", EgressRefusal::LinkLocal),
            ("fe80::1", EgressRefusal::LinkLocal),
            ("fd00:ec2::254", EgressRefusal::Private),
            ("10.1.2.3", EgressRefusal::Private),
            ("172.16.0.1", EgressRefusal::Private),
            ("192.168.1.1", EgressRefusal::Private),
            ("100.64.0.1", EgressRefusal::Private),
            ("224.0.0.1", EgressRefusal::Multicast),
            ("255.255.255.255", EgressRefusal::Multicast),
            ("203.0.113.7", EgressRefusal::OwnNetwork),
            ("64:ff9b::a00:1", EgressRefusal::Private),
            ("64:ff9b::7f00:1", EgressRefusal::Loopback),
            ("64:ff9b:1::a9fe:a9fe", EgressRefusal::LinkLocal),
            ("2002:a00:1::1", EgressRefusal::Private),
            ("::10.0.0.1", EgressRefusal::Private),
            ("fec0::1", EgressRefusal::LinkLocal),
        ] {
            assert_eq!(check(address), Err(refusal), "{address}");
        }
        for address in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert_eq!(check(address), Ok(()), "{address}");
        }
    }

    #[test]
    fn an_allowed_network_is_reached_even_when_internal() {
        let policy = policy(&["127.0.0.1/32", "10.20.0.0/16"], &["10.20.0.0/24"]);
        assert_eq!(policy.check("127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(policy.check("127.0.0.2".parse().unwrap()), Err(EgressRefusal::Loopback), "only what is allowed");
        assert_eq!(policy.check("10.20.0.5".parse().unwrap()), Ok(()), "allowed wins over the server's own network");
    }

    #[test]
    fn this_machine_has_networks_of_its_own() {
        // Loopback at least, on every Linux machine.
        assert!(local_networks().iter().any(|network| network.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST))));
    }
}
