#!/usr/bin/env bash
# shadowsocks-rust's `sslocal` as a plain SOCKS5 server on loopback, a peer for the
# side-by-side benchmark:
#
#   bench/shadowsocks-rust.sh install   # cargo install into target/peers/ (about 7 minutes, once)
#   bench/shadowsocks-rust.sh PORT      # run it in the foreground on 127.0.0.1:PORT
#   bench/peers.sh --shadowsocks-rust   # installs it if missing and adds it to the run
#
# sslocal is the client side of shadowsocks: it accepts SOCKS5 (CONNECT and UDP ASSOCIATE,
# no BIND) and normally relays every request, encrypted, to a shadowsocks server. With an
# ACL of `[bypass_all]` and no proxy list, every destination "bypasses" that server and is
# connected to directly, so sslocal works as an ordinary SOCKS5 server: what a user who
# picks shadowsocks-rust for local SOCKS gets. It still requires a server in its
# arguments; the one given (127.0.0.1:9, the discard port) is never contacted, and being
# loopback it keeps the benchmark on loopback even if it were. Everything else is
# sslocal's default (worker threads: one per CPU it may run on, so one when pinned).
set -euo pipefail

version=1.25.0
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$repo/target/peers/shadowsocks-rust-$version"
sslocal="$root/bin/sslocal"

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  install)
    if [[ -x $sslocal ]]; then
      exit 0
    fi
    echo "bench/shadowsocks-rust.sh: building shadowsocks-rust $version from crates.io into $root"
    cargo install shadowsocks-rust --bin sslocal --version "$version" --locked --root "$root" >&2
    ;;
  -h | --help)
    usage
    ;;
  '')
    usage >&2
    exit 2
    ;;
  *)
    port=$1
    if [[ ! $port =~ ^[0-9]+$ ]]; then
      echo "bench/shadowsocks-rust.sh: expected 'install' or a port, got '$port'" >&2
      exit 2
    fi
    if [[ ! -x $sslocal ]]; then
      echo "bench/shadowsocks-rust.sh: $sslocal missing; run 'bench/shadowsocks-rust.sh install'" >&2
      exit 1
    fi
    # The ACL lives beside the binary: written each time, it is the same two words.
    acl="$root/bypass_all.acl"
    printf '[bypass_all]\n' >"$acl"
    exec "$sslocal" --protocol socks -b "127.0.0.1:$port" -U \
      -s 127.0.0.1:9 -m aes-256-gcm -k unused --acl "$acl"
    ;;
esac
