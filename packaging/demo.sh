#!/usr/bin/env bash
# The Coffer demo: from a fresh Debian 12 machine to a confidential pod, as root.
#
#   ./packaging/demo.sh [--keep] [--handler coffer-qemu|coffer-qemu-tdx|coffer-qemu-snp]
#                       [--initdata FILE]
#
# It installs what it needs (Debian packages, packaging/dev/deps.sh), builds Coffer and its guest
# image, starts a private containerd with the Coffer handlers (packaging/dev/up.sh; the machine's
# own containerd is never touched), runs the Init-Data example as a pod through the CRI — with
# crictl when installed, else the CRI client shipped here — and shows: the pod ready, the digest
# the guest confirmed, the reference values for the key broker, a container's output and an exec.
# Then it cleans up; --keep leaves the pod and containerd running (stop with
# `packaging/dev/down.sh <dir>`, which it prints).
#
# env: COFFER_PROFILE  release (default: the shim and CLI as installed on a node, built by
#                      packaging/build-node.sh) or debug (reuses a test build)
#      COFFER_DEMO_DIR where the private containerd lives (default /tmp/coffer-demo)
set -euo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

keep=0
handler=coffer-qemu
initdata=
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --handler) handler=${2:?--handler needs a value}; shift ;;
    --initdata) initdata=${2:?--initdata needs a value}; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case " $coffer_handlers " in
  *" $handler "*) ;;
  *) echo "demo.sh: unknown handler $handler (one of: $coffer_handlers)" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it installs packages and starts containerd)" >&2; exit 2; }

repo=$coffer_repo
cd "$repo"
profile=${COFFER_PROFILE:-release}
dir=${COFFER_DEMO_DIR:-/tmp/coffer-demo}
[ -n "$initdata" ] || initdata=$repo/initdata/tests/data/seed-initdata.toml
[ -f "$initdata" ] || { echo "demo.sh: no such Init-Data file: $initdata" >&2; exit 2; }

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "1/5 Installing what Coffer needs from Debian (containerd, runc, QEMU 10, protoc, busybox)"
./packaging/dev/deps.sh

step "2/5 Building Coffer ($profile): the shim, the CLI and the demo's CRI client"
log=$repo/target/demo-build.log
mkdir -p "$repo/target"
build_failed() {
  tail -n 30 "$log" >&2
  die "the build failed (full log: $log)"
}
if [ "$profile" = release ]; then
  cargo build --release --bin coffer-demo >"$log" 2>&1 || build_failed
  demo=$repo/target/release/coffer-demo
  bin=$(./packaging/build-node.sh 2>>"$log" | tail -n 1) || build_failed
else
  cargo build --bin containerd-shim-coffer-v2 --bin coffer --bin coffer-demo >"$log" 2>&1 || build_failed
  bin=$repo/target/$profile
  demo=$bin/coffer-demo
fi
grep -E 'Finished|warning: the Rust target' "$log" | sed 's/^ */    /'

step "3/5 Building the guest image (Linux 6.12 built from Debian's source, once, + coffer-agent initramfs) into target/guest"
guest=${COFFER_GUEST_DIR:-$repo/target/guest}
./packaging/guest/build.sh "$guest" | tail -n 3

step "4/5 Starting a private containerd in $dir with the Coffer runtime handlers"
cleanup() { ./packaging/dev/down.sh "$dir" >/dev/null 2>&1 || true; }
if [ $keep -eq 0 ]; then trap cleanup EXIT; fi
sock=$(COFFER_BIN_DIR=$bin COFFER_GUEST_DIR=$guest ./packaging/dev/up.sh "$dir" | tail -n 1)
echo "    containerd: $sock (handlers ${coffer_handlers// /, })"

step "5/5 Running the Init-Data example as a pod"
args=(--socket "$sock" --bin-dir "$bin" --handler "$handler" --initdata "$initdata" --log-root "$dir/logs" --state-dir "$dir/vm"
  --containerd-dir "$dir")
[ $keep -eq 1 ] && args+=(--keep)
"$demo" "${args[@]}"

printf '\nDone in %d s.' $(( $(date +%s) - started ))
if [ $keep -eq 1 ]; then
  printf ' The pod keeps running; stop everything with: %s/packaging/dev/down.sh %s\n' "$repo" "$dir"
else
  printf ' Cleaned up: no VM, no containerd, no state left.\n'
fi
