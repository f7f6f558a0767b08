#!/usr/bin/env bash
# Boot timings side by side, interleaved in one run so that the machine's load hits every column
# alike: the coffer-qemu handler's VM, with a pod VM's devices and NIC, launched bare until the
# agent's hello (coffer-boot: the floor), the Init-Data example as a pod through the CRI on a
# private containerd until it is ready (coffer-demo), and the same pod on the runc handler.
#
# Then K pods at once (default 10), kept running: the time until all are ready, each shim's RSS,
# each QEMU's PSS once idle, and the host memory they take together.
#
#   packaging/dev/bench-boot.sh [N] [K]  (as root; needs a built shim, CLI, coffer-boot,
#                                         coffer-demo and guest image)
# env: COFFER_BIN_DIR (coffer-boot, coffer-demo; default target/release, else target/debug),
#      COFFER_NODE_BIN_DIR (the shim and CLI; default the node build of packaging/build-node.sh
#      when there is one, else COFFER_BIN_DIR), COFFER_GUEST_DIR (target/guest)
set -euo pipefail
n=${1:-5}
k=${2:-10}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${COFFER_BIN_DIR:-}
if [ -z "$bin" ]; then
  bin=$repo/target/release
  [ -x "$bin/coffer-boot" ] || bin=$repo/target/debug
fi
node=${COFFER_NODE_BIN_DIR:-$repo/target/x86_64-unknown-linux-musl/node}
[ -x "$node/containerd-shim-coffer-v2" ] || node=$bin
echo "shim and CLI: $node"
guest=${COFFER_GUEST_DIR:-$repo/target/guest}
dir=$(mktemp -d /tmp/coffer-bench.XXXXXX)
trap '"$repo/packaging/dev/down.sh" "$dir" >/dev/null 2>&1 || true' EXIT
# rootfs = host: these figures are about the VM and the pod, not the image (guest pull has its
# own benchmark in tests/tests/e2e_guest_pull.rs).
sock=$(COFFER_ROOTFS=host COFFER_BIN_DIR=$node COFFER_GUEST_DIR=$guest "$repo/packaging/dev/up.sh" "$dir" | tail -n 1)

pvh=$dir/coffer/coffer-qemu.toml
hello() { "$bin/coffer-boot" --config "$1" | sed -n 's/.*hello after \([0-9.]*\) s.*/\1/p'; }
ready() {
  "$bin/coffer-demo" --socket "$sock" --bin-dir "$node" --log-root "$dir/logs" --state-dir "$dir/vm" \
    --handler "$1" --name "bench-$1" --ready-only | sed -n 's/.* is ready after \([0-9.]*\) s/\1/p'
}

echo "run  floor_hello_s  coffer_pod_ready_s  runc_pod_ready_s"
for i in $(seq 1 "$n"); do
  a=$(hello "$pvh")
  b=$(ready coffer-qemu)
  c=$(ready runc)
  printf '%3d  %13s  %18s  %16s\n' "$i" "$a" "$b" "$c"
  echo "$a $b $c" >> "$dir/rows"
done
# Medians of each column, and the pod's ratio to the floor two ways: of the medians, and the
# median of each row's own ratio (a row's pod and floor ran back to back, under the same load).
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
column() { awk -v c="$1" 'NF == 3 && $c + 0 > 0 {print $c}' "$dir/rows"; }
mf=$(column 1 | median); mp=$(column 2 | median); mr=$(column 3 | median)
rr=$(awk 'NF == 3 && $1 + 0 > 0 && $2 + 0 > 0 {print $2 / $1}' "$dir/rows" | median)
printf 'median  %11s  %18s  %16s\n' "$mf" "$mp" "$mr"
printf 'pod ready / floor: %.2f x (of the medians), %.2f x (median of the rows)\n' \
  "$(awk -v p="$mp" -v f="$mf" 'BEGIN {print p / f}')" "$rr"

