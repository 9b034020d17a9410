#!/usr/bin/env bash
# The inner half of bench/cri.sh; do not run it directly. It is PID 1 of
# fresh net, mount, ipc, pid and uts namespaces (unshare --propagation
# private): it mounts tmpfs over /run, /var/lib/cni and berth's state
# directory (so runtime state, netns files, shim sockets and CNI caches never
# touch the host), brings up lo, starts the read-only stand-in registry,
# containerd 2.2.7 with its CRI plugin and the berth stack with berth-crid,
# side by side, and measures them with crictl. Results go to $work/out as
# plain text for bench/cri.sh; at the end it removes every pod through the
# CRI, stops the servers (by pid) and exits, and the namespaces take
# whatever is left with them.
#
# Environment (from bench/cri.sh): work top bindir crictl podstart
# containerd_bin rounds warmup pods parallel settle base_path shim_exe ctrd_shim_exe
# cgparent network
# shellcheck disable=SC2154 # those variables
# shellcheck disable=SC2317 # functions called from traps
set -u -o pipefail
export LC_ALL=C

out=$work/out
mkdir -p "$out"
log() { echo "[cri-bench $(date +%T)] $*" >&2; }

stopping=0
trap 'stopping=1; exit 143' TERM INT

mount -t tmpfs -o mode=755,size=1g cri-bench-run /run || { log "cannot mount a private /run"; exit 2; }
# libcni caches every attachment's result there (containerd does; the host
# directory exists here): a private one.
if [ -d /var/lib/cni ]; then mount -t tmpfs -o mode=700 cri-bench-cni /var/lib/cni || exit 2; fi
ip link set lo up || { log "cannot bring up lo"; exit 2; }
mkdir -p "$work/berth/run" /run/bench-ctrd
mount -t tmpfs -o mode=755,size=512m cri-bench-berth "$work/berth/run" || exit 2
export PATH=$base_path

# ------------------------------------------------------------ processes
reg_pid="" ctrd_pid="" berth_pid=""
stop_one() { # pid what
  local p=$1 i
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 150); do
    kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null; return 0; }
    sleep 0.1
  done
  log "$2 (pid $p) did not stop in 15 s: SIGKILL"
  kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
}

cri() { # side crictl-args...
  local side=$1
  shift
  "$crictl" -c "$work/$side.crictl.yaml" "$@"
}

teardown() {
  set +e
  trap - TERM INT
  local side
  for side in berth ctrd; do
    if [ -S "$(endpoint_path "$side")" ]; then
      timeout 300 "$crictl" -c "$work/$side.crictl.yaml" rmp -fa >>"$out/teardown.log" 2>&1
    fi
  done
  # What is left in the namespaces besides us, the servers and the registry
  # (there should be nothing: no shim, no pause, no sleep).
  {
    local p
    for p in /proc/[0-9]*; do
      p=${p#/proc/}
      case " 1 $$ $BASHPID $reg_pid $ctrd_pid $berth_pid $(berth_pids | tr '\n' ' ') " in *" $p "*) continue ;; esac
      [ -e "/proc/$p/exe" ] || continue
      echo "$p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"
    done
  } >"$out/leftover-processes"
  # berth-crid first (its stack script stops the other daemons), then
  # containerd, then the registry.
  stop_one "$berth_pid" "the berth stack"
  stop_one "$ctrd_pid" containerd
  stop_one "$reg_pid" registry
}
trap teardown EXIT

endpoint_path() { if [ "$1" = berth ]; then echo "$work/berth/run/cri.sock"; else echo /run/bench-ctrd/containerd.sock; fi; }

# ------------------------------------------------------------ registry
reg_env=()
while read -r v; do reg_env+=(-u "$v"); done < <(env | sed -n 's/^\(REGISTRY_[A-Za-z0-9_]*\)=.*/\1/p')
setsid env ${reg_env[@]+"${reg_env[@]}"} docker-registry serve "$work/registry.yml" >"$out/registry.log" 2>&1 </dev/null &
reg_pid=$!
for _ in $(seq 100); do
  curl -sf --noproxy '*' -o /dev/null http://127.0.0.1:5100/v2/ && break
  kill -0 "$reg_pid" 2>/dev/null || break
  sleep 0.1
done
curl -sf --noproxy '*' -o /dev/null http://127.0.0.1:5100/v2/ || { log "the registry did not answer"; exit 2; }

