//! Arbitrary server bytes, in arbitrary chunk sizes, fed to a `ClientHandshake` built from
//! fuzzed options. Checks that it never panics, only consumes input, and gives the same
//! result as when the bytes arrive in one piece.
#![no_main]

use bytes::BytesMut;
use ferrosocks_proto::{
    Addr, ClientEvent, ClientHandshake, ClientHandshakeError, Command, Decode, Method, Password,
    Request, UserPassRequest,
};
use libfuzzer_sys::fuzz_target;

type Trace = (
    Result<ClientEvent, ClientHandshakeError>,
    Vec<u8>,
    usize,
    Option<Method>,
);

fn run(
    request: &Request,
    creds: &Option<UserPassRequest>,
    pipelined: bool,
    chunks: &[u8],
    data: &[u8],
) -> Trace {
    let mut client = ClientHandshake::new(request.clone(), creds.clone()).pipelined(pipelined);
    let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
    client.start(&mut output);
    let mut sizes = chunks.iter().map(|&c| usize::from(c).max(1)).cycle();
    let mut fed = 0;
    let mut result = Ok(ClientEvent::NeedMore);
    while fed < data.len() {
        let n = sizes.next().unwrap_or(usize::MAX).min(data.len() - fed);
        input.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        let before = input.len();
        result = client.feed(&mut input, &mut output);
        assert!(input.len() <= before, "feed added input");
        if result != Ok(ClientEvent::NeedMore) {
            break;
        }
    }
    (
        result,
        output.to_vec(),
        fed - input.len(),
        client.selected_method(),
    )
}

fuzz_target!(|data: &[u8]| {
    // Header: flags, then the request's address in wire form, then chunk sizes.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (dst, rest) = match Addr::decode_prefix(rest) {
        Ok((addr, used)) => (addr, &rest[used..]),
        Err(_) => (Addr::UNSPECIFIED, rest),
    };
    let request = Request {
        command: Command(flags >> 6),
        dst,
    };
    let creds = (flags & 1 != 0).then(|| UserPassRequest {
        username: b"user".to_vec(),
        password: Password::new(b"pass".to_vec()),
    });
    let pipelined = flags & 2 != 0;
    let n_chunks = usize::from((flags >> 2) & 0b1111).min(rest.len());
    let (chunks, data) = rest.split_at(n_chunks);
    let chunked = run(&request, &creds, pipelined, chunks, data);
    let whole = run(&request, &creds, pipelined, &[], data);
    assert_eq!(chunked, whole, "result depends on chunking");
});
