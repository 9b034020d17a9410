# A fresh filesystem per measurement, so that no tool pays for what
# another (or an earlier run) wrote or deleted: ext4 with its journal on a
# loop device (direct IO to a file in $work, so written data is cached once,
# as on a disk), or a tmpfs. Source bench/lib/common.sh and call
# bench_workdir first.
#
# fresh_fs KIND NAME: KIND ext4 or tmpfs; mounts a new one at $work/fs/NAME
#   and prints that path.
# drop_fs NAME: unmounts everything at and below it and frees it.

fresh_fs() {
  local kind=$1 dir="$work/fs/$2"
  mkdir -p "$dir"
  case $kind in
    ext4)
      truncate -s 6G "$dir.img"
      # Inode tables and journal written now, not by the kernel's lazy
      # init thread while something is being measured.
      mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dir.img"
      local loop
      loop=$(losetup -f --show --direct-io=on "$dir.img")
      echo "$loop" >"$dir.loop"
      mount "$loop" "$dir"
      ;;
    tmpfs) mount -t tmpfs -o size=6g,mode=0755 tmpfs "$dir" ;;
    *) echo "fresh_fs: ext4 or tmpfs, not $kind" >&2; return 2 ;;
  esac
  echo "$dir"
}

drop_fs() {
  local dir="$work/fs/$1"
  unmount_under "$dir"
  if [ -f "$dir.loop" ]; then
    losetup -d "$(cat "$dir.loop")" 2>/dev/null || true
    rm -f "$dir.loop" "$dir.img"
  fi
  rmdir "$dir" 2>/dev/null || true
}

# The cleanup at exit frees the loop devices of whatever is still mounted.
bench_cleanup_after() {
  local f
  unmount_under "$work/fs"
  for f in "$work"/fs/*.loop; do
    [ -f "$f" ] && losetup -d "$(cat "$f")" 2>/dev/null
  done
  return 0
}
