//! A relay UDP socket that can leave the runtime's epoll while its association busy-polls.
//!
//! A socket in an epoll set has the epoll's callback on its wait queue, and the kernel
//! runs it for every datagram queued to the socket, on the sender's core (the client's or
//! the target's): the epoll's lock, its ready list, and, when the relay's thread sleeps,
//! a wake-up. Every send wakes the queue too (on loopback the send buffer is handed back
//! at once, as "writable"), which for a socket registered for reading only costs the
//! queue's lock and the epoll's before the event is filtered out. While an association
//! busy-polls (see
//! [`crate::busy_poll`]) nothing waits for that readiness: the association tries its
//! receives itself. So for that window both of its sockets leave the epoll
//! ([`RelaySocket::set_polled`]), and the senders' cores queue datagrams to a socket
//! with an empty wait queue. Measured with the UDP benchmark (512-byte datagrams, both
//! ends on the other core): 305k against 286k datagrams/s with 64 in flight (medians of
//! four interleaved pairs, every pair faster), 24.9k against 24.4k with one in flight.
//! When the window closes the sockets join the epoll again before the association
//! sleeps; joining reports a datagram that came in meanwhile at once, so none waits
//! unseen.
//!
//! Registered or not, sends are plain non-blocking calls, and a socket is only ever
//! registered for reading. The rare send that finds the buffer full (never one to
//! loopback, where the buffer is handed back as the datagram is sent) waits for room on a
//! duplicate descriptor registered for writability just for that wait (epoll tells two
//! descriptors of one socket apart): one way to wait that works in both states.

use std::io;
use std::net::SocketAddr;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub(crate) struct RelaySocket {
    /// `None` only for the moment a change of registration takes.
    state: Option<Registration>,
}

enum Registration {
    /// In the runtime's epoll, for reading.
    Registered(AsyncFd<std::net::UdpSocket>),
    /// Out of it: the owner tries its receives itself.
    Polled(std::net::UdpSocket),
}

impl RelaySocket {
    /// Registers a non-blocking socket with the runtime, for reading.
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        let registered = register(socket, Interest::READABLE).map_err(|(_, e)| e)?;
        Ok(RelaySocket {
            state: Some(Registration::Registered(registered)),
        })
    }

    /// The socket itself, for non-blocking calls: sends are not tracked by readiness (on
    /// `WouldBlock`, wait with [`Self::writable`]); receives go through
    /// [`Self::try_receive`], which keeps readiness right.
    pub(crate) fn socket(&self) -> &std::net::UdpSocket {
        match &self.state {
            Some(Registration::Registered(fd)) => fd.get_ref(),
            Some(Registration::Polled(socket)) => socket,
            None => unreachable!("a registration change is never left half done"),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket().local_addr()
    }

    /// Takes the socket out of the runtime's epoll (`true`) or puts it back (`false`).
    /// Out of it, [`Self::readable`] says nothing and the owner must try its receives. If
    /// the socket cannot be registered again, it stays out and the error is returned.
    pub(crate) fn set_polled(&mut self, polled: bool) -> io::Result<()> {
        let state = self.state.take().expect("registration is whole");
        let (state, result) = match (state, polled) {
            (Registration::Registered(fd), true) => (Registration::Polled(fd.into_inner()), Ok(())),
            (Registration::Polled(socket), false) => match register(socket, Interest::READABLE) {
                Ok(fd) => (Registration::Registered(fd), Ok(())),
                Err((socket, e)) => (Registration::Polled(socket), Err(e)),
            },
            (unchanged, _) => (unchanged, Ok(())),
        };
        self.state = Some(state);
        result
    }

    /// Waits until a datagram may be queued; readiness stays set until a receive through
    /// [`Self::try_receive`] finds none. Only for a registered socket: out of the epoll
    /// there is no readiness, and the owner must try its receives instead (a debug build
    /// panics; a release build returns after one yield, so the owner keeps relaying,
    /// spinning).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match &self.state {
            Some(Registration::Registered(fd)) => fd.readable().await.map(drop),
            _ => {
                debug_assert!(false, "readable() on a UDP socket out of the epoll");
                tokio::task::yield_now().await;
                Ok(())
            }
        }
    }

    /// Runs one receive call; registered, `WouldBlock` clears the readiness
    /// [`Self::readable`] waits for.
    pub(crate) fn try_receive<R>(
        &self,
        receive: impl FnOnce(&std::net::UdpSocket) -> io::Result<R>,
    ) -> io::Result<R> {
        match &self.state {
            Some(Registration::Registered(fd)) => fd.try_io(Interest::READABLE, receive),
            _ => receive(self.socket()),
        }
    }

    pub(crate) fn try_recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.try_receive(|s| s.recv_from(buf))
    }

    /// Waits until the send buffer has room, on a duplicate of the socket registered for
    /// writability only while waiting. Registering reports a socket that already has room
    /// at once, so room freed between the failed send and this call is not missed.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        let duplicate = self.socket().try_clone()?;
        let waiter = register(duplicate, Interest::WRITABLE).map_err(|(_, e)| e)?;
        waiter.writable().await.map(drop)
    }

    /// `send_to` that waits for room in a full send buffer instead of failing.
    pub(crate) async fn send_to(&self, buf: &[u8], dest: SocketAddr) -> io::Result<usize> {
        loop {
            match self.socket().send_to(buf, dest) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                done => return done,
            }
        }
    }
}

