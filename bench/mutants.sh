#!/usr/bin/env bash
# Mutation testing of berth's safety-critical code with cargo-mutants: each
# area names the files (and, where a file mixes concerns, the functions)
# whose mutants must be caught, and the tests that are meant to catch them.
#
#   bench/mutants.sh                 every area
#   bench/mutants.sh peer gc-mark    only those areas
#   bench/mutants.sh --list          the areas and how many mutants each has
#
# Results: target/mutants/<area>/mutants.out/{caught,missed,timeout,unviable}.txt
# (or under $BERTH_MUTANTS_OUT; BERTH_MUTANTS_TIMEOUT=SECONDS sets the
# test timeout of the unit-test areas; BERTH_MUTANTS_ITERATE=1 tests only
# what the previous run there left uncaught)
# and a summary table on stdout (docs/testing.md records the figures and
# explains each survivor that is equivalent).
#
# Run as root: the tests behind several areas mount filesystems, create
# users or start containerd. On this 2-core machine the whole run takes
# hours; one area takes minutes to an hour (see docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if ! command -v cargo-mutants >/dev/null 2>&1; then
  cargo install --locked cargo-mutants
fi
# A test whose prerequisite is missing skips outside CI, and every mutant
# it should catch would survive: install what the tests need, and make a
# missing prerequisite fail the baseline instead.
scripts/prerequisites.sh tests
export CI=true
# cargo-mutants tests a copy of the tree under /tmp, which has no
# ../shared beside it: point the tests at this tree's (the peers'
# containerd 2.2.7 and crictl are there).
if [ -z "${BERTH_SHARED_DIR:-}" ] && [ -d "$repo/../shared" ]; then
  BERTH_SHARED_DIR=$(cd "$repo/../shared" && pwd)
  export BERTH_SHARED_DIR
fi

# One target directory outside the tree, kept between runs: the copies
# cargo-mutants makes of the tree reuse the compiled dependencies instead
# of building the workspace from scratch for every area. It grows by a few
# GiB per area (every mutant leaves test binaries and incremental state):
# the incremental state is dropped after each area, and the directory can
# be deleted whenever no run is going.
export CARGO_TARGET_DIR=${BERTH_MUTANTS_TARGET:-/var/tmp/berth-mutants-target}
out=${BERTH_MUTANTS_OUT:-$repo/target/mutants}
mkdir -p "$out"

# area | files (comma-separated) | function filter (regex, or -) |
# test package | cargo test target selection
#
# One test package per area; an end-to-end area may add the unit tests of
# the crate it mutates (`-p CRATE --lib` among its targets: cargo takes
# several packages as long as one of them has each `--test` named). The
# end-to-end tests (berth-e2e) start
# the daemons' binaries; with BERTH_E2E_BUILD=1 they build them from the
# mutated copy first, so the mutant is in the daemon they test.
areas='
ids|libs/ids/src/validate.rs,libs/ids/src/digest.rs|-|berth-ids|--lib
metadata-validate|libs/metadata/src/validate.rs|-|berth-metadata|--lib
peer|libs/daemon/src/peer.rs|-|berth-e2e|-p berth-daemon --lib --test contentd
gc-mark|bins/metad/src/gc/mark.rs|-|berth-metad|--lib
conditional-deletes|bins/contentd/src/store.rs,bins/snapd/src/local.rs|if_unchanged|berth-e2e|--test gc_collect --test content_remote --test snapd_remote
content-ingest|bins/contentd/src/ingest.rs,bins/contentd/src/store.rs|-|berth-contentd|--lib --test local_conformance --test recovery
snapd-apply|bins/snapd/src/apply.rs|-|berth-snapd|--lib --test apply_breakouts --test native_copy
snapd-unpack|bins/snapd/src/unpack.rs|-|berth-e2e|-p berth-snapd --lib --test snapd_unpack --test snapd_cli
snapd-diff|bins/snapd/src/diff.rs|-|berth-e2e|-p berth-snapd --lib --test snapd_cli
shim-options|bins/shim/src/options.rs,bins/shim/src/info.rs|-|containerd-shim-berth-v2|--lib --test binary
network|libs/network/src/bridge.rs,libs/network/src/cni.rs|-|berth-network|--lib
shim-kill-exit|bins/shim/src/tasks.rs,bins/shim/src/exits.rs,bins/shim/src/container.rs,bins/shim/src/process.rs|(kill|exit|wait|claim|start_init|start_exec)|containerd-shim-berth-v2|--lib --test ctr -- --skip ::runc::
'
export BERTH_E2E_BUILD=1

list=false
wanted=()
for arg in "$@"; do
  case "$arg" in
    --list) list=true ;;
    *) wanted+=("$arg") ;;
  esac
done

