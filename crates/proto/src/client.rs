//! The client half of the handshake, the mirror image of [`crate::server`].
//!
//! ```text
//! start() writes the greeting ─► method selection ─► [user/pass ─► status] ─► request ─► reply
//! ```

use bytes::{Buf, BytesMut};

use crate::codec::{Decode, Encode};
use crate::error::{DecodeError, ProtocolError};
use crate::method::{Greeting, Method, MethodSelection};
use crate::reply::Reply;
use crate::request::Request;
use crate::userpass::{UserPassRequest, UserPassStatus};

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Flush the output buffer if it is not empty, then read more bytes and feed again.
    NeedMore,
    /// The server's reply to the request. Bytes after it stay in the input buffer.
    Reply(Reply),
}

/// Why the client handshake cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    /// The server answered outside the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The server accepted none of the offered methods (`05 FF`).
    #[error("the server accepts none of the offered authentication methods")]
    NoAcceptableMethod,
    /// The server rejected the username/password with this non-zero status.
    #[error("username/password rejected by the server (status {0:#04x})")]
    AuthFailed(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    ExpectSelection,
    ExpectStatus,
    ExpectReply,
    Done,
}

/// The client side of one handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    stage: Stage,
    request: Request,
    credentials: Option<UserPassRequest>,
    pipelined: bool,
    selected: Option<Method>,
}

impl ClientHandshake {
    /// A handshake for `request`, offering username/password when `credentials` are given
    /// and "no authentication" otherwise.
    pub fn new(request: Request, credentials: Option<UserPassRequest>) -> Self {
        Self {
            stage: Stage::Start,
            request,
            credentials,
            pipelined: false,
            selected: None,
        }
    }

    /// Sends the request together with the greeting, without waiting for the method
    /// selection, saving a round trip. Only used without credentials: with them, the
    /// server may choose either method, and the request must follow the right one.
    pub fn pipelined(mut self, pipelined: bool) -> Self {
        self.pipelined = pipelined && self.credentials.is_none();
        self
    }

    /// The method the server chose, once known.
    pub fn selected_method(&self) -> Option<Method> {
        self.selected
    }

    /// Writes the opening message(s) to `output`. Call once, before the first `feed`.
    pub fn start(&mut self, output: &mut BytesMut) {
        if self.stage != Stage::Start {
            return;
        }
        let methods = if self.credentials.is_some() {
            vec![Method::NO_AUTH, Method::USER_PASS]
        } else {
            vec![Method::NO_AUTH]
        };
        Greeting { methods }.encode(output);
        if self.pipelined {
            self.request.encode(output);
        }
        self.stage = Stage::ExpectSelection;
    }

    /// Consumes the server's messages from `input`, appending what must be sent to `output`.
    pub fn feed(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
    ) -> Result<ClientEvent, ClientHandshakeError> {
        loop {
            match self.stage {
                Stage::Start => {
                    self.start(output);
                }
                Stage::ExpectSelection => {
                    let Some(sel) = decode::<MethodSelection>(input)? else {
                        return Ok(ClientEvent::NeedMore);
                    };
                    match sel.method {
                        Method::NO_ACCEPTABLE => {
                            self.stage = Stage::Done;
                            return Err(ClientHandshakeError::NoAcceptableMethod);
                        }
                        Method::NO_AUTH => {
                            if !self.pipelined {
                                self.request.encode(output);
                            }
                            self.stage = Stage::ExpectReply;
                        }
                        Method::USER_PASS if self.credentials.is_some() => {
                            if let Some(creds) = &self.credentials {
                                creds.encode(output);
                            }
                            self.stage = Stage::ExpectStatus;
                        }
                        other => {
                            self.stage = Stage::Done;
                            return Err(ProtocolError::UnexpectedMethod(other.0).into());
                        }
                    }
                    self.selected = Some(sel.method);
                }
                Stage::ExpectStatus => {
                    let Some(status) = decode::<UserPassStatus>(input)? else {
                        return Ok(ClientEvent::NeedMore);
                    };
                    if !status.is_success() {
                        self.stage = Stage::Done;
                        return Err(ClientHandshakeError::AuthFailed(status.status));
                    }
                    self.request.encode(output);
                    self.stage = Stage::ExpectReply;
                }
                Stage::ExpectReply => {
                    let Some(reply) = decode::<Reply>(input)? else {
                        return Ok(ClientEvent::NeedMore);
                    };
                    self.stage = Stage::Done;
                    return Ok(ClientEvent::Reply(reply));
                }
                Stage::Done => return Ok(ClientEvent::NeedMore),
            }
        }
    }
}

fn decode<M: Decode>(input: &mut BytesMut) -> Result<Option<M>, ClientHandshakeError> {
    match M::decode_prefix(input) {
        Ok((msg, used)) => {
            input.advance(used);
            Ok(Some(msg))
        }
        Err(DecodeError::Incomplete { .. }) => Ok(None),
        Err(DecodeError::Invalid(e)) => Err(e.into()),
    }
}
