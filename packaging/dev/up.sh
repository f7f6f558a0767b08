#!/usr/bin/env bash
# Starts a private containerd for trying and testing Coffer, with everything under DIR:
#   DIR/containerd.sock                 its gRPC socket (printed on the last line of stdout)
#   DIR/config.toml                     containerd's config in the native format of the version
#                                       it is for (version 2 for containerd 1.x, version 3 for
#                                       2.x): CRI plugin, CNI, runtime handlers (the coffer-* ones
#                                       added by `coffer containerd-config register`, which records
#                                       them in DIR/containerd-config.json; on 2.x they are in the
#                                       drop-in DIR/conf.d/coffer.toml that config.toml imports)
#   DIR/root, DIR/state                 containerd's root and state
#   DIR/cni/                            CNI config (bridge + host-local IPAM, loopback)
#   DIR/coffer/<handler>.toml           the Coffer config of each handler (from packaging/config)
#   DIR/vm/                             the shim's per-sandbox state (short: sockets live there)
#   DIR/images/                         the local busybox and pause images (packaging/dev/images.sh)
#   DIR/containerd.log, DIR/containerd.pid
# Runtime handlers: runc (the default), coffer-qemu, coffer-qemu-tdx, coffer-qemu-snp.
# It never touches a containerd the machine already runs: no /run/containerd/containerd.sock,
# no /etc/containerd, no /var/lib/containerd. Stop it with down.sh DIR. Running it again on a
# DIR whose containerd is up only prints the socket; on a DIR whose containerd was stopped it
# starts it again with the config.toml already there (which install.sh may have edited).
#
# usage: up.sh DIR
# env:   COFFER_BIN_DIR    directory holding containerd-shim-coffer-v2 and coffer
#                          (default: the node build of packaging/build-node.sh, else
#                          target/release, else target/debug, of this checkout;
#                          without coffer there, only runc is registered)
#        COFFER_GUEST_DIR  guest image directory (vmlinuz, initrd.img; default target/guest)
#        COFFER_ACCEL      override the coffer-qemu handler's accel (auto, kvm or tcg)
#        COFFER_ROOTFS     override the coffer-qemu handler's rootfs (guest or host)
#        COFFER_HANDLERS   "none": register only runc (to try packaging/install.sh on it)
#        COFFER_CONTAINERD containerd binary (default: the one DIR's containerd last ran, else
#                          containerd on PATH), e.g. target/containerd/2.x/usr/bin/containerd
#                          from packaging/dev/containerd-versions.sh. Its own ctr and
#                          containerd-shim-runc-v2, when beside it, are used with it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=packaging/lib.sh
. "$here/../lib.sh"
repo=$coffer_repo

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || die "run as root (containerd and runc need it)"

mkdir -p "$1"
dir=$(cd "$1" && pwd)
if is_machine_dir "$dir"; then
  die "refusing $dir: it belongs to the machine's own containerd; give a private directory"
fi

# down.sh removes DIR wholesale, so only ever take an empty DIR or one this script made.
marker="$dir/$private_marker"
if [ ! -f "$marker" ]; then
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty and was not made by up.sh; give a new or empty DIR"
  : > "$marker"
fi

