//! The client's request (RFC 1928 §4).

use bytes::{BufMut, BytesMut};

use crate::addr::Addr;
use crate::codec::{Decode, Encode, Reader};
use crate::error::{DecodeError, ProtocolError};
use crate::SOCKS_VERSION;

codepoint! {
    /// A request command code (`CMD`), RFC 1928 §4.
    pub struct Command;
    /// `X'01'` CONNECT.
    CONNECT = 0x01 => "CONNECT",
    /// `X'02'` BIND.
    BIND = 0x02 => "BIND",
    /// `X'03'` UDP ASSOCIATE.
    UDP_ASSOCIATE = 0x03 => "UDP ASSOCIATE",
}

impl Command {
    /// Whether this is one of the three commands RFC 1928 defines.
    pub fn is_known(self) -> bool {
        self.name().is_some()
    }
}

/// A SOCKS request.
///
/// ```text
/// +----+-----+-------+------+----------+----------+
/// |VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
/// +----+-----+-------+------+----------+----------+
/// | 1  |  1  | X'00' |  1   | Variable |    2     |
/// +----+-----+-------+------+----------+----------+
/// ```
/// Unknown commands decode (so the server can answer `X'07'`); when both the command and
/// the address type are unknown, the command is reported, since it was read first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// CMD.
    pub command: Command,
    /// DST.ADDR and DST.PORT.
    pub dst: Addr,
}

impl Encode for Request {
    fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        buf.put_slice(&[SOCKS_VERSION, self.command.0, 0x00]);
        self.dst.encode(buf);
    }

    fn encoded_len(&self) -> usize {
        3 + self.dst.encoded_len()
    }
}

impl Decode for Request {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let [ver, cmd, rsv] = r.take_array()?;
        if ver != SOCKS_VERSION {
            return Err(ProtocolError::BadVersion(ver).into());
        }
        let command = Command(cmd);
        let dst = match Addr::decode(r) {
            Err(DecodeError::Invalid(ProtocolError::UnknownAtyp(_))) if !command.is_known() => {
                return Err(ProtocolError::UnknownCommand(cmd).into())
            }
            other => other?,
        };
        if rsv != 0 {
            return Err(ProtocolError::BadReserved(rsv).into());
        }
        Ok(Request { command, dst })
    }
}
