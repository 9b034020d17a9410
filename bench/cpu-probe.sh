#!/usr/bin/env bash
# Running containers: berth's four daemons (contentd, snapd, metad, taskd)
# with containerd-shim-berth-v2 (as scripts/build-shim.sh ships it), against a private containerd 1.6 (Debian,
# CRI off) with Debian's Go containerd-shim-runc-v2, side by side in one
# run. Both run the same image (Debian's static busybox in one layer,
# imported from one OCI archive) with the same runc, cgroupfs driver.
#
#   1. Latency: `berth run --rm IMAGE /bin/true` against `ctr run --rm
#      IMAGE ID /bin/true`, ROUNDS rounds after WARMUP warm-ups, the two
#      alternating (which one goes first alternates too): median and p90.
#   2. Churn: containers/s over CHURN_SECONDS with 1, 4 and 16 workers, each
#      looping `run --rm ... /bin/true` with unique ids.
#   3. Idle daemon memory: PSS (/proc/PID/smaps_rollup) of the four berth
#      daemons summed against containerd's, after start + import, after
#      MEMORY_CONTAINERS containers have come and gone, and after the whole
#      run. Shims are not counted on either side (none is running then).
#
# ctr runs with --seccomp (CTR_SECCOMP=0 drops it), because `berth run`
# applies the default seccomp profile and ctr does not unless asked: the
# same work on both sides. Everything lives in a temp dir under /var/tmp, a
# namespace of its own (so cgroups /berth/NS/ID and /NS/ID) and, for the Go
# shim's runc root, a temp dir under /run (berth's shims keep theirs, and
# their sockets, under taskd's state dir). containerd 1.6's Go shim
# always puts its socket in /run/containerd/s (hard-coded there); it removes
# it when its task is deleted.
#
# usage: bench/run.sh   (as root; environment: ROUNDS=30 WARMUP=3
#   CHURN_SECONDS=20 CHURN_WORKERS="1 4 16" MEMORY_CONTAINERS=100
#   SETTLE=5 CTR_SECCOMP=1 RUN_TIMEOUT=60 BERTH_LOG_LEVEL=warn; KEEP_LOGS=DIR
#   records `berth events` and copies it, the daemons' logs and the failed
#   runs' errors there at the end; BENCH_RESULTS=FILE appends result rows
#   for bench/all.sh)
set -euo pipefail
export LC_ALL=C

rounds=${ROUNDS:-30}
warmup=${WARMUP:-3}
churn_seconds=${CHURN_SECONDS:-20}
churn_workers=${CHURN_WORKERS:-1 4 16}
memory_containers=${MEMORY_CONTAINERS:-100}
settle=${SETTLE:-5}
ctr_seccomp=${CTR_SECCOMP:-1}
run_timeout=${RUN_TIMEOUT:-60}
keep_logs=${KEEP_LOGS:-}

# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"

# Prerequisites, before anything is built or started.
missing=()
[ "$(id -u)" = 0 ] || missing+=("root (snapd mounts, runc)")
for tool in runc containerd ctr containerd-shim-runc-v2 cargo tar gzip sha256sum bc timeout; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ! -x /bin/busybox ] || ! dpkg -s busybox-static >/dev/null 2>&1; then
  missing+=("busybox-static (Debian's static /bin/busybox)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  printf 'missing: %s\n' "${missing[@]}" >&2
  exit 1
fi
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"
ctrd_version=$(containerd_version)
case $ctrd_version in
  1.6.*) ;;
  *) echo "warning: containerd $ctrd_version, not 1.6" >&2 ;;
esac

bench_build
# The shim as it is shipped (scripts/build-shim.sh: size-optimised,
# glibc linked in); taskd finds it first on PATH.
scripts/build-shim.sh >&2
for b in berth berth-contentd berth-snapd berth-metad berth-taskd; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is not built" >&2; exit 1; }
done
[ -x "$target/shim/containerd-shim-berth-v2" ] || { echo "$target/shim/containerd-shim-berth-v2 is not built" >&2; exit 1; }

