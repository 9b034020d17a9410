# Shared by the fetch, unpack, pull, archive and memory benchmarks: a Debian
# bookworm minbase root filesystem built with mmdebstrap, as an image of one
# gzip layer (tag "single", about 60 MB) and of four layers split by
# top-level directory (tag "multi"), served by Debian's docker-registry on
# 127.0.0.1 and pushed there with skopeo.
#
# Source it after bench/lib/common.sh and bench_workdir; it sets $port,
# $layout (the OCI layout of both images), $m1 (the single-layer image's
# manifest digest) and $single_layer (its layer, gzip; the tar beside it
# as $single_layer.tar).
#   BERTH_BENCH_ROOTFS=FILE  reuses a minbase tar instead of mmdebstrap's
#   BERTH_BENCH_IMAGES=DIR   keeps the layout in DIR and reuses it when it
#                            is there (bench/all.sh: built once, not once
#                            per script; the images are the same bytes)

images=${BERTH_BENCH_IMAGES:-$work/images}
if [ ! -s "$images/manifests" ]; then
  mkdir -p "$images"
  if [ -n "${BERTH_BENCH_ROOTFS:-}" ]; then
    cp "$BERTH_BENCH_ROOTFS" "$images/rootfs.tar"
  else
    echo "building a Debian minbase root filesystem with mmdebstrap" >&2
    mmdebstrap --quiet --variant=minbase bookworm "$images/rootfs.tar" >&2
  fi
  rm -rf "$images/rootfs"
  mkdir "$images/rootfs"
  tar -C "$images/rootfs" -xf "$images/rootfs.tar"

  # An OCI layout with the two images, written by hand like the tests do.
  layout="$images/layout"
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
    tar -C "$images/rootfs" --sort=name --numeric-owner -cf "$out.tar" "$@"
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
    echo "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diffs]}}" >"$images/$name.config"
    read -r cd cs < <(add_blob "$images/$name.config")
    echo "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$cd\",\"size\":$cs},\"layers\":[$layers]}" >"$images/$name.manifest"
    add_blob "$images/$name.manifest"
  }
  one=$(make_layer "$images/all.tar.gz" .)
  read -r m1 s1 < <(make_image single "$one")
  tops=$(cd "$images/rootfs" && ls -A)
  usr=$(make_layer "$images/usr.tar.gz" usr)
  var=$(make_layer "$images/var.tar.gz" var)
  etc=$(make_layer "$images/etc.tar.gz" etc)
  rest=$(make_layer "$images/rest.tar.gz" $(echo "$tops" | grep -v -x -e usr -e var -e etc))
  read -r m4 s4 < <(make_image multi "$usr" "$var" "$etc" "$rest")
  cat >"$layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$m1","size":$s1,"annotations":{"org.opencontainers.image.ref.name":"single"}},
 {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$m4","size":$s4,"annotations":{"org.opencontainers.image.ref.name":"multi"}}]}
JSON
  rm -rf "$images/rootfs" "$images/rootfs.tar" "$images"/{usr,var,etc,rest}.tar.gz "$images"/{usr,var,etc,rest}.tar.gz.tar
  echo "$m1 $m4" >"$images/manifests"
fi
layout="$images/layout"
single_layer="$images/all.tar.gz"
read -r m1 m4 <"$images/manifests"
echo "single layer: $(stat -c %s "$single_layer") bytes gzip, $(stat -c %s "$single_layer.tar") bytes tar" >&2

. "$top/bench/lib/registry.sh"
start_registry
for tag in single multi; do
  skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$tag" "docker://127.0.0.1:$port/debian:$tag"
done
