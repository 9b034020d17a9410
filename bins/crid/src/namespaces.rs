//! A pod's namespaces, made and pinned by crid itself rather than held by
//! a process: its network namespace (which CNI sets up), its IPC and UTS
//! namespaces, and its user namespace when it has one of its own. Each is
//! pinned by a bind mount at `STATE/{net,ipc,uts,user}ns/<pod id>`, and
//! the pod's containers (and its pause process, when it needs one) join
//! them by path. The pod's hostname and sysctls are set in them here,
//! once, before any of its processes exists.
//!
//! So a pod needs no process of its own unless its containers share one
//! PID namespace (whose first process, the pause, reaps the others): the
//! kubelet's default pod, whose containers each have their own, starts
//! without one.

use std::path::{Path, PathBuf};

use berth_errdefs::{Error, Result};
use berth_mount::IdMapping;
use k8s_cri::v1 as cri;
use nix::sched::CloneFlags;

/// The kinds of namespace a pod may have pinned, in the order they are
/// unpinned (its user namespace, which owns the others, last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Net,
    Ipc,
    Uts,
    User,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Net, Kind::Ipc, Kind::Uts, Kind::User];

    /// Its name under /proc/PID/ns/.
    fn proc_name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
            Kind::User => "user",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
            Kind::User => CloneFlags::CLONE_NEWUSER,
        }
    }

    /// Where pods' namespaces of this kind are pinned, each at its id.
    pub fn dir(self, state: &Path) -> PathBuf {
        state.join(format!("{}ns", self.proc_name()))
    }
}

/// Which namespaces a pod gets of its own, from its config: a network (and
/// with it a UTS) namespace unless it is on the node's network, an IPC
/// namespace unless it shares the node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

impl Wanted {
    pub fn of(options: &cri::NamespaceOption) -> Wanted {
        let own_network = options.network != cri::NamespaceMode::Node as i32;
        Wanted {
            net: own_network,
            ipc: options.ipc != cri::NamespaceMode::Node as i32,
            // containerd's rule: a pod on the node's network has the
            // node's hostname, so its UTS namespace too.
            uts: own_network,
        }
    }

    fn kinds(self) -> impl Iterator<Item = Kind> {
        [
            (Kind::Net, self.net),
            (Kind::Ipc, self.ipc),
            (Kind::Uts, self.uts),
        ]
        .into_iter()
        .filter_map(|(kind, wanted)| wanted.then_some(kind))
    }
}

/// What was pinned for a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pinned {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub user: Option<PathBuf>,
    /// The pod's /dev/shm (with an IPC namespace of its own).
    pub shm: Option<PathBuf>,
}

/// The size of a pod's /dev/shm, as containerd's (and Docker's) default.
const SHM_OPTIONS: &str = "mode=1777,size=65536k";

/// Where a pod's /dev/shm is mounted: a tmpfs of its own, which every
/// container of the pod binds at /dev/shm, as containerd does (the pod's
/// containers share its IPC namespace, and POSIX shared memory lives in
/// /dev/shm).
pub fn shm_dir(state: &Path, id: &str) -> PathBuf {
    state.join("shm").join(id)
}

fn mount_shm(state: &Path, id: &str) -> Result<PathBuf> {
    let dir = shm_dir(state, id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    nix::mount::mount(
        Some("shm"),
        &dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some(SHM_OPTIONS),
    )
    .map_err(|e| {
        Error::internal(format!(
            "mounting the pod's /dev/shm at {}: {e}",
            dir.display()
        ))
    })?;
    Ok(dir)
}

/// Unmounts and removes a pod's /dev/shm; one not there is fine. Blocks.
pub fn unmount_shm(state: &Path, id: &str) -> Result<()> {
    let dir = shm_dir(state, id);
    berth_mount::unmount_all(&dir)?;
    match std::fs::remove_dir(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), &e)),
    }
}

impl Pinned {
    fn set(&mut self, kind: Kind, path: PathBuf) {
        match kind {
            Kind::Net => self.net = Some(path),
            Kind::Ipc => self.ipc = Some(path),
            Kind::Uts => self.uts = Some(path),
            Kind::User => self.user = Some(path),
        }
    }
}

/// A pod's sysctl, checked: where it is written under /proc/sys, and in
/// which of the pod's namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub name: String,
    pub path: PathBuf,
    pub value: String,
    kind: Kind,
}

