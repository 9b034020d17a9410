#!/usr/bin/env bash
# Runs every test of the workspace. The end-to-end tests start the built
# daemons and CLI, so the binaries are built first.
#
# A watchdog ends a test run that has not finished after
# BERTH_TEST_WATCHDOG seconds (default 3600; the whole run takes about 15
# minutes on 2 cores): it prints what every process of the run is doing
# (kernel wait channels, and user stacks when gdb is installed), then stops
# the run, so a hung test fails with its cause instead of running into
# CI's own limit with nothing said.
set -euo pipefail
cd "$(dirname "$0")/.."
# As root, installs the Debian packages the tests need (scripts/prerequisites.sh
# lists them); otherwise says which are missing.
if ! scripts/prerequisites.sh tests; then
  [ "$(id -u)" = 0 ] && exit 1
  echo "test.sh: tests that need those skip (under CI=true they fail)" >&2
fi
cargo build --workspace --bins

# The processes descended from $1 (itself included), through /proc.
descendants() {
  local pid=$1 child
  echo "$pid"
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    descendants "$child"
  done
}

hang_report() {
  local pid task
  echo "test.sh: the tests have not finished after ${BERTH_TEST_WATCHDOG:-3600} s; what each process is doing:" >&2
  for pid in $(descendants "$1"); do
    echo "=== $pid: $(tr '\0' ' ' < /proc/"$pid"/cmdline 2>/dev/null)" >&2
    for task in /proc/"$pid"/task/*; do
      echo "--- thread ${task##*/} ($(cat "$task"/comm 2>/dev/null)) in $(cat "$task"/wchan 2>/dev/null)" >&2
    done
    if command -v gdb > /dev/null; then
      timeout 60 gdb -p "$pid" -batch -nx -ex "thread apply all bt" < /dev/null >&2 2>&1 || true
    fi
  done
}

cargo test --workspace "$@" &
tests=$!
(
  # Stopped early (the run ended), it takes its sleep along: nothing of it
  # may outlive the script and hold the script's output open.
  trap 'kill "$sleeper" 2> /dev/null; exit 0' TERM
  sleep "${BERTH_TEST_WATCHDOG:-3600}" &
  sleeper=$!
  wait "$sleeper"
  hang_report "$tests"
  # The run and everything it started, by pid.
  kill -KILL $(descendants "$tests") 2> /dev/null
) &
watchdog=$!
status=0
wait "$tests" || status=$?
kill "$watchdog" 2> /dev/null || true
exit "$status"
