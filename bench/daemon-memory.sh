#!/usr/bin/env bash
# Daemon memory after a pull: berth-contentd's and berth-snapd's RSS idle,
# then sampled every half second for 5 s after `berth pull` of the 60 MB
# single-layer minbase image ends; containerd's RSS after `ctr images pull`
# of the same image beside it. Target (docs/benchmarks.md): each berth
# daemon back to at most 8 MiB within 5 s.
#
# usage: bench/daemon-memory.sh   (as root; BERTH_BENCH_ROOTFS=FILE reuses a
# minbase tar instead of building one with mmdebstrap)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
cargo build --release --workspace --bins >&2
bin="$top/target/release"

work=$(mktemp -d /var/tmp/berth-memory-bench.XXXXXX)
pids=()
cleanup() {
  set +e
  if [ -f "$work/pids" ]; then
    while read -r pid; do pids+=("$pid"); done <"$work/pids"
  fi
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=lib/minbase-registry.sh
. "$top/bench/lib/minbase-registry.sh"
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"

start_daemon() { # name root extra...
  local name=$1 root=$2; shift 2
  "$bin/berth-$name" --root "$root/$name/root" --state "$root/$name/state" \
    --address "$root/$name.sock" --log-level warn "$@" >"$root/$name.log" 2>&1 &
  echo $! >>"$work/pids"
  echo $! >"$root/$name.pid"
  for _ in $(seq 200); do [ -S "$root/$name.sock" ] && return; sleep 0.02; done
  echo "berth-$name did not start" >&2
  return 1
}

rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

root="$work/berth"
mkdir -p "$root"
start_daemon contentd "$root"
start_daemon snapd "$root" --contentd "$root/contentd.sock"
start_daemon metad "$root" --contentd "$root/contentd.sock" --snapd "$root/snapd.sock"
contentd=$(cat "$root/contentd.pid")
snapd=$(cat "$root/snapd.pid")
sleep 1
idle_c=$(rss_kib "$contentd")
idle_s=$(rss_kib "$snapd")
"$bin/berth" --contentd "$root/contentd.sock" --snapd "$root/snapd.sock" \
  --metad "$root/metad.sock" pull -q "127.0.0.1:$port/debian:single" >/dev/null
samples=()
for i in $(seq 0 10); do
  samples+=("$i $(rss_kib "$contentd") $(rss_kib "$snapd")")
  sleep 0.5
done

# Where the rest is, 5 s after: anonymous vs file-backed (LMDB's map),
# and threads.
detail() { awk '/^(RssAnon|RssFile|Threads):/{printf "%s %s ", $1, $2} END {print ""}' "/proc/$1/status"; }
detail_c=$(detail "$contentd")
detail_s=$(detail "$snapd")

start_containerd "$work/ctrd"
ctr -a "$work/ctrd/c.sock" images pull --plain-http "127.0.0.1:$port/debian:single" >/dev/null
sleep 5
ctrd_rss=$(rss_kib "$containerd_pid")

printf '\n| after the pull (s) | berth-contentd RSS (KiB) | berth-snapd RSS (KiB) |\n|---|---|---|\n'
printf '| idle, before | %s | %s |\n' "$idle_c" "$idle_s"
for s in "${samples[@]}"; do
  set -- $s
  printf '| %s | %s | %s |\n' "$(echo "$1 * 0.5" | bc -l | sed 's/^\./0./;s/\.0$//')" "$2" "$3"
done
printf '\nat 5 s: berth-contentd %s\n       berth-snapd %s\n' "$detail_c" "$detail_s"
printf '\ncontainerd %s RSS 5 s after ctr images pull of the same image: %s KiB\n' \
  "$(containerd --version | awk '{print $3}')" "$ctrd_rss"
printf '%s, %s cores\n' "$(uname -r)" "$(nproc)"
