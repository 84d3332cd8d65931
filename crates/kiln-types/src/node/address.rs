//! An interface address checked: a named address as OpenCHAMI writes it, and the static
//! configuration (prefix length, gateway, DNS servers, VLAN) of one a node sets itself.

use std::net::IpAddr;

use super::IpAddrEntry;
use crate::validate::{self, InvalidField};

/// One address checked: the static fields need a prefix length, a gateway and DNS servers
/// are addresses of the same family, the gateway lies inside the subnet.
pub(super) fn validate_address(field: &str, entry: &IpAddrEntry) -> Result<IpAddrEntry, InvalidField> {
    let name = validate::single_line(&format!("{field}.name"), &entry.name, 63)?;
    let address = validate::ip(&format!("{field}.ip_addr"), &entry.ip_addr)?;
    let same_family = |what: &str, value: &str| -> Result<IpAddr, InvalidField> {
        let other = validate::ip(&format!("{field}.{what}"), value)?;
        if other.is_ipv4() != address.is_ipv4() {
            return Err(InvalidField::new(format!("{field}.{what}"), format!("{other} is not of the same family as {address}")));
        }
        Ok(other)
    };
    let gateway = entry.gateway.as_deref().map(|gateway| same_family("gateway", gateway)).transpose()?;
    let dns_servers = entry.dns_servers.iter().map(|server| same_family("dns_servers", server)).collect::<Result<Vec<_>, _>>()?;
    if let Some(vlan) = entry.vlan
        && !(1..=4094).contains(&vlan)
    {
        return Err(InvalidField::new(format!("{field}.vlan"), format!("{vlan} is not a VLAN ID (1 to 4094)")));
    }
    match entry.prefix_length {
        Some(prefix) => {
            let longest = if address.is_ipv4() { 32 } else { 128 };
            if prefix == 0 || prefix > longest {
                return Err(InvalidField::new(
                    format!("{field}.prefix_length"),
                    format!("{prefix} is not a prefix length (1 to {longest})"),
                ));
            }
            if let IpAddr::V4(v4) = address
                && prefix <= 30
                && let host_bits = v4.to_bits() & (u32::MAX >> prefix)
                && (host_bits == 0 || host_bits == u32::MAX >> prefix)
            {
                return Err(InvalidField::new(
                    format!("{field}.ip_addr"),
                    format!("{address} is the network or broadcast address of its /{prefix}, not a host's"),
                ));
            }
            // An IPv6 router is often named by its link-local address, which is on every link.
            let link_local = matches!(gateway, Some(IpAddr::V6(v6)) if v6.is_unicast_link_local());
            if let Some(gateway) = gateway
                && (gateway == address || !(link_local || same_subnet(address, gateway, prefix)))
            {
                return Err(InvalidField::new(
                    format!("{field}.gateway"),
                    format!("{gateway} is not another address of {address}/{prefix}'s subnet"),
                ));
            }
        }
        None if gateway.is_some() || !dns_servers.is_empty() || entry.vlan.is_some() => {
            return Err(InvalidField::new(
                format!("{field}.prefix_length"),
                "missing: a gateway, DNS servers or a VLAN make a static address, which needs its prefix length",
            ));
        }
        None => {}
    }
    Ok(IpAddrEntry {
        name,
        ip_addr: address.to_string(),
        prefix_length: entry.prefix_length,
        gateway: gateway.map(|gateway| gateway.to_string()),
        dns_servers: dns_servers.iter().map(IpAddr::to_string).collect(),
        vlan: entry.vlan,
    })
}

/// Whether `a` and `b` share their first `prefix` bits.
fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    let bits = |address: IpAddr| match address {
        IpAddr::V4(v4) => (u128::from(v4.to_bits()) << 96, 32u32),
        IpAddr::V6(v6) => (v6.to_bits(), 128u32),
    };
    let ((a, width), (b, _)) = (bits(a), bits(b));
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        return true;
    }
    (a ^ b) >> (128 - prefix) == 0
}
