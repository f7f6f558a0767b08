#!/usr/bin/env bash
# Builds what is installed on a node: containerd-shim-coffer-v2 and coffer, with the `node`
# profile (Cargo.toml), as static executables for x86_64-unknown-linux-musl. The last line of
# stdout is the directory holding them, for install.sh --bin-dir and dev/up.sh's COFFER_BIN_DIR.
#
# Why static and musl: one shim runs per pod, and most of its resident memory is code. A static
# musl build maps no libc.so or ld.so (1.8 MiB of a glibc shim's resident pages) and no
# relocation table; see docs/benchmarks.md. The musl target comes with the Rust toolchain
# (`rustup target add`, done here); where it cannot be added, the same profile is built against
# the host's glibc, dynamically linked, with a warning.
#
# A static shim resolves the QEMU user (`[vm] user`) from /etc/passwd and /etc/group, as musl
# does: use a local system user, not one from LDAP or another NSS source.
#
#   packaging/build-node.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=packaging/lib.sh
. "$here/lib.sh"
cd "$coffer_repo"

musl=x86_64-unknown-linux-musl
target_dir=${CARGO_TARGET_DIR:-$coffer_repo/target}
target_args=()
out=$target_dir/node
if rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
   rustup target add "$musl" >&2; then
  target_args=(--target "$musl")
  out=$target_dir/$musl/node
else
  warn "the Rust target $musl is not installed and could not be added (rustup target add $musl):" \
    "building against glibc, dynamically linked; each shim keeps ~3 MiB more resident"
fi
cargo build --profile node "${target_args[@]}" -p coffer-shim \
  --bin containerd-shim-coffer-v2 --bin coffer >&2
for b in containerd-shim-coffer-v2 coffer; do
  [ -x "$out/$b" ] || die "the build left no $out/$b"
done
echo "$out"
