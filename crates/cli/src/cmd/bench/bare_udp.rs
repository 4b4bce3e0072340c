//! `ferrosocks bench bare-udp-forwarder`: a UDP relay that does the least work per datagram,
//! as a reference for the `udp` rows of `bench peers`. One thread and two sockets: each
//! datagram from a client goes to the target, each datagram from the target goes back to
//! the client that sent last (datagrams from anywhere else are dropped). No SOCKS header
//! to parse or write, no rules, no counters, no async runtime. While datagrams flow it
//! never sleeps: it tries both sockets in turn and keeps doing so for `--spin` after the
//! last datagram (what ferrosocks' `busy_poll` does), then blocks in `poll(2)` on both, so
//! it costs nothing while other cases run.
//!
//! Whatever a relay does, the generator's core still hands each datagram to another core
//! and takes it back; this forwarder shows how far a relay gets when that is nearly all
//! that happens, on this machine, with this generator. It is a reference, not a limit:
//! ferrosocks measured ahead of it.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

#[derive(Debug, Args)]
pub(crate) struct BareUdpArgs {
    /// Where clients send their datagrams (loopback only). A TCP listener on the same port
    /// answers connects and nothing else, so `bench peers` can tell the forwarder is up.
    /// With port 0 the system picks one free for both; the forwarder prints `listening on
    /// ADDR` once it is up.
    #[arg(long)]
    listen: SocketAddr,
    /// Where every client datagram goes (loopback only).
    #[arg(long)]
    to: SocketAddr,
    /// How long to keep trying both sockets after the last datagram before blocking (at
    /// most 1ms, the server's own bound on `busy_poll`).
    #[arg(long, default_value = "50us", value_parser = parse_spin)]
    spin: Duration,
    /// Receive and send buffer of each socket, in bytes: by default the 4 MiB that
    /// ferrosocks' UDP relay asks for, so bursts are not lost to a smaller queue (beyond
    /// `net.core.rmem_max` only when privileged).
    #[arg(long, default_value_t = 4 << 20)]
    buffer: usize,
}

fn parse_spin(s: &str) -> Result<Duration, String> {
    let spin = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if spin > Duration::from_millis(1) {
        return Err("at most 1ms: longer only burns the core between cases".into());
    }
    Ok(spin)
}

/// Datagrams taken from one socket before the other gets its turn.
const BATCH: usize = 32;

pub(crate) fn run(a: BareUdpArgs) -> ExitCode {
    match forward(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrosocks bench bare-udp-forwarder: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn forward(a: &BareUdpArgs) -> anyhow::Result<()> {
    let loopback = |addr: SocketAddr| addr.ip().to_canonical().is_loopback();
    if !loopback(a.listen) || !loopback(a.to) {
        anyhow::bail!("--listen and --to must be loopback addresses");
    }
    let (client_side, _readiness) = bind_listen(a.listen, a.buffer)?;
    let target_side = bind(SocketAddr::new(a.to.ip(), 0), a.buffer)?;
    println!("listening on {}", client_side.local_addr()?);
    let mut buf = vec![0u8; 65_536];
    let mut client: Option<SocketAddr> = None;
    let mut last_datagram = Instant::now();
    loop {
        let mut moved = false;
        for _ in 0..BATCH {
            match client_side.recv_from(&mut buf) {
                Ok((n, from)) => {
                    client = Some(from);
                    send(&target_side, &buf[..n], a.to);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        for _ in 0..BATCH {
            match target_side.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let (Some(client), true) = (client, from == a.to) {
                        send(&client_side, &buf[..n], client);
                    }
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        if moved {
            last_datagram = Instant::now();
        } else if last_datagram.elapsed() >= a.spin {
            let mut fds = [
                PollFd::new(client_side.as_fd(), PollFlags::POLLIN),
                PollFd::new(target_side.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            last_datagram = Instant::now();
        }
    }
}

/// The client-facing socket and the readiness listener, on the same port. With port 0 the
/// UDP socket's port may be taken for TCP: another is tried.
fn bind_listen(listen: SocketAddr, buffer: usize) -> io::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = bind(listen, buffer)?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && listen.port() == 0 && tries < 50 => {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A non-blocking UDP socket on `addr` with `buffer` bytes each way, or as much as the
/// system grants an unprivileged process.
fn bind(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    use nix::sys::socket::{setsockopt, sockopt};
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if setsockopt(&socket, sockopt::RcvBufForce, &buffer).is_err()
        || setsockopt(&socket, sockopt::SndBufForce, &buffer).is_err()
    {
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Sends one datagram, trying again while the send buffer is full (on loopback it never
/// stays full: the receiver's queue takes it or drops it). Any other error belongs to this
/// datagram and its destination: it is dropped, as a relay drops what it cannot deliver.
/// (A receive error, by contrast, ends the forwarder: one that stayed pending would keep
/// `poll(2)` from ever blocking, and the core must be left alone between cases.)
fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    loop {
        match socket.send_to(datagram, to) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            _ => return,
        }
    }
}
