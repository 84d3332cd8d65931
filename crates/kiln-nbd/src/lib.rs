//! The NBD handshake (the "fixed newstyle" negotiation of the NBD protocol, as nbd's
//! `doc/proto.md` specifies it) as pure encoders and decoders: Kiln's network-disk gateway
//! answers nodes with them and asks its export processes with them, and the node agent's NBD
//! client uses them before it hands the socket to the kernel. No IO here, except the
//! blocking client negotiation over any `Read + Write`, which tests drive with buffers.
//!
//! Only the handshake is decoded: once it is over, Kiln's gateway copies the transmission
//! phase byte for byte, and the kernel speaks it on the node.

use std::io::{Read, Write};

/// "NBDMAGIC": the first eight bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": the newstyle greeting's second word, and every option request's first.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Every option reply's first word.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;

/// Transmission flags a server announces for an export.
pub const TRANSMISSION_HAS_FLAGS: u16 = 1;
pub const TRANSMISSION_READ_ONLY: u16 = 2;
pub const TRANSMISSION_SEND_FLUSH: u16 = 4;

/// The longest option request Kiln reads: names are short, and a peer that announces more is
/// refused rather than buffered.
pub const MAX_OPTION_LENGTH: u32 = 8 * 1024;
/// The longest export name (the protocol's own limit).
pub const MAX_NAME_LENGTH: usize = 4096;

/// Option requests, by their code in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionCode {
    ExportName,
    Abort,
    List,
    StartTls,
    Info,
    Go,
    StructuredReply,
    /// Any other code: answered "unsupported".
    Other(u32),
}

impl OptionCode {
    pub fn from_wire(code: u32) -> OptionCode {
        match code {
            1 => OptionCode::ExportName,
            2 => OptionCode::Abort,
            3 => OptionCode::List,
            5 => OptionCode::StartTls,
            6 => OptionCode::Info,
            7 => OptionCode::Go,
            8 => OptionCode::StructuredReply,
            other => OptionCode::Other(other),
        }
    }

    pub fn to_wire(self) -> u32 {
        match self {
            OptionCode::ExportName => 1,
            OptionCode::Abort => 2,
            OptionCode::List => 3,
            OptionCode::StartTls => 5,
            OptionCode::Info => 6,
            OptionCode::Go => 7,
            OptionCode::StructuredReply => 8,
            OptionCode::Other(code) => code,
        }
    }
}

/// Option reply types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyType {
    Ack,
    Info,
    /// The option is not known or not supported.
    ErrorUnsupported,
    /// Refused by the server's policy (Kiln: the export is not this peer's).
    ErrorPolicy,
    ErrorInvalid,
    /// No such export.
    ErrorUnknown,
    /// Any other reply type (an error when its top bit is set).
    Other(u32),
}

const ERROR_BIT: u32 = 1 << 31;

impl ReplyType {
    pub fn from_wire(code: u32) -> ReplyType {
        match code {
            1 => ReplyType::Ack,
            3 => ReplyType::Info,
            code if code == ERROR_BIT | 1 => ReplyType::ErrorUnsupported,
            code if code == ERROR_BIT | 2 => ReplyType::ErrorPolicy,
            code if code == ERROR_BIT | 3 => ReplyType::ErrorInvalid,
            code if code == ERROR_BIT | 6 => ReplyType::ErrorUnknown,
            other => ReplyType::Other(other),
        }
    }

    pub fn to_wire(self) -> u32 {
        match self {
            ReplyType::Ack => 1,
            ReplyType::Info => 3,
            ReplyType::ErrorUnsupported => ERROR_BIT | 1,
            ReplyType::ErrorPolicy => ERROR_BIT | 2,
            ReplyType::ErrorInvalid => ERROR_BIT | 3,
            ReplyType::ErrorUnknown => ERROR_BIT | 6,
            ReplyType::Other(code) => code,
        }
    }

    pub fn is_error(self) -> bool {
        self.to_wire() & ERROR_BIT != 0
    }
}

/// What an export is, as a server announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub transmission_flags: u16,
}

/// An option request's header: its code and the length of the data that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub code: OptionCode,
    pub length: u32,
}

/// An option reply's header: the option it answers, its type and its data's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    pub option: OptionCode,
    pub reply: ReplyType,
    pub length: u32,
}

/// A decoded request for an export: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_INFO` or `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequest {
    pub name: String,
    /// The information types the client asked for (`NBD_OPT_INFO`/`GO` only).
    pub information: Vec<u16>,
}

