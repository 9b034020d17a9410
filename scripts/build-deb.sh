#!/usr/bin/env bash
# Builds a Debian package of berth from the tree: what scripts/install.sh
# installs under /usr, each daemon's default config in /etc/berth, with
# maintainer scripts that create berth's
# user and directories, enable its sockets and berth.target (starting them on a
# system booted with systemd), and stop them on removal. The data under
# /var/lib/berth stays on removal and on purge, as containerd's does.
#
# usage: scripts/build-deb.sh [--bin DIR] [OUTPUT_DIR]
#   environment: DEB_COMPRESSION (dpkg-deb -Z: xz by default; the tests use
#   gzip)
#   --bin DIR: package these built binaries instead of building the release
#   ones (the tests package their debug build). The package lands in
#   OUTPUT_DIR (default target/deb); its path is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=""
if [ "${1:-}" = --bin ]; then bin=$2; shift 2; fi
out=${1:-${CARGO_TARGET_DIR:-target}/deb}
if [ -z "$bin" ]; then
  cargo build --release --workspace --bins >&2
  scripts/build-shim.sh >&2
  bin=${CARGO_TARGET_DIR:-target}/release
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

PREFIX=/usr DESTDIR=$stage SYSTEMD_UNIT_DIR=/lib/systemd/system TMPFILES_DIR=/usr/lib/tmpfiles.d SYSUSERS_DIR=/usr/lib/sysusers.d \
  scripts/install.sh --bin "$bin"
install -D -m 0644 README.md "$stage/usr/share/doc/berth/README.md"
for doc in docs/*.md; do install -m 0644 "$doc" "$stage/usr/share/doc/berth/"; done

# Each daemon's complete default config as a conffile: an operator edits
# it in place (metrics_address, log_level, ...) and upgrades keep the edit.
mkdir -p "$stage/DEBIAN" "$stage/etc/berth"
: >"$stage/DEBIAN/conffiles"
for daemon in contentd snapd metad taskd crid; do
  "$stage/usr/bin/berth-$daemon" --print-default-config >"$stage/etc/berth/$daemon.toml"
  chmod 0644 "$stage/etc/berth/$daemon.toml"
  echo "/etc/berth/$daemon.toml" >>"$stage/DEBIAN/conffiles"
done
size=$(du -sk "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: berth
Version: $version
Architecture: $arch
Maintainer: berth developers <berth@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.36), runc
Recommends: containernetworking-plugins
Suggests: busybox-static
Section: admin
Priority: optional
Homepage: https://localhost/berth
Description: container runtime: images, snapshots, containers, as small daemons
 berth does containerd's job (pull images, keep their content and
 filesystems, run and supervise containers through v2 shims) with one
 small daemon per concern, each restartable on its own, socket-activated
 by systemd; berth-crid serves Kubernetes' CRI on /run/berth/cri.sock.
 containerd-shim-berth-v2 also works under upstream containerd.
CONTROL

units="berth-contentd.socket berth-snapd.socket berth-metad.socket berth-taskd.socket berth-crid.socket berth.target"
cat >"$stage/DEBIAN/postinst" <<POSTINST
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
  # The berth user that contentd and metad run as.
  systemd-sysusers berth.conf
  systemd-tmpfiles --create berth.conf || true
  for unit in $units; do
    deb-systemd-helper unmask "\$unit" >/dev/null || true
    if deb-systemd-helper --quiet was-enabled "\$unit"; then
      deb-systemd-helper enable "\$unit" >/dev/null || true
    else
      deb-systemd-helper update-state "\$unit" >/dev/null || true
      deb-systemd-helper enable "\$unit" >/dev/null || true
    fi
  done
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    # An upgrade restarts the daemons one by one; containers keep running
    # (taskd's KillMode=process).
    if [ -n "\$2" ]; then
      systemctl try-restart berth-contentd.service berth-snapd.service berth-metad.service berth-taskd.service berth-crid.service || true
    fi
    systemctl start berth.target || true
  fi
fi
POSTINST
cat >"$stage/DEBIAN/prerm" <<PRERM
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
  systemctl stop berth.target berth-crid.service berth-taskd.service berth-metad.service berth-snapd.service berth-contentd.service $units || true
fi
PRERM
cat >"$stage/DEBIAN/postrm" <<POSTRM
#!/bin/sh
set -e
if [ "\$1" = remove ] || [ "\$1" = purge ]; then
  if [ -x /usr/bin/deb-systemd-helper ]; then
    for unit in $units; do
      if [ "\$1" = purge ]; then deb-systemd-helper purge "\$unit" >/dev/null || true; fi
      deb-systemd-helper mask "\$unit" >/dev/null || true
      if [ "\$1" = purge ]; then deb-systemd-helper unmask "\$unit" >/dev/null || true; fi
    done
  fi
  if [ -d /run/systemd/system ]; then systemctl --system daemon-reload >/dev/null || true; fi
fi
POSTRM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/berth_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$stage" "$deb" >&2
echo "$deb"
