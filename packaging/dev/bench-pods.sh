#!/usr/bin/env bash
# Whole-pod timings: starts a private containerd once, then runs the Init-Data example as a pod
# N times through the CRI (coffer-demo: RunPodSandbox, a container, an exec, stop, remove) and
# prints how long RunPodSandbox took to a ready pod (a VM booted, its agent's hello checked)
# and the whole lifecycle, per run.
#
#   packaging/dev/bench-pods.sh [N]      (as root; needs a built shim, CLI, coffer-demo, guest image)
# env: COFFER_BIN_DIR (default target/release, else target/debug), COFFER_GUEST_DIR (target/guest)
set -euo pipefail
n=${1:-5}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${COFFER_BIN_DIR:-}
if [ -z "$bin" ]; then
  bin=$repo/target/release
  [ -x "$bin/coffer-demo" ] || bin=$repo/target/debug
fi
guest=${COFFER_GUEST_DIR:-$repo/target/guest}
dir=$(mktemp -d /tmp/coffer-bench.XXXXXX)
trap '"$repo/packaging/dev/down.sh" "$dir" >/dev/null 2>&1 || true' EXIT
# rootfs = host: these figures are about the VM and the pod, not the image (guest pull has its
# own benchmark in tests/tests/e2e_guest_pull.rs).
sock=$(COFFER_ROOTFS=host COFFER_BIN_DIR=$bin COFFER_GUEST_DIR=$guest "$repo/packaging/dev/up.sh" "$dir" | tail -n 1)

echo "run  ready_s  lifecycle_s"
for i in $(seq 1 "$n"); do
  start=$(date +%s.%N)
  out=$("$bin/coffer-demo" --socket "$sock" --bin-dir "$bin" --log-root "$dir/logs" --state-dir "$dir/vm")
  end=$(date +%s.%N)
  ready=$(echo "$out" | sed -n 's/.* is ready after \([0-9.]*\) s/\1/p')
  printf '%3d  %7s  %11.1f\n' "$i" "$ready" "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')"
done
