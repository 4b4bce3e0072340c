//! Helpers shared by the integration tests: hex literals, a table of every message type,
//! and an in-memory `Pair` that drives a `ClientHandshake` against a `ServerHandshake`
//! (after quinn's test `Pair`), moving bytes between them in chunks of a chosen size.
#![allow(dead_code, unreachable_pub)]

use bytes::BytesMut;
use ferrosocks_proto::{
    Addr, ClientEvent, ClientHandshake, ClientHandshakeError, Decode, DecodeError, Encode, Event,
    Greeting, HandshakeError, MethodSelection, Reply, Request, ServerHandshake, UdpHeader,
    UserPassRequest, UserPassStatus,
};

/// Bytes from a hex string; spaces and newlines are ignored.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// The wire form of a message as a `Vec`.
pub fn wire<M: Encode>(m: &M) -> Vec<u8> {
    let bytes = m.to_bytes();
    assert_eq!(
        bytes.len(),
        m.encoded_len(),
        "encoded_len disagrees with encode"
    );
    bytes.to_vec()
}

/// Every decodable message type, so a test can run over all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Greeting,
    MethodSelection,
    UserPassRequest,
    UserPassStatus,
    Request,
    Reply,
    UdpHeader,
    Addr,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Greeting,
        Kind::MethodSelection,
        Kind::UserPassRequest,
        Kind::UserPassStatus,
        Kind::Request,
        Kind::Reply,
        Kind::UdpHeader,
        Kind::Addr,
    ];

    /// Decodes one message of this kind from the start of `buf`; returns the bytes used.
    pub fn decode_len(self, buf: &[u8]) -> Result<usize, DecodeError> {
        fn len<M: Decode>(buf: &[u8]) -> Result<usize, DecodeError> {
            M::decode_prefix(buf).map(|(_, used)| used)
        }
        match self {
            Kind::Greeting => len::<Greeting>(buf),
            Kind::MethodSelection => len::<MethodSelection>(buf),
            Kind::UserPassRequest => len::<UserPassRequest>(buf),
            Kind::UserPassStatus => len::<UserPassStatus>(buf),
            Kind::Request => len::<Request>(buf),
            Kind::Reply => len::<Reply>(buf),
            Kind::UdpHeader => len::<UdpHeader>(buf),
            Kind::Addr => len::<Addr>(buf),
        }
    }
}

/// How the server side of a [`Pair`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerEnd {
    /// Still waiting for bytes when the run stopped.
    Waiting,
    /// `Event::Request`: the handshake completed with this request.
    Request(Request),
    /// `Event::NoAcceptableMethod`.
    NoAcceptableMethod,
    /// `Event::AuthFailed`.
    AuthFailed,
    /// A protocol error.
    Error(HandshakeError),
}

/// How the client side of a [`Pair`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEnd {
    /// Still waiting when the server had closed and nothing was left to read.
    Waiting,
    /// The reply arrived.
    Reply(Reply),
    /// The handshake failed.
    Error(ClientHandshakeError),
}

/// A client and a server handshake connected by two in-memory byte pipes.
pub struct Pair {
    pub client: ClientHandshake,
    pub server: ServerHandshake,
    /// Bytes moved per step from each pipe to its reader; at least 1.
    pub chunk: usize,
    /// The server's verdict on the credentials it is shown.
    pub accept: Box<dyn FnMut(&UserPassRequest) -> bool>,
    /// What the server answers to a request.
    pub reply: Reply,
    /// Bytes the client wrote after its handshake (the start of the tunnel).
    pub client_payload: Vec<u8>,
    /// Bytes the server wrote after its reply.
    pub server_payload: Vec<u8>,
}

