"""curl through the proxy under test: a 64 MiB random file served by
`python3 -m http.server` on 127.0.0.1 and on ::1, fetched with --socks5 and
--socks5-hostname, with and without username/password; sha256 byte-exact."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import proxyctl
from harness import HttpServer, case, check, exit_code, make_random_file, sha256_file

BLOB_SIZE = 64 * 1024 * 1024
CURL_TIMEOUT = 90  # seconds, per transfer (curl --max-time), plus a margin for the process

# A distinctive password, so that "never log a password" can be checked by search.
SECRET_USER, SECRET_PASS = "alice", "Xq7-interop-secret-9Kz"

CURL = shutil.which("curl")
ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def curl(proxy_opt: list[str], url: str, out: str) -> subprocess.CompletedProcess:
    if not CURL:
        raise RuntimeError("curl not found")
    if os.path.exists(out):
        os.unlink(out)
    argv = [CURL, "--silent", "--show-error", "--fail", "--noproxy", "",
            "--connect-timeout", "10", "--max-time", str(CURL_TIMEOUT),
            "--output", out, "--write-out", "%{http_code} %{size_download}"] + proxy_opt + [url]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=ENV, timeout=CURL_TIMEOUT + 15)


def fetch_ok(proxy_opt: list[str], url: str, out: str, want_sha: str) -> None:
    r = curl(proxy_opt, url, out)
    check(r.returncode == 0, f"curl {' '.join(proxy_opt)} {url} exited {r.returncode}: {r.stderr.strip()}")
    check(r.stdout.startswith("200 "), f"curl: HTTP status/size {r.stdout!r}, want 200")
    size = os.path.getsize(out)
    check(size == BLOB_SIZE, f"got {size} bytes, want {BLOB_SIZE}")
    got = sha256_file(out)
    check(got == want_sha, f"sha256 {got} != {want_sha}")


def main() -> int:
    work = tempfile.mkdtemp(prefix="interop-curl-")
    servers: list = []
    proxies: list[proxyctl.Proxy] = []
    try:
        www = os.path.join(work, "www")
        os.mkdir(www)
        want = make_random_file(os.path.join(www, "blob"), BLOB_SIZE)
        out = os.path.join(work, "out")
        http4 = HttpServer(www, "127.0.0.1")
        servers.append(http4)
        http6 = HttpServer(www, "::1")
        servers.append(http6)

        open_proxy = proxyctl.Proxy(ipv6="ipv6-listen" in proxyctl.caps())
        proxies.append(open_proxy)
        open_proxy.start()
        p4 = "%s:%d" % open_proxy.v4
        sessions = 0

        @case("curl-socks5-ipv4-target")
        def _():
            nonlocal sessions
            sessions += 1
            fetch_ok(["--socks5", p4], http4.url("blob"), out, want)

        @case("curl-socks5-hostname-localhost")
        def _():
            # --socks5-hostname: curl sends the name (ATYP 03) and the proxy resolves it.
            nonlocal sessions
            sessions += 1
            fetch_ok(["--socks5-hostname", p4], http4.url("blob", host="localhost"), out, want)

        @case("curl-socks5-ipv6-target")
        def _():
            nonlocal sessions
            sessions += 1
            fetch_ok(["--socks5", p4], http6.url("blob"), out, want)

        @case("curl-socks5-hostname-ipv6-literal-target")
        def _():
            nonlocal sessions
            sessions += 1
            fetch_ok(["--socks5-hostname", p4], http6.url("blob"), out, want)

        @case("curl-proxy-listening-on-ipv6", needs={"ipv6-listen"})
        def _():
            nonlocal sessions
            sessions += 1
            check(open_proxy.v6 is not None, "proxy has no [::1] listener")
            fetch_ok(["--socks5", "[%s]:%d" % open_proxy.v6], http4.url("blob"), out, want)

        @case("curl-4-parallel-downloads")
        def _():
            nonlocal sessions
            sessions += 4
            outs = [os.path.join(work, f"par{i}") for i in range(4)]
            procs = [subprocess.Popen(
                [CURL, "--silent", "--show-error", "--fail", "--noproxy", "", "--max-time", str(CURL_TIMEOUT),
                 "--socks5", p4, "--output", o, http4.url("blob")],
                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV) for o in outs]
            errs = []
            for p, o in zip(procs, outs):
                try:
                    _, err = p.communicate(timeout=CURL_TIMEOUT + 15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                    errs.append(f"{o}: timed out")
                    continue
                if p.returncode != 0:
                    errs.append(f"{o}: curl exited {p.returncode}: {err.decode().strip()}")
                elif sha256_file(o) != want:
                    errs.append(f"{o}: sha256 mismatch ({os.path.getsize(o)} bytes)")
                os.unlink(o) if os.path.exists(o) else None
            check(not errs, "; ".join(errs))

        @case("ferrosocks-serve-exits-0-on-sigterm-with-access-log", needs={"ferrosocks-cli"})
        def _():
            rcs = open_proxy.stop()
            check(rcs == [0], f"exit status {rcs} after SIGTERM, want [0]; stderr tail: "
                  f"{open(open_proxy.stderr_path, errors='replace').read()[-500:]}")
            lines = [l for l in open_proxy.stdout_text().splitlines() if l.strip()]
            # exactly one line per session (proxyctl makes no probe connection to ferrosocks)
            check(len(lines) == sessions,
                  f"{len(lines)} access-log lines on stdout for {sessions} sessions: {lines[:3]}")
            bad = [l for l in lines if "CONNECT" not in l]
            check(not bad, f"access-log lines that do not name the CONNECT command: {bad[:2]}")

        if "userpass" in proxyctl.caps():
            users = [("u", "p")] if proxyctl.kind() == "microsocks" else [("u", "p"), (SECRET_USER, SECRET_PASS)]
            auth_proxy = proxyctl.Proxy(users=users)
            proxies.append(auth_proxy)
            auth_proxy.start()
            a4 = "%s:%d" % auth_proxy.v4
        else:
            auth_proxy = None
            a4 = ""

        @case("curl-socks5-userpass", needs={"userpass"})
        def _():
            fetch_ok(["--socks5", a4, "--proxy-user", "u:p"], http4.url("blob"), out, want)

        @case("curl-socks5-hostname-userpass-second-user", needs={"userpass", "ferrosocks-cli"})
        def _():
            fetch_ok(["--socks5-hostname", a4, "--proxy-user", f"{SECRET_USER}:{SECRET_PASS}"],
                     http4.url("blob", host="localhost"), out, want)

        @case("curl-wrong-password-fails", needs={"userpass"})
        def _():
            r = curl(["--socks5", a4, "--proxy-user", "u:wrong"], http4.url("blob"), out)
            check(r.returncode != 0, f"curl with a wrong password exited 0 ({r.stdout})")
            got = os.path.getsize(out) if os.path.exists(out) else 0
            check(got == 0, f"curl with a wrong password received {got} bytes")
            # 97 = CURLE_PROXY (proxy handshake error), the answer to RFC 1929 failure
            check(r.returncode == 97, f"curl exit {r.returncode} ({r.stderr.strip()}), want 97 (proxy handshake)")

        @case("curl-without-credentials-fails-on-auth-proxy", needs={"userpass"})
        def _():
            r = curl(["--socks5", a4], http4.url("blob"), out)
            check(r.returncode != 0, f"curl without credentials exited 0 ({r.stdout})")
            got = os.path.getsize(out) if os.path.exists(out) else 0
            check(got == 0, f"curl without credentials received {got} bytes")

        @case("ferrosocks-password-absent-from-logs", needs={"userpass", "ferrosocks-cli"})
        def _():
            rcs = auth_proxy.stop()
            check(rcs == [0], f"exit status {rcs} after SIGTERM, want [0]")
            logs = auth_proxy.logs()
            check(SECRET_PASS not in logs, "the password appears in the server's stdout/stderr")

        @case("ferrosocks-access-log-names-user", needs={"userpass", "ferrosocks-cli"})
        def _():
            auth_proxy.stop()
            check(SECRET_USER in auth_proxy.stdout_text(),
                  "access log does not name the authenticated user "
                  f"{SECRET_USER!r}: {auth_proxy.stdout_text()[-400:]!r}")
    finally:
        for p in proxies:
            p.cleanup()
        for s in servers:
            s.close()
        shutil.rmtree(work, ignore_errors=True)
    return exit_code()


if __name__ == "__main__":
    sys.exit(main())
