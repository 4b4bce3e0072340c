//! Byte-exact golden vectors for every message, the bytes real clients send, and the
//! answers to malformed input.
//!
//! Provenance is stated per vector:
//! - "captured" vectors were recorded on loopback from the named client talking to a
//!   recording SOCKS5 listener: curl 7.88.1 (Debian build, with GSS-API, so it always offers
//!   method 01), PySocks 1.7.1 and the npm `socks` package 2.8.11.
//! - OpenSSH's `-D` is a SOCKS *server*; its answers are written as `channels.c`
//!   (`channel_decode_socks5`) builds them, read from the source, not captured.
//! - All other vectors are written by hand from RFC 1928 / RFC 1929 and named by content.

mod common;

use bytes::BytesMut;
use common::{hex, wire};
use ferrosocks_proto::addr::HostError;
use ferrosocks_proto::udp::{decode_datagram, encode_datagram};
use ferrosocks_proto::{
    Addr, Command, Decode, DecodeError, Event, Frag, Greeting, Host, Method, MethodSelection,
    Password, ProtocolError, Rep, Reply, Request, ServerHandshake, Stage, UdpHeader,
    UserPassRequest, UserPassStatus,
};

/// Asserts that `msg` encodes to exactly `bytes` and that `bytes` decode to `msg`,
/// consuming all of them.
fn golden<M: Decode + ferrosocks_proto::Encode + PartialEq + std::fmt::Debug>(msg: M, bytes: &str) {
    let bytes = hex(bytes);
    assert_eq!(wire(&msg), bytes, "encoding of {msg:?}");
    assert_eq!(
        M::decode_prefix(&bytes),
        Ok((msg, bytes.len())),
        "decoding of {bytes:02x?}"
    );
}

/// Asserts that `bytes` decode to `msg` using all of them (for input we accept but would
/// not produce ourselves).
fn decodes_to<M: Decode + PartialEq + std::fmt::Debug>(bytes: &str, msg: M) {
    let bytes = hex(bytes);
    assert_eq!(
        M::decode_prefix(&bytes),
        Ok((msg, bytes.len())),
        "decoding of {bytes:02x?}"
    );
}

fn invalid<M: Decode + std::fmt::Debug>(bytes: &str, error: ProtocolError) {
    let bytes = hex(bytes);
    assert_eq!(
        M::decode_prefix(&bytes).map(|(m, _)| m).unwrap_err(),
        DecodeError::Invalid(error),
        "decoding of {bytes:02x?}"
    );
}

fn addr(s: &str) -> Addr {
    s.parse().unwrap()
}

fn greeting(methods: &[u8]) -> Greeting {
    Greeting {
        methods: methods.iter().copied().map(Method).collect(),
    }
}

fn creds(user: &str, pass: &str) -> UserPassRequest {
    UserPassRequest {
        username: user.as_bytes().to_vec(),
        password: Password::new(pass),
    }
}

fn connect(dst: &str) -> Request {
    Request {
        command: Command::CONNECT,
        dst: addr(dst),
    }
}

// ---------------------------------------------------------------------------------------
// RFC 1928 §3: greeting and method selection

#[test]
fn greeting_vectors() {
    golden(greeting(&[0x00]), "05 01 00");
    golden(greeting(&[0x00, 0x02]), "05 02 00 02");
    golden(greeting(&[0x02]), "05 01 02");
    golden(
        greeting(&[0x00, 0x01, 0x02, 0x80, 0xfe]),
        "05 05 00 01 02 80 fe",
    );
    golden(greeting(&[]), "05 00");
}

#[test]
fn greeting_with_all_255_method_codes() {
    let methods: Vec<u8> = (0..=254).collect();
    let mut bytes = String::from("05 ff");
    for m in &methods {
        bytes.push_str(&format!(" {m:02x}"));
    }
    golden(greeting(&methods), &bytes);
}

#[test]
fn greeting_longer_than_255_methods_is_cut_to_255_when_encoded() {
    let g = Greeting {
        methods: vec![Method::NO_AUTH; 300],
    };
    let bytes = wire(&g);
    assert_eq!(bytes.len(), 2 + 255);
    assert_eq!(&bytes[..2], &[0x05, 0xff]);
}

#[test]
fn method_selection_vectors() {
    golden(
        MethodSelection {
            method: Method::NO_AUTH,
        },
        "05 00",
    );
    golden(
        MethodSelection {
            method: Method::GSSAPI,
        },
        "05 01",
    );
    golden(
        MethodSelection {
            method: Method::USER_PASS,
        },
        "05 02",
    );
    golden(
        MethodSelection {
            method: Method::NO_ACCEPTABLE,
        },
        "05 ff",
    );
}

