#!/usr/bin/env bash
# The data path against the machine's limits and containerd, each
# measurement on a fresh filesystem of its own (ext4 with its journal on a
# loop device, and tmpfs), so that no tool pays for another's writes or
# deletes:
#
#   pull    `berth pull` of a three-layer Debian + python image (about
#           96 MB compressed; bench/lib/python-image.sh) against
#           containerd's `ctr images pull` (target: <= 0.15 of its time)
#   unpack  `berth unpack` of one big layer (the Debian minbase root, about
#           60 MB gzip, 170 MB tar), already fetched, against `tar -x` of
#           the already inflated tar (target: <= 1.2 of its time)
#   ingest  `berth content ingest` of a 256 MiB file against
#           `openssl dgst -sha256` of the same file (target: >= 0.7 of its
#           rate), and against `dd conv=fdatasync` of it into the same
#           kind of filesystem (what writing and syncing the bytes costs)
#   fetch   `berth content fetch` of the python image against `ctr content
#           fetch` (target: <= 0.2 of its time)
#
# usage: bench/data-path.sh [RUNS]   (as root; needs Debian's mirror for the
#   images once)
#   BERTH_BENCH_FS_KINDS="ext4 tmpfs"   the filesystems measured
#   BERTH_BENCH_ONLY="pull unpack ingest fetch"   the measurements
#   INGEST_MIB=256
#   BERTH_BENCH_BEFORE=DIR             berth's binaries of another build (its
#                                      release/ directory): each berth run is
#                                      paired with one of those, and the table
#                                      gets their medians and the ratio
#   BERTH_BENCH_IMAGES=DIR, BERTH_BENCH_ROOTFS=FILE   see the image libs
#   BENCH_RESULTS=FILE                 result rows for bench/all.sh
set -euo pipefail

runs=${1:-3}
kinds=${BERTH_BENCH_FS_KINDS:-ext4 tmpfs}
only=${BERTH_BENCH_ONLY:-pull unpack ingest fetch}
ingest_mib=${INGEST_MIB:-256}
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
bench_build
# Not under BERTH_BENCH_DIR (bench/all.sh points it at a loop filesystem of
# its own): each measurement makes its own filesystem.
bench_workdir data-path /var/tmp
# shellcheck source=lib/fresh-fs.sh
. "$top/bench/lib/fresh-fs.sh"
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"
# shellcheck source=lib/timing.sh
. "$top/bench/lib/timing.sh"

wants() { [[ " $only " == *" $1 "* ]]; }
# The images (built once, then served): not for an ingest alone.
if wants pull || wants unpack || wants fetch; then
  # shellcheck source=lib/minbase-registry.sh
  . "$top/bench/lib/minbase-registry.sh"
  # shellcheck source=lib/python-image.sh
  . "$top/bench/lib/python-image.sh"
fi
before_bin=${BERTH_BENCH_BEFORE:-}

# Each function below runs in a $(...) of its own: it makes its
# filesystem, starts its daemons there, prints the seconds of the timed
# command, and stops and drops everything again.
stop_berth() { # root names...
  local root=$1 name p=(); shift
  for name in "$@"; do p+=("$(cat "$root/$name.pid")"); done
  stop_pid "${p[@]}"
}

berth_pull() { # kind run
  local root s
  root=$(fresh_fs "$1" "berth-pull-$2")
  start_berth contentd snapd metad "$root"
  s=$(seconds "$bin/berth" pull -q "$python_ref")
  stop_berth "$root" metad snapd contentd
  drop_fs "berth-pull-$2"
  echo "$s"
}

ctr_pull() { # kind run
  local root s
  root=$(fresh_fs "$1" "ctrd-pull-$2")
  start_containerd "$root"
  s=$(seconds ctr -a "$root/c.sock" images pull --plain-http "$python_ref")
  stop_pid "$containerd_pid"
  drop_fs "ctrd-pull-$2"
  echo "$s"
}

berth_unpack() { # kind run
  local root s
  root=$(fresh_fs "$1" "berth-unpack-$2")
  start_berth_daemon contentd "$root"
  start_berth_daemon snapd "$root" --contentd "$root/contentd.sock"
  "$bin/berth" --contentd "$root/contentd.sock" content fetch -q "127.0.0.1:$port/debian:single" >/dev/null
  sync
  s=$(seconds "$bin/berth" --contentd "$root/contentd.sock" --snapd "$root/snapd.sock" unpack "$m1")
  stop_berth "$root" snapd contentd
  drop_fs "berth-unpack-$2"
  echo "$s"
}

tar_unpack() { # kind run
  local root s
  root=$(fresh_fs "$1" "tar-unpack-$2")
  mkdir "$root/tree"
  sync
  s=$(seconds tar -C "$root/tree" --numeric-owner -xf "$single_layer.tar")
  drop_fs "tar-unpack-$2"
  echo "$s"
}

ingest_file="$work/ingest.blob"
if wants ingest; then
  head -c "$((ingest_mib * 1024 * 1024))" /dev/urandom >"$ingest_file"
  ingest_digest="sha256:$(sha256sum "$ingest_file" | cut -d' ' -f1)"
fi

