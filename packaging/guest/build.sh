#!/usr/bin/env bash
# Builds the Coffer guest image from Debian packages:
# OUTDIR/{vmlinuz,vmlinux,initrd.img,manifest.json}.
#
#   packaging/guest/build.sh OUTDIR
#
# - vmlinuz, vmlinux: the guest kernel, as a bzImage (the TEE handlers boot it through their
#   firmware) and as the uncompressed ELF (the plain `coffer-qemu` handler boots it through the
#   PVH entry point with qboot, which skips the BIOS, the real-mode setup and the decompression).
#   By default it is built from Debian's linux-source-6.12 package with kernel/coffer.config:
#   every driver the guest uses built in, no modules (kernel/build.sh; cached). KERNEL_PACKAGE
#   takes a prebuilt Debian kernel instead, with the modules the agent loads.
# - initrd.img (an uncompressed newc cpio): /init = the static coffer-agent, /bin/busybox from busybox-static, /dev/console,
#   and with KERNEL_PACKAGE the kernel modules the guest needs (with their dependencies).
# - manifest.json: sha256 and size of both files, the kernel version and the packages used.
#
# The output is reproducible: two runs give byte-identical files, which matters because on SEV-SNP
# the kernel and initrd hashes are part of the launch measurement. Everything that varies between
# runs is pinned: package versions (the exact version apt resolves, recorded in the manifest),
# file order (sorted), owners (0:0), times (SOURCE_DATE_EPOCH, default 0) and inode numbers.
#
# Environment:
#   KERNEL_SOURCE_PACKAGE
#                        the kernel source package, optionally with "=version" (default
#                        linux-source-6.12 at apt's candidate version).
#   KERNEL_PACKAGE       a prebuilt Debian kernel package instead (e.g. linux-image-amd64's
#                        dependency, or a linux-image-6.12.*-cloud-amd64), optionally with
#                        "=version"; its modules go into the initrd.
#   BUSYBOX_PACKAGE      default busybox-static (same syntax).
#   COFFER_AGENT_BIN     use this static coffer-agent instead of building it.
#   COFFER_GUEST_COMPONENTS
#                        a directory of Confidential Containers guest components to add to
#                        /usr/local/bin, where coffer-agent starts them as kata-agent does:
#                        attestation-agent, confidential-data-hub, api-server-rest (any of
#                        them; static binaries, the image has no libc), and optionally
#                        ocicrypt_config.json for /etc. Nothing else may be in it.
#   COFFER_GUEST_CACHE   where downloaded .debs are kept (default <workspace>/target/guest-cache).
#   SOURCE_DATE_EPOCH    timestamp of every file in the initrd (default 0).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
for tool in apt-get apt-cache dpkg-deb depmod cpio sha256sum; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required (see packaging/dev/deps.sh)" >&2; exit 1; }
done
if [ "$(id -u)" -ne 0 ]; then
    # /dev/console must be a real character device in the archive; mknod needs root.
    echo "error: run as root (the initramfs needs a /dev/console device node)" >&2
    exit 1
fi

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
cache=${COFFER_GUEST_CACHE:-$root/target/guest-cache}
mkdir -p "$cache"
epoch=${SOURCE_DATE_EPOCH:-0}
export LC_ALL=C TZ=UTC
# File modes go into the archive; the caller's umask must not.
umask 022

# Modules the agent loads, by name. Optional ones are skipped when the kernel lacks them (or has
# them built in): configfs/tsm/sev-guest/tdx-guest read TEE reports back; button and evdev let the
# agent see the ACPI power button (QMP system_powerdown) and power off cleanly.
required_modules=(virtio_pci virtio_blk virtio_console 9pnet_virtio 9p virtio_net overlay)
optional_modules=(configfs sev-guest tdx-guest tsm button evdev)

