//! A node's static network configuration on a kernel command line, for boots without DHCP
//! (virtual media): written by the server into the medium's boot entry, read back by the
//! deploy ramdisk, and understood as written by dracut (a live image's own initramfs).
//!
//! The words are dracut's (`dracut.cmdline(7)`): `ifname=kiln0:<mac>` names the interface
//! by its MAC, `vlan=kiln0.<id>:kiln0` tags it, `ip=<address>::<gateway>:<netmask>:
//! <hostname>:<interface>:none` sets the address, one `nameserver=` per DNS server. IPv6
//! addresses go in brackets and their netmask is the prefix length.

use std::net::{IpAddr, Ipv4Addr};

use crate::MacAddress;
use crate::node::Node;

/// The interface name the arguments give the node's booting interface.
pub const INTERFACE_NAME: &str = "kiln0";

/// What a node needs to reach the server with no DHCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNetwork {
    /// The interface the configuration is for, found by its MAC.
    pub mac: MacAddress,
    pub address: IpAddr,
    pub prefix_length: u8,
    pub gateway: Option<IpAddr>,
    pub dns_servers: Vec<IpAddr>,
    pub vlan: Option<u16>,
    pub hostname: String,
}

/// Why a command line's static configuration cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaticNetworkError {
    #[error("'{word}' is not a static ip= argument (ip=<address>::<gateway>:<netmask>:<hostname>:<interface>:none)")]
    Malformed { word: String },
    #[error("'{word}' names interface {interface}, which no ifname= argument gives a MAC")]
    UnknownInterface { word: String, interface: String },
}

impl StaticNetwork {
    /// The node's static configuration: the first address with a prefix length on any of its
    /// interfaces (they were checked when stored).
    pub fn of_node(node: &Node) -> Option<StaticNetwork> {
        node.interfaces.iter().find_map(|interface| {
            let entry = interface.ip_addrs.iter().find(|entry| entry.prefix_length.is_some())?;
            Some(StaticNetwork {
                mac: interface.mac_addr,
                address: entry.ip_addr.parse().ok()?,
                prefix_length: entry.prefix_length?,
                gateway: entry.gateway.as_deref().and_then(|gateway| gateway.parse().ok()),
                dns_servers: entry.dns_servers.iter().filter_map(|server| server.parse().ok()).collect(),
                vlan: entry.vlan,
                hostname: node.name.clone(),
            })
        })
    }

    /// The interface the address goes on: `kiln0`, or `kiln0.<vlan>`.
    pub fn interface(&self) -> String {
        match self.vlan {
            Some(vlan) => format!("{INTERFACE_NAME}.{vlan}"),
            None => INTERFACE_NAME.to_owned(),
        }
    }

    /// The kernel command-line words that carry this configuration.
    pub fn kernel_arguments(&self) -> Vec<String> {
        let mut words = vec![format!("ifname={INTERFACE_NAME}:{}", self.mac)];
        if let Some(vlan) = self.vlan {
            words.push(format!("vlan={INTERFACE_NAME}.{vlan}:{INTERFACE_NAME}"));
        }
        let bracket = |address: IpAddr| match address {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let netmask = match self.address {
            IpAddr::V4(_) => Ipv4Addr::from_bits(u32::MAX.checked_shl(32 - u32::from(self.prefix_length.min(32))).unwrap_or(0)).to_string(),
            IpAddr::V6(_) => self.prefix_length.to_string(),
        };
        words.push(format!(
            "ip={}::{}:{netmask}:{}:{}:none",
            bracket(self.address),
            self.gateway.map(bracket).unwrap_or_default(),
            self.hostname,
            self.interface(),
        ));
        words.extend(self.dns_servers.iter().map(|server| format!("nameserver={server}")));
        words
    }

    /// The static configuration a command line carries, `None` when it has none (no `ip=`
    /// word, or `ip=dhcp` and the like).
    pub fn from_kernel_command_line(command_line: &str) -> Result<Option<StaticNetwork>, StaticNetworkError> {
        let mut interfaces: Vec<(&str, MacAddress)> = Vec::new();
        let mut vlans: Vec<(&str, &str)> = Vec::new();
        let mut dns_servers = Vec::new();
        let mut ip = None;
        for word in command_line.split_whitespace() {
            if let Some(value) = word.strip_prefix("ifname=") {
                if let Some((name, mac)) = value.split_once(':')
                    && let Ok(mac) = mac.parse()
                {
                    interfaces.push((name, mac));
                }
            } else if let Some(value) = word.strip_prefix("vlan=") {
                if let Some((name, physical)) = value.split_once(':') {
                    vlans.push((name, physical));
                }
            } else if let Some(value) = word.strip_prefix("nameserver=") {
                dns_servers.extend(value.parse::<IpAddr>().ok());
            } else if word.starts_with("ip=") {
                ip = Some(word);
            }
        }
        let Some(word) = ip else { return Ok(None) };
        let fields = split_fields(&word["ip=".len()..]);
        if fields.len() < 7 {
            // `ip=dhcp`, `ip=<interface>:dhcp` and the like: not a static configuration.
            return Ok(None);
        }
        let malformed = || StaticNetworkError::Malformed { word: word.to_owned() };
        if !matches!(fields[6], "none" | "off") {
            return Ok(None);
        }
        let address: IpAddr = unbracket(fields[0]).parse().map_err(|_| malformed())?;
        let gateway = match fields[2] {
            "" => None,
            text => Some(unbracket(text).parse::<IpAddr>().map_err(|_| malformed())?),
        };
        let prefix_length = match fields[3].parse::<Ipv4Addr>() {
            Ok(mask) if address.is_ipv4() => {
                let bits = mask.to_bits();
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(malformed());
                }
                bits.leading_ones() as u8
            }
            _ => fields[3].parse::<u8>().ok().filter(|prefix| *prefix <= if address.is_ipv4() { 32 } else { 128 }).ok_or_else(malformed)?,
        };
        let interface = fields[5];
        let (physical, vlan) = match vlans.iter().find(|(name, _)| *name == interface) {
            Some((name, physical)) => {
                let id = name.rsplit_once('.').and_then(|(_, id)| id.parse::<u16>().ok()).ok_or_else(malformed)?;
                (*physical, Some(id))
            }
            None => (interface, None),
        };
        let mac = interfaces
            .iter()
            .find(|(name, _)| *name == physical)
            .map(|(_, mac)| *mac)
            .ok_or_else(|| StaticNetworkError::UnknownInterface { word: word.to_owned(), interface: physical.to_owned() })?;
        Ok(Some(StaticNetwork { mac, address, prefix_length, gateway, dns_servers, vlan, hostname: fields[4].to_owned() }))
    }
}

