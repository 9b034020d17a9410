#!/usr/bin/env bash
# Crash-consistency rounds, the long version of the CI tests in
# tests/tests/crash_rounds.rs, two of them:
# - images: pull, pull then unpack, import, tag, remove, gc and ingest
#   against real daemons while a random one of contentd, snapd and metad
#   is SIGKILLed at a random moment in the work and restarted; the
#   invariants (blobs match their digests, snapshots match a clean unpack,
#   images are whole, interrupted work succeeds when done again, a second
#   pull does no work, collections converge, what is in progress belongs
#   to a live lease, leases left behind expire within minutes) are checked
#   after every round;
# - tasks: run -d, run --rm, exec and rm --force of containers while taskd
#   is SIGKILLed at a random moment and restarted; after every round no
#   bundle, shim, container process, rootfs mount or cgroup is left
#   without its task, records, tasks and active snapshots agree, and every
#   task's state is true;
# - pods: RunPodSandbox, CreateContainer, StartContainer, StopContainer,
#   RemoveContainer, StopPodSandbox and RemovePodSandbox through crictl
#   while berth-crid is SIGKILLed at a random moment and restarted; after
#   every round (and the kubelet's follow-up for interrupted work) every
#   pod and container crid lists has its true state, and no task, record,
#   bundle, shim, mount, cgroup or crid state is left for anything it does
#   not list (needs crictl from ../shared/peers).
#
# Prints a table row for each: rounds, kills per daemon, rounds whose work
# the kill interrupted, violations, time, seed (BERTH_CRASH_SEED=SEED
# replays a run). Exits 1 on any violation; the tests' output is kept in
# $CRASH_LOG.
#
# usage: bench/crash.sh   (as root)
# environment: ROUNDS=500, BERTH_CRASH_SEED (default: the clock),
#   CRASH_LOG=/var/tmp/berth-crash.log. Not part of bench/all.sh: there
#   is no peer to compare with.
set -euo pipefail
export LC_ALL=C
top=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-500}
log=${CRASH_LOG:-/var/tmp/berth-crash.log}
report=$(mktemp)
tasks_report=$(mktemp)
cri_report=$(mktemp)
trap 'rm -f "$report" "$tasks_report" "$cri_report"' EXIT

cd "$top"
cargo build --workspace --bins >&2
status=0
BERTH_CRASH_ROUNDS=$rounds BERTH_CRASH_REPORT=$report BERTH_CRASH_TASKS_REPORT=$tasks_report \
  BERTH_CRASH_CRI_REPORT=$cri_report \
  cargo test -p berth-e2e --test crash_rounds -- --nocapture --test-threads 1 >"$log" 2>&1 || status=$?
[ -s "$report" ] && [ -s "$tasks_report" ] && [ -s "$cri_report" ] ||
  { echo "no report: see $log" >&2; exit 2; }
python3 - "$report" "$tasks_report" "$cri_report" <<'EOF'
import json, sys
print("| rounds of | rounds | kills | interrupted | violations | seconds | seed |")
print("|---|---|---|---|---|---|---|")
violations = []
for what, path in zip(["images", "tasks", "pods"], sys.argv[1:]):
    r = json.load(open(path))
    kills = ", ".join(f"{k} {v}" for k, v in sorted(r["kills"].items()))
    print(f"| {what} | {r['rounds']} | {kills} | {r['interrupted']} | {len(r['violations'])} | {r['seconds']:.0f} | {r['seed']} |")
    violations += r["violations"]
for v in violations:
    print(f"- {v}")
EOF
exit $status
