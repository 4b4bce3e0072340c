//! The UDP request header (RFC 1928 §7), decoded in place from a datagram.

use bytes::{BufMut, BytesMut};

use crate::addr::Addr;
use crate::codec::{Decode, Encode, Reader};
use crate::error::{DecodeError, ProtocolError};

/// The FRAG octet: `0` is a standalone datagram, `1..=127` a position in a fragment
/// sequence, and the high bit marks the last fragment of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Frag(pub u8);

impl Frag {
    /// A datagram that is not a fragment.
    pub const STANDALONE: Frag = Frag(0);
    const END_OF_SEQUENCE: u8 = 0x80;

    /// A fragment at `position` (1..=127), marked last when `last` is set.
    pub fn fragment(position: u8, last: bool) -> Frag {
        Frag((position & 0x7f) | if last { Self::END_OF_SEQUENCE } else { 0 })
    }

    /// Whether the datagram is standalone (FRAG `X'00'`).
    pub fn is_standalone(self) -> bool {
        self.0 == 0
    }

    /// The fragment position, without the end-of-sequence bit.
    pub fn position(self) -> u8 {
        self.0 & 0x7f
    }

    /// Whether this fragment ends its sequence.
    pub fn is_last(self) -> bool {
        self.0 & Self::END_OF_SEQUENCE != 0
    }
}

/// The header every datagram carries between a UDP client and the relay.
///
/// ```text
/// +----+------+------+----------+----------+----------+
/// |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
/// +----+------+------+----------+----------+----------+
/// | 2  |  1   |  1   | Variable |    2     | Variable |
/// +----+------+------+----------+----------+----------+
/// ```
/// From client to relay, the address is the destination; from relay to client, it is the
/// source of the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeader {
    /// FRAG.
    pub frag: Frag,
    /// DST.ADDR and DST.PORT.
    pub dst: Addr,
}

impl Encode for UdpHeader {
    fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        buf.put_slice(&[0, 0, self.frag.0]);
        self.dst.encode(buf);
    }

    fn encoded_len(&self) -> usize {
        3 + self.dst.encoded_len()
    }
}

impl Decode for UdpHeader {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let [rsv0, rsv1, frag] = r.take_array()?;
        if rsv0 != 0 || rsv1 != 0 {
            return Err(ProtocolError::BadReserved(rsv0 | rsv1).into());
        }
        let dst = Addr::decode(r)?;
        Ok(UdpHeader {
            frag: Frag(frag),
            dst,
        })
    }
}

/// Splits a whole datagram into its header and a borrowed payload, without copying.
///
/// A datagram is never "incomplete": a truncated header is reported as
/// [`DecodeError::Incomplete`] all the same, and the caller drops it.
pub fn decode_datagram(datagram: &[u8]) -> Result<(UdpHeader, &[u8]), DecodeError> {
    let mut r = Reader::new(datagram);
    let header = UdpHeader::decode(&mut r)?;
    Ok((header, r.rest()))
}

/// Writes a header followed by `payload` into `buf`.
pub fn encode_datagram(header: &UdpHeader, payload: &[u8], buf: &mut BytesMut) {
    buf.reserve(header.encoded_len() + payload.len());
    header.encode(buf);
    buf.put_slice(payload);
}
