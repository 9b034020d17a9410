#!/bin/sh
# Builds containerd-shim-berth-v2 the way it is meant to be installed and
# benchmarked: the size-optimised `shim` profile (workspace Cargo.toml:
# opt-level "s", fat LTO, one codegen unit, abort on panic, stripped) and,
# for this binary only, glibc linked in statically (a static-pie
# executable). Everything else in the workspace keeps its normal flags, and
# `cargo build`/`cargo test` keep building an ordinary dynamic shim.
#
# Static glibc means no ld.so, libc.so, libm.so or libgcc_s.so mapped and
# relocated in every shim: each shim maps only the libc code it uses, and
# nothing is left for a dynamic loader to dirty. The binary stays
# position-independent, so ASLR covers the shim's code and data as before.
# (glibc warns that dlopen/NSS in a static binary needs the same glibc at
# run time; the shim resolves no user, group or host names.)
#
# Output: ${CARGO_TARGET_DIR:-target}/shim/containerd-shim-berth-v2, whose
# path is printed last. Extra arguments go to cargo (e.g. --locked).
set -eu
cd "$(dirname "$0")/.."
cargo rustc --profile shim -p containerd-shim-berth-v2 --bin containerd-shim-berth-v2 "$@" -- \
    -C target-feature=+crt-static
echo "${CARGO_TARGET_DIR:-target}/shim/containerd-shim-berth-v2"
