//! Streams arrive in arbitrary pieces: every message split at every byte, several messages
//! in one buffer, and both handshakes fed whole, byte by byte, and against each other.

mod common;

use bytes::BytesMut;
use common::{hex, wire, ClientEnd, Kind, Pair, ServerEnd};
use ferrosocks_proto::{
    Addr, ClientEvent, ClientHandshake, ClientHandshakeError, Command, DecodeError, Encode, Event,
    Frag, Greeting, Method, MethodSelection, Password, ProtocolError, Rep, Reply, Request,
    ServerHandshake, Stage, UdpHeader, UserPassRequest, UserPassStatus,
};

fn addrs() -> Vec<Addr> {
    vec![
        "192.0.2.1:80".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
        "example.com:8080".parse().unwrap(),
        format!("{}:1", "x".repeat(255)).parse().unwrap(),
    ]
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
        dst: dst.parse().unwrap(),
    }
}

/// Valid encodings of every message type, with IPv4, IPv6 and domain addresses.
fn corpus() -> Vec<(Kind, Vec<u8>)> {
    let mut out = vec![
        (Kind::Greeting, wire(&Greeting { methods: vec![] })),
        (
            Kind::Greeting,
            wire(&Greeting {
                methods: vec![Method::NO_AUTH],
            }),
        ),
        (
            Kind::Greeting,
            wire(&Greeting {
                methods: (0..=254).map(Method).collect(),
            }),
        ),
        (
            Kind::MethodSelection,
            wire(&MethodSelection {
                method: Method::USER_PASS,
            }),
        ),
        (Kind::UserPassRequest, wire(&creds("", ""))),
        (Kind::UserPassRequest, wire(&creds("alice", "s3cret"))),
        (
            Kind::UserPassRequest,
            wire(&creds(&"u".repeat(255), &"p".repeat(255))),
        ),
        (Kind::UserPassStatus, wire(&UserPassStatus::FAILURE)),
    ];
    for (i, addr) in addrs().into_iter().enumerate() {
        out.push((Kind::Addr, wire(&addr)));
        out.push((
            Kind::Request,
            wire(&Request {
                command: Command(i as u8 + 1),
                dst: addr.clone(),
            }),
        ));
        out.push((
            Kind::Reply,
            wire(&Reply {
                rep: Rep(i as u8),
                bnd: addr.clone(),
            }),
        ));
        out.push((
            Kind::UdpHeader,
            wire(&UdpHeader {
                frag: Frag(i as u8),
                dst: addr,
            }),
        ));
    }
    out
}

#[test]
fn every_prefix_of_every_message_is_incomplete_and_asks_for_no_more_than_is_missing() {
    for (kind, bytes) in corpus() {
        for cut in 0..bytes.len() {
            match kind.decode_len(&bytes[..cut]) {
                Err(DecodeError::Incomplete { needed }) => assert!(
                    (1..=bytes.len() - cut).contains(&needed),
                    "{kind:?} cut at {cut} of {}: needed {needed}",
                    bytes.len()
                ),
                other => panic!("{kind:?} cut at {cut} of {}: {other:?}", bytes.len()),
            }
        }
        assert_eq!(kind.decode_len(&bytes), Ok(bytes.len()), "{kind:?} whole");
    }
}

#[test]
fn message_split_in_two_at_every_byte_decodes_once_the_second_piece_arrives() {
    for (kind, bytes) in corpus() {
        for cut in 0..=bytes.len() {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&bytes[..cut]);
            if cut < bytes.len() {
                assert!(matches!(
                    kind.decode_len(&buf),
                    Err(DecodeError::Incomplete { .. })
                ));
            }
            buf.extend_from_slice(&bytes[cut..]);
            // Trailing bytes of the next message never change the length used.
            buf.extend_from_slice(&[0x05, 0x01]);
            assert_eq!(
                kind.decode_len(&buf),
                Ok(bytes.len()),
                "{kind:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn many_messages_of_one_kind_in_one_buffer_decode_one_after_another() {
    let corpus = corpus();
    for kind in Kind::ALL {
        let messages: Vec<&Vec<u8>> = corpus
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, b)| b)
            .collect();
        let buf: Vec<u8> = messages.iter().flat_map(|b| b.iter().copied()).collect();
        let mut at = 0;
        for m in &messages {
            assert_eq!(kind.decode_len(&buf[at..]), Ok(m.len()), "{kind:?} at {at}");
            at += m.len();
        }
        assert_eq!(at, buf.len());
        assert!(matches!(
            kind.decode_len(&buf[at..]),
            Err(DecodeError::Incomplete { .. })
        ));
    }
}

