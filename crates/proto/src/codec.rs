//! The encode/decode traits and the bounds-checked [`Reader`] every decoder goes through.

use bytes::BytesMut;

use crate::error::DecodeError;

/// A message that can be written to a byte buffer.
pub trait Encode {
    /// Appends the wire form of `self` to `buf`.
    fn encode(&self, buf: &mut BytesMut);
    /// The exact number of bytes [`Encode::encode`] appends.
    fn encoded_len(&self) -> usize;
    /// Convenience: the wire form as a fresh buffer.
    fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf
    }
}

/// A message that can be read from a byte buffer which may hold only part of it.
pub trait Decode: Sized {
    /// Decodes one message from the reader, advancing it past exactly the bytes used.
    ///
    /// On `Err(DecodeError::Incomplete { .. })` the reader's position is unspecified; call
    /// again with more bytes from the start of the message.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Decodes one message from the start of `buf`, returning it and the bytes consumed.
    fn decode_prefix(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let msg = Self::decode(&mut r)?;
        Ok((msg, r.position()))
    }
}

/// A cursor over a borrowed byte slice. Every read is bounds-checked and reports how many
/// more bytes it would need, so no decoder ever indexes a slice directly.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// How many bytes have been consumed.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let remaining = self.remaining();
        if remaining < n {
            return Err(DecodeError::Incomplete {
                needed: n - remaining,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes exactly `N` bytes as an array.
    pub fn take_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Takes one byte.
    pub fn take_u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take_array::<1>()?[0])
    }

    /// Takes a big-endian (network order) `u16`.
    pub fn take_u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take_array()?))
    }

    /// Takes a one-byte length followed by that many bytes (the RFC's `LEN | DATA` pair).
    pub fn take_len_prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.take_u8()?;
        self.take(usize::from(len))
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }
}