bench_workdir run
rundir=$(mktemp -d /run/berth-run-bench.XXXXXX)
bench_dirs+=("$rundir")
ns="runbench-$$"
image=berth.bench/busybox:run
workers=()
# What existed before, so that cleanup removes only what this run made.
pre_existing=()
for d in /run/berth /run/berth/s /run/berth/runc /run/containerd /run/containerd/s \
  /sys/fs/cgroup/berth /sys/fs/cgroup/*/berth; do
  [ -e "$d" ] && pre_existing+=("$d")
done
existed() { local d; for d in "${pre_existing[@]}"; do [ "$d" = "$1" ] && return 0; done; return 1; }
ls /run/containerd/s 2>/dev/null | sort >"$work/ctrd-sockets.before" || true
ls /run/berth/s 2>/dev/null | sort >"$work/berth-sockets.before" || true

# Processes of ours outside the daemons: shims (and anything they left)
# run in bundles under $work or name its sockets on their command line.
ours() {
  local p pid cwd
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = $$ ] && continue
    grep -qx "$pid" "$work/pids" && continue
    cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
    if [[ $cwd == "$work"/* ]] || tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -F -- "$work/" >/dev/null; then
      echo "$pid"
    fi
  done
}

# At exit (bench_cleanup), before the daemons are killed: logs kept,
# workers stopped, containers deleted through the daemons.
bench_cleanup_before() {
  if [ -n "$keep_logs" ]; then
    mkdir -p "$keep_logs"
    cp "$work"/berth/*.log "$work"/errors.* "$work"/lat.* "$work"/memory "$work"/fds "$keep_logs"/ 2>/dev/null
    cp "$work/ctrd/log" "$keep_logs/containerd.log" 2>/dev/null
  fi
  # (A bare `wait` would wait for the daemons too.)
  if [ ${#workers[@]} -gt 0 ]; then
    kill "${workers[@]}" 2>/dev/null
    wait "${workers[@]}" 2>/dev/null
  fi
  # Containers left by an interruption: delete them through the daemons.
  if [ -S "$work/berth/taskd.sock" ]; then
    for id in $(timeout 20 "$bin/berth" tasks ls -q 2>/dev/null); do
      timeout 20 "$bin/berth" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
      timeout 20 "$bin/berth" tasks rm "$id" >/dev/null 2>&1
    done
    for id in $(timeout 20 "$bin/berth" containers ls -q 2>/dev/null); do
      timeout 20 "$bin/berth" containers rm "$id" >/dev/null 2>&1
    done
  fi
  if [ -S "$work/ctrd/c.sock" ]; then
    remove_ctr_containers "${ctr[@]}"
  fi
}
# After: shims left over, runc containers left over, cgroups and the
# directories under /run this run made.
bench_cleanup_after() {
  local left
  left=$(ours)
  if [ -n "$left" ]; then
    echo "cleanup: killing leftover processes: $(echo $left)" >&2
    kill -9 $left 2>/dev/null
  fi
  for root in "${broot:-/nonexistent}/taskd/state/runc" "$rundir/runc/$ns"; do
    [ -d "$root" ] || continue
    for id in $(runc --root "$root" list -q 2>/dev/null); do
      echo "cleanup: runc container $id left in $root" >&2
      runc --root "$root" delete -f "$id" >/dev/null 2>&1
    done
    rm -rf "$root"
  done
  # Cgroups under this run's namespace, deepest first.
  for h in /sys/fs/cgroup /sys/fs/cgroup/*; do
    for c in "$h/$ns" "$h/berth/$ns"; do
      [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    existed "$h/berth" || { [ -d "$h/berth" ] && rmdir "$h/berth" 2>/dev/null; }
  done
  for d in /run/berth/s /run/berth/runc /run/berth /run/containerd/s /run/containerd; do
    existed "$d" || { [ -d "$d" ] && rmdir "$d" 2>/dev/null; }
  done
}

# The image, as tests/src/images.rs's run_image_archive builds it: Debian's
# static busybox as /bin/busybox with /bin/sh and /bin/true linked to it,
# Cmd /bin/sh, one gzip layer in an OCI layout, tarred.
rootfs="$work/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$rootfs/tmp" "$rootfs/root"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in sh true; do ln -s busybox "$rootfs/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
layout="$work/layout"
mkdir -p "$layout/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
add_blob() { # file -> prints "digest size"
  local d
  d=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$layout/blobs/sha256/$d"
  echo "sha256:$d $(stat -c %s "$1")"
}
tar -C "$rootfs" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$work/layer.tar" .
diff_id=sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" >"$work/layer.tar.gz"
read -r layer_digest layer_size < <(add_blob "$work/layer.tar.gz")
case $(uname -m) in
  x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;;
esac
printf '{"architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
  "$arch" "$diff_id" >"$work/config.json"
read -r config_digest config_size < <(add_blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
  "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
read -r manifest_digest manifest_size < <(add_blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$image" >"$layout/index.json"
archive="$work/busybox.tar"
tar -C "$layout" -cf "$archive" .

# berth: the four daemons wired as tests/src/stack.rs wires them.
broot="$work/berth"
mkdir -p "$broot" "$work/berth-fifo" "$work/berth-logs" "$work/ctr-fifo"
start_berth contentd snapd metad "$broot"
PATH="$target/shim:$PATH" start_berth taskd "$broot"
export BERTH_FIFO_DIR="$work/berth-fifo" BERTH_LOG_DIR="$work/berth-logs" BERTH_NAMESPACE="$ns"
berth_pids=()
for d in contentd snapd metad taskd; do berth_pids+=("$(cat "$broot/$d.pid")"); done
if [ -n "$keep_logs" ]; then
  # Every event metad relays (creates, deletes, exits, what its collector
  # removes), for reading after a failure.
  "$bin/berth" events >"$broot/events.log" 2>&1 &
  bench_track $!
fi

# containerd: bench/lib/containerd.sh's private one.
start_containerd "$work/ctrd"
ctr=(ctr -a "$work/ctrd/c.sock" -n "$ns")
ctr_run_flags=(--fifo-dir "$work/ctr-fifo" --runc-root "$rundir/runc")
[ "$ctr_seccomp" = 1 ] && ctr_run_flags+=(--seccomp)

"$bin/berth" import "$archive" >/dev/null
"${ctr[@]}" images import --base-name "${image%:*}" "$archive" >/dev/null
"${ctr[@]}" images ls -q | grep -x "$image" >/dev/null || { echo "ctr import did not record $image" >&2; exit 1; }

# One container to its end; fails (its stderr kept in $work/errors.SIDE) on
# a non-zero exit or after RUN_TIMEOUT seconds.
run_one() { # side id [slot]
  # stderr goes to one file per side and concurrent slot (a churn worker),
  # overwritten by the next run: no process is spent removing it, on
  # either side (a `rm` per run was about a millisecond of each run).
  local side=$1 id=$2 err="$work/err.$1.${3:-0}" rc=0
  if [ "$side" = berth ]; then
    timeout -k 5 "$run_timeout" "$bin/berth" run --rm --name "$id" "$image" /bin/true \
      </dev/null >/dev/null 2>"$err" || rc=$?
  else
    timeout -k 5 "$run_timeout" "${ctr[@]}" run --rm "${ctr_run_flags[@]}" "$image" "$id" /bin/true \
      </dev/null >/dev/null 2>"$err" || rc=$?
  fi
  if [ $rc != 0 ]; then
    { echo "--- $side $id: exit $rc$([ $rc = 124 ] && echo ' (timed out)')"; cat "$err"; } >>"$work/errors.$side"
  fi
  return $rc
}

# Microseconds now, read without a subshell (a `$(...)` forks one, inside
# the timed span): `now_us VAR` sets VAR.
now_us() { printf -v "$1" '%s' "${EPOCHREALTIME/./}"; }

# Timed: prints the wall time in ms, or "fail".
timed_ms() { # side id
  local start end
  now_us start
  if run_one "$1" "$2"; then
    now_us end
    echo "scale=1; ($end - $start) / 1000" | bc
  else
    echo fail
  fi
}

pss_kib() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup"; }
fds() { ls "/proc/$1/fd" | wc -l; }
berth_pss() { # -> "sum contentd snapd metad taskd"
  local sum=0 each="" p v
  for p in "${berth_pids[@]}"; do v=$(pss_kib "$p"); sum=$((sum + v)); each+=" $v"; done
  echo "$sum$each"
}
# Both sides settled: no shim left, a few seconds idle. Open descriptors
# too, per daemon: a leak per container shows there first.
memory_sample() { # label
  sleep "$settle"
  local b c f="" p
  b=$(berth_pss)
  c=$(pss_kib "$containerd_pid")
  for p in "${berth_pids[@]}" "$containerd_pid"; do f+=" $(fds "$p")"; done
  echo "$1 $b $c" >>"$work/memory"
  echo "$1$f" >>"$work/fds"
  echo "memory ($1): berth $b (sum contentd snapd metad taskd), containerd $c KiB PSS; fds$f" >&2
}

# Percentile by nearest rank of the numbers on stdin.
percentile() { # p
  sort -n | awk -v p="$1" '{a[NR]=$1} END {if (NR == 0) {print "-"; exit}; r = int((p * NR + 99) / 100); if (r < 1) r = 1; print a[r]}'
}
ratio() { if [ "$2" = - ] || [ "$1" = - ]; then echo -; else printf '%.2f' "$(echo "$1 / $2" | bc -l)"; fi; }

busy_ms() { awk '/^cpu /{print ($2+$3+$4+$7+$8)*10}' /proc/stat; }
for i in 1 2 3; do run_one berth warm-$i; run_one ctr warm-$i; done
sleep 3
b0=$(busy_ms); sleep 3; b1=$(busy_ms); base=$(( (b1-b0)/3 ))
echo "idle busy ms/s: $base" >&2
N=${N:-60}
for round in 1 2; do
for side in berth ctr; do
  sleep 2
  c0=$(busy_ms); now_us t0
  for i in $(seq $N); do run_one $side "p$round-$side-$i" || echo fail >&2; done
  now_us t1; c1=$(busy_ms)
  sleep 3; c2=$(busy_ms)
  wall=$(( (t1-t0)/1000 ))
  echo "$side: wall/container $(echo "scale=1; $wall/$N" | bc) ms; busy during loop/container $(echo "scale=1; ($c1-$c0)/$N" | bc) ms; + tail 3s/container $(echo "scale=1; ($c2-$c1-3*$base)/$N" | bc) ms" >&2
done
done
