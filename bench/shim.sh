#!/usr/bin/env bash
# Shim benchmark, as root: our shim against containerd's Go runc shim, under
# two private containerds in turn (each with its own root/state/sockets in a
# temp dir, CRI off):
#   - 1.6: Debian's containerd 1.6.20, its ctr and its Go
#     containerd-shim-runc-v2 (/usr/bin);
#   - 2.2: containerd 2.2.7, its ctr and its Go containerd-shim-runc-v2 from
#     ../shared/peers/bin (PEERS_BIN), config version 3.
# Under each, with the same busybox image and the same runc (Debian's):
#   1. `ctr run --rm IMAGE ID /bin/true`, SHIM_WARMUP untimed runs per shim, then
#      RUNS rounds of one timed run per shim, which one goes first
#      alternating: median (and mean) wall time, ratio berth/Go. Target:
#      at most 0.85.
#   2. IDLE idle containers (`sleep`) per shim, one shim each: PSS and RSS
#      per shim (smaps_rollup, averaged), SHIM_SETTLE s after the last start;
#      which shim's containers go first alternates between the versions.
#      Targets, absolute: PSS at most 307 KiB (0.3 MiB), RSS at most
#      2048 KiB.
# The Go shims put their sockets under /run/containerd/s whatever
# containerd's state dir is; each containerd (and so every shim it starts)
# runs in a mount namespace of its own with a tmpfs there, so nothing of
# the host's /run/containerd is touched. Containers live in the namespace
# shimbench-PID (cgroups /shimbench-PID/ID, removed at the end).
# usage: bench/shim.sh [path/to/containerd-shim-berth-v2]
#   (default: built by scripts/build-shim.sh, the way the shim is shipped;
#   environment: RUNS=20, SHIM_WARMUP (WARMUP, 2), IDLE=20, SHIM_SETTLE=2,
#   SHIM_CONTAINERDS="1.6 2.2" (either alone: only that containerd),
#   PEERS_BIN (../shared/peers/bin);
#   BENCH_RESULTS=FILE appends result rows for bench/all.sh)
set -euo pipefail
export LC_ALL=C
RUNS=${RUNS:-20}
WARMUP=${SHIM_WARMUP:-${WARMUP:-2}}
IDLE=${IDLE:-20}
SETTLE=${SHIM_SETTLE:-2}
VERSIONS=${SHIM_CONTAINERDS:-1.6 2.2}
PSS_TARGET=307  # KiB: 0.3 MiB
RSS_TARGET=2048 # KiB: 2 MiB
LAT_TARGET=0.85
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
peers=${PEERS_BIN:-$top/../shared/peers/bin}

missing=()
[ "$(id -u)" = 0 ] || missing+=("root (runc, mounts)")
for tool in unshare bc pgrep runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -x /bin/busybox ] || missing+=("/bin/busybox (busybox-static)")
for v in $VERSIONS; do
  case $v in
    1.6)
      for tool in containerd ctr containerd-shim-runc-v2; do
        command -v "$tool" >/dev/null || missing+=("$tool (Debian's containerd)")
      done
      ;;
    2.2)
      for f in containerd ctr containerd-shim-runc-v2; do
        [ -x "$peers/$f" ] || missing+=("$peers/$f (../shared/peers: containerd 2.2.7; SHIM_CONTAINERDS=1.6 measures without it)")
      done
      ;;
    *) echo "SHIM_CONTAINERDS: 1.6, 2.2 or both" >&2; exit 2 ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  printf 'missing: %s\n' "${missing[@]}" >&2
  exit 1
fi
[ ! -d "$peers" ] || peers=$(cd "$peers" && pwd)

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
ns=shimbench-$$
CTR=()

