//! Arbitrary bytes, in arbitrary chunk sizes, fed to a `ServerHandshake` whose auth verdict
//! alternates. Checks that the handshake never panics, only ever consumes input, treats
//! `Done` as final, writes at most a method selection and a status, and gives the same
//! result as when the same bytes arrive in one piece.
#![no_main]

use bytes::BytesMut;
use ferrosocks_proto::{Event, HandshakeError, Method, ServerHandshake, Stage};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Trace {
    events: Vec<String>,
    error: Option<HandshakeError>,
    output: Vec<u8>,
    consumed: usize,
}

fn run(preference: &[Method], first_verdict: bool, chunks: &[u8], data: &[u8]) -> Trace {
    let mut server = ServerHandshake::new(preference.to_vec());
    let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
    let mut trace = Trace {
        events: Vec::new(),
        error: None,
        output: Vec::new(),
        consumed: 0,
    };
    let mut verdict = first_verdict;
    let mut sizes = chunks.iter().map(|&c| usize::from(c).max(1)).cycle();
    let mut fed = 0;
    while fed < data.len() {
        let n = sizes.next().unwrap_or(usize::MAX).min(data.len() - fed);
        input.extend_from_slice(&data[fed..fed + n]);
        fed += n;
        loop {
            let before = input.len();
            let result = server.feed(&mut input, &mut output);
            assert!(input.len() <= before, "feed added input");
            match result {
                Ok(Event::NeedMore) => break,
                Ok(Event::Authenticate(creds)) => {
                    assert_eq!(server.stage(), Stage::AuthVerdict);
                    trace.events.push(format!("{creds:?}"));
                    let event = server.handle_auth_verdict(verdict, &mut output);
                    trace.events.push(format!("{event:?}"));
                    verdict = !verdict;
                }
                Ok(other) => {
                    assert_eq!(server.stage(), Stage::Done);
                    trace.events.push(format!("{other:?}"));
                    break;
                }
                Err(e) => {
                    assert_eq!(server.stage(), Stage::Done);
                    trace.error = Some(e);
                    break;
                }
            }
        }
        if server.stage() == Stage::Done {
            let (i, o) = (input.len(), output.len());
            assert_eq!(server.feed(&mut input, &mut output), Ok(Event::NeedMore));
            assert_eq!((input.len(), output.len()), (i, o), "Done is not final");
        }
    }
    assert!(output.len() <= 4, "wrote {output:02x?}");
    trace.output = output.to_vec();
    trace.consumed = fed - input.len();
    trace
}

fuzz_target!(|data: &[u8]| {
    // Header: preference bits, first verdict, and up to 8 chunk sizes.
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let n_chunks = usize::from(config >> 5).min(rest.len());
    let (chunks, data) = rest.split_at(n_chunks);
    let preference: Vec<Method> = match config & 0b11 {
        0 => vec![Method::NO_AUTH],
        1 => vec![Method::USER_PASS],
        2 => vec![Method::USER_PASS, Method::NO_AUTH],
        _ => vec![Method::NO_AUTH, Method::USER_PASS],
    };
    let first_verdict = config & 0b100 != 0;
    let chunked = run(&preference, first_verdict, chunks, data);
    let whole = run(&preference, first_verdict, &[], data);
    assert_eq!(chunked, whole, "result depends on chunking");
});