// ---------------------------------------------------------------------------------------
// RFC 1929: username/password

#[test]
fn userpass_request_vectors() {
    golden(creds("alice", "s3cret"), "01 05 616c696365 06 733363726574");
    golden(creds("u", "p"), "01 01 75 01 70");
    // Zero-length fields are unambiguous on the wire, so they decode.
    golden(creds("", ""), "01 00 00");
}

#[test]
fn userpass_request_with_255_byte_fields() {
    let user = "u".repeat(255);
    let pass = "p".repeat(255);
    let bytes = format!("01 ff {} ff {}", "75".repeat(255), "70".repeat(255));
    golden(creds(&user, &pass), &bytes);
}

#[test]
fn userpass_request_fields_longer_than_255_are_cut_when_encoded() {
    let bytes = wire(&creds(&"u".repeat(300), &"p".repeat(256)));
    assert_eq!(bytes.len(), 3 + 255 + 255);
    assert_eq!((bytes[1], bytes[2 + 255]), (0xff, 0xff));
}

#[test]
fn userpass_password_is_never_printed() {
    let req = creds("alice", "s3cret");
    assert!(!format!("{req:?}").contains("s3cret"));
    assert_eq!(req.password.to_string(), "<redacted>");
}

#[test]
fn userpass_status_vectors() {
    golden(UserPassStatus::SUCCESS, "01 00");
    golden(UserPassStatus::FAILURE, "01 01");
    golden(UserPassStatus { status: 0xff }, "01 ff");
    assert!(UserPassStatus::SUCCESS.is_success());
    assert!(!UserPassStatus { status: 0x02 }.is_success());
}

#[test]
fn userpass_status_with_socks_version_byte_is_accepted() {
    // Some servers answer the sub-negotiation with VER 05; the status is still clear.
    decodes_to("05 00", UserPassStatus::SUCCESS);
    decodes_to("05 01", UserPassStatus::FAILURE);
}

// ---------------------------------------------------------------------------------------
// RFC 1928 §4, §5: requests and addresses

#[test]
fn request_vectors() {
    golden(connect("192.0.2.1:80"), "05 01 00 01 c0000201 0050");
    golden(
        connect("[2001:db8::1]:443"),
        "05 01 00 04 20010db8000000000000000000000001 01bb",
    );
    golden(
        connect("example.com:443"),
        "05 01 00 03 0b 6578616d706c652e636f6d 01bb",
    );
    golden(
        Request {
            command: Command::BIND,
            dst: addr("198.51.100.7:21"),
        },
        "05 02 00 01 c6336407 0015",
    );
    // A UDP ASSOCIATE from a client that does not know its address yet (RFC 1928 §7).
    golden(
        Request {
            command: Command::UDP_ASSOCIATE,
            dst: Addr::UNSPECIFIED,
        },
        "05 03 00 01 00000000 0000",
    );
    golden(
        connect("[::]:65535"),
        "05 01 00 04 00000000000000000000000000000000 ffff",
    );
}

#[test]
fn request_with_unknown_command_decodes_so_the_server_can_answer_07() {
    decodes_to(
        "05 09 00 01 7f000001 0050",
        Request {
            command: Command(0x09),
            dst: addr("127.0.0.1:80"),
        },
    );
}

#[test]
fn domain_names_are_carried_as_sent() {
    // A name that looks like an IP address stays a name: the proxy resolves it.
    decodes_to(
        "03 07 312e322e332e34 0050",
        Addr::Domain(Host::new("1.2.3.4").unwrap(), 80),
    );
    // Non-ASCII UTF-8 is accepted as it is (RFC 1928 does not require IDNA).
    golden(
        Addr::Domain(Host::new("bücher.example").unwrap(), 80),
        "03 0f 62c3bc636865722e6578616d706c65 0050",
    );
}

#[test]
fn domain_name_of_255_bytes_is_the_longest() {
    let name = "a".repeat(255);
    golden(
        Addr::Domain(Host::new(name.clone()).unwrap(), 1),
        &format!("03 ff {} 0001", "61".repeat(255)),
    );
    assert_eq!(Host::new("a".repeat(256)), Err(HostError::TooLong(256)));
    assert_eq!(Host::new(""), Err(HostError::Empty));
}