sock="$dir/containerd.sock"
# A unix socket path must fit in sun_path (108 bytes), including the ".ttrpc" containerd adds.
[ ${#sock} -le 100 ] || die "DIR path too long for a unix socket ($sock); use a shorter DIR"

# Restarting DIR's containerd: the same binary as before, which its config.toml was made for.
last_containerd=
[ -f "$dir/up.env" ] && last_containerd=$(sed -n 's/^CONTAINERD=//p' "$dir/up.env")
containerd_bin=${COFFER_CONTAINERD:-${last_containerd:-$(command -v containerd || true)}}
[ -n "$containerd_bin" ] || die "containerd not found (apt-get install containerd, or run packaging/dev/deps.sh)"
[ -x "$containerd_bin" ] || die "containerd $containerd_bin not found or not executable"
containerd_bin=$(cd "$(dirname "$containerd_bin")" && pwd)/$(basename "$containerd_bin")
containerd_dir=$(dirname "$containerd_bin")
containerd_version=$(ask_containerd_version "$containerd_bin") ||
  die "$containerd_bin --version failed"
containerd_major=${containerd_version#v}
containerd_major=${containerd_major%%.*}
case "$containerd_major" in
  1 | 2) ;;
  *) die "$containerd_bin reports version $containerd_version; up.sh knows containerd 1.x and 2.x" ;;
esac
ctr_bin=$containerd_dir/ctr
[ -x "$ctr_bin" ] || ctr_bin=$(command -v ctr || true)
[ -n "$ctr_bin" ] || die "ctr not found (it comes with Debian's containerd package)"
command -v runc >/dev/null || die "runc not found (apt-get install runc)"
[ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge not found (apt-get install containernetworking-plugins)"

answers() { "$ctr_bin" --address "$sock" version >/dev/null 2>&1; }

pidfile="$dir/containerd.pid"
# Up already: the pid file names this DIR's containerd (not a stranger that got its pid).
if private_containerd_pid "$dir" >/dev/null && answers; then
  echo "$sock"
  exit 0
fi

# A config.toml made before is only for a containerd of the same major version (2.x would
# migrate a version 2 file, and with it turn on plugins that config_v3 keeps off).
if [ -f "$dir/config.toml" ]; then
  format=$(sed -n 's/^version *= *\([0-9]*\).*/\1/p;T;q' "$dir/config.toml")
  [ "$format" = "$(( containerd_major + 1 ))" ] ||
    die "$dir/config.toml is a version ${format:-?} config, not the native format of containerd" \
        "$containerd_version ($containerd_bin); use a new DIR for it"
fi

bin_dir=${COFFER_BIN_DIR:-$(find_bin_dir)}
bin_dir=${bin_dir:-$repo/target/debug}
bin_dir=$(cd "$bin_dir" 2>/dev/null && pwd || echo "$bin_dir")
if [ ! -x "$bin_dir/containerd-shim-coffer-v2" ]; then
  warn "no containerd-shim-coffer-v2 in $bin_dir; the coffer-* handlers will fail" \
       "until it is built (cargo build -p coffer-shim) or COFFER_BIN_DIR names it"
fi
guest_dir=${COFFER_GUEST_DIR:-$repo/target/guest}
guest_dir=$(cd "$guest_dir" 2>/dev/null && pwd || echo "$guest_dir")
if [ ! -f "$guest_dir/vmlinuz" ]; then
  warn "no guest image in $guest_dir (packaging/guest/build.sh $guest_dir builds" \
       "one, or COFFER_GUEST_DIR names it); the coffer-* handlers cannot boot pods without it"
fi
handlers=$coffer_handlers
[ "${COFFER_HANDLERS:-}" = none ] && handlers=
if [ -n "$handlers" ] && [ ! -x "$bin_dir/coffer" ]; then
  warn "no coffer in $bin_dir to register the coffer-* handlers with; starting with runc only" \
       "until it is built (cargo build -p coffer-shim) or COFFER_BIN_DIR names it"
  handlers=
fi

# Per-directory names, so several private containerds can run side by side.
tag=$(printf '%s' "$dir" | sha256sum | cut -c1-8)
bridge="cf$tag"
subnet="10.$(( 200 + 0x${tag:0:2} % 50 )).$(( 0x${tag:2:2} )).0/24"

# Each sandbox's agent socket is <state>/<64-char id>/agent.sock, and a socket path must fit in
# 107 bytes: the state dir can have 31 at most.
coffer_state="$dir/vm"
if [ ${#coffer_state} -gt 31 ]; then
  warn "$coffer_state is longer than 31 bytes, too long for the sandboxes' sockets;" \
       "the coffer-* handlers will refuse pods. Use a shorter DIR (e.g. /tmp/coffer-dev)"
fi

mkdir -p "$dir/root" "$dir/state" "$dir/opt" "$dir/cni/net.d" "$dir/cni/ipam" \
         "$dir/coffer" "$coffer_state" "$dir/images"
chmod 0711 "$dir"
chmod 0700 "$coffer_state"

# Remember what down.sh must undo beyond DIR itself.
cat > "$dir/up.env" <<ENV
SOCK=$sock
BRIDGE=$bridge
SUBNET=$subnet
CONTAINERD=$containerd_bin
CTR=$ctr_bin
ENV

# The Coffer configs: the installed defaults, with the guest image and the state dir moved here.
for h in $coffer_handlers; do
  handler_config "$h" "$guest_dir" "$coffer_state" > "$dir/coffer/$h.toml"
  if [ -n "${COFFER_ACCEL:-}" ] && [ "$h" = coffer-qemu ]; then
    sed -i "s#^accel = .*#accel = \"$(sed_escape "$COFFER_ACCEL")\"#" "$dir/coffer/$h.toml"
  fi
  if [ -n "${COFFER_ROOTFS:-}" ] && [ "$h" = coffer-qemu ]; then
    case "$COFFER_ROOTFS" in
      guest | host) sed -i "s#^rootfs = .*#rootfs = \"$COFFER_ROOTFS\"#" "$dir/coffer/$h.toml" ;;
      *) die "COFFER_ROOTFS must be guest or host, not $COFFER_ROOTFS" ;;
    esac
  fi
done

cat > "$dir/cni/net.d/10-coffer.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "coffer-$tag",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$subnet" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$dir/cni/ipam"
      }
    },
    { "type": "loopback" }
  ]
}
CNI

