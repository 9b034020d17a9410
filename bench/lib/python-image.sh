# A Debian bookworm image with Python, in three layers as an image build
# would make them: the minbase root (layer 1), what installing python3
# adds and changes (layer 2) and what installing python3-pip adds on top
# (layer 3). Each root is built with mmdebstrap; umoci turns the
# differences into layers (gzip, with whiteouts where a file went away).
# About 96 MB compressed, 245 MB and 13,200 entries uncompressed.
#
# Source it after bench/lib/common.sh, bench_workdir and
# bench/lib/registry.sh's start_registry (or minbase-registry.sh, which
# starts it); it pushes the image as 127.0.0.1:$port/debian:python and sets
# $python_ref, $python_manifest (its manifest digest) and $python_layout
# (an OCI layout holding it, tag "python").
#   BERTH_BENCH_IMAGES=DIR  keeps the layout in DIR/python and reuses it
#                           (the mmdebstrap runs take a few minutes)

python_images=${BERTH_BENCH_IMAGES:-$work/images}/python
python_layout="$python_images/layout"
if [ ! -s "$python_images/manifest" ]; then
  rm -rf "$python_images"
  mkdir -p "$python_images"
  echo "building the Debian + python image's roots with mmdebstrap" >&2
  mmdebstrap --quiet --variant=minbase bookworm "$python_images/1.tar" >&2
  mmdebstrap --quiet --variant=minbase --include=python3 bookworm "$python_images/2.tar" >&2
  mmdebstrap --quiet --variant=minbase --include=python3,python3-pip bookworm "$python_images/3.tar" >&2
  umoci init --layout "$python_layout"
  umoci new --image "$python_layout:python"
  bundle="$python_images/bundle"
  umoci unpack --image "$python_layout:python" "$bundle" >/dev/null
  for n in 1 2 3; do
    # The next root replaces the last; repack writes what changed.
    find "$bundle/rootfs" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    tar -C "$bundle/rootfs" -xf "$python_images/$n.tar"
    umoci repack --refresh-bundle --image "$python_layout:python" "$bundle"
  done
  umoci config --image "$python_layout:python" --architecture amd64 --os linux \
    --config.cmd /usr/bin/python3
  umoci gc --layout "$python_layout"
  rm -rf "$bundle" "$python_images"/[123].tar
  python3 -c 'import json, sys
index = json.load(open(sys.argv[1]))
print(index["manifests"][0]["digest"])' "$python_layout/index.json" >"$python_images/manifest"
fi
python_manifest=$(cat "$python_images/manifest")
skopeo copy --quiet --dest-tls-verify=false "oci:$python_layout:python" "docker://127.0.0.1:$port/debian:python"
python_ref="127.0.0.1:$port/debian:python"
