#!/usr/bin/env bash
# Image pull, end to end: `berth pull` (contentd fetching, snapd unpacking
# layers as they arrive, metad recording the image) against containerd's
# `ctr images pull` (fetch, then unpack into its overlayfs snapshotter) of
# the same images from the same local registry, in one run.
#
# usage: bench/pull.sh [RUNS]   (as root; BERTH_BENCH_ROOTFS=FILE reuses a
# minbase tar instead of building one with mmdebstrap; BENCH_RESULTS=FILE
# appends result rows for bench/all.sh)
#
# Every run gets fresh daemons on its own root, and nothing is deleted until
# the end: on ext4 without a journal, creating files right after deleting
# many is much slower (see docs/benchmarks.md), which would charge one tool
# for the cleanup of the one before. (containerd leaves nothing mounted
# after a pull, berth neither; the cleanup unmounts anything left under the
# work directory all the same.)
set -euo pipefail

runs=${1:-3}
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
bench_build
bench_workdir pull

# shellcheck source=lib/minbase-registry.sh
. "$top/bench/lib/minbase-registry.sh"
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"
# shellcheck source=lib/timing.sh
. "$top/bench/lib/timing.sh"

berth_pull() { # tag run
  local root="$work/berth-$1-$2"
  start_berth contentd snapd metad "$root"
  seconds "$bin/berth" pull -q "127.0.0.1:$port/debian:$1"
}

ctr_pull() { # tag run
  local root="$work/ctrd-$1-$2"
  start_containerd "$root"
  seconds ctr -a "$root/c.sock" images pull --plain-http "127.0.0.1:$port/debian:$1"
}

printf '\n| image | berth pull (s) | ctr images pull (s) | berth/containerd time |\n|---|---|---|---|\n'
for tag in single multi; do
  b="" c=""
  for run in $(seq "$runs"); do
    b+="$(berth_pull "$tag" "$run") "
    c+="$(ctr_pull "$tag" "$run") "
  done
  bm=$(median <<<"$b")
  cm=$(median <<<"$c")
  printf '| %s | %.2f | %.2f | %s |\n' "$tag" "$bm" "$cm" "$(ratio "$bm" "$cm")"
  case $tag in single) what="1 layer" ;; multi) what="4 layers" ;; esac
  bench_result "pull-$tag" "pull, minbase $what" s "$bm" "$cm" lower -
done
printf '\nmedian of %s runs, %s, %s cores, containerd %s, on %s\n' "$runs" "$(uname -r)" "$(nproc)" \
  "$(containerd_version)" "$(findmnt -no FSTYPE -T "$work")"
