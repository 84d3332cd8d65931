//! Byte snapshots of the handshake messages, and the client negotiation against scripted
//! server bytes.

use expect_test::expect;

use super::*;

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[test]
fn greeting_and_flags() {
    expect!["4e42444d4147494349484156454f50540003"].assert_eq(&hex(&server_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)));
    assert_eq!(decode_server_greeting(&server_greeting(3)).unwrap(), 3);
    let error = decode_server_greeting(&server_greeting(0)).unwrap_err();
    assert_eq!(error.to_string(), "the server does not offer the fixed newstyle negotiation (handshake flags 0x0000)");
    let mut oldstyle = server_greeting(1);
    oldstyle[8..16].copy_from_slice(&0x0000_4200_2814_4c4e_u64.to_be_bytes());
    assert!(matches!(decode_server_greeting(&oldstyle), Err(NbdError::NotNewstyle { .. })));
    assert_eq!(decode_client_flags(&client_flags(3)), 3);
}

#[test]
fn go_request_round_trips() {
    let request = go_request(OptionCode::Go, "abc");
    expect!["49484156454f5054000000070000000900000003616263 0000"].assert_eq(&format!("{} {}", hex(&request[..23]), hex(&request[23..])));
    let header = decode_option_header(request[..16].try_into().unwrap()).unwrap();
    assert_eq!(header, OptionHeader { code: OptionCode::Go, length: 9 });
    let decoded = decode_export_request(header.code, &request[16..]).unwrap();
    assert_eq!(decoded, ExportRequest { name: "abc".into(), information: vec![] });
    let bare = decode_export_request(OptionCode::ExportName, b"node-export").unwrap();
    assert_eq!(bare.name, "node-export");
}

#[test]
fn malformed_requests_are_named() {
    let mut long = option_request(OptionCode::Go, &[]);
    long[12..16].copy_from_slice(&(MAX_OPTION_LENGTH + 1).to_be_bytes());
    let error = decode_option_header(long[..16].try_into().unwrap()).unwrap_err();
    assert_eq!(error.to_string(), "option 7 announces 8193 bytes, more than the 8192 taken");
    let error = decode_export_request(OptionCode::Go, &[0, 0, 0, 9, b'a']).unwrap_err();
    assert_eq!(error.to_string(), "option data of 5 bytes is malformed: the name is longer than the data");
    let error = decode_export_request(OptionCode::Go, &[0, 0, 0, 1, b'a', 0, 2, 0, 0]).unwrap_err();
    assert_eq!(error.to_string(), "option data of 9 bytes is malformed: the information requests do not match their count");
    assert!(matches!(decode_export_request(OptionCode::ExportName, &[0xff]), Err(NbdError::NameNotUtf8)));
    let mut bad_magic = option_request(OptionCode::Abort, &[]);
    bad_magic[0] = 0;
    assert!(matches!(decode_option_header(bad_magic[..16].try_into().unwrap()), Err(NbdError::BadOptionMagic { .. })));
}

#[test]
fn replies() {
    let export = ExportInfo { size: 1 << 30, transmission_flags: TRANSMISSION_HAS_FLAGS | TRANSMISSION_SEND_FLUSH };
    let granted = export_granted(OptionCode::Go, export);
    expect!["0003e889045565a90000000700000003000000 0c000000000000400000000005 0003e889045565a9000000070000000100000000"]
        .assert_eq(&format!("{} {} {}", hex(&granted[..19]), hex(&granted[19..32]), hex(&granted[32..])));
    assert_eq!(decode_export_info(&granted[20..32]), Some(export));
    let refused = option_reply(OptionCode::Go, ReplyType::ErrorPolicy, b"no");
    let header = decode_reply_header(refused[..20].try_into().unwrap()).unwrap();
    assert_eq!(header, ReplyHeader { option: OptionCode::Go, reply: ReplyType::ErrorPolicy, length: 2 });
    assert!(header.reply.is_error());
    assert_eq!(export_name_granted(export, false).len(), 134);
    assert_eq!(export_name_granted(export, true).len(), 10);
}

/// A stream that reads scripted server bytes and keeps what the client wrote.
struct Scripted {
    input: std::io::Cursor<Vec<u8>>,
    written: Vec<u8>,
}

impl Read for Scripted {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buffer)
    }
}

impl Write for Scripted {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn client_negotiates_go() {
    let export = ExportInfo { size: 4096, transmission_flags: 1 };
    let mut server = server_greeting(3).to_vec();
    server.extend(export_granted(OptionCode::Go, export));
    let mut stream = Scripted { input: std::io::Cursor::new(server), written: Vec::new() };
    assert_eq!(negotiate_as_client(&mut stream, "secret").unwrap(), export);
    let mut expected = client_flags(3).to_vec();
    expected.extend(go_request(OptionCode::Go, "secret"));
    assert_eq!(stream.written, expected);
}

#[test]
fn client_reports_a_refusal_with_its_message() {
    let mut server = server_greeting(1).to_vec();
    server.extend(option_reply(OptionCode::Go, ReplyType::ErrorUnknown, b"no such export"));
    let mut stream = Scripted { input: std::io::Cursor::new(server), written: Vec::new() };
    let error = negotiate_as_client(&mut stream, "guess").unwrap_err();
    assert_eq!(error.to_string(), "the server refused the export (ErrorUnknown): no such export");
    // Without NO_ZEROES offered, the client does not ask for it.
    assert_eq!(&stream.written[..4], &client_flags(1));
}
