#!/usr/bin/env bash
# berth-metad record throughput against containerd 1.6's metadata store:
# container create, get (info) and delete, and image list, with RECORDS
# records in the store, as operations per second.
#
# Compared like with like:
# - CLI to CLI: `berth` against `ctr`, one process per operation, one at a
#   time. `ctr containers create --rootfs DIR` records a container without
#   an image or snapshot (so neither side prepares a snapshot); `berth
#   containers create` also looks its image up first, as ctr does when given
#   an image. Both build or read a spec of about 1.5 KiB.
# - API level: berth through berth-client (bins/metad/tests/throughput.rs),
#   one request at a time. There is no Go toolchain here for a containerd
#   API client, so containerd has CLI figures only; its per-call CLI cost
#   (process start, gRPC connection) is in every ctr number.
#
# usage: bench/metad.sh [RECORDS] [CLI_RECORDS] [LISTS]
# Not a test: prints a table (BENCH_RESULTS=FILE appends result rows for
# bench/all.sh). Run as root (a private containerd needs it);
# everything lives in a temp dir and is removed. Builds with cargo into
# $CARGO_TARGET_DIR (default target/).
set -euo pipefail

records=${1:-10000}
cli_records=${2:-$records}
lists=${3:-20}
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
bench_build
cargo test --release -p berth-metad --test throughput --no-run >&2
bench_workdir metad
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"

now() { date +%s.%N; }
rate() { echo "scale=0; $1 / ($3 - $2)" | bc -l; }

# Starts a berth-metad on its own directory (no contentd or snapd behind
# it); sets $sock.
start_metad() {
  start_berth_daemon metad "$work/$1" --contentd "$work/$1/none.sock" --snapd "$work/$1/none.sock"
  sock="$work/$1/metad.sock"
}

# --- berth, API level -------------------------------------------------------
echo "berth API: $records records" >&2
start_metad api
api_out=$(BERTH_BENCH_METAD="$sock" BERTH_BENCH_RECORDS="$records" BERTH_BENCH_LISTS="$lists" \
  cargo test --release -q -p berth-metad --test throughput -- --ignored --nocapture 2>&1 | grep '^api ')
echo "$api_out" >&2
api() { echo "$api_out" | awk -v op="$1" '$2 == op { print $7 }'; }

# A spec of the size ctr builds, for berth's CLI.
spec="$work/spec.json"
env=$(for i in $(seq 0 19); do printf '"VAR_%d=value-%d",' "$i" "$i"; done)
cat >"$spec" <<JSON
{"ociVersion":"1.1.0","process":{"args":["sh"],"env":[${env%,}],"cwd":"/"},"root":{"path":"rootfs"},"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},{"type":"network"}]}}
JSON

# Names for the image stores, tagged many per process.
tags() { for i in $(seq 1 "$records"); do echo "docker.io/library/bench:t$i"; done; }

# --- berth, CLI ---------------------------------------------------------------
echo "berth CLI: $cli_records records" >&2
start_metad cli
export BERTH_METAD_ADDRESS="$sock"
b="$bin/berth -n bench"
$b images create docker.io/library/bench:1 "sha256:$(printf bench | sha256sum | cut -d' ' -f1)" \
  --media-type application/vnd.oci.image.manifest.v1+json --size 337 >/dev/null
tags | xargs -n 500 $b images tag docker.io/library/bench:1 >/dev/null

t0=$(now)
for i in $(seq 1 "$cli_records"); do
  $b containers create --runtime io.containerd.runc.v2 --spec "$spec" docker.io/library/bench:1 "c$i" >/dev/null
done
t1=$(now)
for i in $(seq 1 "$cli_records"); do $b containers info "c$i" >/dev/null; done
t2=$(now)
for _ in $(seq 1 "$lists"); do $b images ls -q >/dev/null; done
t3=$(now)
for i in $(seq 1 "$cli_records"); do $b containers rm "c$i" >/dev/null; done
t4=$(now)
berth_create=$(rate "$cli_records" "$t0" "$t1")
berth_get=$(rate "$cli_records" "$t1" "$t2")
berth_list=$(echo "scale=1; $lists / ($t3 - $t2)" | bc -l)
berth_delete=$(rate "$cli_records" "$t3" "$t4")

# --- containerd 1.6, ctr ----------------------------------------------------------
ctr_create=- ctr_get=- ctr_list=- ctr_delete=- ctr_version=-
if command -v containerd >/dev/null && command -v ctr >/dev/null; then
  echo "containerd ctr: $cli_records records" >&2
  mkdir -p "$work/rootfs"
  start_containerd "$work/containerd"
  ctr_version=$(containerd_version)
  a="ctr -a $work/containerd/c.sock -n bench"

  # One tiny image (OCI layout, no layers) to tag.
  layout="$work/layout"
  mkdir -p "$layout/blobs/sha256"
  config='{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}'
  config_digest=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  printf '%s' "$config" >"$layout/blobs/sha256/$config_digest"
  manifest="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":${#config}},\"layers\":[]}"
  manifest_digest=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
  printf '%s' "$manifest" >"$layout/blobs/sha256/$manifest_digest"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"io.containerd.image.name":"docker.io/library/bench:1"}}]}' \
    "$manifest_digest" "${#manifest}" >"$layout/index.json"
  tar -C "$layout" -cf "$work/image.tar" oci-layout index.json blobs
  $a images import --no-unpack --all-platforms "$work/image.tar" >/dev/null
  tags | xargs -n 500 $a images tag docker.io/library/bench:1 >/dev/null

  t0=$(now)
  for i in $(seq 1 "$cli_records"); do $a containers create --rootfs "$work/rootfs" "c$i" >/dev/null; done
  t1=$(now)
  for i in $(seq 1 "$cli_records"); do $a containers info "c$i" >/dev/null; done
  t2=$(now)
  for _ in $(seq 1 "$lists"); do $a images ls -q >/dev/null; done
  t3=$(now)
  for i in $(seq 1 "$cli_records"); do $a containers rm "c$i" >/dev/null; done
  t4=$(now)
  ctr_create=$(rate "$cli_records" "$t0" "$t1")
  ctr_get=$(rate "$cli_records" "$t1" "$t2")
  ctr_list=$(echo "scale=1; $lists / ($t3 - $t2)" | bc -l)
  ctr_delete=$(rate "$cli_records" "$t3" "$t4")
fi

echo
echo "records in the store: $records containers/images; CLI loops: $cli_records; image lists: $lists"
printf '%-28s %14s %14s %18s\n' "operation (per second)" "berth API" "berth CLI" "ctr (containerd $ctr_version)"
printf '%-28s %14s %14s %18s\n' "container create" "$(api container-create)" "$berth_create" "$ctr_create"
printf '%-28s %14s %14s %18s\n' "container get / info" "$(api container-get)" "$berth_get" "$ctr_get"
printf '%-28s %14s %14s %18s\n' "container delete" "$(api container-delete)" "$berth_delete" "$ctr_delete"
printf '%-28s %14s %14s %18s\n' "image list ($records images)" "$(api image-list)" "$berth_list" "$ctr_list"

for op in create:container-create get:container-get delete:container-delete list:image-list; do
  b_var="berth_${op%%:*}" c_var="ctr_${op%%:*}"
  case ${op%%:*} in
    create) what="container create" ;; get) what="container get / info" ;;
    delete) what="container delete" ;; list) what="image list, $records images" ;;
  esac
  bench_result "metad-${op#*:}" "$what, CLI (one process a call)" ops/s "${!b_var}" "${!c_var}" higher -
done
