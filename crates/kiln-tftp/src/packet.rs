//! TFTP packets and option negotiation, as pure functions.

use std::collections::BTreeMap;

pub const OPCODE_RRQ: u16 = 1;
pub const OPCODE_WRQ: u16 = 2;
pub const OPCODE_DATA: u16 = 3;
pub const OPCODE_ACK: u16 = 4;
pub const OPCODE_ERROR: u16 = 5;
pub const OPCODE_OACK: u16 = 6;

/// RFC 1350 error codes.
pub const ERROR_NOT_DEFINED: u16 = 0;
pub const ERROR_FILE_NOT_FOUND: u16 = 1;
pub const ERROR_ACCESS_VIOLATION: u16 = 2;
pub const ERROR_ILLEGAL_OPERATION: u16 = 4;
pub const ERROR_OPTION_REFUSED: u16 = 8;

/// Limits of the negotiable options. Windows above 64 blocks buy nothing on a LAN and let
/// one client flood the server's send buffer.
pub const MIN_BLOCK_SIZE: usize = 8;
pub const MAX_BLOCK_SIZE: usize = 65464;
pub const DEFAULT_BLOCK_SIZE: usize = 512;
pub const MAX_WINDOW_SIZE: u16 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Read { filename: String, mode: String, options: BTreeMap<String, String> },
    Write { filename: String },
    Data { block: u16, data: Vec<u8> },
    Ack { block: u16 },
    Error { code: u16, message: String },
    OptionAck { options: BTreeMap<String, String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet shorter than 4 bytes")]
    TooShort,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("request fields are not NUL-terminated strings")]
    MalformedRequest,
}

fn strings(bytes: &[u8]) -> Result<Vec<String>, PacketError> {
    // Each field ends with NUL; the last byte must be NUL too.
    if bytes.last() != Some(&0) {
        return Err(PacketError::MalformedRequest);
    }
    bytes[..bytes.len() - 1]
        .split(|byte| *byte == 0)
        .map(|field| String::from_utf8(field.to_vec()).map_err(|_| PacketError::MalformedRequest))
        .collect()
}

impl Packet {
    pub fn parse(bytes: &[u8]) -> Result<Packet, PacketError> {
        if bytes.len() < 4 {
            return Err(PacketError::TooShort);
        }
        let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
        let body = &bytes[2..];
        match opcode {
            OPCODE_RRQ | OPCODE_WRQ => {
                let fields = strings(body)?;
                if fields.len() < 2 || fields.len() % 2 != 0 {
                    return Err(PacketError::MalformedRequest);
                }
                let filename = fields[0].clone();
                if opcode == OPCODE_WRQ {
                    return Ok(Packet::Write { filename });
                }
                let options = fields[2..].chunks(2).map(|pair| (pair[0].to_ascii_lowercase(), pair[1].clone())).collect();
                Ok(Packet::Read { filename, mode: fields[1].to_ascii_lowercase(), options })
            }
            OPCODE_DATA => Ok(Packet::Data { block: u16::from_be_bytes([body[0], body[1]]), data: body[2..].to_vec() }),
            OPCODE_ACK => Ok(Packet::Ack { block: u16::from_be_bytes([body[0], body[1]]) }),
            OPCODE_ERROR => {
                let message =
                    body[2..].split(|byte| *byte == 0).next().map(|m| String::from_utf8_lossy(m).into_owned()).unwrap_or_default();
                Ok(Packet::Error { code: u16::from_be_bytes([body[0], body[1]]), message })
            }
            OPCODE_OACK => {
                let fields = strings(body)?;
                if fields.len() % 2 != 0 {
                    return Err(PacketError::MalformedRequest);
                }
                Ok(Packet::OptionAck { options: fields.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect() })
            }
            other => Err(PacketError::UnknownOpcode(other)),
        }
    }
}

