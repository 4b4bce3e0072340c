"""Start and stop the SOCKS5 server under test, on loopback only.

The proxy under test is chosen by the environment:

    PROXY_KIND      ferrosocks (default) | dante | microsocks
    FERROSOCKS_BIN  path of the ferrosocks binary (default: target/release/ferrosocks)

Python tests use `Proxy` as a context manager. Other languages run this file:

    python3 interop/proxyctl.py [--user NAME:PASS]... [--ipv6]

which starts the proxy, prints ONE JSON line on stdout
(`{"kind": .., "v4": [host, port], "v6": [host, port] | null, "caps": [..]}`),
then keeps the proxy running until its stdin reaches EOF (the parent exits or
closes the pipe) or it gets SIGTERM/SIGINT, and stops it. Nothing here leaves
a process behind: every child is stopped by its own pid, with a timeout and a
SIGKILL after it.

Only loopback addresses (127.0.0.1, ::1) are ever used.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What each kind of proxy can do. Tests that need a capability the kind lacks
# are reported as SKIP for that kind; against ferrosocks nothing is skipped.
CAPS = {
    "ferrosocks": {"connect", "bind", "bind-peer-filter", "udp", "userpass", "ipv6-listen",
                   "ferrosocks-cli"},
    # Dante's `username` method checks system accounts (/etc/passwd), which the
    # tests do not create, so user/pass cases are not run against it.
    # Dante also refuses a BIND peer other than DST.ADDR, but then ends the BIND
    # (the right peer gets ECONNREFUSED), where ferrosocks keeps waiting (DESIGN.md),
    # so "bind-peer-filter" is not claimed for it.
    "dante": {"connect", "bind", "udp", "ipv6-listen"},
    # microsocks only implements CONNECT; it listens on one address per process.
    "microsocks": {"connect", "userpass", "ipv6-listen"},
}

START_TIMEOUT = 15.0  # seconds for the proxy to announce/accept on its port
STOP_TIMEOUT = 10.0   # seconds between SIGTERM and SIGKILL

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LISTENING = re.compile(r"listening on (\S+)")


def kind() -> str:
    k = os.environ.get("PROXY_KIND", "ferrosocks")
    if k not in CAPS:
        raise SystemExit(f"PROXY_KIND={k!r}: expected one of {sorted(CAPS)}")
    return k


def caps() -> set[str]:
    return CAPS[kind()]


def ferrosocks_bin() -> str:
    return os.environ.get("FERROSOCKS_BIN", os.path.join(REPO, "target", "release", "ferrosocks"))


def free_port(family: int = socket.AF_INET) -> int:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_tcp(host: str, port: int, deadline: float) -> None:
    """Wait until host:port accepts a TCP connection (bounded by deadline)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect((host, port))
                return
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not accept connections in time ({last})")


