//! HPE/Cray component names for nodes: `x<cabinet>c<chassis>s<slot>b<bmc>n<node>`.

use std::fmt;
use std::str::FromStr;

/// A validated node xname such as `x1000c0s0b0n0`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Xname {
    text: String,
    pub cabinet: u32,
    pub chassis: u32,
    pub slot: u32,
    pub bmc: u32,
    pub node: u32,
}

/// The text was not a node xname.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a node xname (expected x<cabinet>c<chassis>s<slot>b<bmc>n<node>, e.g. x1000c0s0b0n0)")]
pub struct InvalidXname {
    pub text: String,
}

impl Xname {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Xname {
    type Err = InvalidXname;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidXname { text: text.to_owned() };
        let mut rest = text;
        let mut numbers = [0u32; 5];
        for (letter, number) in ['x', 'c', 's', 'b', 'n'].into_iter().zip(numbers.iter_mut()) {
            rest = rest.strip_prefix(letter).ok_or_else(invalid)?;
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            // Leading zeros would let two spellings name one component.
            if digits == 0 || digits > 9 || (digits > 1 && rest.starts_with('0')) {
                return Err(invalid());
            }
            *number = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
        }
        if !rest.is_empty() {
            return Err(invalid());
        }
        let [cabinet, chassis, slot, bmc, node] = numbers;
        Ok(Xname { text: text.to_owned(), cabinet, chassis, slot, bmc, node })
    }
}

impl fmt::Display for Xname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Xname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_node_xnames() {
        let xname: Xname = "x1000c0s7b1n0".parse().unwrap();
        assert_eq!((xname.cabinet, xname.chassis, xname.slot, xname.bmc, xname.node), (1000, 0, 7, 1, 0));
    }

    #[test]
    fn rejects_other_shapes() {
        for text in ["", "x1000", "x1000c0s0b0", "x1000c0s0b0n", "x1000c0s0b0n0p0", "X1000c0s0b0n0", "x01c0s0b0n0", "xac0s0b0n0", "node01"]
        {
            assert!(text.parse::<Xname>().is_err(), "{text} should be rejected");
        }
    }
}