# config_v2 / config_v3: the config in the native format of containerd 1.x / 2.x. The same
# settings in both; 2.x splits the CRI plugin into a runtime and an images plugin.
config_v2() {
  local cri='plugins."io.containerd.grpc.v1.cri"'
  cat <<CONF
# Private containerd made by packaging/dev/up.sh; remove it with packaging/dev/down.sh.
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"

[$cri]
  sandbox_image = "localhost/coffer/pause:latest"
  # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Pod network namespaces under DIR too, so down.sh finds and removes them.
  netns_mounts_under_state_dir = true

[$cri.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$dir/cni/net.d"

[$cri.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[$cri.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
CONF
}

config_v3() {
  local runtime='plugins."io.containerd.cri.v1.runtime"' images='plugins."io.containerd.cri.v1.images"'
  # containerd 2.0 reads one CNI bin_dir; 2.1 and later a list, bin_dirs.
  local cni_bin='bin_dirs = ["/usr/lib/cni"]'
  case "${containerd_version#v}" in 2.0.*) cni_bin='bin_dir = "/usr/lib/cni"' ;; esac
  cat <<CONF
# Private containerd made by packaging/dev/up.sh; remove it with packaging/dev/down.sh.
version = 3
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  # NRI's socket is machine-wide (/var/run/nri/nri.sock); 2.x enables it by default.
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[$images]
  snapshotter = "overlayfs"

[$images.pinned_images]
  sandbox = "localhost/coffer/pause:latest"

[$runtime]
  # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  # Pod network namespaces under DIR too, so down.sh finds and removes them.
  netns_mounts_under_state_dir = true

[$runtime.cni]
  $cni_bin
  conf_dir = "$dir/cni/net.d"

[$runtime.containerd]
  default_runtime_name = "runc"

[$runtime.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
CONF
}

# An existing config.toml is kept: it was made for this DIR (and install.sh may have edited it).
if [ ! -f "$dir/config.toml" ]; then
  "config_v$(( containerd_major + 1 ))" > "$dir/config.toml.tmp"
  mv "$dir/config.toml.tmp" "$dir/config.toml"
  # The coffer-* handlers as install.sh registers them on a node, with this DIR's paths.
  if [ -n "$handlers" ]; then
    register=("$bin_dir/coffer" containerd-config register --config "$dir/config.toml"
      --record "$dir/containerd-config.json"
      --containerd-version "$containerd_version"
      --shim "$bin_dir/containerd-shim-coffer-v2" --handler-config-dir "$dir/coffer")
    for h in $handlers; do register+=(--handler "$h"); done
    if ! "${register[@]}" >/dev/null; then
      rm -f "$dir/config.toml" # made again, with the handlers, by the next run
      die "registering the coffer-* handlers in $dir/config.toml failed"
    fi
  fi
fi

"$here/images.sh" "$dir/images" >/dev/null

# setsid: containerd outlives this script and whatever process group ran it; down.sh stops it.
# containerd finds the shims on its PATH: Coffer's, then the runc shim of its own version.
PATH="$bin_dir:$containerd_dir:$PATH:/usr/local/sbin:/usr/sbin:/sbin" setsid "$containerd_bin" --config "$dir/config.toml" \
  </dev/null >>"$dir/containerd.log" 2>&1 &
echo $! > "$pidfile"

pid=$(cat "$pidfile")
for _ in $(seq 1 300); do
  answers && break
  if ! kill -0 "$pid" 2>/dev/null; then
    tail -n 20 "$dir/containerd.log" >&2
    die "containerd exited at start; its log: $dir/containerd.log"
  fi
  sleep 0.1
done
answers || die "containerd did not answer on $sock within 30 s; its log: $dir/containerd.log"

for img in pause busybox; do
  "$ctr_bin" --address "$sock" -n k8s.io images import "$dir/images/$img.oci.tar" >/dev/null ||
    die "importing $img image failed"
done
# Pinned, so the CRI never garbage-collects the sandbox image.
"$ctr_bin" --address "$sock" -n k8s.io images label localhost/coffer/pause:latest io.cri-containerd.pinned=pinned >/dev/null

echo "$sock"
