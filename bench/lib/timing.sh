# Shared by the benchmarks that time one command per run. Source it with
# $work (a scratch dir) set.

# Gives every timed command the same memory to start with. On a VM whose
# host takes freed guest memory back (a balloon with free page reporting,
# as on the machines these figures come from), memory the guest has not
# touched lately costs a host fault per page the first time: writing 159
# MB of files into tmpfs took 0.22 s with recently freed pages and 1.6-1.9
# s without, and whichever tool ran right after another's cleanup got the
# fast pages. Touching BENCH_WARM_MIB (512) of tmpfs and freeing it just
# before each timed command hands every tool the same warm pages.
# BENCH_WARM_MIB=0 turns it off.
warm_memory() {
  local mib=${BENCH_WARM_MIB:-512}
  [ "$mib" -gt 0 ] && [ -d /dev/shm ] || return 0
  local file
  file=$(mktemp /dev/shm/berth-bench-warm.XXXXXX)
  head -c "${mib}M" /dev/zero >"$file" || true
  rm -f "$file"
}

# Seconds the command took; its stderr is shown and the run fails if it
# fails.
seconds() {
  local start end
  warm_memory
  start=$(date +%s.%N)
  "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; return 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

# The median of whitespace-separated numbers on stdin.
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# A / B with two decimals.
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
