//! Method negotiation (RFC 1928 §3).

use bytes::{BufMut, BytesMut};

use crate::codec::{Decode, Encode, Reader};
use crate::error::{DecodeError, ProtocolError};
use crate::SOCKS_VERSION;

codepoint! {
    /// An authentication method code (`METHOD`), RFC 1928 §3.
    pub struct Method;
    /// `X'00'` NO AUTHENTICATION REQUIRED.
    NO_AUTH = 0x00 => "no authentication required",
    /// `X'01'` GSSAPI.
    GSSAPI = 0x01 => "GSSAPI",
    /// `X'02'` USERNAME/PASSWORD (RFC 1929).
    USER_PASS = 0x02 => "username/password",
    /// `X'FF'` NO ACCEPTABLE METHODS.
    NO_ACCEPTABLE = 0xff => "no acceptable methods",
}

impl Method {
    /// Whether the code lies in `X'80'`..=`X'FE'`, reserved for private methods.
    pub fn is_private(self) -> bool {
        (0x80..=0xfe).contains(&self.0)
    }
}

/// The client's version identifier/method selection message.
///
/// ```text
/// +----+----------+----------+
/// |VER | NMETHODS | METHODS  |
/// +----+----------+----------+
/// | 1  |    1     | 1 to 255 |
/// +----+----------+----------+
/// ```
/// An empty method list decodes (it is well-formed on the wire) and can only be answered
/// with `NO ACCEPTABLE METHODS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The methods the client supports, in the order it sent them.
    pub methods: Vec<Method>,
}

impl Encode for Greeting {
    fn encode(&self, buf: &mut BytesMut) {
        // At most 255 methods fit the NMETHODS octet; extra ones are not sent.
        let methods = &self.methods[..self.methods.len().min(255)];
        buf.reserve(2 + methods.len());
        buf.put_u8(SOCKS_VERSION);
        buf.put_u8(methods.len() as u8);
        buf.extend(methods.iter().map(|m| m.0));
    }

    fn encoded_len(&self) -> usize {
        2 + self.methods.len().min(255)
    }
}

impl Decode for Greeting {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ver = r.take_u8()?;
        if ver != SOCKS_VERSION {
            return Err(ProtocolError::BadVersion(ver).into());
        }
        let methods = r.take_len_prefixed()?;
        Ok(Greeting {
            methods: methods.iter().copied().map(Method).collect(),
        })
    }
}

/// The server's METHOD selection message.
///
/// ```text
/// +----+--------+
/// |VER | METHOD |
/// +----+--------+
/// | 1  |   1    |
/// +----+--------+
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSelection {
    /// The chosen method, or [`Method::NO_ACCEPTABLE`].
    pub method: Method,
}

impl Encode for MethodSelection {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_slice(&[SOCKS_VERSION, self.method.0]);
    }

    fn encoded_len(&self) -> usize {
        2
    }
}

impl Decode for MethodSelection {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let [ver, method] = r.take_array()?;
        if ver != SOCKS_VERSION {
            return Err(ProtocolError::BadVersion(ver).into());
        }
        Ok(MethodSelection {
            method: Method(method),
        })
    }
}
