//! User id mappings and the user namespaces made from them: what an
//! id-mapped mount needs (the kernel takes the mapping of a user namespace,
//! given as an fd), and what a CRI pod in a user namespace of its own pins.
//!
//! A mapping is written as containerd writes it in its snapshot labels and
//! mount options (`uidmap=0:100000:65536`): `CONTAINER:HOST:SIZE`, several
//! joined by commas.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use berth_errdefs::{Error, Result};
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// One range of ids: `size` ids from `container_id` inside the namespace
/// are `host_id`... outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl IdMapping {
    /// The host id that `id` inside the namespace is, if this range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container_id)?;
        (offset < self.size).then(|| self.host_id + offset)
    }
}

/// Parses `CONTAINER:HOST:SIZE[,CONTAINER:HOST:SIZE...]`. Every range must
/// be non-empty, fit in 32-bit ids on both sides, and overlap no other
/// range on either side (the kernel refuses overlaps too, but only once a
/// namespace is being made).
pub fn parse_id_mappings(text: &str) -> Result<Vec<IdMapping>> {
    let bad = |why: &str| Error::invalid_argument(format!("id mapping {text:?}: {why}"));
    let mut mappings: Vec<IdMapping> = Vec::new();
    for range in text.split(',') {
        let fields: Vec<&str> = range.split(':').collect();
        let [container, host, size] = fields[..] else {
            return Err(bad("each range is CONTAINER:HOST:SIZE"));
        };
        let number = |field: &str| -> Result<u32> {
            if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("ids and sizes are decimal numbers"));
            }
            field.parse().map_err(|_| bad("an id is out of range"))
        };
        let mapping = IdMapping {
            container_id: number(container)?,
            host_id: number(host)?,
            size: number(size)?,
        };
        check_mapping(&mapping).map_err(|e| bad(&e))?;
        mappings.push(mapping);
    }
    check_disjoint(&mappings).map_err(|e| bad(&e))?;
    Ok(mappings)
}

/// A range the kernel would take: not empty, and its last id on either
/// side below 2^32 - 1 (the kernel's "no id").
pub fn check_mapping(mapping: &IdMapping) -> std::result::Result<(), String> {
    if mapping.size == 0 {
        return Err("a range maps no ids (size 0)".to_string());
    }
    let fits = |start: u32| u64::from(start) + u64::from(mapping.size) <= u64::from(u32::MAX);
    if !fits(mapping.container_id) || !fits(mapping.host_id) {
        return Err(format!(
            "the range {}:{}:{} runs past the largest id",
            mapping.container_id, mapping.host_id, mapping.size
        ));
    }
    Ok(())
}

fn check_disjoint(mappings: &[IdMapping]) -> std::result::Result<(), String> {
    let overlaps = |a: u32, b: u32, size_a: u32, size_b: u32| {
        u64::from(a) < u64::from(b) + u64::from(size_b)
            && u64::from(b) < u64::from(a) + u64::from(size_a)
    };
    for (i, a) in mappings.iter().enumerate() {
        for b in &mappings[i + 1..] {
            if overlaps(a.container_id, b.container_id, a.size, b.size)
                || overlaps(a.host_id, b.host_id, a.size, b.size)
            {
                return Err("two ranges overlap".to_string());
            }
        }
    }
    Ok(())
}

/// The text form [`parse_id_mappings`] reads.
pub fn format_id_mappings(mappings: &[IdMapping]) -> String {
    mappings
        .iter()
        .map(|m| format!("{}:{}:{}", m.container_id, m.host_id, m.size))
        .collect::<Vec<_>>()
        .join(",")
}

/// The host ids of the namespace's root (uid 0 and gid 0 inside), which
/// own the top of a snapshot made for it.
pub fn root_pair(uids: &[IdMapping], gids: &[IdMapping]) -> Result<(u32, u32)> {
    let root = |mappings: &[IdMapping], what: &str| {
        mappings
            .iter()
            .find_map(|m| m.to_host(0))
            .ok_or_else(|| Error::invalid_argument(format!("the {what} mapping does not map 0")))
    };
    Ok((root(uids, "uid")?, root(gids, "gid")?))
}