#[test]
fn a_whole_client_conversation_in_one_buffer_decodes_message_by_message() {
    let corpus = corpus();
    let buf: Vec<u8> = corpus.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let mut at = 0;
    for (kind, bytes) in &corpus {
        assert_eq!(
            kind.decode_len(&buf[at..]),
            Ok(bytes.len()),
            "{kind:?} at {at}"
        );
        at += bytes.len();
    }
    assert_eq!(at, buf.len());
}

// ---------------------------------------------------------------------------------------
// ServerHandshake fed by hand

const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

/// greeting (NO AUTH, USER/PASS) + alice/s3cret + CONNECT example.com:443 + payload.
fn userpass_session() -> (Vec<u8>, usize) {
    let mut bytes = hex("05 02 00 02");
    bytes.extend(wire(&creds("alice", "s3cret")));
    bytes.extend(wire(&connect("example.com:443")));
    let handshake_len = bytes.len();
    bytes.extend_from_slice(PAYLOAD);
    (bytes, handshake_len)
}

#[test]
fn server_fed_a_whole_userpass_session_at_once_leaves_exactly_the_payload() {
    let (bytes, _) = userpass_session();
    let mut server = ServerHandshake::new(vec![Method::USER_PASS]);
    let mut input = BytesMut::from(&bytes[..]);
    let mut output = BytesMut::new();

    assert_eq!(
        server.feed(&mut input, &mut output),
        Ok(Event::Authenticate(creds("alice", "s3cret")))
    );
    assert_eq!(server.stage(), Stage::AuthVerdict);
    // Feeding while the verdict is pending consumes nothing.
    let before = input.len();
    assert_eq!(server.feed(&mut input, &mut output), Ok(Event::NeedMore));
    assert_eq!(input.len(), before);

    assert_eq!(
        server.handle_auth_verdict(true, &mut output),
        Event::NeedMore
    );
    assert_eq!(
        server.feed(&mut input, &mut output),
        Ok(Event::Request(connect("example.com:443")))
    );
    assert_eq!(&input[..], PAYLOAD);
    assert_eq!(&output[..], &hex("05 02 01 00")[..]);
    assert_eq!(server.selected_method(), Some(Method::USER_PASS));
    assert_eq!(server.stage(), Stage::Done);
}

