"""PySocks (pinned in requirements.txt) through the proxy under test.

TCP: CONNECT with and without username/password, remote name resolution.
UDP: socks.socksocket(AF_INET, SOCK_DGRAM) sends to several local UDP echo
servers (IPv4, IPv6, by name) through ONE association. With rdns=True PySocks
announces DST.ADDR as the domain "0" with its local port in the UDP ASSOCIATE
request; with rdns=False as 0.0.0.0 and its port.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

import socks  # PySocks

import proxyctl
from harness import IO_TIMEOUT, TcpEcho, UdpEcho, case, check, exit_code, sha256

UDP_WAIT = 3.0    # seconds to wait for one echoed datagram
UDP_TRIES = 3     # UDP may drop; a datagram is sent at most this often


def tcp_roundtrip(proxy_addr, target, size=4 << 20, half_close=False, **auth) -> None:
    """CONNECT through the proxy to an echo server, send `size` random bytes
    while a thread reads the echo, compare hashes. With half_close the client
    shuts down its sending side first and the echo must still arrive in full,
    followed by EOF (the relay must pass the half-close on, not close both ways)."""
    s = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(IO_TIMEOUT)
    s.set_proxy(socks.SOCKS5, proxy_addr[0], proxy_addr[1], rdns=True, **auth)
    got = bytearray()
    errors = []

    def reader():
        try:
            while len(got) < size or half_close:
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                got.extend(chunk)
        except OSError as e:
            errors.append(e)

    try:
        s.connect(target)
        data = os.urandom(size)
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        t.join(IO_TIMEOUT + 5)
        check(not t.is_alive(), f"echo incomplete after {IO_TIMEOUT}s: {len(got)} of {size} bytes")
        check(not errors, f"read error after {len(got)} of {size} bytes: {errors[:1]}")
        check(len(got) == len(data), f"echoed {len(got)} bytes, sent {len(data)}")
        check(sha256(bytes(got)) == sha256(data), "echoed bytes differ from sent bytes")
    finally:
        s.close()


def udp_exchange(sock, dests: list[tuple[tuple, UdpEcho, tuple]], rounds: int = 3) -> None:
    """For each (send_to, echo_server, expected_from): send a numbered payload
    through the relay and check the reply's payload and source address."""
    for r in range(rounds):
        for i, (send_to, echo, want_from) in enumerate(dests):
            payload = b"round %d dest %d " % (r, i) + os.urandom(64 + 100 * i)
            want = echo.tag + payload
            for attempt in range(UDP_TRIES):
                sock.sendto(payload, send_to)
                sock.settimeout(UDP_WAIT)
                got = None
                try:
                    while True:
                        data, src = sock.recvfrom(65535)
                        if data == want:
                            got = (data, src)
                            break
                        # an older round's late duplicate is ignored; anything else is wrong
                        check(data.startswith(b"[") and b"round " in data,
                              f"unexpected datagram {data[:40]!r} from {src}")
                except socket.timeout:
                    continue
                break
            check(got is not None, f"no echo for datagram to {send_to} after {UDP_TRIES} tries")
            src = got[1]
            src = (src[0].decode() if isinstance(src[0], bytes) else src[0], src[1])
            check(src == tuple(want_from),
                  f"reply to {send_to} has source {src} in its SOCKS header, want {tuple(want_from)}")
    for _, echo, _ in dests:
        local = sock.getsockname()[:2]
        check(all(s != local for s in echo.sources),
              f"echo server saw our own socket {local} as source: the datagrams bypassed the proxy")


def main() -> int:
    caps = proxyctl.caps()
    proxies = []
    echoes = []
    try:
        tcp4 = TcpEcho("127.0.0.1")
        echoes.append(tcp4)
        udp_a = UdpEcho("127.0.0.1", b"[a]")
        udp_b = UdpEcho("127.0.0.1", b"[b]")
        udp_6 = UdpEcho("::1", b"[6]")
        echoes += [udp_a, udp_b, udp_6]

        open_proxy = proxyctl.Proxy().start()
        proxies.append(open_proxy)
        auth_proxy = None
        if "userpass" in caps:
            auth_proxy = proxyctl.Proxy(users=[("u", "p")]).start()
            proxies.append(auth_proxy)

        @case("pysocks-tcp-connect-ipv4")
        def _():
            tcp_roundtrip(open_proxy.v4, tcp4.addr)
            check(tcp4.peers and tcp4.peers[-1][0] == "127.0.0.1", f"echo peers {tcp4.peers}")

        @case("pysocks-tcp-half-close-passes-through")
        def _():
            tcp_roundtrip(open_proxy.v4, tcp4.addr, size=1 << 20, half_close=True)

        @case("pysocks-tcp-connect-rdns-localhost")
        def _():
            tcp_roundtrip(open_proxy.v4, ("localhost", tcp4.addr[1]))

        @case("pysocks-tcp-connect-userpass", needs={"userpass"})
        def _():
            tcp_roundtrip(auth_proxy.v4, tcp4.addr, username="u", password="p")

        @case("pysocks-tcp-wrong-password-rejected", needs={"userpass"})
        def _():
            try:
                tcp_roundtrip(auth_proxy.v4, tcp4.addr, size=1024, username="u", password="nope")
            except socks.GeneralProxyError as e:
                # PySocks wraps the SOCKS5AuthError (RFC 1929 status != 0) in a GeneralProxyError
                inner = getattr(e, "socket_err", None)
                check(isinstance(inner, socks.SOCKS5AuthError),
                      f"wanted SOCKS5 authentication failure, got {e!r} ({inner!r})")
                return
            raise AssertionError("CONNECT succeeded with a wrong password")

        dests = [
            (udp_a.addr, udp_a, udp_a.addr),
            (udp_b.addr, udp_b, udp_b.addr),
            (udp_6.addr, udp_6, udp_6.addr),
        ]

        def udp_case(proxy, rdns: bool, d=dests, **auth):
            s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(IO_TIMEOUT)
            s.set_proxy(socks.SOCKS5, proxy.v4[0], proxy.v4[1], rdns=rdns, **auth)
            try:
                s.bind(("127.0.0.1", 0))  # sends UDP ASSOCIATE
                udp_exchange(s, d)
            finally:
                s.close()

        @case("pysocks-udp-rdns-dst-domain-0-three-destinations", needs={"udp"})
        def _():
            udp_case(open_proxy, rdns=True)

        @case("pysocks-udp-no-rdns-dst-0.0.0.0-three-destinations", needs={"udp"})
        def _():
            udp_case(open_proxy, rdns=False)

        @case("pysocks-udp-destination-by-name-localhost", needs={"udp"})
        def _():
            # the UDP request header carries ATYP 03 "localhost"; the proxy resolves it
            udp_case(open_proxy, rdns=True, d=[(("localhost", udp_a.addr[1]), udp_a, udp_a.addr)])

        @case("pysocks-udp-userpass", needs={"udp", "userpass"})
        def _():
            udp_case(auth_proxy, rdns=True, username="u", password="p")
    finally:
        for p in proxies:
            p.cleanup()
        for e in echoes:
            e.close()
    return exit_code()


if __name__ == "__main__":
    sys.exit(main())
