//! The server half of the handshake as a state machine: bytes in, events and bytes out.
//!
//! ```text
//! ExpectGreeting ──► ExpectUserPass ──► AwaitVerdict ──► ExpectRequest ──► Done
//!        └──────────────────────────────────────────────────►┘  (NO AUTH)
//! ```
//! A request cannot be accepted before authentication: each stage only decodes its own
//! message. Bytes after the request (a client's pipelined payload) stay in the input buffer.

use bytes::{Buf, BytesMut};

use crate::codec::{Decode, Encode};
use crate::error::{DecodeError, ProtocolError};
use crate::method::{Greeting, Method, MethodSelection};
use crate::request::Request;
use crate::userpass::{UserPassRequest, UserPassStatus};

/// Which message the handshake is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The version identifier/method selection message.
    Greeting,
    /// The RFC 1929 username/password request.
    UserPass,
    /// The caller's verdict on the credentials (see [`ServerHandshake::handle_auth_verdict`]).
    AuthVerdict,
    /// The SOCKS request.
    Request,
    /// Finished: a request was returned, the method was refused, or an error occurred.
    Done,
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Flush the output buffer if it is not empty, then read more bytes and feed again.
    NeedMore,
    /// Check these credentials and call [`ServerHandshake::handle_auth_verdict`].
    Authenticate(UserPassRequest),
    /// The handshake is complete. Any bytes left in the input belong to the tunnel.
    Request(Request),
    /// No offered method is acceptable: `05 FF` is in the output; flush it and close.
    NoAcceptableMethod,
    /// Authentication failed: the failure status is in the output; flush it and close.
    AuthFailed,
}

/// A protocol violation and the stage it happened in, which decides how to answer it
/// (only a bad request earns a SOCKS reply; earlier failures are answered by closing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (while expecting {stage:?})")]
pub struct HandshakeError {
    /// Where the violation happened.
    pub stage: Stage,
    /// What was wrong.
    pub error: ProtocolError,
}

/// The server side of method negotiation, sub-negotiation and request.
#[derive(Debug)]
pub struct ServerHandshake {
    stage: Stage,
    preference: Vec<Method>,
    selected: Option<Method>,
}

impl ServerHandshake {
    /// A handshake that accepts the methods in `preference`, most preferred first. Only
    /// [`Method::NO_AUTH`] and [`Method::USER_PASS`] are understood; others are ignored.
    pub fn new(preference: Vec<Method>) -> Self {
        let preference = preference
            .into_iter()
            .filter(|m| *m == Method::NO_AUTH || *m == Method::USER_PASS)
            .collect();
        Self {
            stage: Stage::Greeting,
            preference,
            selected: None,
        }
    }

    /// The message being waited for.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The method chosen, once the greeting was handled.
    pub fn selected_method(&self) -> Option<Method> {
        self.selected
    }

    /// Decodes as many messages from `input` as the current stage allows, consuming exactly
    /// their bytes, and appends any answers to `output`.
    pub fn feed(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
    ) -> Result<Event, HandshakeError> {
        loop {
            match self.stage {
                Stage::Greeting => {
                    let Some(greeting) = self.decode::<Greeting>(input)? else {
                        return Ok(Event::NeedMore);
                    };
                    let chosen = self
                        .preference
                        .iter()
                        .copied()
                        .find(|m| greeting.methods.contains(m));
                    match chosen {
                        None => {
                            MethodSelection {
                                method: Method::NO_ACCEPTABLE,
                            }
                            .encode(output);
                            self.stage = Stage::Done;
                            return Ok(Event::NoAcceptableMethod);
                        }
                        Some(method) => {
                            MethodSelection { method }.encode(output);
                            self.selected = Some(method);
                            self.stage = if method == Method::USER_PASS {
                                Stage::UserPass
                            } else {
                                Stage::Request
                            };
                        }
                    }
                }
                Stage::UserPass => {
                    let Some(creds) = self.decode::<UserPassRequest>(input)? else {
                        return Ok(Event::NeedMore);
                    };
                    self.stage = Stage::AuthVerdict;
                    return Ok(Event::Authenticate(creds));
                }
                // Feeding while a verdict is pending is a caller bug; asking for more bytes is
                // the harmless answer.
                Stage::AuthVerdict => return Ok(Event::NeedMore),
                Stage::Request => {
                    let Some(request) = self.decode::<Request>(input)? else {
                        return Ok(Event::NeedMore);
                    };
                    self.stage = Stage::Done;
                    if !request.command.is_known() {
                        return Err(HandshakeError {
                            stage: Stage::Request,
                            error: ProtocolError::UnknownCommand(request.command.0),
                        });
                    }
                    return Ok(Event::Request(request));
                }
                Stage::Done => return Ok(Event::NeedMore),
            }
        }
    }

    /// Records the caller's verdict on the credentials from [`Event::Authenticate`] and
    /// appends the RFC 1929 status to `output`. After a rejection the caller flushes the
    /// output and closes; feeding again yields nothing.
    pub fn handle_auth_verdict(&mut self, accepted: bool, output: &mut BytesMut) -> Event {
        if self.stage != Stage::AuthVerdict {
            return Event::NeedMore;
        }
        if accepted {
            UserPassStatus::SUCCESS.encode(output);
            self.stage = Stage::Request;
            Event::NeedMore
        } else {
            UserPassStatus::FAILURE.encode(output);
            self.stage = Stage::Done;
            Event::AuthFailed
        }
    }

    fn decode<M: Decode>(&mut self, input: &mut BytesMut) -> Result<Option<M>, HandshakeError> {
        match M::decode_prefix(input) {
            Ok((msg, used)) => {
                input.advance(used);
                Ok(Some(msg))
            }
            Err(DecodeError::Incomplete { .. }) => Ok(None),
            Err(DecodeError::Invalid(error)) => {
                let stage = self.stage;
                self.stage = Stage::Done;
                Err(HandshakeError { stage, error })
            }
        }
    }
}
