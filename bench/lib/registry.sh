# Debian's docker-registry on a free port of 127.0.0.1, storing under
# $work/registry, for the benchmarks.
#
# start_registry: starts it (its pid appended to the array pids), waits
# until it answers, and sets $port.
start_registry() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YML
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && return 0; sleep 0.1; done
  echo "docker-registry did not answer; see $work/registry.log" >&2
  return 1
}
