#!/usr/bin/env bash
# Runs one fuzz target for a while with the project's settings:
#
#   fuzz/run.sh TARGET SECONDS [OUT_CORPUS_DIR] [-- extra libFuzzer flags]
#
# New inputs go to OUT_CORPUS_DIR (default: the committed fuzz/corpus/TARGET); the committed
# corpus and the seeds are read too. A crash, leak, timeout (10 s) or RSS over 2 GiB stops the
# run with a non-zero status and its input under fuzz/artifacts/TARGET/.
# Needs cargo-fuzz (see fuzz/smoke.sh, which installs it). Works on the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo fuzz passes (sanitizer, coverage).
set -euo pipefail
fuzz=$(cd "$(dirname "$0")" && pwd)
target=${1:?target}
secs=${2:?seconds}
out=${3:-$fuzz/corpus/$target}
shift $(( $# >= 3 ? 3 : $# ))
[ "${1:-}" = "--" ] && shift

export RUSTC_BOOTSTRAP=1
# One target dir for every fuzz build, outside the work tree so that it outlives a fresh clone
# (CI clones anew each run; the instrumented build from scratch takes minutes).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/coffer/fuzz-target}

case $target in
  annotation | block_image) max_len=8192 ;;
  *) max_len=4096 ;;
esac
mkdir -p "$out" "$fuzz/corpus/$target" "$fuzz/artifacts/$target"
dirs=("$out")
[ "$out" -ef "$fuzz/corpus/$target" ] || dirs+=("$fuzz/corpus/$target")
[ -d "$fuzz/seeds/$target" ] && dirs+=("$fuzz/seeds/$target")

cd "$fuzz/.."
exec nice -n 19 cargo fuzz run "$target" "${dirs[@]}" -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=$max_len \
  -dict="$fuzz/dict/$target.dict" -print_final_stats=1 "$@"
