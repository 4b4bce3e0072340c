//! Username/password sub-negotiation (RFC 1929).

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::codec::{Decode, Encode, Reader};
use crate::error::{DecodeError, ProtocolError};

/// The sub-negotiation version RFC 1929 defines.
pub const USERPASS_VERSION: u8 = 0x01;

/// A password. Its `Debug` and `Display` never show the bytes, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// Wraps password bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The raw bytes, for comparison or hashing only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The client's username/password request.
///
/// ```text
/// +----+------+----------+------+----------+
/// |VER | ULEN |  UNAME   | PLEN |  PASSWD  |
/// +----+------+----------+------+----------+
/// | 1  |  1   | 1 to 255 |  1   | 1 to 255 |
/// +----+------+----------+------+----------+
/// ```
/// Zero-length fields decode (they are unambiguous on the wire); they simply never match a
/// configured user. Fields longer than 255 bytes are cut to 255 when encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPassRequest {
    /// UNAME, as raw bytes (RFC 1929 does not promise any encoding).
    pub username: Vec<u8>,
    /// PASSWD.
    pub password: Password,
}

impl Encode for UserPassRequest {
    fn encode(&self, buf: &mut BytesMut) {
        let user = &self.username[..self.username.len().min(255)];
        let pass = &self.password.0[..self.password.0.len().min(255)];
        buf.reserve(3 + user.len() + pass.len());
        buf.put_u8(USERPASS_VERSION);
        buf.put_u8(user.len() as u8);
        buf.put_slice(user);
        buf.put_u8(pass.len() as u8);
        buf.put_slice(pass);
    }

    fn encoded_len(&self) -> usize {
        3 + self.username.len().min(255) + self.password.0.len().min(255)
    }
}

impl Decode for UserPassRequest {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ver = r.take_u8()?;
        if ver != USERPASS_VERSION {
            return Err(ProtocolError::BadUserPassVersion(ver).into());
        }
        let username = r.take_len_prefixed()?.to_vec();
        let password = Password(r.take_len_prefixed()?.to_vec());
        Ok(UserPassRequest { username, password })
    }
}

/// The server's verdict on a username/password request.
///
/// ```text
/// +----+--------+
/// |VER | STATUS |
/// +----+--------+
/// | 1  |   1    |
/// +----+--------+
/// ```
/// STATUS `X'00'` is success; anything else is failure and the server closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPassStatus {
    /// The status octet.
    pub status: u8,
}

impl UserPassStatus {
    /// Success.
    pub const SUCCESS: UserPassStatus = UserPassStatus { status: 0x00 };
    /// The failure status this implementation sends.
    pub const FAILURE: UserPassStatus = UserPassStatus { status: 0x01 };

    /// Whether the status means success.
    pub fn is_success(self) -> bool {
        self.status == 0
    }
}

impl Encode for UserPassStatus {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_slice(&[USERPASS_VERSION, self.status]);
    }

    fn encoded_len(&self) -> usize {
        2
    }
}

impl Decode for UserPassStatus {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let [ver, status] = r.take_array()?;
        // Some servers answer with VER 0x05 here; the status octet is unambiguous either way,
        // so only reject what is clearly not a status message.
        if ver != USERPASS_VERSION && ver != crate::SOCKS_VERSION {
            return Err(ProtocolError::BadUserPassVersion(ver).into());
        }
        Ok(UserPassStatus { status })
    }
}
