#!/usr/bin/env bash
# Builds the cargo-fuzz targets under fuzz/ and runs each for a bounded time, starting from the
# checked-in seeds (fuzz/seeds/<target>/) copied into a scratch corpus.
#
#   scripts/fuzz.sh [--quick | --seconds N] [target...]
#
# --quick runs each target 10 s (CI); the default is 300 s each. Exits non-zero when any
# target crashes, hangs or fails an assertion, and prints the input that did it (kept under
# fuzz/artifacts/<target>/; replay it with `cargo fuzz run -s none <target> <file>`).
# With $MESH_REPORT_DIR set, appends one JSON line per target to hostile-input.jsonl there.
#
# Runs on stable Rust: no sanitizer (-s none), so the targets check Rust's own panics,
# overflow checks and debug assertions, plus each target's invariants.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=300
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) seconds=10 ;;
    --seconds)
      [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: --seconds takes a number of seconds" >&2; exit 2; }
      seconds=$2
      shift
      ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done

# What each target exercises, for the report.
declare -A what=(
  [join_token]="join-token parser (parse, print, parse again)"
  [probe_wire]="VXLAN probe and IPv4/UDP parsers (parse, re-emit, parse again)"
  [probe_responder]="probe responder requests (reply well-formed, never larger than the request)"
  [dns_query]="DNS handler (parse, lookup, answer, truncation)"
  [local_api_request]="local API request lines (newline-delimited JSON)"
  [rpc_frame]="cluster RPC frames on 2377 (length prefix, limit, JSON)"
  [config]="config file (parse, print, parse again, resolve)"
)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing; installing cargo-fuzz 0.13.2 (cargo install, about a minute)"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
# libfuzzer-sys compiles libFuzzer, which is C++ (clang from setup.sh provides clang++).
if ! command -v "${CXX:-c++}" >/dev/null 2>&1; then
  if command -v clang++ >/dev/null 2>&1; then
    export CXX=clang++
  else
    echo "fuzz.sh: no C++ compiler; run scripts/setup.sh (it installs clang), or install g++" >&2
    exit 1
  fi
fi

# Debug builds with overflow checks and debug assertions: they build in a fraction of a release
# build's time, and a few seconds per target is about coverage of the checks, not speed.
build=(-s none --dev)

report() { # passed outcome target
  [ -n "${MESH_REPORT_DIR:-}" ] || return 0
  mkdir -p "$MESH_REPORT_DIR"
  local case="fuzz $3: ${what[$3]:-fuzz target}" outcome=${2//\\/\\\\}
  outcome=${outcome//\"/\\\"}
  printf '{"area":"hostile input","case":"%s","passed":%s,"outcome":"%s"}\n' \
    "$case" "$1" "$outcome" >>"$MESH_REPORT_DIR/hostile-input.jsonl"
}

# 1234567 -> 1,234,567
thousands() { echo "$1" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta'; }

started=$SECONDS
echo "== fuzz: build"
# cargo fuzz has no --locked: check that fuzz/Cargo.lock is current first.
cargo fetch --locked --manifest-path fuzz/Cargo.toml >/dev/null
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
if ! (cd fuzz && cargo fuzz build "${build[@]}"); then
  echo "fuzz.sh: the fuzz targets do not build" >&2
  for target in "${targets[@]}"; do report false "not run: the fuzz targets do not build" "$target"; done
  exit 1
fi
built=$((SECONDS - started))

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
  corpus="$scratch/$target"
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  if [ -d "fuzz/seeds/$target" ]; then cp -r "fuzz/seeds/$target/." "$corpus/"; fi
  log="$scratch/$target.log"
  echo "== fuzz $target (${seconds} s): ${what[$target]:-}"
  # -timeout: an input that takes 10 s is a hang, and fails the target like a crash.
  status=0
  (cd fuzz && cargo fuzz run "${build[@]}" "$target" "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1) >"$log" 2>&1 || status=$?
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
  runs=$(echo "$done_line" | awk '{print $2}')
  took=$(echo "$done_line" | awk '{print $5}')
  if [ "$status" -eq 0 ] && [ -n "$done_line" ]; then
    outcome="$(thousands "$runs") runs in $took s, 0 crashes"
    echo "   ok: $outcome"
    report true "$outcome" "$target"
  else
    input=$(grep -oE 'Test unit written to \S+' "$log" | tail -1 | sed 's/^Test unit written to //' || true)
    # libFuzzer's report: from the panic or error through the saved input.
    excerpt=$(awk '/panicked at|ERROR: libFuzzer|deadly signal/ { on = 1 } on && n++ < 60 { print } /Test unit written/ { on = 0 }' "$log")
    if [ -n "$excerpt" ]; then echo "$excerpt" >&2; else tail -40 "$log" >&2; fi
    # libFuzzer names the input with cargo-fuzz's absolute artifact prefix.
    outcome="failed (exit $status)${input:+, input $input}"
    echo "   FAILED: $outcome" >&2
    [ -z "$input" ] || echo "   crashing input: $input (replay: cd fuzz && cargo fuzz run ${build[*]} $target $input)" >&2
    report false "$outcome" "$target"
    failed+=("$target")
  fi
done

echo "== fuzz: ${#targets[@]} targets, build ${built} s, total $((SECONDS - started)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: failed: ${failed[*]}" >&2
  exit 1
fi
