//! Performing mounts: those a snapshotter returns (snapd, the CLI, tests)
//! and a container's rootfs (the shim), one implementation for both.
//!
//! Bind mounts use mount(2), with a remount for per-mount flags (`ro`,
//! `nosuid`...). Filesystems other than bind and overlay (tmpfs, ext4 on a
//! block device...) use mount(2) with the flags the options name and the
//! rest as the filesystem's data. Overlay mounts use the new mount API with one
//! `lowerdir+` parameter per layer (Linux ≥ 6.8), so the page-sized limit
//! of mount option strings never caps how many layers stack.
//!
//! Older kernels refuse `lowerdir+` with EINVAL: from fsconfig itself on
//! 6.5–6.7, and from the create command before 6.5, where overlay still
//! parses one legacy option string. There the overlay is mounted with
//! mount(2), every directory named as `/proc/self/fd/N` of an `O_PATH` fd
//! held open for the call: about 18 bytes a directory whatever its path,
//! so 128 layers take ~2.4 KiB of the 4 KiB page. The first such refusal
//! is remembered, so later mounts go straight to mount(2).
//!
//! Why fds and not containerd's way (chdir to the layers' common parent
//! and pass relative names): the working directory belongs to the whole
//! process, so a chdir in this multi-threaded daemon would silently
//! redirect every relative path any other thread uses (containerd confines
//! it to a locked OS thread after `unshare(CLONE_FS)`). The fds are local
//! to the call, `O_CLOEXEC` (a concurrent fork/exec inherits none), and pin
//! the directories that were named, so a rename between the open and the
//! mount cannot substitute another. The cost: on those kernels
//! `/proc/self/mountinfo` shows `/proc/self/fd/N` instead of the paths.
//!
//! The syscalls themselves are behind [`syscalls::MountSyscalls`], so the
//! option building, the fallback and the cleanup here are unit-tested
//! without root against a fake.

pub mod idmap;
pub mod syscalls;

pub use idmap::{format_id_mappings, parse_id_mappings, root_pair, IdMapping, NamespaceHolder};

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use berth_errdefs::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use syscalls::{
    Host, MountAttrs, MountSyscalls, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
};

/// One mount: `kind` (`bind`, `overlay`, or a filesystem type), `source`
/// and options as containerd's `Mount` has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mounting and unmounting a stack of mounts on a target: what callers
/// that want a seam for their own tests hold ([`HostMounter`] is the real
/// thing).
pub trait Mounter: Send + Sync {
    /// [`mount_all`].
    fn mount_all(&self, mounts: &[Mount], target: &Path) -> Result<()>;
    /// [`unmount_all`].
    fn unmount_all(&self, target: &Path) -> Result<()>;
}

/// The kernel's mounts.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostMounter;

impl Mounter for HostMounter {
    fn mount_all(&self, mounts: &[Mount], target: &Path) -> Result<()> {
        mount_all(mounts, target)
    }

    fn unmount_all(&self, target: &Path) -> Result<()> {
        unmount_all(target)
    }
}

/// The most option data mount(2) takes (one page, NUL included) on the
/// smallest page size Linux has.
const MOUNT_DATA_MAX: usize = 4095;

static HOST: Engine<Host> = Engine::new(Host);

/// Mounts `mounts` on `target`, in order; on failure, what was mounted is
/// unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    HOST.mount_all(mounts, target)
}

/// Unmounts `target`, detaching it if it is busy.
pub fn unmount(target: &Path) -> Result<()> {
    HOST.unmount(target)
}

/// Unmounts everything stacked on `target` (detaching what is busy); a
/// target with nothing mounted, or that is gone, is fine.
pub fn unmount_all(target: &Path) -> Result<()> {
    HOST.unmount_all(target)
}

/// Attaches at `target` (an existing file or directory, as `source` is) a
/// clone of the mount at `source` whose files show their owners through
/// `uids`/`gids`: what runc ≥ 1.2 makes of a mount with `uidMappings`,
/// made here so that any runc can bind it into a container. The caller
/// unmounts it with [`unmount`].
pub fn idmapped_bind(
    source: &Path,
    target: &Path,
    uids: &[IdMapping],
    gids: &[IdMapping],
) -> Result<()> {
    HOST.idmapped_bind(source, target, uids, gids)
}

/// Mounts every later overlay of this process with mount(2) and
/// `/proc/self/fd/N` directories, as on kernels without `lowerdir+`: for
/// testing that path on newer kernels.
pub fn force_overlay_mount_data() {
    HOST.mount_data.store(true, Ordering::Relaxed);
}

fn errno(what: impl std::fmt::Display, e: Errno) -> Error {
    Error::io(what, &std::io::Error::from(e))
}

/// Mount options, split into per-mount flags and filesystem parameters.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    attrs: MountAttrs,
    /// `rbind`: submounts come along.
    recursive: bool,
    /// Flags only mount(2) takes (`noatime`, `sync`...): a mount that has
    /// any goes through mount(2).
    classic: MsFlags,
    /// `key=value` and bare flags for the filesystem, in order.
    params: Vec<(String, Option<String>)>,
}

