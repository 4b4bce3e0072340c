#!/usr/bin/env bash
# The README's unpinned comparison (Performance, "One worker thread on small machines"): the server and the
# load generator on the same machine with no CPU pinning, as a user runs a local proxy.
#
#   bench/unpinned.sh [ROUNDS]     # default 3 rounds; about 90 s per round
#
# Interleaves, round by round: direct (no proxy), microsocks (when on the PATH), ferrosocks
# with two worker threads (`--workers 2`, one per CPU, the default before `workers`
# existed) and ferrosocks on its defaults (`workers = "auto"`). Each runs the generator's
# latency, connrate, four throughput cases and (not microsocks, which has no UDP) udp, 3 s
# each. Prints every figure per round, then medians and, per round, ratios. Only loopback
# is used; every server it starts is stopped when it ends.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
rounds="${1:-3}"
cargo build --release -q
bin="$repo/target/release/ferrosocks"
# Below the ephemeral port range, so no client socket of an earlier case holds it.
port=21080
out="$(mktemp -d)"
server=
cleanup() {
  local rc=$?
  if [[ -n $server ]]; then
    kill "$server" 2>/dev/null
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$out"
  exit "$rc"
}
trap cleanup EXIT

listening() { [[ -n $(ss -Hltn "sport = :$port") ]]; }
if listening; then
  echo "bench/unpinned.sh: port $port is taken; stop what listens there first" >&2
  exit 1
fi
echo "ferrosocks $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs, nothing pinned, $rounds rounds"

contenders=(direct)
command -v microsocks >/dev/null && contenders+=(microsocks)
contenders+=(ferrosocks-2-workers ferrosocks)

for round in $(seq "$rounds"); do
  for who in "${contenders[@]}"; do
    target=(--proxy "127.0.0.1:$port")
    case $who in
      direct) target=(--direct) ;;
      microsocks) microsocks -i 127.0.0.1 -p "$port" >/dev/null 2>&1 & server=$! ;;
      ferrosocks-2-workers) "$bin" serve --listen "127.0.0.1:$port" --workers 2 >/dev/null 2>&1 & server=$! ;;
      ferrosocks) "$bin" serve --listen "127.0.0.1:$port" >/dev/null 2>&1 & server=$! ;;
    esac
    if [[ -n $server ]]; then
      # Measure only a server that is up: a failed start would leave the port to nothing
      # (the case fails) or to something else (measured under the wrong name).
      for _ in $(seq 50); do
        listening && break
        sleep 0.1
      done
      if ! kill -0 "$server" 2>/dev/null || ! listening; then
        echo "bench/unpinned.sh: $who did not start on port $port" >&2
        exit 1
      fi
    fi
    cases=(latency connrate "throughput --streams 1 --direction up"
      "throughput --streams 8 --direction up" "throughput --streams 1 --direction down"
      "throughput --streams 8 --direction down")
    [[ $who != microsocks ]] && cases+=(udp)
    for i in "${!cases[@]}"; do
      # shellcheck disable=SC2086 # the case is several words on purpose
      "$bin" bench ${cases[$i]} "${target[@]}" --duration 3s --quiet \
        --json "$out/$round.$who.$i.json" >/dev/null
    done
    if [[ -n $server ]]; then
      kill "$server"
      wait "$server" 2>/dev/null || true
      server=
    fi
  done
done

python3 - "$out" "$rounds" "${contenders[@]}" <<'EOF'
import json, os, statistics, sys

out, rounds, contenders = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
cases = ["latency", "connrate", "1 up", "8 up", "1 down", "8 down", "udp"]
keys = ("Gbit/s", "datagrams/s", "sessions/s", "p50", "p99")
figures = {}  # (contender, "case: metric") -> [value per round]
for who in contenders:
    for r in range(1, rounds + 1):
        for i, case in enumerate(cases):
            path = f"{out}/{r}.{who}.{i}.json"
            if not os.path.exists(path):
                continue
            for rec in json.load(open(path))["records"]:
                if any(k in rec["metric"] for k in keys):
                    metric = f"{case}: {rec['metric'].split(',')[-1].strip()}"
                    figures.setdefault((who, metric), []).append(rec["value"])
metrics = list(dict.fromkeys(m for (_, m) in figures))
print("per round:")
for m in metrics:
    for who in contenders:
        if (who, m) in figures:
            print(f"  {m:<45} {who:<22} " + "  ".join(f"{v:.4g}" for v in figures[(who, m)]))
print("medians, and ferrosocks against the others per round:")
for m in metrics:
    row = [f"{who} {statistics.median(figures[(who, m)]):.4g}" for who in contenders if (who, m) in figures]
    print(f"  {m:<45} " + " | ".join(row))
    ours = figures.get(("ferrosocks", m))
    for other in contenders[:-1]:
        theirs = figures.get((other, m))
        if ours and theirs and ("Gbit" in m or "/s" in m):
            ratios = [a / b for a, b in zip(ours, theirs)]
            print(f"  {'':<45} ferrosocks / {other}: " + ", ".join(f"{x:.2f}" for x in ratios)
                  + f" (median {statistics.median(ratios):.2f})")
EOF
