#!/usr/bin/env bash
# Image pull, end to end: `berth pull` (contentd fetching, snapd unpacking
# layers as they arrive, metad recording the image) against containerd's
# `ctr images pull` (fetch, then unpack into its overlayfs snapshotter) of
# the same images from the same local registry, in one run.
#
# usage: bench/pull.sh [RUNS]   (as root; BERTH_BENCH_ROOTFS=FILE reuses a
# minbase tar instead of building one with mmdebstrap)
#
# Every run gets fresh daemons on its own root, and nothing is deleted until
# the end: on ext4 without a journal, creating files right after deleting
# many is much slower (see docs/benchmarks.md), which would charge one tool
# for the cleanup of the one before.
set -euo pipefail

runs=${1:-3}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
cargo build --release --workspace --bins >&2
bin="$top/target/release"

work=$(mktemp -d /var/tmp/berth-pull-bench.XXXXXX)
pids=()
cleanup() {
  set +e
  # Daemons started inside $(...) record their pids in a file.
  if [ -f "$work/pids" ]; then
    while read -r pid; do pids+=("$pid"); done <"$work/pids"
  fi
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # containerd leaves nothing mounted after a pull; berth neither. Any
  # overlay still mounted under $work is a bug worth seeing, but unmount it.
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=lib/minbase-registry.sh
. "$top/bench/lib/minbase-registry.sh"
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"

# shellcheck source=lib/timing.sh
. "$top/bench/lib/timing.sh"

start_daemon() { # name root extra...
  local name=$1 root=$2; shift 2
  # Not on our stdout: $(...) would wait for the daemon to close it.
  "$bin/berth-$name" --root "$root/$name/root" --state "$root/$name/state" \
    --address "$root/$name.sock" --log-level warn "$@" >"$root/$name.log" 2>&1 &
  echo $! >>"$work/pids"
  for _ in $(seq 200); do [ -S "$root/$name.sock" ] && return; sleep 0.02; done
  echo "berth-$name did not start" >&2
  return 1
}

berth_pull() { # tag run
  local root="$work/berth-$1-$2"
  mkdir -p "$root"
  start_daemon contentd "$root"
  start_daemon snapd "$root" --contentd "$root/contentd.sock"
  start_daemon metad "$root" --contentd "$root/contentd.sock" --snapd "$root/snapd.sock"
  seconds "$bin/berth" --contentd "$root/contentd.sock" --snapd "$root/snapd.sock" \
    --metad "$root/metad.sock" pull -q "127.0.0.1:$port/debian:$1"
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
  printf '| %s | %.2f | %.2f | %.2f |\n' "$tag" "$bm" "$cm" "$(echo "$bm / $cm" | bc -l)"
done
printf '\nmedian of %s runs, %s, %s cores, containerd %s, on %s\n' "$runs" "$(uname -r)" "$(nproc)" \
  "$(containerd --version | awk '{print $3}')" "$(findmnt -no FSTYPE -T "$work")"
