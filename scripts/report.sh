#!/usr/bin/env bash
# Regenerates docs/reliability.md, the reliability report: runs the multi-host test files
# whose cases record what they tried and what came of it (faults, hostile input, security)
# and every fuzz target for a bounded time, then renders one table per area.
# Run as root from anywhere in the repository. Usage: scripts/report.sh [--fuzz-seconds N]
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_seconds=60
while [ $# -gt 0 ]; do
  case "$1" in
    --fuzz-seconds) fuzz_seconds="${2:?--fuzz-seconds needs a number of seconds}"; shift 2 ;;
    *) echo "report.sh: unknown option $1; usage: scripts/report.sh [--fuzz-seconds N]" >&2; exit 2 ;;
  esac
done

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
export MESH_REPORT_DIR="$results"

cargo build --workspace --bins --locked
bash scripts/build-test-image.sh
started=$(date -u +%Y-%m-%dT%H:%MZ)
status=0
# The test files that record cases; a failing case is still reported (as FAIL), and the
# script's exit status says so too.
mapfile -t recording < <(grep -l 'report::verdict' netns-tests/tests/*.rs | xargs -n1 basename | sed 's/\.rs$//')
cargo test -p netns-tests --locked --no-fail-fast "${recording[@]/#/--test=}" || status=1
# Malformed packets run through the loaded balancer programs with BPF_PROG_TEST_RUN.
cargo test -p dataplane --locked --test lb_hostile || status=1
bash scripts/fuzz.sh --seconds "$fuzz_seconds" || status=1

report=docs/reliability.md
mkdir -p docs
{
  echo "# Reliability report"
  echo
  echo "Faults, load and hostile input tried against Mesh, and what came of each. Regenerate with"
  echo "\`sudo bash scripts/report.sh\` (about $((fuzz_seconds * 6 / 60 + 15)) minutes; \`--fuzz-seconds N\` sets each fuzz target's run)."
  echo
  echo "- Run: $started, commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
  echo "- Machine: $(nproc) cores, Linux $(uname -r)"
  echo "- Every figure comes from this run; bounds are the ones the tests assert."
  echo
  target/debug/reliability-report "$results" || status=1
} > "$report"
echo "report.sh: wrote $report (exit $status)"
exit "$status"
