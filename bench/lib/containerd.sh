# A private containerd for the benchmarks: its own root, state and sockets
# under a directory, the CRI plugin off. Source bench/lib/common.sh first.
#
# start_containerd DIR [PREFIX...]: writes DIR/config.toml, starts containerd
# (under PREFIX, e.g. chrt, if given; with CONTAINERD_PATH, if set, as its
# PATH, to find another shim) with its output in DIR/log, waits until it
# answers on DIR/c.sock, and sets $containerd_pid (also recorded with
# bench_track, for the cleanup at exit, from inside a $(...) too).
# CONTAINERD_BIN and CTR_BIN name another containerd and its ctr (default:
# Debian's on PATH); a containerd 2.x gets a `version = 3` config, with its
# temp dir, opt dir, image verifiers and NRI socket under DIR as well.
start_containerd() {
  local root=$1; shift
  local bin=${CONTAINERD_BIN:-containerd} ctr=${CTR_BIN:-ctr} major
  major=$("$bin" --version | awk '{sub(/^v/, "", $3); split($3, v, "."); print v[1]}')
  mkdir -p "$root"
  if [ "${major:-1}" -ge 2 ]; then
    mkdir -p "$root/tmp" "$root/opt" "$root/image-verifier" "$root/nri-plugins" "$root/nri-conf.d"
    cat >"$root/config.toml" <<TOML
version = 3
root = "$root/root"
state = "$root/state"
temp = "$root/tmp"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
[grpc]
  address = "$root/c.sock"
[ttrpc]
  address = "$root/c.sock.ttrpc"
[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$root/opt"
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = "$root/image-verifier"
  [plugins.'io.containerd.nri.v1.nri']
    socket_path = "$root/nri.sock"
    plugin_path = "$root/nri-plugins"
    plugin_config_path = "$root/nri-conf.d"
TOML
  else
    cat >"$root/config.toml" <<TOML
version = 2
root = "$root/root"
state = "$root/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$root/c.sock"
[ttrpc]
  address = "$root/c.sock.ttrpc"
TOML
  fi
  PATH=${CONTAINERD_PATH:-$PATH} "$@" "$bin" --config "$root/config.toml" </dev/null >"$root/log" 2>&1 &
  containerd_pid=$!
  bench_track "$containerd_pid"
  wait_socket "$root/c.sock" containerd "$root/log" || return 1
  local _
  for _ in $(seq 100); do "$ctr" -a "$root/c.sock" version >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "containerd does not answer; see $root/log" >&2
  return 1
}

# remove_ctr_containers CTR...: kills and deletes every task, then removes
# every container, through the ctr command given (e.g. ctr -a SOCK -n NS);
# for what an interrupted run left, while containerd still answers.
remove_ctr_containers() {
  local id
  for id in $(timeout 20 "$@" task ls -q 2>/dev/null); do
    timeout 20 "$@" task kill -s SIGKILL "$id" >/dev/null 2>&1
    timeout 20 "$@" task delete --force "$id" >/dev/null 2>&1
  done
  for id in $(timeout 20 "$@" containers ls -q 2>/dev/null); do
    timeout 20 "$@" containers rm "$id" >/dev/null 2>&1
  done
  return 0
}

# The version of Debian's containerd, e.g. 1.6.20~ds1.
containerd_version() { containerd --version | awk '{print $3}'; }
