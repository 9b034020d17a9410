#!/usr/bin/env bash
# Layer unpack: `berth unpack` (berth-snapd, overlayfs) against containerd's
# unpack of the same image (`ctr images pull` after `ctr content fetch`, so
# the pull only unpacks) and against `tar -xzf` of the same blob.
#
# Image: a Debian bookworm minbase root filesystem built with mmdebstrap as
# one gzip layer (about 60 MB gzip, 170 MB tar), served by Debian's
# docker-registry on 127.0.0.1 (see bench/content-fetch.sh).
#
# usage: bench/unpack.sh [RUNS]   (as root; needs Debian's mirror once)
#   BERTH_BENCH_DIR=/dev/shm     work (and unpack) there instead of /var/tmp
#   BERTH_BENCH_ROOTFS=FILE.tar  use this root filesystem tar, no mmdebstrap
#   BERTH_BENCH_FS=ext4|ext4-nojournal|xfs
#                                unpack into a fresh loop-mounted filesystem
#                                of that kind (made in the work directory)
#   BERTH_BENCH_RT=1             run the timed processes (daemons included)
#                                under SCHED_FIFO, so that other work on a
#                                shared machine does not take their CPU
#
# Every run unpacks into its own directory and no tree is removed before
# the last run: on ext4 without a journal, inodes freed in the last 60-360
# s are skipped one by one when new ones are allocated (the kernel's
# recently_deleted()), so a tool that runs right after the previous run's
# tree was removed pays for that removal (seconds, for 8,700 files).
set -euo pipefail

runs=${1:-3}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
cargo build --release -p berth-snapd -p berth-contentd -p berth >&2
cargo build --release -p berth-snapd --example inflate >&2
bin="${CARGO_TARGET_DIR:-$top/target}/release"

work=$(mktemp -d "${BERTH_BENCH_DIR:-/var/tmp}/berth-unpack-bench.XXXXXX")
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"
pids=()
unmount_under() { # dir: lazily unmounts every mount below it, deepest first
  { grep -o " $1[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
}
cleanup() {
  if [ -f "$work/pids" ]; then
    while read -r pid; do pids+=("$pid"); done <"$work/pids"
  fi
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Snapshot mounts (containerd's) must go before the directories, the
  # loop filesystem (if any) last.
  unmount_under "$work/fs/"
  if mountpoint -q "$work/fs"; then umount "$work/fs"; fi
  unmount_under "$work"
  rm -rf "$work"
}
trap cleanup EXIT

# Where the unpacks go: the work directory, or a fresh loop filesystem.
runs_dir="$work/runs"
case "${BERTH_BENCH_FS:-}" in
  "") mkdir -p "$runs_dir" ;;
  ext4 | ext4-nojournal | xfs)
    truncate -s 8G "$work/fs.img"
    case "$BERTH_BENCH_FS" in
      ext4) mkfs.ext4 -q -F "$work/fs.img" ;;
      ext4-nojournal) mkfs.ext4 -q -F -O ^has_journal "$work/fs.img" ;;
      xfs) mkfs.xfs -q "$work/fs.img" ;;
    esac
    mkdir -p "$work/fs"
    mount -o loop "$work/fs.img" "$work/fs"
    runs_dir="$work/fs"
    ;;
  *) echo "BERTH_BENCH_FS: ext4, ext4-nojournal or xfs" >&2; exit 2 ;;
esac
rt=()
if [ "${BERTH_BENCH_RT:-}" = 1 ]; then rt=(chrt -f 10); fi

if [ -n "${BERTH_BENCH_ROOTFS:-}" ]; then
  cp "$BERTH_BENCH_ROOTFS" "$work/rootfs.tar"
else
  echo "building a Debian minbase root filesystem with mmdebstrap" >&2
  mmdebstrap --quiet --variant=minbase bookworm "$work/rootfs.tar" >&2
