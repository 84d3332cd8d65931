//! Microversions: Ironic's API changes in numbered steps (`1.N`); a client names the one it
//! speaks in `X-OpenStack-Ironic-API-Version`, and the server answers which range it
//! implements in every response. A version outside the range is 406, with the range, which
//! is how Ironic's clients negotiate down.

use std::fmt;

/// A microversion `1.N` (Ironic's API has only ever had major version 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u32);

/// The oldest version answered, and the version of a request that names none (Ironic's rule).
pub const MIN: Microversion = Microversion(1);
/// The newest version answered: the one the current python-ironicclient asks for.
pub const MAX: Microversion = Microversion(115);

/// The header a client names its version in, and the two the server answers its range in.
pub const VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Version";
pub const MIN_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Minimum-Version";
pub const MAX_VERSION_HEADER: &str = "X-OpenStack-Ironic-API-Maximum-Version";

impl fmt::Display for Microversion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "1.{}", self.0)
    }
}

impl Microversion {
    /// Whether this version has what version `1.minor` added.
    pub fn at_least(self, minor: u32) -> bool {
        self.0 >= minor
    }
}

/// Why a requested version is not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Well formed, outside [`MIN`]..=[`MAX`]: 406.
    #[error("version {requested} was requested, but the supported range is {MIN} to {MAX}")]
    Unsupported { requested: String },
    /// Not a version at all: 400.
    #[error("invalid value '{header}' for {VERSION_HEADER}: expected 'latest' or '1.N'")]
    Malformed { header: String },
}

/// The version a request negotiates: none named is [`MIN`], `latest` is [`MAX`], `1.N` is
/// itself when in range.
pub fn negotiate(header: Option<&str>) -> Result<Microversion, VersionError> {
    let Some(text) = header.map(str::trim) else { return Ok(MIN) };
    if text.eq_ignore_ascii_case("latest") {
        return Ok(MAX);
    }
    let malformed = || VersionError::Malformed { header: text.to_owned() };
    let (major, minor) = text.split_once('.').ok_or_else(malformed)?;
    let (major, minor): (u32, u32) = (major.parse().map_err(|_| malformed())?, minor.parse().map_err(|_| malformed())?);
    let version = Microversion(minor);
    if major != 1 || version < MIN || version > MAX {
        return Err(VersionError::Unsupported { requested: text.to_owned() });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_as_ironic_does() {
        assert_eq!(negotiate(None), Ok(MIN));
        assert_eq!(negotiate(Some("latest")), Ok(MAX));
        assert_eq!(negotiate(Some("1.46")), Ok(Microversion(46)));
        assert_eq!(negotiate(Some(" 1.115 ")), Ok(MAX));
        for unsupported in ["1.116", "1.0", "2.1"] {
            assert!(matches!(negotiate(Some(unsupported)), Err(VersionError::Unsupported { .. })), "{unsupported}");
        }
        for malformed in ["1", "one.two", "1.x", ""] {
            assert!(matches!(negotiate(Some(malformed)), Err(VersionError::Malformed { .. })), "{malformed}");
        }
    }
}
