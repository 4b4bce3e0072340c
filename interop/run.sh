#!/usr/bin/env bash
# Runs every interop test (real third-party SOCKS clients over loopback) against
# one proxy and prints `interop: N passed, M failed` as its last line.
#
#   interop/run.sh [--proxy ferrosocks|dante|microsocks] [TEST...]
#
# TEST is one of: curl pysocks npm-socks (default: all). The proxy may also be
# chosen with PROXY_KIND; FERROSOCKS_BIN overrides target/release/ferrosocks.
# Needs interop/.venv (PySocks) and interop/node_modules (npm socks): scripts/test-all
# installs both. A missing tool is a failure, never a skip. Each test file
# starts its own servers on free loopback ports and runs under `timeout`,
# which kills its whole process group when the time is up.
#
# Each test case prints one line: PASS name | FAIL name: reason | SKIP name: reason
# (SKIP only for a proxy kind lacking a feature: Dante/microsocks; never for
# ferrosocks). A test file that dies or times out counts as one more failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$here"

PROXY_KIND="${PROXY_KIND:-ferrosocks}"
selected=()
while (($#)); do
  case "$1" in
    --proxy) PROXY_KIND="${2:?--proxy needs a value}"; shift 2 ;;
    --proxy=*) PROXY_KIND="${1#--proxy=}"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) selected+=("$1"); shift ;;
  esac
done
case "$PROXY_KIND" in ferrosocks|dante|microsocks) ;; *) echo "unknown proxy kind: $PROXY_KIND" >&2; exit 2 ;; esac
export PROXY_KIND
export FERROSOCKS_BIN="${FERROSOCKS_BIN:-$repo/target/release/ferrosocks}"
export PYTHON="${PYTHON:-$here/.venv/bin/python}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NO_COLOR=1
TEST_TIMEOUT="${INTEROP_TEST_TIMEOUT:-300}"   # seconds per test file

declare -A cmd=(
  [curl]="$PYTHON test_curl.py"
  [pysocks]="$PYTHON test_pysocks.py"
  [npm-socks]="node test_npm_socks.js"
)
order=(curl pysocks npm-socks)
((${#selected[@]})) || selected=("${order[@]}")

passed=0 failed=0 skipped=0
fail() { echo "FAIL $1"; failed=$((failed + 1)); }

# --- preflight: every tool the tests use must be here -----------------------------
command -v curl >/dev/null || fail "preflight-curl: curl not found"
command -v node >/dev/null || fail "preflight-node: node not found"
command -v timeout >/dev/null || fail "preflight-timeout: coreutils timeout not found"
if [[ ! -x "$PYTHON" ]]; then
  fail "preflight-python: $PYTHON not found (run scripts/test-all, or python3 -m venv interop/.venv && interop/.venv/bin/pip install -r interop/requirements.txt)"
elif ! "$PYTHON" -c 'import socks' 2>/dev/null; then
  fail "preflight-pysocks: PySocks not importable by $PYTHON"
fi
[[ -f node_modules/socks/package.json ]] || fail "preflight-npm-socks: interop/node_modules/socks missing (npm ci in interop/)"
if [[ "$PROXY_KIND" == ferrosocks && ! -x "$FERROSOCKS_BIN" ]]; then
  fail "preflight-ferrosocks: $FERROSOCKS_BIN not built (cargo build --release -p ferrosocks)"
fi

echo "interop: proxy under test: $PROXY_KIND"
logdir="$(mktemp -d "${TMPDIR:-/tmp}/interop-logs.XXXXXX")"
trap 'rm -rf "$logdir"' EXIT

for t in "${selected[@]}"; do
  if [[ -z "${cmd[$t]:-}" ]]; then
    fail "$t: no such interop test (have: ${order[*]})"
    continue
  fi
  echo "--- $t (${cmd[$t]})"
  start=$SECONDS
  set +e
  # shellcheck disable=SC2086  # the command is a word list on purpose
  timeout -k 10 "$TEST_TIMEOUT" ${cmd[$t]} 2>"$logdir/$t.err" | tee "$logdir/$t.out"
  rc=${PIPESTATUS[0]}
  set -e
  p=$(grep -c '^PASS ' "$logdir/$t.out" || true)
  f=$(grep -c '^FAIL ' "$logdir/$t.out" || true)
  s=$(grep -c '^SKIP ' "$logdir/$t.out" || true)
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
  if ((rc == 124 || rc == 137)); then
    fail "$t: timed out after ${TEST_TIMEOUT}s (cases not reported are lost)"
  elif ((rc != 0 && f == 0)); then
    fail "$t: exited $rc without reporting a failed case"
  elif ((rc == 0 && p + s == 0)); then
    fail "$t: ran no test case"
  fi
  if ((rc != 0)); then
    echo "--- $t stderr (last 40 lines):"
    tail -n 40 "$logdir/$t.err" | sed 's/^/    /'
  fi
  echo "--- $t done in $((SECONDS - start))s (exit $rc)"
done

if [[ -n "${INTEROP_RESULT_FILE:-}" ]]; then
  echo "$passed $failed $skipped" >"$INTEROP_RESULT_FILE"
fi
summary="interop: $passed passed, $failed failed"
((skipped == 0)) || summary+=", $skipped skipped"
echo "$summary"
((failed == 0))
