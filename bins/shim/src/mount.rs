//! Mounting the rootfs containerd sends with Create, behind a trait so the
//! option handling is tested without root.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Result, ShimError};

/// One `containerd.types.Mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

pub trait Mounter {
    fn mount(&self, spec: &MountSpec, target: &Path) -> Result<()>;
    fn unmount(&self, target: &Path) -> Result<()>;
}

/// The real thing: mount(2) and umount2(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount(&self, spec: &MountSpec, target: &Path) -> Result<()> {
        let (flags, data) = parse_options(&spec.options);
        let kind = (!spec.kind.is_empty() && spec.kind != "bind").then_some(spec.kind.as_str());
        let data = (!data.is_empty()).then_some(data.as_str());
        let base = flags & !(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT);
        nix::mount::mount(Some(spec.source.as_str()), target, kind, base, data).map_err(|e| {
            ShimError::sys(
                format!("mounting {} on {}", spec.source, target.display()),
                e,
            )
        })?;
        // A read-only bind needs a second, remounting call.
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                flags | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(|e| ShimError::sys(format!("remounting {} read-only", target.display()), e))?;
        } else if flags.contains(MsFlags::MS_RDONLY) {
            nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT | base,
                data,
            )
            .map_err(|e| ShimError::sys(format!("remounting {} read-only", target.display()), e))?;
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        loop {
            match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
                Err(e) => {
                    return Err(ShimError::sys(
                        format!("unmounting {}", target.display()),
                        e,
                    ))
                }
            }
        }
    }
}

/// Splits mount options into flags and the data string the filesystem gets.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        let (set, flag) = match option.as_str() {
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "bind" => (true, MsFlags::MS_BIND),
            "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nodev" => (true, MsFlags::MS_NODEV),
            "dev" => (false, MsFlags::MS_NODEV),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "atime" => (false, MsFlags::MS_NOATIME),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "strictatime" => (true, MsFlags::MS_STRICTATIME),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "remount" => (true, MsFlags::MS_REMOUNT),
            "defaults" => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        if set {
            flags |= flag;
        } else {
            flags &= !flag;
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_become_data() {
        let (flags, data) = parse_options(&opts(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l1:/l2",
        ]));
        assert!(flags.is_empty());
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
    }

    #[test]
    fn flags_are_set_and_cleared_in_order() {
        let (flags, data) = parse_options(&opts(&["rbind", "ro", "nosuid", "rw"]));
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID));
        assert!(!flags.contains(MsFlags::MS_RDONLY));
        assert!(data.is_empty());
    }
}
