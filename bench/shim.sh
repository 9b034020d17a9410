#!/bin/sh
# Shim benchmark, run by hand as root: our shim against containerd's Go runc
# shim under one private containerd (own root/state/sockets in a temp dir).
#   1. `ctr run --rm IMAGE id /bin/true`, N times per runtime: wall time ratio.
#   2. 20 idle containers per runtime: PSS and RSS per shim (smaps_rollup).
# Usage: bench/shim.sh [path/to/containerd-shim-berth-v2]
# (default: the build of scripts/build-shim.sh, the way the shim is shipped)
set -eu
SHIM=${1:-${CARGO_TARGET_DIR:-target}/shim/containerd-shim-berth-v2}
RUNS=${RUNS:-20}
IDLE=${IDLE:-20}
[ -x "$SHIM" ] || { echo "build first: scripts/build-shim.sh" >&2; exit 1; }
SHIM=$(readlink -f "$SHIM")
DIR=$(mktemp -d /tmp/berth-shim-bench.XXXXXX)
CPID=
cleanup() {
    for id in $(ctr -a "$DIR/c.sock" task ls -q 2>/dev/null); do
        ctr -a "$DIR/c.sock" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
        ctr -a "$DIR/c.sock" task delete --force "$id" >/dev/null 2>&1 || true
    done
    for id in $(ctr -a "$DIR/c.sock" c ls -q 2>/dev/null); do ctr -a "$DIR/c.sock" c rm "$id" >/dev/null 2>&1 || true; done
    [ -n "$CPID" ] && kill "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null || true
    grep -o " $DIR[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

cat > "$DIR/config.toml" <<EOC
version = 2
root = "$DIR/root"
state = "$DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$DIR/c.sock"
[ttrpc]
  address = "$DIR/c.sock.ttrpc"
EOC
mkdir -p "$DIR/fifo"
PATH="$(dirname "$SHIM"):$PATH" containerd --config "$DIR/config.toml" >"$DIR/containerd.log" 2>&1 &
CPID=$!
until ctr -a "$DIR/c.sock" version >/dev/null 2>&1; do sleep 0.1; done
CTR="ctr -a $DIR/c.sock"

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
$CTR images import "$IMG/busybox.tar" >/dev/null
IMAGE=berth.bench/busybox:latest

extra() { [ "$1" = io.containerd.runc.v2 ] && echo "--runc-root $DIR/runc" || true; }

run_loop() { # runtime -> seconds for RUNS runs
    rt=$1; start=$(date +%s.%N)
    i=0; while [ $i -lt "$RUNS" ]; do
        $CTR run --rm --fifo-dir "$DIR/fifo" --runtime "$rt" $(extra "$rt") $IMAGE "b$i" /bin/true </dev/null
        i=$((i+1))
    done
    end=$(date +%s.%N); echo "$end - $start" | bc -l
}

memory() { # runtime binary-name -> "pss_kb rss_kb" averaged per shim
    rt=$1; name=$2; i=0
    while [ $i -lt "$IDLE" ]; do
        $CTR run -d --null-io --fifo-dir "$DIR/fifo" --runtime "$rt" $(extra "$rt") $IMAGE "m$i" sleep 1000 </dev/null
        i=$((i+1))
    done
    sleep 2
    pss=0; rss=0; n=0
    for p in $(pgrep -f "$name.*-address $DIR/c.sock" || true); do
        pss=$((pss + $(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup)))
        rss=$((rss + $(awk '/^Rss:/{print $2}' /proc/$p/smaps_rollup)))
        n=$((n+1))
    done
    i=0; while [ $i -lt "$IDLE" ]; do
        $CTR task kill -s SIGKILL "m$i" >/dev/null; i=$((i+1)); done
    sleep 1
    i=0; while [ $i -lt "$IDLE" ]; do
        $CTR task delete "m$i" >/dev/null 2>&1 || true; $CTR c rm "m$i" >/dev/null 2>&1 || true; i=$((i+1)); done
    [ "$n" -gt 0 ] || { echo "0 0 0"; return; }
    echo "$((pss / n)) $((rss / n)) $n"
}

go_time=$(run_loop io.containerd.runc.v2)
berth_time=$(run_loop io.containerd.berth.v2)
set -- $(memory io.containerd.runc.v2 containerd-shim-runc-v2); go_pss=$1 go_rss=$2 go_n=$3
set -- $(memory io.containerd.berth.v2 containerd-shim-berth-v2); b_pss=$1 b_rss=$2 b_n=$3

echo "| measurement | containerd-shim-berth-v2 | containerd-shim-runc-v2 (Go) | ratio berth/Go |"
echo "|---|---|---|---|"
printf '| `ctr run --rm %s id /bin/true`, %s runs, s/run | %.3f | %.3f | %.2f |\n' busybox "$RUNS" \
    "$(echo "$berth_time / $RUNS" | bc -l)" "$(echo "$go_time / $RUNS" | bc -l)" "$(echo "$berth_time / $go_time" | bc -l)"
printf '| PSS per idle shim, %s running (KiB) | %s | %s | %.2f |\n' "$IDLE" "$b_pss" "$go_pss" "$(echo "$b_pss / $go_pss" | bc -l)"
printf '| RSS per idle shim, %s running (KiB) | %s | %s | %.2f |\n' "$IDLE" "$b_rss" "$go_rss" "$(echo "$b_rss / $go_rss" | bc -l)"
echo "(shims measured: berth $b_n, Go $go_n)"