# resolve PACKAGE[=VERSION] -> "name=version", the exact version apt would install.
resolve() {
    local spec=$1 name version
    name=${spec%%=*}
    if [ "$name" != "$spec" ]; then
        version=${spec#*=}
    else
        version=$(apt-cache policy "$name" | awk '/Candidate:/ {print $2}')
    fi
    if [ -z "$version" ] || [ "$version" = "(none)" ]; then
        echo "error: apt knows no installable version of $name; run apt-get update or set the version explicitly" >&2
        exit 1
    fi
    echo "$name=$version"
}

# fetch name=version -> path of the cached .deb
fetch() {
    local pin=$1 name version deb
    name=${pin%%=*}
    version=${pin#*=}
    deb=$(find "$cache" -maxdepth 1 -name "${name}_*.deb" | while read -r f; do
        if [ "$(dpkg-deb -f "$f" Version)" = "$version" ]; then echo "$f"; fi
    done | head -n1)
    if [ -z "$deb" ]; then
        (cd "$cache" && apt-get download "$pin" >&2)
        deb=$(find "$cache" -maxdepth 1 -name "${name}_*.deb" | while read -r f; do
            if [ "$(dpkg-deb -f "$f" Version)" = "$version" ]; then echo "$f"; fi
        done | head -n1)
    fi
    [ -n "$deb" ] || { echo "error: download of $pin left no .deb in $cache" >&2; exit 1; }
    echo "$deb"
}

busybox_pin=$(resolve "${BUSYBOX_PACKAGE:-busybox-static}")
busybox_deb=$(fetch "$busybox_pin")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$busybox_deb" "$work/busybox"

if [ -n "${KERNEL_PACKAGE:-}" ]; then
    # A prebuilt Debian kernel and its modules.
    kernel_pin=$(resolve "$KERNEL_PACKAGE")
    kernel_deb=$(fetch "$kernel_pin")
    dpkg-deb -x "$kernel_deb" "$work/kernel"
    kver=$(ls "$work/kernel/lib/modules")
    if [ "$(echo "$kver" | wc -l)" -ne 1 ]; then
        echo "error: $kernel_pin holds more than one module tree: $kver" >&2
        exit 1
    fi
    kmods=$work/kernel/lib/modules/$kver
    # The .deb carries no modules.dep (the postinst runs depmod); compute it for the extracted tree.
    depmod -b "$work/kernel" "$kver"
else
    # The guest kernel, built from source with everything built in.
    kernel_pin=$(resolve "${KERNEL_SOURCE_PACKAGE:-linux-source-6.12}")
    "$here/kernel/build.sh" "$(fetch "$kernel_pin")" "$cache/kernel"
    kver=$(cat "$cache/kernel/release")
    kmods=
fi

# The agent binary: static, built for size (the workspace's release profile).
if [ -n "${COFFER_AGENT_BIN:-}" ]; then
    agent=$COFFER_AGENT_BIN
else
    target_dir=${CARGO_TARGET_DIR:-$root/target}
    # Paths inside the binary (panic locations) must not depend on where the tree or the cargo
    # home lives, or two checkouts would build different images.
    # No symbol table: it is a fifth of the binary, and the guest has no use for it.
    RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols --remap-path-prefix=$root=/coffer --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
        cargo build --manifest-path "$root/Cargo.toml" --release \
        --target x86_64-unknown-linux-gnu -p coffer-agent --bin coffer-agent \
        --target-dir "$target_dir" >&2
    agent=$target_dir/x86_64-unknown-linux-gnu/release/coffer-agent
fi
if ! file_type=$(od -An -c -N4 "$agent" 2>/dev/null) || [ "$(echo $file_type)" != "177 E L F" ]; then
    echo "error: $agent is not an ELF binary" >&2
    exit 1
fi

# bzImage -> the uncompressed kernel ELF inside it, which QEMU boots through the PVH entry point
# with no decompressor and no real-mode setup. The payload's place is in the boot protocol's
# setup header (setup_sects at 0x1f1, payload_offset/payload_length at 0x248/0x24c); the
# compressor's last 4 bytes are the uncompressed size, not part of the stream.
le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
payload() { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none; }
extract_vmlinux() {
    local bz=$1 elf=$2 sects offset length start
    sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    [ "$sects" -eq 0 ] && sects=4
    offset=$(le32 "$bz" $((0x248)))
    length=$(le32 "$bz" $((0x24c)))
    start=$(( (sects + 1) * 512 + offset ))
    local magic
    magic=$(od -An -tx1 -j "$start" -N4 "$bz" | tr -d ' ')
    case $magic in
        fd377a58) payload "$bz" "$start" $((length - 4)) | xz -dc > "$elf" ;;
        28b52ffd) payload "$bz" "$start" $((length - 4)) | zstd -qdc > "$elf" ;;
        *) echo "error: $bz: kernel payload is neither XZ nor ZSTD (magic $magic)" >&2; exit 1 ;;
    esac
    if [ "$(od -An -c -N4 "$elf" | tr -d ' ')" != "177ELF" ]; then
        echo "error: the payload of $bz is not an ELF kernel" >&2
        exit 1
    fi
}

