//! Properties: decode(encode(m)) == m for every message; decoders, the datagram splitter and
//! both handshakes never panic on arbitrary bytes, and do not depend on how the bytes are
//! chunked.

mod common;

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BytesMut;
use common::{ClientEnd, Kind, Pair, ServerEnd};
use ferrosocks_proto::udp::{decode_datagram, encode_datagram};
use ferrosocks_proto::{
    Addr, ClientEvent, ClientHandshake, Command, Decode, DecodeError, Encode, Event, Frag,
    Greeting, HandshakeError, Host, Method, MethodSelection, Password, Rep, Reply, Request,
    ServerHandshake, Stage, UdpHeader, UserPassRequest, UserPassStatus,
};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Strategies

/// 1..=255 bytes of UTF-8: plain host names up to the limit, and arbitrary characters.
fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        "[a-z0-9.-]{1,255}",
        vec(any::<char>(), 1..=100).prop_map(|chars| {
            let mut s = String::new();
            for c in chars {
                if s.len() + c.len_utf8() > Host::MAX_LEN {
                    break;
                }
                s.push(c);
            }
            s
        }),
    ]
    .prop_map(|s| Host::new(s).expect("1..=255 bytes"))
}

/// IPv6 addresses carry no flow info or scope id: the wire has no room for them.
fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| Addr::Ip(SocketAddr::new(Ipv4Addr::from(ip).into(), port))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| Addr::Ip(SocketAddr::new(Ipv6Addr::from(ip).into(), port))),
        (host(), any::<u16>()).prop_map(|(host, port)| Addr::Domain(host, port)),
    ]
}

fn greeting() -> impl Strategy<Value = Greeting> {
    vec(any::<u8>().prop_map(Method), 0..=255).prop_map(|methods| Greeting { methods })
}

fn method_selection() -> impl Strategy<Value = MethodSelection> {
    any::<u8>().prop_map(|m| MethodSelection { method: Method(m) })
}

fn userpass() -> impl Strategy<Value = UserPassRequest> {
    (vec(any::<u8>(), 0..=255), vec(any::<u8>(), 0..=255)).prop_map(|(username, password)| {
        UserPassRequest {
            username,
            password: Password::new(password),
        }
    })
}

fn userpass_status() -> impl Strategy<Value = UserPassStatus> {
    any::<u8>().prop_map(|status| UserPassStatus { status })
}

fn request() -> impl Strategy<Value = Request> {
    (any::<u8>(), addr()).prop_map(|(cmd, dst)| Request {
        command: Command(cmd),
        dst,
    })
}

fn known_request() -> impl Strategy<Value = Request> {
    (1u8..=3, addr()).prop_map(|(cmd, dst)| Request {
        command: Command(cmd),
        dst,
    })
}

fn reply() -> impl Strategy<Value = Reply> {
    (any::<u8>(), addr()).prop_map(|(rep, bnd)| Reply { rep: Rep(rep), bnd })
}

fn udp_header() -> impl Strategy<Value = UdpHeader> {
    (any::<u8>(), addr()).prop_map(|(frag, dst)| UdpHeader {
        frag: Frag(frag),
        dst,
    })
}

/// The wire form of any message of any kind.
fn any_encoding() -> impl Strategy<Value = (Kind, Vec<u8>)> {
    fn enc<M: Encode>(kind: Kind) -> impl Fn(M) -> (Kind, Vec<u8>) {
        move |m| (kind, m.to_bytes().to_vec())
    }
    prop_oneof![
        greeting().prop_map(enc(Kind::Greeting)),
        method_selection().prop_map(enc(Kind::MethodSelection)),
        userpass().prop_map(enc(Kind::UserPassRequest)),
        userpass_status().prop_map(enc(Kind::UserPassStatus)),
        request().prop_map(enc(Kind::Request)),
        reply().prop_map(enc(Kind::Reply)),
        udp_header().prop_map(enc(Kind::UdpHeader)),
        addr().prop_map(enc(Kind::Addr)),
    ]
}

