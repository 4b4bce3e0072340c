#!/usr/bin/env bash
# The one command behind the README's performance table:
#
#   bench/peers.sh            # about 6 minutes: 3 repetitions, 3 s per measurement, 9000 idle tunnels
#   bench/peers.sh --quick    # about 2 minutes: 1 s per measurement, 3000 idle tunnels
#
# Installs Debian's dante-server, microsocks and haproxy when missing (as root,
# apt-get), builds ferrosocks in release mode, and runs `ferrosocks bench peers`,
# which starts danted, microsocks, HAProxy (a plain TCP forwarder, for the TCP
# rows only) and `ferrosocks serve` on free loopback ports pinned to CPU 1, runs
# the generator pinned to CPU 0, interleaves direct / Dante / microsocks /
# HAProxy / ferrosocks case by case, prints medians and ratios, and writes
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
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  if ((EUID != 0)); then
    echo "bench/peers.sh: need root to install ${missing[*]} (apt-get)" >&2
    exit 1
  fi
  echo "bench/peers.sh: installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=300 update -q
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
fi
if ((EUID != 0)); then
  echo "bench/peers.sh: Dante's config here (user.privileged: root) needs root" >&2
  exit 1
fi
if (($(nproc) < 2)); then
  echo "bench/peers.sh: needs 2 cores (proxy on CPU 1, generator on CPU 0)" >&2
  exit 1
fi

cargo build --release -q -p ferrosocks
# Every idle tunnel costs the generator and the proxy two descriptors each.
ulimit -n "$(ulimit -Hn)"
danted_bin="$(command -v danted || echo /usr/sbin/danted)"
haproxy_bin="$(command -v haproxy || echo /usr/sbin/haproxy)"
exec target/release/ferrosocks bench peers --danted "$danted_bin" --haproxy "$haproxy_bin" "$@"