def parse_sockaddr(text: str) -> tuple[str, int]:
    """'127.0.0.1:1080' or '[::1]:1080' -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port.rstrip(".,;)"))


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM, wait, SIGKILL if needed; returns the exit status (negative = signal)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Proxy:
    """One running proxy of the selected kind.

    Attributes after start(): v4 = (host, port) on 127.0.0.1; v6 = (host, port)
    on ::1 or None; stdout_path/stderr_path: the proxy's logs; returncodes
    (after stop()): exit status of each process started.
    """

    def __init__(self, users: list[tuple[str, str]] | None = None, ipv6: bool = False):
        self.kind = kind()
        self.users = list(users or [])
        self.ipv6 = ipv6
        self.v4: tuple[str, int] | None = None
        self.v6: tuple[str, int] | None = None
        self.procs: list[subprocess.Popen] = []
        self.returncodes: list[int] = []
        self.dir = tempfile.mkdtemp(prefix=f"interop-{self.kind}-")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self._stopped = False
        if self.users and "userpass" not in CAPS[self.kind]:
            raise RuntimeError(f"{self.kind}: username/password not supported by this harness")

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> "Proxy":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, argv: list[str], tag: str = "") -> subprocess.Popen:
        """Start one proxy process; its logs go to stdout.log<tag>/stderr.log<tag>.

        The first process that comes up becomes the one whose logs
        stdout_path/stderr_path name (see _adopt_logs)."""
        out = open(os.path.join(self.dir, "stdout.log" + tag), "ab")
        err = open(os.path.join(self.dir, "stderr.log" + tag), "ab")
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        out.close()
        err.close()
        self.procs.append(proc)
        _LIVE.add(self)
        return proc

    def _adopt_logs(self, tag: str) -> None:
        self.stdout_path = os.path.join(self.dir, "stdout.log" + tag)
        self.stderr_path = os.path.join(self.dir, "stderr.log" + tag)

    def start(self) -> "Proxy":
        getattr(self, "_start_" + self.kind)()
        return self

    def stop(self) -> list[int]:
        """Stop every process started; returns their exit statuses."""
        if not self._stopped:
            self._stopped = True
            self.returncodes = [_stop(p) for p in self.procs]
            _LIVE.discard(self)
        return self.returncodes

    def logs(self) -> str:
        parts = []
        for name in sorted(os.listdir(self.dir)):
            with open(os.path.join(self.dir, name), "rb") as f:
                parts.append(f"--- {name}\n" + f.read().decode("utf-8", "replace"))
        return "\n".join(parts)

    def stdout_text(self) -> str:
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited early with status {p.returncode}:\n{self.logs()[-4000:]}")

    # -- ferrosocks: port 0, addresses read from the `listening on` lines --
    def _start_ferrosocks(self) -> None:
        exe = ferrosocks_bin()
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"ferrosocks binary not found: {exe} (build it: cargo build --release -p ferrosocks)")
        argv = [exe, "serve", "--listen", "127.0.0.1:0"]
        if self.ipv6:
            argv += ["--listen", "[::1]:0"]
        for u, p in self.users:
            argv += ["--user", f"{u}:{p}"]
        self._spawn(argv)
        want = 2 if self.ipv6 else 1
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            with open(self.stderr_path, "rb") as f:
                text = _ANSI.sub("", f.read().decode("utf-8", "replace"))
            found = [parse_sockaddr(m) for m in _LISTENING.findall(text)]
            for host, port in found:
                if host == "127.0.0.1":
                    self.v4 = (host, port)
                elif host == "::1":
                    self.v6 = (host, port)
            if len([a for a in (self.v4, self.v6) if a]) >= want:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"ferrosocks did not print 'listening on' for every listener in "
                               f"{START_TIMEOUT}s:\n{self.logs()[-4000:]}")
        if self.ipv6 and not self.v6:
            raise RuntimeError(f"ferrosocks did not listen on [::1]:\n{self.logs()[-4000:]}")
        # No probe connection: the line is logged after bind+listen, so the kernel
        # already queues connections, and a probe would add a session to the access log.

    # -- dante: fixed free ports in a generated config ----------------------
    def _start_dante(self) -> None:
        exe = shutil.which("danted") or "/usr/sbin/danted"
        if not os.access(exe, os.X_OK):
            raise RuntimeError("danted not found (apt-get install dante-server)")
        for attempt in range(3):
            p4 = free_port(socket.AF_INET)
            p6 = free_port(socket.AF_INET6) if self.ipv6 else None
            conf = os.path.join(self.dir, "danted.conf")
            internal = f"internal: 127.0.0.1 port = {p4}\n"
            if p6:
                internal += f"internal: ::1 port = {p6}\n"
            debug = "debug: 1" if os.environ.get("DANTE_DEBUG") else ""
            with open(conf, "w") as f:
                f.write(f"""\
