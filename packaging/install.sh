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
#   --bin-dir DIR             where the built binaries are (default: target/release, else
#                               target/debug, of this checkout)
#   --guest-dir DIR           the built guest image (default: target/guest of this checkout)
#   --uninstall               undo the install recorded under PREFIX/share/coffer/install/
#
# How the handlers reach containerd, without clobbering any other setting:
#   containerd 2.x: the drop-in conf.d/coffer.toml beside the containerd config (from
#     packaging/containerd/coffer-v3.toml, or coffer-v2.toml for a version 2 config), listed in
#     the config's top-level `imports`. containerd 2.x merges imports key by key.
#   containerd 1.6/1.7: the handler tables (packaging/containerd/coffer-v2.toml) appended to the
#     config between marker comments, because 1.x replaces whole plugin sections on import and
#     a drop-in would wipe the config's CRI settings.
# Either way the exact bytes added are recorded, and --uninstall takes out those bytes only, so
# the config is afterwards byte for byte what it was (as long as nobody edited our lines).
# Running the install twice changes nothing the second time. containerd must be restarted to
# load the handlers; this script does not restart it.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 1; }
note() { echo "install.sh: $*"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

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
handlers="coffer-qemu coffer-qemu-tdx coffer-qemu-snp"
begin_marker="# >>> coffer runtime handlers (added by coffer's install.sh; --uninstall removes them)"
end_marker="# <<< coffer runtime handlers"

# slurp VAR FILE: the whole file into VAR, byte-exact (a plain $(cat FILE) drops trailing
# newlines, and then the restored config would not be byte-equal).
slurp() { local __s; __s=$(cat "$2"; printf x); printf -v "$1" '%s' "${__s%x}"; }

# Writes stdin over FILE atomically, keeping FILE's mode and owner.
replace_file() {
  local file=$1 tmp
  tmp=$(mktemp "$(dirname "$file")/.coffer-install.XXXXXX")
  cat > "$tmp"
  if [ -e "$file" ]; then
    chmod --reference="$file" "$tmp"
    chown --reference="$file" "$tmp" 2>/dev/null || true
  else
    chmod 0644 "$tmp"
  fi
  mv -f "$tmp" "$file"
}

# ---------------------------------------------------------------------------------------------
uninstall() {
  [ -f "$manifest" ] || { note "nothing to uninstall: no $manifest"; return 0; }
  # Work from a copy: the record directory itself goes away with the rest.
  local saved kind path content piece
  saved=$(mktemp -d)
  cp -a "$record_dir/." "$saved/"
  rm -rf "$record_dir"
  # Undo in reverse order of doing: files first, then the directories made for them.
  while IFS=$'\t' read -r kind path; do
    case "$kind" in
      config-inline | config-imports-line | config-imports-entry)
        [ -f "$path" ] || continue
        if [ "$kind" = config-inline ]; then
          slurp piece "$saved/containerd-block.toml"
        else
          slurp piece "$saved/containerd-imports-added"
        fi
        slurp content "$path"
        if [[ "$content" == *"$piece"* ]]; then
          printf '%s' "${content/"$piece"/}" | replace_file "$path"
          note "removed the Coffer handlers from $path"
        else
          echo "install.sh: warning: the Coffer lines in $path were edited since the install;" \
               "remove them by hand" >&2
        fi ;;
      config-created)
        if [ -f "$path" ]; then
          slurp content "$path"
          slurp piece "$saved/containerd-created"
          [ "$content" = "$piece" ] && rm -f "$path"
        fi ;;
      created) rm -f "$path" ;;
      replaced) [ -f "$saved/backup$path" ] && cp -p "$saved/backup$path" "$path" ;;
      dir) rmdir "$path" 2>/dev/null || true ;;
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

[ -z "$bin_dir" ] && for cand in "$repo/target/release" "$repo/target/debug"; do
  if [ -x "$cand/containerd-shim-coffer-v2" ] && [ -x "$cand/coffer" ]; then bin_dir=$cand; break; fi
done
[ -n "$bin_dir" ] || die "no built containerd-shim-coffer-v2 and coffer under $repo/target; build them (cargo build --release -p coffer-shim) or pass --bin-dir"
for b in containerd-shim-coffer-v2 coffer; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found; build it (cargo build --release -p coffer-shim) or pass --bin-dir"
done
guest_dir=${guest_dir:-$repo/target/guest}
have_guest=1
for f in vmlinuz vmlinux initrd.img; do [ -f "$guest_dir/$f" ] || have_guest=0; done
[ "$have_guest" -eq 1 ] || echo "install.sh: warning: no guest image in $guest_dir" \
  "(packaging/guest/build.sh $guest_dir builds it); pods cannot start until" \
  "$prefix/share/coffer/guest holds one" >&2

if [ -z "$containerd_version" ]; then
  command -v containerd >/dev/null ||
    die "containerd not found; install it or pass --containerd-version"
  containerd_version=$(containerd --version | awk '{print $3}')
fi
containerd_version=${containerd_version#v}
containerd_major=${containerd_version%%.*}
case "$containerd_major" in
  '' | *[!0-9]*) die "cannot read a version from containerd ($containerd_version); pass --containerd-version" ;;
esac

