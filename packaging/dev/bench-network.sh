#!/usr/bin/env bash
# Pod networking, side by side: a private containerd, then coffer-netbench with a runc pod pair
# and a Coffer pod pair (HTTP throughput and request latency, host to pod and pod to pod, all
# on the private CNI bridge).
#
#   packaging/dev/bench-network.sh [coffer-netbench args]   (as root; needs a built shim, CLI,
#                                                            coffer-netbench and guest image)
# env: COFFER_BIN_DIR (default target/release, else target/debug), COFFER_GUEST_DIR (target/guest)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${COFFER_BIN_DIR:-}
if [ -z "$bin" ]; then
  bin=$repo/target/release
  [ -x "$bin/coffer-netbench" ] || bin=$repo/target/debug
fi
guest=${COFFER_GUEST_DIR:-$repo/target/guest}
dir=$(mktemp -d /tmp/coffer-netbench.XXXXXX)
trap '"$repo/packaging/dev/down.sh" "$dir" >/dev/null 2>&1 || true' EXIT
# rootfs = host: these figures are about the VM and the pod, not the image (guest pull has its
# own benchmark in tests/tests/e2e_guest_pull.rs).
sock=$(COFFER_ROOTFS=host COFFER_BIN_DIR=$bin COFFER_GUEST_DIR=$guest "$repo/packaging/dev/up.sh" "$dir" | tail -n 1)
"$bin/coffer-netbench" --socket "$sock" --log-root "$dir/logs" "$@"