fi
layout="$work/layout"
mkdir -p "$layout/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
add_blob() { # file -> prints "digest size"
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1)
  s=$(stat -c %s "$1")
  cp "$1" "$layout/blobs/sha256/$d"
  echo "sha256:$d $s"
}
diff=$(sha256sum "$work/rootfs.tar" | cut -d' ' -f1)
gzip -n -c "$work/rootfs.tar" >"$work/layer.tar.gz"
read -r ld ls < <(add_blob "$work/layer.tar.gz")
echo "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff\"]}}" >"$work/config"
read -r cd cs < <(add_blob "$work/config")
echo "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$cd\",\"size\":$cs},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$ld\",\"size\":$ls}]}" >"$work/manifest"
read -r md ms < <(add_blob "$work/manifest")
echo "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$md\",\"size\":$ms,\"annotations\":{\"org.opencontainers.image.ref.name\":\"minbase\"}}]}" >"$layout/index.json"
files=$(tar -tf "$work/rootfs.tar" | wc -l)
echo "layer: $ls bytes gzip, $(stat -c %s "$work/rootfs.tar") bytes tar, $files entries" >&2

# shellcheck source=lib/registry.sh
. "$top/bench/lib/registry.sh"
start_registry
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:minbase" "docker://127.0.0.1:$port/debian:minbase"
ref="127.0.0.1:$port/debian:minbase"

# shellcheck source=lib/timing.sh
. "$top/bench/lib/timing.sh"

berth_unpack() { # run
  local root="$runs_dir/berth-$1"
  mkdir -p "$root"
  "${rt[@]}" "$bin/berth-contentd" --root "$root/croot" --state "$root/cstate" --address "$root/c.sock" --log-level warn &
  local cpid=$!
  pids+=("$cpid")
  "${rt[@]}" "$bin/berth-snapd" --root "$root/sroot" --state "$root/sstate" --address "$root/s.sock" --contentd "$root/c.sock" --log-level warn &
  local spid=$!
  pids+=("$spid")
  for _ in $(seq 200); do [ -S "$root/c.sock" ] && [ -S "$root/s.sock" ] && break; sleep 0.02; done
  "$bin/berth" --contentd "$root/c.sock" content fetch -q "$ref" >/dev/null
  sync
  local t
  t=$(seconds "${rt[@]}" "$bin/berth" --contentd "$root/c.sock" --snapd "$root/s.sock" unpack "$md")
  kill "$spid" "$cpid"; wait "$spid" "$cpid" 2>/dev/null || true
  echo "$t"
}

ctr_unpack() { # run
  local root="$runs_dir/ctrd-$1"
  start_containerd "$root" "${rt[@]}"
  local pid=$containerd_pid
  ctr -a "$root/c.sock" content fetch --plain-http "$ref" >/dev/null
  sync
  local t
  t=$(seconds "${rt[@]}" ctr -a "$root/c.sock" images pull --plain-http "$ref")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  unmount_under "$root"
  echo "$t"
}

tar_unpack() { # run
  local dir="$runs_dir/tar-$1"
  mkdir -p "$dir"
  sync
  local t
  t=$(seconds "${rt[@]}" tar -C "$dir" --numeric-owner -xzf "$work/layer.tar.gz")
  echo "$t"
}

b="" c="" x=""
for run in $(seq "$runs"); do
  b+="$(berth_unpack "$run") "
  c+="$(ctr_unpack "$run") "
  x+="$(tar_unpack "$run") "
done
bm=$(median <<<"$b")
cm=$(median <<<"$c")
xm=$(median <<<"$x")
printf '\n| layer | berth unpack (s) | containerd pull after fetch (s) | tar -xzf (s) | berth/containerd | berth/tar |\n|---|---|---|---|---|---|\n'
printf '| minbase (%s MB gzip, %s entries) | %.2f | %.2f | %.2f | %.2f | %.2f |\n' \
  "$((ls / 1000000))" "$files" "$bm" "$cm" "$xm" "$(echo "$bm / $cm" | bc -l)" "$(echo "$bm / $xm" | bc -l)"
where="$runs_dir ($(findmnt -n -o FSTYPE,OPTIONS --target "$runs_dir" | head -1 | tr -s ' '))"
printf '\nmedian of %s runs (berth, containerd, tar: %s / %s / %s s) in %s, %s, %s cores, containerd %s%s\n' \
  "$runs" "$b" "$c" "$x" "$where" "$(uname -r)" "$(nproc)" "$(containerd --version | awk '{print $3}')" \
  "${rt:+, SCHED_FIFO}"
"$bin/examples/inflate" "$work/layer.tar.gz"
printf 'gzip -dc: %ss\n' "$(seconds gzip -dc "$work/layer.tar.gz")"
