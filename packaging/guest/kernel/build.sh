#!/usr/bin/env bash
# Builds the Coffer guest kernel from Debian's kernel source package and the configuration
# fragment beside this script, and writes OUTDIR/{vmlinux,vmlinuz,config,release}.
#
#   packaging/guest/kernel/build.sh SOURCE_DEB OUTDIR
#
# SOURCE_DEB is a linux-source-6.12 .deb (packaging/guest/build.sh downloads and pins it).
# The patches in patches/ are applied in name order; each says what it changes and why. The
# configuration is `make allnoconfig` plus coffer.config; every line of the fragment must
# survive `make olddefconfig`, or the build stops naming the lines that did not.
#
# The result depends only on the source package, the patches, the fragment, this script and the
# compiler, so it is cached under OUTDIR's parent by a key over those: a second image build (and
# CI once the cache is warm) takes seconds. The build pins what a kernel build would otherwise
# take from the machine (user, host, time, build number); it builds in a directory of a fixed
# name, and with no debug information, so that paths of this machine do not end up in the image.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 SOURCE_DEB OUTDIR" >&2
    exit 2
fi
for tool in dpkg-deb xz patch make gcc flex bison bc; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required to build the guest kernel (see packaging/dev/deps.sh)" >&2; exit 1; }
done
[ -e /usr/include/libelf.h ] || { echo "error: libelf headers are required to build the guest kernel (libelf-dev; see packaging/dev/deps.sh)" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
deb=$1
out=$2
fragment=$here/coffer.config
[ -f "$deb" ] || { echo "error: no kernel source package at $deb" >&2; exit 1; }
shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob

key=$( { sha256sum "$deb" "${patches[@]}" "$fragment" "$0" | cut -d' ' -f1; gcc --version | head -n1; } |
    sha256sum | cut -c1-16)
if [ -f "$out/key" ] && [ "$(cat "$out/key")" = "$key" ] &&
   [ -f "$out/vmlinux" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/release" ]; then
    echo "guest kernel $(cat "$out/release") is cached in $out" >&2
    exit 0
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
# A fixed path, so that the build directory's name cannot differ between two builds.
build=$out.build
rm -rf "$build" "$out"/*
mkdir -p "$build"
trap 'rm -rf "$build"' EXIT

echo "==> unpacking $(basename "$deb")" >&2
dpkg-deb --fsys-tarfile "$deb" | tar -x -O --wildcards './usr/src/linux-source-*.tar.xz' |
    xz -dc | tar -x -C "$build" --strip-components=1

cd "$build"
for p in "${patches[@]}"; do
    echo "==> applying $(basename "$p")" >&2
    patch -s -p1 --no-backup-if-mismatch < "$p" || { echo "error: $p does not apply to $(basename "$deb")" >&2; exit 1; }
done
make -s allnoconfig >&2
scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >/dev/null
make -s olddefconfig >&2
missing=()
while IFS= read -r line; do
    case $line in
        CONFIG_*) grep -qxF -- "$line" .config || missing+=("$line") ;;
        "# CONFIG_"*" is not set")
            name=${line#\# }; name=${name%% *}
            if grep -q "^$name=" .config; then missing+=("$line"); fi ;;
    esac
done < "$fragment"
if [ ${#missing[@]} -gt 0 ]; then
    echo "error: these lines of $fragment do not hold in the kernel's configuration (renamed, or a dependency is unmet):" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi

echo "==> building the guest kernel (a few minutes, once)" >&2
export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC" KBUILD_BUILD_USER=coffer \
    KBUILD_BUILD_HOST=coffer KBUILD_BUILD_VERSION=1 LC_ALL=C TZ=UTC
make -s -j"$(nproc)" bzImage >&2
release=$(make -s kernelrelease)

install -m 0644 vmlinux "$out/vmlinux"
install -m 0644 arch/x86/boot/bzImage "$out/vmlinuz"
install -m 0644 .config "$out/config"
echo "$release" > "$out/release"
echo "$key" > "$out/key"
echo "guest kernel $release built into $out" >&2