/// Checks a pod's sysctls as runc would for its pause process: only the
/// namespaced ones (`net.*` with a network namespace of the pod's own;
/// `kernel.shm*`, `kernel.msg*`, `kernel.sem` and `fs.mqueue.*` with its own
/// IPC namespace; `kernel.hostname` and `kernel.domainname` with its own UTS
/// namespace), with names that name a file under /proc/sys and nothing else.
pub fn check_sysctls<'a>(
    sysctls: impl IntoIterator<Item = (&'a String, &'a String)>,
    wanted: Wanted,
) -> Result<Vec<Sysctl>> {
    let mut out: Vec<Sysctl> = sysctls
        .into_iter()
        .map(|(name, value)| check_sysctl(name, value, wanted))
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn check_sysctl(name: &str, value: &str, wanted: Wanted) -> Result<Sysctl> {
    let invalid = |why: &str| Err(Error::invalid_argument(format!("sysctl {name:?}: {why}")));
    // The kubelet's form: words separated by dots, where a slash stands
    // for a dot inside a word (`net.ipv4.conf.eth0/100.forwarding` is
    // /proc/sys/net/ipv4/conf/eth0.100/forwarding).
    let components: Vec<String> = name.split('.').map(|s| s.replace('/', ".")).collect();
    if components.iter().any(|c| {
        c.is_empty()
            || c == "."
            || c == ".."
            || !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '@' | ':' | '.'))
    }) {
        return invalid("not a sysctl name (dot-separated words)");
    }
    if value.contains('\0') {
        return invalid("its value holds a NUL byte");
    }
    let (kind, own) = if name.starts_with("net.") {
        (Kind::Net, wanted.net)
    } else if name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.")
    {
        (Kind::Ipc, wanted.ipc)
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        (Kind::Uts, wanted.uts)
    } else {
        return invalid("not in a namespace of the pod's own: it would change the node's");
    };
    if !own {
        return invalid(&format!(
            "the pod shares the node's {} namespace",
            kind.proc_name()
        ));
    }
    Ok(Sysctl {
        name: name.to_string(),
        path: Path::new("/proc/sys").join(components.join("/")),
        value: value.to_string(),
        kind,
    })
}

/// Makes the namespaces `wanted` names (inside a new user namespace with
/// `user`'s uid and gid mappings when given, which then owns them) and pins
/// them under `state` at `id`, and with an IPC namespace mounts the pod's
/// /dev/shm. On failure, what was made is undone again. Blocks.
pub fn pin(
    state: &Path,
    id: &str,
    wanted: Wanted,
    user: Option<(&[IdMapping], &[IdMapping])>,
) -> Result<Pinned> {
    let mut pinned = Pinned::default();
    let made = match user {
        Some((uids, gids)) => {
            let also = wanted
                .kinds()
                .fold(CloneFlags::empty(), |flags, kind| flags | kind.flag());
            let holder = berth_mount::NamespaceHolder::spawn(uids, gids, also)
                .map_err(|e| Error::internal(format!("making the pod's user namespace: {e}")))?;
            std::iter::once(Kind::User)
                .chain(wanted.kinds())
                .try_for_each(|kind| {
                    let path = berth_network::pin_namespace(
                        &holder.ns_path(kind.proc_name()),
                        &kind.dir(state),
                        id,
                    )?;
                    pinned.set(kind, path);
                    Ok(())
                })
        }
        None if wanted == Wanted::default() => Ok(()),
        None => {
            // A thread of its own: unshare moves only the calling thread,
            // and this one ends right after pinning, so no other work ever
            // runs inside the pod's namespaces.
            let (state, id) = (state.to_path_buf(), id.to_string());
            let pinned_by_thread = std::thread::spawn(move || -> (Pinned, Result<()>) {
                let mut pinned = Pinned::default();
                let flags = wanted
                    .kinds()
                    .fold(CloneFlags::empty(), |flags, kind| flags | kind.flag());
                if let Err(e) = nix::sched::unshare(flags) {
                    return (
                        pinned,
                        Err(Error::internal(format!("unshare({flags:?}): {e}"))),
                    );
                }
                let result = wanted.kinds().try_for_each(|kind| {
                    let source =
                        PathBuf::from(format!("/proc/thread-self/ns/{}", kind.proc_name()));
                    let path = berth_network::pin_namespace(&source, &kind.dir(&state), &id)?;
                    pinned.set(kind, path);
                    Ok(())
                });
                (pinned, result)
            })
            .join();
            match pinned_by_thread {
                Ok((by_thread, result)) => {
                    pinned = by_thread;
                    result
                }
                Err(_) => Err(Error::internal("the namespace thread panicked")),
            }
        }
    };
    let made = made.and_then(|()| {
        if wanted.ipc {
            pinned.shm = Some(mount_shm(state, id)?);
        }
        Ok(())
    });
    match made {
        Ok(()) => Ok(pinned),
        Err(e) => {
            let _ = unmount_shm(state, id);
            let _ = unpin(state, id, &Kind::ALL);
            Err(e)
        }
    }
}

