//! The core of Kiln's Ironic-compatible API, without IO: what OpenStack Ironic's clients
//! (the `baremetal` command, openstacksdk) send and expect, and how it maps onto Kiln.
//!
//! - [`version`]: microversions, and what a request's `X-OpenStack-Ironic-API-Version`
//!   negotiates;
//! - [`states`]: Kiln's lifecycle states under Ironic's names, and Ironic's provision verbs
//!   as Kiln requests;
//! - [`driver`]: Ironic's `driver` and `driver_info` as Kiln's BMC, and back;
//! - [`documents`]: the node and port documents, with `fields` selection and `links`;
//! - [`images`]: the names of the Kiln images that cache what is given by URL;
//! - [`patch`]: the JSON patches (RFC 6902) that `baremetal node set/unset` send;
//! - [`error`]: Ironic's error body.
//!
//! The handlers that use it are in `kiln-api` (`ironic.rs`).

pub mod documents;
pub mod driver;
pub mod error;
pub mod images;
pub mod patch;
pub mod states;
pub mod version;
