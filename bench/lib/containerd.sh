# A private containerd for the benchmarks: its own root, state and sockets
# under a directory, the CRI plugin off.
#
# start_containerd DIR [PREFIX...]: writes DIR/config.toml, starts containerd
# (under PREFIX, e.g. chrt, if given) with its output in DIR/log, waits for
# DIR/c.sock, and sets $containerd_pid (also appended to $work/pids, for
# cleanups that run outside the subshell that started it).
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
  "$@" containerd --config "$root/config.toml" >"$root/log" 2>&1 &
  containerd_pid=$!
  echo "$containerd_pid" >>"$work/pids"
  for _ in $(seq 200); do [ -S "$root/c.sock" ] && return 0; sleep 0.05; done
  echo "containerd did not start; see $root/log" >&2
  return 1
}
