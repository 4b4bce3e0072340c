//! `Addr` decoding on arbitrary bytes: never panics, re-encodes to the bytes it used, every
//! shorter prefix is Incomplete, and its text form parses back for IPs and plain names.
#![no_main]

use ferrosocks_proto::{Addr, Decode, DecodeError, Encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Addr::decode_prefix(data) {
        Ok((addr, used)) => {
            assert_eq!(&addr.to_bytes()[..], &data[..used]);
            assert_eq!(addr.encoded_len(), used);
            for cut in 0..used {
                assert!(matches!(
                    Addr::decode_prefix(&data[..cut]),
                    Err(DecodeError::Incomplete { .. })
                ));
            }
            let text = addr.to_string();
            match &addr {
                Addr::Ip(_) => assert_eq!(text.parse::<Addr>().as_ref(), Ok(&addr)),
                // Names holding ':' or brackets, or spelling an IP, need not parse back.
                Addr::Domain(..) => {
                    let _ = text.parse::<Addr>();
                }
            }
        }
        Err(DecodeError::Incomplete { needed }) => assert!(needed >= 1),
        Err(DecodeError::Invalid(_)) => {}
    }
});