impl Options {
    fn parse(options: &[String]) -> Options {
        let mut parsed = Options {
            attrs: 0,
            recursive: false,
            classic: MsFlags::empty(),
            params: Vec::new(),
        };
        for option in options {
            if let Some((key, value)) = option.split_once('=') {
                parsed
                    .params
                    .push((key.to_string(), Some(value.to_string())));
                continue;
            }
            match option.as_str() {
                "ro" => parsed.attrs |= MOUNT_ATTR_RDONLY,
                "rw" => parsed.attrs &= !MOUNT_ATTR_RDONLY,
                "nosuid" => parsed.attrs |= MOUNT_ATTR_NOSUID,
                "suid" => parsed.attrs &= !MOUNT_ATTR_NOSUID,
                "nodev" => parsed.attrs |= MOUNT_ATTR_NODEV,
                "dev" => parsed.attrs &= !MOUNT_ATTR_NODEV,
                "noexec" => parsed.attrs |= MOUNT_ATTR_NOEXEC,
                "exec" => parsed.attrs &= !MOUNT_ATTR_NOEXEC,
                "bind" | "defaults" => {}
                "rbind" => parsed.recursive = true,
                "noatime" => parsed.classic |= MsFlags::MS_NOATIME,
                "atime" => parsed.classic &= !MsFlags::MS_NOATIME,
                "nodiratime" => parsed.classic |= MsFlags::MS_NODIRATIME,
                "diratime" => parsed.classic &= !MsFlags::MS_NODIRATIME,
                "relatime" => parsed.classic |= MsFlags::MS_RELATIME,
                "norelatime" => parsed.classic &= !MsFlags::MS_RELATIME,
                "strictatime" => parsed.classic |= MsFlags::MS_STRICTATIME,
                "sync" => parsed.classic |= MsFlags::MS_SYNCHRONOUS,
                "async" => parsed.classic &= !MsFlags::MS_SYNCHRONOUS,
                "dirsync" => parsed.classic |= MsFlags::MS_DIRSYNC,
                flag => parsed.params.push((flag.to_string(), None)),
            }
        }
        parsed
    }

