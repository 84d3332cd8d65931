//! Ethernet MAC addresses, parsed leniently and always printed as lowercase `aa:bb:cc:dd:ee:ff`.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet hardware address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// Whether the address can name one network card: not a group (multicast or broadcast:
    /// the low bit of the first octet) and not all zero.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

/// The text was not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a MAC address (expected six hex pairs like 52:54:00:be:ef:01)")]
pub struct InvalidMac {
    pub text: String,
}

impl FromStr for MacAddress {
    type Err = InvalidMac;

    /// Accepts `:`, `-` or `.`-free forms as written by switches, BMCs and dnsmasq:
    /// `52:54:00:BE:EF:01`, `52-54-00-be-ef-01`, `525400beef01`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMac { text: text.to_owned() };
        let hex: String = if text.len() == 17 {
            let separator = text.as_bytes()[2];
            if separator != b':' && separator != b'-' {
                return Err(invalid());
            }
            let mut digits = String::with_capacity(12);
            for (index, byte) in text.bytes().enumerate() {
                if index % 3 == 2 {
                    if byte != separator {
                        return Err(invalid());
                    }
                } else {
                    digits.push(byte as char);
                }
            }
            digits
        } else if text.len() == 12 {
            text.to_owned()
        } else {
            return Err(invalid());
        };
        let mut octets = [0u8; 6];
        for (index, octet) in octets.iter_mut().enumerate() {
            let pair = hex.get(index * 2..index * 2 + 2).ok_or_else(invalid)?;
            *octet = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
        }
        Ok(MacAddress(octets))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for MacAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_spellings_to_one_canonical_form() {
        for text in ["52:54:00:BE:EF:01", "52-54-00-be-ef-01", "525400beef01"] {
            let mac: MacAddress = text.parse().unwrap();
            assert_eq!(mac.to_string(), "52:54:00:be:ef:01");
        }
    }

    #[test]
    fn rejects_malformed_addresses() {
        for text in ["", "52:54:00:be:ef", "52:54:00:be:ef:0g", "52:54-00:be:ef:01", "zz", "52:54:00:be:ef:01:02"] {
            assert!(text.parse::<MacAddress>().is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn only_addresses_of_one_card_are_unicast() {
        let unicast = |text: &str| text.parse::<MacAddress>().unwrap().is_unicast();
        assert!(unicast("52:54:00:be:ef:01"));
        assert!(unicast("02:00:00:00:00:01"), "locally administered is still unicast");
        assert!(!unicast("ff:ff:ff:ff:ff:ff"), "broadcast");
        assert!(!unicast("00:00:00:00:00:00"));
        assert!(!unicast("01:00:5e:00:00:01"), "IPv4 multicast");
        assert!(!unicast("33:33:00:00:00:01"), "IPv6 multicast");
    }
}
