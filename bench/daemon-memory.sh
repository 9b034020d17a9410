#!/usr/bin/env bash
# Daemon memory after a pull: berth-contentd's, berth-snapd's and
# berth-metad's RSS idle, then sampled every half second for 5 s after
# `berth pull` of the 60 MB single-layer minbase image ends; containerd's
# RSS idle and 5 s after `ctr images pull` of the same image beside it.
# Target (docs/benchmarks.md): each berth daemon back to at most 8 MiB
# within 5 s.
#
# usage: bench/daemon-memory.sh   (as root; KEEP_SMAPS=DIR keeps the daemons'
# smaps at 5 s there; BERTH_BENCH_ROOTFS=FILE reuses a
# minbase tar instead of building one with mmdebstrap; BENCH_RESULTS=FILE
# appends result rows for bench/all.sh)
set -euo pipefail

# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
bench_build
bench_workdir memory

# shellcheck source=lib/minbase-registry.sh
. "$top/bench/lib/minbase-registry.sh"
# shellcheck source=lib/containerd.sh
. "$top/bench/lib/containerd.sh"

rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

root="$work/berth"
start_berth contentd snapd metad "$root"
contentd=$(cat "$root/contentd.pid")
snapd=$(cat "$root/snapd.pid")
metad=$(cat "$root/metad.pid")
sleep 1
idle_c=$(rss_kib "$contentd")
idle_s=$(rss_kib "$snapd")
idle_m=$(rss_kib "$metad")
"$bin/berth" pull -q "127.0.0.1:$port/debian:single" >/dev/null
samples=()
for i in $(seq 0 10); do
  samples+=("$i $(rss_kib "$contentd") $(rss_kib "$snapd") $(rss_kib "$metad")")
  sleep 0.5
done

# Where the rest is, 5 s after: anonymous vs file-backed (LMDB's map),
# and threads.
detail() { awk '/^(RssAnon|RssFile|Threads):/{printf "%s %s ", $1, $2} END {print ""}' "/proc/$1/status"; }
detail_c=$(detail "$contentd")
detail_s=$(detail "$snapd")
# KEEP_SMAPS=DIR: each daemon's smaps at 5 s, to see which mappings hold it.
if [ -n "${KEEP_SMAPS:-}" ]; then
  mkdir -p "$KEEP_SMAPS"
  cp "/proc/$contentd/smaps" "$KEEP_SMAPS/contentd.smaps"
  cp "/proc/$snapd/smaps" "$KEEP_SMAPS/snapd.smaps"
  for t in /proc/$snapd/task/*; do echo "$(cat "$t/comm")"; done >"$KEEP_SMAPS/snapd.threads"
  for t in /proc/$contentd/task/*; do echo "$(cat "$t/comm")"; done >"$KEEP_SMAPS/contentd.threads"
fi

start_containerd "$work/ctrd"
sleep 1
ctrd_idle=$(rss_kib "$containerd_pid")
ctr -a "$work/ctrd/c.sock" images pull --plain-http "127.0.0.1:$port/debian:single" >/dev/null
sleep 5
ctrd_rss=$(rss_kib "$containerd_pid")

printf '\n| after the pull (s) | berth-contentd RSS (KiB) | berth-snapd RSS (KiB) | berth-metad RSS (KiB) |\n|---|---|---|---|\n'
printf '| idle, before | %s | %s | %s |\n' "$idle_c" "$idle_s" "$idle_m"
for s in "${samples[@]}"; do
  set -- $s
  printf '| %s | %s | %s | %s |\n' "$(echo "$1 * 0.5" | bc -l | sed 's/^\./0./;s/\.0$//')" "$2" "$3" "$4"
done
printf '\nat 5 s: berth-contentd %s\n       berth-snapd %s\n' "$detail_c" "$detail_s"
printf '\ncontainerd %s RSS idle: %s KiB; 5 s after ctr images pull of the same image: %s KiB\n' \
  "$(containerd_version)" "$ctrd_idle" "$ctrd_rss"
printf '%s, %s cores\n' "$(uname -r)" "$(nproc)"

set -- ${samples[10]}
at5_c=$2 at5_s=$3 at5_m=$4
bench_result memory-rss-idle "daemon RSS idle (contentd+snapd+metad)" MiB \
  "$(mib $((idle_c + idle_s + idle_m)))" "$(mib "$ctrd_idle")" lower -
bench_result memory-rss-pull "daemon RSS 5 s after a pull (contentd+snapd+metad)" MiB \
  "$(mib $((at5_c + at5_s + at5_m)))" "$(mib "$ctrd_rss")" lower - containerd \
  "contentd $(mib "$at5_c"), snapd $(mib "$at5_s"), metad $(mib "$at5_m") MiB (target: each at most 8)"
