//! Kiln's vocabulary: identifiers, MAC addresses, xnames and the JSON shapes the API speaks.
//!
//! Nothing here does IO. Inputs arrive as loose "wire" structs (strings, options) so that a
//! bad value can be reported with the path of the field that holds it; `TryFrom` turns them
//! into validated specs that the store accepts without re-checking.

#[macro_use]
mod words;

pub mod api;
pub mod bmc;
pub mod boot;
pub mod cloud_init;
pub mod discovery;
pub mod image;
pub mod ironic;
pub mod lease;
pub mod mac;
pub mod node;
pub mod provision;
pub mod scoped_name;
pub mod static_network;
pub mod validate;
pub mod xname;

pub use mac::MacAddress;
pub use node::{BmcDriver, ProvisionState};
pub use validate::InvalidField;
pub use xname::Xname;

/// The string shown in place of any secret the API holds (BMC passwords and the like).
pub const SECRET_MASK: &str = "******";

/// An error and its causes on one line, `outer: inner: innermost`, for logs and replies
/// (errors keep their causes as `#[source]`; this is where they are put into words).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
