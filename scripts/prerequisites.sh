#!/usr/bin/env bash
# The Debian packages berth needs, in one list for everyone: the README's
# two commands (scripts/demo.sh, scripts/test.sh), .ci/run and the
# benchmark suite (bench/all.sh).
#
# usage: scripts/prerequisites.sh demo|tests|bench
#   Installs the missing packages with apt-get when run as root; otherwise
#   prints the command that would install them and exits 1.
set -euo pipefail

# Building: a C toolchain for the linker and the crates with C parts;
# protoc for the CRI's types (k8s-cri compiles Kubernetes' proto files).
build=(ca-certificates gcc libc6-dev pkg-config protobuf-compiler)
# Running containers: runc; the demo's images are built from busybox-static,
# one is served by docker-registry (pushed there with skopeo, on a port
# python3 picks).
demo=(runc busybox-static docker-registry skopeo tar gzip python3)
# The tests, beyond the demo's:
#   systemd: systemd-socket-activate and systemd-analyze (socket activation
#     and unit file tests); systemd-container (systemd-nspawn) and
#     mmdebstrap: the test that boots a real systemd with berth's units;
#   apache2-utils (htpasswd), openssl: the registry transfer tests, which
#     make their own credentials and certificates;
#   containerd: the shim and taskd tests against upstream containerd and its
#     Go shim;
#   util-linux (script) and python3: pseudo terminals for `berth run -t`;
#   xfsprogs: the snapshotter tests on an XFS image;
#   bc, procps: the benchmark scripts;
#   containernetworking-plugins, iptables, curl: berth-crid's pods and the
#     critest runner (../shared/critest), which also builds its images with
#     mmdebstrap and gcc;
#   gdb: the stacks of whatever hangs, printed by a test whose command never
#     ends (tests/src/hang.rs) and by scripts/test.sh's watchdog;
#   qemu-system-x86: the virtual machine that runs the cgroup tests again
#     under cgroup v2 alone (tests/src/guest.rs), on Debian's kernel, which
#     guest_kernel below unpacks (not installs) for it.
tests=(systemd systemd-container mmdebstrap apache2-utils openssl containerd util-linux xfsprogs bc procps containernetworking-plugins iptables curl gdb qemu-system-x86)
# The benchmarks, beyond the tests' (containerd and runc as the peers,
# mmdebstrap for the images, bc and procps): a font for the chart, umoci
# (layers of the data-path benchmark's image made from root filesystems).
bench=(fonts-dejavu-core umoci)

case ${1:-} in
  demo) wanted=("${build[@]}" "${demo[@]}") ;;
  tests) wanted=("${build[@]}" "${demo[@]}" "${tests[@]}") ;;
  bench) wanted=("${build[@]}" "${demo[@]}" "${tests[@]}" "${bench[@]}") ;;
  *) echo "usage: $0 demo|tests|bench" >&2; exit 2 ;;
esac

# The guest kernel of the tests' virtual machine: vmlinuz and overlay.ko
# of the kernel Debian's linux-image-amd64 names, taken out of its package
# into this directory (the tests read BERTH_GUEST_KERNEL_DIR, if set,
# instead). Nothing is installed: the host's own kernel and /boot stay as
# they are.
guest_kernel_dir=${BERTH_GUEST_KERNEL_DIR:-/var/cache/berth-tests/guest-kernel}
guest_kernel() {
  [ "$(dpkg --print-architecture)" = amd64 ] || return 0
  [ -f "$guest_kernel_dir/vmlinuz" ] && [ -f "$guest_kernel_dir/overlay.ko" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing: the tests' guest kernel in $guest_kernel_dir (run $0 tests as root)" >&2
    return 1
  fi
  local package work
  package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  if [ -z "$package" ]; then
    apt-get update -q
    package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  fi
  work=$(mktemp -d)
  # apt's download sandbox user must be able to write here.
  chown _apt "$work" 2>/dev/null || true
  (cd "$work" && apt-get download -q "$package")
  mkdir -p "$work/x" "$guest_kernel_dir"
  dpkg-deb --fsys-tarfile "$work"/"$package"_*.deb |
    tar -x -C "$work/x" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/fs/overlayfs/overlay.ko'
  cp "$work"/x/boot/vmlinuz-* "$guest_kernel_dir/vmlinuz"
  cp "$work"/x/lib/modules/*/kernel/fs/overlayfs/overlay.ko "$guest_kernel_dir/overlay.ko"
  echo "$package" > "$guest_kernel_dir/package"
  rm -rf "$work"
}

missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done

if [ ${#missing[@]} != 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "install them as root with: apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
case $1 in
  tests | bench) guest_kernel ;;
esac