    /// The filesystem parameters as mount(2)'s data string.
    fn data(&self) -> String {
        self.params
            .iter()
            .map(|(key, value)| match value {
                Some(value) => format!("{key}={value}"),
                None => key.clone(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The per-mount flags as mount(2) flags.
    fn ms_flags(&self) -> MsFlags {
        let mut flags = self.classic;
        for (attr, flag) in [
            (MOUNT_ATTR_RDONLY, MsFlags::MS_RDONLY),
            (MOUNT_ATTR_NOSUID, MsFlags::MS_NOSUID),
            (MOUNT_ATTR_NODEV, MsFlags::MS_NODEV),
            (MOUNT_ATTR_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if self.attrs & attr != 0 {
                flags |= flag;
            }
        }
        flags
    }
}

/// Takes `uidmap=` and `gidmap=` out of the parameters: both or neither.
fn take_id_mappings(
    params: &mut Vec<(String, Option<String>)>,
) -> Result<Option<(Vec<IdMapping>, Vec<IdMapping>)>> {
    let mut take = |name: &str| -> Result<Option<Vec<IdMapping>>> {
        let mut found = None;
        for (_, value) in params.iter().filter(|(key, _)| key == name) {
            found = Some(parse_id_mappings(value.as_deref().unwrap_or(""))?);
        }
        params.retain(|(key, _)| key != name);
        Ok(found)
    };
    match (take("uidmap")?, take("gidmap")?) {
        (Some(uids), Some(gids)) => Ok(Some((uids, gids))),
        (None, None) => Ok(None),
        _ => Err(Error::invalid_argument(
            "an id-mapped mount needs both uidmap and gidmap",
        )),
    }
}

/// Why the new mount API did not make an overlay.
enum Attempt {
    /// The kernel lacks `lowerdir+` (or the new API): use mount(2).
    Refused,
    Failed(Error),
}

/// Mounts through one set of syscalls, remembering whether overlays need
/// the mount(2) fallback.
struct Engine<S> {
    sys: S,
    mount_data: AtomicBool,
}

impl<S: MountSyscalls> Engine<S> {
    const fn new(sys: S) -> Engine<S> {
        Engine {
            sys,
            mount_data: AtomicBool::new(false),
        }
    }

    fn mount_all(&self, mounts: &[Mount], target: &Path) -> Result<()> {
        for (done, mount) in mounts.iter().enumerate() {
            if let Err(e) = self.mount(mount, target) {
                // Each mount stacked on the target: undo them top first.
                for _ in 0..done {
                    let _ = self.sys.umount(target, MntFlags::MNT_DETACH);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn mount(&self, mount: &Mount, target: &Path) -> Result<()> {
        if mount.kind != "overlay"
            && mount
                .options
                .iter()
                .any(|o| o.starts_with("uidmap=") || o.starts_with("gidmap="))
        {
            return Err(Error::invalid_argument(format!(
                "{} mount of {}: uidmap and gidmap are taken only on overlay mounts",
                mount.kind, mount.source
            )));
        }
        match mount.kind.as_str() {
            "bind" => self.bind(mount, target),
            "overlay" => self.overlay(mount, target),
            "" => Err(Error::invalid_argument(format!(
                "mount of {} has no type",
                mount.source
            ))),
            fstype => self.filesystem(fstype, mount, target),
        }
    }

    /// Any other filesystem, with mount(2): the options' flags, the rest
    /// as its data.
    fn filesystem(&self, fstype: &str, mount: &Mount, target: &Path) -> Result<()> {
        let options = Options::parse(&mount.options);
        let data = options.data();
        self.sys
            .mount(
                Some(&mount.source),
                target,
                Some(fstype),
                options.ms_flags(),
                (!data.is_empty()).then_some(data.as_str()),
            )
            .map_err(|e| {
                errno(
                    format!("mounting {fstype} {} on {}", mount.source, target.display()),
                    e,
                )
            })
    }

    fn unmount_all(&self, target: &Path) -> Result<()> {
        // Bounded: a target cannot have more mounts stacked than this
        // without something else mounting on it meanwhile.
        for _ in 0..1024 {
            match self.sys.umount(target, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(errno(format!("unmounting {}", target.display()), e)),
            }
        }
        Err(Error::failed_precondition(format!(
            "{} is still mounted after 1024 unmounts",
            target.display()
        )))
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        let what = || format!("unmounting {}", target.display());
        match self.sys.umount(target, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::EBUSY) => self
                .sys
                .umount(target, MntFlags::MNT_DETACH)
                .map_err(|e| errno(what(), e)),
            Err(e) => Err(errno(what(), e)),
        }
    }

    fn bind(&self, mount: &Mount, target: &Path) -> Result<()> {
        let options = Options::parse(&mount.options);
        let mut flags = MsFlags::MS_BIND;
        if options.recursive {
            flags |= MsFlags::MS_REC;
        }
        self.sys
            .mount(Some(&mount.source), target, None, flags, None)
            .map_err(|e| {
                errno(
                    format!("bind mounting {} on {}", mount.source, target.display()),
                    e,
                )
            })?;
        if options.attrs != 0 {
            // A bind mount takes per-mount flags only by remounting it.
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | options.ms_flags();
            if let Err(e) = self.sys.mount(None, target, None, remount, None) {
                let _ = self.sys.umount(target, MntFlags::MNT_DETACH);
                return Err(errno(
                    format!("setting {:?} on {}", mount.options, target.display()),
                    e,
                ));
            }
        }
        Ok(())
    }

    fn overlay(&self, mount: &Mount, target: &Path) -> Result<()> {
        let mut options = Options::parse(&mount.options);
        match take_id_mappings(&mut options.params)? {
            Some((uids, gids)) => self.overlay_idmapped(options, &uids, &gids, target),
            None => self.overlay_plain(&options, target),
        }
    }

    /// An overlay whose lower layers show their files' owners through
    /// `uids`/`gids` (`uidmap=`/`gidmap=`, as containerd's overlay
    /// snapshotter asks for a container in a user namespace): each layer is
    /// cloned as an id-mapped mount, attached on a staging directory beside
    /// the target (overlayfs takes only attached mounts as layers), the
    /// overlay made on those, and the staging mounts detached again (the
    /// overlay holds private clones of its layers). The upper layer is not
    /// mapped: what the container writes is owned by its host ids.
    fn overlay_idmapped(
        &self,
        mut options: Options,
        uids: &[IdMapping],
        gids: &[IdMapping],
        target: &Path,
    ) -> Result<()> {
        let lowers: Vec<String> = options
            .params
            .iter()
            .filter(|(key, _)| key == "lowerdir")
            .filter_map(|(_, value)| value.clone())
            .flat_map(|dirs| dirs.split(':').map(str::to_string).collect::<Vec<_>>())
            .collect();
        if lowers.is_empty() {
            return Err(Error::invalid_argument(
                "an id-mapped overlay needs a lowerdir",
            ));
        }
        let userns = self.userns(uids, gids)?;
        let parent = target.parent().unwrap_or(Path::new("/"));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(
            ".{name}.idmapped-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&staging)
            .map_err(|e| Error::io(format!("creating {}", staging.display()), &e))?;
        let mut attached: Vec<std::path::PathBuf> = Vec::new();
        let result = (|| {
            for (i, lower) in lowers.iter().enumerate() {
                let at = staging.join(i.to_string());
                std::fs::create_dir(&at)
                    .map_err(|e| Error::io(format!("creating {}", at.display()), &e))?;
                self.attach_idmapped(&userns, Path::new(lower), &at)?;
                attached.push(at);
            }
            let joined = attached
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":");
            options.params.retain(|(key, _)| key != "lowerdir");
            options.params.push(("lowerdir".to_string(), Some(joined)));
            self.overlay_plain(&options, target)
        })();
        for at in &attached {
            let _ = self.sys.umount(at, MntFlags::MNT_DETACH);
        }
        for i in 0..lowers.len() {
            let _ = std::fs::remove_dir(staging.join(i.to_string()));
        }
        let _ = std::fs::remove_dir(&staging);
        result
    }

    fn idmapped_bind(
        &self,
        source: &Path,
        target: &Path,
        uids: &[IdMapping],
        gids: &[IdMapping],
    ) -> Result<()> {
        if uids.is_empty() || gids.is_empty() {
            return Err(Error::invalid_argument(
                "an id-mapped mount needs both a uid and a gid mapping",
            ));
        }
        let userns = self.userns(uids, gids)?;
        self.attach_idmapped(&userns, source, target)
    }

    /// A user namespace with these mappings, for id-mapped mounts.
    fn userns(&self, uids: &[IdMapping], gids: &[IdMapping]) -> Result<S::Userns> {
        self.sys
            .userns(uids, gids)
            .map_err(|e| errno("making a user namespace for an id-mapped mount", e))
    }

    /// A clone of the mount at `source`, id-mapped through `userns`,
    /// attached at `target`.
    fn attach_idmapped(&self, userns: &S::Userns, source: &Path, target: &Path) -> Result<()> {
        let shown = source.display();
        let tree = self
            .sys
            .open_tree_clone(source)
            .map_err(|e| errno(format!("cloning the mount of {shown}"), e))?;
        self.sys
            .set_idmap(&tree, userns)
            .map_err(|e| errno(format!("id-mapping {shown}"), e))?;
        self.sys
            .move_mount(&tree, target)
            .map_err(|e| errno(format!("attaching {shown} at {}", target.display()), e))
    }

    fn overlay_plain(&self, options: &Options, target: &Path) -> Result<()> {
        if self.mount_data.load(Ordering::Relaxed) || !options.classic.is_empty() {
            return self.overlay_mount_data(options, target);
        }
        match self.overlay_fsconfig(options, target) {
            Ok(()) => Ok(()),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::Refused) => {
                self.overlay_mount_data(options, target)?;
                // Only now is it certain that the refusal was the kernel's
                // age and not these options.
                self.mount_data.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// The new mount API, one `lowerdir+` per layer.
    fn overlay_fsconfig(
        &self,
        options: &Options,
        target: &Path,
    ) -> std::result::Result<(), Attempt> {
        let failed = |what: String, e: Errno| Attempt::Failed(errno(what, e));
        let fs = match self.sys.fsopen("overlay") {
            Ok(fs) => fs,
            Err(Errno::ENOSYS) => return Err(Attempt::Refused),
            Err(e) => return Err(failed("fsopen overlay".to_string(), e)),
        };
        let mut appended = false;
        for (key, value) in &options.params {
            match (key.as_str(), value) {
                ("lowerdir", Some(dirs)) => {
                    for dir in dirs.split(':') {
                        match self.sys.fsconfig_string(&fs, "lowerdir+", dir) {
                            Ok(()) => appended = true,
                            Err(Errno::EINVAL) => return Err(Attempt::Refused),
                            Err(e) => return Err(failed(format!("overlay lower {dir}"), e)),
                        }
                    }
                }
                (key, Some(value)) => self
                    .sys
                    .fsconfig_string(&fs, key, value)
                    .map_err(|e| failed(format!("overlay option {key}={value}"), e))?,
                (key, None) => self
                    .sys
                    .fsconfig_flag(&fs, key)
                    .map_err(|e| failed(format!("overlay option {key}"), e))?,
            }
        }
        match self.sys.fsconfig_create(&fs) {
            Ok(()) => {}
            // Before 6.5 overlay parses the parameters only here, as one
            // legacy string, and does not know `lowerdir+`.
            Err(Errno::EINVAL) if appended => return Err(Attempt::Refused),
            Err(e) => {
                return Err(failed(
                    format!("creating the overlay for {}", target.display()),
                    e,
                ))
            }
        }
        let mount = self
            .sys
            .fsmount(&fs, options.attrs)
            .map_err(|e| failed("fsmount overlay".to_string(), e))?;
        self.sys
            .move_mount(&mount, target)
            .map_err(|e| failed(format!("moving the overlay to {}", target.display()), e))
    }

    /// mount(2) with every directory as `/proc/self/fd/N`.
    fn overlay_mount_data(&self, options: &Options, target: &Path) -> Result<()> {
        // Held until mount(2) has resolved them.
        let mut held: Vec<OwnedFd> = Vec::new();
        let mut fd_path = |dir: &str| -> Result<String> {
            let fd = nix::fcntl::open(
                dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| errno(format!("opening {dir}"), e))?;
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            held.push(fd);
            Ok(path)
        };
        let mut data: Vec<String> = Vec::new();
        for (key, value) in &options.params {
            let param = match (key.as_str(), value) {
                ("lowerdir", Some(dirs)) => {
                    let fds = dirs
                        .split(':')
                        .map(&mut fd_path)
                        .collect::<Result<Vec<_>>>()?;
                    format!("lowerdir={}", fds.join(":"))
                }
                ("upperdir" | "workdir", Some(dir)) => format!("{key}={}", fd_path(dir)?),
                (key, Some(value)) => format!("{key}={value}"),
                (key, None) => key.to_string(),
            };
            if param.contains(',') {
                return Err(Error::invalid_argument(format!(
                    "overlay option {param:?} contains a comma"
                )));
            }
            data.push(param);
        }
        let data = data.join(",");
        if data.len() > MOUNT_DATA_MAX {
            return Err(Error::invalid_argument(format!(
                "overlay options for {} take {} bytes, more than mount(2) accepts",
                target.display(),
                data.len()
            )));
        }
        let result = self.sys.mount(
            Some("overlay"),
            target,
            Some("overlay"),
            options.ms_flags(),
            Some(&data),
        );
        drop(held);
        result.map_err(|e| errno(format!("mounting the overlay on {}", target.display()), e))
    }
}

/// A temporary mount that is unmounted (and its directory removed) on drop.
#[derive(Debug)]
pub struct TempMount {
    dir: std::path::PathBuf,
    mounted: bool,
}

impl TempMount {
    /// Mounts `mounts` on a new directory under `parent`.
    pub fn new(mounts: &[Mount], parent: &Path) -> Result<TempMount> {
        let dir = parent.join(format!(
            "mnt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        let mut temp = TempMount {
            dir,
            mounted: false,
        };
        mount_all(mounts, &temp.dir)?;
        temp.mounted = true;
        Ok(temp)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = unmount(&self.dir);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use berth_errdefs::ErrorKind;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Mount {
            source: Option<String>,
            target: PathBuf,
            fstype: Option<String>,
            flags: MsFlags,
            data: Option<String>,
        },
        Umount(PathBuf, MntFlags),
        Fsopen(String),
        Set(String, String),
        Flag(String),
        Create,
        Fsmount(MountAttrs),
        Move(PathBuf),
        Userns(String, String),
        OpenTree(PathBuf),
        Idmap,
    }

    /// Records every call; fails the operations named in `failures`
    /// (`mount`, `remount`, `umount`, `fsopen`, `lowerdir+`, `set`, `create`,
    /// ...) with the given errno.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<Call>>,
        failures: HashMap<&'static str, Errno>,
        /// What each `/proc/self/fd/N` in mount data named during the call.
        resolved: Mutex<Vec<PathBuf>>,
    }

    impl Fake {
        fn failing(failures: &[(&'static str, Errno)]) -> Fake {
            Fake {
                failures: failures.iter().copied().collect(),
                ..Fake::default()
            }
        }

        fn record(&self, call: Call, op: &str) -> std::result::Result<(), Errno> {
            self.calls.lock().unwrap().push(call);
            match self.failures.get(op) {
                Some(e) => Err(*e),
                None => Ok(()),
            }
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl MountSyscalls for Fake {
        type Context = ();
        type Detached = ();

        fn mount(
            &self,
            source: Option<&str>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> std::result::Result<(), Errno> {
            for value in data.unwrap_or("").split([',', '=', ':']) {
                if value.starts_with("/proc/self/fd/") {
                    let named = std::fs::read_link(value).unwrap();
                    self.resolved.lock().unwrap().push(named);
                }
            }
            let op = if flags.contains(MsFlags::MS_REMOUNT) {
                "remount"
            } else {
                "mount"
            };
            self.record(
                Call::Mount {
                    source: source.map(str::to_string),
                    target: target.to_path_buf(),
                    fstype: fstype.map(str::to_string),
                    flags,
                    data: data.map(str::to_string),
                },
                op,
            )
        }

        fn umount(&self, target: &Path, flags: MntFlags) -> std::result::Result<(), Errno> {
            let op = if flags.contains(MntFlags::MNT_DETACH) {
                "detach"
            } else {
                "umount"
            };
            self.record(Call::Umount(target.to_path_buf(), flags), op)
        }

        fn fsopen(&self, fstype: &str) -> std::result::Result<(), Errno> {
            self.record(Call::Fsopen(fstype.to_string()), "fsopen")
        }

        fn fsconfig_string(
            &self,
            _fs: &(),
            key: &str,
            value: &str,
        ) -> std::result::Result<(), Errno> {
            let op = if key == "lowerdir+" {
                "lowerdir+"
            } else {
                "set"
            };
            self.record(Call::Set(key.to_string(), value.to_string()), op)
        }

        fn fsconfig_flag(&self, _fs: &(), key: &str) -> std::result::Result<(), Errno> {
            self.record(Call::Flag(key.to_string()), "flag")
        }

        fn fsconfig_create(&self, _fs: &()) -> std::result::Result<(), Errno> {
            self.record(Call::Create, "create")
        }

        fn fsmount(&self, _fs: &(), attrs: MountAttrs) -> std::result::Result<(), Errno> {
            self.record(Call::Fsmount(attrs), "fsmount")
        }

        fn move_mount(&self, _mount: &(), target: &Path) -> std::result::Result<(), Errno> {
            self.record(Call::Move(target.to_path_buf()), "move")
        }

        type Userns = ();

        fn userns(&self, uids: &[IdMapping], gids: &[IdMapping]) -> std::result::Result<(), Errno> {
            self.record(
                Call::Userns(format_id_mappings(uids), format_id_mappings(gids)),
                "userns",
            )
        }

        fn open_tree_clone(&self, path: &Path) -> std::result::Result<(), Errno> {
            self.record(Call::OpenTree(path.to_path_buf()), "open_tree")
        }

        fn set_idmap(&self, _mount: &(), _userns: &()) -> std::result::Result<(), Errno> {
            self.record(Call::Idmap, "idmap")
        }
    }

    fn overlay(options: &[String]) -> Mount {
        Mount {
            kind: "overlay".to_string(),
            source: "overlay".to_string(),
            options: options.to_vec(),
        }
    }

    fn bind(options: &[&str]) -> Mount {
        Mount {
            kind: "bind".to_string(),
            source: "/src".to_string(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn set(key: &str, value: &str) -> Call {
        Call::Set(key.to_string(), value.to_string())
    }

    /// A directory of this test's own, removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `count` real directories with long names, so that their paths do
    /// not fit one page together.
    fn long_dirs(count: usize) -> (Scratch, Vec<PathBuf>) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let top = Scratch(std::env::temp_dir().join(format!(
            "berth-mount-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )));
        std::fs::create_dir(&top.0).unwrap();
        let dirs = (0..count)
            .map(|i| {
                let dir = top.0.join(format!("{i:03}-{}", "x".repeat(60)));
                std::fs::create_dir(&dir).unwrap();
                dir
            })
            .collect();
        (top, dirs)
    }

    /// What `dir` holds (a staging directory left behind would show).
    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        found.sort();
        found
    }

    fn joined(dirs: &[PathBuf]) -> String {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn each_layer_is_its_own_lowerdir_parameter() {
        let mounter = Engine::new(Fake::default());
        let target = Path::new("/mnt/t");
        let mount = overlay(&[
            "workdir=/s/2/work".to_string(),
            "upperdir=/s/2/fs".to_string(),
            "lowerdir=/s/1/fs:/s/0/fs".to_string(),
            "volatile".to_string(),
        ]);
        mounter.mount_all(&[mount], target).unwrap();
        assert_eq!(
            mounter.sys.calls(),
            [
                Call::Fsopen("overlay".to_string()),
                set("workdir", "/s/2/work"),
                set("upperdir", "/s/2/fs"),
                set("lowerdir+", "/s/1/fs"),
                set("lowerdir+", "/s/0/fs"),
                Call::Flag("volatile".to_string()),
                Call::Create,
                Call::Fsmount(0),
                Call::Move(target.to_path_buf()),
            ]
        );
        assert!(!mounter.mount_data.load(Ordering::Relaxed));
    }

    #[test]
    fn an_idmapped_overlay_stacks_mapped_clones_of_its_lowers_and_detaches_them() {
        let (top, dirs) = long_dirs(1);
        let target = top.0.join("rootfs");
        let mounter = Engine::new(Fake::default());
        let mount = overlay(&[
            "workdir=/s/2/work".to_string(),
            "upperdir=/s/2/fs".to_string(),
            "lowerdir=/s/1/fs:/s/0/fs".to_string(),
            "uidmap=0:100000:65536".to_string(),
            "gidmap=0:200000:65536".to_string(),
        ]);
        mounter.mount_all(&[mount], &target).unwrap();
        let calls = mounter.sys.calls();
        let staged: Vec<PathBuf> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Move(at) if *at != target => Some(at.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(staged.len(), 2, "{calls:?}");
        for at in &staged {
            assert_eq!(at.parent().and_then(Path::parent), Some(top.0.as_path()));
        }
        let mut expected = vec![Call::Userns(
            "0:100000:65536".to_string(),
            "0:200000:65536".to_string(),
        )];
        for (lower, at) in ["/s/1/fs", "/s/0/fs"].iter().zip(&staged) {
            expected.push(Call::OpenTree(PathBuf::from(lower)));
            expected.push(Call::Idmap);
            expected.push(Call::Move(at.clone()));
        }
        expected.extend([
            Call::Fsopen("overlay".to_string()),
            set("workdir", "/s/2/work"),
            set("upperdir", "/s/2/fs"),
            set("lowerdir+", &staged[0].display().to_string()),
            set("lowerdir+", &staged[1].display().to_string()),
            Call::Create,
            Call::Fsmount(0),
            Call::Move(target.clone()),
        ]);
        for at in &staged {
            expected.push(Call::Umount(at.clone(), MntFlags::MNT_DETACH));
        }
        assert_eq!(calls, expected);
        // The staging directories are gone; only the test's own remain.
        assert_eq!(entries(&top.0), dirs);
    }

    #[test]
    fn an_idmapped_bind_is_a_mapped_clone_moved_onto_the_target() {
        let mounter = Engine::new(Fake::default());
        let uids = parse_id_mappings("0:100000:65536").unwrap();
        mounter
            .idmapped_bind(Path::new("/vol"), Path::new("/t"), &uids, &uids)
            .unwrap();
        assert_eq!(
            mounter.sys.calls(),
            [
                Call::Userns("0:100000:65536".into(), "0:100000:65536".into()),
                Call::OpenTree(PathBuf::from("/vol")),
                Call::Idmap,
                Call::Move(PathBuf::from("/t")),
            ]
        );
        let failing = Engine::new(Fake::failing(&[("idmap", Errno::EINVAL)]));
        assert!(failing
            .idmapped_bind(Path::new("/vol"), Path::new("/t"), &uids, &uids)
            .is_err());
        assert!(!failing
            .sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Move(_))));
        assert!(mounter
            .idmapped_bind(Path::new("/vol"), Path::new("/t"), &uids, &[])
            .is_err());
    }

    #[test]
    fn a_failed_idmap_mounts_nothing_and_leaves_no_staging() {
        let (top, dirs) = long_dirs(1);
        let target = top.0.join("rootfs");
        let mounter = Engine::new(Fake::failing(&[("idmap", Errno::EINVAL)]));
        let mount = overlay(&[
            "upperdir=/u".to_string(),
            "workdir=/w".to_string(),
            "lowerdir=/l".to_string(),
            "uidmap=0:100000:65536".to_string(),
            "gidmap=0:100000:65536".to_string(),
        ]);
        let err = mounter.mount_all(&[mount], &target).unwrap_err();
        assert!(err.to_string().contains("id-mapping /l"), "{err}");
        let calls = mounter.sys.calls();
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, Call::Fsopen(_) | Call::Move(_))),
            "{calls:?}"
        );
        assert_eq!(entries(&top.0), dirs);
    }

    #[test]
    fn id_mappings_are_checked_before_anything_is_done() {
        let mounter = Engine::new(Fake::default());
        for options in [
            vec!["lowerdir=/l", "uidmap=0:1000:10"],
            vec!["lowerdir=/l", "uidmap=0:1000:10", "gidmap=0:1000:0"],
            vec!["lowerdir=/l", "uidmap=x", "gidmap=0:1000:10"],
            vec!["uidmap=0:1000:10", "gidmap=0:1000:10"],
        ] {
            let mount = overlay(&options.iter().map(|o| o.to_string()).collect::<Vec<_>>());
            let err = mounter.mount_all(&[mount], Path::new("/t")).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{options:?}: {err}");
        }
        let err = mounter
            .mount_all(
                &[bind(&["rbind", "uidmap=0:1:1", "gidmap=0:1:1"])],
                Path::new("/t"),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert_eq!(mounter.sys.calls(), []);
    }

    #[test]
    fn per_mount_flags_become_mount_attributes() {
        let mounter = Engine::new(Fake::default());
        let mount = overlay(&[
            "ro".to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
            "lowerdir=/a:/b".to_string(),
        ]);
        mounter.mount_all(&[mount], Path::new("/t")).unwrap();
        let calls = mounter.sys.calls();
        assert!(calls.contains(&Call::Fsmount(
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        )));
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Flag(_))),
            "{calls:?}"
        );
    }

    /// The kernel's refusal, where it comes (6.5–6.7: the parameter; before
    /// 6.5: the create command; before 5.2: fsopen itself), sends 128
    /// layers through mount(2) as fds, within one page.
    #[test]
    fn refused_lowerdir_append_falls_back_to_fd_paths() {
        for refusal in [
            ("lowerdir+", Errno::EINVAL),
            ("create", Errno::EINVAL),
            ("fsopen", Errno::ENOSYS),
        ] {
            let (_top, dirs) = long_dirs(130);
            let (lowers, rest) = dirs.split_at(128);
            let (upper, work) = (&rest[0], &rest[1]);
            let plain = format!(
                "lowerdir={},upperdir={},workdir={}",
                joined(lowers),
                upper.display(),
                work.display()
            );
            assert!(plain.len() > MOUNT_DATA_MAX, "the paths must not fit");
            let mounter = Engine::new(Fake::failing(&[refusal]));
            let mount = overlay(&[
                format!("lowerdir={}", joined(lowers)),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
                "ro".to_string(),
                "index=off".to_string(),
            ]);
            mounter.mount_all(&[mount], Path::new("/t")).unwrap();
            let calls = mounter.sys.calls();
            let Some(Call::Mount {
                source,
                fstype,
                flags,
                data: Some(data),
                ..
            }) = calls.last()
            else {
                panic!("no mount(2) after {refusal:?}: {calls:?}");
            };
            assert_eq!(source.as_deref(), Some("overlay"));
            assert_eq!(fstype.as_deref(), Some("overlay"));
            assert_eq!(*flags, MsFlags::MS_RDONLY);
            assert!(data.len() <= MOUNT_DATA_MAX, "{} bytes", data.len());
            assert!(data.ends_with(",index=off"), "{data}");
            // The fds named exactly the directories, in order, while the
            // kernel resolved them.
            assert_eq!(*mounter.sys.resolved.lock().unwrap(), dirs);
            // ... and are closed now.
            for fd in data
                .split([',', '=', ':'])
                .filter(|v| v.starts_with("/proc"))
            {
                let now = std::fs::read_link(fd).ok();
                assert!(now.is_none_or(|p| !dirs.contains(&p)), "{fd} still open");
            }
            // Learned: the next overlay goes straight to mount(2).
            let before = calls.len();
            let again = overlay(&[format!("lowerdir={}", joined(&lowers[..2]))]);
            mounter.mount_all(&[again], Path::new("/t")).unwrap();
            let next = &mounter.sys.calls()[before..];
            assert!(
                matches!(next, [Call::Mount { .. }]),
                "after {refusal:?}: {next:?}"
            );
        }
    }

    #[test]
    fn a_refusal_that_the_fallback_shares_is_not_learned() {
        // The create command fails for these options on any kernel: both
        // attempts fail, the caller gets the error, nothing is remembered.
        let mounter = Engine::new(Fake::failing(&[
            ("create", Errno::EINVAL),
            ("mount", Errno::EINVAL),
        ]));
        let (_top, dirs) = long_dirs(2);
        let mount = overlay(&[format!("lowerdir={}", joined(&dirs))]);
        let err = mounter.mount_all(&[mount], Path::new("/t")).unwrap_err();
        assert!(err.message().contains("mounting the overlay"), "{err}");
        assert!(!mounter.mount_data.load(Ordering::Relaxed));
    }

    #[test]
    fn other_failures_do_not_fall_back() {
        let mounter = Engine::new(Fake::failing(&[("set", Errno::ENOENT)]));
        let mount = overlay(&["upperdir=/gone".to_string(), "lowerdir=/a".to_string()]);
        let err = mounter.mount_all(&[mount], Path::new("/t")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let calls = mounter.sys.calls();
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Mount { .. })),
            "{calls:?}"
        );
    }

    #[test]
    fn forced_mount_data_skips_the_new_api() {
        let mounter = Engine::new(Fake::default());
        mounter.mount_data.store(true, Ordering::Relaxed);
        let (_top, dirs) = long_dirs(3);
        let mount = overlay(&[format!("lowerdir={}", joined(&dirs))]);
        mounter.mount_all(&[mount], Path::new("/t")).unwrap();
        let calls = mounter.sys.calls();
        assert!(
            matches!(calls.as_slice(), [Call::Mount { .. }]),
            "{calls:?}"
        );
        assert_eq!(*mounter.sys.resolved.lock().unwrap(), dirs);
    }

    #[test]
    fn too_many_layers_for_one_page_are_refused_before_mounting() {
        let mounter = Engine::new(Fake::default());
        mounter.mount_data.store(true, Ordering::Relaxed);
        let (_top, dirs) = long_dirs(1);
        let many = vec![dirs[0].clone(); 300];
        let mount = overlay(&[format!("lowerdir={}", joined(&many))]);
        let err = mounter.mount_all(&[mount], Path::new("/t")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(mounter.sys.calls().is_empty());
    }

    #[test]
    fn read_only_bind_is_remounted_and_undone_when_that_fails() {
        let target = Path::new("/t");
        let mounter = Engine::new(Fake::default());
        mounter
            .mount_all(&[bind(&["ro", "rbind"])], target)
            .unwrap();
        let mount = |flags, source: Option<&str>| Call::Mount {
            source: source.map(str::to_string),
            target: target.to_path_buf(),
            fstype: None,
            flags,
            data: None,
        };
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        assert_eq!(
            mounter.sys.calls(),
            [
                mount(MsFlags::MS_BIND | MsFlags::MS_REC, Some("/src")),
                mount(remount, None),
            ]
        );
        // A writable bind is one call.
        let mounter = Engine::new(Fake::default());
        mounter.mount_all(&[bind(&["rw"])], target).unwrap();
        assert_eq!(mounter.sys.calls(), [mount(MsFlags::MS_BIND, Some("/src"))]);
        // A failed remount leaves no writable mount behind.
        let mounter = Engine::new(Fake::failing(&[("remount", Errno::EPERM)]));
        assert!(mounter.mount_all(&[bind(&["ro"])], target).is_err());
        assert_eq!(
            mounter.sys.calls().last(),
            Some(&Call::Umount(target.to_path_buf(), MntFlags::MNT_DETACH))
        );
    }

    #[test]
    fn a_failed_mount_unmounts_the_ones_before_it() {
        let target = Path::new("/t");
        let mounter = Engine::new(Fake::failing(&[("fsopen", Errno::EPERM)]));
        let mounts = [
            bind(&["rw"]),
            bind(&["rw"]),
            overlay(&["lowerdir=/a".to_string()]),
        ];
        assert!(mounter.mount_all(&mounts, target).is_err());
        let detaches = mounter
            .sys
            .calls()
            .into_iter()
            .filter(|c| *c == Call::Umount(target.to_path_buf(), MntFlags::MNT_DETACH))
            .count();
        assert_eq!(detaches, 2);
        // A mount without a type is refused with nothing left mounted
        // either. (Other types go to mount(2): see
        // other_filesystems_take_their_flags_and_data_through_mount2.)
        let mounter = Engine::new(Fake::default());
        let odd = Mount {
            kind: String::new(),
            ..bind(&[])
        };
        let err = mounter.mount_all(&[bind(&[]), odd], target).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            mounter.sys.calls().last(),
            Some(&Call::Umount(target.to_path_buf(), MntFlags::MNT_DETACH))
        );
    }

    #[test]
    fn unmount_detaches_only_a_busy_mount() {
        let target = Path::new("/t");
        let mounter = Engine::new(Fake::failing(&[("umount", Errno::EBUSY)]));
        mounter.unmount(target).unwrap();
        assert_eq!(
            mounter.sys.calls(),
            [
                Call::Umount(target.to_path_buf(), MntFlags::empty()),
                Call::Umount(target.to_path_buf(), MntFlags::MNT_DETACH),
            ]
        );
        let mounter = Engine::new(Fake::failing(&[("umount", Errno::EINVAL)]));
        assert!(mounter.unmount(target).is_err());
        assert_eq!(mounter.sys.calls().len(), 1);
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn other_filesystems_take_their_flags_and_data_through_mount2() {
        let engine = Engine::new(Fake::default());
        let tmpfs = Mount {
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            options: strings(&["nosuid", "nodev", "noatime", "size=64m", "mode=755", "rw"]),
        };
        engine.mount_all(&[tmpfs], Path::new("/t")).unwrap();
        assert_eq!(
            engine.sys.calls(),
            vec![Call::Mount {
                source: Some("tmpfs".into()),
                target: PathBuf::from("/t"),
                fstype: Some("tmpfs".into()),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
                data: Some("size=64m,mode=755".into()),
            }]
        );
        let untyped = Mount {
            kind: String::new(),
            source: "/dev/x".into(),
            options: Vec::new(),
        };
        let err = engine.mount_all(&[untyped], Path::new("/t")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn flags_only_mount2_takes_send_an_overlay_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("l");
        std::fs::create_dir(&lower).unwrap();
        let engine = Engine::new(Fake::default());
        let overlay = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}", lower.display()), "noatime".into()],
        };
        engine.mount_all(&[overlay], Path::new("/t")).unwrap();
        let calls = engine.sys.calls();
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Fsopen(_))),
            "{calls:?}"
        );
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Call::Mount { fstype: Some(t), flags, .. }
                if t == "overlay" && flags.contains(MsFlags::MS_NOATIME))),
            "{calls:?}"
        );
    }

    #[test]
    fn unmount_all_detaches_until_nothing_is_mounted() {
        // Nothing (left) mounted: EINVAL ends it, successfully.
        let engine = Engine::new(Fake::failing(&[("detach", Errno::EINVAL)]));
        engine.unmount_all(Path::new("/t")).unwrap();
        assert_eq!(
            engine.sys.calls(),
            vec![Call::Umount(PathBuf::from("/t"), MntFlags::MNT_DETACH)]
        );
        // A real failure is reported.
        let engine = Engine::new(Fake::failing(&[("detach", Errno::EPERM)]));
        assert!(engine.unmount_all(Path::new("/t")).is_err());
        // A target that never empties does not loop forever.
        let engine = Engine::new(Fake::default());
        let err = engine.unmount_all(Path::new("/t")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(engine.sys.calls().len(), 1024);
    }
}
