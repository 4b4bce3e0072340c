#!/usr/bin/env bash
# The one command behind the README's performance table:
#
#   bench/peers.sh            # about 12 minutes: 3 repetitions, 3 s per measurement, 9000 idle tunnels
#   bench/peers.sh --quick    # shorter: 1 s per measurement, 3000 idle tunnels
#   bench/peers.sh --shadowsocks-rust   # also shadowsocks-rust's sslocal (built from
#                                       # crates.io the first time, ~7 minutes)
#
# Installs Debian's dante-server, microsocks, haproxy and nginx (with its stream
# module), and iperf3 and proxychains4 (a second load generator for the TCP throughput
# rows) when missing (as root, apt-get; nginx's and iperf3's services are not started),
# builds ferrosocks in release mode, and runs `ferrosocks bench peers`, which
# starts danted, microsocks, HAProxy and nginx (plain forwarders: HAProxy for the
# TCP rows, nginx for TCP and UDP), this binary's bare UDP forwarder (the UDP rows)
# and `ferrosocks serve` on free loopback ports pinned to CPU 1, runs the generator
# pinned to CPU 0, interleaves direct / Dante / microsocks / HAProxy / nginx /
# bare UDP forwarder / ferrosocks case by case, prints medians and ratios, and writes
# bench/results/latest.json and bench/results/latest.svg. Any further argument
# goes to `ferrosocks bench peers` (see its --help). Only loopback is used.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v danted >/dev/null || [[ -x /usr/sbin/danted ]] || missing+=(dante-server)
command -v microsocks >/dev/null || missing+=(microsocks)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
command -v taskset >/dev/null || missing+=(util-linux)
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v proxychains4 >/dev/null || missing+=(proxychains4)
if ((${#missing[@]})); then
  if ((EUID != 0)); then
    echo "bench/peers.sh: need root to install ${missing[*]} (apt-get)" >&2
    exit 1
  fi
  echo "bench/peers.sh: installing ${missing[*]}"
  # Installing a server package starts its service (nginx on port 80, every interface):
  # a policy-rc.d that refuses keeps them from starting, and the ones installed here are
  # not enabled for the next boot either. The benchmark starts its own instances.
  policy=/usr/sbin/policy-rc.d
  ours=
  if [[ ! -e $policy ]]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    ours=1
  fi
  apt-get -o DPkg::Lock::Timeout=300 update -q
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
  if [[ -n $ours ]]; then
    rm -f "$policy"
    trap - EXIT
  fi
  if command -v systemctl >/dev/null; then
    for package in "${missing[@]}"; do
      case $package in
        dante-server) service=danted ;;
        haproxy | nginx | iperf3) service=$package ;;
        *) continue ;;
      esac
      systemctl disable "$service" >/dev/null 2>&1 || true
    done
  fi
fi
if ((EUID != 0)); then
  echo "bench/peers.sh: Dante's config here (user.privileged: root) needs root" >&2
  exit 1
fi
if (($(nproc) < 2)); then
  echo "bench/peers.sh: needs 2 cores (proxy on CPU 1, generator on CPU 0)" >&2
  exit 1
fi

# --shadowsocks-rust is this script's: it builds sslocal if missing and adds it as a peer
# (bench/shadowsocks-rust.sh says how it runs); every other argument goes to the binary.
args=()
shadowsocks_rust=
for arg in "$@"; do
  if [[ $arg == --shadowsocks-rust ]]; then
    shadowsocks_rust=1
  else
    args+=("$arg")
  fi
done
if [[ -n $shadowsocks_rust ]]; then
  bench/shadowsocks-rust.sh install
  args+=(--peer "shadowsocks-rust=exec $(printf %q "$repo/bench/shadowsocks-rust.sh") {port}")
fi

cargo build --release -q -p ferrosocks
# Every idle tunnel costs the generator and the proxy two descriptors each.
ulimit -n "$(ulimit -Hn)"
danted_bin="$(command -v danted || echo /usr/sbin/danted)"
haproxy_bin="$(command -v haproxy || echo /usr/sbin/haproxy)"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
exec target/release/ferrosocks bench peers --danted "$danted_bin" --haproxy "$haproxy_bin" \
  --nginx "$nginx_bin" ${args[@]+"${args[@]}"}
