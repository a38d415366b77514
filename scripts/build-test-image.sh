#!/usr/bin/env bash
# Builds the registry-free test image `mesh-test:latest` as an OCI image layout tarball, from the
# machine's static busybox (Debian package busybox-static). Both task runtimes use it: the process
# runtime reads it from its image_dir, containerd imports it with
#   ctr -n mesh image import <OUT_DIR>/mesh-test.tar
#
# Usage: bash scripts/build-test-image.sh [OUT_DIR]
#   OUT_DIR defaults to ${MESH_LAB_DIR:-/var/lib/mesh-lab}/images.
#
# The result is deterministic: the same busybox gives the same bytes (hence the same digests), so
# running it again changes nothing. Needs only bash, coreutils, tar, gzip and sha256sum. Prints
# the tarball's path.
set -euo pipefail

out_dir=${1:-${MESH_LAB_DIR:-/var/lib/mesh-lab}/images}
image_name=mesh-test:latest
busybox=/bin/busybox
# Applets the tests and examples rely on; the image links every applet busybox has, and the build
# fails if one of these is missing.
required=(sh httpd nc sleep echo cat ls ps wget hostname ip ifconfig ping env true false kill date
  seq head tail grep printf)

if [ ! -x "$busybox" ] || ! "$busybox" --list >/dev/null 2>&1; then
  echo "build-test-image.sh: $busybox is missing; install busybox-static (bash scripts/setup.sh)" >&2
  exit 1
fi
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac

umask 022
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
layout=$work/layout
mkdir -p "$rootfs"/{bin,etc,www,proc,dev,sys,tmp,root} "$layout/blobs/sha256"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"

# The filesystem: busybox, one symlink per applet, a minimal user database and a web page.
cp "$busybox" "$rootfs/bin/busybox"
chmod 0755 "$rootfs/bin/busybox"
declare -A have=()
while read -r applet; do
  have[$applet]=1
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done < <("$busybox" --list)
for applet in "${required[@]}"; do
  if [ -z "${have[$applet]:-}" ]; then
    echo "build-test-image.sh: $busybox has no applet $applet" >&2
    exit 1
  fi
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
printf '<!doctype html>\n<title>mesh-test</title>\n<p>Hello from a Mesh task.</p>\n' >"$rootfs/www/index.html"

# Same bytes every time: sorted names, epoch times, root ownership, no gzip name or time.
deterministic_tar() {
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu "$@"
}

# blob FILE MEDIA_TYPE: moves FILE into the layout's blobs; sets $digest and $size.
blob() {
  digest=sha256:$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$layout/blobs/sha256/${digest#sha256:}"
}

deterministic_tar -C "$rootfs" -cf "$work/layer.tar" .
diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 "$work/layer.tar"
blob "$work/layer.tar.gz"
layer_digest=$digest layer_size=$size

printf '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/build-test-image.sh"}]}' \
  "$arch" "$diff_id" >"$work/config.json"
blob "$work/config.json"
config_digest=$digest config_size=$size

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
blob "$work/manifest.json"

printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$digest" "$size" "$image_name" "${image_name##*:}" >"$layout/index.json"

mkdir -p "$out_dir"
deterministic_tar -C "$layout" -cf "$work/mesh-test.tar" .
target=$out_dir/mesh-test.tar
sum() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
if [ "$(sum "$work/mesh-test.tar")" != "$(sum "$target")" ]; then
  mv "$work/mesh-test.tar" "$target.tmp"
  mv "$target.tmp" "$target"
fi
echo "$target"