/// Bytes that are mostly random, or valid encodings with some bytes overwritten, cut or
/// extended, so that decoders get past their first byte often.
fn fuzzy_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..600),
        (
            any_encoding(),
            vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<prop::sample::Index>(),
            vec(any::<u8>(), 0..8),
        )
            .prop_map(|((_, mut bytes), edits, cut, tail)| {
                for (at, value) in edits {
                    if !bytes.is_empty() {
                        let i = at.index(bytes.len());
                        bytes[i] = value;
                    }
                }
                let keep = cut.index(bytes.len() + 1);
                bytes.truncate(keep.max(bytes.len() / 2));
                bytes.extend(tail);
                bytes
            }),
    ]
}

// ---------------------------------------------------------------------------------------
// Round trips

fn check_roundtrip<M>(msg: &M, trailing: &[u8]) -> Result<(), TestCaseError>
where
    M: Encode + Decode + PartialEq + Debug + Clone,
{
    let mut buf = msg.to_bytes();
    let len = buf.len();
    prop_assert_eq!(len, msg.encoded_len());
    buf.extend_from_slice(trailing);
    let decoded = M::decode_prefix(&buf);
    prop_assert_eq!(decoded, Ok((msg.clone(), len)));
    // Every proper prefix asks for more, and never for more than is missing.
    for cut in 0..len {
        match M::decode_prefix(&buf[..cut]) {
            Err(DecodeError::Incomplete { needed }) => {
                prop_assert!((1..=len - cut).contains(&needed))
            }
            other => prop_assert!(false, "prefix {cut}/{len} gave {:?}", other),
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn greeting_roundtrips(m in greeting(), tail in vec(any::<u8>(), 0..4)) {
        check_roundtrip(&m, &tail)?;
    }

    #[test]
    fn method_selection_roundtrips(m in method_selection(), tail in vec(any::<u8>(), 0..4)) {
        check_roundtrip(&m, &tail)?;
    }

    #[test]
    fn userpass_request_roundtrips(m in userpass(), tail in vec(any::<u8>(), 0..4)) {
        check_roundtrip(&m, &tail)?;
    }

    #[test]
    fn userpass_status_roundtrips(m in userpass_status(), tail in vec(any::<u8>(), 0..4)) {
        check_roundtrip(&m, &tail)?;
    }

    #[test]
    fn request_roundtrips(m in request(), tail in vec(any::<u8>(), 0..4)) {
        check_roundtrip(&m, &tail)?;
    }

    #[test]
    fn reply_roundtrips(m in reply(), tail in vec(any::<u8>(), 0..4)) {
        check_roundtrip(&m, &tail)?;
    }

    #[test]
    fn udp_header_roundtrips(m in udp_header(), tail in vec(any::<u8>(), 0..4)) {
        check_roundtrip(&m, &tail)?;
    }

    #[test]
    fn addr_roundtrips(m in addr(), tail in vec(any::<u8>(), 0..4)) {
        check_roundtrip(&m, &tail)?;
    }

    #[test]
    fn addr_display_parses_back_for_ip_addresses_and_plain_names(
        ip in prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, p)| Addr::Ip(SocketAddr::new(Ipv4Addr::from(ip).into(), p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| Addr::Ip(SocketAddr::new(Ipv6Addr::from(ip).into(), p))),
            ("[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,20}){0,3}", any::<u16>())
                .prop_map(|(h, p)| Addr::Domain(Host::new(h).unwrap(), p)),
        ]
    ) {
        prop_assert_eq!(ip.to_string().parse::<Addr>(), Ok(ip));
    }

    #[test]
    fn datagram_roundtrips_with_its_payload(
        header in udp_header(),
        payload in vec(any::<u8>(), 0..64),
    ) {
        let mut buf = BytesMut::new();
        encode_datagram(&header, &payload, &mut buf);
        let (decoded, rest) = decode_datagram(&buf).unwrap();
        prop_assert_eq!(decoded, header);
        prop_assert_eq!(rest, &payload[..]);
    }
}

// ---------------------------------------------------------------------------------------
// Never panics, and whatever decodes is what was sent

/// Decodes `bytes` as `M`. When it succeeds, the message must re-encode to the bytes it
/// used (after `canonical` rewrites fields the decoder ignores), and every shorter prefix
/// must be Incomplete.
fn check_decoder<M>(bytes: &[u8], canonical: fn(&mut [u8])) -> Result<(), TestCaseError>
where
    M: Encode + Decode + Debug,
{
    match M::decode_prefix(bytes) {
        Ok((msg, used)) => {
            prop_assert!(used <= bytes.len());
            let mut expected = bytes[..used].to_vec();
            canonical(&mut expected);
            prop_assert_eq!(&msg.to_bytes()[..], &expected[..], "{:?}", msg);
            for cut in 0..used {
                let prefix = M::decode_prefix(&bytes[..cut]);
                prop_assert!(
                    matches!(prefix, Err(DecodeError::Incomplete { .. })),
                    "prefix {}/{} gave {:?}",
                    cut,
                    used,
                    prefix
                );
            }
        }
        Err(DecodeError::Incomplete { needed }) => prop_assert!(needed >= 1),
        Err(DecodeError::Invalid(_)) => {}
    }
    Ok(())
}

fn exact(_: &mut [u8]) {}

proptest! {
    #[test]
    fn decoders_never_panic_and_decode_only_what_they_would_encode(bytes in fuzzy_bytes()) {
        check_decoder::<Greeting>(&bytes, exact)?;
        check_decoder::<MethodSelection>(&bytes, exact)?;
        check_decoder::<UserPassRequest>(&bytes, exact)?;
        // VER 05 is accepted for the status and RSV is ignored in replies.
        check_decoder::<UserPassStatus>(&bytes, |b| b[0] = 0x01)?;
        check_decoder::<Request>(&bytes, exact)?;
        check_decoder::<Reply>(&bytes, |b| b[2] = 0x00)?;
        check_decoder::<UdpHeader>(&bytes, exact)?;
        check_decoder::<Addr>(&bytes, exact)?;
        for kind in Kind::ALL {
            if let Ok(used) = kind.decode_len(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }
    }

    #[test]
    fn decode_datagram_never_panics_and_reencodes_exactly(bytes in fuzzy_bytes()) {
        if let Ok((header, payload)) = decode_datagram(&bytes) {
            let mut again = BytesMut::new();
            encode_datagram(&header, payload, &mut again);
            prop_assert_eq!(&again[..], &bytes[..]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handshakes on arbitrary bytes in arbitrary chunks

/// Everything a server handshake did with a byte stream.
#[derive(Debug, PartialEq)]
struct ServerTrace {
    events: Vec<String>,
    error: Option<HandshakeError>,
    output: Vec<u8>,
    consumed: usize,
    stage: Stage,
}

fn run_server(
    preference: &[Method],
    bytes: &[u8],
    chunks: &[usize],
    verdicts: &[bool],
) -> Result<ServerTrace, TestCaseError> {
    let mut server = ServerHandshake::new(preference.to_vec());
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    let mut events = Vec::new();
    let mut error = None;
    let mut verdicts = verdicts.iter().copied().cycle();
    let mut fed = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while fed < bytes.len() {
        let n = sizes
            .next()
            .unwrap_or(usize::MAX)
            .clamp(1, bytes.len() - fed);
        input.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        loop {
            let before = input.len();
            let result = server.feed(&mut input, &mut output);
            prop_assert!(input.len() <= before, "feed never adds input");
            match result {
                Ok(Event::NeedMore) => break,
                Ok(Event::Authenticate(c)) => {
                    prop_assert_eq!(server.stage(), Stage::AuthVerdict);
                    events.push(format!("auth {:?}", c));
                    let accepted = verdicts.next().unwrap_or(true);
                    let event = server.handle_auth_verdict(accepted, &mut output);
                    events.push(format!("{event:?}"));
                }
                Ok(other) => {
                    prop_assert_eq!(server.stage(), Stage::Done);
                    events.push(format!("{other:?}"));
                    break;
                }
                Err(e) => {
                    prop_assert_eq!(server.stage(), Stage::Done);
                    error = Some(e);
                    break;
                }
            }
        }
        if server.stage() == Stage::Done {
            // Done is final: nothing more is consumed or written.
            let (i, o) = (input.len(), output.len());
            prop_assert_eq!(server.feed(&mut input, &mut output), Ok(Event::NeedMore));
            prop_assert_eq!((input.len(), output.len()), (i, o));
        }
    }
    // At most a method selection and an RFC 1929 status are ever written.
    prop_assert!(output.len() <= 4);
    Ok(ServerTrace {
        events,
        error,
        output: output.to_vec(),
        consumed: fed - input.len(),
        stage: server.stage(),
    })
}

fn preference() -> impl Strategy<Value = Vec<Method>> {
    vec(
        prop_oneof![
            Just(Method::NO_AUTH),
            Just(Method::USER_PASS),
            any::<u8>().prop_map(Method)
        ],
        0..4,
    )
}

/// A plausible client stream: greeting, then maybe credentials, then maybe a request, then
/// junk; or junk alone.
fn client_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        fuzzy_bytes(),
        (
            greeting(),
            proptest::option::of(userpass()),
            proptest::option::of(request()),
            fuzzy_bytes()
        )
            .prop_map(|(g, up, req, junk)| {
                let mut out = g.to_bytes().to_vec();
                if let Some(up) = up {
                    out.extend_from_slice(&up.to_bytes());
                }
                if let Some(req) = req {
                    out.extend_from_slice(&req.to_bytes());
                }
                out.extend(junk);
                out
            }),
    ]
}

/// A plausible server stream: a selection, maybe a status, maybe a reply, then junk.
fn server_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        fuzzy_bytes(),
        (
            prop_oneof![Just(0u8), Just(2u8), Just(0xffu8), any::<u8>()],
            proptest::option::of(userpass_status()),
            proptest::option::of(reply()),
            vec(any::<u8>(), 0..16)
        )
            .prop_map(|(method, status, reply, junk)| {
                let mut out = vec![0x05, method];
                if let Some(s) = status {
                    out.extend_from_slice(&s.to_bytes());
                }
                if let Some(r) = reply {
                    out.extend_from_slice(&r.to_bytes());
                }
                out.extend(junk);
                out
            }),
    ]
}

proptest! {
    #[test]
    fn server_handshake_never_panics_and_ignores_chunking(
        preference in preference(),
        bytes in client_stream(),
        chunks in vec(1usize..24, 1..40),
        verdicts in vec(any::<bool>(), 1..4),
    ) {
        let whole = run_server(&preference, &bytes, &[usize::MAX], &verdicts)?;
        let chunked = run_server(&preference, &bytes, &chunks, &verdicts)?;
        prop_assert_eq!(chunked, whole);
    }

    #[test]
    fn client_handshake_never_panics_and_ignores_chunking(
        req in request(),
        creds in proptest::option::of(userpass()),
        pipelined in any::<bool>(),
        bytes in server_stream(),
        chunks in vec(1usize..24, 1..40),
    ) {
        let run = |chunks: &[usize]| {
            let mut client = ClientHandshake::new(req.clone(), creds.clone()).pipelined(pipelined);
            let mut input = BytesMut::new();
            let mut output = BytesMut::new();
            client.start(&mut output);
            let mut fed = 0;
            let mut sizes = chunks.iter().copied().cycle();
            let mut result = Ok(ClientEvent::NeedMore);
            while fed < bytes.len() {
                let n = sizes.next().unwrap_or(usize::MAX).clamp(1, bytes.len() - fed);
                input.extend_from_slice(&bytes[fed..fed + n]);
                fed += n;
                result = client.feed(&mut input, &mut output);
                if result != Ok(ClientEvent::NeedMore) {
                    break;
                }
            }
            (result, output.to_vec(), fed - input.len(), client.selected_method())
        };
        prop_assert_eq!(run(&chunks), run(&[usize::MAX]));
    }

    #[test]
    fn client_and_server_agree_whatever_the_chunk_size(
        req in known_request(),
        creds in proptest::option::of(userpass()),
        pipelined in any::<bool>(),
        preference in preference(),
        accept in any::<bool>(),
        chunk in 1usize..32,
    ) {
        let pair = |chunk: usize| {
            Pair::new(
                ClientHandshake::new(req.clone(), creds.clone()).pipelined(pipelined),
                ServerHandshake::new(preference.clone()),
            )
            .chunk(chunk)
            .accept(move |_| accept)
            .run()
        };
        let small = pair(chunk);
        let whole = pair(usize::MAX);
        prop_assert_eq!(&small.server, &whole.server);
        prop_assert_eq!(&small.client, &whole.client);
        match &whole.server {
            ServerEnd::Request(got) => {
                prop_assert_eq!(got, &req);
                prop_assert!(matches!(whole.client, ClientEnd::Reply(_)));
            }
            ServerEnd::NoAcceptableMethod | ServerEnd::AuthFailed => {
                prop_assert!(matches!(whole.client, ClientEnd::Error(_)));
            }
            other => prop_assert!(false, "server ended with {:?}", other),
        }
    }
}
