#!/usr/bin/env bash
# The CRI: berth-crid (with contentd, snapd, metad, taskd and
# containerd-shim-berth-v2 as scripts/build-shim.sh ships it) against
# containerd 2.2.7's CRI plugin (with its containerd-shim-runc-v2), both
# driven by the same gRPC client for the timed pod starts
# (bins/crid/examples/cri-pod-start.rs) and by crictl 1.34
# (../shared/peers/bin) for the rest, side by side in one run, with the
# same images, the same runc (Debian's), the same CNI plugins and the
# cgroupfs driver.
#
# Both servers run at once in one set of private namespaces (unshare --net
# --mount --ipc --pid --uts, as ../shared/critest/run.sh runs critest; the
# inner half is bench/lib/cri-sandbox.sh): tmpfs over /run, /var/lib/cni
# and berth's state directory, loopback only, and a read-only
# docker-registry on 127.0.0.1:5100 there serving critest's stand-in images
# (../shared/critest/mkimages.py, $CRI_ORACLE_ROOT/registry/data), which
# both servers pull through a hosts.toml mirror for registry.k8s.io. Pods
# get their own network namespace through CNI: bridge (one per server,
# crib0 10.88.0.0/16 and cric0 10.89.0.0/16, gateway, masquerade) with
# host-local IPAM, then portmap, from /usr/lib/cni, as critest's runner
# configures them. Roots (content, snapshots) are on disk under a temp dir
# of $BERTH_BENCH_DIR or /var/tmp, state on tmpfs, for both.
#
#   1. Pod start: RunPodSandbox + CreateContainer + StartContainer (pause
#      registry.k8s.io/pause:3.10.1, one container of the stand-in
#      registry.k8s.io/e2e-test-images/busybox:1.29-2 running `sleep
#      3600`), timed by cri-pod-start around the three calls on a
#      connection it opened first (a kubelet keeps one; a client process's
#      start is not the runtime's time), ROUNDS rounds after WARMUP
#      warm-ups, berth and containerd alternating (which goes first
#      alternates too); `crictl stopp` and `rmp` after each, untimed.
#      Median and p90, and the median of each step.
#   2. PODS pods with one container each, started by PARALLEL
#      cri-pod-start loops at once: wall time until `crictl ps --state running` counts
#      them all; then, SETTLE seconds later, the PSS (sum of Pss of
#      /proc/PID/smaps_rollup) of the runtime's daemons plus every shim
#      process, found by pid in the private pid namespace by their
#      executables (berth: berth-{contentd,snapd,metad,taskd,crid} +
#      containerd-shim-berth-v2; containerd: containerd +
#      containerd-shim-runc-v2). Pause and sleep processes are not counted
#      on either side. Every pod has linux.cgroup_parent /cri-bench-RUN.
#      Berth's 100 first, then removed (`rmp -fa`), then
#      containerd's; the other server is up but idle meanwhile.
#
# Images are pulled into both before anything is timed. At the end every
# pod is removed through the CRI, the servers are stopped by pid, the
# namespaces take what is left, and the empty cgroups named after this
# run's pods and containers (and new empty k8s.io/berth parents) are
# removed.
#
# usage: bench/cri.sh   (as root; environment: CRI_ROUNDS (ROUNDS, 20),
#   CRI_WARMUP (WARMUP, 2), CRI_PODS=100, CRI_PARALLEL=10, SETTLE=3,
#   CRI_NETWORK=cni (or host: host-network pods on both sides, no CNI),
#   CRI_POD_PID=container (the kubelet's default pod: each container its
#   own PID namespace; berth-crid gives such a pod no pause process) or
#   pod (shareProcessNamespace: a pause process on both sides),
#   CRI_ORACLE_ROOT (/var/tmp/berth-critest), PEERS_BIN (../shared/peers/bin),
#   KEEP_LOGS=DIR (copies the servers' logs and the raw timings there);
#   BENCH_RESULTS=FILE appends result rows for bench/all.sh)
set -euo pipefail
export LC_ALL=C

rounds=${CRI_ROUNDS:-${ROUNDS:-20}}
warmup=${CRI_WARMUP:-${WARMUP:-2}}
pods=${CRI_PODS:-100}
parallel=${CRI_PARALLEL:-10}
settle=${SETTLE:-3}
network=${CRI_NETWORK:-cni}
export CRI_POD_PID=${CRI_POD_PID:-container}
case $CRI_POD_PID in container | pod) ;; *) echo "CRI_POD_PID: container or pod" >&2; exit 2 ;; esac
case $network in cni | host) ;; *) echo "CRI_NETWORK: cni or host" >&2; exit 2 ;; esac
keep_logs=${KEEP_LOGS:-}

# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"

peers=${PEERS_BIN:-$top/../shared/peers/bin}
oracle=${CRI_ORACLE_ROOT:-/var/tmp/berth-critest}
regdata=$oracle/registry/data
cni_bin=/usr/lib/cni
base_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

missing=()
[ "$(id -u)" = 0 ] || missing+=("root (namespaces, mounts, runc)")
for tool in unshare ip curl python3 docker-registry runc cargo bc findmnt; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
for f in containerd containerd-shim-runc-v2 crictl; do
  [ -x "$peers/$f" ] || missing+=("$peers/$f (../shared/peers: containerd 2.2.7, crictl 1.34)")
done
for p in bridge host-local portmap loopback; do
  [ -x "$cni_bin/$p" ] || missing+=("$cni_bin/$p (containernetworking-plugins)")
done
# The stand-in images: built (mmdebstrap, gcc; about a minute the first
# time) when missing, as tests/tests/cri.rs does before critest.
images_present() {
  [ -d "$regdata/docker/registry/v2/repositories/pause" ] &&
    [ -d "$regdata/docker/registry/v2/repositories/e2e-test-images/busybox" ]
}
mkimages=$top/../shared/critest/mkimages.py
if ! images_present && [ -x "$mkimages" ] && [ "$(id -u)" = 0 ]; then
  echo "building the stand-in images in $regdata ($mkimages)" >&2
  CRI_ORACLE_ROOT=$oracle "$mkimages" >&2 || true
