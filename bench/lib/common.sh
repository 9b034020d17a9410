# What every benchmark script shares: where the tree and the release
# binaries are, one scratch directory removed at exit with everything
# started in it, berth's daemons started and waited for, and the result
# rows that bench/all.sh collects. Source it first, from bash:
#
#   . "$(dirname "$0")/lib/common.sh"
#   bench_build                   # cargo build --release --workspace --bins
#   bench_workdir fetch           # $work, removed at exit (trap)
#
# It sets $top (the tree, also the current directory), $target (the cargo
# target directory, CARGO_TARGET_DIR or target/, absolute) and $bin (its
# release/).

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"
target=${CARGO_TARGET_DIR:-$top/target}
case $target in /*) ;; *) target="$top/$target" ;; esac
bin="$target/release"
# The CLI talks to the daemons each script starts, through the addresses
# it exports, not to a system berth.
unset BERTH_RUN_DIR BERTH_SNAPSHOTTER

# Release builds of every binary (cargo does nothing when they are up to
# date); extra arguments replace the default package selection.
bench_build() {
  if [ $# = 0 ]; then set -- --workspace --bins; fi
  cargo build --release "$@" >&2
}

# bench_workdir NAME [PARENT]: makes $work (PARENT/berth-NAME-bench.XXXXXX,
# PARENT $BERTH_BENCH_DIR or /var/tmp by default) and sets the exit trap
# that cleans it up.
# pids (an array) and $work/pids (a file, for processes started inside
# $(...) subshells) list the processes to kill at exit; bench_dirs lists
# more directories to unmount under and remove (e.g. one under /run).
# A script that must do more defines bench_cleanup_before (run first,
# while the daemons still answer) and bench_cleanup_after (run after they
# were killed, before the unmounts).
bench_workdir() {
  work=$(mktemp -d "${2:-${BERTH_BENCH_DIR:-/var/tmp}}/berth-$1-bench.XXXXXX")
  : >"$work/pids"
  pids=()
  bench_dirs=("$work")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# Records a process to kill at exit (works inside a $(...) subshell too).
bench_track() { echo "$1" >>"$work/pids"; }

bench_cleanup() {
  set +eu
  trap - EXIT INT TERM
  if declare -F bench_cleanup_before >/dev/null; then bench_cleanup_before; fi
  local all=("${pids[@]}") pid d
  if [ -f "$work/pids" ]; then
    while read -r pid; do all+=("$pid"); done <"$work/pids"
  fi
  if [ ${#all[@]} -gt 0 ]; then
    kill -9 "${all[@]}" 2>/dev/null
    # Only our own children can be waited for; the rest are gone anyway.
    for pid in "${all[@]}"; do wait "$pid" 2>/dev/null; done
  fi
  if declare -F bench_cleanup_after >/dev/null; then bench_cleanup_after; fi
  for d in "${bench_dirs[@]}"; do
    [ -n "$d" ] && [ -d "$d" ] || continue
    unmount_under "$d"
    rm -rf "$d"
  done
}

# stop_pid PID...: SIGTERM, then waits (10 s at most) until each has
# exited (a zombie that is not our child counts as exited).
stop_pid() {
  local pid _
  kill "$@" 2>/dev/null || true
  for pid in "$@"; do
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 500); do
      [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || break
      sleep 0.02
    done
  done
}

# Lazily unmounts every mount at or below DIR, deepest first.
unmount_under() {
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# wait_socket PATH [WHAT LOG]: waits up to 10 s for a unix socket; on a
# timeout says WHAT did not start and shows LOG.
wait_socket() {
  local _
  for _ in $(seq 500); do [ -S "$1" ] && return 0; sleep 0.02; done
  echo "${2:-$1} did not start${3:+; its log:}" >&2
  [ -z "${3:-}" ] || tail -20 "$3" >&2
  return 1
}

# start_berth_daemon NAME ROOT [ARGS...]: starts $bin/berth-NAME on
# ROOT/NAME/{root,state} with its socket at ROOT/NAME.sock and its output
# in ROOT/NAME.log (log level BERTH_LOG_LEVEL, warn by default; under the
# array daemon_prefix, e.g. chrt, if set), records its pid (bench_track
# and ROOT/NAME.pid) and waits for the socket.
start_berth_daemon() {
  local name=$1 root=$2; shift 2
  mkdir -p "$root"
  # Not on our stdout: $(...) would wait for the daemon to close it.
  ${daemon_prefix[@]+"${daemon_prefix[@]}"} "$bin/berth-$name" --root "$root/$name/root" \
    --state "$root/$name/state" --address "$root/$name.sock" \
    --log-level "${BERTH_LOG_LEVEL:-warn}" "$@" </dev/null >"$root/$name.log" 2>&1 &
  bench_track $!
  echo $! >"$root/$name.pid"
  wait_socket "$root/$name.sock" "berth-$name" "$root/$name.log"
}

# start_berth NAME... ROOT: the daemons named, wired to each other as
# `berth up` wires them (contentd, snapd, metad, taskd, in that order),
# with BERTH_*_ADDRESS exported for the CLI.
start_berth() {
  local root=${*: -1} name
  for name in "${@:1:$#-1}"; do
    case $name in
      contentd) start_berth_daemon contentd "$root" ;;
      snapd) start_berth_daemon snapd "$root" --contentd "$root/contentd.sock" ;;
      metad) start_berth_daemon metad "$root" --contentd "$root/contentd.sock" --snapd "$root/snapd.sock" ;;
      taskd) start_berth_daemon taskd "$root" --metad "$root/metad.sock" --snapd "$root/snapd.sock" ;;
      *) echo "start_berth: no daemon $name" >&2; return 2 ;;
    esac
    local var
    var="BERTH_$(tr a-z A-Z <<<"$name")_ADDRESS"
    export "$var=$root/$name.sock"
  done
}

# bench_result ID LABEL UNIT BERTH PEER BETTER TARGET [PEER_NAME] [NOTE]:
# one result row for bench/all.sh, as a JSON line appended to
# $BENCH_RESULTS (nothing when it is unset). BETTER is lower or higher
# (for berth's value); TARGET is the ratio berth/PEER to reach, or - for
# none; PEER_NAME is containerd unless said. $bench_name (the script)
# names the benchmark.
bench_result() {
  [ -n "${BENCH_RESULTS:-}" ] || return 0
  local target=$7
  [ "$target" != - ] || target=null
  printf '{"kind":"result","benchmark":%s,"id":%s,"label":%s,"unit":%s,"berth":%s,"peer":%s,"better":%s,"target":%s,"peer_name":%s,"note":%s}\n' \
    "$(json_str "${bench_name:-$(basename "$0" .sh)}")" "$(json_str "$1")" "$(json_str "$2")" \
    "$(json_str "$3")" "$(json_num "$4")" "$(json_num "$5")" "$(json_str "$6")" "$target" \
    "$(json_str "${8:-containerd}")" "$(json_str "${9:-}")" >>"$BENCH_RESULTS"
}

# A JSON string of $1; a JSON number of $1 (null when it is not one, e.g.
# a failed measurement's "-"; bc's ".5" gets its leading zero).
json_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/ }
  s=${s//$'\n'/ }
  printf '"%s"' "$s"
}
json_num() {
  local n=$1
  case $n in .*) n="0$n" ;; -.*) n="-0${n#-}" ;; esac
  if [[ $n =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then printf '%s' "$n"; else printf null; fi
}
