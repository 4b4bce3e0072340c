//! The ferrosocks SOCKS5 server as a library.
//!
//! ```no_run
//! # async fn example() -> Result<(), ferrosocks_server::Error> {
//! use ferrosocks_server::{Config, Server};
//! let server = Server::bind(Config::default()).await?;
//! println!("listening on {:?}", server.local_addrs());
//! server.run(async { tokio::signal::ctrl_c().await.ok(); }).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: the validated [`Config`] (parsing lives in the binary).
//! - `listener`: accept loop with connection permits and back-off on accept errors.
//! - `session`: one connection: handshake under a deadline, dispatch, failure reply.
//! - [`auth`]: methods in order of preference and the user table (constant-time checks).
//! - [`rules`]: ordered allow/deny rules.
//! - [`resolve`]: name resolution, happy-eyeballs connect, OS error classification.
//! - `connect`, `bind`, `udp`: the three commands.
//! - [`relay`]: the TCP relay with half-close and idle timeout.
//! - [`tcp_tuning`]: options for tunnel sockets (no Nagle; no pacing on loopback).
//! - [`error`]: session errors and the one function that maps them to REP codes.
//! - [`access_log`]: one line per session, text or JSON.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod access_log;
pub mod auth;
mod bind;
pub mod busy_poll;
pub mod config;
mod connect;
pub mod error;
mod listener;
pub mod relay;
pub mod resolve;
pub mod rules;
mod session;
pub mod tcp_tuning;
mod udp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access_log::{AccessLog, SessionRecord, Sink};
pub use auth::{AuthMethod, Credential, Users};
pub use busy_poll::BusyPoll;
pub use config::{Config, ConfigError, Limits, Timeouts};
pub use relay::RelayMode;
pub use rules::{Action, Cidr, Rule, Rules, TargetPattern};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Authentication settings that a reload may replace.
#[derive(Debug)]
pub(crate) struct AuthState {
    pub(crate) methods: Vec<AuthMethod>,
    pub(crate) users: Users,
}

/// State shared by every session, owned by the server (no statics), so several servers can
/// run in one process and users and rules can be swapped while sessions run.
pub(crate) struct Shared {
    pub(crate) config: Config,
    auth: RwLock<Arc<AuthState>>,
    rules: RwLock<Arc<Rules>>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) handshakes: Arc<Semaphore>,
    pub(crate) udp_associations: Arc<Semaphore>,
    pub(crate) pipes: relay::PipePool,
    /// The busy-poll window, resolved for the runtime the server was built on.
    pub(crate) busy_poll: Duration,
    /// Names resolved lately, for every session.
    pub(crate) names: resolve::NameCache,
    /// Every UDP relay socket's address, so none is taken for a client.
    pub(crate) udp_relays: udp::RelayAddrs,
    /// The addresses the server listens on, as bound, so no CONNECT leads back to them.
    pub(crate) listening: Vec<SocketAddr>,
    /// Cancelled when the drain time is over: tunnels, BIND waits and UDP associations
    /// still open end then, each with its access-log line.
    pub(crate) drain_over: CancellationToken,
    /// Cancelled by [`ServerHandle::end_drain`]: the shutdown does not wait for the drain
    /// time.
    end_drain: CancellationToken,
    /// Sessions started and not yet logged: what a shutdown that cannot wait any longer
    /// would end without an access-log line. Sessions still running are not all of them:
    /// one that gave a failure reply has logged it and may linger a moment to close.
    pub(crate) unlogged: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(config: Config, listening: Vec<SocketAddr>) -> Shared {
        Shared {
            auth: RwLock::new(Arc::new(AuthState {
                methods: config.auth_methods.clone(),
                users: config.users.clone(),
            })),
            rules: RwLock::new(Arc::new(config.rules.clone())),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(config.limits.max_handshakes)),
            udp_associations: Arc::new(Semaphore::new(config.limits.max_udp_associations)),
            pipes: relay::PipePool::new(),
            busy_poll: config.busy_poll.window(),
            names: resolve::NameCache::new(config.name_cache),
            udp_relays: udp::RelayAddrs::default(),
            listening,
            drain_over: CancellationToken::new(),
            end_drain: CancellationToken::new(),
            unlogged: AtomicUsize::new(0),
            config,
        }
    }

    pub(crate) fn auth(&self) -> Arc<AuthState> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How long sessions get, once the drain time is over, to close and log.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    /// Each with what the sockets it accepts inherit from it.
    listeners: Vec<(TcpListener, tcp_tuning::Inherited)>,
    shared: Arc<Shared>,
}