/// What is wrong with the bytes a peer sent.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("the peer is not an NBD newstyle server (magic {magic:#018x}, option magic {option_magic:#018x})")]
    NotNewstyle { magic: u64, option_magic: u64 },
    #[error("the server does not offer the fixed newstyle negotiation (handshake flags {flags:#06x})")]
    NotFixedNewstyle { flags: u16 },
    #[error("an option request starts with {magic:#018x}, not IHAVEOPT")]
    BadOptionMagic { magic: u64 },
    #[error("an option reply starts with {magic:#018x}, not the reply magic")]
    BadReplyMagic { magic: u64 },
    #[error("option {code} announces {length} bytes, more than the {MAX_OPTION_LENGTH} taken")]
    OptionTooLong { code: u32, length: u32 },
    #[error("option data of {length} bytes is malformed: {what}")]
    MalformedOption { length: usize, what: &'static str },
    #[error("the export name is not UTF-8")]
    NameNotUtf8,
    #[error("the server refused the export ({reply:?}): {message}")]
    Refused { reply: ReplyType, message: String },
    #[error("the server answered the export request without describing the export")]
    NoExportInfo,
    #[error("the connection failed during the handshake")]
    Io(#[source] std::io::Error),
}

/// The server's first 18 bytes.
pub fn server_greeting(handshake_flags: u16) -> [u8; 18] {
    let mut bytes = [0u8; 18];
    bytes[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    bytes[8..16].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
    bytes[16..].copy_from_slice(&handshake_flags.to_be_bytes());
    bytes
}

/// Reads a server greeting: its handshake flags, if it offers the fixed newstyle.
pub fn decode_server_greeting(bytes: &[u8; 18]) -> Result<u16, NbdError> {
    let magic = u64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"));
    let option_magic = u64::from_be_bytes(bytes[8..16].try_into().expect("eight bytes"));
    if magic != NBD_MAGIC || option_magic != OPTION_MAGIC {
        return Err(NbdError::NotNewstyle { magic, option_magic });
    }
    let flags = u16::from_be_bytes([bytes[16], bytes[17]]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::NotFixedNewstyle { flags });
    }
    Ok(flags)
}

/// The client's flags, answering the greeting (four bytes; only the low two bits are defined).
pub fn client_flags(flags: u16) -> [u8; 4] {
    u32::from(flags).to_be_bytes()
}

pub fn decode_client_flags(bytes: &[u8; 4]) -> u16 {
    (u32::from_be_bytes(*bytes) & 0xffff) as u16
}

/// An option request: header and data.
pub fn option_request(code: OptionCode, data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + data.len());
    bytes.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&code.to_wire().to_be_bytes());
    bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// `NBD_OPT_GO` (or `NBD_OPT_INFO`) for `name`, asking for no particular information (the
/// server always sends the export's size and flags).
pub fn go_request(code: OptionCode, name: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(6 + name.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    option_request(code, &data)
}

/// Reads an option request's 16-byte header, refusing one that announces too much data.
pub fn decode_option_header(bytes: &[u8; 16]) -> Result<OptionHeader, NbdError> {
    let magic = u64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"));
    if magic != OPTION_MAGIC {
        return Err(NbdError::BadOptionMagic { magic });
    }
    let code = u32::from_be_bytes(bytes[8..12].try_into().expect("four bytes"));
    let length = u32::from_be_bytes(bytes[12..].try_into().expect("four bytes"));
    if length > MAX_OPTION_LENGTH {
        return Err(NbdError::OptionTooLong { code, length });
    }
    Ok(OptionHeader { code: OptionCode::from_wire(code), length })
}

/// The export a request names: `NBD_OPT_EXPORT_NAME`'s data is the bare name; `INFO` and
/// `GO` carry a length, the name and the information types asked for.
pub fn decode_export_request(code: OptionCode, data: &[u8]) -> Result<ExportRequest, NbdError> {
    let malformed = |what| NbdError::MalformedOption { length: data.len(), what };
    let (name, information) = match code {
        OptionCode::ExportName => (data, Vec::new()),
        OptionCode::Info | OptionCode::Go => {
            let length = data.get(..4).ok_or(malformed("no name length"))?;
            let length = u32::from_be_bytes(length.try_into().expect("four bytes")) as usize;
            let name = data.get(4..4 + length).ok_or(malformed("the name is longer than the data"))?;
            let count = data.get(4 + length..6 + length).ok_or(malformed("no count of information requests"))?;
            let count = u16::from_be_bytes([count[0], count[1]]) as usize;
            let requests = &data[6 + length..];
            if requests.len() != count * 2 {
                return Err(malformed("the information requests do not match their count"));
            }
            (name, requests.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect())
        }
        _ => return Err(malformed("not an export request")),
    };
    if name.len() > MAX_NAME_LENGTH {
        return Err(malformed("the name is longer than 4096 bytes"));
    }
    let name = std::str::from_utf8(name).map_err(|_| NbdError::NameNotUtf8)?.to_owned();
    Ok(ExportRequest { name, information })
}

/// An option reply: header and data.
pub fn option_reply(option: OptionCode, reply: ReplyType, data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(20 + data.len());
    bytes.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&option.to_wire().to_be_bytes());
    bytes.extend_from_slice(&reply.to_wire().to_be_bytes());
    bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// The answer to a granted `INFO` or `GO`: the export's size and flags (`NBD_INFO_EXPORT`),
/// then the acknowledgement.
pub fn export_granted(option: OptionCode, export: ExportInfo) -> Vec<u8> {
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&0u16.to_be_bytes());
    info.extend_from_slice(&export.size.to_be_bytes());
    info.extend_from_slice(&export.transmission_flags.to_be_bytes());
    let mut bytes = option_reply(option, ReplyType::Info, &info);
    bytes.extend(option_reply(option, ReplyType::Ack, &[]));
    bytes
}

