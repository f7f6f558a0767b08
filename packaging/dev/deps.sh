#!/usr/bin/env bash
# Installs what building and testing Coffer needs on a Debian 12 (bookworm) machine, as root:
# containerd, runc and the CNI plugins, QEMU 10 from bookworm-backports (sev-snp-guest),
# protoc (CRI client), busybox-static and a C toolchain (guest image, pause image), what building
# the guest kernel from Debian's source package needs (patch, make, flex, bison, bc, libelf), a
# registry (docker-registry) with skopeo to load it, for the guest-pull tests, and tmux, the real
# terminal the interactive exec test types into.
# Idempotent: a second run only checks.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: run as root (it installs Debian packages)" >&2
  exit 2
fi

export DEBIAN_FRONTEND=noninteractive
backports=/etc/apt/sources.list.d/coffer-bookworm-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" > "$backports"
fi

want=(containerd runc containernetworking-plugins protobuf-compiler busybox-static
      gcc libc6-dev cpio kmod iproute2 hyperfine ca-certificates xz-utils zstd
      docker-registry skopeo tmux patch make flex bison bc libelf-dev)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null 2>&1 &&
   qemu-system-x86_64 -object help 2>/dev/null | grep -q sev-snp-guest; then
  qemu_ok=1
fi

if [ ${#missing[@]} -gt 0 ] || [ $qemu_ok -eq 0 ]; then
  echo "==> apt-get update"
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $qemu_ok -eq 0 ]; then
  echo "==> installing qemu-system-x86 from bookworm-backports"
  apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    qemu-system-x86 qemu-utils >/dev/null
fi

qemu-system-x86_64 -object help | grep -q sev-snp-guest || {
  echo "deps.sh: installed QEMU has no sev-snp-guest object (need QEMU >= 9.1)" >&2
  exit 1
}
echo "==> dependencies ready: $(containerd --version | awk '{print $1, $3}'), $(qemu-system-x86_64 --version | head -1)"
