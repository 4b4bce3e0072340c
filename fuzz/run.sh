#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: fuzz/run.sh [SECONDS_PER_TARGET] (default 10).
#
# Works on the stable toolchain: with the default FUZZ_SANITIZER=none, cargo-fuzz needs no
# unstable flags. ferrosocks-proto forbids unsafe code, so what the fuzzers look for is
# panics (including integer overflow: cargo-fuzz builds with debug assertions) and broken
# invariants, which need no sanitizer. FUZZ_SANITIZER=address still works on stable: the
# script then sets RUSTC_BOOTSTRAP=1 for cargo-fuzz's -Zsanitizer flag.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Crashes are saved under
# fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/ (both git-ignored).
# Exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs="${1:-10}"
sanitizer="${FUZZ_SANITIZER:-none}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

mapfile -t targets < <(cargo fuzz list)
echo "building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build -s "$sanitizer"

logs=target/fuzz-logs
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 >"$logs/$t.log" 2>&1; then
        echo "ok     $t: $(grep -E '^Done [0-9]+ runs' "$logs/$t.log" | tail -1)"
    else
        echo "FAILED $t (log: fuzz/$logs/$t.log)"
        grep -E 'panicked at|^thread|Test unit written to|^\s+cargo fuzz run' "$logs/$t.log" | head -5 | sed 's/^/    /' || true
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "${#failed[@]} fuzz target(s) failed: ${failed[*]}"
    exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${secs}s each without a crash"
