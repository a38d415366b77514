#!/usr/bin/env bash
# Installs everything Mesh needs on a Debian 12 machine, as root. Idempotent: a second run
# installs nothing and takes about a second.
set -euo pipefail

packages=(
  # build: the BPF programs are C compiled by clang; containerd's gRPC API needs protoc
  clang llvm libbpf-dev gcc libc6-dev pkg-config protobuf-compiler
  # kernel plumbing used by meshd, the lab and diagnostics
  iproute2 nftables conntrack iptables ethtool iputils-ping netcat-openbsd tcpdump procps kmod bind9-dnsutils
  # the quickstart reads meshctl's JSON, and fetches pages inside tasks' namespaces
  jq wget util-linux
  # the security and hostile-input tests inspect certificates and speak TLS by hand
  openssl
  # task runtimes and the registry-free test image
  containerd runc busybox-static
  # benchmark baselines and load generators
  iperf3 dnsperf dnsmasq-base etcd-server etcd-client wrk
  # plots in bench reports
  fonts-dejavu-core
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust comes from rustup (Debian 12's rustc is too old for aya and tokio).
if ! command -v cargo >/dev/null 2>&1; then
  for dir in "$HOME/.cargo/bin" /root/.cargo/bin; do
    [ -x "$dir/cargo" ] && export PATH="$dir:$PATH" && break
  done
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: no Rust toolchain; install Rust 1.87 or newer with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component" >/dev/null 2>&1 || echo "setup.sh: warning: rustup cannot add $component" >&2
  fi
done

# The lab kills whole hosts through cgroup v2's cgroup.kill.
if [ ! -e /sys/fs/cgroup/unified/cgroup.kill ] && [ ! -e /sys/fs/cgroup/cgroup.kill ]; then
  echo "setup.sh: warning: no cgroup v2 hierarchy with cgroup.kill (Linux 5.14+) found; the lab needs one" >&2
fi
echo "setup.sh: ready"
