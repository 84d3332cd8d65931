//! Bearer tokens: 256 random bits, shown once, stored only as a SHA-256 hash.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Every Kiln token starts with this, so secret scanners and people can recognise one.
pub const TOKEN_PREFIX: &str = "kiln_";

/// A new random token secret.
pub fn mint_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The form a token is stored and looked up in. A fast hash is right here (unlike passwords):
/// the secret has 256 bits of entropy, so there is nothing to brute-force.
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_distinct_and_prefixed() {
        let (a, b) = (mint_token(), mint_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
