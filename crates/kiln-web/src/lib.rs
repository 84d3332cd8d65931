//! The web console's pages and assets, without IO: each page is a pure function from what the
//! API answered (its own documents, already filtered by the caller's rights) to HTML.
//!
//! - [`pages`]: the views each page is rendered from, and [`Console::render`];
//! - [`assets`]: the stylesheet and the script, built into the binary, named by their
//!   content's digest so that browsers may keep them forever.
//!
//! Templates are minijinja's, with HTML escaping on for every value: a node's name or an
//! event's text is never markup. The handlers that fetch through the API and call this are in
//! `kiln-api` (`web/`).

pub mod assets;
pub mod pages;

pub use pages::{Console, Frame, Page, RenderError};
