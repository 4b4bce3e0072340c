"""Shared helpers for the Python interop tests: result reporting, loopback echo
servers and a `python3 -m http.server` child, all bounded in time.

Every test case prints exactly one line: `PASS name`, `FAIL name: reason`, or
(only for a proxy kind that lacks a feature, never against ferrosocks)
`SKIP name: reason`. run.sh counts those lines.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import proxyctl

IO_TIMEOUT = 20.0  # seconds for any single socket operation in a test


class Failed(Exception):
    """A check did not hold; the message says what was expected and seen."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Failed(msg)


_failures = 0


def case(name: str, needs: set[str] | frozenset[str] = frozenset()):
    """Decorator: run the function now as test case `name`, print one result line."""

    def run(fn):
        global _failures
        missing = set(needs) - proxyctl.caps()
        if missing:
            print(f"SKIP {name}: {proxyctl.kind()} lacks {', '.join(sorted(missing))}", flush=True)
            return fn
        t0 = time.monotonic()
        try:
            fn()
        except Exception as e:  # any exception is a failure of this case only
            _failures += 1
            reason = f"{type(e).__name__}: {e}" if not isinstance(e, Failed) else str(e)
            reason = " ".join(reason.split())[:600]
            print(f"FAIL {name}: {reason}", flush=True)
            if not isinstance(e, Failed):
                traceback.print_exc(file=sys.stderr)
        else:
            print(f"PASS {name} ({time.monotonic() - t0:.1f}s)", flush=True)
        return fn

    return run


def exit_code() -> int:
    return 1 if _failures else 0


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- echo servers --------------------------------------------------------------

class TcpEcho:
    """Threaded TCP echo server on host:0; echoes until the peer half-closes."""

    def __init__(self, host: str = "127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()[:2]
        self.peers: list[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket):
        conn.settimeout(IO_TIMEOUT)
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        conn.shutdown(socket.SHUT_WR)
                        return
                    conn.sendall(data)
            except OSError:
                return

    def close(self):
        self._stop.set()
        self.sock.close()
        self._thread.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class UdpEcho:
    """UDP echo server on host:0: sends each datagram back, prefixed with a tag
    (so a reply from the wrong server is detected), to the address it came from."""

    def __init__(self, host: str = "127.0.0.1", tag: bytes = b""):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()[:2]
        self.tag = tag
        self.sources: list[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.sources.append(src[:2])
            try:
                self.sock.sendto(self.tag + data, src)
            except OSError:
                pass

    def close(self):
        self._stop.set()
        self.sock.close()
        self._thread.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- HTTP server child -----------------------------------------------------------

class HttpServer:
    """`python3 -m http.server` serving `directory` on host (127.0.0.1 or ::1), port 0.

    The port is read from the server's own "Serving HTTP on ... port N" line."""

    _LINE = re.compile(rb"Serving HTTP on \S+ port (\d+)")

    def __init__(self, directory: str, host: str = "127.0.0.1", timeout: float = 15.0):
        self.log_path = os.path.join(directory, f".http-{host.replace(':', '_')}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "--bind", host, "--directory", directory, "0"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.host = host
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"http.server exited: {open(self.log_path, 'rb').read()!r}")
            with open(self.log_path, "rb") as f:
                m = self._LINE.search(f.read())
            if m:
                self.port = int(m.group(1))
                break
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError("http.server did not announce its port")
            time.sleep(0.05)
        proxyctl.wait_tcp(host, self.port, deadline)

    def url(self, name: str, host: str | None = None) -> str:
        h = host or self.host
        if ":" in h:
            h = f"[{h}]"
        return f"http://{h}:{self.port}/{name}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_random_file(path: str, size: int) -> str:
    """Write `size` random bytes to path; returns the sha256 hex digest."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()
