//! Field-level validation shared by the API and static discovery, so errors name the field.

use std::net::IpAddr;

use crate::{MacAddress, Xname};

/// One input field failed validation; `field` is a path such as `interfaces[0].mac_addr`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidField { field: field.into(), message: message.into() }
    }

    /// Prefixes the field path, e.g. `mac_addr` inside `interfaces[2]`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// Names of nodes, groups, projects and users: what fits in a hostname label and a URL path.
/// A node's name: a [`name`] that does not look like a UUID, since a node is also found by
/// its id and a name shaped like another node's id would stand in for that node.
pub fn node_name(field: &str, value: &str) -> Result<String, InvalidField> {
    let name = name(field, value)?;
    let hex_groups: Vec<&str> = name.split('-').collect();
    let uuid_shaped = hex_groups.iter().map(|group| group.len()).eq([8, 4, 4, 4, 12])
        && hex_groups.iter().all(|group| group.bytes().all(|b| b.is_ascii_hexdigit()));
    if uuid_shaped {
        return Err(InvalidField::new(field, format!("'{value}' looks like a node id (a UUID); a node's name may not")));
    }
    Ok(name)
}

pub fn name(field: &str, value: &str) -> Result<String, InvalidField> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if valid {
        Ok(value.to_owned())
    } else {
        Err(InvalidField::new(
            field,
            format!("'{value}' is not a valid name (1-63 letters, digits, '-', '_' or '.', starting with a letter or digit)"),
        ))
    }
}

pub fn mac(field: &str, value: &str) -> Result<MacAddress, InvalidField> {
    value.parse().map_err(|error: crate::mac::InvalidMac| InvalidField::new(field, error.to_string()))
}

pub fn xname(field: &str, value: &str) -> Result<Xname, InvalidField> {
    value.parse().map_err(|error: crate::xname::InvalidXname| InvalidField::new(field, error.to_string()))
}

pub fn ip(field: &str, value: &str) -> Result<IpAddr, InvalidField> {
    value.parse().map_err(|_| InvalidField::new(field, format!("'{value}' is not an IPv4 or IPv6 address")))
}

/// Free text that ends up in tables and logs: one line, bounded.
pub fn single_line(field: &str, value: &str, max_len: usize) -> Result<String, InvalidField> {
    if value.len() > max_len {
        return Err(InvalidField::new(field, format!("longer than {max_len} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidField::new(field, "contains control characters or newlines"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_name_may_not_look_like_a_node_id() {
        assert!(node_name("name", "nid001").is_ok());
        assert!(node_name("name", "x1000c0s0b0n0").is_ok());
        let refused = node_name("name", "0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d10").unwrap_err();
        assert!(refused.message.contains("looks like a node id"), "{}", refused.message);
        assert!(node_name("name", "0b6c5f7e-3c1a-4b7e-9a55-5f9e6c1f2d1x").is_ok(), "not hex: not a UUID");
    }
}
