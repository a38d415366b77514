#!/usr/bin/env bash
# Sets up this machine, builds Mesh and brings up a local cluster: 3 managers and 2 workers, each
# a network namespace running meshd on a lab switch in 198.18.0.0/24, joined into one cluster
# (m1 runs `meshctl swarm init`, the others `meshctl swarm join`). Run as root.
# Re-running replaces the previous quickstart lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
LAB=${LAB:-quickstart}

cargo build --release --bins --locked
export PATH="$PWD/target/release:$PATH"

if meshctl lab status "$LAB" >/dev/null 2>&1; then
  meshctl lab down "$LAB"
fi
meshctl lab up --name "$LAB" --managers 3 --workers 2
echo
echo "The cluster, as manager m2 sees it:"
meshctl lab exec "$LAB" m2 -- meshctl node ls
echo
meshctl lab exec "$LAB" m1 -- meshctl info
cat <<MSG

Lab $LAB is up. Try:
  target/release/meshctl lab status $LAB
  target/release/meshctl lab exec $LAB w1 -- ping -c1 198.18.0.1
  target/release/meshctl lab partition $LAB m1 --from w1 w2 ; target/release/meshctl lab heal $LAB
  target/release/meshctl lab kill $LAB m1 ; target/release/meshctl lab exec $LAB m2 -- meshctl node ls
  target/release/meshctl lab start $LAB m1
  target/release/meshctl lab logs $LAB m1
Remove it with: target/release/meshctl lab down $LAB
MSG
