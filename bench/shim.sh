#!/usr/bin/env bash
# Shim benchmark, as root: our shim against containerd's Go runc shim under
# one private containerd (own root/state/sockets in a temp dir).
#   1. `ctr run --rm IMAGE id /bin/true`, RUNS times per runtime: wall time
#      ratio.
#   2. IDLE idle containers per runtime: PSS and RSS per shim
#      (smaps_rollup).
# usage: bench/shim.sh [path/to/containerd-shim-berth-v2]
#   (default: built by scripts/build-shim.sh, the way the shim is shipped;
#   environment: RUNS=20 IDLE=20; BENCH_RESULTS=FILE appends result rows
#   for bench/all.sh)
set -euo pipefail
RUNS=${RUNS:-20}
IDLE=${IDLE:-20}
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
if [ $# = 0 ]; then
  scripts/build-shim.sh >&2
  SHIM="$target/shim/containerd-shim-berth-v2"
else
  SHIM=$1
fi
[ -x "$SHIM" ] || { echo "no shim at $SHIM: build it with scripts/build-shim.sh" >&2; exit 1; }
SHIM=$(readlink -f "$SHIM")
bench_workdir shim
DIR=$work
CTR=(ctr -a "$DIR/c.sock")

# Containers left by an interruption, while containerd still answers.
bench_cleanup_before() {
  [ -S "$DIR/c.sock" ] || return 0
  remove_ctr_containers "${CTR[@]}"
}

# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"
mkdir -p "$DIR/fifo"
CONTAINERD_PATH="$(dirname "$SHIM"):$PATH" start_containerd "$DIR"

# The image: busybox-static in one layer, as a docker archive.
IMG=$DIR/img; mkdir -p "$IMG/rootfs/bin" "$IMG/out"
cp /bin/busybox "$IMG/rootfs/bin/"
for a in sh true sleep id; do ln -s busybox "$IMG/rootfs/bin/$a"; done
tar -C "$IMG/rootfs" -cf "$IMG/layer.tar" .
L=$(sha256sum "$IMG/layer.tar" | cut -d' ' -f1); mkdir -p "$IMG/out/$L"; mv "$IMG/layer.tar" "$IMG/out/$L/layer.tar"
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$L" >"$IMG/out/config.json"
C=$(sha256sum "$IMG/out/config.json" | cut -d' ' -f1); mv "$IMG/out/config.json" "$IMG/out/$C.json"
printf '[{"Config":"%s.json","RepoTags":["berth.bench/busybox:latest"],"Layers":["%s/layer.tar"]}]' "$C" "$L" >"$IMG/out/manifest.json"
tar -C "$IMG/out" -cf "$IMG/busybox.tar" manifest.json "$C.json" "$L"
"${CTR[@]}" images import "$IMG/busybox.tar" >/dev/null
IMAGE=berth.bench/busybox:latest

extra() { # runtime -> extra ctr run flags
  if [ "$1" = io.containerd.runc.v2 ]; then echo "--runc-root $DIR/runc"; fi
}

run_loop() { # runtime -> seconds for RUNS runs
  local rt=$1 start end i
  start=$(date +%s.%N)
  for i in $(seq 0 $((RUNS - 1))); do
    # shellcheck disable=SC2046 # extra's flags are words
    "${CTR[@]}" run --rm --fifo-dir "$DIR/fifo" --runtime "$rt" $(extra "$rt") $IMAGE "b$i" /bin/true </dev/null
  done
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

memory() { # runtime binary-name -> "pss_kb rss_kb n" averaged per shim
  local rt=$1 name=$2 i p pss=0 rss=0 n=0
  for i in $(seq 0 $((IDLE - 1))); do
    # shellcheck disable=SC2046
    "${CTR[@]}" run -d --null-io --fifo-dir "$DIR/fifo" --runtime "$rt" $(extra "$rt") $IMAGE "m$i" sleep 1000 </dev/null
  done
  sleep 2
  for p in $(pgrep -f "$name.*-address $DIR/c.sock" || true); do
    pss=$((pss + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup")))
    rss=$((rss + $(awk '/^Rss:/{print $2}' "/proc/$p/smaps_rollup")))
    n=$((n + 1))
  done
  for i in $(seq 0 $((IDLE - 1))); do "${CTR[@]}" task kill -s SIGKILL "m$i" >/dev/null; done
  sleep 1
  for i in $(seq 0 $((IDLE - 1))); do
    "${CTR[@]}" task delete "m$i" >/dev/null 2>&1 || true
    "${CTR[@]}" c rm "m$i" >/dev/null 2>&1 || true
  done
  [ "$n" -gt 0 ] || { echo "0 0 0"; return; }
  echo "$((pss / n)) $((rss / n)) $n"
}

go_time=$(run_loop io.containerd.runc.v2)
berth_time=$(run_loop io.containerd.berth.v2)
read -r go_pss go_rss go_n < <(memory io.containerd.runc.v2 containerd-shim-runc-v2)
read -r b_pss b_rss b_n < <(memory io.containerd.berth.v2 containerd-shim-berth-v2)

echo "| measurement | containerd-shim-berth-v2 | containerd-shim-runc-v2 (Go) | ratio berth/Go |"
echo "|---|---|---|---|"
printf '| `ctr run --rm %s id /bin/true`, %s runs, s/run | %.3f | %.3f | %.2f |\n' busybox "$RUNS" \
  "$(echo "$berth_time / $RUNS" | bc -l)" "$(echo "$go_time / $RUNS" | bc -l)" "$(echo "$berth_time / $go_time" | bc -l)"
printf '| PSS per idle shim, %s running (KiB) | %s | %s | %.2f |\n' "$IDLE" "$b_pss" "$go_pss" "$(echo "$b_pss / $go_pss" | bc -l)"
printf '| RSS per idle shim, %s running (KiB) | %s | %s | %.2f |\n' "$IDLE" "$b_rss" "$go_rss" "$(echo "$b_rss / $go_rss" | bc -l)"
echo "(shims measured: berth $b_n, Go $go_n)"

go_shim="containerd-shim-runc-v2"
bench_result shim-run "ctr run --rm /bin/true through the shim" ms \
  "$(printf '%.1f' "$(echo "$berth_time * 1000 / $RUNS" | bc -l)")" \
  "$(printf '%.1f' "$(echo "$go_time * 1000 / $RUNS" | bc -l)")" lower 1 "$go_shim"
[ "$b_n" = "$IDLE" ] && [ "$go_n" = "$IDLE" ] || echo "warning: measured $b_n and $go_n shims, not $IDLE each" >&2
bench_result shim-pss "PSS per idle shim, $IDLE running" KiB "$b_pss" "$go_pss" lower - "$go_shim" "target: at most 1024 KiB"
bench_result shim-rss "RSS per idle shim, $IDLE running" KiB "$b_rss" "$go_rss" lower - "$go_shim" "target: at most 3072 KiB"