/// What a [`Pair`] run produced.
#[derive(Debug)]
pub struct Outcome {
    pub server: ServerEnd,
    pub client: ClientEnd,
    /// Credentials the server was asked to check.
    pub credentials_seen: Vec<UserPassRequest>,
    /// Bytes left in the server's input once it finished: the client's tunnel payload.
    pub server_leftover: Vec<u8>,
    /// Bytes left in the client's input once it finished: the server's tunnel payload.
    pub client_leftover: Vec<u8>,
}

impl Pair {
    pub fn new(client: ClientHandshake, server: ServerHandshake) -> Self {
        Self {
            client,
            server,
            chunk: usize::MAX,
            accept: Box::new(|_| true),
            reply: Reply {
                rep: ferrosocks_proto::Rep::SUCCEEDED,
                bnd: "192.0.2.1:1080".parse().unwrap(),
            },
            client_payload: Vec::new(),
            server_payload: Vec::new(),
        }
    }

    pub fn chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    pub fn accept(mut self, f: impl FnMut(&UserPassRequest) -> bool + 'static) -> Self {
        self.accept = Box::new(f);
        self
    }

    /// Runs both sides until neither can make progress.
    pub fn run(mut self) -> Outcome {
        let mut to_server = BytesMut::new(); // on the wire, not yet read by the server
        let mut server_in = BytesMut::new();
        let mut to_client = BytesMut::new();
        let mut client_in = BytesMut::new();
        let mut server_end = ServerEnd::Waiting;
        let mut client_end = ClientEnd::Waiting;
        let mut credentials_seen = Vec::new();

        self.client.start(&mut to_server);

        // Every step moves at least one byte or finishes a side, so this bound is generous.
        for _ in 0..100_000 {
            let mut progressed = false;

            if matches!(server_end, ServerEnd::Waiting) && !to_server.is_empty() {
                let n = self.chunk.min(to_server.len());
                server_in.extend_from_slice(&to_server.split_to(n));
                progressed = true;
                loop {
                    match self.server.feed(&mut server_in, &mut to_client) {
                        Ok(Event::NeedMore) => break,
                        Ok(Event::Authenticate(creds)) => {
                            let verdict = (self.accept)(&creds);
                            credentials_seen.push(creds);
                            if let Event::AuthFailed =
                                self.server.handle_auth_verdict(verdict, &mut to_client)
                            {
                                server_end = ServerEnd::AuthFailed;
                                break;
                            }
                        }
                        Ok(Event::Request(req)) => {
                            self.reply.encode(&mut to_client);
                            to_client.extend_from_slice(&self.server_payload);
                            server_end = ServerEnd::Request(req);
                            break;
                        }
                        Ok(Event::NoAcceptableMethod) => {
                            server_end = ServerEnd::NoAcceptableMethod;
                            break;
                        }
                        Ok(Event::AuthFailed) => unreachable!("only handle_auth_verdict says this"),
                        Err(e) => {
                            server_end = ServerEnd::Error(e);
                            break;
                        }
                    }
                }
            }

            if matches!(client_end, ClientEnd::Waiting) && !to_client.is_empty() {
                let n = self.chunk.min(to_client.len());
                client_in.extend_from_slice(&to_client.split_to(n));
                progressed = true;
                match self.client.feed(&mut client_in, &mut to_server) {
                    Ok(ClientEvent::NeedMore) => {}
                    Ok(ClientEvent::Reply(reply)) => {
                        // The tunnel is open: the client starts talking.
                        to_server.extend_from_slice(&self.client_payload);
                        client_end = ClientEnd::Reply(reply);
                    }
                    Err(e) => client_end = ClientEnd::Error(e),
                }
            }

            if !progressed {
                break;
            }
        }

        // Whatever is still on the wire after a side finished belongs to the tunnel.
        server_in.extend_from_slice(&to_server);
        client_in.extend_from_slice(&to_client);
        Outcome {
            server: server_end,
            client: client_end,
            credentials_seen,
            server_leftover: server_in.to_vec(),
            client_leftover: client_in.to_vec(),
        }
    }
}
