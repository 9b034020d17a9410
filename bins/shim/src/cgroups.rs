//! The container's cgroup: metrics for Stats (cgroup v1 and v2, in
//! containerd's metrics types) and OOM notifications (v1: an eventfd on
//! memory.oom_control; v2: inotify on memory.events).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;

use crate::error::{Result, ShimError};
use crate::stdio::async_fd;

/// A cgroup hierarchy as mounted here: the cgroup at the mount's root and
/// where it is mounted (`/sys/fs/cgroup/memory` on most hosts, but not all).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mounted {
    root: PathBuf,
    mount_point: PathBuf,
}

impl Mounted {
    /// The directory of the cgroup at `path` (as /proc/PID/cgroup names
    /// it) in this mount, if the mount shows it.
    fn dir(&self, path: &str) -> Option<PathBuf> {
        let rest = Path::new(path).strip_prefix(&self.root).ok()?;
        Some(self.mount_point.join(rest))
    }
}

/// The cgroup hierarchies mounted on this host, read from
/// `/proc/self/mountinfo` rather than assumed under `/sys/fs/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// Legacy hierarchies by each of their controllers (`memory`,
    /// `cpuacct`, `name=systemd`); the first mount of each wins.
    v1: HashMap<String, Mounted>,
    unified: Option<Mounted>,
}

impl Hierarchies {
    pub fn of_this_host() -> Result<Hierarchies> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| ShimError::io("reading /proc/self/mountinfo", e))?;
        Ok(Hierarchies::parse(&text))
    }

    pub fn parse(mountinfo: &str) -> Hierarchies {
        let mut found = Hierarchies::default();
        for line in mountinfo.lines() {
            // id parent major:minor root mount-point options [optional...] - type source super-options
            let Some((before, after)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = before.split(' ').collect();
            let rest: Vec<&str> = after.split(' ').collect();
            let (Some(root), Some(mount_point), Some(kind)) =
                (fields.get(3), fields.get(4), rest.first())
            else {
                continue;
            };
            let mounted = Mounted {
                root: PathBuf::from(unescape(root)),
                mount_point: PathBuf::from(unescape(mount_point)),
            };
            match *kind {
                "cgroup2" => {
                    found.unified.get_or_insert(mounted);
                }
                "cgroup" => {
                    let options = rest.get(2).copied().unwrap_or_default();
                    for option in options.split(',') {
                        if option == "rw" || option == "ro" {
                            continue;
                        }
                        found
                            .v1
                            .entry(option.to_string())
                            .or_insert_with(|| mounted.clone());
                    }
                }
                _ => {}
            }
        }
        found
    }

    /// Only the unified hierarchy (cgroup v2); hybrid hosts, with v1
    /// controllers beside it, count as v1 as they do for runc and
    /// containerd.
    pub fn is_unified(&self) -> bool {
        self.unified.is_some() && self.v1.keys().all(|k| k.starts_with("name="))
    }

    /// Every directory of the cgroup at `path`: the unified one on a v2
    /// host, else one per legacy hierarchy that has it.
    pub fn dirs(&self, path: &str) -> Vec<PathBuf> {
        if self.is_unified() {
            return self.unified.iter().filter_map(|m| m.dir(path)).collect();
        }
        let mut dirs: Vec<PathBuf> = self.v1.values().filter_map(|m| m.dir(path)).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// Mount info escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i + 1..i + 4) {
            Some(octal) if bytes[i] == b'\\' => std::str::from_utf8(octal)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok()),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a process's cgroups are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// Unified hierarchy: one directory.
    V2(PathBuf),
    /// Legacy (or hybrid) hierarchy: a directory per controller.
    V1(HashMap<String, PathBuf>),
}