config_version=
if [ -f "$containerd_config" ]; then
  config_version=$(awk '/^[[:space:]]*\[/ { exit } /^[[:space:]]*version[[:space:]]*=/ { gsub(/[^0-9]/, "", $0); print; exit }' "$containerd_config")
  if [ -z "$config_version" ]; then
    die "$containerd_config has no 'version = 2' (or 3) line: it is a version 1 config, which Coffer does not edit; migrate it with 'containerd config migrate' first"
  fi
fi

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
for h in $handlers; do
  sed -e "s#/usr/local/share/coffer/guest#$prefix/share/coffer/guest#g" \
      -e "s#^state_dir = .*#state_dir = \"$state_dir\"#" \
      "$repo/packaging/config/$h.toml" > "$work/$h.toml"
  install_file "$work/$h.toml" "$sysconfdir/coffer/$h.toml" 0644 keep
done

# The handler tables, with this install's paths.
with_paths() {
  sed -e "s#/usr/local/bin/containerd-shim-coffer-v2#$prefix/bin/containerd-shim-coffer-v2#g" \
      -e "s#/etc/coffer/#$sysconfdir/coffer/#g" "$1"
}

register_inline() {
  local config=$1 content block
  if [ -f "$config" ] && grep -qF "$begin_marker" "$config"; then
    return 0 # already registered
  fi
  for h in $handlers; do
    if [ -f "$config" ] && grep -qF "containerd.runtimes.$h]" "$config"; then
      die "$config already defines the runtime handler $h; remove it, then run install.sh again"
    fi
  done
  content=""
  [ -f "$config" ] && slurp content "$config"
  block=""
  # Keep the file's last line intact when it lacks a newline.
  if [ -n "$content" ] && [ "${content: -1}" != $'\n' ]; then block=$'\n'; fi
  block+=$'\n'"$begin_marker"$'\n'
  block+=$(with_paths "$repo/packaging/containerd/coffer-v2.toml" | sed -n '/^\[plugins/,$p')
  block+=$'\n'"$end_marker"$'\n'
  printf '%s' "$block" > "$record_dir/containerd-block.toml"
  printf '%s%s' "$content" "$block" | replace_file "$config"
  record config-inline "$config"
  note "added the Coffer handlers to $config"
}

register_dropin() {
  local config=$1 version=$2 dropin content added first_table imports_line
  dropin=$(dirname "$config")/conf.d/coffer.toml
  case "$version" in
    3) with_paths "$repo/packaging/containerd/coffer-v3.toml" > "$work/coffer.toml" ;;
    *) with_paths "$repo/packaging/containerd/coffer-v2.toml" > "$work/coffer.toml" ;;
  esac
  install_file "$work/coffer.toml" "$dropin" 0644
  slurp content "$config"
  # Top-level keys come before the first table header.
  first_table=$(awk '/^[[:space:]]*\[/ { print NR; exit }' "$config")
  imports_line=$(awk -v stop="${first_table:-0}" \
    'stop > 0 && NR >= stop { exit } /^[[:space:]]*imports[[:space:]]*=/ { print NR; exit }' "$config")
  if [ -n "$imports_line" ]; then
    if sed -n "${imports_line},\$p" "$config" | awk '/\]/ { print; exit } { print }' | grep -qF "\"$dropin\""; then
      return 0 # already imported
    fi
    # Insert our entry right after the array's opening bracket (works for one-line and
    # multi-line arrays, and for an empty one: TOML allows the trailing comma).
    local line new
    line=$(sed -n "${imports_line}p" "$config")
    case "$line" in *\[*) ;; *) die "cannot read the imports line of $config: $line" ;; esac
    new="${line/\[/[\"$dropin\", }"
    added="\"$dropin\", "
    printf '%s' "$added" > "$record_dir/containerd-imports-added"
    printf '%s' "${content/"$line"/"$new"}" | replace_file "$config"
    record config-imports-entry "$config"
  else
    local version_line
    version_line=$(awk -v stop="${first_table:-0}" \
      'stop > 0 && NR >= stop { exit } /^[[:space:]]*version[[:space:]]*=/ { print NR; exit }' "$config")
    added="imports = [\"$dropin\"]"$'\n'
    printf '%s' "$added" > "$record_dir/containerd-imports-added"
    if [ -n "$version_line" ]; then
      # After the version line: the recorded bytes are then unique and easy to take out.
      local vline
      vline=$(sed -n "${version_line}p" "$config")
      printf '%s' "${content/"$vline"$'\n'/"$vline"$'\n'"$added"}" | replace_file "$config"
    else
      printf '%s%s' "$added" "$content" | replace_file "$config"
    fi
    record config-imports-line "$config"
  fi
  note "added $dropin to the imports of $config"
}

if [ ! -f "$containerd_config" ]; then
  make_dir "$(dirname "$containerd_config")"
  if [ "$containerd_major" -ge 2 ]; then config_version=3; else config_version=2; fi
  printf 'version = %s\n' "$config_version" > "$record_dir/containerd-created"
  cp "$record_dir/containerd-created" "$containerd_config"
  chmod 0644 "$containerd_config"
  record config-created "$containerd_config"
fi

if [ "$containerd_major" -ge 2 ]; then
  register_dropin "$containerd_config" "$config_version"
else
  [ "$config_version" = 2 ] ||
    die "$containerd_config is a version $config_version config, which containerd $containerd_version cannot read"
  register_inline "$containerd_config"
fi

note "installed Coffer under $prefix (configs in $sysconfdir/coffer); restart containerd to load the handlers $handlers"
