//! Host devices given to a container: `--device HOST[:CONTAINER[:PERMS]]`,
//! the CRI's `Device` (what Kubernetes device plugins hand the kubelet),
//! and every device of the host for a privileged container.
//!
//! A device is read from the host when the options are made (its type,
//! numbers, mode and owner), and the spec then lists it for runc to create
//! and allows it in the device cgroup with the permissions asked. A
//! directory gives every device below it, as containerd does.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{OciError, Result};

/// What the caller asked for: a host path (a device node, or a directory
/// of them), where it appears in the container, and the device cgroup
/// permissions (`r`, `w`, `m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub permissions: String,
}

/// A char or block device node; or, as CDI specs may list them, an
/// unbuffered char device (`u`) or a FIFO, which get no device cgroup rule
/// (as the CDI library gives them none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
    Unbuffered,
    Fifo,
}

/// A device as the container gets it: the node runc makes at `path` and
/// the device cgroup rule that lets the container use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Where it appears in the container (absolute).
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub major: u64,
    pub minor: u64,
    /// Permission bits of the node (the host's).
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device cgroup access: a subset of `rwm`; empty for no rule (a CDI
    /// device whose permissions are `none`).
    pub permissions: String,
}

/// The directories of `/dev` never walked for devices (containerd's list:
/// pseudo terminals, shared memory, file descriptors, message queues, and
/// what LXD and udev keep there).
const SKIPPED_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// How deep a directory of devices is walked at most.
const MAX_DEPTH: usize = 16;

impl DeviceRequest {
    /// `HOST[:CONTAINER[:PERMS]]` as `docker run --device` takes it; the
    /// container path defaults to the host path, the permissions to `rwm`.
    pub fn parse(value: &str) -> Result<DeviceRequest> {
        let mut parts = value.splitn(3, ':');
        let host = parts.next().unwrap_or_default();
        let container = parts.next().filter(|c| !c.is_empty()).unwrap_or(host);
        let permissions = parts.next().unwrap_or("rwm");
        let request = DeviceRequest {
            host_path: PathBuf::from(host),
            container_path: PathBuf::from(container),
            permissions: permissions.to_string(),
        };
        request.check().map_err(|e| match e {
            OciError::InvalidArgument(m) => OciError::invalid(format!("--device {value:?}: {m}")),
            other => other,
        })?;
        Ok(request)
    }

    fn check(&self) -> Result<()> {
        if !self.host_path.is_absolute() {
            return Err(OciError::invalid(format!(
                "host path {} is not absolute",
                self.host_path.display()
            )));
        }
        check_container_path(&self.container_path)?;
        check_permissions(&self.permissions)
    }

    /// The devices this request gives, read from the host: one for a device
    /// node (symlinks to it resolved), every one below a directory.
    pub fn resolve(&self) -> Result<Vec<Device>> {
        self.check()?;
        let host = std::fs::canonicalize(&self.host_path)
            .map_err(|e| OciError::invalid(format!("device {}: {e}", self.host_path.display())))?;
        let meta = std::fs::metadata(&host)
            .map_err(|e| OciError::invalid(format!("device {}: {e}", host.display())))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(
                &host,
                &self.container_path,
                &self.permissions,
                0,
                &mut found,
            )?;
            if found.is_empty() {
                return Err(OciError::invalid(format!(
                    "no device below {}",
                    self.host_path.display()
                )));
            }
            return Ok(found);
        }
        match device_of(&meta, &self.container_path, &self.permissions) {
            Some(device) => Ok(vec![device]),
            None => Err(OciError::invalid(format!(
                "{} is not a device",
                self.host_path.display()
            ))),
        }
    }
}

/// The devices a container gets: for a privileged one every device of
/// the host's `/dev` (as containerd gives it), then each requested one
/// (replacing one of the same container path).
pub fn container_devices(privileged: bool, requests: &[DeviceRequest]) -> Result<Vec<Device>> {
    let mut devices = if privileged {
        all_host_devices()?
    } else {
        Vec::new()
    };
    for request in requests {
        for device in request.resolve()? {
            devices.retain(|d| d.path != device.path);
            devices.push(device);
        }
    }
    Ok(devices)
}

/// Every device of the host's `/dev`, with every permission: what a
/// privileged container gets.
pub fn all_host_devices() -> Result<Vec<Device>> {
    let mut found = Vec::new();
    walk(Path::new("/dev"), Path::new("/dev"), "rwm", 0, &mut found)?;
    Ok(found)
}

fn walk(
    dir: &Path,
    container_dir: &Path,
    permissions: &str,
    depth: usize,
    found: &mut Vec<Device>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| OciError::invalid(format!("reading {}: {e}", dir.display())))?;
    let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let name = entry.file_name();
        // Never through a symlink: only what is really below the directory.
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() {
            if SKIPPED_DIRS.iter().any(|s| name == *s) {
                continue;
            }
            walk(
                &entry.path(),
                &container_dir.join(&name),
                permissions,
                depth + 1,
                found,
            )?;
        } else if name != "console" {
            if let Some(device) = device_of(&meta, &container_dir.join(&name), permissions) {
                found.push(device);
            }
        }
    }
    Ok(())
}

