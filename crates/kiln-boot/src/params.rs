//! Which of OpenCHAMI's BSS-style boot parameter entries applies to a booting machine. The
//! entries themselves (wire input, validation, validated shape) live in `kiln-types`.

use kiln_types::MacAddress;
use kiln_types::node::Node;

pub use kiln_types::boot::{BootParams, BootParamsInput, BootTarget, DEFAULT_HOST, InvalidBootParams, TEMPLATE_VARIABLES};

/// The targets that name a machine, most specific first: the booting MAC, any other MAC of
/// the node, its name and xname, its NID, its groups in order, and finally `Default`.
pub fn lookup_order(mac: MacAddress, node: Option<&Node>) -> Vec<BootTarget> {
    let mut order = vec![BootTarget::Mac(mac)];
    if let Some(node) = node {
        order.extend(node.interfaces.iter().filter(|i| i.mac_addr != mac).map(|i| BootTarget::Mac(i.mac_addr)));
        order.push(BootTarget::Host(node.name.clone()));
        if let Some(xname) = &node.xname {
            order.push(BootTarget::Host(xname.clone()));
        }
        if let Some(nid) = node.nid {
            order.push(BootTarget::Nid(nid));
        }
        order.extend(node.groups.iter().map(|group| BootTarget::Group(group.clone())));
    }
    order.push(BootTarget::Host(DEFAULT_HOST.to_owned()));
    order
}
