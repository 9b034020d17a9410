# Shared by the fetch and pull benchmarks: a Debian bookworm minbase root
# filesystem built with mmdebstrap, as an image of one gzip layer (tag
# "single", about 60 MB) and of four layers split by top-level directory
# (tag "multi"), served by Debian's docker-registry on 127.0.0.1 and pushed
# there with skopeo.
#
# Source it with $work (a scratch dir) and the array pids (processes to kill
# at exit) set; it sets $port. BERTH_BENCH_ROOTFS=FILE reuses a minbase tar.

if [ -n "${BERTH_BENCH_ROOTFS:-}" ]; then
  cp "$BERTH_BENCH_ROOTFS" "$work/rootfs.tar"
else
  echo "building a Debian minbase root filesystem with mmdebstrap" >&2
  mmdebstrap --quiet --variant=minbase bookworm "$work/rootfs.tar" >&2
fi
mkdir "$work/rootfs"
tar -C "$work/rootfs" -xf "$work/rootfs.tar"

# An OCI layout with the two images, written by hand like the tests do.
layout="$work/layout"
mkdir -p "$layout/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
add_blob() { # file -> prints "digest size"
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1)
  s=$(stat -c %s "$1")
  cp "$1" "$layout/blobs/sha256/$d"
  echo "sha256:$d $s"
}
make_layer() { # out.tar.gz dirs... -> prints "digest size diffid"
  local out=$1; shift
  tar -C "$work/rootfs" --sort=name --numeric-owner -cf "$out.tar" "$@"
  local diff
  diff=$(sha256sum "$out.tar" | cut -d' ' -f1)
  gzip -n -c "$out.tar" >"$out"
  echo "$(add_blob "$out") sha256:$diff"
}
make_image() { # name layer-lines... -> prints manifest "digest size"
  local name=$1; shift
  local layers="" diffs="" first=1
  for l in "$@"; do
    set -- $l
    [ $first = 1 ] || { layers+=","; diffs+=","; }
    first=0
    layers+="{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$1\",\"size\":$2}"
    diffs+="\"$3\""
  done
  echo "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diffs]}}" >"$work/$name.config"
  read -r cd cs < <(add_blob "$work/$name.config")
  echo "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$cd\",\"size\":$cs},\"layers\":[$layers]}" >"$work/$name.manifest"
  add_blob "$work/$name.manifest"
}
one=$(make_layer "$work/all.tar.gz" .)
read -r m1 s1 < <(make_image single "$one")
tops=$(cd "$work/rootfs" && ls -A)
usr=$(make_layer "$work/usr.tar.gz" usr)
var=$(make_layer "$work/var.tar.gz" var)
etc=$(make_layer "$work/etc.tar.gz" etc)
rest=$(make_layer "$work/rest.tar.gz" $(echo "$tops" | grep -v -x -e usr -e var -e etc))
read -r m4 s4 < <(make_image multi "$usr" "$var" "$etc" "$rest")
cat >"$layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$m1","size":$s1,"annotations":{"org.opencontainers.image.ref.name":"single"}},
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$m4","size":$s4,"annotations":{"org.opencontainers.image.ref.name":"multi"}}]}
JSON
echo "single layer: $(stat -c %s "$work/all.tar.gz") bytes gzip, $(stat -c %s "$work/all.tar.gz.tar") bytes tar, $(find "$work/rootfs" | wc -l) files" >&2

. "$top/bench/lib/registry.sh"
start_registry
for tag in single multi; do
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$tag" "docker://127.0.0.1:$port/debian:$tag"
done

