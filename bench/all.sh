#!/usr/bin/env bash
# The benchmark suite: every benchmark of bench/, berth against containerd
# side by side, in one command. It installs the peers and tools from Debian
# (scripts/prerequisites.sh bench: containerd, runc, mmdebstrap,
# docker-registry, skopeo, busybox-static, ...), builds berth (release, and
# the shim as scripts/build-shim.sh ships it), builds one Debian minbase root
# filesystem with mmdebstrap for every script that serves images from a
# local registry, then runs the scripts in turn:
#
#   ingest   content-ingest.sh   1 GiB ingest against sha256sum and ctr
#   fetch    content-fetch.sh    fetch of the minbase image, 1 and 4 layers
#   unpack   unpack.sh           unpack of its 60 MB layer (and tar -xzf)
#   pull     pull.sh             full pull, 1 and 4 layers
#   data     data-path.sh        pull of a 3-layer Debian + python image,
#                                unpack against tar -x, ingest against
#                                openssl and dd, fetch; each run on a fresh
#                                loop ext4 and on a fresh tmpfs
#   archive  archive.sh          import and export of an OCI archive
#   memory   daemon-memory.sh    the daemons' RSS idle and after a pull
#   run      run.sh              run --rm latency, churn, daemons' PSS
#   shim     shim.sh             the shim against the Go shim under
#                                containerd 1.6.20 and under 2.2.7
#                                (../shared/peers): run, PSS, RSS
#   metad    metad.sh            metadata records through the CLI
#   cri      cri.sh              berth-crid against containerd 2.2.7's CRI
#                                (../shared/peers, critest's stand-in images):
#                                pod start, 100 pods, PSS with shims
#
# Each script prints its own tables and appends result rows (JSON lines) to
# $BENCH_RESULTS; at the end bench/chart (berth-bench-chart, a crate of its
# own that CI does not build) merges them with a record of the machine into
# one JSON document, prints the table of ratios berth/other and draws it as
# a PNG.
#
# usage: bench/all.sh [BENCHMARK...]   (as root; the names above, all by
#   default)
# environment:
#   OUT=DIR         results.json, results.jsonl, benchmarks.png and one log
#                   per script there (default /var/tmp/berth-bench.DATE)
#   BENCH_RUNS=3    runs per measurement (median) for ingest, fetch, unpack,
#                   pull, archive
#   INGEST_MIB=1024 the ingested file's size
#   METAD_ARGS="10000 1000 20"  records, records created/read/deleted one
#                   CLI call each, image lists (bench/metad.sh)
#   BENCH_FS=ext4   where the scripts work (stores, unpacked layers,
#                   bundles): a fresh ext4 (with its journal) on a loop
#                   device, made for this run; BENCH_FS=none: /var/tmp
#   BENCH_WARM_MIB=512  tmpfs touched and freed before each timed command
#                   (bench/lib/timing.sh warm_memory: same warm memory for
#                   every tool on a VM whose host reclaims freed pages); 0: off
#   QUICK=1         small parameters everywhere, to try the suite out
#   DOCS=1          copy the chart and the JSON to docs/benchmarks.{png,json}
#                   and the table into docs/benchmarks.md (between its
#                   "bench/all.sh" markers)
#   the scripts' own: ROUNDS, WARMUP, CHURN_SECONDS, CHURN_WORKERS,
#   MEMORY_CONTAINERS, SETTLE (run.sh), RUNS, IDLE, SHIM_WARMUP,
#   SHIM_SETTLE, SHIM_CONTAINERDS (shim.sh), CRI_ROUNDS, CRI_PODS,
#   CRI_PARALLEL (cri.sh),
#   BERTH_BENCH_ROOTFS (a minbase tar to use instead of mmdebstrap's)
# A script that fails is recorded as failed and the suite goes on; the exit
# status is 1 if any failed.
set -euo pipefail
export LC_ALL=C

