//! From the CRI's configs to berth-oci's spec options: what berth-oci knows
//! (user, capabilities, seccomp, mounts, read-only root) as options, the
//! rest (namespace paths, sysctls, cgroup parent, resources, OOM score) as
//! hooks on the built spec, as containerd's CRI does with its `SpecOpts`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_errdefs::{Error, Result};
use berth_oci::{MountOption, NetworkMode, Seccomp, SpecHook, SpecOptions, UserNamespace};
use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    LinuxCpu, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxResources, Spec,
};

use crate::images::NAMESPACE;
use crate::state::Sandbox;

/// The OOM score containerd gives a pod's pause process.
const SANDBOX_OOM_SCORE_ADJ: i32 = -998;

/// How crid places cgroups, and whether OOM scores must be clamped.
#[derive(Debug, Clone)]
pub struct Host {
    pub systemd_cgroup: bool,
    /// The host cannot lower OOM scores below crid's own (no
    /// CAP_SYS_RESOURCE): containerd's `restrict_oom_score_adj`.
    pub restrict_oom_score_adj: bool,
    /// Where seccomp profiles named `localhost/...` are looked up when the
    /// name is relative.
    pub seccomp_root: PathBuf,
    /// The OCI runtime makes read-only mounts recursive (`rro`).
    pub recursive_read_only: bool,
    /// Where CDI spec files are, in rising priority (containerd's
    /// `cdi_spec_dirs`).
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// The kernel makes id-mapped mounts of crid's filesystem: pods can
    /// have user namespaces of their own.
    pub id_mapped_mounts: bool,
}

/// Whether the kernel id-maps a mount of the filesystem `dir` is on (what
/// a container's image layers need in a user namespace): a clone of its
/// mount, id-mapped through a throwaway user namespace and never attached.
pub fn kernel_id_maps(dir: &std::path::Path) -> bool {
    use berth_mount::syscalls::{Host as Kernel, MountSyscalls};
    let mapping = [berth_mount::IdMapping {
        container_id: 0,
        host_id: 65536,
        size: 65536,
    }];
    // The directory may not be made yet: its filesystem is its nearest
    // existing ancestor's.
    let dir = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
    let probe = || -> std::result::Result<(), nix::errno::Errno> {
        let userns = Kernel.userns(&mapping, &mapping)?;
        let tree = Kernel.open_tree_clone(dir)?;
        Kernel.set_idmap(&tree, &userns)
    };
    match probe() {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(dir = %dir.display(), "no id-mapped mounts, so no user namespaces: {e}");
            false
        }
    }
}

/// The user namespace a pod asks for: None for the node's (no options, or
/// mode NODE); with mode POD, one of its own with exactly one uid and one
/// gid mapping, each of the container's root to an unprivileged host id.
/// Other modes are refused, as containerd refuses them.
pub fn pod_user_namespace(config: &cri::PodSandboxConfig) -> Result<Option<UserNamespace>> {
    let Some(userns) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref())
    else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(userns.mode) {
        Ok(cri::NamespaceMode::Node) => Ok(None),
        Ok(cri::NamespaceMode::Pod) => {
            let one = |what: &str, list: &[cri::IdMapping]| {
                let [m] = list else {
                    return Err(Error::invalid_argument(format!(
                        "a pod's user namespace takes exactly one {what} mapping, not {}",
                        list.len()
                    )));
                };
                berth_oci::LinuxIdMappingBuilder::default()
                    .container_id(m.container_id)
                    .host_id(m.host_id)
                    .size(m.length)
                    .build()
                    .map_err(|e| Error::internal(format!("an id mapping: {e}")))
            };
            let ns = UserNamespace {
                path: None,
                uid_mappings: vec![one("uid", &userns.uids)?],
                gid_mappings: vec![one("gid", &userns.gids)?],
            };
            berth_oci::check_user_namespace(&ns).map_err(berth_tasks::container::oci_error)?;
            Ok(Some(ns))
        }
        _ => Err(Error::invalid_argument(format!(
            "user namespace mode {} is not supported: a pod has one of its own (POD) or the node's (NODE)",
            userns.mode
        ))),
    }
}

/// Whether `runc features` lists the `rro` mount option.
pub fn runc_has_recursive_read_only() -> bool {
    std::process::Command::new("runc")
        .arg("features")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|features| {
            features
                .get("mountOptions")?
                .as_array()
                .map(|options| options.iter().any(|o| o == "rro"))
        })
        .unwrap_or(false)
}

impl Host {
    fn oom_score_adj(&self, wanted: i32) -> i32 {
        if !self.restrict_oom_score_adj {
            return wanted;
        }
        let current = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .unwrap_or(0);
        wanted.max(current)
    }

    /// How runc is to read the cgroups path (the container record then
    /// asks runc for its systemd driver when it is systemd's).
    fn cgroup_driver(&self) -> berth_oci::CgroupDriver {
        if self.systemd_cgroup {
            berth_oci::CgroupDriver::Systemd
        } else {
            berth_oci::CgroupDriver::Cgroupfs
        }
    }

