# Debian's docker-registry on a free port of 127.0.0.1, storing under
# $work/registry, for the benchmarks. Source bench/lib/common.sh first.
#
# start_registry: starts it (recorded with bench_track), waits until it
# answers, and sets $port.
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
  docker-registry serve "$work/registry.yml" </dev/null >"$work/registry.log" 2>&1 &
  bench_track $!
  local _
  for _ in $(seq 100); do python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "http://127.0.0.1:$port/v2/" 2>/dev/null && return 0; sleep 0.1; done
  echo "docker-registry did not answer; see $work/registry.log" >&2
  return 1
}
