#!/usr/bin/env bash
# Runs benchmark suites on local labs and writes bench/results/<suite>.{json,md,png} and
# bench/results/README.md. Run as root. Arguments go to mesh-bench:
#   bash scripts/bench.sh                 # every suite, 5 repetitions
#   bash scripts/bench.sh overlay dns     # chosen suites
#   bash scripts/bench.sh --quick         # smoke test, results in target/bench-quick
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins --locked
exec target/release/mesh-bench "$@"
