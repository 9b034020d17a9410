//! What the caller asks of the container.

use std::collections::BTreeMap;

use crate::mounts::MountOption;

/// A change made to a built spec, for what [`SpecOptions`] has no field
/// for (a CRI server's namespace paths, sysctls, cgroup parent): as
/// containerd's `SpecOpts`, applied in order after the spec is built.
#[derive(Clone)]
pub struct SpecHook(pub std::sync::Arc<SpecChange>);

/// What a [`SpecHook`] runs.
pub type SpecChange = dyn Fn(&mut oci_spec::runtime::Spec) -> crate::Result<()> + Send + Sync;

impl std::fmt::Debug for SpecHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpecHook")
    }
}

/// The caller's options for one container; [`SpecOptions::new`] gives
/// containerd's defaults.
#[derive(Debug, Clone)]
pub struct SpecOptions {
    /// The berth namespace of the container (part of its cgroup path).
    pub namespace: String,
    /// The container id (its cgroup path and default hostname).
    pub id: String,
    /// When non-empty, replaces the image's `Cmd` (the entrypoint is kept).
    pub args: Vec<String>,
    /// When set, replaces the image's `Entrypoint` and drops its `Cmd`.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` entries, overriding the image's of the same key.
    pub env: Vec<String>,
    /// The working directory (absolute); default: the image's, or `/`.
    pub cwd: Option<String>,
    /// `uid`, `uid:gid`, `name`, `name:group`, `uid:group` or `name:gid`;
    /// default: the image's user, or root.
    pub user: Option<String>,
    /// The hostname; default: the id (truncated to 63 bytes).
    pub hostname: Option<String>,
    /// Give the process a terminal.
    pub terminal: bool,
    /// Mount the root filesystem read-only.
    pub read_only_rootfs: bool,
    /// Every capability, no seccomp, no masked or read-only paths.
    pub privileged: bool,
    /// Capabilities to add (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`; any case).
    pub cap_add: Vec<String>,
    /// Capabilities to drop (same forms).
    pub cap_drop: Vec<String>,
    /// The seccomp profile.
    pub seccomp: Seccomp,
    /// Bind and tmpfs mounts, after (or instead of) the default ones.
    pub mounts: Vec<MountOption>,
    /// Memory, CPU and pids limits.
    pub limits: crate::Limits,
    /// Host devices the container gets (read from the host with
    /// [`crate::DeviceRequest::resolve`], or [`crate::all_host_devices`]
    /// for a privileged container).
    pub devices: Vec<crate::Device>,
    /// The network namespace.
    pub network: NetworkMode,
    /// How the cgroup path is written.
    pub cgroup: CgroupDriver,
    /// The cgroup the container's goes under (nerdctl's `--cgroup-parent`):
    /// an absolute path for cgroupfs, a `.slice` for systemd. Default:
    /// berth's own (`/berth/<namespace>`, `berth.slice`).
    pub cgroup_parent: Option<String>,
    /// A cgroup namespace of the container's own or the host's (nerdctl's
    /// `--cgroupns`); None: [`CgroupNamespace::host_default`].
    pub cgroupns: Option<CgroupNamespace>,
    /// The spec's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Set `noNewPrivileges` on the process.
    pub no_new_privileges: bool,
    /// A user namespace: root inside is an unprivileged id outside.
    pub user_namespace: Option<UserNamespace>,
    /// Applied in order to the built spec.
    pub hooks: Vec<SpecHook>,
}

/// The user namespace of a container: a new one with these mappings, or
/// (with `path`) the one pinned there, which has them (runc needs the
/// mappings either way, to give the container's files to its root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespace {
    pub path: Option<String>,
    pub uid_mappings: Vec<oci_spec::runtime::LinuxIdMapping>,
    pub gid_mappings: Vec<oci_spec::runtime::LinuxIdMapping>,
}

impl SpecOptions {
    /// Options with containerd's defaults: the default seccomp profile, a
    /// network namespace of its own, the cgroupfs driver, no new privileges,
    /// and everything else empty or off.
    pub fn new(namespace: &str, id: &str) -> SpecOptions {
        SpecOptions {
            namespace: namespace.to_string(),
            id: id.to_string(),
            args: Vec::new(),
            entrypoint: None,
            env: Vec::new(),
            cwd: None,
            user: None,
            hostname: None,
            terminal: false,
            read_only_rootfs: false,
            privileged: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: Seccomp::Default,
            mounts: Vec::new(),
            limits: crate::Limits::default(),
            devices: Vec::new(),
            network: NetworkMode::None,
            cgroup: CgroupDriver::Cgroupfs,
            cgroup_parent: None,
            cgroupns: None,
            annotations: BTreeMap::new(),
            no_new_privileges: true,
            user_namespace: None,
            hooks: Vec::new(),
        }
    }
}

/// The seccomp profile of a container.
#[derive(Debug, Clone)]
pub enum Seccomp {
    /// berth's default profile (containerd's), adjusted to the container's
    /// capabilities; none for a privileged container.
    Default,
    /// No seccomp filter.
    Unconfined,
    /// This profile, as given (also for a privileged container).
    Profile(oci_spec::runtime::LinuxSeccomp),
}

/// The network of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// A network namespace of its own (with only a loopback device until
    /// something sets it up).
    None,
    /// The host's network and UTS namespaces, with the host's
    /// `/etc/resolv.conf` and `/etc/hosts` bound read-only.
    Host,
}

/// Whether a container has a cgroup namespace of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupNamespace {
    /// Its own: its cgroup is `/` in /proc/self/cgroup.
    Private,
    /// The host's: /proc/self/cgroup shows its cgroup's host path (its
    /// /sys/fs/cgroup still shows only its own cgroup).
    Host,
}

impl CgroupNamespace {
    /// nerdctl's, Docker's and podman's default: private on a cgroup v2
    /// host, the host's on v1 and hybrid hosts. (There, runc can only make
    /// the namespace once the container is in all its v1 cgroups, a wait in
    /// the way of every start: about 2 ms of the 35 of `runc run` here.)
    pub fn host_default() -> CgroupNamespace {
        static DEFAULT: std::sync::OnceLock<CgroupNamespace> = std::sync::OnceLock::new();
        *DEFAULT.get_or_init(|| {
            let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
                .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
            if unified {
                CgroupNamespace::Private
            } else {
                CgroupNamespace::Host
            }
        })
    }

    /// `host` or `private`, as `--cgroupns` takes it.
    pub fn parse(value: &str) -> Result<CgroupNamespace, String> {
        match value {
            "private" => Ok(CgroupNamespace::Private),
            "host" => Ok(CgroupNamespace::Host),
            other => Err(format!("cgroup namespace {other:?}: host or private")),
        }
    }
}

/// How runc is told where the container's cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupDriver {
    /// A path under the cgroup root: `/berth/<namespace>/<id>`.
    Cgroupfs,
    /// A systemd scope: `berth.slice:berth-<namespace>:<id>`.
    Systemd,
}