impl Cgroup {
    /// The cgroup of `pid`, as the kernel reports it.
    pub fn of_pid(pid: u32) -> Result<Cgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| ShimError::io(format!("reading the cgroup of {pid}"), e))?;
        Ok(Cgroup::parse(&text, &Hierarchies::of_this_host()?))
    }

    /// A process's cgroups (`/proc/PID/cgroup`) on these hierarchies.
    pub fn parse(proc_cgroup: &str, hierarchies: &Hierarchies) -> Cgroup {
        let unified = hierarchies.is_unified();
        let mut controllers = HashMap::new();
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(names), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if names.is_empty() {
                if unified {
                    if let Some(dir) = hierarchies.unified.as_ref().and_then(|m| m.dir(path)) {
                        return Cgroup::V2(dir);
                    }
                }
                continue;
            }
            for name in names.split(',') {
                let Some(dir) = hierarchies.v1.get(name).and_then(|m| m.dir(path)) else {
                    continue;
                };
                controllers.insert(name.trim_start_matches("name=").to_string(), dir);
            }
        }
        Cgroup::V1(controllers)
    }

    /// Current metrics, as the Any containerd's `ctr task metrics` decodes.
    pub fn metrics(&self) -> Result<Any> {
        let (type_url, bytes) = match self {
            Cgroup::V1(controllers) => (
                "io.containerd.cgroups.v1.Metrics",
                v1_metrics(controllers).write_to_bytes(),
            ),
            Cgroup::V2(dir) => (
                "io.containerd.cgroups.v2.Metrics",
                v2_metrics(dir).write_to_bytes(),
            ),
        };
        let mut any = Any::new();
        any.type_url = type_url.to_string();
        any.value = bytes.map_err(|e| ShimError::protobuf("encoding metrics", e))?;
        Ok(any)
    }
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A cgroup v2 limit file: a number, or "max" for none, which containerd's
/// v2 metrics report as the largest u64 (its v1 metrics say 0 for a pids
/// limit of "max", which [`read_u64`] gives).
fn read_v2_limit(path: &Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim() == "max" => u64::MAX,
        _ => read_u64(path),
    }
}