/// `ip=`'s colon-separated fields, a bracketed IPv6 address kept whole.
fn split_fields(value: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut in_brackets = false;
    for (index, character) in value.char_indices() {
        match character {
            '[' => in_brackets = true,
            ']' => in_brackets = false,
            ':' if !in_brackets => {
                fields.push(&value[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    fields.push(&value[start..]);
    fields
}

fn unbracket(text: &str) -> &str {
    text.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn network(address: &str, prefix_length: u8, gateway: Option<&str>, vlan: Option<u16>) -> StaticNetwork {
        StaticNetwork {
            mac: "52:54:00:be:ef:41".parse().unwrap(),
            address: address.parse().unwrap(),
            prefix_length,
            gateway: gateway.map(|gateway| gateway.parse().unwrap()),
            dns_servers: vec!["10.77.0.1".parse().unwrap()],
            vlan,
            hostname: "nid041".to_owned(),
        }
    }

    #[test]
    fn arguments_are_dracuts_and_read_back_the_same() {
        let ipv4 = network("10.77.0.41", 24, Some("10.77.0.1"), None);
        expect![[r#"
            [
                "ifname=kiln0:52:54:00:be:ef:41",
                "ip=10.77.0.41::10.77.0.1:255.255.255.0:nid041:kiln0:none",
                "nameserver=10.77.0.1",
            ]
        "#]]
        .assert_debug_eq(&ipv4.kernel_arguments());
        let tagged = network("fd00:77::41", 64, Some("fd00:77::1"), Some(100));
        let tagged = StaticNetwork { dns_servers: vec![], ..tagged };
        expect![[r#"
            [
                "ifname=kiln0:52:54:00:be:ef:41",
                "vlan=kiln0.100:kiln0",
                "ip=[fd00:77::41]::[fd00:77::1]:64:nid041:kiln0.100:none",
            ]
        "#]]
        .assert_debug_eq(&tagged.kernel_arguments());
        for original in [ipv4, tagged, network("192.168.1.9", 30, None, Some(7))] {
            let line = format!("console=ttyS0 kiln.server=http://x {} quiet", original.kernel_arguments().join(" "));
            assert_eq!(StaticNetwork::from_kernel_command_line(&line), Ok(Some(original)), "{line}");
        }
    }

    #[test]
    fn command_lines_without_a_static_address_have_none_and_bad_ones_are_named() {
        for line in ["console=ttyS0", "ip=dhcp", "ip=eth0:dhcp", "root=live:http://x ip=dhcp rd.live.overlay.overlayfs=1"] {
            assert_eq!(StaticNetwork::from_kernel_command_line(line), Ok(None), "{line}");
        }
        let errors: Vec<String> = [
            "ifname=kiln0:52:54:00:be:ef:41 ip=10.77.0.400::10.77.0.1:255.255.255.0:h:kiln0:none",
            "ifname=kiln0:52:54:00:be:ef:41 ip=10.77.0.4::10.77.0.1:255.0.255.0:h:kiln0:none",
            "ip=10.77.0.4::10.77.0.1:24:h:eth9:none",
        ]
        .iter()
        .map(|line| StaticNetwork::from_kernel_command_line(line).unwrap_err().to_string())
        .collect();
        expect![[r#"
            [
                "'ip=10.77.0.400::10.77.0.1:255.255.255.0:h:kiln0:none' is not a static ip= argument (ip=<address>::<gateway>:<netmask>:<hostname>:<interface>:none)",
                "'ip=10.77.0.4::10.77.0.1:255.0.255.0:h:kiln0:none' is not a static ip= argument (ip=<address>::<gateway>:<netmask>:<hostname>:<interface>:none)",
                "'ip=10.77.0.4::10.77.0.1:24:h:eth9:none' names interface eth9, which no ifname= argument gives a MAC",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }
}
