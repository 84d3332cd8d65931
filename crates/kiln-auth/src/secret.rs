//! Encryption of secrets at rest (BMC passwords, agent tokens for boot scripts, cloud-init
//! node secrets) with a server key.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Sealed values start with this so a future key or cipher change can be recognised.
const SEALED_PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading the secret key {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the secret key {path}")]
    WriteKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret key {path} must be exactly 32 bytes, found {found}")]
    KeyLength { path: PathBuf, found: usize },
    #[error("the secret key {path} is readable by others (mode {mode:o}); chmod 600 it")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("a stored secret could not be decrypted (wrong server key, or the value was altered)")]
    Decrypt,
}

/// Seals and opens secrets with XChaCha20-Poly1305 (random 192-bit nonces, so no nonce
/// bookkeeping is needed across replicas that share the key).
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    pub fn from_key(key: [u8; 32]) -> Self {
        SecretBox { cipher: XChaCha20Poly1305::new(&key.into()) }
    }

    /// Loads the key at `path`, creating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        match fs::read(path) {
            Ok(bytes) => {
                let mode =
                    fs::metadata(path).map_err(|source| SecretError::ReadKey { path: path.to_owned(), source })?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(SecretError::KeyPermissions { path: path.to_owned(), mode: mode & 0o777 });
                }
                let key: [u8; 32] =
                    bytes.as_slice().try_into().map_err(|_| SecretError::KeyLength { path: path.to_owned(), found: bytes.len() })?;
                Ok(Self::from_key(key))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).expect("the operating system's random source failed");
                let write = || -> std::io::Result<()> {
                    // create_new: two servers starting on one data directory must not each
                    // write a key and then disagree.
                    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
                    file.write_all(&key)?;
                    file.sync_all()
                };
                match write() {
                    Ok(()) => Ok(Self::from_key(key)),
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_create(path),
                    Err(source) => Err(SecretError::WriteKey { path: path.to_owned(), source }),
                }
            }
            Err(source) => Err(SecretError::ReadKey { path: path.to_owned(), source }),
        }
    }

    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory input");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        format!("{SEALED_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let encoded = sealed.strip_prefix(SEALED_PREFIX).ok_or(SecretError::Decrypt)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| SecretError::Decrypt)?;
        if bytes.len() < 24 {
            return Err(SecretError::Decrypt);
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        let plaintext = self.cipher.decrypt(XNonce::from_slice(nonce), ciphertext).map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(plaintext).map_err(|_| SecretError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let secret_box = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = secret_box.seal("hunter2");
        assert!(!sealed.contains("hunter2"));
        let reloaded = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(reloaded.open(&sealed).unwrap(), "hunter2");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(reloaded.open(std::str::from_utf8(&tampered).unwrap()).is_err());
        assert!(SecretBox::from_key([7; 32]).open(&sealed).is_err());
    }

    #[test]
    fn refuses_a_key_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        SecretBox::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(SecretBox::load_or_create(&path), Err(SecretError::KeyPermissions { .. })));
    }
}