all=(ingest fetch unpack pull data archive memory run shim metad cri)
script_of() {
  case $1 in
    ingest) echo content-ingest.sh ;; fetch) echo content-fetch.sh ;;
    unpack) echo unpack.sh ;; pull) echo pull.sh ;; data) echo data-path.sh ;;
    archive) echo archive.sh ;;
    memory) echo daemon-memory.sh ;; run) echo run.sh ;; shim) echo shim.sh ;;
    metad) echo metad.sh ;; cri) echo cri.sh ;; *) return 1 ;;
  esac
}
selected=("$@")
[ ${#selected[@]} -gt 0 ] || selected=("${all[@]}")
for b in "${selected[@]}"; do
  script_of "$b" >/dev/null || { echo "no benchmark $b; there are: ${all[*]}" >&2; exit 2; }
done

runs=${BENCH_RUNS:-3}
ingest_mib=${INGEST_MIB:-1024}
metad_args=${METAD_ARGS:-10000 1000 20}
if [ "${QUICK:-}" = 1 ]; then
  runs=${BENCH_RUNS:-1}
  ingest_mib=${INGEST_MIB:-128}
  metad_args=${METAD_ARGS:-500 100 5}
  export ROUNDS=${ROUNDS:-5} WARMUP=${WARMUP:-1} CHURN_SECONDS=${CHURN_SECONDS:-3}
  export CHURN_WORKERS=${CHURN_WORKERS:-1 4} MEMORY_CONTAINERS=${MEMORY_CONTAINERS:-5}
  export SETTLE=${SETTLE:-1} RUNS=${RUNS:-5} IDLE=${IDLE:-5} CRI_PODS=${CRI_PODS:-10}
fi

# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"

# Prerequisites: Debian's packages from the project's one list (installed
# when we are root, else named), then what no package gives.
scripts/prerequisites.sh bench
missing=()
[ "$(id -u)" = 0 ] || missing+=("root (containers, mounts, a private containerd)")
command -v cargo >/dev/null || missing+=("cargo (a Rust toolchain, e.g. from rustup)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'missing: %s\n' "${missing[@]}" >&2
  exit 1
fi

started=$(date +%s)
out=${OUT:-/var/tmp/berth-bench.$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
export BENCH_RESULTS="$out/results.jsonl"
: >"$BENCH_RESULTS"
echo "results in $out" >&2

# Builds: berth, the shipped shim, the chart program (its own target
# subdirectory: it is a workspace of its own).
bench_build
scripts/build-shim.sh >&2
CARGO_TARGET_DIR="$target/bench-chart" cargo build --release --manifest-path bench/chart/Cargo.toml >&2
chart="$target/bench-chart/release/berth-bench-chart"
built=$(date +%s)

# One minbase root filesystem (and one pair of images made from it) for
# every script that needs one.
bench_workdir all
needs_rootfs=0
for b in "${selected[@]}"; do
  case $b in fetch | unpack | pull | data | archive | memory) needs_rootfs=1 ;; esac
done
if [ $needs_rootfs = 1 ] && [ -z "${BERTH_BENCH_ROOTFS:-}" ]; then
  echo "building a Debian bookworm minbase root filesystem with mmdebstrap" >&2
  mmdebstrap --quiet --variant=minbase bookworm "$work/minbase.tar" >&2
  export BERTH_BENCH_ROOTFS="$work/minbase.tar"
fi
# The images made from it, by the first script that needs them.
export BERTH_BENCH_IMAGES="$work/images"

# One filesystem for all the scripts' work, fresh, so that no run pays for
# what others deleted before it: this VM's root ext4 has no journal, and
# ext4 without one skips every recently freed inode when it allocates (see
# the unpack section of docs/benchmarks.md). Unmounted by the cleanup.
# The loop device does direct IO to its file, so that written data is
# cached once, as on a disk, not also in the file's page cache.
loop=""
bench_cleanup_after() {
  if [ -n "$loop" ]; then
    unmount_under "$work/fs"
    losetup -d "$loop" 2>/dev/null || true
  fi
}
case ${BENCH_FS:-ext4} in
  ext4)
    truncate -s 24G "$work/fs.img"
    mkfs.ext4 -q -F "$work/fs.img"
    loop=$(losetup -f --show --direct-io=on "$work/fs.img")
    mkdir "$work/fs"
    mount "$loop" "$work/fs"
    export BERTH_BENCH_DIR="$work/fs"
    ;;
  none) ;;
  *) echo "BENCH_FS: ext4 or none" >&2; exit 2 ;;