# module name -> path relative to the module tree, from modules.dep ('-' and '_' are equivalent).
module_path() {
    local want=${1//-/_}
    awk -F: -v want="$want" '{
        n = $1; sub(/.*\//, "", n); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", n); gsub(/-/, "_", n);
        if (n == want) { print $1; exit }
    }' "$kmods/modules.dep"
}
module_deps() {
    awk -F': *' -v m="$1" '$1 == m { print $2 }' "$kmods/modules.dep" | tr ' ' '\n' | sed '/^$/d'
}
# Depth-first: dependencies before the module that needs them, each once.
declare -A seen=()
order=()
visit() {
    local m=$1 d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    for d in $(module_deps "$m"); do visit "$d"; done
    order+=("$m")
}
if [ -n "$kmods" ]; then
    for name in "${required_modules[@]}"; do
        p=$(module_path "$name")
        if [ -z "$p" ]; then
            if grep -q "/${name//-/[-_]}\.ko$" "$kmods/modules.builtin"; then continue; fi
            echo "error: kernel $kver has no module $name (and it is not built in)" >&2
            exit 1
        fi
        visit "$p"
    done
    for name in "${optional_modules[@]}"; do
        p=$(module_path "$name")
        [ -n "$p" ] && visit "$p"
    done
fi

# Stage the initramfs tree.
stage=$work/root
mkdir -p "$stage"/{bin,dev,etc/coffer,proc,sys,run,tmp}
install -m 0755 "$agent" "$stage/init"
install -m 0755 "$work/busybox/bin/busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
mknod -m 0600 "$stage/dev/console" c 5 1
components=()
if [ -n "${COFFER_GUEST_COMPONENTS:-}" ]; then
    [ -d "$COFFER_GUEST_COMPONENTS" ] || { echo "error: COFFER_GUEST_COMPONENTS=$COFFER_GUEST_COMPONENTS is not a directory" >&2; exit 1; }
    for f in "$COFFER_GUEST_COMPONENTS"/*; do
        [ -e "$f" ] || continue
        name=$(basename "$f")
        case $name in
            attestation-agent | confidential-data-hub | api-server-rest)
                mkdir -p "$stage/usr/local/bin"
                install -m 0755 "$f" "$stage/usr/local/bin/$name"
                components+=("usr/local/bin/$name") ;;
            ocicrypt_config.json)
                install -m 0644 "$f" "$stage/etc/ocicrypt_config.json"
                components+=("etc/ocicrypt_config.json") ;;
            *)
                echo "error: $f is not a guest component (attestation-agent, confidential-data-hub, api-server-rest, ocicrypt_config.json)" >&2
                exit 1 ;;
        esac
    done
fi
if [ -n "$kmods" ]; then
    : > "$stage/etc/coffer/modules"
    for m in "${order[@]}"; do
        dest=$stage/lib/modules/$kver/${m%.xz}
        dest=${dest%.zst}
        mkdir -p "$(dirname "$dest")"
        case $m in
            # Decompressed here so the agent needs no decompressor and no kernel support for it.
            *.xz) xz -dc "$kmods/$m" > "$dest" ;;
            *.zst) zstd -qdc "$kmods/$m" > "$dest" ;;
            *) cp "$kmods/$m" "$dest" ;;
        esac
        chmod 0644 "$dest"
        echo "/lib/modules/$kver/${dest#"$stage/lib/modules/$kver/"}" >> "$stage/etc/coffer/modules"
    done
    chmod 0644 "$stage/etc/coffer/modules"
fi
find "$stage" -type d -exec chmod 0755 {} +
chmod 1777 "$stage/tmp"
find "$stage" -exec touch -h -d "@$epoch" {} +

# Pack: sorted names, owner 0:0, renumbered inodes, no device numbers of the host. Not
# compressed: QEMU reads the file, and under TCG the guest took 0.6 s to inflate a gzip'ed one.
(cd "$stage" && find . -mindepth 1 | sed 's|^\./||' | sort |
    cpio --quiet -o -H newc --reproducible -R 0:0) > "$work/initrd.img"
if [ -n "$kmods" ]; then
    cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
    extract_vmlinux "$work/vmlinuz" "$work/vmlinux"
else
    cp "$cache/kernel/vmlinuz" "$work/vmlinuz"
    cp "$cache/kernel/vmlinux" "$work/vmlinux"
fi
touch -d "@$epoch" "$work/vmlinuz" "$work/vmlinux" "$work/initrd.img"
chmod 0644 "$work/vmlinuz" "$work/vmlinux" "$work/initrd.img"
mv -f "$work/vmlinuz" "$work/vmlinux" "$work/initrd.img" "$out/"

sum() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
json_list() { local first=1 x; printf '['; for x in "$@"; do [ $first = 1 ] || printf ', '; first=0; printf '"%s"' "$x"; done; printf ']'; }
mods=()
if [ -n "$kmods" ]; then
    while read -r m; do mods+=("$m"); done < "$stage/etc/coffer/modules"
fi
cat > "$out/manifest.json.tmp" <<JSON
{
  "kernel_version": "$kver",
  "kernel_package": "$kernel_pin",
  "busybox_package": "$busybox_pin",
  "source_date_epoch": $epoch,
  "files": {
    "vmlinuz": { "sha256": "$(sum "$out/vmlinuz")", "size": $(size "$out/vmlinuz") },
    "vmlinux": { "sha256": "$(sum "$out/vmlinux")", "size": $(size "$out/vmlinux") },
    "initrd.img": { "sha256": "$(sum "$out/initrd.img")", "size": $(size "$out/initrd.img") }
  },
  "initrd": {
    "init": { "sha256": "$(sum "$stage/init")" },
    "bin/busybox": { "sha256": "$(sum "$stage/bin/busybox")" },
    "modules": $(json_list "${mods[@]}"),
    "components": {$(first=1; for c in "${components[@]}"; do [ $first = 1 ] || printf ','; first=0; printf '\n      "%s": { "sha256": "%s" }' "$c" "$(sum "$stage/$c")"; done)
    }
  }
}
JSON
mv -f "$out/manifest.json.tmp" "$out/manifest.json"
echo "guest image in $out: kernel $kver, initrd $(size "$out/initrd.img") bytes" >&2
