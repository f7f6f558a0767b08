#!/usr/bin/env bash
# Installs Coffer on a node and registers its runtime handlers (coffer-qemu, coffer-qemu-tdx,
# coffer-qemu-snp) with containerd; --uninstall removes exactly what an install added.
#
# usage: install.sh [--prefix DIR] [--sysconfdir DIR] [--state-dir DIR]
#                   [--containerd-config FILE] [--containerd-version VERSION]
#                   [--bin-dir DIR] [--guest-dir DIR] [--uninstall]
#
#   --prefix DIR              where the shim, the CLI and the guest image go (default /usr/local):
#                               DIR/bin/containerd-shim-coffer-v2, DIR/bin/coffer,
#                               DIR/share/coffer/guest/{vmlinuz,vmlinux,initrd.img,manifest.json}
#   --sysconfdir DIR          where coffer/<handler>.toml go (default /etc for the prefixes
#                               /usr/local and /usr, else PREFIX/etc)
#   --state-dir DIR           the shim's per-sandbox state root written into those configs
#                               (default /run/coffer)
#   --containerd-config FILE  containerd's config (default /etc/containerd/config.toml)
#   --containerd-version V    the containerd version to configure for (default: ask containerd)
#   --bin-dir DIR             where the built binaries are (default, of this checkout: the
#                               node build of packaging/build-node.sh, else target/release,
#                               else target/debug)
#   --guest-dir DIR           the built guest image (default: target/guest of this checkout)
#   --uninstall               undo the install recorded under PREFIX/share/coffer/install/
#
# How the handlers reach containerd, without clobbering any other setting (`coffer
# containerd-config register` edits containerd's config; it parses the TOML and adds text only):
#   containerd 2.x: the drop-in conf.d/coffer.toml beside the containerd config (the tables of
#     packaging/containerd/coffer-v3.toml, or coffer-v2.toml for a version 2 config), listed in
#     the config's top-level `imports`. containerd 2.x merges imports key by key.
#   containerd 1.6/1.7: the handler tables (packaging/containerd/coffer-v2.toml) appended to the
#     config between marker comments, because 1.x replaces whole plugin sections on import and
#     a drop-in would wipe the config's CRI settings.
# Either way the exact bytes added are recorded (PREFIX/share/coffer/install/containerd-config.json),
# and --uninstall (`coffer containerd-config unregister`) takes out those bytes only, so the
# config is afterwards byte for byte what it was (as long as nobody edited our lines).
# Running the install twice changes nothing the second time. containerd must be restarted to
# load the handlers; this script does not restart it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=packaging/lib.sh
. "$here/lib.sh"
repo=$coffer_repo

prefix=/usr/local
sysconfdir=
state_dir=/run/coffer
containerd_config=/etc/containerd/config.toml
containerd_version=
bin_dir=
guest_dir=
uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --sysconfdir) sysconfdir=${2:?--sysconfdir needs a directory}; shift 2 ;;
    --state-dir) state_dir=${2:?--state-dir needs a directory}; shift 2 ;;
    --containerd-config) containerd_config=${2:?--containerd-config needs a file}; shift 2 ;;
    --containerd-version) containerd_version=${2:?--containerd-version needs a version}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --guest-dir) guest_dir=${2:?--guest-dir needs a directory}; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
prefix=$(abspath "$prefix")
containerd_config=$(abspath "$containerd_config")
case "$state_dir" in /*) ;; *) die "--state-dir must be an absolute path" ;; esac
if [ -z "$sysconfdir" ]; then
  case "$prefix" in /usr/local | /usr) sysconfdir=/etc ;; *) sysconfdir=$prefix/etc ;; esac
fi
sysconfdir=$(abspath "$sysconfdir")

record_dir=$prefix/share/coffer/install
manifest=$record_dir/manifest
containerd_record=$record_dir/containerd-config.json

# ---------------------------------------------------------------------------------------------
uninstall() {
  [ -f "$manifest" ] || { note "nothing to uninstall: no $manifest"; return 0; }
  # Work from a copy: the record directory goes away with the rest, and so does the installed
  # coffer, which takes the handlers out of containerd's config.
  local saved kind path cli out
  saved=$(mktemp -d)
  cp -a "$record_dir/." "$saved/"
  cli=$prefix/bin/coffer
  [ -x "$cli" ] || cli=$(find_bin_dir)/coffer
  if [ -x "$cli" ]; then cp "$cli" "$saved/coffer"; fi
  rm -rf "$record_dir"
  # Undo in reverse order of doing: files first, then the directories made for them.
  while IFS=$'\t' read -r kind path; do
    case "$kind" in
      containerd-config)
        if [ ! -x "$saved/coffer" ]; then
          warn "no coffer CLI to take the Coffer handlers out of $path; remove them by hand"
        elif out=$("$saved/coffer" containerd-config unregister --config "$path" \
                     --record "$saved/${containerd_record##*/}"); then
          note "$out"
        else
          warn "the Coffer handlers are still in $path; remove them by hand"
        fi ;;
      created) rm -f "$path" ;;
      replaced) [ -f "$saved/backup$path" ] && cp -p "$saved/backup$path" "$path" ;;
      dir) rmdir "$path" 2>/dev/null || true ;;
      *) warn "$manifest: unknown entry '$kind' for $path (another version of install.sh?); undo it by hand" ;;
    esac
  done < <(tac "$saved/manifest")
  rm -rf "$saved"
  note "uninstalled; restart containerd to unload the handlers"
}

