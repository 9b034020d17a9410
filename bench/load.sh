#!/usr/bin/env bash
# Heavy and idle local callers, the long version of the CI test in
# tests/tests/load.rs (many_clients_then_many_idle_connections):
# - 64 clients, each with its own connections through berth-client, mix
#   ingest (1 KiB to 4 MiB blobs), content list and info, image list and
#   get, pull of four small images from a local registry (first pulls and
#   no-op re-pulls), image removal and gc, each in a namespace of its own,
#   for BERTH_LOAD_SECONDS;
# - then 1,000 idle connections to each daemon's socket are held open
#   while new clients make requests and a pull, and closed again.
#
# Prints the test's markdown table: per method count, errors, p50, p99
# and max latency; per daemon peak RSS (VmHWM) and its bound, most
# threads, RSS and descriptors before, with and after the idle
# connections, and a new client's latency while they are open. Exits 1 if
# the test failed (any error, a bound exceeded); its output is kept in
# $LOAD_LOG.
#
# usage: bench/load.sh   (as root)
# environment: BERTH_LOAD_SECONDS=60, BERTH_LOAD_CLIENTS=64,
#   LOAD_LOG=/var/tmp/berth-load.log. Not part of bench/all.sh: there is
#   no peer to compare with.
set -euo pipefail
export LC_ALL=C
top=$(cd "$(dirname "$0")/.." && pwd)
seconds=${BERTH_LOAD_SECONDS:-60}
log=${LOAD_LOG:-/var/tmp/berth-load.log}
report=$(mktemp)
trap 'rm -f "$report"' EXIT

cd "$top"
cargo build --workspace --bins >&2
status=0
BERTH_LOAD_SECONDS=$seconds BERTH_LOAD_REPORT=$report \
  cargo test -p berth-e2e --test load many_clients_then_many_idle_connections \
  -- --nocapture --exact >"$log" 2>&1 || status=$?
[ -s "$report" ] || { echo "no report: see $log" >&2; exit 2; }
cat "$report"
[ "$status" -eq 0 ] || echo "the test failed: see $log" >&2
exit $status
