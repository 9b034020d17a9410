#!/usr/bin/env bash
# Runs every test of the workspace. The end-to-end tests start the built
# daemons and CLI, so the binaries are built first.
set -euo pipefail
cd "$(dirname "$0")/.."
# As root, installs the Debian packages the tests need (scripts/prerequisites.sh
# lists them); otherwise says which are missing.
if ! scripts/prerequisites.sh tests; then
  [ "$(id -u)" = 0 ] && exit 1
  echo "test.sh: tests that need those skip (under CI=true they fail)" >&2
fi
cargo build --workspace --bins
cargo test --workspace "$@"