# Containers left by an interruption, while the containerd of the moment
# still answers.
bench_cleanup_before() {
  [ ${#CTR[@]} -gt 0 ] && [ -S "$sock" ] || return 0
  remove_ctr_containers "${CTR[@]}"
}
# The namespace's cgroups (empty once their containers are deleted).
bench_cleanup_after() {
  local h
  for h in /sys/fs/cgroup /sys/fs/cgroup/*; do
    [ -d "$h/$ns" ] && find "$h/$ns" -depth -type d -exec rmdir {} + 2>/dev/null
  done
}

# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"

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
IMAGE=berth.bench/busybox:latest

# containerd (and every shim it starts) in a mount namespace of its own, a
# tmpfs over /run/containerd there (over /run when the host has no
# /run/containerd, which must not be created).
if [ -d /run/containerd ]; then private_run=/run/containerd; else private_run=/run; fi
# shellcheck disable=SC2016 # expanded by that sh
in_private_ns=(unshare --mount --propagation private -- sh -c \
  'mount -t tmpfs -o mode=0711 shimbench "$0" && mkdir -p /run/containerd && exec "$@"' "$private_run")

extra() { # shim -> extra ctr run flags
  if [ "$1" = go ]; then echo "--runc-root $vdir/runc"; fi
}
runtime_of() { if [ "$1" = go ]; then echo io.containerd.runc.v2; else echo io.containerd.berth.v2; fi; }

# ctr's stderr without 2.x's warning, on every call, that cgroup v1 support
# is deprecated (this host has hybrid cgroups).
quiet() { grep -v 'DEPRECATION: The support for cgroup v1 is deprecated' || true; }
ctrq() { # ctr ARGS..., its stderr through quiet
  local rc=0
  "${CTR[@]}" "$@" 2>"$vdir/err" || rc=$?
  quiet <"$vdir/err" >&2
  return $rc
}
now_us() { echo "${EPOCHREALTIME/./}"; }
run_ms() { # shim id -> ms for one `ctr run --rm`
  local start end
  start=$(now_us)
  # shellcheck disable=SC2046 # extra's flags are words
  "${CTR[@]}" run --rm --fifo-dir "$vdir/fifo" --runtime "$(runtime_of "$1")" $(extra "$1") \
    $IMAGE "$2" /bin/true </dev/null >/dev/null 2>"$vdir/err" || { quiet <"$vdir/err" >&2; return 1; }
  end=$(now_us)
  quiet <"$vdir/err" >&2
  echo "scale=1; ($end - $start) / 1000" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mean() { awk '{s+=$1} END {printf "%.1f", s/NR}'; }

memory() { # shim binary-name -> "pss_kb rss_kb n" averaged per shim
  local shim=$1 name=$2 i p pss=0 rss=0 n=0
  for i in $(seq 0 $((IDLE - 1))); do
    # shellcheck disable=SC2046
    "${CTR[@]}" run -d --null-io --fifo-dir "$vdir/fifo" --runtime "$(runtime_of "$shim")" $(extra "$shim") \
      $IMAGE "m$shim$i" sleep 1000 </dev/null >/dev/null 2>"$vdir/err" || { quiet <"$vdir/err" >&2; return 1; }
    quiet <"$vdir/err" >&2
  done
  sleep "$SETTLE"
  for p in $(pgrep -f "$name.*-address $sock( |\$)" || true); do
    pss=$((pss + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup")))
    rss=$((rss + $(awk '/^Rss:/{print $2}' "/proc/$p/smaps_rollup")))
    n=$((n + 1))
  done
  for i in $(seq 0 $((IDLE - 1))); do ctrq task kill -s SIGKILL "m$shim$i" >/dev/null; done
  sleep 1
  for i in $(seq 0 $((IDLE - 1))); do
    "${CTR[@]}" task delete "m$shim$i" >/dev/null 2>&1 || true
    "${CTR[@]}" c rm "m$shim$i" >/dev/null 2>&1 || true
  done
  [ "$n" -gt 0 ] || { echo "0 0 0"; return; }
  echo "$((pss / n)) $((rss / n)) $n"
}

verdict() { # value target -> met/missed (at most)
  if [ "$(echo "$1 <= $2" | bc -l)" = 1 ]; then echo met; else echo missed; fi
}

tables=()
vi=0
for v in $VERSIONS; do
  if [ "$v" = 1.6 ]; then
    cbin=$(command -v containerd); cctr=$(command -v ctr); goshim=$(command -v containerd-shim-runc-v2)
  else
    cbin=$peers/containerd; cctr=$peers/ctr; goshim=$peers/containerd-shim-runc-v2
  fi
  version=$("$cbin" --version | awk '{sub(/^v/, "", $3); sub(/~.*/, "", $3); print $3}')
  vdir=$DIR/containerd-$v
  sock=$vdir/c.sock
  # The two shims on containerd's PATH, first: this version's Go shim and ours.
  mkdir -p "$vdir/bin" "$vdir/fifo"
  ln -s "$SHIM" "$vdir/bin/containerd-shim-berth-v2"
  ln -s "$(readlink -f "$goshim")" "$vdir/bin/containerd-shim-runc-v2"
  echo "containerd $version ($cbin): Go shim $goshim" >&2
  CONTAINERD_BIN=$cbin CTR_BIN=$cctr CONTAINERD_PATH="$vdir/bin:$PATH" start_containerd "$vdir" "${in_private_ns[@]}"
  CTR=("$cctr" -a "$sock" -n "$ns")
  ctrq images import "$IMG/busybox.tar" >/dev/null

  # 1. Latency: warm-ups, then rounds alternating which shim goes first.
  for i in $(seq "$WARMUP"); do
    run_ms go "w-go-$i" >/dev/null
    run_ms berth "w-berth-$i" >/dev/null
  done
  : >"$vdir/lat.go"
  : >"$vdir/lat.berth"
  for i in $(seq "$RUNS"); do
    if [ $((i % 2)) = 1 ]; then order="berth go"; else order="go berth"; fi
    for s in $order; do run_ms "$s" "r-$s-$i" >>"$vdir/lat.$s"; done
  done
  echo "latency ms, berth: $(tr '\n' ' ' <"$vdir/lat.berth")" >&2
  echo "latency ms, Go:    $(tr '\n' ' ' <"$vdir/lat.go")" >&2
  b_med=$(median <"$vdir/lat.berth"); go_med=$(median <"$vdir/lat.go")
  b_mean=$(mean <"$vdir/lat.berth"); go_mean=$(mean <"$vdir/lat.go")

  # 2. Idle memory, which shim first alternating between the versions.
  if [ $((vi % 2)) = 0 ]; then order="go berth"; else order="berth go"; fi
  for s in $order; do
    if [ "$s" = go ]; then
      read -r go_pss go_rss go_n < <(memory go containerd-shim-runc-v2)
    else
      read -r b_pss b_rss b_n < <(memory berth containerd-shim-berth-v2)
    fi
  done
  echo "memory: berth PSS $b_pss RSS $b_rss KiB ($b_n shims), Go PSS $go_pss RSS $go_rss KiB ($go_n shims)" >&2
  [ "$b_n" = "$IDLE" ] && [ "$go_n" = "$IDLE" ] || echo "warning: measured $b_n and $go_n shims, not $IDLE each" >&2

  # This containerd away before the next one starts.
  remove_ctr_containers "${CTR[@]}"
  stop_pid "$containerd_pid"
  CTR=()

  lat_ratio=$(printf '%.2f' "$(echo "$b_med / $go_med" | bc -l)")
  t="containerd $version: containerd-shim-berth-v2 against its Go containerd-shim-runc-v2"$'\n\n'
  t+="| measurement | containerd-shim-berth-v2 | containerd-shim-runc-v2 (Go) | berth/Go | target | |"$'\n'
  t+="|---|---|---|---|---|---|"$'\n'
  t+="| \`ctr run --rm busybox ID /bin/true\`, median of $RUNS (ms) | $b_med | $go_med | $lat_ratio | ≤ $LAT_TARGET | $(verdict "$b_med / $go_med" "$LAT_TARGET") |"$'\n'
  t+="| same, mean of $RUNS (ms) | $b_mean | $go_mean | $(printf '%.2f' "$(echo "$b_mean / $go_mean" | bc -l)") | | |"$'\n'
  t+="| PSS per idle shim, $IDLE running (KiB) | $b_pss | $go_pss | $(printf '%.2f' "$(echo "$b_pss / $go_pss" | bc -l)") | ≤ $PSS_TARGET KiB | $(verdict "$b_pss" "$PSS_TARGET") |"$'\n'
  t+="| RSS per idle shim, $IDLE running (KiB) | $b_rss | $go_rss | $(printf '%.2f' "$(echo "$b_rss / $go_rss" | bc -l)") | ≤ $RSS_TARGET KiB | $(verdict "$b_rss" "$RSS_TARGET") |"$'\n'
  tables+=("$t")

  go_shim="containerd-shim-runc-v2"
  bench_result "shim-run-$v" "ctr run --rm /bin/true through the shim, median of $RUNS, containerd $version" ms \
    "$b_med" "$go_med" lower "$LAT_TARGET" "$go_shim"
  bench_result "shim-pss-$v" "PSS per idle shim, $IDLE running, containerd $version" KiB "$b_pss" "$go_pss" lower - \
    "$go_shim" "target: at most $PSS_TARGET KiB ($(verdict "$b_pss" "$PSS_TARGET"))"
  bench_result "shim-rss-$v" "RSS per idle shim, $IDLE running, containerd $version" KiB "$b_rss" "$go_rss" lower - \
    "$go_shim" "target: at most $RSS_TARGET KiB ($(verdict "$b_rss" "$RSS_TARGET"))"
  vi=$((vi + 1))
done

for t in "${tables[@]}"; do
  echo
  printf '%s' "$t"
done
echo
echo "runc $(runc --version | awk 'NR == 1 {print $3}'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