#[test]
fn ipv6_addresses_encode_all_16_octets_in_order() {
    golden(
        addr("[fe80::1234:5678:9abc:def0]:8080"),
        "04 fe800000000000001234 56789abcdef0 1f90",
    );
    // An IPv4-mapped IPv6 address stays IPv6 (ATYP 04).
    golden(
        addr("[::ffff:192.0.2.1]:80"),
        "04 00000000000000000000ffff c0000201 0050",
    );
}

// ---------------------------------------------------------------------------------------
// RFC 1928 §6: replies

#[test]
fn reply_vectors() {
    golden(
        Reply {
            rep: Rep::SUCCEEDED,
            bnd: addr("192.0.2.1:1080"),
        },
        "05 00 00 01 c0000201 0438",
    );
    golden(
        Reply::failure(Rep::CONNECTION_REFUSED),
        "05 05 00 01 00000000 0000",
    );
    golden(
        Reply::failure(Rep::COMMAND_NOT_SUPPORTED),
        "05 07 00 01 00000000 0000",
    );
    golden(
        Reply::failure(Rep::ADDRESS_TYPE_NOT_SUPPORTED),
        "05 08 00 01 00000000 0000",
    );
    golden(
        Reply {
            rep: Rep::SUCCEEDED,
            bnd: addr("[2001:db8::2]:50000"),
        },
        "05 00 00 04 20010db8000000000000000000000002 c350",
    );
    golden(
        Reply {
            rep: Rep::SUCCEEDED,
            bnd: addr("proxy.example:1080"),
        },
        "05 00 00 03 0d 70726f78792e6578616d706c65 0438",
    );
    // Unassigned codes survive decoding.
    golden(Reply::failure(Rep(0x42)), "05 42 00 01 00000000 0000");
}

#[test]
fn reply_with_nonzero_reserved_byte_is_accepted() {
    decodes_to(
        "05 00 ff 01 c0000201 0438",
        Reply {
            rep: Rep::SUCCEEDED,
            bnd: addr("192.0.2.1:1080"),
        },
    );
}

// ---------------------------------------------------------------------------------------
// RFC 1928 §7: UDP headers

#[test]
fn udp_header_vectors() {
    golden(
        UdpHeader {
            frag: Frag::STANDALONE,
            dst: addr("192.0.2.53:53"),
        },
        "0000 00 01 c0000235 0035",
    );
    golden(
        UdpHeader {
            frag: Frag::STANDALONE,
            dst: addr("[2001:db8::53]:53"),
        },
        "0000 00 04 20010db8000000000000000000000053 0035",
    );
    golden(
        UdpHeader {
            frag: Frag::STANDALONE,
            dst: addr("dns.example:53"),
        },
        "0000 00 03 0b 646e732e6578616d706c65 0035",
    );
    golden(
        UdpHeader {
            frag: Frag::fragment(1, true),
            dst: addr("192.0.2.53:53"),
        },
        "0000 81 01 c0000235 0035",
    );
}

#[test]
fn frag_octet_splits_into_position_and_end_flag() {
    let f = Frag(0x83);
    assert_eq!(
        (f.position(), f.is_last(), f.is_standalone()),
        (3, true, false)
    );
    assert_eq!(Frag::fragment(127, false), Frag(0x7f));
    // Positions above 127 cannot be expressed; the high bit is the end flag.
    assert_eq!(Frag::fragment(0xff, false), Frag(0x7f));
    assert!(Frag::STANDALONE.is_standalone());
}

#[test]
fn datagram_splits_into_header_and_borrowed_payload() {
    let bytes = hex("0000 00 01 c0000235 0035 deadbeef");
    let (header, payload) = decode_datagram(&bytes).unwrap();
    assert_eq!(header.dst, addr("192.0.2.53:53"));
    assert_eq!(payload, &hex("deadbeef")[..]);
    let mut again = BytesMut::new();
    encode_datagram(&header, payload, &mut again);
    assert_eq!(&again[..], &bytes[..]);
}

#[test]
fn datagram_with_empty_payload_is_valid() {
    let bytes = hex("0000 00 01 c0000235 0035");
    let (_, payload) = decode_datagram(&bytes).unwrap();
    assert!(payload.is_empty());
}

