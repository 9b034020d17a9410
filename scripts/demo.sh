#!/usr/bin/env bash
# berth's main job, as far as the landed daemons go: start berth-contentd on
# a temporary root, store a blob through the CLI, read it back, resume an
# interrupted ingest, and stop the daemon. Needs no root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
bin="$PWD/target/release"

work=$(mktemp -d)
daemon=""
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

"$bin/berth-contentd" --root "$work/root" --state "$work/state" \
  --address "$work/run/contentd.sock" --log-level warn &
daemon=$!
for _ in $(seq 100); do [ -S "$work/run/contentd.sock" ] && break; sleep 0.05; done
export BERTH_CONTENTD_ADDRESS="$work/run/contentd.sock"

head -c 8388608 /dev/urandom >"$work/blob"
expected="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"

say "berth content ingest demo --expected $expected < blob"
"$bin/berth" content ingest demo --expected "$expected" --label demo=yes <"$work/blob"

say "berth content ls"
"$bin/berth" content ls

say "berth content get $expected | sha256sum"
"$bin/berth" content get "$expected" | sha256sum

say "an ingest interrupted after 3 MiB, then resumed"
head -c 3145728 "$work/blob" >"$work/part"
{ cat "$work/part"; sleep 1; } | "$bin/berth" content ingest resumable --expected "$expected" &
client=$!
sleep 0.5
kill -9 "$client" 2>/dev/null || true
wait "$client" 2>/dev/null || true
sleep 0.2
"$bin/berth" content active
"$bin/berth" content rm "$expected" >/dev/null
"$bin/berth" content ingest resumable --expected "$expected" <"$work/blob"

say "berth content info $expected --format json"
"$bin/berth" content info "$expected" --format json

say "berth --namespace other content ls   (another namespace sees nothing)"
"$bin/berth" --namespace other content ls

printf '\nberth-contentd round-tripped an 8 MiB blob and resumed an interrupted ingest.\n'
