#!/usr/bin/env bash
# The test command: installs what the tests need, builds Coffer and its guest image, and runs
# every test (unit, CLI, QEMU, and end to end through a private containerd). The end-to-end
# suite runs in full on the machine's containerd (1.6); containerd 1.7 and 2.x, fetched into
# target/containerd by containerd-versions.sh (never installed), get a lifecycle smoke and the
# install.sh round trip.
#
#   ./packaging/dev/test.sh [extra cargo test args]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

"$root/packaging/dev/deps.sh"

# Without the archive the tests on those versions print SKIP with the reason and pass.
if ! "$root/packaging/dev/containerd-versions.sh"; then
  echo "==> WARNING: containerd 1.7 and 2.x could not be fetched; their tests will be SKIPPED" >&2
fi

export COFFER_GUEST_DIR=${COFFER_GUEST_DIR:-$root/target/guest}
export COFFER_BIN_DIR=${COFFER_BIN_DIR:-$root/target/debug}

if [ -x packaging/guest/build.sh ]; then
  echo "==> building the guest image into $COFFER_GUEST_DIR"
  packaging/guest/build.sh "$COFFER_GUEST_DIR"
fi

echo "==> building Coffer"
cargo build --workspace --bins

# The shim and CLI as a node gets them (static, musl); e2e_node_build.rs runs a pod on them.
echo "==> building the node binaries (packaging/build-node.sh)"
COFFER_NODE_BIN_DIR=$(packaging/build-node.sh | tail -n 1)
export COFFER_NODE_BIN_DIR

# The hostile-guest tests boot this in place of coffer-agent: static, as the guest has no libc.
echo "==> building the hostile guest agent for the hostile-guest tests"
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
  cargo build -p coffer-hostile-guest --target x86_64-unknown-linux-gnu
export COFFER_HOSTILE_GUEST=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/debug/coffer-hostile-guest

echo "==> running the tests"
# --show-output keeps what passing tests printed, so that tests which could not run (they print
# `SKIP: <reason>` and return) are counted and named below instead of passing silently.
log=$root/target/test.log
set +e
cargo test --workspace --no-fail-fast "$@" -- --show-output 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# The decoders that read what others send (annotation, block image, frames) under a short
# fuzzing run from the committed corpus; only for the whole suite, not a single test file.
if [ $# -eq 0 ] && [ -x fuzz/smoke.sh ]; then
  echo "==> fuzz smoke"
  if ! fuzz/smoke.sh 2>&1 | tee -a "$log"; then
    echo "fuzz smoke: FAILED"
    rc=1
  fi
fi

passed=$(grep -Eo 'test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
skips=$(grep -E '^SKIP: ' "$log" | sort | uniq -c | sort -rn || true)
skipped=$(grep -cE '^SKIP: ' "$log" || true)
if [ "$skipped" -gt 0 ]; then
  echo
  echo "==> $skipped test(s) could not run here and were skipped:"
  echo "$skips"
fi
echo
echo "tests: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$rc"