/// The answer to a granted `NBD_OPT_EXPORT_NAME`: size, flags and, unless the client asked
/// for none, 124 zero bytes.
pub fn export_name_granted(export: ExportInfo, no_zeroes: bool) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(134);
    bytes.extend_from_slice(&export.size.to_be_bytes());
    bytes.extend_from_slice(&export.transmission_flags.to_be_bytes());
    if !no_zeroes {
        bytes.extend_from_slice(&[0u8; 124]);
    }
    bytes
}

pub fn decode_reply_header(bytes: &[u8; 20]) -> Result<ReplyHeader, NbdError> {
    let magic = u64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"));
    if magic != OPTION_REPLY_MAGIC {
        return Err(NbdError::BadReplyMagic { magic });
    }
    let option = u32::from_be_bytes(bytes[8..12].try_into().expect("four bytes"));
    let reply = u32::from_be_bytes(bytes[12..16].try_into().expect("four bytes"));
    let length = u32::from_be_bytes(bytes[16..].try_into().expect("four bytes"));
    if length > MAX_OPTION_LENGTH {
        return Err(NbdError::OptionTooLong { code: option, length });
    }
    Ok(ReplyHeader { option: OptionCode::from_wire(option), reply: ReplyType::from_wire(reply), length })
}

/// `NBD_INFO_EXPORT` from an `NBD_REP_INFO` reply's data; `None` for other information.
pub fn decode_export_info(data: &[u8]) -> Option<ExportInfo> {
    if data.len() != 12 || data[..2] != [0, 0] {
        return None;
    }
    let size = u64::from_be_bytes(data[2..10].try_into().expect("eight bytes"));
    Some(ExportInfo { size, transmission_flags: u16::from_be_bytes([data[10], data[11]]) })
}

/// Negotiates `name` with a server as a client, with `NBD_OPT_GO`, leaving `stream` at the
/// start of the transmission phase. Blocking; the agent's client and tests use it.
pub fn negotiate_as_client<S: Read + Write>(stream: &mut S, name: &str) -> Result<ExportInfo, NbdError> {
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).map_err(NbdError::Io)?;
    let server_flags = decode_server_greeting(&greeting)?;
    let flags = FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES);
    stream.write_all(&client_flags(flags)).map_err(NbdError::Io)?;
    stream.write_all(&go_request(OptionCode::Go, name)).map_err(NbdError::Io)?;
    stream.flush().map_err(NbdError::Io)?;
    let mut export = None;
    loop {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).map_err(NbdError::Io)?;
        let header = decode_reply_header(&header)?;
        let mut data = vec![0u8; header.length as usize];
        stream.read_exact(&mut data).map_err(NbdError::Io)?;
        match header.reply {
            ReplyType::Info => export = decode_export_info(&data).or(export),
            ReplyType::Ack => return export.ok_or(NbdError::NoExportInfo),
            reply if reply.is_error() => {
                return Err(NbdError::Refused { reply, message: String::from_utf8_lossy(&data).into_owned() });
            }
            // Replies a client may ignore.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