selected() {
  [ ${#wanted[@]} -eq 0 ] && return 0
  local w
  for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

summary=()
while IFS='|' read -r area files filter packages targets; do
  [ -n "$area" ] || continue
  # The shim area's filter holds '|': the fields after it are the rest.
  if [ "$area" = shim-kill-exit ]; then
    filter='(?i)(kill|exit|wait|claim|start_init|start_exec)'
    packages=containerd-shim-berth-v2
    # ctr.rs runs every case against the Go shim too (`vNN::runc::*`),
    # which a mutant of berth's shim cannot change: skipped here.
    targets='--lib --test ctr -- --skip ::runc::'
  fi
  selected "$area" || continue
  args=()
  IFS=',' read -ra fs <<<"$files"
  for f in "${fs[@]}"; do args+=(--file "$f"); done
  [ "$filter" = - ] || args+=(--re "$filter")
  # cargo-mutants 27.1 runs the baseline's tests in the mutated package
  # whatever --test-package or --test-workspace say (`cargo test
  # --package=berth-snapd --test snapd_unpack`, which fails), and with
  # --test-workspace it builds every test of the workspace for every
  # mutant. So the end-to-end areas run their baseline here, skip
  # cargo-mutants', and name their test targets as cargo arguments, so that
  # each mutant builds and runs just those.
  baseline=()
  if [ "$packages" = berth-e2e ]; then
    args+=(--test-package berth-e2e)
    # shellcheck disable=SC2086 # the target selection is several words
    for t in $targets; do args+=("--cargo-arg=$t"); done
  else
    args+=(--test-package "$packages")
  fi
  if $list; then
    printf '%-20s %s\n' "$area" "$(cargo mutants --list "${args[@]}" | wc -l)"
    continue
  fi
  # BERTH_MUTANTS_ITERATE=1: test only what the last run of this area (in
  # the same output directory) did not catch: an "after" run.
  iterate=()
  [ -z "${BERTH_MUTANTS_ITERATE:-}" ] || iterate=(--iterate)
  start=$(date +%s)
  if [ "$packages" = berth-e2e ]; then
    echo "== $area: baseline (cargo test -p berth-e2e $targets)"
    # shellcheck disable=SC2086
    if ! cargo test -p berth-e2e $targets; then
      echo "== $area: the baseline fails; no mutant tested" >&2
      summary+=("| $area | baseline failed |")
      continue
    fi
    # The timeout is five times a second, warm run of the baseline (the
    # first one built everything), plus time for a mutant's tests to
    # rebuild the daemons (BERTH_E2E_BUILD).
    warm=$(date +%s)
    # shellcheck disable=SC2086
    cargo test -p berth-e2e $targets >/dev/null 2>&1
    secs=$(( $(date +%s) - warm ))
    baseline=(--baseline=skip --build-timeout 1200 --timeout $(( 5 * secs + 180 )))
    echo "== $area: warm baseline ${secs}s, test timeout $(( 5 * secs + 180 ))s"
    # shellcheck disable=SC2086 # the target selection is several words
    cargo mutants "${args[@]}" "${baseline[@]}" "${iterate[@]}" --jobs 1 --no-shuffle \
      --output "$out/$area" || true
  else
    # BERTH_MUTANTS_TIMEOUT (seconds) overrides cargo-mutants' own test
    # timeout (five times the baseline's), which a run with many hanging
    # mutants pays in full for each.
    timeout=()
    [ -z "${BERTH_MUTANTS_TIMEOUT:-}" ] || timeout=(--timeout "$BERTH_MUTANTS_TIMEOUT")
    # shellcheck disable=SC2086 # the target selection is several words
    cargo mutants "${args[@]}" "${timeout[@]}" "${iterate[@]}" --jobs 1 --no-shuffle \
      --output "$out/$area" -- $targets || true
  fi
  secs=$(( $(date +%s) - start ))
  rm -rf "$CARGO_TARGET_DIR/debug/incremental"
  dir="$out/$area/mutants.out"
  count() { [ -f "$dir/$1.txt" ] && wc -l <"$dir/$1.txt" || echo 0; }
  summary+=("$(printf '| %s | %s | %s | %s | %s | %s | %s |' "$area" \
    "$(( $(count caught) + $(count missed) + $(count timeout) + $(count unviable) ))" \
    "$(count caught)" "$(count timeout)" "$(count missed)" "$(count unviable)" "$secs")")
  if [ -s "$dir/missed.txt" ]; then
    echo "== $area: survivors"
    cat "$dir/missed.txt"
  fi
done <<<"$areas"

if ! $list && [ ${#summary[@]} -gt 0 ]; then
  echo
  echo '| area | mutants | caught | timeout | missed | unviable | seconds |'
  echo '|---|---|---|---|---|---|---|'
  printf '%s\n' "${summary[@]}"
fi
