#!/usr/bin/env bash
# berth's main job, end to end, on a fresh Debian 12 machine with a Rust
# toolchain: installs the Debian packages it needs (as root; otherwise says
# which), builds berth, starts its four daemons with `berth up` on a
# temporary root, makes an image from Debian's busybox-static without any
# registry (`berth import` of an OCI archive) and runs containers from it,
# then serves a second image from a registry on 127.0.0.1 and `berth pull`s
# it (fetched, unpacked as its layers arrive, recorded), and finally removes
# it, lets the garbage collector clean up, and `berth down --all`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo: berth-snapd mounts filesystems and runc makes containers; run this as root" >&2
  exit 1
fi
scripts/prerequisites.sh demo

cargo build --release --workspace --bins
bin="$PWD/target/release"
berth() { "$bin/berth" "$@"; }

work=$(mktemp -d)
pids=()
cleanup() {
  if [ -d "$work/berth/run" ]; then berth down --all --root "$work/berth" >/dev/null 2>&1 || true; fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || true; }; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# --- the daemons -----------------------------------------------------------
say "eval \"\$(berth up --root $work/berth)\""
eval "$(berth up --root "$work/berth")"

# --- images of our own, from Debian's busybox-static ----------------------
# make_layout DIR REF ROOTFS...: an OCI image layout in DIR whose layers are
# the ROOTFS directories (gzip tars), tagged REF.
make_layout() {
  local dir=$1 ref=$2 layers="" diff_ids="" rootfs d config manifest
  shift 2
  mkdir -p "$dir/blobs/sha256"
  for rootfs in "$@"; do
    tar -C "$rootfs" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$rootfs.tar" .
    diff_ids="$diff_ids\"sha256:$(sha "$rootfs.tar")\","
    gzip -n -c "$rootfs.tar" >"$rootfs.tar.gz"
    d=$(sha "$rootfs.tar.gz")
    cp "$rootfs.tar.gz" "$dir/blobs/sha256/$d"
    layers="$layers{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$(stat -c %s "$rootfs.tar.gz")},"
  done
  printf '{"architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$arch" "${diff_ids%,}" >"$dir.config.json"
  config=$(sha "$dir.config.json")
  cp "$dir.config.json" "$dir/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$config" "$(stat -c %s "$dir.config.json")" "${layers%,}" >"$dir.manifest.json"
  manifest=$(sha "$dir.manifest.json")
  cp "$dir.manifest.json" "$dir/blobs/sha256/$manifest"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$(stat -c %s "$dir.manifest.json")" "$ref" >"$dir/index.json"
}
case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
mkdir -p "$work/busybox/bin" "$work/greeting/etc"
cp /bin/busybox "$work/busybox/bin/busybox"
for applet in sh cat echo hostname id sleep; do ln -s busybox "$work/busybox/bin/$applet"; done
echo "hello from a berth-pulled image" >"$work/greeting/etc/motd"

# --- without a registry: one layer, imported from an archive ---------------
make_layout "$work/local" demo/busybox:local "$work/busybox"
tar -C "$work/local" -cf "$work/busybox.tar" .

say "berth import busybox.tar"
berth import "$work/busybox.tar"

say "berth run --rm demo/busybox:local echo hello from berth"
berth run --rm demo/busybox:local echo hello from berth

# --- from a registry: two layers, busybox and a greeting --------------------
layout="$work/layout"
make_layout "$layout" demo "$work/busybox" "$work/greeting"

# --- a registry on 127.0.0.1 ---------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$work/registry" "$port" >"$work/registry.yml"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
image="127.0.0.1:$port/demo/busybox:latest"
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:demo" "docker://$image"

say "berth pull $image"
berth pull "$image"

say "berth images ls"
berth images ls

say "berth snapshots tree"
berth snapshots tree

say "berth content ls"
berth content ls

say "berth run --rm $image cat /etc/motd"
berth run --rm "$image" cat /etc/motd

say "berth run --rm --user 1000:1000 $image sh -c 'id; exit 3'"
status=0
berth run --rm --user 1000:1000 "$image" sh -c 'id; exit 3' || status=$?
echo "(berth exited with the container's status: $status)"

say "berth run -d --name demo-detached $image sleep 600; berth ps; berth tasks exec ...; berth rm --force"
berth run -d --name demo-detached "$image" sleep 600
berth ps
berth tasks exec demo-detached sh -c 'echo hello from an exec in $(hostname)'
berth rm --force demo-detached

say "berth images rm $image; berth images rm demo/busybox:local; berth gc"
berth images rm "$image"
berth images rm demo/busybox:local
berth gc

say "berth content ls; berth snapshots ls   (nothing left)"
berth content ls
berth snapshots ls

say "berth down --all --root $work/berth"
berth down --all --root "$work/berth"

printf '\nberth imported an image and pulled one from a registry (unpacked while fetching), ran containers from them, and collected them after removal.\n'
