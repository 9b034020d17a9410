#!/usr/bin/env bash
# Content ingest throughput: `berth content ingest` of one large file against
# `sha256sum` of the same file (the issue's target: at least 0.8 of its
# throughput), and against containerd's `ctr content ingest` when Debian's
# containerd is installed, all in one run on one machine.
#
# usage: bench/content-ingest.sh [SIZE_MIB] [RUNS]
# Not a test: prints a table of medians and ratios (BENCH_RESULTS=FILE
# appends result rows for bench/all.sh). Run as root (a private containerd
# needs it); everything lives in a temp dir and is removed.
set -euo pipefail

size_mib=${1:-1024}
runs=${2:-3}
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
bench_build
bench_workdir ingest
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"

file="$work/blob"
echo "making a ${size_mib} MiB file of random bytes" >&2
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$file"
digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
sync

# Seconds (wall clock) taken by a command (a function here, so not
# timing.sh's, which keeps stderr in a file).
seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# berth-contentd on its own root.
start_berth contentd "$work/berth"

berth_ingest() {
  "$bin/berth" content ingest "bench-$1" --expected "$digest" <"$file"
  "$bin/berth" content rm "$digest" >/dev/null
}

# A private containerd, if there is one to run.
have_containerd=0
if command -v containerd >/dev/null && command -v ctr >/dev/null; then
  have_containerd=1
  start_containerd "$work/containerd"
fi

ctr_ingest() {
  ctr -a "$work/containerd/c.sock" content ingest --expected-digest "$digest" \
    --expected-size "$((size_mib * 1024 * 1024))" "bench-$1" <"$file"
  ctr -a "$work/containerd/c.sock" content rm "$digest" >/dev/null
}

declare -A times
for run in $(seq "$runs"); do
  times[sha256sum]+="$(seconds sha256sum "$file") "
  times[berth]+="$(seconds berth_ingest "$run") "
  if [ "$have_containerd" = 1 ]; then
    times[containerd]+="$(seconds ctr_ingest "$run") "
  fi
done

med() { tr ' ' '\n' <<<"${times[$1]}" | grep . | median; }
mibps() { echo "$size_mib / $1" | bc -l; }

sha=$(med sha256sum)
berth=$(med berth)
printf '\n| command | median s | MiB/s | throughput vs sha256sum |\n|---|---|---|---|\n'
printf '| sha256sum | %.2f | %.0f | 1.00 |\n' "$sha" "$(mibps "$sha")"
printf '| berth content ingest | %.2f | %.0f | %.2f |\n' "$berth" "$(mibps "$berth")" "$(echo "$sha / $berth" | bc -l)"
bench_result ingest-sha256sum "ingest ${size_mib} MiB" MiB/s "$(printf '%.1f' "$(mibps "$berth")")" \
  "$(printf '%.1f' "$(mibps "$sha")")" higher 0.8 sha256sum
if [ "$have_containerd" = 1 ]; then
  ctrd=$(med containerd)
  printf '| ctr content ingest (containerd %s) | %.2f | %.0f | %.2f |\n' \
    "$(containerd_version)" "$ctrd" "$(mibps "$ctrd")" "$(echo "$sha / $ctrd" | bc -l)"
  printf '\nberth vs containerd throughput: %.2fx\n' "$(echo "$ctrd / $berth" | bc -l)"
  bench_result ingest "ingest ${size_mib} MiB" MiB/s "$(printf '%.1f' "$(mibps "$berth")")" \
    "$(printf '%.1f' "$(mibps "$ctrd")")" higher -
fi
printf '\n%s MiB, median of %s runs, %s, %s cores\n' "$size_mib" "$runs" "$(uname -r)" "$(nproc)"
