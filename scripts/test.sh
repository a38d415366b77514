#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, formatting, lints, unit tests, and the
# multi-host tests on real network namespaces. Run as root from anywhere in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
# netns-tests and bench start these binaries inside lab hosts.
cargo build --workspace --bins --locked
echo "== test image"
# Services in netns-tests and bench run mesh-test:latest (busybox-static) from the lab's image dir.
bash scripts/build-test-image.sh
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# A hung test is a bug: fail the run long before CI's limit instead of waiting for it.
set +e
timeout --signal=KILL 2400 cargo test --workspace --all-targets --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# The benchmark harness in quick mode: every suite end to end on tiny sizes, so it never rots.
# It reports figures; it asserts none.
echo "== bench smoke (mesh-bench --quick)"
timeout --signal=KILL 900 target/debug/mesh-bench --quick
bench_status=$?
[ "$bench_status" -eq 0 ] || status=1

# Every fuzz target for a few seconds from its seeds: parsers of hostile input never rot.
echo "== fuzz smoke (scripts/fuzz.sh --quick)"
timeout --signal=KILL 1200 bash scripts/fuzz.sh --quick
fuzz_status=$?
[ "$fuzz_status" -eq 0 ] || status=1
set -e

# One closing line for the whole suite, summed over every test binary.
echo "== suite finished in ${SECONDS}s (exit $status)"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
