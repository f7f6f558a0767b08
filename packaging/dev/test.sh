#!/usr/bin/env bash
# The test command: installs what the tests need, builds Coffer and its guest image, and runs
# every test (unit, CLI, QEMU, and end to end through a private containerd).
#
#   ./packaging/dev/test.sh [extra cargo test args]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

"$root/packaging/dev/deps.sh"

export COFFER_GUEST_DIR=${COFFER_GUEST_DIR:-$root/target/guest}
export COFFER_BIN_DIR=${COFFER_BIN_DIR:-$root/target/debug}

if [ -x packaging/guest/build.sh ]; then
  echo "==> building the guest image into $COFFER_GUEST_DIR"
  packaging/guest/build.sh "$COFFER_GUEST_DIR"
fi

echo "==> building Coffer"
cargo build --workspace --bins

echo "==> running the tests"
cargo test --workspace --no-fail-fast "$@"