/// A process that made a user namespace (and any other namespaces named
/// with it, owned by that user namespace) and waits, so that the
/// namespaces can be opened or pinned through `/proc/PID/ns/`. It ends when
/// this is dropped; what was opened or pinned keeps the namespaces.
#[derive(Debug)]
pub struct NamespaceHolder {
    pid: Pid,
    /// Closed on drop: the holder's read of its end returns and it exits.
    release: Option<OwnedFd>,
}

impl NamespaceHolder {
    /// Forks a process that unshares a user namespace plus `also` (e.g.
    /// `CLONE_NEWNET`, made inside the new user namespace), writes its uid
    /// and gid maps from here, and returns once they are in place.
    pub fn spawn(
        uids: &[IdMapping],
        gids: &[IdMapping],
        also: CloneFlags,
    ) -> std::result::Result<NamespaceHolder, Errno> {
        if uids.is_empty() || gids.is_empty() {
            return Err(Errno::EINVAL);
        }
        let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (release_read, release_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let flags = (CloneFlags::CLONE_NEWUSER | also).bits();
        // The child keeps only its own two pipe ends: it never execs, so
        // close-on-exec does not apply, and a copy of another holder's
        // release end (made by a concurrent spawn on another thread) would
        // keep that holder's process waiting forever.
        let (keep_low, keep_high) = {
            let (a, b) = (ready_write.as_raw_fd(), release_read.as_raw_fd());
            (a.min(b) as libc::c_uint, a.max(b) as libc::c_uint)
        };
        // SAFETY: the child of a multi-threaded process may only make
        // async-signal-safe calls until it execs or exits; it makes only
        // raw syscalls (close_range, unshare, write, read, _exit) on values
        // prepared before the fork, and never returns into Rust code.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                // SAFETY: plain syscalls on fds this process owns; see above.
                unsafe {
                    close_all_but(keep_low, keep_high);
                    let status: u8 = if libc::unshare(flags) == 0 {
                        0
                    } else {
                        // An errno fits a byte; 0 is success.
                        (*libc::__errno_location()).clamp(1, 255) as u8
                    };
                    libc::write(ready_write.as_raw_fd(), (&raw const status).cast(), 1);
                    let mut byte = 0u8;
                    libc::read(release_read.as_raw_fd(), (&raw mut byte).cast(), 1);
                    libc::_exit(0);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(ready_write);
                drop(release_read);
                let holder = NamespaceHolder {
                    pid: child,
                    release: Some(release_write),
                };
                let mut status = [0u8; 1];
                let read = loop {
                    match nix::unistd::read(&ready_read, &mut status) {
                        Err(Errno::EINTR) => continue,
                        other => break other,
                    }
                };
                match read {
                    Ok(1) if status[0] == 0 => {}
                    Ok(1) => return Err(Errno::from_raw(i32::from(status[0]))),
                    Ok(_) => return Err(Errno::ECHILD),
                    Err(e) => return Err(e),
                }
                holder.write_map("uid_map", uids)?;
                holder.write_map("gid_map", gids)?;
                Ok(holder)
            }
        }
    }

    fn write_map(&self, file: &str, mappings: &[IdMapping]) -> std::result::Result<(), Errno> {
        let text: String = mappings
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
            .collect();
        // One write: the kernel takes a map only whole, and only once.
        let path = format!("/proc/{}/{file}", self.pid);
        std::fs::write(&path, text.as_bytes())
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// `/proc/PID/ns/KIND` of the holder (`user`, `net`...).
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.pid))
    }

    /// An fd of the user namespace, as `mount_setattr` takes it.
    pub fn open_userns(&self) -> std::result::Result<OwnedFd, Errno> {
        nix::fcntl::open(
            &self.ns_path("user"),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    }
}

/// Closes every fd but `low` and `high` (`low < high`) with close_range(2)
/// (Linux ≥ 5.9), falling back to close(2) on each of the first 64 Ki fds.
///
/// # Safety
/// Only syscalls: callable in the child of a fork of a multi-threaded
/// process; the caller must not use any other fd afterwards.
unsafe fn close_all_but(low: libc::c_uint, high: libc::c_uint) {
    let ranges = [
        (0, low.checked_sub(1)),
        (low + 1, high.checked_sub(1)),
        (high + 1, Some(libc::c_uint::MAX)),
    ];
    for (first, last) in ranges {
        let Some(last) = last else { continue };
        if first > last {
            continue;
        }
        // SAFETY: close_range only closes fds; see the function's contract.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
        if rc != 0 {
            for fd in first..=last.min(65535) {
                // SAFETY: as above.
                unsafe { libc::close(fd as libc::c_int) };
            }
        }
    }
}

