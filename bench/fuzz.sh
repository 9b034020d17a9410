#!/usr/bin/env bash
# Fuzzing: every target of fuzz/ (coverage-guided, libFuzzer through
# cargo fuzz on the nightly toolchain, with AddressSanitizer), each for
# FUZZ_SECONDS, starting from the seeds in fuzz/seeds/TARGET and from what
# earlier runs kept (the corpus, under $FUZZ_DIR). Prints one row per
# target: time, executions, executions per second, coverage (edges
# libFuzzer saw), corpus size and findings. A finding (crash, panic,
# timeout, leak) is kept under $FUZZ_DIR/artifacts/TARGET; each one becomes
# a regression test before it is fixed.
#
# layer_apply, layer_stream and ttrpc_requests run as an unprivileged user
# (nobody): they write files (ttrpc_requests: the daemons' stores, and
# snapd's Diff would mount), and a bug must not be able to write where root
# can.
#
# usage: bench/fuzz.sh [TARGET...]   (as root; all targets by default)
# environment: FUZZ_SECONDS=60 per target, FUZZ_DIR=/var/tmp/berth-fuzz
#   (corpus, artifacts and logs, kept between runs). Not part of
#   bench/all.sh: there is no peer to compare with.
set -euo pipefail
export LC_ALL=C
top=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
dir=${FUZZ_DIR:-/var/tmp/berth-fuzz}
all=(reference image_document filters auth_challenge hosts_toml layer_apply shim_options ids layer_stream archive_import ttrpc_requests)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

rustup toolchain list | grep -q '^nightly' || {
  echo "cargo fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked >&2
cd "$top/fuzz"
cargo +nightly fuzz build -O >&2
bin_dir=$top/fuzz/target/x86_64-unknown-linux-gnu/release
mkdir -p "$dir"

printf '| target | seconds | executions | executions/s | coverage (edges) | corpus | findings |\n|---|---|---|---|---|---|---|\n'
found=0
for t in "${targets[@]}"; do
  [ -x "$bin_dir/$t" ] || { echo "no fuzz target $t" >&2; exit 2; }
  corpus=$dir/corpus/$t
  artifacts=$dir/artifacts/$t
  log=$dir/$t.log
  mkdir -p "$corpus" "$artifacts"
  run=("$bin_dir/$t" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
    -artifact_prefix="$artifacts/" "$corpus" "$top/fuzz/seeds/$t")
  if [ "$t" = layer_apply ] || [ "$t" = layer_stream ] || [ "$t" = ttrpc_requests ]; then
    # The corpus and findings must be the user's to write; the binary
    # and seeds only readable.
    chown -R nobody "$corpus" "$artifacts"
    (cd /tmp && setpriv --reuid=nobody --regid=nogroup --clear-groups -- "${run[@]}") >"$log" 2>&1 || true
  else
    "${run[@]}" >"$log" 2>&1 || true
  fi
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  size=$(find "$corpus" -type f | wc -l)
  findings=$(find "$artifacts" -type f | wc -l)
  found=$((found + findings))
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$size" "$findings"
done
echo
echo "$(uname -r), $(nproc) cores, $(rustc +nightly --version), $(date -u +%Y-%m-%d); logs, corpus and findings in $dir"
[ "$found" = 0 ] || { echo "findings: $found (see $dir/artifacts)" >&2; exit 1; }
