//! The OCI runtime spec of a container from its image config and options.
//!
//! [`build_spec`] turns what the image says ([`ImageDefaults`]) and what the
//! caller asks for ([`SpecOptions`]) into the `config.json` runc reads, with
//! containerd's security defaults: its capability set, masked and read-only
//! paths, device cgroup rules and default seccomp profile. Users and groups
//! named by the image or the caller are resolved against the container's own
//! `/etc/passwd` and `/etc/group`, read through [`RootfsFiles`] so that a
//! hostile image can never make berth read a host file.
//!
//! Host devices ([`DeviceRequest`], and all of the host's for a privileged
//! container) are read from the host by the caller and listed in
//! [`SpecOptions::devices`]. CDI devices (`VENDOR/CLASS=NAME`) are resolved
//! against the host's CDI spec files by [`CdiRegistry`] into edits of the
//! options.
//!
//! A user namespace ([`UserNamespace`]: new, or joined by path, with its
//! mappings) comes first among the namespaces; with the host's network the
//! host's /sys is bound in place of sysfs, which a user namespace cannot
//! mount there.
//!
//! Gaps, on purpose: no AppArmor or SELinux profile (the hosts berth targets
//! may have neither loaded).

mod args;
mod capabilities;
mod cdi;
mod devices;
mod error;
mod image;
mod mounts;
mod options;
mod resources;
mod rootfs_files;
mod seccomp;
mod spec;
mod syscall_abis;
mod user;

pub use capabilities::{bounding_set, DEFAULT_CAPABILITIES};
pub use cdi::{
    is_cdi_device_name, parse_qualified_name, CdiEdits, CdiHook, CdiRegistry, DEFAULT_CDI_SPEC_DIRS,
};
pub use devices::{all_host_devices, container_devices, Device, DeviceKind, DeviceRequest};
pub use error::{OciError, Result};
pub use image::ImageDefaults;
pub use mounts::MountOption;
pub use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Spec};
pub use options::{
    CgroupDriver, CgroupNamespace, NetworkMode, Seccomp, SpecHook, SpecOptions, UserNamespace,
};
pub use resources::{check_cgroup_parent, update_limits, Limits};
pub use rootfs_files::{HostRootfs, NoRootfsFiles, RootfsFiles};
pub use seccomp::default_seccomp;
pub use spec::{build_spec, check_user_namespace};
pub use user::resolve_user;