/// A flat `key value` file (memory.stat, cpu.stat, ...).
fn read_keyed(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn v1_metrics(controllers: &HashMap<String, PathBuf>) -> v1::Metrics {
    let mut metrics = v1::Metrics::new();
    if let Some(dir) = controllers.get("pids") {
        let mut pids = v1::PidsStat::new();
        pids.current = read_u64(&dir.join("pids.current"));
        pids.limit = read_u64(&dir.join("pids.max"));
        metrics.pids = Some(pids).into();
    }
    if let Some(dir) = controllers.get("cpuacct") {
        let mut usage = v1::CPUUsage::new();
        usage.total = read_u64(&dir.join("cpuacct.usage"));
        usage.per_cpu = std::fs::read_to_string(dir.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let stat = read_keyed(&dir.join("cpuacct.stat"));
        // cpuacct.stat counts USER_HZ ticks; metrics carry nanoseconds.
        let tick_ns = 1_000_000_000 / clock_ticks();
        usage.user = stat.get("user").copied().unwrap_or(0) * tick_ns;
        usage.kernel = stat.get("system").copied().unwrap_or(0) * tick_ns;
        let mut cpu = v1::CPUStat::new();
        cpu.usage = Some(usage).into();
        if let Some(cpu_dir) = controllers.get("cpu") {
            let stat = read_keyed(&cpu_dir.join("cpu.stat"));
            let mut throttle = v1::Throttle::new();
            throttle.periods = stat.get("nr_periods").copied().unwrap_or(0);
            throttle.throttled_periods = stat.get("nr_throttled").copied().unwrap_or(0);
            throttle.throttled_time = stat.get("throttled_time").copied().unwrap_or(0);
            cpu.throttling = Some(throttle).into();
        }
        metrics.cpu = Some(cpu).into();
    }
    if let Some(dir) = controllers.get("memory") {
        let stat = read_keyed(&dir.join("memory.stat"));
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        let mut memory = v1::MemoryStat::new();
        memory.cache = get("cache");
        memory.rss = get("rss");
        memory.rss_huge = get("rss_huge");
        memory.mapped_file = get("mapped_file");
        memory.dirty = get("dirty");
        memory.writeback = get("writeback");
        memory.pg_pg_in = get("pgpgin");
        memory.pg_pg_out = get("pgpgout");
        memory.pg_fault = get("pgfault");
        memory.pg_maj_fault = get("pgmajfault");
        memory.inactive_anon = get("inactive_anon");
        memory.active_anon = get("active_anon");
        memory.inactive_file = get("inactive_file");
        memory.active_file = get("active_file");
        memory.unevictable = get("unevictable");
        memory.hierarchical_memory_limit = get("hierarchical_memory_limit");
        memory.hierarchical_swap_limit = get("hierarchical_memsw_limit");
        memory.total_cache = get("total_cache");
        memory.total_rss = get("total_rss");
        memory.total_rss_huge = get("total_rss_huge");
        memory.total_mapped_file = get("total_mapped_file");
        memory.total_dirty = get("total_dirty");
        memory.total_writeback = get("total_writeback");
        memory.total_pg_pg_in = get("total_pgpgin");
        memory.total_pg_pg_out = get("total_pgpgout");
        memory.total_pg_fault = get("total_pgfault");
        memory.total_pg_maj_fault = get("total_pgmajfault");
        memory.total_inactive_anon = get("total_inactive_anon");
        memory.total_active_anon = get("total_active_anon");
        memory.total_inactive_file = get("total_inactive_file");
        memory.total_active_file = get("total_active_file");
        memory.total_unevictable = get("total_unevictable");
        let entry = |prefix: &str| {
            let mut e = v1::MemoryEntry::new();
            e.usage = read_u64(&dir.join(format!("{prefix}usage_in_bytes")));
            e.max = read_u64(&dir.join(format!("{prefix}max_usage_in_bytes")));
            e.limit = read_u64(&dir.join(format!("{prefix}limit_in_bytes")));
            e.failcnt = read_u64(&dir.join(format!("{prefix}failcnt")));
            e
        };
        memory.usage = Some(entry("memory.")).into();
        memory.swap = Some(entry("memory.memsw.")).into();
        memory.kernel = Some(entry("memory.kmem.")).into();
        memory.kernel_tcp = Some(entry("memory.kmem.tcp.")).into();
        metrics.memory = Some(memory).into();
    }
    metrics
}

fn v2_metrics(dir: &Path) -> v2::Metrics {
    let mut metrics = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = read_u64(&dir.join("pids.current"));
    pids.limit = read_v2_limit(&dir.join("pids.max"));
    metrics.pids = Some(pids).into();

    let stat = read_keyed(&dir.join("cpu.stat"));
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = get("usage_usec");
    cpu.user_usec = get("user_usec");
    cpu.system_usec = get("system_usec");
    cpu.nr_periods = get("nr_periods");
    cpu.nr_throttled = get("nr_throttled");
    cpu.throttled_usec = get("throttled_usec");
    metrics.cpu = Some(cpu).into();

    let stat = read_keyed(&dir.join("memory.stat"));
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let mut memory = v2::MemoryStat::new();
    memory.anon = get("anon");
    memory.file = get("file");
    memory.kernel_stack = get("kernel_stack");
    memory.slab = get("slab");
    memory.sock = get("sock");
    memory.shmem = get("shmem");
    memory.file_mapped = get("file_mapped");
    memory.file_dirty = get("file_dirty");
    memory.file_writeback = get("file_writeback");
    memory.anon_thp = get("anon_thp");
    memory.inactive_anon = get("inactive_anon");
    memory.active_anon = get("active_anon");
    memory.inactive_file = get("inactive_file");
    memory.active_file = get("active_file");
    memory.unevictable = get("unevictable");
    memory.slab_reclaimable = get("slab_reclaimable");
    memory.slab_unreclaimable = get("slab_unreclaimable");
    memory.pgfault = get("pgfault");
    memory.pgmajfault = get("pgmajfault");
    memory.usage = read_u64(&dir.join("memory.current"));
    memory.usage_limit = read_v2_limit(&dir.join("memory.max"));
    memory.swap_usage = read_u64(&dir.join("memory.swap.current"));
    memory.swap_limit = read_v2_limit(&dir.join("memory.swap.max"));
    metrics.memory = Some(memory).into();

    let events = read_keyed(&dir.join("memory.events"));
    let get = |k: &str| events.get(k).copied().unwrap_or(0);
    let mut memory_events = v2::MemoryEvents::new();
    memory_events.low = get("low");
    memory_events.high = get("high");
    memory_events.max = get("max");
    memory_events.oom = get("oom");
    memory_events.oom_kill = get("oom_kill");
    metrics.memory_events = Some(memory_events).into();
    metrics
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Calls `on_oom` whenever the kernel's OOM killer acts in the cgroup,
/// until the cgroup goes away. Spawn it; abort it when the task is deleted.
pub async fn watch_oom(cgroup: Cgroup, on_oom: impl Fn() + Send + 'static) -> Result<()> {
    match cgroup {
        Cgroup::V1(controllers) => {
            let Some(dir) = controllers.get("memory") else {
                return Ok(());
            };
            watch_oom_v1(dir, on_oom).await
        }
        Cgroup::V2(dir) => watch_oom_v2(&dir, on_oom).await,
    }
}

async fn watch_oom_v1(dir: &Path, on_oom: impl Fn()) -> Result<()> {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| ShimError::sys("creating an eventfd", e))?;
    let control = std::fs::File::open(dir.join("memory.oom_control"))
        .map_err(|e| ShimError::io("opening memory.oom_control", e))?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd()),
    )
    .map_err(|e| ShimError::io("registering for OOM events", e))?;
    let eventfd =
        async_fd(OwnedFd::from(eventfd)).map_err(|e| ShimError::io("watching the eventfd", e))?;
    loop {
        let mut guard = eventfd
            .readable()
            .await
            .map_err(|e| ShimError::io("waiting for OOM events", e))?;
        let mut buf = [0u8; 8];
        // SAFETY: buf is valid for 8 bytes of writes for the call.
        let n = unsafe { libc::read(guard.get_inner().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n < 0 {
            guard.clear_ready();
            continue;
        }
        // The eventfd also fires when the cgroup is removed.
        if !dir.join("memory.oom_control").exists() {
            return Ok(());
        }
        on_oom();
    }
}

async fn watch_oom_v2(dir: &Path, on_oom: impl Fn()) -> Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let events = dir.join("memory.events");
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| ShimError::sys("creating an inotify", e))?;
    inotify
        .add_watch(&events, AddWatchFlags::IN_MODIFY)
        .map_err(|e| ShimError::sys("watching memory.events", e))?;
    let inotify =
        async_fd(OwnedFd::from(inotify)).map_err(|e| ShimError::io("watching inotify", e))?;
    let oom_kills = || read_keyed(&events).get("oom_kill").copied().unwrap_or(0);
    let mut seen = oom_kills();
    loop {
        let mut guard = inotify
            .readable()
            .await
            .map_err(|e| ShimError::io("waiting for memory events", e))?;
        let mut buf = [0u8; 1024];
        // SAFETY: buf is valid for its length of writes for the call.
        let n = unsafe {
            libc::read(
                guard.get_inner().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            guard.clear_ready();
            continue;
        }
        if !events.exists() {
            return Ok(());
        }
        let now = oom_kills();
        if now > seen {
            on_oom();
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "9:name=systemd:/\n8:pids:/c1\n4:memory:/c1\n2:cpu,cpuacct:/c1\n0::/c1\n";
    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /srv/cg\\040pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_hybrid_hierarchies_as_v1_controllers_where_they_are_mounted() {
        let hierarchies = Hierarchies::parse(HYBRID_MOUNTS);
        assert!(!hierarchies.is_unified());
        let cgroup = Cgroup::parse(HYBRID, &hierarchies);
        let Cgroup::V1(controllers) = cgroup else {
            panic!("expected v1");
        };
        assert_eq!(controllers["memory"], Path::new("/sys/fs/cgroup/memory/c1"));
        assert_eq!(
            controllers["cpuacct"],
            Path::new("/sys/fs/cgroup/cpu,cpuacct/c1")
        );
        assert_eq!(controllers["pids"], Path::new("/srv/cg pids/c1"));
        assert_eq!(controllers["systemd"], Path::new("/sys/fs/cgroup/systemd"));
        assert_eq!(
            hierarchies.dirs("/shims"),
            [
                "/srv/cg pids/shims",
                "/sys/fs/cgroup/cpu,cpuacct/shims",
                "/sys/fs/cgroup/memory/shims",
                "/sys/fs/cgroup/systemd/shims",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn parses_unified_hierarchy_as_v2_and_a_mount_of_a_subtree() {
        let mounts = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let hierarchies = Hierarchies::parse(mounts);
        assert!(hierarchies.is_unified());
        let cgroup = Cgroup::parse("0::/system.slice/c1\n", &hierarchies);
        assert_eq!(cgroup, Cgroup::V2("/sys/fs/cgroup/system.slice/c1".into()));
        assert_eq!(
            hierarchies.dirs("/shims"),
            [PathBuf::from("/sys/fs/cgroup/shims")]
        );

        // Inside a container its own cgroup is the mount's root.
        let nested = "29 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let hierarchies = Hierarchies::parse(nested);
        let cgroup = Cgroup::parse("0::/kubepods/pod1/c1\n", &hierarchies);
        assert_eq!(cgroup, Cgroup::V2("/sys/fs/cgroup/c1".into()));
        assert!(hierarchies.dirs("/elsewhere").is_empty());
    }

    #[test]
    fn v2_metrics_read_from_the_cgroup_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pids.current"), "3\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 77\nuser_usec 70\n").unwrap();
        std::fs::write(dir.path().join("memory.events"), "oom 1\noom_kill 2\n").unwrap();
        let any = Cgroup::V2(dir.path().into()).metrics().unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.cpu.usage_usec, 77);
        assert_eq!(m.memory_events.oom_kill, 2);
        // No limit files: none read.
        assert_eq!(m.memory.usage_limit, 0);

        // Limits: a number as it is, "max" as containerd says it.
        std::fs::write(dir.path().join("memory.max"), "67108864\n").unwrap();
        std::fs::write(dir.path().join("pids.max"), "max\n").unwrap();
        std::fs::write(dir.path().join("memory.swap.max"), "max\n").unwrap();
        let any = Cgroup::V2(dir.path().into()).metrics().unwrap();
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage_limit, 64 << 20);
        assert_eq!(m.pids.limit, u64::MAX);
        assert_eq!(m.memory.swap_limit, u64::MAX);
    }
}