# ------------------------------------------------------------ the two CRI servers
# containerd: its own shim and runc first on its PATH.
setsid env PATH="$work/ctrd/bin:$base_path" "$containerd_bin" --config "$work/ctrd/config.toml" \
  >"$out/containerd.log" 2>&1 </dev/null &
ctrd_pid=$!
# berth: contentd, snapd, metad, taskd and berth-crid (scripts/cri-stack.sh),
# the shipped shim first on the PATH (the binaries' directory, $bindir).
CRI_ORACLE_CERTS_D="$work/certs.d" CRI_ORACLE_CNI_CONF_DIR="$work/berth/net.d" \
  CRI_ORACLE_CNI_BIN_DIR=/usr/lib/cni CRI_ORACLE_SANDBOX_IMAGE=registry.k8s.io/pause:3.10.1 \
  BERTH_BIN="$bindir" PATH="$bindir:$base_path" setsid "$top/scripts/cri-stack.sh" "$work/berth" >"$out/crid.log" 2>&1 </dev/null &
berth_pid=$!

# The processes of one side, by executable, among this pid namespace's.
exe_of() { readlink "/proc/$1/exe" 2>/dev/null; }
pids_of_exe() { # exe...
  local p e x
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    e=$(exe_of "$p") || continue
    for x in "$@"; do [ "$e" = "$x" ] && { echo "$p"; break; }; done
  done
}
berth_daemon_exes=()
for d in contentd snapd metad taskd crid; do berth_daemon_exes+=("$bindir/berth-$d"); done
berth_pids() { pids_of_exe "${berth_daemon_exes[@]}"; }
daemon_pids() { if [ "$1" = berth ]; then berth_pids; else echo "$ctrd_pid"; fi; }
shim_pids() { if [ "$1" = berth ]; then pids_of_exe "$shim_exe"; else pids_of_exe "$ctrd_shim_exe"; fi; }
pss_sum() { # pids on stdin -> "KiB count"
  local p s=0 n=0 v
  while read -r p; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
    [ -n "$v" ] || continue
    s=$((s + v)); n=$((n + 1))
  done
  echo "$s $n"
}
# "daemons_kib daemons shims_kib shims"; each daemon's PSS into
# $out/memory-detail under LABEL.
memory() { # side label
  local p
  for p in $(daemon_pids "$1"); do
    echo "$2 $1 $(basename "$(exe_of "$p")") $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null)"
  done >>"$out/memory-detail"
  echo "$(daemon_pids "$1" | pss_sum) $(shim_pids "$1" | pss_sum)"
}

net_ready() {
  python3 -c 'import json, sys
conds = json.load(open(sys.argv[1])).get("status", {}).get("conditions", [])
sys.exit(0 if any(c.get("type") == "NetworkReady" and c.get("status") for c in conds) else 1)' "$1" 2>/dev/null
}
for side in ctrd berth; do
  ready=0
  for _ in $(seq 300); do
    if cri "$side" info >"$out/$side.info.json" 2>/dev/null && net_ready "$out/$side.info.json"; then
      ready=1
      break
    fi
    [ $stopping = 0 ] || exit 143
    sleep 0.2
  done
  [ $ready = 1 ] || { log "$side: the CRI server did not become ready (NetworkReady); see $out"; exit 2; }
done
[ -n "$(berth_pids)" ] || { log "no berth daemons found by executable"; exit 2; }
log "both CRI servers answer: containerd pid $ctrd_pid, berth daemons $(berth_pids | tr '\n' ' ')"

pause=registry.k8s.io/pause:3.10.1
busybox=registry.k8s.io/e2e-test-images/busybox:1.29-2
for side in ctrd berth; do
  for image in "$pause" "$busybox"; do
    cri "$side" pull "$image" >/dev/null || { log "$side: pull $image failed"; exit 2; }
  done
done
log "images pulled into both"

# ------------------------------------------------------------ pods
# Pod ids and log directories. network=host puts the pods (and their
# containers) in the host's, here the sandbox's, network namespace: no CNI.
cfg=$work/cfg
mkdir -p "$cfg" "$work/podlogs"
# Microseconds now (no subshell).
now() { local t=$EPOCHREALTIME; printf -v "$1" '%s' "${t/./}"; }

