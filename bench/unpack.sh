#!/usr/bin/env bash
# Layer unpack: `berth unpack` (berth-snapd, overlayfs) against containerd's
# unpack of the same image (`ctr images pull` after `ctr content fetch`, so
# the pull only unpacks) and against `tar -xzf` of the same blob.
#
# Image: the Debian bookworm minbase root filesystem of the fetch benchmark
# (bench/lib/minbase-registry.sh) as one gzip layer (about 60 MB gzip,
# 170 MB tar), served by Debian's docker-registry on 127.0.0.1.
#
# usage: bench/unpack.sh [RUNS]   (as root; needs Debian's mirror once)
#   BERTH_BENCH_DIR=/dev/shm     work (and unpack) there instead of /var/tmp
#   BERTH_BENCH_ROOTFS=FILE.tar  use this root filesystem tar, no mmdebstrap
#   BERTH_BENCH_IMAGES=DIR       keep (reuse) the images there
#   BERTH_BENCH_FS=ext4|ext4-nojournal|xfs
#                                unpack into a fresh loop-mounted filesystem
#                                of that kind (made in the work directory)
#   BERTH_BENCH_RT=1             run the timed processes (daemons included)
#                                under SCHED_FIFO, so that other work on a
#                                shared machine does not take their CPU
#   BENCH_RESULTS=FILE           append result rows for bench/all.sh
#
# Every run unpacks into its own directory and no tree is removed before
# the last run: on ext4 without a journal, inodes freed in the last 60-360
# s are skipped one by one when new ones are allocated (the kernel's
# recently_deleted()), so a tool that runs right after the previous run's
# tree was removed pays for that removal (seconds, for 8,700 files).
set -euo pipefail

runs=${1:-3}
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
bench_build
bench_build -p berth-snapd --example inflate
bench_workdir unpack
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"

# Where the unpacks go: the work directory, or a fresh loop filesystem
# (unmounted by the cleanup, after the snapshot mounts on it).
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
daemon_prefix=("${rt[@]}")

# shellcheck source=lib/minbase-registry.sh
. "$top/bench/lib/minbase-registry.sh"
ref="127.0.0.1:$port/debian:single"
layer=$single_layer
ls=$(stat -c %s "$layer")
files=$(tar -tf "$layer.tar" | wc -l)

# shellcheck source=lib/timing.sh
. "$top/bench/lib/timing.sh"

berth_unpack() { # run
  local root="$runs_dir/berth-$1"
  start_berth_daemon contentd "$root"
  start_berth_daemon snapd "$root" --contentd "$root/contentd.sock"
  "$bin/berth" --contentd "$root/contentd.sock" content fetch -q "$ref" >/dev/null
  sync
  seconds "${rt[@]}" "$bin/berth" --contentd "$root/contentd.sock" --snapd "$root/snapd.sock" unpack "$m1"
  stop_pid "$(cat "$root/snapd.pid")" "$(cat "$root/contentd.pid")"
}

ctr_unpack() { # run
  local root="$runs_dir/ctrd-$1"
  start_containerd "$root" "${rt[@]}"
  ctr -a "$root/c.sock" content fetch --plain-http "$ref" >/dev/null
  sync
  seconds "${rt[@]}" ctr -a "$root/c.sock" images pull --plain-http "$ref"
  stop_pid "$containerd_pid"
  unmount_under "$root"
}

tar_unpack() { # run
  local dir="$runs_dir/tar-$1"
  mkdir -p "$dir"
  sync
  seconds "${rt[@]}" tar -C "$dir" --numeric-owner -xzf "$layer"
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
printf '| minbase (%s MB gzip, %s entries) | %.2f | %.2f | %.2f | %s | %s |\n' \
  "$((ls / 1000000))" "$files" "$bm" "$cm" "$xm" "$(ratio "$bm" "$cm")" "$(ratio "$bm" "$xm")"
bench_result unpack "unpack, minbase 1 layer" s "$bm" "$cm" lower 0.25
bench_result unpack-tar "unpack, minbase 1 layer" s "$bm" "$xm" lower - "tar -xzf"
where="$runs_dir ($(findmnt -n -o FSTYPE,OPTIONS --target "$runs_dir" | head -1 | tr -s ' '))"
printf '\nmedian of %s runs (berth, containerd, tar: %s / %s / %s s) in %s, %s, %s cores, containerd %s%s\n' \
  "$runs" "$b" "$c" "$x" "$where" "$(uname -r)" "$(nproc)" "$(containerd_version)" \
  "${rt:+, SCHED_FIFO}"
"$bin/examples/inflate" "$layer"
printf 'gzip -dc: %ss\n' "$(seconds gzip -dc "$layer")"