/// Sets the pod's hostname (in its UTS namespace) and its sysctls (each in
/// the namespace it belongs to) from a thread that joins the pinned
/// namespaces and ends right after. Blocks.
pub fn configure(pinned: &Pinned, hostname: Option<&str>, sysctls: &[Sysctl]) -> Result<()> {
    if hostname.is_none() && sysctls.is_empty() {
        return Ok(());
    }
    let (pinned, hostname, sysctls) = (
        pinned.clone(),
        hostname.map(str::to_string),
        sysctls.to_vec(),
    );
    std::thread::spawn(move || -> Result<()> {
        let join = |path: &Option<PathBuf>, kind: Kind| -> Result<()> {
            let Some(path) = path else {
                return Err(Error::internal(format!(
                    "the pod has no {} namespace to configure",
                    kind.proc_name()
                )));
            };
            let file = std::fs::File::open(path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
            nix::sched::setns(&file, kind.flag())
                .map_err(|e| Error::internal(format!("entering {}: {e}", path.display())))
        };
        let needs = |kind: Kind| sysctls.iter().any(|s| s.kind == kind);
        if needs(Kind::Net) {
            join(&pinned.net, Kind::Net)?;
        }
        if needs(Kind::Ipc) {
            join(&pinned.ipc, Kind::Ipc)?;
        }
        if hostname.is_some() || needs(Kind::Uts) {
            join(&pinned.uts, Kind::Uts)?;
        }
        if let Some(hostname) = &hostname {
            nix::unistd::sethostname(hostname)
                .map_err(|e| Error::invalid_argument(format!("hostname {hostname:?}: {e}")))?;
        }
        for sysctl in &sysctls {
            std::fs::write(&sysctl.path, sysctl.value.as_bytes()).map_err(|e| {
                Error::invalid_argument(format!("sysctl {}={:?}: {e}", sysctl.name, sysctl.value))
            })?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(Error::internal("the namespace thread panicked")))
}

/// Whether everything recorded as pinned for a pod still is: each
/// namespace a mount of nsfs, /dev/shm a tmpfs. They live under crid's
/// state directory, on /run, so a reboot takes them (while crid's records
/// of the pod, under its root, stay).
pub fn still_pinned(pinned: &Pinned) -> bool {
    use nix::sys::statfs::{statfs, NSFS_MAGIC, TMPFS_MAGIC};
    let is = |path: &Option<PathBuf>, magic| {
        path.as_ref()
            .is_none_or(|p| statfs(p).is_ok_and(|fs| fs.filesystem_type() == magic))
    };
    is(&pinned.net, NSFS_MAGIC)
        && is(&pinned.ipc, NSFS_MAGIC)
        && is(&pinned.uts, NSFS_MAGIC)
        && is(&pinned.user, NSFS_MAGIC)
        && is(&pinned.shm, TMPFS_MAGIC)
}

/// Unpins the pod's namespaces of `kinds` at their usual paths; one not
/// there is fine (a RunPodSandbox cut short may have pinned only some, and
/// a stop may be repeated). Blocks.
pub fn unpin(state: &Path, id: &str, kinds: &[Kind]) -> Result<()> {
    for kind in kinds {
        berth_network::unpin_namespace(&kind.dir(state).join(id))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;

    fn options(network: cri::NamespaceMode, ipc: cri::NamespaceMode) -> cri::NamespaceOption {
        cri::NamespaceOption {
            network: network as i32,
            ipc: ipc as i32,
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_on_the_nodes_network_has_the_nodes_hostname_too() {
        use cri::NamespaceMode::{Node, Pod};
        assert_eq!(
            Wanted::of(&options(Pod, Pod)),
            Wanted {
                net: true,
                ipc: true,
                uts: true
            }
        );
        assert_eq!(
            Wanted::of(&options(Node, Pod)),
            Wanted {
                net: false,
                ipc: true,
                uts: false
            }
        );
        assert_eq!(Wanted::of(&options(Node, Node)), Wanted::default());
    }

    #[test]
    fn only_sysctls_of_the_pods_own_namespaces_are_taken() {
        let all = Wanted {
            net: true,
            ipc: true,
            uts: true,
        };
        let sysctls: HashMap<String, String> = [
            ("net.ipv4.ip_forward", "1"),
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "20"),
            ("kernel.domainname", "pods.example"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let checked = check_sysctls(&sysctls, all).unwrap();
        let paths: Vec<_> = checked
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/proc/sys/fs/mqueue/msg_max",
                "/proc/sys/kernel/domainname",
                "/proc/sys/kernel/shm_rmid_forced",
                "/proc/sys/net/ipv4/ip_forward",
            ]
        );
        let one = |name: &str, wanted: Wanted| {
            let map = HashMap::from([(name.to_string(), "1".to_string())]);
            check_sysctls(&map, wanted)
        };
        // The node's, even if written from inside a namespace.
        for name in [
            "kernel.pid_max",
            "vm.overcommit_memory",
            "kernel.shmall.x/../../y",
        ] {
            let err = one(name, all).unwrap_err();
            assert_eq!(
                err.kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{name}"
            );
        }
        // An interface with a dot in its name, in the kubelet's form.
        let vlan = HashMap::from([(
            "net.ipv4.conf.eth0/100.forwarding".to_string(),
            "1".to_string(),
        )]);
        assert_eq!(
            check_sysctls(&vlan, all).unwrap()[0].path,
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        // Names that would leave /proc/sys, or name nothing.
        for name in [
            "net..ipv4",
            "net/../../etc",
            "net.//.//.etc",
            "net./.x",
            "net.ipv4.",
            ".net",
            "net.a b",
            "net.\0",
        ] {
            let err = one(name, all).unwrap_err();
            assert_eq!(
                err.kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{name:?}"
            );
        }
        // A namespace the pod shares with the node.
        let host_network = Wanted {
            net: false,
            ipc: true,
            uts: false,
        };
        assert!(one("net.ipv4.ip_forward", host_network).is_err());
        assert!(one("kernel.hostname", host_network).is_err());
        assert!(one(
            "kernel.msgmax",
            Wanted {
                net: true,
                ipc: false,
                uts: true
            }
        )
        .is_err());
    }

    #[test]
    fn pinned_namespaces_carry_the_hostname_and_sysctls_and_are_unpinned() {
        if !nix::unistd::Uid::effective().is_root() {
            assert!(std::env::var("CI").is_err(), "CI runs as root");
            eprintln!("skipped: needs root");
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let wanted = Wanted {
            net: true,
            ipc: true,
            uts: true,
        };
        let pinned = pin(state.path(), "pod1", wanted, None).unwrap();
        for (kind, path) in [
            (Kind::Net, &pinned.net),
            (Kind::Ipc, &pinned.ipc),
            (Kind::Uts, &pinned.uts),
        ] {
            let path = path.as_ref().unwrap();
            assert_eq!(path, &kind.dir(state.path()).join("pod1"));
            // A namespace other than this process's.
            let ino =
                |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
            let own = format!("/proc/self/ns/{}", kind.proc_name());
            assert_ne!(ino(path), ino(Path::new(&own)), "{kind:?}");
        }
        assert!(pinned.user.is_none());
        // The pod's /dev/shm: a tmpfs of its own.
        let shm = pinned.shm.clone().unwrap();
        assert_eq!(shm, shm_dir(state.path(), "pod1"));
        let fs = nix::sys::statfs::statfs(&shm).unwrap();
        assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        let sysctls = check_sysctls(
            &HashMap::from([
                ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
                (
                    "net.ipv4.ip_unprivileged_port_start".to_string(),
                    "80".to_string(),
                ),
            ]),
            wanted,
        )
        .unwrap();
        configure(&pinned, Some("pod-one"), &sysctls).unwrap();
        // Read back from inside, on a thread that joins them.
        let (net, ipc, uts) = (
            pinned.net.clone().unwrap(),
            pinned.ipc.clone().unwrap(),
            pinned.uts.clone().unwrap(),
        );
        let inside = std::thread::spawn(move || {
            for (path, flag) in [
                (net, CloneFlags::CLONE_NEWNET),
                (ipc, CloneFlags::CLONE_NEWIPC),
                (uts, CloneFlags::CLONE_NEWUTS),
            ] {
                nix::sched::setns(std::fs::File::open(path).unwrap(), flag).unwrap();
            }
            (
                nix::unistd::gethostname().unwrap().into_string().unwrap(),
                std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap(),
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(inside.0, "pod-one");
        assert_eq!(inside.1.trim(), "1");
        assert_eq!(inside.2.trim(), "80");
        // The node's own are untouched.
        assert_ne!(
            nix::unistd::gethostname().unwrap().into_string().unwrap(),
            "pod-one"
        );
        assert!(still_pinned(&pinned));
        unmount_shm(state.path(), "pod1").unwrap();
        assert!(!still_pinned(&pinned), "the shm is gone");
        unpin(state.path(), "pod1", &Kind::ALL).unwrap();
        for kind in Kind::ALL {
            assert!(!kind.dir(state.path()).join("pod1").exists(), "{kind:?}");
        }
        assert!(!shm.exists());
        // Again: nothing left is fine.
        unmount_shm(state.path(), "pod1").unwrap();
        unpin(state.path(), "pod1", &Kind::ALL).unwrap();
    }

    #[test]
    fn a_pod_on_the_nodes_namespaces_pins_nothing() {
        let state = tempfile::tempdir().unwrap();
        let pinned = pin(state.path(), "pod2", Wanted::default(), None).unwrap();
        assert_eq!(pinned, Pinned::default());
        assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
    }
}
