//! Drives [`ClientHandshake`] over a byte stream, with the deadline and EOF handling every
//! command shares.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use ferrosocks_proto::{
    Addr, ClientEvent, ClientHandshake, Decode, DecodeError, Rep, Reply, Request,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::ClientConfig;
use crate::error::{Error, Result, Step};
use crate::proxy_url::{Credentials, ProxyUrl};
use crate::target::lookup_all;

/// Room for one read. A reply is at most 262 bytes, so this holds any message in one go.
const READ_CHUNK: usize = 512;

/// Opens the TCP connection to the proxy, trying each of its addresses in turn, all within
/// `connect_timeout`.
pub(crate) async fn connect_proxy(proxy: &ProxyUrl, config: &ClientConfig) -> Result<TcpStream> {
    let limit = config.connect_timeout;
    let addrs = match proxy.addr() {
        Addr::Ip(sa) => vec![*sa],
        Addr::Domain(host, port) => lookup_all(host, *port, limit).await?,
    };
    let stream = tokio::time::timeout(limit, connect_any(&addrs))
        .await
        .map_err(|_| Error::Timeout(Step::Connect))??;
    // The handshake is a few small writes and tunnels are often interactive; Nagle would
    // only add latency.
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    // `lookup_all` never returns an empty list, so `last` is set; the fallback only keeps
    // this total.
    Err(last
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no proxy address"))
        .into())
}

/// Runs the handshake for `request` and returns the successful reply together with any
/// bytes the proxy sent after it (they belong to the tunnel, or to a second BIND reply).
pub(crate) async fn handshake<S>(
    stream: &mut S,
    request: Request,
    credentials: Option<&Credentials>,
    config: &ClientConfig,
) -> Result<(Reply, BytesMut)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let run = async {
        let mut hs = ClientHandshake::new(request, credentials.map(Credentials::to_request))
            .pipelined(config.pipelined);
        let mut input = BytesMut::with_capacity(READ_CHUNK);
        let mut output = BytesMut::new();
        hs.start(&mut output);
        loop {
            if !output.is_empty() {
                stream.write_all(&output).await?;
                output.clear();
            }
            match hs.feed(&mut input, &mut output)? {
                ClientEvent::Reply(reply) => return Ok((check(reply)?, input)),
                ClientEvent::NeedMore if output.is_empty() => {
                    read_more(stream, &mut input, Step::Handshake).await?;
                }
                // Something to send first (credentials or the request); the loop flushes it.
                ClientEvent::NeedMore => {}
            }
        }
    };
    tokio::time::timeout(config.handshake_timeout, run)
        .await
        .map_err(|_| Error::Timeout(Step::Handshake))?
}

/// Reads one more reply (the second BIND reply) from `input` and the stream.
pub(crate) async fn read_reply<S>(stream: &mut S, input: &mut BytesMut, step: Step) -> Result<Reply>
where
    S: AsyncRead + Unpin,
{
    loop {
        match Reply::decode_prefix(input) {
            Ok((reply, used)) => {
                input.advance(used);
                return check(reply);
            }
            Err(DecodeError::Incomplete { .. }) => read_more(stream, input, step).await?,
            Err(DecodeError::Invalid(e)) => return Err(e.into()),
        }
    }
}

fn check(reply: Reply) -> Result<Reply> {
    if reply.rep == Rep::SUCCEEDED {
        Ok(reply)
    } else {
        Err(Error::Rejected(reply.rep))
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    input: &mut BytesMut,
    step: Step,
) -> Result<()> {
    input.reserve(READ_CHUNK);
    if stream.read_buf(input).await? == 0 {
        return Err(Error::Closed(step));
    }
    Ok(())
}
