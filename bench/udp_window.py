#!/usr/bin/env python3
"""A plain UDP load generator that is not ours: blocking sockets, the client and the echo
in two processes (run it under `taskset -c 0` and both share that core), a fixed number
of datagrams in flight, directly or through a SOCKS5 server's UDP ASSOCIATE.

    taskset -c 0 bench/udp_window.py --direct
    taskset -c 0 bench/udp_window.py --proxy 127.0.0.1:1080

Every datagram carries a sequence number. The rate is the replies received per second
while sending; a datagram whose reply has not come back within 200 ms is replaced by a
new one (so the window stays full) and counts as lost unless its reply still arrives
before the run ends, which drains the replies for up to 0.5 s after the last send. Prints
datagrams/s and how many were lost. Only loopback is used. See the README (Performance)
for what it is for: a second generator for the UDP window row, built unlike ours (which
is one tokio thread), whose ratios differ from ours.
"""

import argparse
import os
import signal
import socket
import struct
import sys
import time

LATE = 0.2
DRAIN = 0.5


def echo_process(sock, parent):
    # Ends with its parent, even one killed without a chance to clean up.
    sock.settimeout(1.0)
    while os.getppid() == parent:
        try:
            data, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        sock.sendto(data, addr)
    os._exit(0)


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            sys.exit("the proxy closed the connection")
        data += chunk
    return data


def associate(proxy, client_port):
    host, port = proxy.rsplit(":", 1)
    control = socket.create_connection((host, int(port)), timeout=5)
    control.sendall(b"\x05\x01\x00")
    if read_exactly(control, 2) != b"\x05\x00":
        sys.exit("the proxy refused the no-auth method")
    control.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", client_port))
    head = read_exactly(control, 4)
    if head[1] != 0:
        sys.exit(f"UDP ASSOCIATE failed: REP {head[1]}")
    if head[3] != 1:
        sys.exit(f"the relay's address has type {head[3]}; this script speaks IPv4 only")
    relay_ip = socket.inet_ntoa(read_exactly(control, 4))
    relay_port = struct.unpack(">H", read_exactly(control, 2))[0]
    if relay_ip == "0.0.0.0":
        relay_ip = host
    return control, (relay_ip, relay_port)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    route = parser.add_mutually_exclusive_group(required=True)
    route.add_argument("--direct", action="store_true")
    route.add_argument("--proxy", metavar="HOST:PORT", help="SOCKS5 server (loopback)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--size", type=int, default=512, help="payload bytes (at least 8)")
    args = parser.parse_args()
    if args.size < 8 or args.window < 1:
        sys.exit("--size must be at least 8 (the sequence number) and --window at least 1")

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo_addr = echo.getsockname()
    parent = os.getpid()
    echo_pid = os.fork()
    if echo_pid == 0:
        echo_process(echo, parent)
    try:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        control = None
        if args.direct:
            dest, header = echo_addr, b""
        else:
            control, dest = associate(args.proxy, client.getsockname()[1])
            header = b"\x00\x00\x00\x01" + socket.inet_aton(echo_addr[0]) + struct.pack(">H", echo_addr[1])
        offset = len(header)
        padding = b"x" * (args.size - 8)
        outstanding = set()  # sequence numbers sent and not back
        expired = set()  # sent, not back within LATE: lost unless the reply still comes
        next_seq = 0
        # (time, next_seq) at each check: no clock read per datagram. A datagram is late
        # once a check more than LATE ago had already seen it sent.
        checks = []

        def send():
            nonlocal next_seq
            outstanding.add(next_seq)
            client.sendto(header + struct.pack(">Q", next_seq) + padding, dest)
            next_seq += 1

        def expire(now):
            checks.append((now, next_seq))
            sent_before = None
            while checks and now - checks[0][0] > LATE:
                sent_before = checks.pop(0)[1]
            if sent_before is None:
                return
            for seq in [s for s in outstanding if s < sent_before]:
                outstanding.discard(seq)
                expired.add(seq)
                send()

        def receive():
            data = client.recv(65535)
            seq = struct.unpack_from(">Q", data, offset)[0]
            if seq in outstanding:
                outstanding.discard(seq)
                return True
            expired.discard(seq)  # late, not lost; the window got its replacement already
            return False

        client.settimeout(LATE)
        for _ in range(args.window):
            send()
        received = 0
        start = time.perf_counter()
        end = start + args.seconds
        while True:
            # The clock and the deadlines are looked at every 256 replies, and whenever
            # nothing came back for LATE.
            check = False
            try:
                if receive():
                    received += 1
                    send()
                    check = (received & 255) == 0
            except socket.timeout:
                check = True
            if check:
                now = time.perf_counter()
                if now >= end:
                    break
                expire(now)
        elapsed = time.perf_counter() - start
        # Drain: what is still on its way is not lost yet.
        deadline = time.perf_counter() + DRAIN
        client.settimeout(0.05)
        while outstanding and time.perf_counter() < deadline:
            try:
                receive()
            except socket.timeout:
                pass
        lost = len(expired) + len(outstanding)
        route_name = "direct" if args.direct else f"socks5://{args.proxy}"
        print(f"{route_name}: {received / elapsed:.0f} datagrams/s, {lost} lost of {next_seq} "
              f"({args.size} B, {args.window} in flight, {elapsed:.1f} s)")
        if control is not None:
            control.close()
    finally:
        os.kill(echo_pid, signal.SIGKILL)
        os.waitpid(echo_pid, 0)


if __name__ == "__main__":
    main()