esac
fs_used="$(findmnt -no FSTYPE -T "${BERTH_BENCH_DIR:-/var/tmp}") at ${BERTH_BENCH_DIR:-/var/tmp}"
[ "${BENCH_FS:-ext4}" = none ] || fs_used="fresh ext4 on a loop device (direct IO to a file on the root $(findmnt -no FSTYPE -T "$work"))"

# The machine, as the JSON document records it.
machine() { # key value
  printf '{"kind":"machine",%s:%s}\n' "$(json_str "$1")" "$2" >>"$BENCH_RESULTS"
}
machine cpu "$(json_str "$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)")"
machine cores "$(nproc)"
machine memory_gib "$(awk '/^MemTotal:/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)"
machine kernel "$(json_str "$(uname -r)")"
machine os "$(json_str "$(. /etc/os-release && echo "$PRETTY_NAME")")"
machine containerd "$(json_str "$(containerd --version | awk '{print $3}')")"
machine runc "$(json_str "$(runc --version | awk 'NR == 1 {print $3}')")"
machine date "$(json_str "$(date -u +%Y-%m-%d)")"
machine started "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit+="+changes"; fi
machine commit "$(json_str "$commit")"
machine filesystem "$(json_str "$fs_used")"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
machine load_at_start "$(json_str "$load_start")"

failed=()
for b in "${selected[@]}"; do
  script=$(script_of "$b")
  case $b in
    ingest) args=("$ingest_mib" "$runs") ;;
    fetch | unpack | pull | archive | data) args=("$runs") ;;
    metad) read -ra args <<<"$metad_args" ;; # three numbers
    *) args=() ;;
  esac
  echo >&2
  echo "=== $b: bench/$script ${args[*]}" >&2
  t0=$(date +%s)
  set +e
  bench_name=$b bash "bench/$script" "${args[@]}" 2>&1 | tee "$out/logs/$b.log"
  rc=${PIPESTATUS[0]}
  set -e
  t1=$(date +%s)
  status=ok
  if [ "$rc" != 0 ]; then status="failed (exit $rc)"; failed+=("$b"); fi
  printf '{"kind":"script","name":%s,"status":%s,"seconds":%s,"args":%s}\n' "$(json_str "$script")" \
    "$(json_str "$status")" "$((t1 - t0))" "$(json_str "${args[*]}")" >>"$BENCH_RESULTS"
  echo "=== $b: $status, $((t1 - t0)) s" >&2
done
machine load_at_end "$(json_str "$(cut -d' ' -f1-3 /proc/loadavg)")"
machine suite_seconds "$(($(date +%s) - started))"

echo
echo "berth against containerd (berth/other: below 1 is better for ↓ rows, above 1 for ↑ rows)"
echo
"$chart" report "$BENCH_RESULTS" "$out/results.json" "$out/benchmarks.png" | tee "$out/table.md"
elapsed=$(($(date +%s) - started))
{
  echo
  printf 'The whole run took %d min %02d s (%d s of it building); load average %s at the start, %s at the end; the work on a %s.\n' \
    $((elapsed / 60)) $((elapsed % 60)) $((built - started)) "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" "$fs_used"
} | tee -a "$out/table.md"
echo
echo "results: $out/results.json, chart: $out/benchmarks.png, logs: $out/logs/"

if [ "${DOCS:-}" = 1 ]; then
  cp "$out/benchmarks.png" docs/benchmarks.png
  cp "$out/results.json" docs/benchmarks.json
  # The table between the markers of docs/benchmarks.md.
  awk -v table="$out/table.md" '
    /^<!-- bench\/all.sh table: begin/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
    /^<!-- bench\/all.sh table: end/ { skip = 0 }
    !skip { print }' docs/benchmarks.md >"$work/benchmarks.md"
  cat "$work/benchmarks.md" >docs/benchmarks.md
  echo "docs/benchmarks.png, docs/benchmarks.json and the table in docs/benchmarks.md updated"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]} (see $out/logs/)" >&2
  exit 1
fi