impl Drop for NamespaceHolder {
    fn drop(&mut self) {
        drop(self.release.take());
        // Another reaper of this process may have collected it already.
        let _ = waitpid(self.pid, None);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn mappings_parse_strictly() {
        assert_eq!(
            parse_id_mappings("0:100000:65536").unwrap(),
            [IdMapping {
                container_id: 0,
                host_id: 100000,
                size: 65536
            }]
        );
        assert_eq!(parse_id_mappings("0:1000:1,1:200000:10").unwrap().len(), 2);
        for bad in [
            "",
            "0:1000",
            "0:1000:1:2",
            "0:1000:0",
            "-1:1000:1",
            "0:+1000:1",
            "0:1000:4294967295",
            "0:4294967290:10",
            "0:1000:10,5:5000:10",
            "0:1000:10,20:1005:10",
            "0: 1000:10",
        ] {
            assert!(parse_id_mappings(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_text_form_reads_back() {
        let text = "0:100000:65536,70000:3000:5";
        assert_eq!(format_id_mappings(&parse_id_mappings(text).unwrap()), text);
    }

    #[test]
    fn the_root_pair_is_where_zero_goes() {
        let uids = parse_id_mappings("1:5000:10,0:1000:1").unwrap();
        let gids = parse_id_mappings("0:2000:10").unwrap();
        assert_eq!(root_pair(&uids, &gids).unwrap(), (1000, 2000));
        let unmapped = parse_id_mappings("1:1000:10").unwrap();
        assert!(root_pair(&unmapped, &gids).is_err());
        assert!(root_pair(&uids, &unmapped).is_err());
    }

    #[test]
    fn a_holder_shows_its_mappings_and_ends_when_dropped() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root (user namespaces with any mapping)"
            );
            return;
        }
        let uids = parse_id_mappings("0:300000:65536").unwrap();
        let gids = parse_id_mappings("0:400000:1000").unwrap();
        let holder = NamespaceHolder::spawn(&uids, &gids, CloneFlags::CLONE_NEWNET).unwrap();
        let pid = holder.pid;
        let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        let gid_map = std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap();
        assert_eq!(
            uid_map.split_whitespace().collect::<Vec<_>>(),
            ["0", "300000", "65536"]
        );
        assert_eq!(
            gid_map.split_whitespace().collect::<Vec<_>>(),
            ["0", "400000", "1000"]
        );
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(std::fs::read_link(holder.ns_path("net")).unwrap(), ours);
        let fd = holder.open_userns().unwrap();
        drop(holder);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the holder was reaped"
        );
        // The namespace outlives its process while an fd holds it.
        let held = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(held.to_string_lossy().starts_with("user:["), "{held:?}");
    }

    /// Holders made at once on several threads each end when dropped: no
    /// child keeps another's release pipe open (which once hung them).
    #[test]
    fn holders_spawned_concurrently_each_end_when_dropped() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root (user namespaces with any mapping)"
            );
            return;
        }
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let done = done.clone();
            std::thread::spawn(move || {
                let ids = parse_id_mappings("0:500000:65536").unwrap();
                for _ in 0..25 {
                    let holders: Vec<NamespaceHolder> = (0..3)
                        .map(|_| NamespaceHolder::spawn(&ids, &ids, CloneFlags::empty()).unwrap())
                        .collect();
                    drop(holders);
                }
                let _ = done.send(());
            });
        }
        // A liveness bound, not a timing one: the spawns take milliseconds,
        // and the bug this guards against waited forever.
        for _ in 0..4 {
            finished
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("a dropped holder's process never ended");
        }
    }

    #[test]
    fn a_bad_map_fails_the_spawn_and_leaves_no_process() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // Overlapping ranges: the kernel refuses the map.
        let uids = [
            IdMapping {
                container_id: 0,
                host_id: 1000,
                size: 10,
            },
            IdMapping {
                container_id: 5,
                host_id: 2000,
                size: 10,
            },
        ];
        let gids = parse_id_mappings("0:1000:10").unwrap();
        assert!(NamespaceHolder::spawn(&uids, &gids, CloneFlags::empty()).is_err());
    }
}