    /// runc's cgroups path for a pod's process: under the pod's cgroup
    /// parent when the kubelet gives one, checked as `berth run
    /// --cgroup-parent`'s (under systemd, its last name: the kubelet may
    /// give the slice's path).
    fn cgroups_path(&self, parent: &str, id: &str) -> Result<String> {
        let driver = self.cgroup_driver();
        let checked = |parent| {
            berth_oci::check_cgroup_parent(&driver, parent)
                .map_err(|e| Error::invalid_argument(e.to_string()))
        };
        Ok(if self.systemd_cgroup {
            let slice = if parent.is_empty() {
                "system.slice"
            } else {
                checked(parent.rsplit('/').next().unwrap_or(parent))?
            };
            format!("{slice}:cri-berth:{id}")
        } else if parent.is_empty() {
            format!("/berth/{NAMESPACE}/{id}")
        } else {
            format!("{}/{id}", checked(parent)?)
        })
    }
}

/// Whether the host has CAP_SYS_RESOURCE in crid's bounding set.
pub fn can_lower_oom_scores() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    berth_oci::bounding_set().is_some_and(|set| set & (1 << CAP_SYS_RESOURCE) != 0)
}

fn hook(f: impl Fn(&mut Spec) -> berth_oci::Result<()> + Send + Sync + 'static) -> SpecHook {
    SpecHook(Arc::new(f))
}

fn linux_of(spec: &mut Spec) -> &mut oci_spec::runtime::Linux {
    spec.linux_mut().get_or_insert_with(Default::default)
}

/// Replaces (path given) or removes (None: the host's) one namespace.
fn set_namespace(kind: LinuxNamespaceType, path: Option<String>) -> SpecHook {
    hook(move |spec| {
        let linux = linux_of(spec);
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain(|n| n.typ() != kind);
        if let Some(path) = &path {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(kind);
            ns.set_path(Some(PathBuf::from(path)));
            namespaces.push(ns);
        }
        linux.set_namespaces(Some(namespaces));
        Ok(())
    })
}

/// The seccomp profile a security context asks for. Kubelets before 1.19
/// name it in the deprecated `seccomp_profile_path`, still honoured. A
/// privileged process runs unconfined whatever profile is named, as
/// containerd runs it.
fn seccomp_of(
    host: &Host,
    privileged: bool,
    profile: Option<&cri::SecurityProfile>,
    path: &str,
) -> Result<Seccomp> {
    if privileged {
        return Ok(Seccomp::Unconfined);
    }
    let localhost = |name: &str| -> Result<Seccomp> {
        let file = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            host.seccomp_root.join(name)
        };
        let bytes = std::fs::read(&file).map_err(|e| {
            Error::invalid_argument(format!("seccomp profile {}: {e}", file.display()))
        })?;
        Seccomp::parse_profile_json(&bytes).map_err(|e| Error::invalid_argument(e.to_string()))
    };
    match profile {
        Some(p) => match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(Seccomp::Default),
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(Seccomp::Unconfined),
            Ok(cri::security_profile::ProfileType::Localhost) => localhost(&p.localhost_ref),
            Err(_) => Err(Error::invalid_argument("unknown seccomp profile type")),
        },
        // The deprecated path form: "" and "unconfined" mean none.
        None => match path {
            "" | "unconfined" => Ok(Seccomp::Unconfined),
            "runtime/default" | "docker/default" => Ok(Seccomp::Default),
            other => match other.strip_prefix("localhost/") {
                Some(name) => localhost(name),
                None => Err(Error::invalid_argument(format!(
                    "seccomp profile {other:?} is not known"
                ))),
            },
        },
    }
}

/// The user string of a security context's run-as fields. A group alone
/// is refused, as containerd refuses it: it would silently run as root.
fn user_string(uid: Option<i64>, gid: Option<i64>, name: &str) -> Result<Option<String>> {
    let user = match (uid, name) {
        (Some(uid), _) if uid < 0 => {
            return Err(Error::invalid_argument(format!(
                "run as user {uid}: negative"
            )))
        }
        (Some(uid), _) => uid.to_string(),
        (None, name) if !name.is_empty() => name.to_string(),
        (None, _) if gid.is_some() => {
            return Err(Error::invalid_argument(
                "run as group is set without run as user or run as username",
            ))
        }
        (None, _) => return Ok(None),
    };
    Ok(Some(match gid {
        Some(gid) if gid < 0 => {
            return Err(Error::invalid_argument(format!(
                "run as group {gid}: negative"
            )))
        }
        Some(gid) => format!("{user}:{gid}"),
        None => user,
    }))
}

/// The process's supplementary groups with `groups` added: after those
/// the image's /etc/group gives the user (SupplementalGroupsPolicy Merge),
/// or after its primary group alone (Strict).
fn supplemental_groups(groups: Vec<i64>, strict: bool) -> SpecHook {
    hook(move |spec| {
        if let Some(process) = spec.process_mut() {
            let mut user = process.user().clone();
            let mut gids = if strict {
                vec![user.gid()]
            } else {
                user.additional_gids().clone().unwrap_or_default()
            };
            for g in &groups {
                let g = *g as u32;
                if !gids.contains(&g) {
                    gids.push(g);
                }
            }
            user.set_additional_gids(Some(gids));
            process.set_user(user);
        }
        Ok(())
    })
}

/// The identity a spec's process runs as, as the CRI reports it.
pub fn effective_user(spec: &Spec) -> Option<cri::ContainerUser> {
    let user = spec.process().as_ref()?.user();
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid: user.uid() as i64,
            gid: user.gid() as i64,
            supplemental_groups: user
                .additional_gids()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(i64::from)
                .collect(),
        }),
    })
}

fn cgroups_path(path: String) -> SpecHook {
    hook(move |spec| {
        linux_of(spec).set_cgroups_path(Some(PathBuf::from(&path)));
        Ok(())
    })
}

