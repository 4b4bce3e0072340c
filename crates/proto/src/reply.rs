//! The server's reply (RFC 1928 §6).

use bytes::{BufMut, BytesMut};

use crate::addr::Addr;
use crate::codec::{Decode, Encode, Reader};
use crate::error::{DecodeError, ProtocolError};
use crate::SOCKS_VERSION;

codepoint! {
    /// A reply code (`REP`), RFC 1928 §6. Unassigned codes are kept as they are.
    pub struct Rep;
    /// `X'00'` succeeded.
    SUCCEEDED = 0x00 => "succeeded",
    /// `X'01'` general SOCKS server failure.
    GENERAL_FAILURE = 0x01 => "general SOCKS server failure",
    /// `X'02'` connection not allowed by ruleset.
    CONNECTION_NOT_ALLOWED = 0x02 => "connection not allowed by ruleset",
    /// `X'03'` Network unreachable.
    NETWORK_UNREACHABLE = 0x03 => "network unreachable",
    /// `X'04'` Host unreachable.
    HOST_UNREACHABLE = 0x04 => "host unreachable",
    /// `X'05'` Connection refused.
    CONNECTION_REFUSED = 0x05 => "connection refused",
    /// `X'06'` TTL expired.
    TTL_EXPIRED = 0x06 => "TTL expired",
    /// `X'07'` Command not supported.
    COMMAND_NOT_SUPPORTED = 0x07 => "command not supported",
    /// `X'08'` Address type not supported.
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08 => "address type not supported",
}

/// A SOCKS reply.
///
/// ```text
/// +----+-----+-------+------+----------+----------+
/// |VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
/// +----+-----+-------+------+----------+----------+
/// | 1  |  1  | X'00' |  1   | Variable |    2     |
/// +----+-----+-------+------+----------+----------+
/// ```
/// RSV is written as zero and ignored when reading, as some servers fill it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// REP.
    pub rep: Rep,
    /// BND.ADDR and BND.PORT.
    pub bnd: Addr,
}

impl Reply {
    /// A failure reply with the unspecified address `0.0.0.0:0` as BND.
    pub fn failure(rep: Rep) -> Self {
        Reply {
            rep,
            bnd: Addr::UNSPECIFIED,
        }
    }
}

impl Encode for Reply {
    fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        buf.put_slice(&[SOCKS_VERSION, self.rep.0, 0x00]);
        self.bnd.encode(buf);
    }

    fn encoded_len(&self) -> usize {
        3 + self.bnd.encoded_len()
    }
}

impl Decode for Reply {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let [ver, rep, _rsv] = r.take_array()?;
        if ver != SOCKS_VERSION {
            return Err(ProtocolError::BadVersion(ver).into());
        }
        let bnd = Addr::decode(r)?;
        Ok(Reply { rep: Rep(rep), bnd })
    }
}
