#!/usr/bin/env bash
# Builds the guest image twice and checks that vmlinuz, vmlinux, initrd.img and manifest.json are
# byte-identical. The second build compiles coffer-agent from scratch in its own cargo target
# directory and the guest kernel from source in a download cache and build directory of its own,
# under another umask, a second later. (It takes as long as two kernel builds.)
#
#   packaging/guest/test-reproducible.sh [KEEPDIR]
#
# On SEV-SNP the kernel and initrd hashes are part of the launch measurement, so a build that
# drifts would change every reference value an operator registered.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=${1:-$(mktemp -d)}
mkdir -p "$base"
"$here/build.sh" "$base/a"
# A different wall-clock time and umask must not matter.
sleep 1
(umask 077 && CARGO_TARGET_DIR="$base/target-b" COFFER_GUEST_CACHE="$base/cache-b" \
    "$here/build.sh" "$base/b")
status=0
for f in vmlinuz vmlinux initrd.img manifest.json; do
    if cmp -s "$base/a/$f" "$base/b/$f"; then
        echo "same: $f $(sha256sum "$base/a/$f" | cut -d' ' -f1)"
    else
        echo "DIFFERENT: $f" >&2
        status=1
    fi
done
if [ -z "${1:-}" ]; then rm -rf "$base"; fi
exit $status
