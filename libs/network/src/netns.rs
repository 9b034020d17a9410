//! Network namespaces that live without a process: a new namespace is made
//! on a short-lived thread and bind-mounted onto a file, which keeps it
//! until the mount goes (as `ip netns add` and containerd do).

use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use berth_errdefs::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Creates a network namespace pinned at `dir/name` and returns that path.
/// Blocks: call it off the async runtime's workers.
pub fn create_netns(dir: &Path, name: &str) -> Result<PathBuf> {
    let (dir, name) = (dir.to_path_buf(), name.to_string());
    // A thread of its own: unshare moves only the calling thread into the
    // new namespace, and this one ends right after pinning it, so no other
    // work ever runs inside it.
    std::thread::spawn(move || -> Result<PathBuf> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::internal(format!("unshare(CLONE_NEWNET): {e}")))?;
        pin_namespace(Path::new("/proc/thread-self/ns/net"), &dir, &name)
    })
    .join()
    .unwrap_or_else(|_| Err(Error::internal("the namespace thread panicked")))
}

/// Runs `work` inside the network namespace pinned at `netns`, on a thread
/// of its own that ends right after (setns moves only the calling thread,
/// and a socket stays in the namespace it was made in). Blocks.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns)
            .map_err(|e| Error::io(format!("opening {}", netns.display()), &e))?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
            Error::internal(format!(
                "entering the network namespace {}: {e}",
                netns.display()
            ))
        })?;
        work()
    })
    .join()
    .unwrap_or_else(|_| Err(Error::internal("the network namespace thread panicked")))
}

/// Sets `lo` up inside the network namespace pinned at `netns` (the
/// kernel then gives it 127.0.0.1/8 and ::1): what CNI's `loopback` plugin
/// does, without starting a process for it. Blocks.
pub fn bring_up_loopback(netns: &Path) -> Result<()> {
    in_netns(netns, || {
        let failed = |what: &str| {
            Error::internal(format!(
                "bringing up lo: {what}: {}",
                std::io::Error::last_os_error()
            ))
        };
        // SAFETY: socket() takes no pointers; the descriptor it returns is
        // owned by `socket` below and closed when it drops.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(failed("socket"));
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; zeroes are a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq
        // `request` points to, which lives for both calls; the flags are
        // the member of its union both use.
        unsafe {
            if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
                return Err(failed("reading its flags"));
            }
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
                return Err(failed("setting it up"));
            }
        }
        Ok(())
    })
}

/// One interface's traffic counters, as /proc/net/dev gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The counters of every interface in the namespace pinned at `netns`.
/// Blocks.
pub fn interface_counters(netns: &Path) -> Result<Vec<InterfaceCounters>> {
    in_netns(netns, || {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(|e| Error::io("reading /proc/thread-self/net/dev", &e))?;
        Ok(parse_net_dev(&text))
    })
}

/// Parses /proc/net/dev: two header lines, then `name: rx_bytes packets
/// errs drop fifo frame compressed multicast tx_bytes packets errs ...`.
fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (n.len() >= 11).then(|| InterfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

/// Pins the namespace `source` names (`/proc/PID/ns/KIND`) at `dir/name`
/// and returns that path: the namespace lives while the pin does, after
/// its process is gone. Blocks.
pub fn pin_namespace(source: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::invalid_argument(format!(
            "{name:?} is not a namespace name"
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), &e))?;
    if let Err(e) = mount(
        Some(source),
        &path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(&path);
        return Err(Error::internal(format!(
            "pinning {} at {}: {e}",
            source.display(),
            path.display()
        )));
    }
    Ok(path)
}

/// Unpins and removes a namespace made by [`create_netns`] or pinned by
/// [`pin_namespace`]; one already gone is fine.
pub fn unpin_namespace(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "unmounting {}: {e}",
                path.display()
            )))
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for name in ["", "a/b", "..", "."] {
            assert!(create_netns(dir.path(), name).is_err(), "{name:?}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path())
                .map(|d| d.count())
                .unwrap_or(99),
            0
        );
    }

    #[test]
    fn a_namespace_is_pinned_and_removed() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = create_netns(dir.path(), "pod").unwrap_or_else(|e| panic!("{e}"));
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap_or_else(|e| panic!("{e}"));
        // The bind mount shows the namespace's inode, not the file's.
        let pinned = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::MetadataExt;
        assert_ne!(pinned.ino(), ours.ino());
        assert_eq!(pinned.dev(), ours.dev(), "an nsfs inode");
        unpin_namespace(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!path.exists());
        unpin_namespace(&path).unwrap_or_else(|e| panic!("removing twice: {e}"));
    }

    #[test]
    fn net_dev_counters_are_read_by_column() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0: 5000      40    3    0    0     0          0         0     7000      50    4    0    0     0       0          0
";
        let got = parse_net_dev(text);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 3,
                tx_bytes: 7000,
                tx_errors: 4
            }
        );
    }

    #[test]
    fn counters_come_from_inside_the_pinned_namespace() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root (namespaces, mounts)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let netns = create_netns(dir.path(), "stats").unwrap_or_else(|e| panic!("{e}"));
        let counters = interface_counters(&netns);
        unpin_namespace(&netns).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = counters
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|c| c.name)
            .collect();
        // A new namespace has only its loopback; the host's interfaces are
        // not there.
        assert_eq!(names, ["lo"]);
    }
}