fi
images_present || missing+=("the stand-in images in $regdata (../shared/critest/mkimages.py)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'missing: %s\n' "${missing[@]}" >&2
  exit 1
fi
peers=$(cd "$peers" && pwd)
containerd_bin=$peers/containerd
crictl=$peers/crictl
ctrd_version=$("$containerd_bin" --version | awk '{print $3}')

bench_build
bench_build -p berth-crid --example cri-pod-start
podstart=$bin/examples/cri-pod-start
scripts/build-shim.sh >&2
for b in berth-contentd berth-snapd berth-metad berth-taskd berth-crid; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is not built" >&2; exit 1; }
done
shim=$target/shim/containerd-shim-berth-v2
[ -x "$shim" ] || { echo "$shim is not built" >&2; exit 1; }

bench_workdir cri
work=$(cd "$work" && pwd)
ids_file=$work/out/ids
mkdir -p "$work/out"
: >"$ids_file"

# The binaries for scripts/cri-stack.sh: the release daemons and the
# shipped shim, copied into one directory. Copies, not links: taskd looks
# for the shim on its PATH, then beside its own (resolved) executable, and
# the processes are told apart by their executables.
bindir=$work/bin
mkdir -p "$bindir"
for b in berth-contentd berth-snapd berth-metad berth-taskd berth-crid; do cp "$bin/$b" "$bindir/$b"; done
cp "$shim" "$bindir/containerd-shim-berth-v2"
# Every pod's cgroups under one parent of this run (as the kubelet always
# gives one), on both sides.
cgparent=/cri-bench-${work##*.}

# CRI gives the pause container oom_score_adj -998; lowering a score needs
# CAP_SYS_RESOURCE (berth-crid checks for itself; containerd is told).
restrict_oom=false
capbnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
(((16#$capbnd >> 24) & 1)) || restrict_oom=true

# Configuration: the registry, the mirror, CNI for each side, containerd.
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $regdata
  maintenance:
    readonly:
      enabled: true
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:5100
YML
for h in registry.k8s.io 127.0.0.1:5100; do
  mkdir -p "$work/certs.d/$h"
  printf 'server = "http://127.0.0.1:5100"\n\n[host."http://127.0.0.1:5100"]\n  capabilities = ["pull", "resolve"]\n' \
    >"$work/certs.d/$h/hosts.toml"
done
conflist() { # name bridge subnet ipam-dir
  cat <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$1",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$2",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$3" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$4"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
}
mkdir -p "$work/berth/net.d" "$work/ctrd/net.d" "$work/ctrd/bin" "$work/ctrd/tmp" "$work/ctrd/opt" \
  "$work/ctrd/cdi" "$work/ctrd/nri-plugins" "$work/ctrd/nri-conf.d" "$work/ctrd/image-verifier"
conflist cri-bench-berth crib0 10.88.0.0/16 "$work/berth/cni-ipam" >"$work/berth/net.d/10-cri-bench.conflist"
conflist cri-bench-ctrd cric0 10.89.0.0/16 "$work/ctrd/cni-ipam" >"$work/ctrd/net.d/10-cri-bench.conflist"
ln -s "$peers/containerd-shim-runc-v2" "$work/ctrd/bin/containerd-shim-runc-v2"
ln -s "$(command -v runc)" "$work/ctrd/bin/runc"
# As critest's runner configures containerd 2.x: upstream defaults, private
# paths (state under the private /run).
cat >"$work/ctrd/config.toml" <<TOML
version = 3
root = '$work/ctrd/root'
state = '/run/bench-ctrd/state'
temp = '$work/ctrd/tmp'
imports = []

[grpc]
  address = '/run/bench-ctrd/containerd.sock'

[ttrpc]
  address = '/run/bench-ctrd/containerd.sock.ttrpc'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:3.10.1'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '$work/certs.d'

  [plugins.'io.containerd.cri.v1.runtime']
    cdi_spec_dirs = ['$work/ctrd/cdi']
    restrict_oom_score_adj = $restrict_oom
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$cni_bin']
      conf_dir = '$work/ctrd/net.d'

  [plugins.'io.containerd.internal.v1.opt']
    path = '$work/ctrd/opt'

  [plugins.'io.containerd.nri.v1.nri']
    socket_path = '/run/bench-ctrd/nri.sock'
    plugin_path = '$work/ctrd/nri-plugins'
    plugin_config_path = '$work/ctrd/nri-conf.d'

  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '$work/ctrd/image-verifier'
TOML
for side in berth ctrd; do
  if [ $side = berth ]; then ep=$work/berth/run/cri.sock; else ep=/run/bench-ctrd/containerd.sock; fi
  printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 120\ndebug: false\npull-image-on-create: false\n' \
    "$ep" "$ep" >"$work/$side.crictl.yaml"
done

# Cgroups before, to remove afterwards only what this run made.
cgroup_dirs() { find /sys/fs/cgroup -mindepth 1 -maxdepth 5 -type d 2>/dev/null | sort; }
cgroup_dirs >"$work/cgroups.before"

sandbox_pid=""
# At exit, before the kill -9 of bench_cleanup: ask the sandbox's PID 1 to
# remove its pods and stop its servers.
bench_cleanup_before() {
  [ -n "$sandbox_pid" ] && kill -0 "$sandbox_pid" 2>/dev/null || return 0
  local inner _
  inner=$(awk '{print $1}' "/proc/$sandbox_pid/task/$sandbox_pid/children" 2>/dev/null)
  [ -n "$inner" ] && kill -TERM "$inner" 2>/dev/null
  for _ in $(seq 600); do kill -0 "$sandbox_pid" 2>/dev/null || break; sleep 0.1; done
}
# After: nothing of ours may remain mounted on the host (the mounts were
# private to the namespaces); cgroups named after this run's pods and
# containers, deepest first, then new empty k8s.io and berth parents.
bench_cleanup_after() {
  if [ -n "$keep_logs" ]; then
    mkdir -p "$keep_logs"
    cp -r "$work/out/." "$keep_logs/" 2>/dev/null
    cp "$work"/berth/*.log "$keep_logs/" 2>/dev/null
  fi
  local d b ids h
  for h in /sys/fs/cgroup/*; do
    [ -d "$h$cgparent" ] && find "$h$cgparent" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  ids=$(awk '{print $3}' "$ids_file" 2>/dev/null | sort -u)
  comm -13 "$work/cgroups.before" <(cgroup_dirs) | awk -F/ '{print NF, $0}' | sort -rn | cut -d' ' -f2- |
    while read -r d; do
      b=$(basename "$d")
      case $b in
        k8s.io | berth) ;;
        *) grep -qxF -- "$b" <<<"$ids" || continue ;;
      esac
      rmdir "$d" 2>/dev/null
    done
  comm -13 "$work/cgroups.before" <(cgroup_dirs) | while read -r d; do
    b=$(basename "$d")
    if grep -qxF -- "$b" <<<"$ids" || [[ $d == *"$cgparent"* ]]; then echo "cleanup: cgroup left: $d" >&2; fi
  done
}

echo "berth-crid against containerd $ctrd_version's CRI: $rounds pod starts, then $pods pods ($parallel at a time); network $network" >&2
export work top bindir crictl podstart containerd_bin rounds warmup pods parallel settle base_path cgparent network
export shim_exe ctrd_shim_exe
shim_exe=$bindir/containerd-shim-berth-v2
ctrd_shim_exe=$(readlink -f "$peers/containerd-shim-runc-v2")
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY all_proxy ALL_PROXY
started=$(date +%s)
unshare --net --mount --ipc --pid --uts --fork --kill-child --mount-proc --propagation private -- \
  bash "$top/bench/lib/cri-sandbox.sh" &
sandbox_pid=$!
bench_track "$sandbox_pid"
rc=0
wait "$sandbox_pid" || rc=$?
elapsed=$(($(date +%s) - started))
o=$work/out
if [ $rc != 0 ] || [ ! -e "$o/finished" ]; then
  echo "the sandbox failed (exit $rc); its logs:" >&2
  for f in crid.log containerd.log registry.log; do
    [ -s "$o/$f" ] && { echo "--- $f (last 20 lines)" >&2; tail -20 "$o/$f" >&2; }
  done
  for f in "$work"/berth/*.log; do
    [ -s "$f" ] && { echo "--- $(basename "$f") (last 10 lines)" >&2; tail -10 "$f" >&2; }
  done
  for s in berth ctrd; do
    [ -s "$o/errors.$s" ] && { echo "--- errors.$s" >&2; head -20 "$o/errors.$s" >&2; }
  done
  exit 1
fi

# ------------------------------------------------------------ results
# Percentile by nearest rank of the numbers on stdin (µs in, ms out).
percentile() { # p
  sort -n | awk -v p="$1" '{a[NR]=$1} END {if (NR == 0) {print "-"; exit}; r = int((p * NR + 99) / 100); if (r < 1) r = 1; printf "%.1f\n", a[r] / 1000}'
}
ratio() { if [ "$1" = - ] || [ "$2" = - ]; then echo -; else printf '%.2f' "$(echo "$1 / $2" | bc -l)"; fi; }
met() { # ratio target(≤)
  if [ "$1" = - ]; then echo failed; elif [ "$(echo "$1 <= $2" | bc -l)" = 1 ]; then echo met; else echo missed; fi
}
declare -A med p90 step fails
for s in berth ctrd; do
  fails[$s]=$(grep -c fail "$o/start.$s" || true)
  grep -v fail "$o/start.$s" | awk '{print $1 + $2 + $3}' >"$o/total.$s"
  med[$s]=$(percentile 50 <"$o/total.$s")
  p90[$s]=$(percentile 90 <"$o/total.$s")
  for k in 1 2 3; do step[$s.$k]=$(grep -v fail "$o/start.$s" | awk -v k=$k '{print $k}' | percentile 50); done
done
read -r _ many_b_us many_b_n many_b_fail < <(grep '^berth ' "$o/many")
read -r _ many_c_us many_c_n many_c_fail < <(grep '^ctrd ' "$o/many")
many_b=$(echo "scale=2; $many_b_us / 1000000" | bc)
many_c=$(echo "scale=2; $many_c_us / 1000000" | bc)
[ "$many_b_n" = "$pods" ] || many_b=-
[ "$many_c_n" = "$pods" ] || many_c=-
read -r _ _ mb_d mb_dn mb_s mb_sn < <(grep '^many berth ' "$o/memory")
read -r _ _ mc_d mc_dn mc_s mc_sn < <(grep '^many ctrd ' "$o/memory")
read -r _ _ ib_d _ ib_s _ < <(grep '^idle berth ' "$o/memory")
read -r _ _ ic_d _ ic_s _ < <(grep '^idle ctrd ' "$o/memory")
read -r _ _ eb_d _ _ _ < <(grep '^end berth ' "$o/memory")
read -r _ _ ec_d _ _ _ < <(grep '^end ctrd ' "$o/memory")
mib() { awk -v n="$1" 'BEGIN {printf "%.1f", n / 1024}'; }
mem_b=$(mib $((mb_d + mb_s)))
mem_c=$(mib $((mc_d + mc_s)))
read -r _ rm_b_us rm_b_left < <(grep '^berth ' "$o/many-remove")
read -r _ rm_c_us rm_c_left < <(grep '^ctrd ' "$o/many-remove")

r_med=$(ratio "${med[berth]}" "${med[ctrd]}")
r_p90=$(ratio "${p90[berth]}" "${p90[ctrd]}")
r_many=$(ratio "$many_b" "$many_c")
r_mem=$(ratio "$mem_b" "$mem_c")
echo
echo "| measurement | berth | containerd $ctrd_version | berth/containerd | target | |"
echo "|---|---|---|---|---|---|"
printf '| pod start (runp + create + start), median of %s (ms) | %s | %s | %s | ≤ 0.5 | %s |\n' \
  "$rounds" "${med[berth]}" "${med[ctrd]}" "$r_med" "$(met "$r_med" 0.5)"
printf '| pod start, p90 of %s (ms) | %s | %s | %s | | |\n' "$rounds" "${p90[berth]}" "${p90[ctrd]}" "$r_p90"
printf '| %s pods, %s at a time: time to all running (s) | %s | %s | %s | ≤ 0.5 | %s |\n' \
  "$pods" "$parallel" "$many_b" "$many_c" "$r_many" "$(met "$r_many" 0.5)"
printf '| %s pods running: PSS of daemons + shims (MiB) | %s | %s | %s | ≤ 0.3 | %s |\n' \
  "$pods" "$mem_b" "$mem_c" "$r_mem" "$(met "$r_mem" 0.3)"
echo
echo "pod start, median per step (ms, the gRPC call alone):"
printf '  %-10s runp %s  create %s  start %s\n' berth "${step[berth.1]}" "${step[berth.2]}" "${step[berth.3]}"
printf '  %-10s runp %s  create %s  start %s\n' containerd "${step[ctrd.1]}" "${step[ctrd.2]}" "${step[ctrd.3]}"
echo "memory with $pods pods (MiB PSS): berth daemons $(mib "$mb_d") ($mb_dn processes) + shims $(mib "$mb_s") ($mb_sn);" \
  "containerd $(mib "$mc_d") ($mc_dn) + shims $(mib "$mc_s") ($mc_sn)"
for l in idle many end; do
  printf '  PSS per daemon, %s (KiB): %s\n' "$l" "$(awk -v l="$l" '$1 == l {printf "%s%s %s", sep, $3, $4; sep = ", "}' "$o/memory-detail")"
done
echo "memory idle before (MiB PSS): berth daemons $(mib "$ib_d") + shims $(mib "$ib_s"); containerd $(mib "$ic_d") + shims $(mib "$ic_s");" \
  "daemons at the end: berth $(mib "$eb_d"), containerd $(mib "$ec_d")"
echo "removing the $pods pods (crictl rmp -fa): berth $(echo "scale=2; $rm_b_us / 1000000" | bc) s, containerd $(echo "scale=2; $rm_c_us / 1000000" | bc) s;" \
  "shims left after 30 s: berth $rm_b_left, containerd $rm_c_left"
echo "failed: pod starts berth ${fails[berth]}, containerd ${fails[ctrd]}; $pods pods: berth $many_b_fail (running $many_b_n), containerd $many_c_fail (running $many_c_n)"
id_suffix=""
[ "$network" = cni ] || id_suffix="-$network"
[ "$CRI_POD_PID" = container ] || id_suffix="$id_suffix-shared-pid"
if [ "$network" = cni ]; then
  net_note="pods in their own netns through CNI (bridge + host-local + portmap, /usr/lib/cni)"
else
  net_note="host-network pods (no CNI)"
fi
echo "network: $net_note, both servers; PID namespace per $CRI_POD_PID; images from a local registry (stand-ins), pulled before timing"
echo "containerd $ctrd_version with containerd-shim-runc-v2 2.2.7; berth with the shipped containerd-shim-berth-v2; $(runc --version | sed -n 1p); cgroupfs"
echo "$(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%d); the sandbox ran $elapsed s"
for s in berth ctrd; do
  if [ -s "$o/errors.$s" ]; then
    echo
    echo "errors ($s, first 20 lines):"
    head -20 "$o/errors.$s"
  fi
done
if [ -s "$o/leftover-processes" ]; then
  echo
  echo "processes left in the namespaces before the servers were stopped:"
  cat "$o/leftover-processes"
fi

bench_result cri-pod-start"$id_suffix" "CRI pod start (runp + create + start), median of $rounds" ms "${med[berth]}" "${med[ctrd]}" lower 0.5 \
  "containerd $ctrd_version" "network $network; failed: berth ${fails[berth]}, containerd ${fails[ctrd]}"
bench_result cri-pod-start-p90"$id_suffix" "CRI pod start, p90 of $rounds" ms "${p90[berth]}" "${p90[ctrd]}" lower - "containerd $ctrd_version"
bench_result cri-many-pods"$id_suffix" "CRI: $pods pods ($parallel at a time) to all running" s "$many_b" "$many_c" lower 0.5 \
  "containerd $ctrd_version" "failed: berth $many_b_fail, containerd $many_c_fail"
bench_result cri-many-pss"$id_suffix" "CRI: PSS of daemons + shims with $pods pods" MiB "$mem_b" "$mem_c" lower 0.3 \
  "containerd $ctrd_version" "shims: berth $mb_sn, containerd $mc_sn"