#[test]
fn truncated_datagram_is_reported_incomplete() {
    let bytes = hex("0000 00 01 c00002");
    assert!(matches!(
        decode_datagram(&bytes),
        Err(DecodeError::Incomplete { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Bytes real clients send, and what real servers answer

/// curl 7.88.1 (Debian) always offers GSS-API (01) because it is built with it.
#[test]
fn captured_curl_7_88_1_socks5_hostname_without_auth() {
    decodes_to("05 02 00 01", greeting(&[0x00, 0x01]));
    decodes_to(
        "05 01 00 03 0b 6578616d706c652e636f6d 0050",
        connect("example.com:80"),
    );
}

#[test]
fn captured_curl_7_88_1_socks5_hostname_with_proxy_user() {
    decodes_to("05 03 00 01 02", greeting(&[0x00, 0x01, 0x02]));
    decodes_to("01 05 616c696365 06 733363726574", creds("alice", "s3cret"));
    decodes_to(
        "05 01 00 03 0b 6578616d706c652e636f6d 0050",
        connect("example.com:80"),
    );
}

#[test]
fn captured_curl_7_88_1_ip_literal_destinations() {
    // --socks5 (local resolution) to 127.0.0.1:8080.
    decodes_to("05 01 00 01 7f000001 1f90", connect("127.0.0.1:8080"));
    // socks5h://bob:pw@ to http://[::1]:8080/: an IPv6 literal goes as ATYP 04.
    decodes_to("01 03 626f62 02 7077", creds("bob", "pw"));
    decodes_to(
        "05 01 00 04 00000000000000000000000000000001 1f90",
        connect("[::1]:8080"),
    );
}

#[test]
fn captured_curl_session_leaves_its_http_request_as_tunnel_payload() {
    let http =
        b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    let mut input = BytesMut::new();
    input.extend_from_slice(&hex(
        "05 03 00 01 02  01 05 616c696365 06 733363726574  05 01 00 03 0b 6578616d706c652e636f6d 0050",
    ));
    input.extend_from_slice(http);
    let mut output = BytesMut::new();
    let mut server = ServerHandshake::new(vec![Method::USER_PASS]);
    assert_eq!(
        server.feed(&mut input, &mut output),
        Ok(Event::Authenticate(creds("alice", "s3cret")))
    );
    assert_eq!(
        server.handle_auth_verdict(true, &mut output),
        Event::NeedMore
    );
    assert_eq!(
        server.feed(&mut input, &mut output),
        Ok(Event::Request(connect("example.com:80")))
    );
    assert_eq!(&output[..], &hex("05 02 01 00")[..]);
    assert_eq!(&input[..], &http[..]);
}

#[test]
fn captured_pysocks_1_7_1() {
    decodes_to("05 01 00", greeting(&[0x00]));
    decodes_to("05 02 00 02", greeting(&[0x00, 0x02]));
    decodes_to("01 05 616c696365 06 733363726574", creds("alice", "s3cret"));
    // rdns=True (the default): the name is sent unresolved.
    decodes_to(
        "05 01 00 03 0b 6578616d706c652e636f6d 0050",
        connect("example.com:80"),
    );
    decodes_to("05 01 00 01 7f000001 1f90", connect("127.0.0.1:8080"));
    decodes_to(
        "05 01 00 04 00000000000000000000000000000001 1f90",
        connect("[::1]:8080"),
    );
}

#[test]
fn captured_npm_socks_2_8_11() {
    decodes_to("05 01 00", greeting(&[0x00]));
    decodes_to("05 02 00 02", greeting(&[0x00, 0x02]));
    decodes_to("01 05 616c696365 06 733363726574", creds("alice", "s3cret"));
    decodes_to(
        "05 01 00 03 0b 6578616d706c652e636f6d 0050",
        connect("example.com:80"),
    );
    decodes_to("05 01 00 01 7f000001 1f90", connect("127.0.0.1:8080"));
    decodes_to(
        "05 01 00 04 00000000000000000000000000000001 1f90",
        connect("[::1]:8080"),
    );
}

/// `ssh -D` only does NO AUTH and answers every CONNECT with success and BND 0.0.0.0:0
/// before it has connected (from `channel_decode_socks5` in OpenSSH's channels.c).
#[test]
fn openssh_dynamic_forward_answers_from_source() {
    decodes_to(
        "05 00",
        MethodSelection {
            method: Method::NO_AUTH,
        },
    );
    decodes_to(
        "05 00 00 01 00000000 0000",
        Reply {
            rep: Rep::SUCCEEDED,
            bnd: Addr::UNSPECIFIED,
        },
    );
}

// ---------------------------------------------------------------------------------------
// Malformed input

#[test]
fn wrong_socks_version_is_rejected_with_the_byte() {
    invalid::<Greeting>("04 01 00", ProtocolError::BadVersion(0x04));
    invalid::<MethodSelection>("04 00", ProtocolError::BadVersion(0x04));
    invalid::<Request>("04 01 00 01 7f000001 0050", ProtocolError::BadVersion(0x04));
    invalid::<Reply>("00 5a 00 01 00000000 0000", ProtocolError::BadVersion(0x00));
    // An HTTP request sent to the SOCKS port.
    invalid::<Greeting>("47 45 54 20", ProtocolError::BadVersion(b'G'));
}

#[test]
fn version_is_checked_before_the_rest_of_the_message_arrives() {
    invalid::<Greeting>("04", ProtocolError::BadVersion(0x04));
    invalid::<Request>("04 01 00", ProtocolError::BadVersion(0x04));
}

#[test]
fn nonzero_reserved_byte_in_request_is_rejected() {
    invalid::<Request>(
        "05 01 01 01 7f000001 0050",
        ProtocolError::BadReserved(0x01),
    );
}

#[test]
fn nonzero_reserved_bytes_in_udp_header_are_rejected() {
    invalid::<UdpHeader>("0001 00 01 7f000001 0050", ProtocolError::BadReserved(0x01));
    invalid::<UdpHeader>("8000 00 01 7f000001 0050", ProtocolError::BadReserved(0x80));
    assert_eq!(
        decode_datagram(&hex("0100 00 01 7f000001 0050 00")),
        Err(DecodeError::Invalid(ProtocolError::BadReserved(0x01)))
    );
}

#[test]
fn unknown_address_type_is_rejected_with_the_byte() {
    for atyp in [0x00, 0x02, 0x05, 0xff] {
        invalid::<Addr>(
            &format!("{atyp:02x} 7f000001 0050"),
            ProtocolError::UnknownAtyp(atyp),
        );
        invalid::<Request>(
            &format!("05 01 00 {atyp:02x} 7f000001 0050"),
            ProtocolError::UnknownAtyp(atyp),
        );
        invalid::<Reply>(
            &format!("05 00 00 {atyp:02x} 7f000001 0050"),
            ProtocolError::UnknownAtyp(atyp),
        );
        invalid::<UdpHeader>(
            &format!("0000 00 {atyp:02x} 7f000001 0050"),
            ProtocolError::UnknownAtyp(atyp),
        );
    }
}

#[test]
fn unknown_command_with_unknown_address_type_reports_the_command() {
    invalid::<Request>(
        "05 09 00 07 7f000001 0050",
        ProtocolError::UnknownCommand(0x09),
    );
}

#[test]
fn empty_domain_name_is_rejected() {
    invalid::<Addr>("03 00 0050", ProtocolError::EmptyDomain);
    invalid::<Request>("05 01 00 03 00 0050", ProtocolError::EmptyDomain);
    invalid::<UdpHeader>("0000 00 03 00 0035", ProtocolError::EmptyDomain);
}

#[test]
fn non_utf8_domain_name_is_rejected_with_the_first_bad_byte() {
    invalid::<Addr>("03 03 61 ff 62 0050", ProtocolError::DomainNotUtf8(0xff));
    invalid::<Request>(
        "05 01 00 03 02 c3 28 0050",
        ProtocolError::DomainNotUtf8(0xc3),
    );
    // A truncated multi-byte sequence at the end of the name.
    invalid::<Addr>("03 02 61 e2 0050", ProtocolError::DomainNotUtf8(0xe2));
}

#[test]
fn wrong_userpass_version_is_rejected_with_the_byte() {
    invalid::<UserPassRequest>(
        "05 05 616c696365 06 733363726574",
        ProtocolError::BadUserPassVersion(0x05),
    );
    invalid::<UserPassRequest>("00 01 75 01 70", ProtocolError::BadUserPassVersion(0x00));
    invalid::<UserPassStatus>("02 00", ProtocolError::BadUserPassVersion(0x02));
}

#[test]
fn server_answers_empty_method_list_with_no_acceptable_methods() {
    let mut server = ServerHandshake::new(vec![Method::NO_AUTH, Method::USER_PASS]);
    let mut input = BytesMut::from(&hex("05 00")[..]);
    let mut output = BytesMut::new();
    assert_eq!(
        server.feed(&mut input, &mut output),
        Ok(Event::NoAcceptableMethod)
    );
    assert_eq!(&output[..], &hex("05 ff")[..]);
    assert_eq!(server.stage(), Stage::Done);
    assert!(input.is_empty());
}

#[test]
fn server_answers_gssapi_only_greeting_with_no_acceptable_methods() {
    let mut server = ServerHandshake::new(vec![Method::NO_AUTH, Method::USER_PASS]);
    let mut input = BytesMut::from(&hex("05 01 01")[..]);
    let mut output = BytesMut::new();
    assert_eq!(
        server.feed(&mut input, &mut output),
        Ok(Event::NoAcceptableMethod)
    );
    assert_eq!(&output[..], &hex("05 ff")[..]);
}

#[test]
fn server_rejects_unknown_command_after_decoding_the_whole_request() {
    let mut server = ServerHandshake::new(vec![Method::NO_AUTH]);
    let mut input = BytesMut::from(&hex("05 01 00  05 04 00 01 7f000001 0050  aa")[..]);
    let mut output = BytesMut::new();
    let err = server.feed(&mut input, &mut output).unwrap_err();
    assert_eq!(err.stage, Stage::Request);
    assert_eq!(err.error, ProtocolError::UnknownCommand(0x04));
    assert_eq!(server.stage(), Stage::Done);
    // The request was consumed whole, so the server can answer X'07' and close.
    assert_eq!(&input[..], &[0xaa]);
}

#[test]
fn server_reports_the_stage_of_each_violation() {
    let cases: [(&[Method], &str, Stage, ProtocolError); 5] = [
        (
            &[Method::NO_AUTH],
            "04 01 00",
            Stage::Greeting,
            ProtocolError::BadVersion(4),
        ),
        (
            &[Method::USER_PASS],
            "05 01 02  05 01 75 01 70",
            Stage::UserPass,
            ProtocolError::BadUserPassVersion(5),
        ),
        (
            &[Method::NO_AUTH],
            "05 01 00  05 01 00 02 7f000001 0050",
            Stage::Request,
            ProtocolError::UnknownAtyp(2),
        ),
        (
            &[Method::NO_AUTH],
            "05 01 00  05 01 00 03 00 0050",
            Stage::Request,
            ProtocolError::EmptyDomain,
        ),
        (
            &[Method::NO_AUTH],
            "05 01 00  05 01 01 01 7f000001 0050",
            Stage::Request,
            ProtocolError::BadReserved(1),
        ),
    ];
    for (methods, bytes, stage, error) in cases {
        let mut server = ServerHandshake::new(methods.to_vec());
        let mut input = BytesMut::from(&hex(bytes)[..]);
        let mut output = BytesMut::new();
        let err = server.feed(&mut input, &mut output).unwrap_err();
        assert_eq!((err.stage, err.error), (stage, error), "for {bytes}");
        assert_eq!(server.stage(), Stage::Done);
        // A finished handshake ignores whatever follows.
        input.extend_from_slice(&hex("05 01 00"));
        assert_eq!(server.feed(&mut input, &mut output), Ok(Event::NeedMore));
    }
}

#[test]
fn socks4_greeting_is_rejected_as_bad_version() {
    // A SOCKS4 CONNECT to 127.0.0.1:80 with an empty user id.
    let mut server = ServerHandshake::new(vec![Method::NO_AUTH]);
    let mut input = BytesMut::from(&hex("04 01 0050 7f000001 00")[..]);
    let mut output = BytesMut::new();
    let err = server.feed(&mut input, &mut output).unwrap_err();
    assert_eq!(
        (err.stage, err.error),
        (Stage::Greeting, ProtocolError::BadVersion(4))
    );
    assert!(output.is_empty());
}

// ---------------------------------------------------------------------------------------
// Fuzz crashers, kept as vectors

/// fuzz/frag crash-0784a2fc: a reassembly timeout of about 2^64 seconds made the first
/// fragment panic with "overflow when adding duration to instant".
#[test]
fn fragment_with_a_timeout_beyond_the_clock_range_is_queued_without_a_deadline() {
    use ferrosocks_proto::frag::{FragOutcome, Reassembly};
    let dst = addr("192.0.2.1:53");
    let now = std::time::Instant::now();
    let mut queue = Reassembly::new(std::time::Duration::MAX);
    assert_eq!(
        queue.push(now, Frag::fragment(1, false), &dst, b"ab"),
        FragOutcome::Queued
    );
    assert_eq!(queue.deadline(), None);
    assert_eq!(
        queue.push(now, Frag::fragment(2, true), &dst, b"cd"),
        FragOutcome::Complete(dst, b"abcd".to_vec())
    );
}