fn oom_score(adj: i32) -> SpecHook {
    hook(move |spec| {
        if let Some(process) = spec.process_mut() {
            process.set_oom_score_adj(Some(adj));
        }
        Ok(())
    })
}

fn annotations(values: HashMap<String, String>) -> SpecHook {
    hook(move |spec| {
        let mut all = spec.annotations().clone().unwrap_or_default();
        all.extend(values.clone());
        spec.set_annotations(Some(all));
        Ok(())
    })
}

/// Joins the namespaces crid pinned for the pod, by path: its network
/// namespace (else the node's, as `options.network` says), its UTS
/// namespace (none on the node's network: the node's then), and its IPC
/// namespace unless `host_ipc`.
fn join_pod_namespaces(options: &mut SpecOptions, sandbox: &Sandbox, host_ipc: bool) -> Result<()> {
    let wanted = crate::namespaces::Wanted::of(&sandbox.namespace_options());
    // A pod made before crid pinned its IPC and UTS namespaces has them
    // through its pause process only. A pod that has one of its own, but
    // neither pinned nor held, is refused: joining the node's instead
    // would be silent.
    let pinned_or_pauses = |pinned: &Option<PathBuf>, own: bool, name: &str| {
        if !own {
            return Ok(None);
        }
        match pinned {
            Some(path) => Ok(Some(path.display().to_string())),
            None if sandbox.pid != 0 => Ok(Some(format!("/proc/{}/ns/{name}", sandbox.pid))),
            None => Err(Error::failed_precondition(format!(
                "pod {} has no {name} namespace to join",
                sandbox.id
            ))),
        }
    };
    let net = pinned_or_pauses(&sandbox.netns, wanted.net, "net")?;
    if let Some(netns) = net {
        options
            .hooks
            .push(set_namespace(LinuxNamespaceType::Network, Some(netns)));
    }
    options.hooks.push(set_namespace(
        LinuxNamespaceType::Uts,
        pinned_or_pauses(&sandbox.utsns, wanted.uts, "uts")?,
    ));
    // The pod's UTS namespace (or the node's) already has its hostname,
    // which crid set: no process of the pod sets one of its own
    // (berth-oci would name it after the container, and each container or
    // pause process would rename the pod after itself).
    options.hooks.push(hook(|spec| {
        spec.set_hostname(None);
        Ok(())
    }));
    options.hooks.push(set_namespace(
        LinuxNamespaceType::Ipc,
        if host_ipc {
            None
        } else {
            pinned_or_pauses(&sandbox.ipcns, wanted.ipc, "ipc")?
        },
    ));
    Ok(())
}

/// The pod's pause process: the first process of the PID namespace its
/// containers share. It joins the namespaces crid pinned for the pod
/// (which already have its sysctls and hostname).
pub fn sandbox_options(host: &Host, sandbox: &Sandbox, image_user: &str) -> Result<SpecOptions> {
    let config = &sandbox.config;
    let mut options = SpecOptions::new(NAMESPACE, &sandbox.id);
    let linux = config.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    let ns = security.namespace_options.clone().unwrap_or_default();
    let host_network = ns.network == cri::NamespaceMode::Node as i32;
    options.network = if host_network {
        NetworkMode::Host
    } else {
        NetworkMode::None
    };
    options.user = user_string(
        security.run_as_user.map(|v| v.value),
        security.run_as_group.map(|v| v.value),
        "",
    )?
    .or_else(|| (!image_user.is_empty()).then(|| image_user.to_string()));
    options.read_only_rootfs = true;
    options.privileged = security.privileged;
    #[allow(deprecated)]
    let profile_path = security.seccomp_profile_path.as_str();
    options.seccomp = seccomp_of(
        host,
        security.privileged,
        security.seccomp.as_ref(),
        profile_path,
    )?;
    options.no_new_privileges = true;
    options.user_namespace = sandbox.user_namespace()?;
    join_pod_namespaces(
        &mut options,
        sandbox,
        ns.ipc == cri::NamespaceMode::Node as i32,
    )?;
    if ns.pid == cri::NamespaceMode::Node as i32 {
        options
            .hooks
            .push(set_namespace(LinuxNamespaceType::Pid, None));
    }
    options.hooks.push(supplemental_groups(
        security.supplemental_groups.clone(),
        false,
    ));
    options.cgroup = host.cgroup_driver();
    options.hooks.push(cgroups_path(
        host.cgroups_path(&linux.cgroup_parent, &sandbox.id)?,
    ));
    options
        .hooks
        .push(oom_score(host.oom_score_adj(SANDBOX_OOM_SCORE_ADJ)));
    options
        .hooks
        .push(annotations(sandbox_annotations(sandbox)));
    Ok(options)
}

/// containerd's annotations of a pod's sandbox.
fn sandbox_annotations(sandbox: &Sandbox) -> HashMap<String, String> {
    let meta = sandbox.metadata();
    HashMap::from([
        ("io.kubernetes.cri.container-type".into(), "sandbox".into()),
        ("io.kubernetes.cri.sandbox-id".into(), sandbox.id.clone()),
        ("io.kubernetes.cri.sandbox-name".into(), meta.name),
        ("io.kubernetes.cri.sandbox-namespace".into(), meta.namespace),
        ("io.kubernetes.cri.sandbox-uid".into(), meta.uid),
        (
            "io.kubernetes.cri.sandbox-log-directory".into(),
            sandbox.config.log_directory.clone(),
        ),
    ])
}

