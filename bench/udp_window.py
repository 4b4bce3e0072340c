#!/usr/bin/env python3
"""A plain UDP load generator that is not ours: blocking sockets, the client and the echo
in two processes (run it under `taskset -c 0` and both share that core), a fixed number
of datagrams in flight, directly or through a SOCKS5 server's UDP ASSOCIATE.

    taskset -c 0 bench/udp_window.py --direct
    taskset -c 0 bench/udp_window.py --proxy 127.0.0.1:1080

Prints datagrams/s (echoed datagrams received per second) and how many were lost (a
datagram not back within 200 ms counts as lost and is replaced, so the window stays
full). Only loopback is used. See the README (Performance) for what it is for: it spends
more time per datagram than `ferrosocks bench udp`, so a relay's cost weighs less in its
ratio.
"""

import argparse
import os
import signal
import socket
import struct
import sys
import time


def echo_process(sock):
    while True:
        data, addr = sock.recvfrom(65535)
        sock.sendto(data, addr)


def associate(proxy, client_port):
    host, port = proxy.rsplit(":", 1)
    control = socket.create_connection((host, int(port)), timeout=5)
    control.sendall(b"\x05\x01\x00")
    if control.recv(2) != b"\x05\x00":
        sys.exit("the proxy refused the no-auth method")
    control.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", client_port))
    reply = control.recv(10)
    if len(reply) < 10 or reply[1] != 0 or reply[3] != 1:
        sys.exit(f"UDP ASSOCIATE failed: {reply!r}")
    relay = (socket.inet_ntoa(reply[4:8]), struct.unpack(">H", reply[8:10])[0])
    return control, relay


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    route = parser.add_mutually_exclusive_group(required=True)
    route.add_argument("--direct", action="store_true")
    route.add_argument("--proxy", metavar="HOST:PORT", help="SOCKS5 server (loopback)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo_addr = echo.getsockname()
    echo_pid = os.fork()
    if echo_pid == 0:
        echo_process(echo)
    try:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        payload = b"x" * args.size
        if args.direct:
            dest, message, control = echo_addr, payload, None
        else:
            control, dest = associate(args.proxy, client.getsockname()[1])
            header = b"\x00\x00\x00\x01" + socket.inet_aton(echo_addr[0]) + struct.pack(">H", echo_addr[1])
            message = header + payload
        client.settimeout(0.2)
        for _ in range(args.window):
            client.sendto(message, dest)
        received = lost = 0
        start = time.perf_counter()
        end = start + args.seconds
        while True:
            try:
                client.recv(65535)
                received += 1
            except socket.timeout:
                lost += 1
            if (received & 255) == 0 and time.perf_counter() >= end:
                break
            client.sendto(message, dest)
        elapsed = time.perf_counter() - start
        route_name = "direct" if args.direct else f"socks5://{args.proxy}"
        print(f"{route_name}: {received / elapsed:.0f} datagrams/s, {lost} lost "
              f"({args.size} B, {args.window} in flight, {elapsed:.1f} s)")
        if control is not None:
            control.close()
    finally:
        os.kill(echo_pid, signal.SIGKILL)
        os.waitpid(echo_pid, 0)


if __name__ == "__main__":
    main()
