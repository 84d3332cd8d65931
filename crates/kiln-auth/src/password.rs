//! People's passwords: argon2id with a random salt, stored as a PHC string (`$argon2id$…`,
//! parameters included, so they can be raised later without breaking stored ones), checked
//! in constant time; and the lockout that follows failed attempts, so that a password cannot
//! be guessed at the speed of a network.

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};

/// The shortest password taken, in characters.
pub const PASSWORD_MIN_CHARS: usize = 8;
/// The longest, in bytes: hashing is costly, and nobody types more.
pub const PASSWORD_MAX_BYTES: usize = 1024;
/// Failed attempts in a row before the account waits.
const FREE_ATTEMPTS: u32 = 5;
const FIRST_LOCKOUT: Duration = Duration::from_secs(30);
const LONGEST_LOCKOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password needs at least {PASSWORD_MIN_CHARS} characters")]
    TooShort,
    #[error("a password may have at most {PASSWORD_MAX_BYTES} bytes")]
    TooLong,
    #[error("hashing the password")]
    Hash {
        #[source]
        source: argon2::password_hash::Error,
    },
}

/// Argon2id with the crate's defaults (OWASP's: 19 MiB, two passes, one lane).
fn hasher() -> argon2::Argon2<'static> {
    argon2::Argon2::default()
}

/// Checks `password` against the policy and hashes it with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(PasswordError::TooLong);
    }
    if password.chars().count() < PASSWORD_MIN_CHARS {
        return Err(PasswordError::TooShort);
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the operating system's random source failed");
    let salt = SaltString::encode_b64(&salt).map_err(|source| PasswordError::Hash { source })?;
    let hash = hasher().hash_password(password.as_bytes(), &salt).map_err(|source| PasswordError::Hash { source })?;
    Ok(hash.to_string())
}

/// Whether `password` is the one `stored` was made from. A stored value that does not parse
/// matches nothing. Costly by design: call it off the async runtime.
pub fn verify_password(stored: &str, password: &str) -> bool {
    if password.len() > PASSWORD_MAX_BYTES {
        return false;
    }
    PasswordHash::new(stored).is_ok_and(|hash| hasher().verify_password(password.as_bytes(), &hash).is_ok())
}

/// How long an account waits after `failures` failed attempts in a row: not at all for the
/// first few, then 30 s, doubling with each further failure up to 15 minutes.
pub fn lockout_after(failures: u32) -> Option<Duration> {
    let beyond = failures.checked_sub(FREE_ATTEMPTS)?;
    let doubled = FIRST_LOCKOUT.saturating_mul(1u32.checked_shl(beyond.min(16)).unwrap_or(u32::MAX));
    Some(doubled.min(LONGEST_LOCKOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_and_a_wrong_one_does_not() {
        let stored = hash_password("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(verify_password(&stored, "correct horse"));
        assert!(!verify_password(&stored, "correct horsE"));
        assert_ne!(stored, hash_password("correct horse").unwrap(), "a fresh salt each time");
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn the_policy_names_what_is_wrong() {
        assert_eq!(hash_password("short").unwrap_err().to_string(), "a password needs at least 8 characters");
        assert_eq!(hash_password(&"x".repeat(2000)).unwrap_err().to_string(), "a password may have at most 1024 bytes");
    }

    #[test]
    fn lockouts_start_after_five_failures_and_double_up_to_fifteen_minutes() {
        let waits: Vec<Option<u64>> = (0..14).map(|failures| lockout_after(failures).map(|wait| wait.as_secs())).collect();
        expect_test::expect![[r#"
            [
                None,
                None,
                None,
                None,
                None,
                Some(
                    30,
                ),
                Some(
                    60,
                ),
                Some(
                    120,
                ),
                Some(
                    240,
                ),
                Some(
                    480,
                ),
                Some(
                    900,
                ),
                Some(
                    900,
                ),
                Some(
                    900,
                ),
                Some(
                    900,
                ),
            ]
        "#]]
        .assert_debug_eq(&waits);
        assert_eq!(lockout_after(u32::MAX), Some(LONGEST_LOCKOUT));
    }
}
