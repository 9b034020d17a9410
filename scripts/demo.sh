#!/usr/bin/env bash
# berth's main job, as far as the landed daemons go: build a small image
# from Debian's busybox-static, serve it from a local registry, then start
# berth-contentd, berth-snapd and berth-metad on a temporary root and
# `berth pull` it — fetched, unpacked into snapshots as its layers arrive,
# and recorded as an image. Then look inside the unpacked filesystem, remove
# the image and let the garbage collector clean up.
#
# Needs root (snapd mounts) and the Debian packages docker-registry, skopeo
# and busybox-static (`.ci/run` installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo: berth-snapd mounts filesystems; run this as root" >&2
  exit 1
fi
for tool in docker-registry skopeo /bin/busybox; do
  command -v "$tool" >/dev/null || {
    echo "demo: $tool is missing (apt-get install docker-registry skopeo busybox-static)" >&2
    exit 1
  }
done

cargo build --release --workspace --bins
bin="$PWD/target/release"

work=$(mktemp -d)
pids=()
mounted=""
cleanup() {
  [ -n "$mounted" ] && umount "$mounted" 2>/dev/null
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || true; }; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
wait_socket() { for _ in $(seq 200); do [ -S "$1" ] && return; sleep 0.05; done; echo "no $1" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# --- an image of our own: busybox, plus a layer with a greeting ---------
layout="$work/layout"
mkdir -p "$layout/blobs/sha256" "$work/l1/bin" "$work/l2/etc"
cp /bin/busybox "$work/l1/bin/busybox"
ln -s busybox "$work/l1/bin/sh"
echo "hello from a berth-pulled image" >"$work/l2/etc/motd"
layers=""
diff_ids=""
for l in l1 l2; do
  tar -C "$work/$l" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$work/$l.tar" .
  diff_ids="$diff_ids\"sha256:$(sha "$work/$l.tar")\","
  gzip -n -c "$work/$l.tar" >"$work/$l.tar.gz"
  digest=$(sha "$work/$l.tar.gz")
  cp "$work/$l.tar.gz" "$layout/blobs/sha256/$digest"
  layers="$layers{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$(stat -c %s "$work/$l.tar.gz")},"
done
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "${diff_ids%,}" >"$work/config.json"
config=$(sha "$work/config.json")
cp "$work/config.json" "$layout/blobs/sha256/$config"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$config" "$(stat -c %s "$work/config.json")" "${layers%,}" >"$work/manifest.json"
manifest=$(sha "$work/manifest.json")
cp "$work/manifest.json" "$layout/blobs/sha256/$manifest"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"demo"}}]}' \
  "$manifest" "$(stat -c %s "$work/manifest.json")" >"$layout/index.json"

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

# --- the daemons -----------------------------------------------------------
start() { # name, extra args...
  local name=$1; shift
  "$bin/berth-$name" --root "$work/$name/root" --state "$work/$name/state" \
    --address "$work/run/$name.sock" --log-level warn "$@" &
  pids+=($!)
  wait_socket "$work/run/$name.sock"
}
start contentd
start snapd --contentd "$work/run/contentd.sock"
start metad --contentd "$work/run/contentd.sock" --snapd "$work/run/snapd.sock"
export BERTH_CONTENTD_ADDRESS="$work/run/contentd.sock"
export BERTH_SNAPD_ADDRESS="$work/run/snapd.sock"
export BERTH_METAD_ADDRESS="$work/run/metad.sock"

say "berth pull $image"
"$bin/berth" pull "$image"

say "berth images ls"
"$bin/berth" images ls

say "berth snapshots tree"
"$bin/berth" snapshots tree

say "berth content ls"
"$bin/berth" content ls

# The top layer's chain ID names the image's filesystem.
chain=$("$bin/berth" content info "sha256:$config" --format json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["labels"]["containerd.io/gc.ref.snapshot.overlayfs"])')
say "berth snapshots view demo-view $chain, mounted; busybox cat /etc/motd inside it"
# A gc.root label keeps metad's collector off the view while it is in use.
"$bin/berth" snapshots view demo-view "$chain" --label containerd.io/gc.root=demo --format json >"$work/mounts.json"
mkdir -p "$work/rootfs"
python3 - "$work/mounts.json" "$work/rootfs" <<'EOF'
import json, subprocess, sys
mounts = json.load(open(sys.argv[1]))
mounts = mounts.get("mounts", mounts) if isinstance(mounts, dict) else mounts
m = mounts[0]
options = [o for o in m.get("options", [])]
subprocess.run(["mount", "-t", m["type"], "-o", ",".join(options), m["source"], sys.argv[2]], check=True)
EOF
mounted="$work/rootfs"
chroot "$work/rootfs" /bin/busybox cat /etc/motd
umount "$work/rootfs"
mounted=""
"$bin/berth" snapshots rm demo-view

say "berth images rm $image && berth gc"
"$bin/berth" images rm "$image"
"$bin/berth" gc

say "berth content ls; berth snapshots ls   (nothing left)"
"$bin/berth" content ls
"$bin/berth" snapshots ls

printf '\nberth pulled an image from a registry, unpacked it while fetching, recorded it, and collected it after removal.\n'