/// The spec kept in metad's record of a pod without a pause process (a
/// record with no image, snapshot or task, so that every pod is a record
/// as with containerd): no process and no root, only what the pod is — its
/// hostname, its pinned namespaces and containerd's annotations.
pub fn sandbox_record_spec(sandbox: &Sandbox) -> Result<Spec> {
    let mut spec = Spec::default();
    spec.set_process(None)
        .set_root(None)
        .set_mounts(None)
        .set_hooks(None)
        .set_hostname(
            (!sandbox.config.hostname.is_empty()).then(|| sandbox.config.hostname.clone()),
        )
        .set_annotations(Some(sandbox_annotations(sandbox)));
    let namespaces = [
        (LinuxNamespaceType::Network, &sandbox.netns),
        (LinuxNamespaceType::Ipc, &sandbox.ipcns),
        (LinuxNamespaceType::Uts, &sandbox.utsns),
        (LinuxNamespaceType::User, &sandbox.userns),
    ]
    .into_iter()
    .filter_map(|(kind, path)| {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(kind).set_path(path.clone());
        path.is_some().then_some(ns)
    })
    .collect();
    let mut linux = oci_spec::runtime::Linux::default();
    linux
        .set_namespaces(Some(namespaces))
        .set_masked_paths(None)
        .set_readonly_paths(None)
        .set_resources(None);
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The hostname a pod's containers have: the node's on the node's network,
/// else the pod's, else (a pod config without one) the node's, which the
/// pod's UTS namespace took from crid's when crid made it. containerd
/// writes the same into the pod's /etc/hostname and its containers'
/// `HOSTNAME`.
pub fn pod_hostname(sandbox: &Sandbox) -> String {
    let host_network = sandbox.namespace_options().network == cri::NamespaceMode::Node as i32;
    if !host_network && !sandbox.config.hostname.is_empty() {
        return sandbox.config.hostname.clone();
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// The files a pod's containers share: /etc/hostname, /etc/hosts and
/// /etc/resolv.conf (from the pod's DNS config, else the host's).
pub fn write_sandbox_files(sandbox: &Sandbox) -> Result<()> {
    let dir = &sandbox.dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), &e))
    };
    let ns = sandbox.namespace_options();
    let host_network = ns.network == cri::NamespaceMode::Node as i32;
    write("hostname", &format!("{}\n", pod_hostname(sandbox)))?;
    let hosts = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string()
    };
    write("hosts", &hosts)?;
    let resolv = match &sandbox.config.dns_config {
        Some(dns)
            if !dns.servers.is_empty() || !dns.searches.is_empty() || !dns.options.is_empty() =>
        {
            berth_network::render_resolv_conf(&dns.servers, &dns.searches, &dns.options)
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    write("resolv.conf", &resolv)
}

/// Gives the pod's shared files to `(uid, gid)`: the host ids of the root
/// of a pod in a user namespace of its own.
pub fn give_sandbox_files(sandbox: &Sandbox, (uid, gid): (u32, u32)) -> Result<()> {
    for name in ["hostname", "hosts", "resolv.conf"] {
        let path = sandbox.dir.join(name);
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(|e| Error::io(format!("giving {} to {uid}:{gid}", path.display()), &e))?;
    }
    Ok(())
}

/// The environment of the container process, from the CRI's key/values.
fn environment(config: &cri::ContainerConfig) -> Vec<String> {
    config
        .envs
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect()
}

/// The annotation prefix through which device plugins (and DRA drivers
/// before the CRI field existed) name CDI devices: `cdi.k8s.io/KEY` with
/// a comma-separated list of `VENDOR/CLASS=NAME` as its value.
const CDI_ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The CDI devices a container config asks for: its `CDI_devices`, then
/// those its `cdi.k8s.io/` annotations name (in key order), as containerd
/// reads both; an annotation's value is a comma-separated list of names,
/// each of which must be one (a blank entry too is refused, as
/// containerd's parser refuses it).
fn cdi_device_names(config: &cri::ContainerConfig) -> Result<Vec<String>> {
    let mut names: Vec<String> = config.cdi_devices.iter().map(|d| d.name.clone()).collect();
    let mut keys: Vec<&String> = config
        .annotations
        .keys()
        .filter(|k| k.starts_with(CDI_ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for key in keys {
        for name in config.annotations[key].split(',') {
            berth_oci::parse_qualified_name(name)
                .map_err(|e| Error::invalid_argument(format!("annotation {key}: {e}")))?;
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The host devices the container config asks for (a device plugin's,
/// through the kubelet): the container path defaults to the host's, the
/// permissions to `rwm`.
fn device_requests(config: &cri::ContainerConfig) -> Vec<berth_oci::DeviceRequest> {
    config
        .devices
        .iter()
        .map(|device| berth_oci::DeviceRequest {
            host_path: PathBuf::from(&device.host_path),
            container_path: PathBuf::from(if device.container_path.is_empty() {
                &device.host_path
            } else {
                &device.container_path
            }),
            permissions: if device.permissions.is_empty() {
                "rwm".to_string()
            } else {
                device.permissions.clone()
            },
        })
        .collect()
}

/// A container's cgroup namespace, as containerd's CRI chooses it: the
/// host's for a privileged container (even on a cgroup v2 host), else
/// berth-oci's default (its own on v2 only).
fn cgroup_namespace(privileged: bool) -> Option<berth_oci::CgroupNamespace> {
    privileged.then_some(berth_oci::CgroupNamespace::Host)
}

/// A container of a pod.
pub fn container_options(
    host: &Host,
    id: &str,
    config: &cri::ContainerConfig,
    sandbox: &Sandbox,
    image_name: &str,
    target_pid: Option<u32>,
) -> Result<SpecOptions> {
    let mut options = SpecOptions::new(NAMESPACE, id);
    if !config.command.is_empty() {
        options.entrypoint = Some(config.command.clone());
    }
    options.args = config.args.clone();
    options.env = environment(config);
    if !config.working_dir.is_empty() {
        options.cwd = Some(config.working_dir.clone());
    }
    options.terminal = config.tty;
    let linux = config.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    options.user = user_string(
        security.run_as_user.map(|v| v.value),
        security.run_as_group.map(|v| v.value),
        &security.run_as_username,
    )?;
    options.read_only_rootfs = security.readonly_rootfs;
    options.privileged = security.privileged;
    options.cgroupns = cgroup_namespace(security.privileged);
    if let Some(caps) = &security.capabilities {
        options.cap_add = caps.add_capabilities.clone();
        options.cap_drop = caps.drop_capabilities.clone();
    }
    options.no_new_privileges = security.no_new_privs;
    #[allow(deprecated)]
    let profile_path = security.seccomp_profile_path.as_str();
    options.seccomp = seccomp_of(
        host,
        security.privileged,
        security.seccomp.as_ref(),
        profile_path,
    )?;
    options.devices = berth_oci::container_devices(security.privileged, &device_requests(config))
        .map_err(berth_tasks::container::oci_error)?;
    let pod_ns = sandbox.namespace_options();
    let host_network = pod_ns.network == cri::NamespaceMode::Node as i32;
    options.network = if host_network {
        NetworkMode::Host
    } else {
        NetworkMode::None
    };
    // Its `HOSTNAME` is the pod's (the one its UTS namespace has), unless
    // the image or the config set one.
    let hostname = pod_hostname(sandbox);
    options.hooks.push(hook(move |spec| {
        if let Some(process) = spec.process_mut() {
            let mut env = process.env().clone().unwrap_or_default();
            if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
                env.push(format!("HOSTNAME={hostname}"));
                process.set_env(Some(env));
            }
        }
        Ok(())
    }));

    // The pod's files, unless the kubelet mounts its own there.
    let wanted: Vec<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    for (file, destination) in [
        ("hostname", "/etc/hostname"),
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        if host_network && destination != "/etc/hostname" {
            // berth-oci binds the host's hosts and resolv.conf itself.
            continue;
        }
        if !wanted.contains(&destination) {
            let mut mount_options = Vec::new();
            if security.readonly_rootfs {
                mount_options.push("ro".to_string());
            }
            options.mounts.push(MountOption {
                kind: "bind".into(),
                source: sandbox.dir.join(file).display().to_string(),
                destination: destination.into(),
                options: mount_options,
            });
        }
    }
    // The pod's /dev/shm, as its IPC namespace is (the node's when the
    // container shares the node's IPC), unless the kubelet mounts one.
    let host_ipc = security
        .namespace_options
        .as_ref()
        .is_some_and(|n| n.ipc == cri::NamespaceMode::Node as i32);
    let shm = if host_ipc {
        Some(PathBuf::from("/dev/shm"))
    } else {
        sandbox.shm.clone()
    };
    if let Some(shm) = shm.filter(|_| !wanted.contains(&"/dev/shm")) {
        options.mounts.push(MountOption {
            kind: "bind".into(),
            source: shm.display().to_string(),
            destination: "/dev/shm".into(),
            options: vec!["nosuid".into(), "nodev".into(), "noexec".into()],
        });
    }
    for mount in &config.mounts {
        options
            .mounts
            .push(bind_mount(mount, host.recursive_read_only)?);
    }
    // A mount that propagates needs the container's root to propagate too
    // (runc's rootfsPropagation), as containerd sets it.
    let propagation = |wanted: cri::MountPropagation| {
        config.mounts.iter().any(|m| m.propagation == wanted as i32)
    };
    let rootfs_propagation = if propagation(cri::MountPropagation::PropagationBidirectional) {
        Some("rshared")
    } else if propagation(cri::MountPropagation::PropagationHostToContainer) {
        Some("rslave")
    } else {
        None
    };
    if let Some(mode) = rootfs_propagation {
        options.hooks.push(hook(move |spec| {
            linux_of(spec).set_rootfs_propagation(Some(mode.to_string()));
            Ok(())
        }));
    }

    // The pod's namespaces, through its pause process; its user namespace
    // is pinned (and already had to be joined to reach the others).
    options.user_namespace = sandbox.user_namespace()?;
    let asked = security
        .namespace_options
        .as_ref()
        .and_then(|n| n.userns_options.as_ref());
    let pods = sandbox
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref());
    let node = |u: Option<&cri::UserNamespace>| {
        u.is_none_or(|u| u.mode == cri::NamespaceMode::Node as i32)
    };
    if asked.is_some() && asked != pods && !(node(asked) && node(pods)) {
        return Err(Error::invalid_argument(
            "a container's user namespace options must be its pod's",
        ));
    }
    let ns = security.namespace_options.clone().unwrap_or_default();
    join_pod_namespaces(
        &mut options,
        sandbox,
        ns.ipc == cri::NamespaceMode::Node as i32,
    )?;
    let pause_ns = |name: &str| -> Result<String> {
        if sandbox.pid == 0 {
            return Err(Error::invalid_argument(format!(
                "the container asks for its pod's {name} namespace, but pod {} shares none (its config asked for no shared PID namespace)",
                sandbox.id
            )));
        }
        Ok(format!("/proc/{}/ns/{name}", sandbox.pid))
    };
    match cri::NamespaceMode::try_from(ns.pid) {
        Ok(cri::NamespaceMode::Pod) => options.hooks.push(set_namespace(
            LinuxNamespaceType::Pid,
            Some(pause_ns("pid")?),
        )),
        Ok(cri::NamespaceMode::Node) => options
            .hooks
            .push(set_namespace(LinuxNamespaceType::Pid, None)),
        Ok(cri::NamespaceMode::Target) => {
            let target = target_pid.ok_or_else(|| {
                Error::not_found(format!(
                    "target container {:?} is not running",
                    ns.target_id
                ))
            })?;
            options.hooks.push(set_namespace(
                LinuxNamespaceType::Pid,
                Some(format!("/proc/{target}/ns/pid")),
            ))
        }
        _ => {}
    }

    let mut groups = security.supplemental_groups.clone();
    groups.retain(|g| *g >= 0);
    let strict =
        security.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
    options.hooks.push(supplemental_groups(groups, strict));
    let parent = sandbox
        .config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    options.cgroup = host.cgroup_driver();
    options
        .hooks
        .push(cgroups_path(host.cgroups_path(&parent, id)?));
    if let Some(resources) = linux.resources.clone() {
        if resources.oom_score_adj != 0 {
            options.hooks.push(oom_score(
                host.oom_score_adj(resources.oom_score_adj as i32),
            ));
        }
        options.hooks.push(resources_hook(resources));
    }
    if !security.privileged {
        if !security.masked_paths.is_empty() {
            let paths = security.masked_paths.clone();
            options.hooks.push(hook(move |spec| {
                linux_of(spec).set_masked_paths(Some(paths.clone()));
                Ok(())
            }));
        }
        if !security.readonly_paths.is_empty() {
            let paths = security.readonly_paths.clone();
            options.hooks.push(hook(move |spec| {
                linux_of(spec).set_readonly_paths(Some(paths.clone()));
                Ok(())
            }));
        }
    }
    let meta = sandbox.metadata();
    let mut values = HashMap::from([
        (
            "io.kubernetes.cri.container-type".to_string(),
            "container".to_string(),
        ),
        (
            "io.kubernetes.cri.container-name".to_string(),
            config.metadata.clone().unwrap_or_default().name,
        ),
        (
            "io.kubernetes.cri.sandbox-id".to_string(),
            sandbox.id.clone(),
        ),
        (
            "io.kubernetes.cri.sandbox-name".to_string(),
            meta.name.clone(),
        ),
        (
            "io.kubernetes.cri.sandbox-namespace".to_string(),
            meta.namespace.clone(),
        ),
        (
            "io.kubernetes.cri.sandbox-uid".to_string(),
            meta.uid.clone(),
        ),
        (
            "io.kubernetes.cri.image-name".to_string(),
            image_name.to_string(),
        ),
    ]);
    values.extend(config.annotations.clone());
    options.hooks.push(annotations(values));
    // CDI's edits come last, as containerd applies them: its environment
    // wins, its mounts replace any on the same path.
    let cdi_names = cdi_device_names(config)?;
    if !cdi_names.is_empty() {
        berth_oci::CdiRegistry::load(&host.cdi_spec_dirs)
            .resolve(&cdi_names)
            .map_err(berth_tasks::container::oci_error)?
            .apply(&mut options);
    }
    Ok(options)
}

/// The volumes a container gets from its image, as containerd gives them:
/// each `Volumes` path no CRI mount covers becomes an empty directory under
/// the container's own (`volumes/N`), bind-mounted at that path and filled
/// from the image (the copy-up berth-tasks does through a read-only view,
/// resolving the path inside the image).
pub fn image_volumes(
    volumes: &[String],
    mounts: &[cri::Mount],
    container_dir: &Path,
) -> Result<(Vec<MountOption>, Vec<berth_tasks::container::CopyUp>)> {
    let mut taken: Vec<String> = mounts
        .iter()
        .filter_map(|m| clean_absolute(&m.container_path))
        .collect();
    let (mut binds, mut copies) = (Vec::new(), Vec::new());
    for volume in volumes {
        let Some(path) = clean_absolute(volume) else {
            tracing::debug!(volume, "image volume skipped: not a path below /");
            continue;
        };
        if taken.contains(&path) {
            continue;
        }
        let host_dir = container_dir.join("volumes").join(copies.len().to_string());
        std::fs::create_dir_all(&host_dir)
            .map_err(|e| Error::io(format!("creating {}", host_dir.display()), &e))?;
        binds.push(MountOption {
            kind: "bind".into(),
            source: host_dir.display().to_string(),
            destination: path.clone(),
            options: vec!["rprivate".to_string()],
        });
        copies.push(berth_tasks::container::CopyUp {
            path_in_image: path.clone(),
            host_dir,
        });
        taken.push(path);
    }
    Ok((binds, copies))
}

/// `path` made absolute and cleaned lexically (`.`, `..` and repeated `/`
/// go; `..` stops at `/`), as Go's `filepath.Clean` does for containerd;
/// None for the root itself or a name with NUL.
fn clean_absolute(path: &str) -> Option<String> {
    if path.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    (!parts.is_empty()).then(|| format!("/{}", parts.join("/")))
}

fn bind_mount(mount: &cri::Mount, recursive_read_only: bool) -> Result<MountOption> {
    if !Path::new(&mount.container_path).is_absolute() || !Path::new(&mount.host_path).is_absolute()
    {
        return Err(Error::invalid_argument(format!(
            "mount {:?} -> {:?}: both paths must be absolute",
            mount.host_path, mount.container_path
        )));
    }
    let private = mount.propagation == cri::MountPropagation::PropagationPrivate as i32;
    if mount.recursive_read_only {
        // As the CRI defines it: only a read-only, private mount can be
        // made recursively read-only.
        let why = if !mount.readonly {
            Some("it is not read-only")
        } else if !private {
            Some("its propagation is not private")
        } else if !recursive_read_only {
            Some("the OCI runtime does not support rro")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::invalid_argument(format!(
                "mount {:?}: recursive read-only refused: {why}",
                mount.container_path
            )));
        }
    }
    // As containerd: a missing host path becomes a directory.
    if std::fs::symlink_metadata(&mount.host_path).is_err() {
        std::fs::create_dir_all(&mount.host_path)
            .map_err(|e| Error::io(format!("creating {}", mount.host_path), &e))?;
    }
    let mut options = Vec::new();
    if mount.readonly {
        options.push("ro".to_string());
    }
    if mount.recursive_read_only {
        options.push("rro".to_string());
    }
    options.push(
        match cri::MountPropagation::try_from(mount.propagation) {
            Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
            _ => "rprivate",
        }
        .to_string(),
    );
    Ok(MountOption {
        kind: "bind".into(),
        source: mount.host_path.clone(),
        destination: mount.container_path.clone(),
        options,
    })
}

fn resources_hook(resources: cri::LinuxContainerResources) -> SpecHook {
    hook(move |spec| {
        let linux = linux_of(spec);
        let mut out: LinuxResources = linux.resources().clone().unwrap_or_default();
        apply_resources(&mut out, &resources);
        linux.set_resources(Some(out));
        Ok(())
    })
}

/// The CRI's resources onto an OCI `LinuxResources` (zero: not set).
pub fn apply_resources(out: &mut LinuxResources, r: &cri::LinuxContainerResources) {
    let mut cpu: LinuxCpu = out.cpu().clone().unwrap_or_default();
    if r.cpu_period > 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if r.cpu_quota > 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    out.set_cpu(Some(cpu));
    let mut memory: LinuxMemory = (*out.memory()).unwrap_or_default();
    if r.memory_limit_in_bytes > 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory.set_swap(Some(r.memory_swap_limit_in_bytes));
    }
    out.set_memory(Some(memory));
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone().into_iter().collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdi_devices_come_from_the_field_then_the_annotations() {
        let config = cri::ContainerConfig {
            cdi_devices: vec![cri::CdiDevice {
                name: "vendor.com/gpu=0".into(),
            }],
            annotations: HashMap::from([
                ("cdi.k8s.io/b".into(), "vendor.com/nic=1".into()),
                (
                    "cdi.k8s.io/a".into(),
                    "vendor.com/gpu=1,vendor.com/gpu=2".into(),
                ),
                ("other.io/x".into(), "vendor.com/gpu=9".into()),
            ]),
            ..Default::default()
        };
        assert_eq!(
            cdi_device_names(&config).unwrap(),
            [
                "vendor.com/gpu=0",
                "vendor.com/gpu=1",
                "vendor.com/gpu=2",
                "vendor.com/nic=1"
            ]
        );
        for bad in [
            "vendor.com/gpu=1,",
            " vendor.com/gpu=1",
            "vendor.com/gpu=1,,x/y=z",
            "gpu",
        ] {
            let mut config = config.clone();
            config.annotations.insert("cdi.k8s.io/c".into(), bad.into());
            assert!(cdi_device_names(&config).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn privileged_containers_keep_the_hosts_cgroup_namespace() {
        assert_eq!(
            cgroup_namespace(true),
            Some(berth_oci::CgroupNamespace::Host)
        );
        assert_eq!(cgroup_namespace(false), None);
    }

    #[test]
    fn cri_users_become_user_strings() {
        let ok = |uid, gid, name| user_string(uid, gid, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok(None, None, ""), None);
        assert_eq!(ok(Some(1000), None, ""), Some("1000".into()));
        assert_eq!(ok(Some(1000), Some(50), "x"), Some("1000:50".into()));
        assert_eq!(ok(None, Some(50), "www"), Some("www:50".into()));
        assert_eq!(ok(None, None, "www"), Some("www".into()));
        assert!(user_string(None, Some(50), "").is_err(), "a group alone");
        assert!(user_string(Some(-1), None, "").is_err());
        assert!(user_string(Some(1), Some(-1), "").is_err());
    }

    fn pod_with_userns(
        mode: cri::NamespaceMode,
        uids: &[(u32, u32, u32)],
    ) -> cri::PodSandboxConfig {
        let mappings: Vec<cri::IdMapping> = uids
            .iter()
            .map(|&(container_id, host_id, length)| cri::IdMapping {
                container_id,
                host_id,
                length,
            })
            .collect();
        cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        userns_options: Some(cri::UserNamespace {
                            mode: mode as i32,
                            uids: mappings.clone(),
                            gids: mappings,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pods_user_namespace_is_one_mapping_of_root_to_an_unprivileged_id() {
        let ns = pod_user_namespace(&pod_with_userns(
            cri::NamespaceMode::Pod,
            &[(0, 100000, 65536)],
        ))
        .unwrap()
        .unwrap();
        assert_eq!(ns.uid_mappings[0].host_id(), 100000);
        assert_eq!(ns.gid_mappings[0].size(), 65536);
        assert!(ns.path.is_none());
        assert!(
            pod_user_namespace(&pod_with_userns(cri::NamespaceMode::Node, &[]))
                .unwrap()
                .is_none()
        );
        assert!(pod_user_namespace(&cri::PodSandboxConfig::default())
            .unwrap()
            .is_none());
        for (mode, uids) in [
            (cri::NamespaceMode::Pod, vec![]),
            (
                cri::NamespaceMode::Pod,
                vec![(0, 100000, 10), (10, 200000, 10)],
            ),
            (cri::NamespaceMode::Pod, vec![(1, 100000, 10)]),
            (cri::NamespaceMode::Pod, vec![(0, 0, 65536)]),
            (cri::NamespaceMode::Pod, vec![(0, 100000, 0)]),
            (cri::NamespaceMode::Container, vec![(0, 100000, 10)]),
            (cri::NamespaceMode::Target, vec![(0, 100000, 10)]),
        ] {
            let err = pod_user_namespace(&pod_with_userns(mode, &uids)).unwrap_err();
            assert_eq!(
                err.kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{mode:?} {uids:?}"
            );
        }
    }

    #[test]
    fn cgroup_paths_follow_the_parent_and_the_driver() {
        let mut host = Host {
            systemd_cgroup: false,
            restrict_oom_score_adj: false,
            seccomp_root: PathBuf::new(),
            recursive_read_only: true,
            cdi_spec_dirs: Vec::new(),
            id_mapped_mounts: true,
        };
        assert_eq!(host.cgroups_path("", "abc").unwrap(), "/berth/k8s.io/abc");
        assert_eq!(
            host.cgroups_path("/kubepods/pod1/", "abc").unwrap(),
            "/kubepods/pod1/abc"
        );
        for bad in ["kubepods", "/kubepods/../../x", "/a b"] {
            let err = host.cgroups_path(bad, "abc").unwrap_err();
            assert_eq!(
                err.kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
        assert_eq!(host.cgroup_driver(), berth_oci::CgroupDriver::Cgroupfs);
        host.systemd_cgroup = true;
        assert_eq!(
            host.cgroups_path("kubepods-pod1.slice", "abc").unwrap(),
            "kubepods-pod1.slice:cri-berth:abc"
        );
        assert_eq!(
            host.cgroups_path("/kubepods.slice/kubepods-pod1.slice", "abc")
                .unwrap(),
            "kubepods-pod1.slice:cri-berth:abc"
        );
        assert!(host.cgroups_path("kubepods-pod1", "abc").is_err());
        // So that the container record asks runc for its systemd driver.
        assert_eq!(host.cgroup_driver(), berth_oci::CgroupDriver::Systemd);
    }

    #[test]
    fn a_relative_host_path_is_refused() {
        let mount = cri::Mount {
            container_path: "/data".into(),
            host_path: "relative".into(),
            ..Default::default()
        };
        assert!(bind_mount(&mount, true).is_err());
    }

    #[test]
    fn recursive_read_only_needs_read_only_private_and_runtime_support() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mount = |readonly, propagation: cri::MountPropagation| cri::Mount {
            container_path: "/data".into(),
            host_path: dir.path().display().to_string(),
            readonly,
            recursive_read_only: true,
            propagation: propagation as i32,
            ..Default::default()
        };
        let private = cri::MountPropagation::PropagationPrivate;
        let ok = bind_mount(&mount(true, private), true).unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.options.contains(&"rro".to_string()), "{:?}", ok.options);
        assert!(bind_mount(&mount(false, private), true).is_err());
        assert!(bind_mount(
            &mount(true, cri::MountPropagation::PropagationHostToContainer),
            true
        )
        .is_err());
        assert!(bind_mount(
            &mount(true, cri::MountPropagation::PropagationBidirectional),
            true
        )
        .is_err());
        assert!(
            bind_mount(&mount(true, private), false).is_err(),
            "no runtime support"
        );
    }

    #[test]
    fn image_volumes_skip_mounted_paths_and_clean_the_rest() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mounts = vec![cri::Mount {
            container_path: "/data/".into(),
            host_path: "/srv".into(),
            ..Default::default()
        }];
        let volumes: Vec<String> = [
            "/data",
            "/../../../../etc",
            "/cache",
            "/cache/.",
            "/",
            "rel/x",
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        let (binds, copies) =
            image_volumes(&volumes, &mounts, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let at: Vec<&str> = binds.iter().map(|b| b.destination.as_str()).collect();
        assert_eq!(at, ["/etc", "/cache", "/rel/x"]);
        for (bind, copy) in binds.iter().zip(&copies) {
            assert_eq!(bind.source, copy.host_dir.display().to_string());
            assert_eq!(bind.destination, copy.path_in_image);
            assert!(copy.host_dir.starts_with(dir.path().join("volumes")));
            assert!(copy.host_dir.is_dir());
        }
    }
}
