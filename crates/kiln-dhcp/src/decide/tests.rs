//! Data-driven tests of [`decide`]: each case is a request and the answer, summarised.

use std::net::Ipv4Addr;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType};
use expect_test::expect;

use super::*;
use crate::config::BootFiles;

fn config(mode: DhcpMode) -> DhcpConfig {
    DhcpConfig {
        mode,
        interface: "br0".into(),
        server_address: Ipv4Addr::new(10, 77, 0, 1),
        subnet: Ipv4Addr::new(10, 77, 0, 0),
        prefix_length: 24,
        router: Some(Ipv4Addr::new(10, 77, 0, 1)),
        dns_servers: vec![Ipv4Addr::new(10, 77, 0, 1)],
        domain: Some("lab".into()),
        lease_seconds: 3600,
        pool: None,
        hostname_prefix: "nid".into(),
        nid_length: 3,
        boot_files: BootFiles::default(),
        http_base_url: "http://10.77.0.1:8080".into(),
        auto_enroll: false,
        enrolment: kiln_db::EnrolmentLimits::default(),
        port: 67,
        lease_file: None,
    }
}

fn request(kind: MessageType, options: Vec<DhcpOption>) -> Message {
    let mut message = Message::default();
    message.set_chaddr(&[0x52, 0x54, 0x00, 0xbe, 0xef, 0x01]).set_xid(0x1234_5678);
    message.opts_mut().insert(DhcpOption::MessageType(kind));
    for option in options {
        message.opts_mut().insert(option);
    }
    message
}

fn summary(answer: Option<Message>) -> String {
    let Some(answer) = answer else { return "(no answer)".into() };
    let mut parts = vec![
        format!("{:?}", answer.opts().msg_type().unwrap()),
        format!("yiaddr={}", answer.yiaddr()),
        format!("siaddr={}", answer.siaddr()),
        format!("file={}", answer.fname_str().and_then(Result::ok).unwrap_or("")),
    ];
    let mut options: Vec<_> =
        answer.opts().iter().filter(|(code, _)| **code != OptionCode::MessageType).map(|(_, option)| option).collect();
    options.sort_by_key(|option| u8::from(OptionCode::from(*option)));
    for option in options {
        let text = match option {
            DhcpOption::ClassIdentifier(bytes) | DhcpOption::BootfileName(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
            other => format!("{other:?}"),
        };
        parts.push(format!("{}={text}", u8::from(OptionCode::from(option))));
    }
    parts.join("\n")
}

fn reserved() -> Binding {
    Binding { address: Ipv4Addr::new(10, 77, 0, 11), hostname: Some("nid001".into()) }
}

#[test]
fn bios_pxe_discover_gets_its_reservation_and_undionly() {
    let discover = request(
        MessageType::Discover,
        vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture::Intelx86PC),
        ],
    );
    expect![[r#"
        Offer
        yiaddr=10.77.0.11
        siaddr=10.77.0.1
        file=undionly.kpxe
        1=SubnetMask(255.255.255.0)
        3=Router([10.77.0.1])
        6=DomainNameServer([10.77.0.1])
        12=Hostname("nid001")
        15=DomainName("lab")
        43=VendorExtensions([6, 1, 8, 255])
        51=AddressLeaseTime(3600)
        54=ServerIdentifier(10.77.0.1)
        58=Renewal(1800)
        59=Rebinding(3150)
        60="PXEClient"
        67="undionly.kpxe""#]]
    .assert_eq(&summary(decide(&discover, &config(DhcpMode::Authoritative), Some(&reserved()), NodeBoot::default())));
}

#[test]
fn boot_files_by_client_kind() {
    let cases = [
        (
            vec![DhcpOption::UserClass(b"iPXE".to_vec()), DhcpOption::ClientSystemArchitecture(Architecture::Intelx86PC)],
            "http://10.77.0.1:8080/boot/v1/bootscript?mac=52:54:00:be:ef:01",
        ),
        (
            vec![DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007".to_vec()), DhcpOption::ClientSystemArchitecture(Architecture::BC)],
            "snponly.efi",
        ),
        (
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00011".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::Unknown(11)),
            ],
            "ipxe-arm64.efi",
        ),
        (
            vec![
                DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::Unknown(16)),
            ],
            "http://10.77.0.1:8080/boot/ipxe/snponly.efi",
        ),
        (vec![DhcpOption::ClassIdentifier(b"udhcp 1.35.0".to_vec())], ""),
    ];
    for (options, file) in cases {
        let answer =
            decide(&request(MessageType::Discover, options), &config(DhcpMode::Authoritative), Some(&reserved()), NodeBoot::default())
                .unwrap();
        assert_eq!(answer.fname_str().and_then(Result::ok).unwrap_or(""), file);
    }
}

