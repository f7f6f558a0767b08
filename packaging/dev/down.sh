#!/usr/bin/env bash
# Stops the private containerd that up.sh started in DIR and removes everything it made: its
# pods' tasks (and so their VMs or runc containers), their network namespaces and the CNI
# bridge, every mount under DIR, leftover shim and QEMU processes that belong to DIR, then DIR.
# Running it on a DIR that is already gone does nothing.
#
# usage: down.sh DIR
set -uo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
[ -d "$1" ] || exit 0
dir=$(cd "$1" && pwd)
if is_machine_dir "$dir"; then die "refusing $dir: not a directory up.sh made"; fi
# An empty DIR (up.sh refused it before making anything) just goes.
if [ -z "$(ls -A "$dir")" ]; then rmdir "$dir"; exit 0; fi
[ -f "$dir/$private_marker" ] ||
  die "$dir was not made by up.sh (no $private_marker in it); leaving it alone"

sock="$dir/containerd.sock"
bridge=
ctr_bin=
if [ -f "$dir/up.env" ]; then
  bridge=$(sed -n 's/^BRIDGE=//p' "$dir/up.env")
  # The ctr of the containerd up.sh started (another version's, for a private 1.7 or 2.x).
  ctr_bin=$(sed -n 's/^CTR=//p' "$dir/up.env")
fi
[ -n "$ctr_bin" ] && [ -x "$ctr_bin" ] || ctr_bin=ctr
netns_list="$dir/.netns-to-remove"
: > "$netns_list" 2>/dev/null || netns_list=/dev/null

pid=$(private_containerd_pid "$dir")
# The pid must still be this DIR's containerd: a pid file can outlive its process, and the
# number can since belong to anything else.
alive() { [ -n "$pid" ] && [ "$(private_containerd_pid "$dir")" = "$pid" ]; }
c() { timeout 60 "$ctr_bin" --address "$sock" "$@"; }

# 1. While containerd runs, end every task through it, so each shim stops its own VM or
#    container and cleans up the way it does for a pod deletion.
if alive && c version >/dev/null 2>&1; then
  for ns in $(c namespaces ls -q 2>/dev/null); do
    for id in $(c -n "$ns" containers ls -q 2>/dev/null); do
      # up.sh keeps pod network namespaces under DIR; a config without
      # netns_mounts_under_state_dir puts them in /var/run/netns, named in the sandbox's spec.
      c -n "$ns" containers info "$id" 2>/dev/null |
        grep -o '/var/run/netns/cni-[0-9a-f-]*' >> "$netns_list" || true
    done
    for id in $(c -n "$ns" tasks ls -q 2>/dev/null); do
      c -n "$ns" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $(c -n "$ns" tasks ls -q 2>/dev/null); do
      c -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(c -n "$ns" containers ls -q 2>/dev/null); do
      c -n "$ns" containers delete "$id" >/dev/null 2>&1 || true
    done
  done
fi

# 2. containerd itself.
if alive; then
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do alive || break; sleep 0.1; done
  alive && kill -KILL "$pid" 2>/dev/null
  for _ in $(seq 1 50); do alive || break; sleep 0.1; done
fi

# 3. Processes that still belong to DIR: shims started for this containerd (their command line
#    names DIR's socket), VMs (their command line names DIR's state) and container processes
#    (their root is a rootfs under DIR). Each is found by pid, never by name.
owned() {
  local p=$1 root
  [ "$p" = "$$" ] && return 1
  [ "$p" = "$PPID" ] && return 1
  if tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline" | grep -qF "$dir/"; then return 0; fi
  root=$(readlink "/proc/$p/root" 2>/dev/null) || return 1
  case "$root" in "$dir"/*) return 0 ;; esac
  return 1
}
leftovers() {
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    owned "$p" && echo "$p"
  done
}
for sig in TERM KILL; do
  pids=$(leftovers)
  [ -z "$pids" ] && break
  # shellcheck disable=SC2086
  kill -"$sig" $pids 2>/dev/null
  for _ in $(seq 1 300); do [ -z "$(leftovers)" ] && break; sleep 0.1; done
done

# 4. runc's records of DIR's containers, and their cgroups: left behind when containerd and the
#    shims died before they could delete the containers.
for state in /run/containerd/runc/*/*/state.json; do
  [ -f "$state" ] || continue
  grep -qF "\"$dir/" "$state" || continue
  cdir=$(dirname "$state")
  runc --root "$(dirname "$cdir")" delete --force "$(basename "$cdir")" >/dev/null 2>&1 || rm -rf "$cdir"
done

# 5. Pod network namespaces and the CNI bridge.
if [ -f "$netns_list" ]; then
  sort -u "$netns_list" | while read -r ns; do
    [ -n "$ns" ] || continue
    umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null
    rm -f "$ns"
  done
fi
# The test registry's namespace (tests/src/registry.rs: cfreg<tag> for bridge cf<tag>); its
# veth pair goes with it. The registry itself was stopped with the other processes above.
if [ -n "$bridge" ] && ip netns list 2>/dev/null | grep -q "^cfreg${bridge#cf}\b"; then
  ip netns del "cfreg${bridge#cf}" 2>/dev/null || true
fi
if [ -n "$bridge" ] && ip link show "$bridge" >/dev/null 2>&1; then
  ip link del "$bridge" 2>/dev/null || true
fi

# 6. Mounts under DIR, deepest first (rootfs overlays, shm, the shim's own mounts).
mounts_under() {
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
for _ in 1 2 3; do
  m=$(mounts_under)
  [ -z "$m" ] && break
  while read -r mp; do
    mp=$(printf '%b' "${mp//\\/\\0}")
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
  done <<< "$m"
done
if [ -n "$(mounts_under)" ]; then
  echo "down.sh: still mounted under $dir:" >&2
  mounts_under >&2
  exit 1
fi

rm -rf "$dir"
