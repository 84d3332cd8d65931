//! DHCP settings, validated.

use std::net::Ipv4Addr;

/// Whether Kiln hands out addresses or only boot information.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// Kiln owns the subnet: reservations from the inventory, an optional pool.
    Authoritative,
    /// Another server hands out addresses; Kiln answers PXE clients with boot information.
    Proxy,
}

/// Boot file names by client kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootFiles {
    pub bios: String,
    pub uefi_x64: String,
    pub uefi_arm64: String,
    /// For x64 UEFI nodes marked for Secure Boot: Debian's Microsoft-signed shim, which
    /// loads `grubx64.efi` (signed network GRUB) from the same TFTP directory.
    pub uefi_x64_secure_boot: String,
}

/// `snponly.efi` rather than `ipxe.efi` for UEFI: it drives the NIC through the firmware's
/// own network stack, and Debian ships it as a regular file, whereas its `ipxe.efi` is a
/// symlink out of /usr/lib/ipxe that a confined TFTP root rightly refuses to follow.
impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_x64: "snponly.efi".into(),
            uefi_arm64: "ipxe-arm64.efi".into(),
            uefi_x64_secure_boot: kiln_types::boot::SECURE_BOOT_SHIM_TFTP_PATH.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DhcpConfig {
    pub mode: DhcpMode,
    /// The interface the server listens on and answers through.
    pub interface: String,
    /// This server's address on that interface: server identifier and TFTP next-server.
    pub server_address: Ipv4Addr,
    pub subnet: Ipv4Addr,
    pub prefix_length: u8,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_seconds: u32,
    /// Addresses for machines without a reservation (inclusive range).
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// OpenCHAMI-style host names: this prefix and the NID padded to `nid_length` digits.
    pub hostname_prefix: String,
    pub nid_length: usize,
    pub boot_files: BootFiles,
    /// Where iPXE fetches its script, e.g. `http://10.77.0.1:8080` (the public URL).
    pub http_base_url: String,
    /// Add unknown MACs to the inventory as `discovered` nodes.
    pub auto_enroll: bool,
    /// How many unknown machines auto-enrolment takes.
    pub enrolment: kiln_db::EnrolmentLimits,
    /// UDP port to listen on (67 except in tests).
    pub port: u16,
    /// Where pool leases are persisted; `None` keeps them in memory only.
    pub lease_file: Option<std::path::PathBuf>,
}

impl DhcpConfig {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix_length)).unwrap_or(0))
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(address) & mask == u32::from(self.subnet) & mask
    }
}