/// A handle to a running server, for reloading users and rules, and for cutting a
/// shutdown's drain short.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Replaces the users, the method order and the rules. Sessions already past their
    /// handshake keep running; new ones see the new settings.
    pub fn reload(&self, methods: Vec<AuthMethod>, users: Users, rules: Rules) {
        *self.shared.auth.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(AuthState { methods, users });
        *self.shared.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    /// Ends the drain of a shutdown now instead of at the drain time, as a second SIGTERM
    /// or Ctrl-C does for `ferrosocks serve`: tunnels, BIND waits and UDP associations
    /// close at once, each with its access-log line. Called before the shutdown begins, it
    /// makes that shutdown skip the drain; the server keeps serving until then.
    pub fn end_drain(&self) {
        self.shared.end_drain.cancel();
    }
}

impl Server {
    /// Validates the configuration and binds every listen address.
    pub async fn bind(mut config: Config) -> Result<Server, Error> {
        config.validate()?;
        config.local_congestion = tcp_tuning::usable(config.local_congestion.take());
        if !cfg!(target_os = "linux") && config.local_notsent_lowat.take().is_some() {
            tracing::warn!("local_notsent_lowat is applied on Linux only; ignored here");
        }
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            let listener =
                listen(*addr, tcp_tuning::Local::of(&config)).map_err(|source| Error::Listen {
                    addr: *addr,
                    source,
                })?;
            listeners.push(listener);
        }
        let listening = listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect();
        let shared = Arc::new(Shared::new(config, listening));
        tracing::info!(
            "busy-polling after traffic: {}",
            match (shared.config.busy_poll, shared.busy_poll.is_zero()) {
                (_, false) => format!("{:?}", shared.busy_poll),
                (BusyPoll::Auto, true) =>
                    "off (several worker threads; busy_poll = \"50us\" forces it)".to_owned(),
                (_, true) => "off".to_owned(),
            }
        );
        Ok(Server { listeners, shared })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.listening.clone()
    }

    /// A handle for reloads.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting and lets sessions drain for
    /// at most the configured drain time, or until [`ServerHandle::end_drain`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let stop = CancellationToken::new();
        let sessions = TaskTracker::new();
        let mut accept_loops = Vec::new();
        for (listener, inherited) in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("listening on {addr}");
            }
            accept_loops.push(tokio::spawn(listener::run(
                listener,
                inherited,
                self.shared.clone(),
                sessions.clone(),
                stop.clone(),
            )));
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections; draining sessions");
        stop.cancel();
        for l in accept_loops {
            let _ = l.await;
        }
        sessions.close();
        let drain = self.shared.config.timeouts.drain;
        let drained = tokio::select! {
            biased;
            () = sessions.wait() => true,
            () = tokio::time::sleep(drain) => {
                tracing::warn!(
                    remaining = sessions.len(),
                    "drain time ({drain:?}) over; closing remaining sessions"
                );
                false
            }
            () = self.shared.end_drain.cancelled() => {
                tracing::warn!(
                    remaining = sessions.len(),
                    "drain ended early; closing remaining sessions"
                );
                false
            }
        };
        if !drained {
            // Tunnels, BIND waits and associations end at once and log their line; what is
            // still running after that (a handshake: greeting, authentication, a CONNECT
            // under way) is dropped with the runtime and writes no access-log line, so it
            // is at least counted here.
            self.shared.drain_over.cancel();
            if tokio::time::timeout(CLOSE_WAIT, sessions.wait())
                .await
                .is_err()
            {
                // Not `sessions.len()`: a BIND wait cut by the drain gave its second reply,
                // logged it, and may still be lingering for the client to close.
                let unlogged = self.shared.unlogged.load(Ordering::Relaxed);
                if unlogged > 0 {
                    tracing::warn!(
                        remaining = unlogged,
                        "sessions still in their handshake closed without an access-log line"
                    );
                }
            }
        } else {
            tracing::info!("all sessions finished");
        }
    }
}

/// A listening socket (the server's, and BIND's): address reuse so a restart does not wait
/// for TIME_WAIT, IPv6 sockets IPv6-only so `[::]` and `0.0.0.0` can be listened on side
/// by side, and the tunnel options that accepted sockets inherit.
pub(crate) fn listen(
    addr: SocketAddr,
    local: tcp_tuning::Local<'_>,
) -> std::io::Result<(TcpListener, tcp_tuning::Inherited)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Before `listen`: a connection the kernel completes takes the listener's options at
    // that moment, whether or not it has been accepted yet.
    let inherited = tcp_tuning::tune_listener(&socket, addr, local);
    socket.listen(1024)?;
    Ok((TcpListener::from_std(socket.into())?, inherited))
}
