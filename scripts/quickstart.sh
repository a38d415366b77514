#!/usr/bin/env bash
# Sets up this machine, builds Mesh and brings up a local cluster: 3 managers and 2 workers, each
# a network namespace running meshd on a lab switch in 198.18.0.0/24, joined into one cluster
# (m1 runs `meshctl swarm init`, the others `meshctl swarm join`), then deploys a demo service
# of the busybox-based test image on the workers. Run as root.
# Re-running replaces the previous quickstart lab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
LAB=${LAB:-quickstart}

cargo build --release --bins --locked
bash scripts/build-test-image.sh
export PATH="$PWD/target/release:$PATH"

if meshctl lab status "$LAB" >/dev/null 2>&1; then
  meshctl lab down "$LAB"
fi
meshctl lab up --name "$LAB" --managers 3 --workers 2 --clients 1
echo
echo "The cluster, as manager m2 sees it:"
meshctl lab exec "$LAB" m2 -- meshctl node ls
# Managers keep Raft's CPU and disk to themselves; the demo runs on the workers.
for m in m1 m2 m3; do meshctl lab exec "$LAB" m1 -- meshctl node update --availability drain "$m" >/dev/null; done
echo
meshctl lab exec "$LAB" m1 -- meshctl info
echo
meshctl lab exec "$LAB" m1 -- meshctl network create --driver overlay demo-net >/dev/null
echo "Deploying the demo service (4 replicas of busybox httpd on overlay network demo-net, spread over the workers):"
meshctl lab exec "$LAB" m1 -- meshctl service create --name demo --replicas 4 --network demo-net \
  --publish published=8080,target=80 mesh-test:latest \
  sh -c 'echo "hello from task $MESH_TASK_SLOT on node $MESH_NODE_ID" > /www/index.html; echo "serving slot $MESH_TASK_SLOT"; exec httpd -f -p 80 -h /www'
for _ in $(seq 1 100); do
  running=$(meshctl lab exec "$LAB" m1 -- meshctl service ls --format json | grep -c '"running": 4' || true)
  [ "$running" = 1 ] && break
  sleep 0.1
done
meshctl lab exec "$LAB" m1 -- meshctl service ls
meshctl lab exec "$LAB" m1 -- meshctl service ps demo
echo
# Agents ship their tasks' output with their next report (twice a second).
for _ in $(seq 1 30); do
  [ "$(meshctl lab exec "$LAB" m1 -- meshctl service logs demo | grep -c 'serving slot')" -ge 4 ] && break
  sleep 0.1
done
meshctl lab exec "$LAB" m1 -- meshctl service logs demo
echo
echo "Tasks on different hosts talk over the VXLAN overlay (each fetches the others' page by overlay IP):"
endpoints=$(meshctl lab exec "$LAB" m1 -- meshctl network inspect demo-net |
  jq -r '.[0].endpoints[] | "\(.task_id) \(.node) \(.ip)"')
first=$(echo "$endpoints" | head -1)
read -r task node _ <<<"$first"
netns="${MESH_LAB_DIR:-/var/lib/mesh-lab}/$LAB/hosts/$node/state/netns/$task"
echo "$endpoints" | while read -r _ other ip; do
  [ "$other" = "$node" ] && continue
  printf '  %s → %s (%s): ' "$node" "$ip" "$other"
  meshctl lab exec "$LAB" "$node" -- nsenter --net="$netns" wget -q -T 3 -O - "http://$ip/" || echo "no answer"
done
echo
echo "Tasks find each other by name: every task's resolver is Mesh's embedded DNS at 127.0.0.11."
echo "  tasks.demo (every healthy task), as task $task on $node sees it:"
meshctl lab exec "$LAB" "$node" -- nsenter --net="$netns" dig @127.0.0.11 +short tasks.demo | sed 's/^/    /'
echo "  demo (the service's virtual IP):"
meshctl lab exec "$LAB" "$node" -- nsenter --net="$netns" dig @127.0.0.11 +short demo | sed 's/^/    /'
echo
echo "The routing mesh: port 8080 answers on every host, tasks or not, from c1 outside the cluster"
echo "(published ports are balanced by BPF at TC on veth; see 'meshctl diag lb'):"
hosts=$(meshctl lab status "$LAB" --format json | jq -r '.[] | select(.role != "client") | "\(.name) \(.address)"')
echo "$hosts" | while read -r host addr; do
  printf '  c1 → %s (%s):8080: ' "$host" "$addr"
  answer=""
  for _ in $(seq 1 50); do
    answer=$(meshctl lab exec "$LAB" c1 -- wget -q -T 2 -O - "http://$addr:8080/" 2>/dev/null) && break
    sleep 0.1
  done
  echo "${answer:-no answer}"
done
echo
meshctl lab exec "$LAB" m1 -- meshctl diag lb | sed -n '1,7p'
cat <<MSG

Lab $LAB is up. Try:
  target/release/meshctl lab status $LAB
  target/release/meshctl lab exec $LAB w1 -- ping -c1 198.18.0.1
  target/release/meshctl lab partition $LAB m1 --from w1 w2 ; target/release/meshctl lab heal $LAB
  target/release/meshctl lab kill $LAB m1 ; target/release/meshctl lab exec $LAB m2 -- meshctl node ls
  target/release/meshctl lab start $LAB m1
  target/release/meshctl lab exec $LAB m1 -- meshctl service scale demo=6
  target/release/meshctl lab kill $LAB w1 ; target/release/meshctl lab exec $LAB m1 -- meshctl service ps demo
  target/release/meshctl lab logs $LAB m1
  target/release/meshctl lab exec $LAB w1 -- meshctl diag ports     # every port between every pair of hosts
  target/release/meshctl lab exec $LAB w1 -- meshctl diag overlay demo-net
  target/release/meshctl lab exec $LAB c1 -- wget -q -O - http://198.18.0.1:8080/   # the mesh, from outside
  target/release/meshctl lab exec $LAB w1 -- meshctl diag lb       # each host's path and drop counters
Remove it with: target/release/meshctl lab down $LAB
MSG
