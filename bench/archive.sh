#!/usr/bin/env bash
# Image archives: `berth import` and `berth export` of an OCI archive holding
# the fetch benchmark's two minbase images (one 60 MB layer; four layers),
# against containerd's `ctr images import --no-unpack` and `ctr images
# export` of the same archive and images, in one run. Both sides store the
# content and record little else (berth's import, sent to contentd alone
# with --address, records no image; ctr's records two, a few bolt writes).
#
# usage: bench/archive.sh [RUNS]   (as root; BERTH_BENCH_ROOTFS=FILE reuses
# a minbase tar instead of building one with mmdebstrap; BENCH_RESULTS=FILE
# appends result rows for bench/all.sh)
set -euo pipefail

runs=${1:-3}
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
bench_build
bench_workdir archive

# shellcheck source=lib/minbase-registry.sh
. "$top/bench/lib/minbase-registry.sh"
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"
# shellcheck source=lib/timing.sh
. "$top/bench/lib/timing.sh"

archive="$work/images.tar"
tar -C "$layout" -cf "$archive" .
echo "archive: $(stat -c %s "$archive") bytes" >&2

b_import="" b_export="" c_import="" c_export=""
for run in $(seq "$runs"); do
  root="$work/berth-$run"
  start_berth_daemon contentd "$root"
  berth=("$bin/berth" --address "$root/contentd.sock")
  b_import+="$(seconds "${berth[@]}" import "$archive") "
  roots=$("${berth[@]}" --format json import "$archive" |
    python3 -c 'import json, sys; print(" ".join(i["name"] + "=" + i["digest"] for i in json.load(sys.stdin)))')
  # shellcheck disable=SC2086 # one NAME=DIGEST per word
  b_export+="$(seconds "${berth[@]}" export "$root/out.tar" $roots) "

  croot="$work/ctrd-$run"
  start_containerd "$croot"
  c_import+="$(seconds ctr -a "$croot/c.sock" images import --no-unpack --base-name bench/debian "$archive") "
  c_export+="$(seconds ctr -a "$croot/c.sock" images export "$croot/out.tar" bench/debian:single bench/debian:multi) "
done

printf '\n| operation | berth (s) | ctr (s) | berth/containerd time |\n|---|---|---|---|\n'
for op in import export; do
  b_var="b_$op" c_var="c_$op"
  bm=$(median <<<"${!b_var}")
  cm=$(median <<<"${!c_var}")
  printf '| %s | %.2f | %.2f | %s |\n' "$op" "$bm" "$cm" "$(ratio "$bm" "$cm")"
  bench_result "archive-$op" "$op, OCI archive of both minbase images" s "$bm" "$cm" lower -
done
printf '\nmedian of %s runs, %s, %s cores, containerd %s, on %s\n' "$runs" "$(uname -r)" "$(nproc)" \
  "$(containerd_version)" "$(findmnt -no FSTYPE -T "$work")"
