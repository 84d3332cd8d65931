//! Kiln's authentication and authorization pieces that need no database: API token minting and
//! hashing, the per-request [`AuthContext`] that handlers take as an argument, and the
//! [`SecretBox`] that encrypts BMC passwords and other secrets at rest, and people's
//! passwords (argon2id) with the lockout that follows failed attempts.

mod context;
mod password;
mod secret;
mod token;

pub use context::{AuthContext, Denied, ProjectScope};
pub use password::{PASSWORD_MAX_BYTES, PASSWORD_MIN_CHARS, PasswordError, hash_password, lockout_after, verify_password};
pub use secret::{SecretBox, SecretError};
pub use token::{TOKEN_PREFIX, hash_token, mint_token};
