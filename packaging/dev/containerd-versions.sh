#!/usr/bin/env bash
# Fetches the other containerd versions the tests run against, without installing them:
# containerd 1.7 (Debian trixie) and 2.x (Debian sid), each extracted into its own folder:
#   CACHE/1.7/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
#   CACHE/2.x/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
# The machine's own containerd (1.6, the system package) and its apt state stay untouched:
# apt runs with a private configuration under CACHE/apt (its own sources list naming trixie
# and sid on the archive URI of the machine's own Debian entry, its own lists and cache, no
# other source parts, no update hooks), and `dpkg -x` only unpacks the .debs into CACHE.
#
# A version already extracted (its containerd answers --version) is not fetched again, so a
# second run needs no network. When the archive cannot be reached, the reason is written to
# CACHE/<version>.unavailable, which the tests that need that version print as their SKIP
# reason, and this script exits 1.
#
# usage: containerd-versions.sh
# env:   COFFER_CONTAINERD_CACHE  where the versions go (default target/containerd of this
#                                 checkout)
#        COFFER_DEBIAN_ARCHIVE    the Debian archive URI (default: the machine's own entry)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=packaging/lib.sh
. "$here/../lib.sh"

cache=${COFFER_CONTAINERD_CACHE:-$coffer_repo/target/containerd}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# Folder name, Debian suite, and the version prefix `containerd --version` must show.
versions=("1.7 trixie 1.7." "2.x sid 2.")

# extracted NAME PREFIX: whether CACHE/NAME holds a containerd that runs and reports PREFIX*.
extracted() {
  local version
  version=$("$cache/$1/usr/bin/containerd" --version 2>/dev/null | awk '{print $3}') || return 1
  case "${version#v}" in "$2"*) return 0 ;; esac
  return 1
}

todo=()
for v in "${versions[@]}"; do
  read -r name suite prefix <<< "$v"
  if extracted "$name" "$prefix"; then
    rm -f "$cache/$name.unavailable"
  else
    todo+=("$v")
  fi
done
if [ ${#todo[@]} -eq 0 ]; then
  for v in "${versions[@]}"; do
    read -r name _ _ <<< "$v"
    note "containerd $name: $("$cache/$name/usr/bin/containerd" --version | awk '{print $3}') (cached in $cache/$name)"
  done
  exit 0
fi

# Records why VERSION cannot be had, for the tests' SKIP lines, and says so loudly.
unavailable() {
  local reason=$1 v name prefix
  for v in "${todo[@]}"; do
    read -r name _ prefix <<< "$v"
    extracted "$name" "$prefix" && continue
    printf '%s\n' "containerd $name is not available: $reason" > "$cache/$name.unavailable"
  done
  echo "${0##*/}: ERROR: $reason" >&2
  echo "${0##*/}: ERROR: the tests on containerd ${todo[*]%% *} will be SKIPPED" >&2
  exit 1
}

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || unavailable "$tool not found (a Debian machine is needed)"
done

# The archive URI of the machine's own Debian entry (deb822 .sources or one-line .list).
archive_uri() {
  local f found
  if [ -n "${COFFER_DEBIAN_ARCHIVE:-}" ]; then
    echo "$COFFER_DEBIAN_ARCHIVE"
    return 0
  fi
  found=$(for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # The URIs of a stanza whose Suites name a Debian release (not its security archive).
    awk '
      /^[[:space:]]*$/ { if (uri != "" && debian) { print uri; exit } uri = ""; debian = 0; next }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" {
        for (i = 2; i <= NF; i++)
          if ($i ~ /^(bookworm|trixie|forky|sid|stable|testing|unstable)(-updates|-backports)?$/) debian = 1
      }
      END { if (uri != "" && debian) print uri }
    ' "$f"
  done)
  if [ -z "$found" ]; then
    found=$(for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      # deb [options] URI SUITE COMPONENTS...
      sed -e 's/\[[^]]*\]//' "$f" | awk '
        $1 == "deb" && $3 ~ /^(bookworm|trixie|forky|sid|stable|testing|unstable)(-updates|-backports)?$/ { print $2; exit }
      '
    done)
  fi
  [ -n "$found" ] || return 1
  echo "${found%%$'\n'*}"
}
uri=$(archive_uri) ||
  unavailable "no Debian archive entry in /etc/apt/sources.list(.d) to take the archive URI from; set COFFER_DEBIAN_ARCHIVE"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || unavailable "$keyring not found (apt-get install debian-archive-keyring)"

apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
suites=
: > "$apt_dir/sources.list"
for v in "${todo[@]}"; do
  read -r _ suite _ <<< "$v"
  suites="$suites $suite"
  echo "deb [signed-by=$keyring] $uri $suite main" >> "$apt_dir/sources.list"
done
# Read last (after /etc/apt/apt.conf.d, whose proxy and validity settings still apply): no
# hooks of the system's `apt-get update`, no translations, no AppStream metadata.
{
  [ -f /etc/apt/apt.conf ] && echo '#include "/etc/apt/apt.conf";'
  cat <<CONF
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::http::Timeout "30";
Acquire::Retries "2";
CONF
} > "$apt_dir/apt-last.conf"
cat > "$apt_dir/apt.conf" <<CONF
Dir::Etc::main "$apt_dir/apt-last.conf";
Dir::Etc::SourceList "$apt_dir/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "/dev/null";
Dir::State::Lists "$apt_dir/lists";
Dir::Cache "$apt_dir/cache";
APT::Sandbox::User "root";
CONF
papt() { APT_CONFIG=$apt_dir/apt.conf timeout 600 apt-get -q "$@"; }

note "fetching containerd${suites} from $uri (private apt configuration in $apt_dir)"
if ! out=$(papt update 2>&1); then
  printf '%s\n' "$out" | tail -n 5 >&2
  unavailable "apt-get update from $uri failed (is the Debian archive reachable?)"
fi
if printf '%s\n' "$out" | grep -qE '^(W|E): (Failed|Some index)'; then
  printf '%s\n' "$out" | grep -E '^(W|E):' >&2
  unavailable "the Debian package lists (${suites# }) could not be fetched from $uri (is the archive reachable?)"
fi

for v in "${todo[@]}"; do
  read -r name suite prefix <<< "$v"
  debs=$apt_dir/debs/$suite
  rm -rf "$debs"
  mkdir -p "$debs"
  (cd "$debs" && papt download "containerd/$suite" >/dev/null 2>"$debs.err") || {
    cat "$debs.err" >&2
    unavailable "apt-get download containerd/$suite from $uri failed"
  }
  deb=$(find "$debs" -name 'containerd_*.deb' | head -n 1)
  [ -n "$deb" ] || unavailable "apt-get download containerd/$suite left no .deb"
  rm -rf "$cache/$name.tmp"
  dpkg -x "$deb" "$cache/$name.tmp"
  rm -rf "${cache:?}/$name"
  mv "$cache/$name.tmp" "$cache/$name"
  rm -rf "$debs" "$debs.err"
  extracted "$name" "$prefix" ||
    unavailable "containerd from $suite does not run here or is not $name: $("$cache/$name/usr/bin/containerd" --version 2>&1 | head -n 1)"
  rm -f "$cache/$name.unavailable"
  note "containerd $name: $("$cache/$name/usr/bin/containerd" --version | awk '{print $3}') (from $suite, in $cache/$name)"
done
# The package lists are only needed to fetch again, which an extracted version never is.
rm -rf "$apt_dir/lists" "$apt_dir/cache" "$apt_dir/debs"
