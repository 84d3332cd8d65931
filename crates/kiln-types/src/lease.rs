//! The addresses Kiln's own DHCP server has handed out, as the HTTP side asks about them.
//! A boot request names its machine by MAC, and a MAC is no secret: what makes a request
//! the machine's own is that it comes from the address Kiln gave that MAC (or the node's
//! reserved address).

use std::net::Ipv4Addr;

use crate::MacAddress;

/// Who holds which address now, by MAC.
pub trait LeaseLookup: Send + Sync {
    /// The address leased (or, for a minute, offered) to `mac`, if any.
    fn leased_address(&self, mac: MacAddress) -> Option<Ipv4Addr>;
}