berth_ingest() { # kind run
  local root s
  root=$(fresh_fs "$1" "berth-ingest-$2")
  start_berth_daemon contentd "$root"
  s=$(seconds "$bin/berth" --contentd "$root/contentd.sock" content ingest "bench-$2" \
    --expected "$ingest_digest" <"$ingest_file")
  stop_berth "$root" contentd
  drop_fs "berth-ingest-$2"
  echo "$s"
}

openssl_hash() { # kind run
  seconds openssl dgst -sha256 "$ingest_file"
}

# What the filesystem allows: the same bytes written and synced, nothing
# hashed or checked (an ingest's data must reach the disk before it is
# acknowledged).
dd_write() { # kind run
  local root s
  root=$(fresh_fs "$1" "dd-$2")
  s=$(seconds dd if="$ingest_file" of="$root/blob" bs=1M conv=fdatasync status=none)
  drop_fs "dd-$2"
  echo "$s"
}

berth_fetch() { # kind run
  local root s
  root=$(fresh_fs "$1" "berth-fetch-$2")
  start_berth_daemon contentd "$root"
  s=$(seconds "$bin/berth" --contentd "$root/contentd.sock" content fetch -q "$python_ref")
  stop_berth "$root" contentd
  drop_fs "berth-fetch-$2"
  echo "$s"
}

ctr_fetch() { # kind run
  local root s
  root=$(fresh_fs "$1" "ctrd-fetch-$2")
  start_containerd "$root"
  s=$(seconds ctr -a "$root/c.sock" content fetch --plain-http "$python_ref")
  stop_pid "$containerd_pid"
  drop_fs "ctrd-fetch-$2"
  echo "$s"
}

# measure ID KIND LABEL BERTH_FN PEER_FN PEER_NAME BETTER TARGET [RATE_MIB]
# Runs both functions RUNS times in turn and prints a row; with RATE_MIB
# the row (and the result) is in MiB/s rather than seconds.
measure() {
  local id=$1 kind=$2 label=$3 berth_fn=$4 peer_fn=$5 peer_name=$6 better=$7 target=$8 rate=${9:-}
  local b="" p="" o="" run bm pm om current=$bin
  for run in $(seq "$runs"); do
    b+="$("$berth_fn" "$kind" "$run") "
    p+="$("$peer_fn" "$kind" "$run") "
    if [ -n "$before_bin" ]; then
      bin=$before_bin
      o+="$("$berth_fn" "$kind" "before-$run") "
      bin=$current
    fi
  done
  bm=$(median <<<"$b")
  pm=$(median <<<"$p")
  local unit=s format=%.2f
  if [ -n "$rate" ]; then
    bm=$(echo "$rate / $bm" | bc -l)
    pm=$(echo "$rate / $pm" | bc -l)
    unit=MiB/s format=%.0f
  fi
  # shellcheck disable=SC2059 # the format is one of the two above
  printf "| %s | %s | $format %s | $format %s | %s | %s |" "$label" "$kind" "$bm" "$unit" "$pm" "$unit" \
    "$(ratio "$bm" "$pm")" "$target"
  if [ -n "$before_bin" ]; then
    om=$(median <<<"$o")
    [ -z "$rate" ] || om=$(echo "$rate / $om" | bc -l)
    # shellcheck disable=SC2059
    printf " $format %s | %s |" "$om" "$unit" "$(ratio "$bm" "$om")"
  fi
  printf '\n'
  # The suite's table adds the unit and the peer's name itself.
  bench_result "$id-$kind" "${label%%, vs *} on $kind" "$unit" "$bm" "$pm" "$better" "$target" "$peer_name"
  printf 'runs: berth %s; %s %s%s\n' "$b" "$peer_name" "$p" "${o:+; berth before: $o}" >&2
}

if [ -n "$before_bin" ]; then
  printf '\n| measurement | filesystem | berth | peer | berth/peer | target | berth before | berth/before |\n|---|---|---|---|---|---|---|---|\n'
else
  printf '\n| measurement | filesystem | berth | peer | berth/peer | target |\n|---|---|---|---|---|---|\n'
fi
for kind in $kinds; do
  if wants pull; then
    measure pull-python "$kind" "pull, debian+python 3 layers, vs ctr images pull" \
      berth_pull ctr_pull containerd lower 0.15
  fi
  if wants unpack; then
    measure unpack-tar "$kind" "unpack, minbase 1 layer, vs tar -x of the inflated tar" \
      berth_unpack tar_unpack "tar -x" lower 1.2
  fi
  if wants ingest; then
    measure ingest-openssl "$kind" "ingest ${ingest_mib} MiB, vs openssl dgst -sha256" \
      berth_ingest openssl_hash "openssl dgst" higher 0.7 "$ingest_mib"
    measure ingest-dd "$kind" "ingest ${ingest_mib} MiB, vs dd conv=fdatasync of it" \
      berth_ingest dd_write "dd" higher - "$ingest_mib"
  fi
  if wants fetch; then
    measure fetch-python "$kind" "fetch, debian+python 3 layers, vs ctr content fetch" \
      berth_fetch ctr_fetch containerd lower 0.2
  fi
done
printf '\nmedian of %s runs, each on a fresh filesystem; %s, %s cores, containerd %s\n' \
  "$runs" "$(uname -r)" "$(nproc)" "$(containerd_version)"