# One pod with its container, started: prints "runp create start" in µs,
# as the client (bins/crid/examples/cri-pod-start.rs, $podstart) timed the
# three gRPC calls over a connection it made first.
start_pod() { # side name
  local side=$1 name=$2 r us1 us2 us3 pod ctr
  mkdir -p "$work/podlogs/$side-$name"
  r=$("$podstart" "$(endpoint_path "$side")" "$name" cri-bench "$side-$name" "$work/podlogs/$side-$name" \
    "$cgparent" "$network" "$busybox" 2>>"$out/errors.$side") || { echo "pod start $name failed" >>"$out/errors.$side"; return 1; }
  read -r us1 us2 us3 pod ctr <<<"$r"
  printf '%s pod %s\n%s container %s\n' "$side" "$pod" "$side" "$ctr" >>"$out/ids"
  echo "$pod" >"$cfg/$side-$name.id"
  echo "$us1 $us2 $us3"
}
remove_pod() { # side name
  local pod
  pod=$(cat "$cfg/$1-$2.id" 2>/dev/null) || return 0
  cri "$1" stopp "$pod" >/dev/null 2>>"$out/errors.$1"
  cri "$1" rmp "$pod" >/dev/null 2>>"$out/errors.$1"
  rm -f "$cfg/$1-$2.id"
}

mem_idle_berth=$(memory berth idle)
mem_idle_ctrd=$(memory ctrd idle)
echo "idle berth $mem_idle_berth" >>"$out/memory"
echo "idle ctrd $mem_idle_ctrd" >>"$out/memory"

# ------------------------------------------------------------ 1. pod start
log "pod start: $warmup warm-ups, $rounds rounds, alternating"
for i in $(seq "$warmup"); do
  for side in berth ctrd; do
    start_pod "$side" "warm-$i" >/dev/null
    remove_pod "$side" "warm-$i"
  done
done
: >"$out/start.berth"
: >"$out/start.ctrd"
for i in $(seq "$rounds"); do
  if [ $((i % 2)) = 1 ]; then order="berth ctrd"; else order="ctrd berth"; fi
  for side in $order; do
    if r=$(start_pod "$side" "round-$i"); then echo "$r" >>"$out/start.$side"; else echo fail >>"$out/start.$side"; fi
    remove_pod "$side" "round-$i"
  done
done

# ------------------------------------------------------------ 2. many pods
worker() { # side first step
  local side=$1 n=$2 fails=0
  while [ "$n" -le "$pods" ]; do
    start_pod "$side" "many-$n" >/dev/null || fails=$((fails + 1))
    n=$((n + $3))
  done
  echo "$fails" >"$cfg/fails.$side.$2"
}
running() { cri "$1" ps -q --state running 2>/dev/null | grep -c . ; }
for side in berth ctrd; do
  log "$side: $pods pods, $parallel at a time"
  now t0
  ws=()
  for w in $(seq "$parallel"); do
    worker "$side" "$w" "$parallel" &
    ws+=($!)
  done
  wait "${ws[@]}"
  fails=0
  for w in $(seq "$parallel"); do fails=$((fails + $(cat "$cfg/fails.$side.$w"))); done
  want=$((pods - fails))
  n=0
  for _ in $(seq 600); do
    n=$(running "$side")
    [ "$n" -lt "$want" ] || break
    sleep 0.1
  done
  now t1
  echo "$side $((t1 - t0)) $n $fails" >>"$out/many"
  log "$side: $n running after $(((t1 - t0) / 1000)) ms, $fails failed"
  sleep "$settle"
  m=$(memory "$side" many)
  echo "many $side $m" >>"$out/memory"
  log "$side: memory with $n pods (daemons KiB, count, shims KiB, count): $m"
  # Every process of the namespace, by executable, for the record.
  for p in /proc/[0-9]*; do exe_of "${p#/proc/}"; echo; done | grep . | sort | uniq -c >"$out/processes.$side"
  now t0
  cri "$side" rmp -fa >/dev/null 2>>"$out/errors.$side"
  now t1
  for _ in $(seq 300); do [ -z "$(shim_pids "$side")" ] && break; sleep 0.1; done
  echo "$side $((t1 - t0)) $(shim_pids "$side" | grep -c .)" >>"$out/many-remove"
  rm -f "$cfg/$side"-many-*.id
done

mem_end_berth=$(memory berth end)
mem_end_ctrd=$(memory ctrd end)
echo "end berth $mem_end_berth" >>"$out/memory"
echo "end ctrd $mem_end_ctrd" >>"$out/memory"
echo finished >"$out/finished"
exit 0