pub fn encode_data(block: u16, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&OPCODE_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

pub fn encode_error(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OPCODE_ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.push(0);
    out
}

pub fn encode_oack(options: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = OPCODE_OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// What a transfer will use after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub block_size: usize,
    pub window_size: u16,
    pub timeout_seconds: u8,
    /// The options to acknowledge (empty: no OACK, start with data).
    pub acknowledged: BTreeMap<String, String>,
}

/// Negotiates the client's options (RFC 2347: unknown or unacceptable options are left out
/// of the OACK rather than refused). `file_size` answers `tsize`.
pub fn negotiate(requested: &BTreeMap<String, String>, file_size: u64, max_block_size: usize, default_timeout: u8) -> Negotiated {
    let mut negotiated =
        Negotiated { block_size: DEFAULT_BLOCK_SIZE, window_size: 1, timeout_seconds: default_timeout, acknowledged: BTreeMap::new() };
    for (name, value) in requested {
        match name.as_str() {
            "blksize" => {
                if let Ok(size) = value.parse::<usize>()
                    && size >= MIN_BLOCK_SIZE
                {
                    let size = size.min(MAX_BLOCK_SIZE).min(max_block_size);
                    negotiated.block_size = size;
                    negotiated.acknowledged.insert(name.clone(), size.to_string());
                }
            }
            "tsize" => {
                negotiated.acknowledged.insert(name.clone(), file_size.to_string());
            }
            "timeout" => {
                if let Ok(seconds) = value.parse::<u8>()
                    && seconds >= 1
                {
                    negotiated.timeout_seconds = seconds;
                    negotiated.acknowledged.insert(name.clone(), seconds.to_string());
                }
            }
            "windowsize" => {
                if let Ok(size) = value.parse::<u32>()
                    && size >= 1
                {
                    let size = size.min(u32::from(MAX_WINDOW_SIZE)) as u16;
                    negotiated.window_size = size;
                    negotiated.acknowledged.insert(name.clone(), size.to_string());
                }
            }
            _ => {}
        }
    }
    negotiated
}

/// One fuzzing step: parse `bytes` and, for a read request, negotiate its options. Used by
/// `fuzz/` and by the corpus replay test.
pub fn fuzz_one(bytes: &[u8]) {
    if let Ok(Packet::Read { options, .. }) = Packet::parse(bytes) {
        let negotiated = negotiate(&options, 1 << 20, MAX_BLOCK_SIZE, 2);
        assert!((MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&negotiated.block_size));
        assert!((1..=MAX_WINDOW_SIZE).contains(&negotiated.window_size));
        let _ = encode_oack(&negotiated.acknowledged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(fields: &[&str]) -> Vec<u8> {
        let mut bytes = OPCODE_RRQ.to_be_bytes().to_vec();
        for field in fields {
            bytes.extend_from_slice(field.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn parses_requests_with_options() {
        let packet = Packet::parse(&rrq(&["undionly.kpxe", "octet", "BLKSIZE", "1468", "tsize", "0"])).unwrap();
        let Packet::Read { filename, mode, options } = packet else { panic!() };
        assert_eq!((filename.as_str(), mode.as_str()), ("undionly.kpxe", "octet"));
        assert_eq!(options.get("blksize").map(String::as_str), Some("1468"));
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        let cases: [&[u8]; 7] =
            [b"", b"\x00", b"\x00\x01", b"\x00\x01abc", b"\x00\x01a\x00", b"\x00\x09\x00\x00", b"\x00\x01\xff\xfe\x00octet\x00"];
        for bytes in cases {
            assert!(Packet::parse(bytes).is_err(), "{bytes:?}");
        }
        assert_eq!(Packet::parse(&rrq(&["a", "octet", "blksize"])), Err(PacketError::MalformedRequest));
    }

    #[test]
    fn negotiation_clamps_and_ignores_bad_values() {
        let request = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let cases = [
            (request(&[("blksize", "0")]), 512, None),
            (request(&[("blksize", "7")]), 512, None),
            (request(&[("blksize", "8")]), 8, Some("8")),
            (request(&[("blksize", "65465")]), 65464, Some("65464")),
            (request(&[("blksize", "garbage")]), 512, None),
            (request(&[("blksize", "1468")]), 1468, Some("1468")),
        ];
        for (options, size, acknowledged) in cases {
            let negotiated = negotiate(&options, 100, 65464, 2);
            assert_eq!(negotiated.block_size, size, "{options:?}");
            assert_eq!(negotiated.acknowledged.get("blksize").map(String::as_str), acknowledged);
        }
        let huge_window = negotiate(&request(&[("windowsize", "65535"), ("tsize", "0"), ("timeout", "0")]), 1234, 65464, 2);
        assert_eq!(huge_window.window_size, MAX_WINDOW_SIZE);
        assert_eq!(huge_window.acknowledged.get("tsize").map(String::as_str), Some("1234"));
        assert_eq!(huge_window.timeout_seconds, 2, "timeout 0 is refused");
    }
}
