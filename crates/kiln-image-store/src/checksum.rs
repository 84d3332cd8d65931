//! Checksums as users write them (`sha256:HEX`, or a bare hex digest), and a hasher that
//! computes SHA-256 (the blob's name) together with whatever algorithm the user gave.

use std::collections::BTreeMap;
use std::fmt;

use sha2::Digest as _;

/// The algorithms accepted for user-supplied checksums, as Ironic accepts hashlib's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DigestAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl DigestAlgorithm {
    pub const ALL: [DigestAlgorithm; 5] = [Self::Md5, Self::Sha1, Self::Sha256, Self::Sha384, Self::Sha512];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Self::Md5 => 32,
            Self::Sha1 => 40,
            Self::Sha256 => 64,
            Self::Sha384 => 96,
            Self::Sha512 => 128,
        }
    }
}

/// An expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: DigestAlgorithm,
    /// Lowercase hex.
    pub hex: String,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl std::str::FromStr for Checksum {
    type Err = String;

    /// `ALGORITHM:HEX`, or a bare hex digest whose length names the algorithm.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (algorithm, hex) = match text.split_once(':') {
            Some((name, hex)) => {
                let name = name.to_ascii_lowercase().replace('-', "");
                let algorithm = DigestAlgorithm::ALL
                    .into_iter()
                    .find(|algorithm| algorithm.as_str() == name)
                    .ok_or_else(|| format!("unknown checksum algorithm '{name}' (expected one of md5, sha1, sha256, sha384, sha512)"))?;
                (algorithm, hex)
            }
            None => {
                let algorithm = DigestAlgorithm::ALL
                    .into_iter()
                    .find(|algorithm| algorithm.hex_len() == text.len())
                    .ok_or_else(|| format!("'{text}' is not a checksum (expected ALGORITHM:HEX, e.g. sha256:…)"))?;
                (algorithm, text)
            }
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("'{hex}' is not a {} digest ({} hex digits)", algorithm.as_str(), algorithm.hex_len()));
        }
        Ok(Checksum { algorithm, hex: hex.to_ascii_lowercase() })
    }
}

#[derive(Clone)]
enum AnyHasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl AnyHasher {
    fn new(algorithm: DigestAlgorithm) -> Option<Self> {
        match algorithm {
            DigestAlgorithm::Md5 => Some(Self::Md5(md5::Md5::new())),
            DigestAlgorithm::Sha1 => Some(Self::Sha1(sha1::Sha1::new())),
            DigestAlgorithm::Sha256 => None,
            DigestAlgorithm::Sha384 => Some(Self::Sha384(sha2::Sha384::new())),
            DigestAlgorithm::Sha512 => Some(Self::Sha512(sha2::Sha512::new())),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Md5(hasher) => hasher.update(bytes),
            Self::Sha1(hasher) => hasher.update(bytes),
            Self::Sha384(hasher) => hasher.update(bytes),
            Self::Sha512(hasher) => hasher.update(bytes),
        }
    }

    fn finish(self) -> String {
        match self {
            Self::Md5(hasher) => hex::encode(hasher.finalize()),
            Self::Sha1(hasher) => hex::encode(hasher.finalize()),
            Self::Sha384(hasher) => hex::encode(hasher.finalize()),
            Self::Sha512(hasher) => hex::encode(hasher.finalize()),
        }
    }
}

/// SHA-256 always, plus one more algorithm if the user's checksum is in another. Cloning
/// keeps the state, so an upload can resume hashing where it stopped.
#[derive(Clone)]
pub struct MultiHasher {
    sha256: sha2::Sha256,
    extra: Option<(DigestAlgorithm, AnyHasher)>,
    bytes: u64,
}

/// What a [`MultiHasher`] computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256: String,
    pub bytes: u64,
    /// Every digest by algorithm name, SHA-256 included.
    pub all: BTreeMap<String, String>,
}

impl Digests {
    /// Whether the bytes match `expected`; the message names both digests when they do not.
    pub fn verify(&self, expected: &Checksum) -> Result<(), String> {
        match self.all.get(expected.algorithm.as_str()) {
            Some(actual) if *actual == expected.hex => Ok(()),
            Some(actual) => Err(format!("checksum mismatch: expected {expected}, got {}:{actual}", expected.algorithm.as_str())),
            None => Err(format!("no {} digest was computed", expected.algorithm.as_str())),
        }
    }
}

impl MultiHasher {
    pub fn new(also: Option<DigestAlgorithm>) -> Self {
        MultiHasher {
            sha256: sha2::Sha256::new(),
            extra: also.and_then(|algorithm| Some((algorithm, AnyHasher::new(algorithm)?))),
            bytes: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some((_, hasher)) = &mut self.extra {
            hasher.update(bytes);
        }
        self.bytes += bytes.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn finish(self) -> Digests {
        let sha256 = hex::encode(self.sha256.finalize());
        let mut all = BTreeMap::from([("sha256".to_owned(), sha256.clone())]);
        if let Some((algorithm, hasher)) = self.extra {
            all.insert(algorithm.as_str().to_owned(), hasher.finish());
        }
        Digests { sha256, bytes: self.bytes, all }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixed_and_bare_digests() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(format!("{}", sha.parse::<Checksum>().unwrap()), format!("sha256:{sha}"));
        assert_eq!("MD5:D41D8CD98F00B204E9800998ECF8427E".parse::<Checksum>().unwrap().algorithm, DigestAlgorithm::Md5);
        for (text, message) in [
            ("crc32:00", "unknown checksum algorithm 'crc32' (expected one of md5, sha1, sha256, sha384, sha512)"),
            ("sha256:abc", "'abc' is not a sha256 digest (64 hex digits)"),
            ("xyz", "'xyz' is not a checksum (expected ALGORITHM:HEX, e.g. sha256:…)"),
        ] {
            assert_eq!(text.parse::<Checksum>().unwrap_err(), message);
        }
    }

    #[test]
    fn hashes_with_sha256_and_the_users_algorithm() {
        let mut hasher = MultiHasher::new(Some(DigestAlgorithm::Md5));
        hasher.update(b"kiln");
        let digests = hasher.finish();
        assert_eq!(digests.bytes, 4);
        assert!(digests.verify(&"md5:3c6e5ac7bd3b2b7a1e4ecb2c5b4ea6e8".parse().unwrap()).is_err());
        let md5 = digests.all["md5"].clone();
        assert!(digests.verify(&format!("md5:{md5}").parse().unwrap()).is_ok());
        assert_eq!(digests.sha256.len(), 64);
    }
}
