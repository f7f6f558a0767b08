#!/usr/bin/env bash
# Fuzzing smoke test for CI: builds the fuzz targets (cargo-fuzz, AddressSanitizer) and runs
# each for a few seconds from the committed corpus. Exits non-zero on a crash, a panic, an OOM
# (RSS over 2 GiB) or a timeout (one input over 10 s); its input is then in
# fuzz/artifacts/TARGET/. Prints `SKIP: fuzz smoke: ...` and exits 0 where cargo-fuzz or a C++
# compiler (libFuzzer is C++) cannot be had.
#
#   fuzz/smoke.sh                 # every target, 20 s each
#   SMOKE_SECONDS=5 fuzz/smoke.sh annotation frame
#
# cargo-fuzz is installed from crates.io on first use (about 2 min), then found in ~/.cargo/bin.
# The stable toolchain is enough: RUSTC_BOOTSTRAP=1 (set by fuzz/run.sh) lets it take the -Z
# flags cargo fuzz passes. All targets build in one target dir, ~/.cache/coffer/fuzz-target (or
# $CARGO_TARGET_DIR), outside the work tree, so that a fresh clone on the same machine (as CI
# makes) only relinks. New inputs found here go to a temporary directory: the committed corpus
# is left as it is.
set -euo pipefail
fuzz=$(cd "$(dirname "$0")" && pwd)
secs=${SMOKE_SECONDS:-20}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(annotation block_image document frame)
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/coffer/fuzz-target}
export PATH=$HOME/.cargo/bin:$PATH

skip() {
  echo "SKIP: fuzz smoke: $*"
  exit 0
}

command -v c++ >/dev/null 2>&1 || skip "no C++ compiler to build libFuzzer (apt-get install g++)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  if ! nice -n 19 cargo install cargo-fuzz --locked --quiet; then
    skip "cargo-fuzz could not be installed from crates.io"
  fi
fi

start=$SECONDS
echo "==> building the fuzz targets ($(cargo fuzz --version), target dir $CARGO_TARGET_DIR)"
(cd "$fuzz/.." && nice -n 19 cargo fuzz build)
echo "==> built in $((SECONDS - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  echo "==> fuzzing $t for $secs s"
  log=$scratch/$t.log
  if "$fuzz/run.sh" "$t" "$secs" "$scratch/$t" >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | sed 's/^/    /'
    grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | sed 's/^/    /'
  else
    echo "FAIL: fuzz target $t (input under fuzz/artifacts/$t/):"
    grep -E -A30 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|==ERROR' "$log" | head -60 ||
      tail -40 "$log"
    failed+=("$t")
  fi
done
echo "==> fuzz smoke: ${#targets[@]} target(s), ${#failed[@]} failed, $((SECONDS - start)) s"
[ ${#failed[@]} -eq 0 ]
