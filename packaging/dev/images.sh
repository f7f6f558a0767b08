#!/usr/bin/env bash
# Builds the two container images Coffer's private containerd needs, without any registry:
#   busybox.oci.tar  docker.io/library/busybox:latest  (/bin/busybox of Debian's busybox-static)
#   pause.oci.tar    localhost/coffer/pause:latest     (pause.c, built with gcc -static)
# Each is an OCI image layout tar (one gzip layer; index.json names the image through the
# io.containerd.image.name annotation) that `ctr images import` takes as is. The output is
# reproducible: same inputs, same bytes, same digests.
#
# usage: images.sh OUTDIR
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
out=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

BUSYBOX_IMAGE=${BUSYBOX_IMAGE:-docker.io/library/busybox:latest}
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/coffer/pause:latest}
busybox_bin=${BUSYBOX_BIN:-/bin/busybox}

die() { echo "images.sh: $*" >&2; exit 1; }
command -v gcc >/dev/null || die "gcc not found (apt-get install gcc libc6-dev, or run packaging/dev/deps.sh)"
[ -x "$busybox_bin" ] || die "$busybox_bin not found (apt-get install busybox-static)"
if ldd "$busybox_bin" >/dev/null 2>&1; then
  die "$busybox_bin is dynamically linked; the image needs busybox-static's binary"
fi

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) die "unsupported machine $(uname -m)" ;;
esac

mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/coffer-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Deterministic tar: fixed order, owners and times.
det_tar() { # SRC_DIR OUT_FILE
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "$1" -cf "$2" .
}

# oci_layout ROOTFS IMAGE_NAME CONFIG_JSON_FRAGMENT OUT_TAR
# CONFIG_JSON_FRAGMENT is the image config's "config" object (Env, Entrypoint, Cmd).
oci_layout() {
  local rootfs=$1 name=$2 runconf=$3 dest=$4
  local layout="$work/layout-$(basename "$dest")"
  mkdir -p "$layout/blobs/sha256"

  det_tar "$rootfs" "$work/layer.tar"
  local diff_id; diff_id=$(sha "$work/layer.tar")
  gzip -n -9 -c "$work/layer.tar" > "$work/layer.tar.gz"
  local layer_digest; layer_digest=$(sha "$work/layer.tar.gz")
  local layer_size; layer_size=$(size "$work/layer.tar.gz")
  mv "$work/layer.tar.gz" "$layout/blobs/sha256/$layer_digest"
  rm -f "$work/layer.tar"

  printf '{"architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"packaging/dev/images.sh"}]}' \
    "$arch" "$runconf" "$diff_id" > "$work/config.json"
  local config_digest; config_digest=$(sha "$work/config.json")
  local config_size; config_size=$(size "$work/config.json")
  mv "$work/config.json" "$layout/blobs/sha256/$config_digest"

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
  local manifest_digest; manifest_digest=$(sha "$work/manifest.json")
  local manifest_size; manifest_size=$(size "$work/manifest.json")
  mv "$work/manifest.json" "$layout/blobs/sha256/$manifest_digest"

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$arch" "$name" "${name##*:}" > "$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"

  det_tar "$layout" "$dest.tmp"
  mv "$dest.tmp" "$dest"
  echo "$name sha256:$manifest_digest $dest"
}

# busybox: the binary, one symlink per applet, and the few files tools expect.
bb="$work/busybox-rootfs"
mkdir -p "$bb/bin" "$bb/etc" "$bb/tmp" "$bb/proc" "$bb/sys" "$bb/dev" "$bb/root"
chmod 1777 "$bb/tmp"
cp "$busybox_bin" "$bb/bin/busybox"
chmod 0755 "$bb/bin/busybox"
for applet in $("$bb/bin/busybox" --list); do
  case "$applet" in busybox | */*) continue ;; esac
  ln -s busybox "$bb/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$bb/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$bb/etc/group"
chmod 0644 "$bb/etc/passwd" "$bb/etc/group"
oci_layout "$bb" "$BUSYBOX_IMAGE" \
  '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}' \
  "$out/busybox.oci.tar"

# pause: one static binary.
pr="$work/pause-rootfs"
mkdir -p "$pr"
gcc -static -O2 -Wall -Wextra -o "$pr/pause" "$here/pause.c"
strip "$pr/pause" 2>/dev/null || true
chmod 0755 "$pr/pause"
oci_layout "$pr" "$PAUSE_IMAGE" '{"Entrypoint":["/pause"]}' "$out/pause.oci.tar"