# Where each Coffer pod's RunPodSandbox went, from the private containerd's log (its own lines
# and the shim's): before the VM (containerd, the CNI plugins, the shim's start and create), the
# boot to the agent's hello, the guest's network set-up after the hello, and the rest.
steps() {
  awk '
    function t(s) { split(s, hms, ":"); return hms[1] * 3600 + hms[2] * 60 + hms[3] }
    function at(line) {
      if (match(line, /T[0-9:.]+Z/)) return t(substr(line, RSTART + 1, RLENGTH - 2))
      return -1
    }
    # The hex id right after the first match of the regex key.
    function id(line, key,    rest) {
      if (!match(line, key)) return ""
      rest = substr(line, RSTART + RLENGTH)
      match(rest, /^[0-9a-f]+/)
      return substr(rest, 1, RLENGTH)
    }
    /msg="RunPodSandbox for .*Name:bench-coffer-qemu,/ && !/returns/ { start = at($0) }
    /launching the sandbox VM/ { s = id($0, "sandbox=\""); began[s] = start; launch[s] = at($0) }
    /guest agent ready/ { hello[id($0, "sandbox=\"")] = at($0) }
    /pod network configured in the guest/ { net[id($0, "sandbox=\"")] = at($0) }
    /RunPodSandbox for .*returns sandbox id/ {
      s = id($0, "returns sandbox id [^0-9a-f]*")
      if (s in net && began[s] > 0)
        printf "%.0f %.0f %.0f %.0f\n", (launch[s] - began[s]) * 1000, (hello[s] - launch[s]) * 1000,
          (net[s] - hello[s]) * 1000, (at($0) - net[s]) * 1000
    }' "$dir/containerd.log"
}
steps > "$dir/steps"
if [ -s "$dir/steps" ]; then
  step() { awk -v c="$1" '{print $c}' "$dir/steps" | median; }
  printf 'coffer pod steps, medians of %d (ms): before the VM %s, boot to hello %s, network after hello %s, the rest %s\n' \
    "$(wc -l < "$dir/steps")" "$(step 1)" "$(step 2)" "$(step 3)" "$(step 4)"
fi

mem_available() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
kib_field() { awk -v f="$2:" '$1 == f {print $2}' "$1" 2>/dev/null; }
before=$(mem_available)
start=$(date +%s.%N)
for i in $(seq 1 "$k"); do
  "$bin/coffer-demo" --socket "$sock" --bin-dir "$node" --log-root "$dir/logs" --state-dir "$dir/vm" \
    --name "bench-$i" --keep > "$dir/pod-$i.out" 2>&1 &
done
wait
end=$(date +%s.%N)
sleep 3   # let the guests idle
ready=$(grep -l 'is ready after' "$dir"/pod-*.out | wc -l)
echo
printf '%d pods at once: %d ready, all within %.1f s\n' "$k" "$ready" "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')"
shims=$(pgrep -f "containerd-shim-coffer-v2 .*-address $sock" || true)
qemus=$(pgrep -f "qemu-system-x86_64 .*$dir/vm/" || true)
rss=0; spss=0; anon=0
for p in $shims; do
  rss=$((rss + $(kib_field "/proc/$p/status" VmRSS)))
  anon=$((anon + $(kib_field "/proc/$p/status" RssAnon)))
  spss=$((spss + $(kib_field "/proc/$p/smaps_rollup" Pss)))
done
pss=0; for p in $qemus; do pss=$((pss + $(kib_field "/proc/$p/smaps_rollup" Pss))); done
ns=$(echo "$shims" | wc -w); nq=$(echo "$qemus" | wc -w)
[ "$ns" -gt 0 ] && printf 'shim per pod: RSS %.1f MiB (of which anonymous %.1f MiB), PSS %.1f MiB (%d shims)\n' \
  "$(awk -v r="$rss" -v n="$ns" 'BEGIN {print r / n / 1024}')" \
  "$(awk -v r="$anon" -v n="$ns" 'BEGIN {print r / n / 1024}')" \
  "$(awk -v r="$spss" -v n="$ns" 'BEGIN {print r / n / 1024}')" "$ns"
[ "$nq" -gt 0 ] && printf 'QEMU PSS per idle pod: %.0f MiB (%d VMs)\n' "$(awk -v r="$pss" -v n="$nq" 'BEGIN {print r / n / 1024}')" "$nq"
printf 'host memory taken by the %d pods: %.0f MiB\n' "$k" "$(awk -v a="$before" -v b="$(mem_available)" 'BEGIN {print (a - b) / 1024}')"