if [ "$uninstall" -eq 1 ]; then
  uninstall
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Install.

if [ -z "$bin_dir" ]; then bin_dir=$(find_bin_dir); fi
[ -n "$bin_dir" ] || die "no built containerd-shim-coffer-v2 and coffer under $repo/target; build them (packaging/build-node.sh) or pass --bin-dir"
for b in containerd-shim-coffer-v2 coffer; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found; build it (packaging/build-node.sh) or pass --bin-dir"
done
guest_dir=${guest_dir:-$repo/target/guest}
have_guest=1
for f in vmlinuz vmlinux initrd.img; do [ -f "$guest_dir/$f" ] || have_guest=0; done
[ "$have_guest" -eq 1 ] || warn "no guest image in $guest_dir" \
  "(packaging/guest/build.sh $guest_dir builds it); pods cannot start until" \
  "$prefix/share/coffer/guest holds one"

if [ -z "$containerd_version" ]; then
  command -v containerd >/dev/null ||
    die "containerd not found; install it or pass --containerd-version"
  containerd_version=$(ask_containerd_version containerd)
fi
containerd_version=${containerd_version#v}
case "${containerd_version%%.*}" in
  '' | *[!0-9]*) die "cannot read a version from containerd ($containerd_version); pass --containerd-version" ;;
esac

# The handlers' registration with containerd, checked before anything is installed: a config
# Coffer cannot edit (version 1, not TOML, a handler of the same name) stops the install here.
register=("$bin_dir/coffer" containerd-config register --config "$containerd_config"
  --record "$containerd_record" --containerd-version "$containerd_version"
  --shim "$prefix/bin/containerd-shim-coffer-v2" --handler-config-dir "$sysconfdir/coffer")
for h in $coffer_handlers; do register+=(--handler "$h"); done
"${register[@]}" --dry-run >/dev/null || exit 1

record() { printf '%s\t%s\n' "$1" "$2" >> "$manifest"; }
recorded() { grep -qxF "$(printf '%s\t%s' "$1" "$2")" "$manifest" 2>/dev/null; }

# mkdir -p that records each directory it creates.
make_dir() {
  local d=$1 missing=()
  while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
  for d in "${missing[@]}"; do
    mkdir "$d"
    recorded dir "$d" || record dir "$d"
  done
}
if [ ! -f "$manifest" ]; then
  new_dirs=()
  d=$record_dir
  while [ ! -d "$d" ]; do new_dirs=("$d" "${new_dirs[@]}"); d=$(dirname "$d"); done
  mkdir -p "$record_dir"
  : > "$manifest"
  for d in "${new_dirs[@]}"; do record dir "$d"; done
fi

# install_file SRC DEST MODE [keep]: copy SRC to DEST; remember whether it was created or
# replaced (then keep a backup to restore). With "keep", a file the operator already has and
# that this script did not put there is left alone.
install_file() {
  local src=$1 dest=$2 mode=$3 keep=${4:-}
  make_dir "$(dirname "$dest")"
  if [ -e "$dest" ]; then
    if cmp -s "$src" "$dest"; then return 0; fi
    if ! recorded created "$dest" && ! recorded replaced "$dest"; then
      if [ "$keep" = keep ]; then
        note "keeping the existing $dest (differs from the packaged one)"
        return 0
      fi
      mkdir -p "$(dirname "$record_dir/backup$dest")"
      cp -p "$dest" "$record_dir/backup$dest"
      record replaced "$dest"
    fi
  else
    record created "$dest"
  fi
  install -m "$mode" "$src" "$dest"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

install_file "$bin_dir/containerd-shim-coffer-v2" "$prefix/bin/containerd-shim-coffer-v2" 0755
install_file "$bin_dir/coffer" "$prefix/bin/coffer" 0755
if [ "$have_guest" -eq 1 ]; then
  for f in vmlinuz vmlinux initrd.img manifest.json; do
    if [ -f "$guest_dir/$f" ]; then install_file "$guest_dir/$f" "$prefix/share/coffer/guest/$f" 0644; fi
  done
fi

# The per-handler Coffer configs, with this install's paths.
for h in $coffer_handlers; do
  handler_config "$h" "$prefix/share/coffer/guest" "$state_dir" > "$work/$h.toml"
  install_file "$work/$h.toml" "$sysconfdir/coffer/$h.toml" 0644 keep
done

# The handler tables in containerd's config (recorded in the manifest first, so that
# --uninstall takes out whatever part of them was written).
recorded containerd-config "$containerd_config" || record containerd-config "$containerd_config"
out=$("${register[@]}") || exit 1
note "$out"

note "installed Coffer under $prefix (configs in $sysconfdir/coffer); restart containerd to load the handlers $coffer_handlers"
