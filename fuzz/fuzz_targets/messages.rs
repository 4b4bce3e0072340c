//! Every message decoder on the same arbitrary bytes: never panics, and what decodes
//! re-encodes to the bytes it used (with the fields the decoder ignores made canonical).
#![no_main]

use ferrosocks_proto::{
    Decode, DecodeError, Encode, Greeting, MethodSelection, Reply, Request, UdpHeader,
    UserPassRequest, UserPassStatus,
};
use libfuzzer_sys::fuzz_target;

fn check<M: Decode + Encode + std::fmt::Debug>(data: &[u8], canonical: fn(&mut [u8])) {
    match M::decode_prefix(data) {
        Ok((msg, used)) => {
            let mut expected = data[..used].to_vec();
            canonical(&mut expected);
            assert_eq!(&msg.to_bytes()[..], &expected[..], "{msg:?}");
            assert_eq!(msg.encoded_len(), used);
        }
        Err(DecodeError::Incomplete { needed }) => assert!(needed >= 1),
        Err(DecodeError::Invalid(_)) => {}
    }
}

fn exact(_: &mut [u8]) {}

fuzz_target!(|data: &[u8]| {
    check::<Greeting>(data, exact);
    check::<MethodSelection>(data, exact);
    check::<UserPassRequest>(data, exact);
    // VER 05 is accepted for the status, and RSV is ignored in replies.
    check::<UserPassStatus>(data, |b| b[0] = 0x01);
    check::<Request>(data, exact);
    check::<Reply>(data, |b| b[2] = 0x00);
    check::<UdpHeader>(data, exact);
});
