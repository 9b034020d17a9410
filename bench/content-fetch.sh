#!/usr/bin/env bash
# Image fetch: `berth content fetch` against containerd's `ctr content fetch`
# of the same images from the same local registry, in one run.
#
# Images: a Debian bookworm minbase root filesystem built with mmdebstrap,
# as one gzip layer (about 60 MB) and as a multi-layer variant (the same
# files split into four layers by top-level directory), served by Debian's
# docker-registry on 127.0.0.1 and pushed there with skopeo.
#
# usage: bench/content-fetch.sh [RUNS]     (as root; needs network access to
# Debian's package mirror once, to build the root filesystem, unless
# BERTH_BENCH_ROOTFS=FILE names a minbase tar; BENCH_RESULTS=FILE appends
# result rows for bench/all.sh)
set -euo pipefail

runs=${1:-3}
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
bench_build
bench_workdir fetch

# shellcheck source=lib/minbase-registry.sh
. "$top/bench/lib/minbase-registry.sh"
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"
# shellcheck source=lib/timing.sh
. "$top/bench/lib/timing.sh"

berth_fetch() { # tag run
  local root="$work/berth-$1-$2"
  start_berth_daemon contentd "$root"
  seconds "$bin/berth" --contentd "$root/contentd.sock" content fetch -q "127.0.0.1:$port/debian:$1"
  stop_pid "$(cat "$root/contentd.pid")"
  rm -rf "$root"
}

ctr_fetch() { # tag run
  local root="$work/ctrd-$1-$2"
  start_containerd "$root"
  seconds ctr -a "$root/c.sock" content fetch --plain-http "127.0.0.1:$port/debian:$1"
  stop_pid "$containerd_pid"
  rm -rf "$root"
}

printf '\n| image | berth content fetch (s) | ctr content fetch (s) | berth/containerd time |\n|---|---|---|---|\n'
for tag in single multi; do
  b="" c=""
  for run in $(seq "$runs"); do
    b+="$(berth_fetch "$tag" "$run") "
    c+="$(ctr_fetch "$tag" "$run") "
  done
  bm=$(median <<<"$b")
  cm=$(median <<<"$c")
  printf '| %s | %.2f | %.2f | %s |\n' "$tag" "$bm" "$cm" "$(ratio "$bm" "$cm")"
  case $tag in single) what="1 layer" ;; multi) what="4 layers" ;; esac
  bench_result "fetch-$tag" "fetch, minbase $what" s "$bm" "$cm" lower 1
done
printf '\nmedian of %s runs, %s, %s cores, containerd %s\n' "$runs" "$(uname -r)" "$(nproc)" "$(containerd_version)"
