//! Timeouts and options shared by every command.

use std::time::Duration;

/// How long each step may take, and whether to pipeline the handshake.
///
/// ```
/// use std::time::Duration;
/// use ferrosocks_client::ClientConfig;
///
/// let config = ClientConfig {
///     handshake_timeout: Duration::from_secs(3),
///     accept_timeout: Some(Duration::from_secs(60)),
///     ..ClientConfig::default()
/// };
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Bounds each of: resolving the proxy's name, opening the TCP connection to it (all
    /// its addresses together), and with `socks5://` resolving a target name locally.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// From the greeting to the (first) reply, including authentication. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long [`Socks5Listener::accept`](crate::Socks5Listener::accept) waits for the
    /// second BIND reply. Default `None`: wait as long as the proxy does (servers bound
    /// this wait themselves).
    pub accept_timeout: Option<Duration>,
    /// Sends the request right behind the greeting, without waiting for the method
    /// selection, which saves one round trip. Only applies without credentials. Default
    /// `false`, because servers that read one message per `read()` lose the request.
    pub pipelined: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            accept_timeout: None,
            pipelined: false,
        }
    }
}
