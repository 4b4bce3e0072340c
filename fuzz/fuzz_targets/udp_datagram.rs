//! `decode_datagram` on arbitrary bytes: never panics, and whatever decodes re-encodes to
//! exactly the datagram it came from.
#![no_main]

use bytes::BytesMut;
use ferrosocks_proto::udp::{decode_datagram, encode_datagram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, payload)) = decode_datagram(data) {
        let mut again = BytesMut::new();
        encode_datagram(&header, payload, &mut again);
        assert_eq!(&again[..], data);
    }
});
