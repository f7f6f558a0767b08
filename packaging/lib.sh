# shellcheck shell=bash disable=SC2034
# Shell helpers of the packaging scripts (install.sh, demo.sh, dev/up.sh, dev/down.sh).
# Source it from bash; it only defines functions and variables (used by those scripts).
#
# Messages name the script that sourced this file, as "<script>: ...". containerd's
# configuration is never edited here: `coffer containerd-config register|unregister` does that.

# The checkout this file belongs to.
coffer_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The runtime handlers Coffer ships: one Coffer config each, packaging/config/<handler>.toml.
coffer_handlers="coffer-qemu coffer-qemu-tdx coffer-qemu-snp"

# The file that marks a directory as one of dev/up.sh's private containerds.
private_marker=.coffer-private-containerd

die() { echo "${0##*/}: $*" >&2; exit 1; }
note() { echo "${0##*/}: $*"; }
warn() { echo "${0##*/}: warning: $*" >&2; }

# find_bin_dir: the directory of this checkout's built containerd-shim-coffer-v2 and coffer:
# the node build (build-node.sh), else target/release, else target/debug; prints nothing when
# none holds both.
find_bin_dir() {
  local cand t=${CARGO_TARGET_DIR:-$coffer_repo/target}
  for cand in "$t/x86_64-unknown-linux-musl/node" "$t/node" "$t/release" "$t/debug"; do
    if [ -x "$cand/containerd-shim-coffer-v2" ] && [ -x "$cand/coffer" ]; then
      echo "$cand"
      return 0
    fi
  done
}

# handler_config HANDLER GUEST_DIR STATE_DIR: the packaged Coffer config of HANDLER on stdout,
# with its guest image taken from GUEST_DIR and its state_dir set to STATE_DIR.
handler_config() {
  local guest state
  guest=$(sed_escape "$2")
  state=$(sed_escape "$3")
  sed -e "s#/usr/local/share/coffer/guest#$guest#g" \
      -e "s#^state_dir = .*#state_dir = \"$state\"#" \
      "$coffer_repo/packaging/config/$1.toml"
}

# sed_escape TEXT: TEXT for the replacement side of a `s#...#...#` sed command.
sed_escape() { printf '%s' "$1" | sed -e 's/[#&\\]/\\&/g'; }

# ask_containerd_version BINARY: the version containerd reports (e.g. 1.6.20~ds1 or v2.1.4).
ask_containerd_version() { "$1" --version | awk '{print $3}'; }

# is_machine_dir DIR: whether DIR belongs to the machine's own containerd (or is / itself), so
# that dev/up.sh and dev/down.sh must keep away from it.
is_machine_dir() {
  case "$1" in
    / | /run | /run/containerd* | /var/run/containerd* | /var/lib/containerd* | /etc | /etc/containerd*)
      return 0 ;;
  esac
  return 1
}

# private_containerd_pid DIR: the pid of DIR's private containerd when it runs (its pid file
# names a process started with DIR's config; the number may since belong to another process).
private_containerd_pid() {
  local pid
  [ -s "$1/containerd.pid" ] || return 1
  pid=$(cat "$1/containerd.pid")
  tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF -- "--config $1/config.toml" || return 1
  echo "$pid"
}
