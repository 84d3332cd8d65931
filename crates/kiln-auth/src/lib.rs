//! Kiln's authentication and authorization pieces that need no database: API token minting and
//! hashing, the per-request [`AuthContext`] that handlers take as an argument, and the
//! [`SecretBox`] that encrypts BMC passwords and other secrets at rest.

mod context;
mod secret;
mod token;

pub use context::{AuthContext, Denied, ProjectScope};
pub use secret::{SecretBox, SecretError};
pub use token::{TOKEN_PREFIX, hash_token, mint_token};