/// Registers `socket` with the runtime for `interest` alone; on failure the socket comes
/// back with the error.
///
/// tokio deprecated this safe constructor because an arbitrary `AsRawFd` type may hand out
/// a descriptor it does not own; its replacement is `unsafe`, which this workspace forbids.
/// A `std::net::UdpSocket` owns its descriptor and returns the same one for its whole
/// life, which is all the replacement's safety contract asks.
#[allow(deprecated)]
fn register(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> Result<AsyncFd<std::net::UdpSocket>, (std::net::UdpSocket, io::Error)> {
    AsyncFd::try_with_interest(socket, interest).map_err(|e| e.into_parts())
}

#[cfg(test)]
impl RelaySocket {
    /// A registered relay socket on 127.0.0.1, as an association's own are.
    pub(crate) fn loopback() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        RelaySocket::new(socket).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn recv(socket: &RelaySocket) -> io::Result<Vec<u8>> {
        let mut buf = [0u8; 64];
        socket
            .try_recv_from(&mut buf)
            .map(|(n, _)| buf[..n].to_vec())
    }

    /// Out of the epoll the socket still receives when asked, and a datagram that came in
    /// while it was out is reported as soon as it is registered again: the association
    /// goes to sleep only after registering, so nothing would wake it for that datagram
    /// otherwise.
    #[tokio::test]
    async fn a_datagram_queued_while_polled_is_seen_once_registered_again() {
        let mut relay = RelaySocket::loopback();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = relay.local_addr().unwrap();

        relay.set_polled(true).unwrap();
        assert_eq!(
            recv(&relay).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing queued yet"
        );
        peer.send_to(b"while polled", to).unwrap();
        assert_eq!(recv(&relay).unwrap(), b"while polled");
        peer.send_to(b"before registering", to).unwrap();

        relay.set_polled(false).unwrap();
        tokio::time::timeout(Duration::from_secs(5), relay.readable())
            .await
            .expect("the queued datagram makes the socket readable")
            .unwrap();
        assert_eq!(recv(&relay).unwrap(), b"before registering");

        // Registered again, readiness works as before: cleared by an empty receive,
        // set by the next datagram.
        assert_eq!(recv(&relay).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let waiting = tokio::time::timeout(Duration::from_millis(100), relay.readable()).await;
        assert!(waiting.is_err(), "no readiness without a datagram");
        peer.send_to(b"later", to).unwrap();
        tokio::time::timeout(Duration::from_secs(5), relay.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(recv(&relay).unwrap(), b"later");
    }

    /// Waiting for room registers a duplicate descriptor; a socket with room is
    /// reported writable at once, registered or not, and the socket's own registration
    /// is untouched by the wait.
    #[tokio::test]
    async fn waiting_for_room_returns_at_once_when_there_is_room() {
        let mut relay = RelaySocket::loopback();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for polled in [false, true, false] {
            relay.set_polled(polled).unwrap();
            tokio::time::timeout(Duration::from_secs(5), relay.writable())
                .await
                .expect("a socket with room is writable")
                .unwrap();
            let sent = relay
                .send_to(b"x", peer.local_addr().unwrap())
                .await
                .unwrap();
            assert_eq!(sent, 1);
        }
        peer.set_nonblocking(false).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            assert_eq!(peer.recv(&mut buf).unwrap(), 1);
        }
        // The relay's own registration still delivers readiness.
        peer.send_to(b"y", relay.local_addr().unwrap()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), relay.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(recv(&relay).unwrap(), b"y");
    }

    /// A send into a full buffer waits for room and then goes out. On plain loopback a UDP
    /// send buffer never fills (it is handed back as the datagram is sent), so this runs in
    /// a network namespace of its own (needs root, `ip` and `tc`), where loopback has a
    /// slow token-bucket queue: queued datagrams stay charged to their sender.
    #[test]
    fn a_send_into_a_full_buffer_waits_for_room_and_then_goes_out() {
        // Only this thread enters the namespace (a network namespace belongs to a thread).
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("a network namespace of its own (this test needs root)");
            for args in [
                &["ip", "link", "set", "lo", "up"][..],
                &[
                    "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "400kbit", "burst",
                    "1600", "limit", "1mb",
                ],
            ] {
                let status = std::process::Command::new(args[0])
                    .args(&args[1..])
                    .status()
                    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
                assert!(status.success(), "{args:?} failed");
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(full_buffer_round())
        })
        .join()
        .unwrap();
    }

    async fn full_buffer_round() {
        let small =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        small.set_send_buffer_size(8192).unwrap();
        small.set_nonblocking(true).unwrap();
        small
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let mut sender = RelaySocket::new(small.into()).unwrap();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        let mut sent = Vec::new();
        let mut tag = 0u8;
        for polled in [false, true] {
            sender.set_polled(polled).unwrap();
            loop {
                match sender.socket().send_to(&[tag; 500], to) {
                    Ok(_) => sent.push(tag),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("send failed: {e}"),
                }
                tag = tag.wrapping_add(1);
                assert!(sent.len() < 200, "the send buffer never filled");
            }
            let started = tokio::time::Instant::now();
            let waited =
                tokio::time::timeout(Duration::from_secs(10), sender.send_to(&[tag; 500], to))
                    .await
                    .expect("room came, and the waiting send went out");
            assert_eq!(waited.unwrap(), 500);
            sent.push(tag);
            tag = tag.wrapping_add(1);
            // 400 kbit/s drains a 500-byte datagram in 10 ms, and room is reported once
            // half the buffer is free: the send did not go out at once.
            assert!(
                started.elapsed() >= Duration::from_millis(5),
                "the buffer was not full"
            );
        }
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 600];
        for expected in sent {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!((n, buf[0]), (500, expected), "in order, none lost");
        }
    }
}