logoutput: stderr
{debug}
{internal}external: 127.0.0.1
external: ::1
user.privileged: root
user.unprivileged: nobody
clientmethod: none
socksmethod: none
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
client pass {{ from: ::1/128 to: ::/0 }}
socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect bind udpassociate bindreply udpreply }}
socks pass {{ from: 127.0.0.0/8 to: ::/0 command: connect bind udpassociate bindreply udpreply }}
socks pass {{ from: ::1/128 to: 0.0.0.0/0 command: connect bind udpassociate bindreply udpreply }}
socks pass {{ from: ::1/128 to: ::/0 command: connect bind udpassociate bindreply udpreply }}
socks pass {{ from: 127.0.0.0/8 to: . command: connect bind udpassociate bindreply udpreply }}
socks pass {{ from: ::1/128 to: . command: connect bind udpassociate bindreply udpreply }}
""")
            pidfile = os.path.join(self.dir, "danted.pid")
            proc = self._spawn([exe, "-f", conf, "-p", pidfile, "-N", "1"], tag=f".{attempt}")
            deadline = time.monotonic() + START_TIMEOUT
            try:
                wait_tcp("127.0.0.1", p4, deadline)
                if p6:
                    wait_tcp("::1", p6, deadline)
            except TimeoutError:
                _stop(proc)
                self.procs.remove(proc)
                continue
            self.v4 = ("127.0.0.1", p4)
            self.v6 = ("::1", p6) if p6 else None
            self._adopt_logs(f".{attempt}")
            return
        raise RuntimeError(f"danted did not start:\n{self.logs()[-4000:]}")

    # -- microsocks: one process per listen address ------------------------
    def _start_microsocks(self) -> None:
        exe = shutil.which("microsocks")
        if not exe:
            raise RuntimeError("microsocks not found (apt-get install microsocks)")
        auth = []
        if self.users:
            if len(self.users) != 1:
                raise RuntimeError("microsocks supports one user")
            auth = ["-u", self.users[0][0], "-P", self.users[0][1]]
        targets = [("127.0.0.1", socket.AF_INET)] + ([("::1", socket.AF_INET6)] if self.ipv6 else [])
        for i, (host, fam) in enumerate(targets):
            for attempt in range(3):
                port = free_port(fam)
                proc = self._spawn([exe, "-i", host, "-p", str(port)] + auth, tag=f".{i}.{attempt}")
                try:
                    wait_tcp(host, port, time.monotonic() + START_TIMEOUT)
                except TimeoutError:
                    _stop(proc)
                    self.procs.remove(proc)
                    continue
                if fam == socket.AF_INET:
                    self.v4 = (host, port)
                    self._adopt_logs(f".{i}.{attempt}")
                else:
                    self.v6 = (host, port)
                break
            else:
                raise RuntimeError(f"microsocks did not start on {host}:\n{self.logs()[-4000:]}")


# Every proxy still running is stopped when the interpreter exits, also on
# SIGTERM (sent by `timeout` in run.sh) and SIGINT.
_LIVE: set[Proxy] = set()


def _stop_all() -> None:
    for p in list(_LIVE):
        p.stop()


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


atexit.register(_stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--user", action="append", default=[], metavar="NAME:PASS")
    ap.add_argument("--ipv6", action="store_true", help="also listen on [::1]")
    args = ap.parse_args(argv)
    users = [tuple(u.split(":", 1)) for u in args.user]
    proxy = Proxy(users=users, ipv6=args.ipv6)
    try:
        proxy.start()
    except Exception as e:  # reported to the parent as a JSON error line
        print(json.dumps({"error": str(e)}), flush=True)
        proxy.cleanup()
        return 1
    print(json.dumps({"kind": proxy.kind, "v4": proxy.v4, "v6": proxy.v6,
                      "caps": sorted(caps()), "logdir": proxy.dir}), flush=True)
    try:
        # Block until the parent closes our stdin (or dies).
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        rcs = proxy.stop()
        print(f"proxyctl: {proxy.kind} stopped, exit status {rcs}", file=sys.stderr, flush=True)
        shutil.rmtree(proxy.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
