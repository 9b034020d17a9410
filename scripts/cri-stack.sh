#!/usr/bin/env bash
# A whole berth stack for the CRI on one directory: contentd, snapd, metad
# and taskd, then berth-crid in the foreground; every daemon is stopped
# when crid ends or this script is told to stop. For critest's runner
# (../shared/critest/run.sh, as CRI_SERVER_CMD) and the CRI tests.
#
# usage: scripts/cri-stack.sh DIR [berth-crid flags...]
#   BERTH_BIN      where the binaries are (default: target/debug)
#   CRI_ADDRESS    crid's socket (default: DIR/run/cri.sock)
#   CRI_ORACLE_*   as critest's runner exports them: registry mirrors
#                  (certs.d), the CNI directories and the sandbox image.
set -euo pipefail
dir=${1:?usage: $0 DIR [berth-crid flags...]}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${BERTH_BIN:-$here/target/debug}
mkdir -p "$dir/run"
run=$dir/run
pids=()
stop() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT
trap 'exit 143' TERM INT

start() {
  local name=$1
  shift
  "$bin/berth-$name" --root "$dir/$name" --state "$run/$name" \
    --address "$run/$name.sock" "$@" >"$dir/$name.log" 2>&1 &
  pids+=($!)
  local _
  for _ in $(seq 1 200); do
    [ -S "$run/$name.sock" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$dir/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "berth-$name did not start" >&2
  exit 1
}

start contentd ${CRI_ORACLE_CERTS_D:+--hosts-dir "$CRI_ORACLE_CERTS_D"}
start snapd --contentd "$run/contentd.sock"
start metad --contentd "$run/contentd.sock" --snapd "$run/snapd.sock"
start taskd --metad "$run/metad.sock" --snapd "$run/snapd.sock"

crid_flags=(
  --root "$dir/crid" --state "$run/crid" --address "${CRI_ADDRESS:-$run/cri.sock}"
  --contentd "$run/contentd.sock" --snapd "$run/snapd.sock"
  --metad "$run/metad.sock" --taskd "$run/taskd.sock"
)
[ -n "${CRI_ORACLE_CNI_CONF_DIR:-}" ] && crid_flags+=(--cni-conf-dir "$CRI_ORACLE_CNI_CONF_DIR")
[ -n "${CRI_ORACLE_CNI_BIN_DIR:-}" ] && crid_flags+=(--cni-bin-dir "$CRI_ORACLE_CNI_BIN_DIR")
[ -n "${CRI_ORACLE_SANDBOX_IMAGE:-}" ] && crid_flags+=(--sandbox-image "$CRI_ORACLE_SANDBOX_IMAGE")
# The shim and runc are found on PATH, beside the binaries first.
export PATH="$bin:$PATH"
"$bin/berth-crid" "${crid_flags[@]}" "$@" &
pids+=($!)
wait "${pids[-1]}"
