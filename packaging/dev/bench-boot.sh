#!/usr/bin/env bash
# Boot timings side by side, interleaved in one run so that the machine's load hits every column
# alike: the coffer-qemu handler's VM launched bare until the agent's hello (coffer-boot), the
# same VM on the old boot path (SeaBIOS and the bzImage; the fast-boot kernel parameters stay,
# the plan adds them for TEE none), and the Init-Data example as a pod through the CRI on a
# private containerd until it is ready (coffer-demo).
#
#   packaging/dev/bench-boot.sh [N]      (as root; needs a built shim, CLI, coffer-boot,
#                                         coffer-demo and guest image)
# env: COFFER_BIN_DIR (default target/release, else target/debug), COFFER_GUEST_DIR (target/guest)
set -euo pipefail
n=${1:-5}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${COFFER_BIN_DIR:-}
if [ -z "$bin" ]; then
  bin=$repo/target/release
  [ -x "$bin/coffer-boot" ] || bin=$repo/target/debug
fi
guest=${COFFER_GUEST_DIR:-$repo/target/guest}
dir=$(mktemp -d /tmp/coffer-bench.XXXXXX)
trap '"$repo/packaging/dev/down.sh" "$dir" >/dev/null 2>&1 || true' EXIT
sock=$(COFFER_BIN_DIR=$bin COFFER_GUEST_DIR=$guest "$repo/packaging/dev/up.sh" "$dir" | tail -n 1)

# The handler config up.sh wrote, and the same with the bzImage through SeaBIOS.
pvh=$dir/coffer/coffer-qemu.toml
bios=$dir/coffer/coffer-qemu-bios.toml
sed -e 's#/vmlinux"#/vmlinuz"#' -e '/^firmware = /d' "$pvh" > "$bios"

hello() { "$bin/coffer-boot" --config "$1" | sed -n 's/.*hello after \([0-9.]*\) s/\1/p'; }

echo "run  bios_bzimage_s  pvh_qboot_s  pod_ready_s"
for i in $(seq 1 "$n"); do
  a=$(hello "$bios")
  b=$(hello "$pvh")
  out=$("$bin/coffer-demo" --socket "$sock" --bin-dir "$bin" --log-root "$dir/logs" --state-dir "$dir/vm")
  c=$(echo "$out" | sed -n 's/.* is ready after \([0-9.]*\) s/\1/p')
  printf '%3d  %14s  %11s  %11s\n' "$i" "$a" "$b" "$c"
done
