#!/usr/bin/env bash
# berth's main job: build a small image from Debian's busybox-static, serve
# it from a local registry, then start berth-contentd, berth-snapd,
# berth-metad and berth-taskd on a temporary root, `berth pull` it (fetched,
# unpacked into snapshots as its layers arrive, recorded as an image) and
# `berth run` containers from it. Then remove the image and let the garbage
# collector clean up.
#
# Needs root (snapd mounts) and the Debian packages docker-registry, skopeo
# and busybox-static (`.ci/run` installs them), and runc.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo: berth-snapd mounts filesystems; run this as root" >&2
  exit 1
fi
for tool in docker-registry skopeo /bin/busybox runc; do
  command -v "$tool" >/dev/null || {
    echo "demo: $tool is missing (apt-get install docker-registry skopeo busybox-static runc)" >&2
    exit 1
  }
done

cargo build --release --workspace --bins
bin="$PWD/target/release"

work=$(mktemp -d)
pids=()
cleanup() {
  if [ -n "${BERTH_TASKD_ADDRESS:-}" ]; then "$bin/berth" rm --force demo-detached >/dev/null 2>&1 || true; fi
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
for applet in sh cat echo hostname id sleep; do ln -s busybox "$work/l1/bin/$applet"; done
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
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
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
start taskd --metad "$work/run/metad.sock" --snapd "$work/run/snapd.sock"
export BERTH_CONTENTD_ADDRESS="$work/run/contentd.sock"
export BERTH_SNAPD_ADDRESS="$work/run/snapd.sock"
export BERTH_METAD_ADDRESS="$work/run/metad.sock"
export BERTH_TASKD_ADDRESS="$work/run/taskd.sock"
export BERTH_FIFO_DIR="$work/fifo" BERTH_LOG_DIR="$work/logs"

say "berth pull $image"
"$bin/berth" pull "$image"

say "berth images ls"
"$bin/berth" images ls

say "berth snapshots tree"
"$bin/berth" snapshots tree

say "berth content ls"
"$bin/berth" content ls

say "berth run --rm $image cat /etc/motd"
"$bin/berth" run --rm "$image" cat /etc/motd

say "berth run --rm --user 1000:1000 $image sh -c 'id; exit 3'"
status=0
"$bin/berth" run --rm --user 1000:1000 "$image" sh -c 'id; exit 3' || status=$?
echo "(berth exited with the container's status: $status)"

say "berth run -d --name demo-detached $image sleep 600; berth ps; berth tasks exec ...; berth rm --force"
"$bin/berth" run -d --name demo-detached "$image" sleep 600
"$bin/berth" ps
"$bin/berth" tasks exec demo-detached sh -c 'echo hello from an exec in $(hostname)'
"$bin/berth" rm --force demo-detached

say "berth images rm $image && berth gc"
"$bin/berth" images rm "$image"
"$bin/berth" gc

say "berth content ls; berth snapshots ls   (nothing left)"
"$bin/berth" content ls
"$bin/berth" snapshots ls

printf '\nberth pulled an image from a registry, unpacked it while fetching, ran containers from it, and collected it after removal.\n'