#[test]
fn requests_are_acked_naked_or_ignored() {
    let config = config(DhcpMode::Authoritative);
    let ours = request(
        MessageType::Request,
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 77, 0, 11)), DhcpOption::ServerIdentifier(config.server_address)],
    );
    assert_eq!(decide(&ours, &config, Some(&reserved()), NodeBoot::default()).unwrap().opts().msg_type(), Some(MessageType::Ack));
    let wrong_address = request(MessageType::Request, vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 77, 0, 99))]);
    expect![[r#"
        Nak
        yiaddr=0.0.0.0
        siaddr=0.0.0.0
        file=
        54=ServerIdentifier(10.77.0.1)"#]]
    .assert_eq(&summary(decide(&wrong_address, &config, Some(&reserved()), NodeBoot::default())));
    let other_server = request(MessageType::Request, vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 77, 0, 2))]);
    assert!(decide(&other_server, &config, Some(&reserved()), NodeBoot::default()).is_none());
    let unknown = request(MessageType::Discover, vec![]);
    assert!(decide(&unknown, &config, None, NodeBoot::default()).is_none(), "no reservation and no pool: stay silent");
    for kind in [MessageType::Release, MessageType::Decline] {
        assert!(decide(&request(kind, vec![]), &config, Some(&reserved()), NodeBoot::default()).is_none());
    }
    let mut inform = request(MessageType::Inform, vec![]);
    inform.set_ciaddr(Ipv4Addr::new(10, 77, 0, 11));
    let answer = decide(&inform, &config, Some(&reserved()), NodeBoot::default()).unwrap();
    assert_eq!((answer.yiaddr(), answer.opts().get(OptionCode::AddressLeaseTime)), (Ipv4Addr::UNSPECIFIED, None));
}

#[test]
fn proxy_mode_answers_pxe_clients_only() {
    let config = config(DhcpMode::Proxy);
    let pxe = request(
        MessageType::Discover,
        vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture::Intelx86PC),
        ],
    );
    expect![[r#"
        Offer
        yiaddr=0.0.0.0
        siaddr=10.77.0.1
        file=undionly.kpxe
        43=VendorExtensions([6, 1, 8, 255])
        54=ServerIdentifier(10.77.0.1)
        60="PXEClient"
        67="undionly.kpxe""#]]
    .assert_eq(&summary(decide(&pxe, &config, None, NodeBoot::default())));
    assert!(decide(&request(MessageType::Discover, vec![]), &config, None, NodeBoot::default()).is_none());
}

#[test]
fn malformed_requests_get_no_answer() {
    let mut reply = request(MessageType::Discover, vec![]);
    reply.set_opcode(dhcproto::v4::Opcode::BootReply);
    assert!(decide(&reply, &config(DhcpMode::Authoritative), Some(&reserved()), NodeBoot::default()).is_none());
    let mut no_type = Message::default();
    no_type.set_chaddr(&[1, 2, 3, 4, 5, 6]);
    assert!(decide(&no_type, &config(DhcpMode::Authoritative), Some(&reserved()), NodeBoot::default()).is_none());
    // A hardware address length beyond the 16-byte field is refused, not sliced.
    let mut bytes = Vec::new();
    dhcproto::Encodable::encode(&request(MessageType::Discover, vec![]), &mut dhcproto::Encoder::new(&mut bytes)).unwrap();
    bytes[2] = 95;
    let long_hlen = <Message as dhcproto::Decodable>::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
    assert!(decide(&long_hlen, &config(DhcpMode::Authoritative), Some(&reserved()), NodeBoot::default()).is_none());
    // Bytes that are not a DHCP message at all never reach `decide`: decoding fails.
    for garbage in [&b""[..], &[0u8; 10], &[1u8; 300], &[0xffu8; 600]] {
        let decoded = <Message as dhcproto::Decodable>::decode(&mut dhcproto::Decoder::new(garbage));
        if let Ok(message) = decoded {
            let _ = decide(&message, &config(DhcpMode::Authoritative), Some(&reserved()), NodeBoot::default());
        }
    }
}

#[test]
fn a_secure_boot_node_gets_shim_from_uefi_pxe_in_both_modes() {
    let secure = NodeBoot { secure_boot: true };
    let uefi = |arch: u16| {
        vec![
            DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{arch:05}").into_bytes()),
            DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
        ]
    };
    for mode in [DhcpMode::Authoritative, DhcpMode::Proxy] {
        let binding = (mode == DhcpMode::Authoritative).then(reserved);
        let file = |options| {
            let answer = decide(&request(MessageType::Discover, options), &config(mode), binding.as_ref(), secure).unwrap();
            answer.fname_str().and_then(Result::ok).unwrap_or("").to_owned()
        };
        assert_eq!(file(uefi(7)), "shimx64.efi", "{mode:?}");
        assert_eq!(file(uefi(9)), "shimx64.efi", "{mode:?}");
        // No Secure Boot on BIOS; arm64 shim is not served (yet): they boot iPXE as before.
        assert_eq!(file(uefi(0)), "undionly.kpxe", "{mode:?}");
        assert_eq!(file(uefi(11)), "ipxe-arm64.efi", "{mode:?}");
    }
}
