# A private containerd for the benchmarks: its own root, state and sockets
# under a directory, the CRI plugin off. Source bench/lib/common.sh first.
#
# start_containerd DIR [PREFIX...]: writes DIR/config.toml, starts containerd
# (under PREFIX, e.g. chrt, if given; with CONTAINERD_PATH, if set, as its
# PATH, to find another shim) with its output in DIR/log, waits until it
# answers on DIR/c.sock, and sets $containerd_pid (also recorded with
# bench_track, for the cleanup at exit, from inside a $(...) too).
start_containerd() {
  local root=$1; shift
  mkdir -p "$root"
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
  PATH=${CONTAINERD_PATH:-$PATH} "$@" containerd --config "$root/config.toml" </dev/null >"$root/log" 2>&1 &
  containerd_pid=$!
  bench_track "$containerd_pid"
  wait_socket "$root/c.sock" containerd "$root/log" || return 1
  local _
  for _ in $(seq 100); do ctr -a "$root/c.sock" version >/dev/null 2>&1 && return 0; sleep 0.1; done
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