fn device_of(meta: &std::fs::Metadata, path: &Path, permissions: &str) -> Option<Device> {
    let kind = if meta.file_type().is_char_device() {
        DeviceKind::Char
    } else if meta.file_type().is_block_device() {
        DeviceKind::Block
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(Device {
        path: path.to_path_buf(),
        kind,
        major: libc_major(rdev),
        minor: libc_minor(rdev),
        file_mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        permissions: permissions.to_string(),
    })
}

/// The major number of a Linux `dev_t` (glibc's encoding).
pub(crate) fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

/// The minor number of a Linux `dev_t`.
pub(crate) fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
}

/// The spec's device list: none when the container gets no devices.
pub(crate) fn linux_devices(
    devices: &[Device],
) -> Result<Option<Vec<oci_spec::runtime::LinuxDevice>>> {
    if devices.is_empty() {
        return Ok(None);
    }
    let mut listed = Vec::with_capacity(devices.len());
    for device in devices {
        check_container_path(&device.path)?;
        let number = |n: u64| {
            i64::try_from(n).map_err(|_| OciError::invalid(format!("device number {n} too large")))
        };
        let entry = oci_spec::runtime::LinuxDeviceBuilder::default()
            .path(device.path.clone())
            .typ(match device.kind {
                DeviceKind::Char => oci_spec::runtime::LinuxDeviceType::C,
                DeviceKind::Block => oci_spec::runtime::LinuxDeviceType::B,
                DeviceKind::Unbuffered => oci_spec::runtime::LinuxDeviceType::U,
                DeviceKind::Fifo => oci_spec::runtime::LinuxDeviceType::P,
            })
            .major(number(device.major)?)
            .minor(number(device.minor)?)
            .file_mode(device.file_mode)
            .uid(device.uid)
            .gid(device.gid)
            .build()
            .map_err(|e| OciError::invalid(format!("device {}: {e}", device.path.display())))?;
        listed.push(entry);
    }
    Ok(Some(listed))
}

pub(crate) fn check_container_path(path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(OciError::invalid(format!(
            "container path {} is not absolute",
            path.display()
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) || path == Path::new("/") {
        return Err(OciError::invalid(format!(
            "container path {} must name a file below / without ..",
            path.display()
        )));
    }
    Ok(())
}

fn check_permissions(permissions: &str) -> Result<()> {
    let mut seen = String::new();
    for c in permissions.chars() {
        if !"rwm".contains(c) || seen.contains(c) {
            return Err(OciError::invalid(format!(
                "device permissions {permissions:?}: each of r, w and m at most once"
            )));
        }
        seen.push(c);
    }
    if seen.is_empty() {
        return Err(OciError::invalid("device permissions are empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_parse_as_docker_takes_them() {
        let r = DeviceRequest::parse("/dev/fuse").unwrap();
        assert_eq!(r.host_path, Path::new("/dev/fuse"));
        assert_eq!(r.container_path, Path::new("/dev/fuse"));
        assert_eq!(r.permissions, "rwm");
        let r = DeviceRequest::parse("/dev/null:/dev/sink:rw").unwrap();
        assert_eq!(r.container_path, Path::new("/dev/sink"));
        assert_eq!(r.permissions, "rw");
        let r = DeviceRequest::parse("/dev/null::r").unwrap();
        assert_eq!(r.container_path, Path::new("/dev/null"));
        for bad in [
            "dev/null",
            "",
            "/dev/null:sink",
            "/dev/null:/dev/../etc/x",
            "/dev/null:/",
            "/dev/null:/dev/x:",
            "/dev/null:/dev/x:rwx",
            "/dev/null:/dev/x:rr",
        ] {
            assert!(
                matches!(DeviceRequest::parse(bad), Err(OciError::InvalidArgument(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_device_node_resolves_to_its_numbers_and_a_file_does_not() {
        let null = DeviceRequest::parse("/dev/null:/dev/sink:rw")
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(null.len(), 1);
        assert_eq!(null[0].kind, DeviceKind::Char);
        assert_eq!((null[0].major, null[0].minor), (1, 3));
        assert_eq!(null[0].path, Path::new("/dev/sink"));
        assert_eq!(null[0].permissions, "rw");
        assert_eq!(null[0].file_mode, 0o666);

        let err = DeviceRequest::parse("/etc/hostname")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("not a device"), "{err}");
        assert!(DeviceRequest::parse("/nonexistent/dev")
            .unwrap()
            .resolve()
            .is_err());
        let empty = tempfile::tempdir().unwrap();
        let err = DeviceRequest::parse(empty.path().to_str().unwrap())
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("no device below"), "{err}");
    }

    #[test]
    fn dev_t_numbers_split_as_glibc_makes_them() {
        // makedev(4100, 70000): both past the old 12- and 8-bit fields.
        let (major, minor) = (4100u64, 70000u64);
        let dev = ((major & 0xffff_f000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffff_ff00) << 12)
            | (minor & 0xff);
        assert_eq!((libc_major(dev), libc_minor(dev)), (major, minor));
        assert_eq!((libc_major(0x0103), libc_minor(0x0103)), (1, 3));
    }

    #[test]
    fn the_hosts_devices_skip_pseudo_terminals_and_the_console() {
        let all = all_host_devices().unwrap();
        assert!(all
            .iter()
            .any(|d| d.path == Path::new("/dev/null") && (d.major, d.minor) == (1, 3)));
        assert!(all.iter().all(|d| !d.path.starts_with("/dev/pts")));
        assert!(all.iter().all(|d| d.path != Path::new("/dev/console")));
        assert!(all.iter().all(|d| d.permissions == "rwm"));
    }
}
