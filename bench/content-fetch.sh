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
# Debian's package mirror once, to build the root filesystem)
set -euo pipefail

runs=${1:-3}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
cargo build --release --workspace --bins >&2
bin="$top/target/release"

work=$(mktemp -d /var/tmp/berth-fetch-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=lib/minbase-registry.sh
. "$top/bench/lib/minbase-registry.sh"
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"

seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

berth_fetch() { # tag run
  local root="$work/berth-$1-$2"
  "$bin/berth-contentd" --root "$root/root" --state "$root/state" --address "$root/c.sock" --log-level warn &
  local pid=$!
  for _ in $(seq 100); do [ -S "$root/c.sock" ] && break; sleep 0.02; done
  local t
  t=$(seconds "$bin/berth" --contentd "$root/c.sock" content fetch -q "127.0.0.1:$port/debian:$1")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$root"
  echo "$t"
}

ctr_fetch() { # tag run
  local root="$work/ctrd-$1-$2"
  start_containerd "$root"
  local pid=$containerd_pid
  local t
  t=$(seconds ctr -a "$root/c.sock" content fetch --plain-http "127.0.0.1:$port/debian:$1")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$root"
  echo "$t"
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
  printf '| %s | %.2f | %.2f | %.2f |\n' "$tag" "$bm" "$cm" "$(echo "$bm / $cm" | bc -l)"
done
printf '\nmedian of %s runs, %s, %s cores, containerd %s\n' "$runs" "$(uname -r)" "$(nproc)" "$(containerd --version | awk '{print $3}')"