#[test]
fn server_fed_one_byte_at_a_time_consumes_exactly_the_handshake() {
    let (bytes, handshake_len) = userpass_session();
    let mut server = ServerHandshake::new(vec![Method::USER_PASS]);
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    let mut events = Vec::new();
    let mut request_after = None;

    for (i, byte) in bytes.iter().enumerate() {
        input.extend_from_slice(&[*byte]);
        loop {
            match server.feed(&mut input, &mut output).unwrap() {
                Event::NeedMore => break,
                Event::Authenticate(c) => {
                    events.push(format!("auth {:?}", String::from_utf8_lossy(&c.username)));
                    assert_eq!(
                        server.handle_auth_verdict(true, &mut output),
                        Event::NeedMore
                    );
                }
                Event::Request(r) => {
                    events.push(format!("request {}", r.dst));
                    request_after = Some(i + 1);
                    assert!(input.is_empty(), "the request's last byte completes it");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(events, ["auth \"alice\"", "request example.com:443"]);
    assert_eq!(request_after, Some(handshake_len));
    // Bytes fed after the handshake are left alone.
    assert_eq!(&input[..], PAYLOAD);
    assert_eq!(&output[..], &hex("05 02 01 00")[..]);
}

#[test]
fn server_handles_a_userpass_session_split_in_two_at_every_byte() {
    let (bytes, _) = userpass_session();
    for cut in 0..=bytes.len() {
        let mut server = ServerHandshake::new(vec![Method::USER_PASS]);
        let mut input = BytesMut::new();
        let mut output = BytesMut::new();
        let mut request = None;
        for piece in [&bytes[..cut], &bytes[cut..]] {
            input.extend_from_slice(piece);
            loop {
                match server.feed(&mut input, &mut output).unwrap() {
                    Event::NeedMore => break,
                    Event::Authenticate(c) => {
                        assert_eq!(c, creds("alice", "s3cret"));
                        server.handle_auth_verdict(true, &mut output);
                    }
                    Event::Request(r) => {
                        request = Some(r);
                        break;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(request, Some(connect("example.com:443")), "cut at {cut}");
        assert_eq!(&input[..], PAYLOAD, "cut at {cut}");
        assert_eq!(&output[..], &hex("05 02 01 00")[..]);
    }
}

#[test]
fn server_with_no_auth_handles_a_pipelined_greeting_and_request_in_one_feed() {
    let mut bytes = hex("05 01 00");
    bytes.extend(wire(&connect("[2001:db8::1]:22")));
    bytes.extend_from_slice(PAYLOAD);
    let mut server = ServerHandshake::new(vec![Method::NO_AUTH]);
    let mut input = BytesMut::from(&bytes[..]);
    let mut output = BytesMut::new();
    assert_eq!(
        server.feed(&mut input, &mut output),
        Ok(Event::Request(connect("[2001:db8::1]:22")))
    );
    assert_eq!(&input[..], PAYLOAD);
    assert_eq!(&output[..], &hex("05 00")[..]);
}

#[test]
fn server_rejecting_credentials_writes_failure_and_ignores_the_rest() {
    let (bytes, _) = userpass_session();
    let mut server = ServerHandshake::new(vec![Method::USER_PASS]);
    let mut input = BytesMut::from(&bytes[..]);
    let mut output = BytesMut::new();
    assert!(matches!(
        server.feed(&mut input, &mut output),
        Ok(Event::Authenticate(_))
    ));
    assert_eq!(
        server.handle_auth_verdict(false, &mut output),
        Event::AuthFailed
    );
    assert_eq!(&output[..], &hex("05 02 01 01")[..]);
    assert_eq!(server.stage(), Stage::Done);
    let left = input.len();
    assert_eq!(server.feed(&mut input, &mut output), Ok(Event::NeedMore));
    assert_eq!(
        input.len(),
        left,
        "no request is accepted after a rejection"
    );
    // A verdict out of turn changes nothing.
    assert_eq!(
        server.handle_auth_verdict(true, &mut output),
        Event::NeedMore
    );
    assert_eq!(&output[..], &hex("05 02 01 01")[..]);
}

#[test]
fn server_prefers_methods_in_its_own_order() {
    for (preference, expected) in [
        (vec![Method::USER_PASS, Method::NO_AUTH], Method::USER_PASS),
        (vec![Method::NO_AUTH, Method::USER_PASS], Method::NO_AUTH),
        // GSSAPI is not implemented, so it is never selected even when preferred.
        (vec![Method::GSSAPI, Method::NO_AUTH], Method::NO_AUTH),
    ] {
        let mut server = ServerHandshake::new(preference);
        let mut input = BytesMut::from(&hex("05 03 00 01 02")[..]);
        let mut output = BytesMut::new();
        assert_eq!(server.feed(&mut input, &mut output), Ok(Event::NeedMore));
        assert_eq!(server.selected_method(), Some(expected));
        assert_eq!(&output[..], &[0x05, expected.0]);
    }
}

// ---------------------------------------------------------------------------------------
// ClientHandshake fed by hand

#[test]
fn client_fed_the_server_answers_one_byte_at_a_time_leaves_tunnel_bytes() {
    let mut client = ClientHandshake::new(connect("example.com:443"), Some(creds("alice", "pw")));
    let mut output = BytesMut::new();
    client.start(&mut output);
    assert_eq!(&output[..], &hex("05 02 00 02")[..]);
    output.clear();

    let mut answers = hex("05 02 01 00");
    answers.extend(wire(&Reply {
        rep: Rep::SUCCEEDED,
        bnd: "192.0.2.1:1080".parse().unwrap(),
    }));
    let answers_len = answers.len();
    answers.extend_from_slice(b"HTTP/1.1 200 OK\r\n");

    let mut input = BytesMut::new();
    let mut reply_at = None;
    for (i, byte) in answers.iter().enumerate() {
        input.extend_from_slice(&[*byte]);
        if reply_at.is_none() {
            if let ClientEvent::Reply(reply) = client.feed(&mut input, &mut output).unwrap() {
                assert_eq!(reply.rep, Rep::SUCCEEDED);
                reply_at = Some(i + 1);
            }
        }
    }
    assert_eq!(reply_at, Some(answers_len));
    assert_eq!(&input[..], b"HTTP/1.1 200 OK\r\n");
    let mut expected = wire(&creds("alice", "pw"));
    expected.extend(wire(&connect("example.com:443")));
    assert_eq!(&output[..], &expected[..]);
}

#[test]
fn client_rejects_a_method_it_did_not_offer() {
    for (creds_given, answer) in [(false, 0x02), (false, 0x01), (true, 0x01), (true, 0x80)] {
        let creds = creds_given.then(|| creds("a", "b"));
        let mut client = ClientHandshake::new(connect("192.0.2.1:80"), creds);
        let mut output = BytesMut::new();
        client.start(&mut output);
        let mut input = BytesMut::from(&[0x05, answer][..]);
        assert_eq!(
            client.feed(&mut input, &mut output),
            Err(ClientHandshakeError::Protocol(
                ProtocolError::UnexpectedMethod(answer)
            ))
        );
    }
}

#[test]
fn client_reports_a_malformed_reply() {
    let mut client = ClientHandshake::new(connect("192.0.2.1:80"), None);
    let mut output = BytesMut::new();
    client.start(&mut output);
    let mut input = BytesMut::from(&hex("05 00  05 00 00 09 00000000 0000")[..]);
    assert_eq!(
        client.feed(&mut input, &mut output),
        Err(ClientHandshakeError::Protocol(ProtocolError::UnknownAtyp(
            9
        )))
    );
}

#[test]
fn client_feed_without_start_sends_the_greeting_first() {
    let mut client = ClientHandshake::new(connect("192.0.2.1:80"), None);
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    assert_eq!(
        client.feed(&mut input, &mut output),
        Ok(ClientEvent::NeedMore)
    );
    assert_eq!(&output[..], &hex("05 01 00")[..]);
    // start() after the fact does not send it twice.
    client.start(&mut output);
    assert_eq!(&output[..], &hex("05 01 00")[..]);
}

// ---------------------------------------------------------------------------------------
// ClientHandshake against ServerHandshake

const CHUNKS: [usize; 6] = [1, 2, 3, 5, 7, usize::MAX];

fn reply_ok() -> Reply {
    Reply {
        rep: Rep::SUCCEEDED,
        bnd: "192.0.2.1:1080".parse().unwrap(),
    }
}

#[test]
fn pair_without_auth_completes_and_carries_payload_both_ways() {
    for chunk in CHUNKS {
        let mut pair = Pair::new(
            ClientHandshake::new(connect("example.com:443"), None),
            ServerHandshake::new(vec![Method::NO_AUTH]),
        )
        .chunk(chunk);
        pair.client_payload = b"hello".to_vec();
        pair.server_payload = b"world".to_vec();
        let out = pair.run();
        assert_eq!(
            out.server,
            ServerEnd::Request(connect("example.com:443")),
            "chunk {chunk}"
        );
        assert_eq!(out.client, ClientEnd::Reply(reply_ok()), "chunk {chunk}");
        assert!(out.credentials_seen.is_empty());
        assert_eq!(out.server_leftover, b"hello");
        assert_eq!(out.client_leftover, b"world");
    }
}

#[test]
fn pair_with_pipelined_client_completes_in_one_round_trip() {
    for chunk in CHUNKS {
        let mut pair = Pair::new(
            ClientHandshake::new(connect("192.0.2.9:25"), None).pipelined(true),
            ServerHandshake::new(vec![Method::NO_AUTH]),
        )
        .chunk(chunk);
        pair.server_payload = b"220 ready\r\n".to_vec();
        let out = pair.run();
        assert_eq!(out.server, ServerEnd::Request(connect("192.0.2.9:25")));
        assert_eq!(out.client, ClientEnd::Reply(reply_ok()));
        assert_eq!(out.client_leftover, b"220 ready\r\n");
    }
}

#[test]
fn pair_with_accepted_credentials_completes() {
    for chunk in CHUNKS {
        let mut pair = Pair::new(
            ClientHandshake::new(connect("[2001:db8::7]:993"), Some(creds("alice", "s3cret"))),
            ServerHandshake::new(vec![Method::USER_PASS]),
        )
        .chunk(chunk)
        .accept(|c| c.username == b"alice" && c.password.expose() == b"s3cret");
        pair.client_payload = b"a1 LOGIN".to_vec();
        let out = pair.run();
        assert_eq!(out.credentials_seen, vec![creds("alice", "s3cret")]);
        assert_eq!(out.server, ServerEnd::Request(connect("[2001:db8::7]:993")));
        assert_eq!(out.client, ClientEnd::Reply(reply_ok()));
        assert_eq!(out.server_leftover, b"a1 LOGIN");
    }
}

#[test]
fn pair_with_rejected_credentials_fails_on_both_sides() {
    for chunk in CHUNKS {
        let out = Pair::new(
            ClientHandshake::new(connect("example.com:80"), Some(creds("mallory", "guess"))),
            ServerHandshake::new(vec![Method::USER_PASS]),
        )
        .chunk(chunk)
        .accept(|_| false)
        .run();
        assert_eq!(out.server, ServerEnd::AuthFailed);
        assert_eq!(
            out.client,
            ClientEnd::Error(ClientHandshakeError::AuthFailed(0x01))
        );
        assert!(out.server_leftover.is_empty(), "the request is never sent");
    }
}

#[test]
fn pair_with_credentials_uses_no_auth_when_the_server_prefers_it() {
    let out = Pair::new(
        ClientHandshake::new(connect("example.com:80"), Some(creds("alice", "s3cret"))),
        ServerHandshake::new(vec![Method::NO_AUTH, Method::USER_PASS]),
    )
    .run();
    assert!(out.credentials_seen.is_empty());
    assert_eq!(out.server, ServerEnd::Request(connect("example.com:80")));
    assert_eq!(out.client, ClientEnd::Reply(reply_ok()));
}

#[test]
fn pair_without_a_common_method_ends_with_no_acceptable_methods() {
    for chunk in CHUNKS {
        let out = Pair::new(
            ClientHandshake::new(connect("example.com:80"), None),
            ServerHandshake::new(vec![Method::USER_PASS]),
        )
        .chunk(chunk)
        .run();
        assert_eq!(out.server, ServerEnd::NoAcceptableMethod);
        assert_eq!(
            out.client,
            ClientEnd::Error(ClientHandshakeError::NoAcceptableMethod)
        );
    }
}

#[test]
fn pair_with_pipelined_client_and_no_common_method_sends_nothing_after_05_ff() {
    let out = Pair::new(
        ClientHandshake::new(connect("example.com:80"), None).pipelined(true),
        ServerHandshake::new(vec![Method::USER_PASS]),
    )
    .run();
    assert_eq!(out.server, ServerEnd::NoAcceptableMethod);
    assert_eq!(
        out.client,
        ClientEnd::Error(ClientHandshakeError::NoAcceptableMethod)
    );
    // The pipelined request is still unread in the server's input; the server closes.
    assert_eq!(out.server_leftover, wire(&connect("example.com:80")));
}

#[test]
fn pair_delivers_a_failure_reply_to_the_client() {
    let mut pair = Pair::new(
        ClientHandshake::new(connect("192.0.2.1:9"), None),
        ServerHandshake::new(vec![Method::NO_AUTH]),
    );
    pair.reply = Reply::failure(Rep::CONNECTION_REFUSED);
    let out = pair.run();
    assert_eq!(
        out.client,
        ClientEnd::Reply(Reply::failure(Rep::CONNECTION_REFUSED))
    );
}

#[test]
fn pair_with_unknown_command_fails_on_the_server() {
    let out = Pair::new(
        ClientHandshake::new(
            Request {
                command: Command(0x7f),
                dst: "192.0.2.1:9".parse().unwrap(),
            },
            None,
        ),
        ServerHandshake::new(vec![Method::NO_AUTH]),
    )
    .run();
    match out.server {
        ServerEnd::Error(e) => {
            assert_eq!(
                (e.stage, e.error),
                (Stage::Request, ProtocolError::UnknownCommand(0x7f))
            )
        }
        other => panic!("server ended with {other:?}"),
    }
    // The server sent no reply here (answering X'07' is its caller's job).
    assert_eq!(out.client, ClientEnd::Waiting);
}

#[test]
fn pair_selected_methods_agree() {
    for (creds_given, preference, expected) in [
        (false, vec![Method::NO_AUTH], Method::NO_AUTH),
        (true, vec![Method::USER_PASS], Method::USER_PASS),
    ] {
        let mut client =
            ClientHandshake::new(connect("192.0.2.1:9"), creds_given.then(|| creds("u", "p")));
        let mut server = ServerHandshake::new(preference);
        let (mut c2s, mut s2c) = (BytesMut::new(), BytesMut::new());
        client.start(&mut c2s);
        server.feed(&mut c2s, &mut s2c).unwrap();
        client.feed(&mut s2c, &mut c2s).unwrap();
        assert_eq!(client.selected_method(), Some(expected));
        assert_eq!(server.selected_method(), Some(expected));
    }
}

#[test]
fn encoded_len_matches_the_bytes_written_for_every_corpus_message() {
    // The corpus is built with `wire`, which checks encoded_len; this pins the sizes of a few.
    let sizes: Vec<usize> = addrs().iter().map(Encode::encoded_len).collect();
    assert_eq!(sizes, [7, 19, 1 + 1 + 11 + 2, 1 + 1 + 255 + 2]);
}
