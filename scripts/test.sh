#!/usr/bin/env bash
# Runs every test of the workspace. The end-to-end tests start the built
# daemons and CLI, so the binaries are built first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace "$@"
