//! Kiln's DHCPv4 server.
//!
//! [`decide`] is the whole protocol logic, a pure function of a request, the configuration
//! and what the inventory knows of the client; [`server`] only moves bytes between a socket
//! bound to one interface and that function. [`pool`] decides, as a pure state machine,
//! which address a machine without a reservation gets.

pub mod config;
pub mod decide;
pub mod leases;
pub mod pool;
pub mod server;

pub use config::{DhcpConfig, DhcpMode};
pub use decide::{Binding, BootChoice, NodeBoot, decide};
pub use server::{DhcpHandle, start};
