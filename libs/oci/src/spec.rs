//! Putting the spec together.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{
    Linux, LinuxNamespace, LinuxNamespaceType, PosixRlimitBuilder, PosixRlimitType, Process, Root,
    Spec,
};

use crate::args::{process_args, process_cwd, process_env};
use crate::capabilities::{effective_set, linux_capabilities};
use crate::devices::linux_devices;
use crate::error::{OciError, Result};
use crate::image::ImageDefaults;
use crate::mounts::container_mounts;
use crate::options::{CgroupNamespace, NetworkMode, Seccomp, SpecOptions};
use crate::resources::{cgroups_path, linux_resources};
use crate::rootfs_files::RootfsFiles;
use crate::seccomp::profile_for;
use crate::user::resolve_user;

/// The longest hostname derived from the id (a DNS label).
const MAX_DEFAULT_HOSTNAME: usize = 63;

/// The longest hostname the kernel takes (`HOST_NAME_MAX`).
const MAX_HOSTNAME: usize = 64;

/// containerd's masked paths: host information a container has no
/// business reading.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// containerd's read-only paths: kernel knobs under /proc.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The runtime spec of a container: the image's defaults with the caller's
/// options applied, under containerd's security defaults. `files` gives the
/// image's `/etc/passwd` and `/etc/group` for user and group names.
///
/// Not done (gaps): AppArmor (the host may have no profile loaded), SELinux.
pub fn build_spec(
    image: &ImageDefaults,
    options: &SpecOptions,
    files: &dyn RootfsFiles,
) -> Result<Spec> {
    let cgroups_path = cgroups_path(options)?;
    let host_network = options.network == NetworkMode::Host;
    let hostname = hostname(options, host_network)?;
    let caps = effective_set(options)?;
    let args = process_args(image, options)?;
    let env = process_env(image, options)?;
    let cwd = process_cwd(image, options)?;
    let user_string = options.user.as_deref().unwrap_or(&image.user);
    let user = resolve_user(user_string, files)?;
    let mut mounts = container_mounts(&options.mounts, options.privileged, host_network)?;
    if let Some(userns) = &options.user_namespace {
        check_user_namespace(userns)?;
        if host_network {
            // sysfs can be mounted only by the user namespace that owns the
            // network namespace: the host's /sys is bound instead.
            sysfs_from_host(&mut mounts);
        }
    }
    let resources = linux_resources(options)?;
    let annotations = annotations(options)?;

    let rlimit = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(1024u64)
        .soft(1024u64)
        .build()?;

    let mut process = Process::default();
    process.set_terminal(Some(options.terminal));
    process.set_console_size(None);
    process.set_user(user);
    process.set_args(Some(args));
    process.set_command_line(None);
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_capabilities(Some(linux_capabilities(&caps)));
    process.set_rlimits(Some(vec![rlimit]));
    process.set_no_new_privileges(Some(options.no_new_privileges));
    // No AppArmor profile: Debian's kernel may not have it loaded.
    process.set_apparmor_profile(None);
    process.set_oom_score_adj(None);
    process.set_selinux_label(None);
    process.set_io_priority(None);
    process.set_scheduler(None);
    process.set_exec_cpu_affinity(None);

    let mut root = Root::default();
    root.set_path("rootfs".into());
    root.set_readonly(Some(options.read_only_rootfs));

    let seccomp = match &options.seccomp {
        Seccomp::Default if options.privileged => None,
        Seccomp::Default => Some(profile_for(&caps)),
        Seccomp::Unconfined => None,
        Seccomp::Profile(profile) => Some(profile.clone()),
    };

    let mut linux = Linux::default();
    linux.set_net_devices(None);
    let cgroupns = options
        .cgroupns
        .unwrap_or_else(CgroupNamespace::host_default);
    let mut namespaces = namespaces(host_network, cgroupns);
    match &options.user_namespace {
        Some(userns) => {
            linux.set_uid_mappings(Some(userns.uid_mappings.clone()));
            linux.set_gid_mappings(Some(userns.gid_mappings.clone()));
            let mut ns = LinuxNamespace::default();
            ns.set_typ(LinuxNamespaceType::User);
            ns.set_path(userns.path.as_ref().map(Into::into));
            // First: the others are made (or joined) from inside it.
            namespaces.insert(0, ns);
        }
        None => {
            linux.set_uid_mappings(None);
            linux.set_gid_mappings(None);
        }
    }
    linux.set_sysctl(None);
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(Some(cgroups_path.into()));
    linux.set_namespaces(Some(namespaces));
    linux.set_devices(linux_devices(&options.devices)?);
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(None);
    let strings = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    if options.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    } else {
        linux.set_masked_paths(Some(strings(MASKED_PATHS)));
        linux.set_readonly_paths(Some(strings(READONLY_PATHS)));
    }
    linux.set_mount_label(None);
    linux.set_intel_rdt(None);
    linux.set_memory_policy(None);
    linux.set_personality(None);
    linux.set_time_offsets(None);

    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string());
    spec.set_root(Some(root));
    spec.set_mounts(Some(mounts));
    spec.set_process(Some(process));
    spec.set_hostname(hostname);
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(annotations);
    spec.set_linux(Some(linux));
    spec.set_solaris(None);
    spec.set_windows(None);
    spec.set_vm(None);
    spec.set_zos(None);
    for hook in &options.hooks {
        (hook.0)(&mut spec)?;
    }
    Ok(spec)
}

/// A user namespace runc can make: one uid and one gid mapping list, each
/// mapping the container's root, with non-empty ranges that stay within
/// 32-bit ids and do not map the container's root to the host's (a user
/// namespace whose root is the host's root protects nothing).
pub fn check_user_namespace(userns: &crate::UserNamespace) -> Result<()> {
    for (what, mappings) in [("uid", &userns.uid_mappings), ("gid", &userns.gid_mappings)] {
        if mappings.is_empty() {
            return Err(OciError::invalid(format!(
                "a user namespace needs a {what} mapping"
            )));
        }
        let mut root = None;
        for m in mappings {
            let (inside, outside, size) = (m.container_id(), m.host_id(), m.size());
            let end = |start: u32| u64::from(start) + u64::from(size);
            if size == 0 || end(inside) > u64::from(u32::MAX) || end(outside) > u64::from(u32::MAX)
            {
                return Err(OciError::invalid(format!(
                    "the {what} mapping {inside}:{outside}:{size} is empty or runs past the largest id"
                )));
            }
            if inside == 0 {
                root = Some(outside);
            }
        }
        match root {
            None => {
                return Err(OciError::invalid(format!(
                    "the {what} mapping does not map the container's root (id 0)"
                )))
            }
            Some(0) => {
                return Err(OciError::invalid(format!(
                    "the {what} mapping makes the container's root the host's root"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Replaces the sysfs mount at /sys with a read-only recursive bind of
/// the host's.
fn sysfs_from_host(mounts: &mut [oci_spec::runtime::Mount]) {
    for mount in mounts.iter_mut() {
        if mount.destination() == Path::new("/sys") && mount.typ().as_deref() == Some("sysfs") {
            mount.set_typ(Some("bind".to_string()));
            mount.set_source(Some("/sys".into()));
            mount.set_options(Some(
                ["rbind", "ro", "nosuid", "nodev", "noexec"]
                    .map(String::from)
                    .to_vec(),
            ));
        }
    }
}

/// pid, ipc, uts, mount and network namespaces of its own, and a cgroup
/// namespace when `cgroupns` says so; the host network shares the host's
/// network and UTS namespaces (as `nerdctl --net host` does).
fn namespaces(host_network: bool, cgroupns: CgroupNamespace) -> Vec<LinuxNamespace> {
    let mut types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ];
    if cgroupns == CgroupNamespace::Private {
        types.push(LinuxNamespaceType::Cgroup);
    }
    if host_network {
        types.retain(|t| !matches!(t, LinuxNamespaceType::Network | LinuxNamespaceType::Uts));
    }
    types
        .into_iter()
        .map(|t| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(t);
            ns.set_path(None);
            ns
        })
        .collect()
}

/// The caller's hostname, else the id cut to a DNS label; none on the
/// host's UTS namespace.
fn hostname(options: &SpecOptions, host_network: bool) -> Result<Option<String>> {
    match (&options.hostname, host_network) {
        (Some(_), true) => Err(OciError::invalid(
            "a hostname cannot be set with the host network (it shares the host's)",
        )),
        (None, true) => Ok(None),
        (Some(name), false) => {
            let ok = !name.is_empty()
                && name.len() <= MAX_HOSTNAME
                && !name.starts_with('-')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if ok {
                Ok(Some(name.clone()))
            } else {
                Err(OciError::invalid(format!("hostname {name:?} is not valid")))
            }
        }
        // The id is checked by cgroups_path: ASCII, so any cut is on a
        // character boundary.
        (None, false) => Ok(Some(
            options.id.chars().take(MAX_DEFAULT_HOSTNAME).collect(),
        )),
    }
}

fn annotations(options: &SpecOptions) -> Result<Option<HashMap<String, String>>> {
    if options.annotations.is_empty() {
        return Ok(None);
    }
    if options.annotations.keys().any(|k| k.is_empty()) {
        return Err(OciError::invalid("an annotation has an empty key"));
    }
    Ok(Some(
        options
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rootfs_files::{HostRootfs, NoRootfsFiles};
    use crate::seccomp::tests::{verdict, Verdict};
    use crate::MountOption;
    use oci_spec::runtime::Capability;
    use std::path::Path;

    fn image() -> ImageDefaults {
        ImageDefaults {
            env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            working_dir: "/srv".into(),
            user: String::new(),
            stop_signal: Some("SIGQUIT".into()),
            volumes: Vec::new(),
        }
    }

    fn build(options: &SpecOptions) -> Spec {
        build_spec(&image(), options, &NoRootfsFiles).unwrap()
    }

    fn process(spec: &Spec) -> &Process {
        spec.process().as_ref().unwrap()
    }

    fn linux(spec: &Spec) -> &Linux {
        spec.linux().as_ref().unwrap()
    }

    fn namespace_types(spec: &Spec) -> Vec<LinuxNamespaceType> {
        linux(spec)
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    fn mapping(inside: u32, outside: u32, size: u32) -> oci_spec::runtime::LinuxIdMapping {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(inside)
            .host_id(outside)
            .size(size)
            .build()
            .unwrap()
    }

    fn userns(path: Option<&str>, root: u32) -> crate::UserNamespace {
        crate::UserNamespace {
            path: path.map(str::to_string),
            uid_mappings: vec![mapping(0, root, 65536)],
            gid_mappings: vec![mapping(0, root, 65536)],
        }
    }

    #[test]
    fn a_user_namespace_comes_first_with_its_mappings() {
        let mut o = SpecOptions::new("default", "c1");
        o.user_namespace = Some(userns(Some("/run/pod/userns"), 100000));
        let spec = build(&o);
        let linux = spec.linux().clone().unwrap();
        let first = &linux.namespaces().clone().unwrap()[0];
        assert_eq!(first.typ(), LinuxNamespaceType::User);
        assert_eq!(first.path().as_deref(), Some(Path::new("/run/pod/userns")));
        assert_eq!(linux.uid_mappings().clone().unwrap()[0].host_id(), 100000);
        assert_eq!(linux.gid_mappings().clone().unwrap()[0].size(), 65536);
        // Its own network namespace: sysfs is mounted as usual.
        let sys = spec.mounts().clone().unwrap();
        let sys = sys
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("sysfs"));
        // Without one, no user namespace and no mappings.
        let plain = build(&SpecOptions::new("default", "c1"));
        assert!(!namespace_types(&plain).contains(&LinuxNamespaceType::User));
        assert!(plain.linux().clone().unwrap().uid_mappings().is_none());
    }

    #[test]
    fn with_the_host_network_a_user_namespace_binds_the_hosts_sys() {
        let mut o = SpecOptions::new("default", "c1");
        o.network = NetworkMode::Host;
        o.user_namespace = Some(userns(None, 100000));
        let spec = build(&o);
        let mounts = spec.mounts().clone().unwrap();
        let sys = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("bind"));
        assert_eq!(sys.source().as_deref(), Some(Path::new("/sys")));
        assert!(sys.options().clone().unwrap().contains(&"ro".to_string()));
        let first = &spec.linux().clone().unwrap().namespaces().clone().unwrap()[0];
        assert_eq!(first.typ(), LinuxNamespaceType::User);
        assert!(first.path().is_none());
    }

    #[test]
    fn user_namespaces_runc_cannot_make_safely_are_refused() {
        let img = ImageDefaults::default();
        let bad = [
            userns(None, 0),
            crate::UserNamespace {
                path: None,
                uid_mappings: vec![mapping(1, 100000, 10)],
                gid_mappings: vec![mapping(0, 100000, 10)],
            },
            crate::UserNamespace {
                path: None,
                uid_mappings: vec![mapping(0, 100000, 10)],
                gid_mappings: vec![],
            },
            crate::UserNamespace {
                path: None,
                uid_mappings: vec![mapping(0, 100000, 0)],
                gid_mappings: vec![mapping(0, 100000, 10)],
            },
            crate::UserNamespace {
                path: None,
                uid_mappings: vec![mapping(0, u32::MAX - 5, 10)],
                gid_mappings: vec![mapping(0, 100000, 10)],
            },
        ];
        for userns in bad {
            let mut o = SpecOptions::new("default", "c1");
            o.user_namespace = Some(userns.clone());
            let err = build_spec(&img, &o, &NoRootfsFiles).unwrap_err();
            assert!(
                matches!(err, OciError::InvalidArgument(_)),
                "{userns:?}: {err}"
            );
        }
    }

    #[test]
    fn defaults() {
        let spec = build(&SpecOptions::new("default", "web"));
        assert_eq!(spec.version(), oci_spec::runtime::VERSION);
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("rootfs"));
        assert_eq!(root.readonly(), Some(false));
        assert_eq!(spec.hostname().as_deref(), Some("web"));
        assert!(spec.annotations().is_none());

        let p = process(&spec);
        assert_eq!(
            p.args().as_ref().unwrap(),
            &["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
        );
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
        );
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(p.apparmor_profile().is_none());
        assert!(p.oom_score_adj().is_none());
        assert_eq!(p.user().uid(), 0);
        assert_eq!(p.user().gid(), 0);
        assert!(p.user().umask().is_none());
        let rlimits = p.rlimits().as_ref().unwrap();
        assert_eq!(rlimits.len(), 1);
        assert_eq!(rlimits[0].typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((rlimits[0].hard(), rlimits[0].soft()), (1024, 1024));

        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().as_ref().unwrap().is_empty());

        let l = linux(&spec);
        let mut expected = vec![
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network,
        ];
        if CgroupNamespace::host_default() == CgroupNamespace::Private {
            expected.push(LinuxNamespaceType::Cgroup);
        }
        assert_eq!(namespace_types(&spec), expected);
        assert_eq!(l.masked_paths().as_ref().unwrap().len(), 11);
        assert!(l
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/sys/devices/virtual/powercap".to_string()));
        assert_eq!(l.readonly_paths().as_ref().unwrap().len(), 5);
        assert_eq!(
            l.cgroups_path().as_deref(),
            Some(Path::new("/berth/default/web"))
        );
        assert!(l.seccomp().is_some());
        assert!(l.devices().is_none());
        assert_eq!(spec.mounts().as_ref().unwrap().len(), 7);
    }

    #[test]
    fn options_are_applied() {
        let mut o = SpecOptions::new("ns1", "c1");
        o.args = vec!["nginx".into(), "-t".into()];
        o.env = vec!["LANG=en_US.UTF-8".into()];
        o.cwd = Some("/tmp".into());
        o.user = Some("1000:1000".into());
        o.hostname = Some("box".into());
        o.terminal = true;
        o.read_only_rootfs = true;
        o.no_new_privileges = false;
        o.annotations.insert("org.example/a".into(), "b".into());
        let spec = build(&o);
        let p = process(&spec);
        assert_eq!(
            p.args().as_ref().unwrap(),
            &["/docker-entrypoint.sh", "nginx", "-t"]
        );
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/usr/bin:/bin", "LANG=en_US.UTF-8", "TERM=xterm"]
        );
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(spec.hostname().as_deref(), Some("box"));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(spec.annotations().as_ref().unwrap()["org.example/a"], "b");
    }

    #[test]
    fn image_user_by_name_from_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "nginx:x:101:101:::\n").unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "nginx:x:101:\nweb:x:500:nginx\n",
        )
        .unwrap();
        let img = ImageDefaults {
            user: "nginx".into(),
            ..image()
        };
        let o = SpecOptions::new("default", "c1");
        let spec = build_spec(&img, &o, &HostRootfs::new(dir.path())).unwrap();
        let user = process(&spec).user();
        assert_eq!((user.uid(), user.gid()), (101, 101));
        assert_eq!(user.additional_gids().as_ref().unwrap(), &[101, 500]);
        // The caller's user wins over the image's.
        let mut o = SpecOptions::new("default", "c1");
        o.user = Some("0".into());
        let spec = build_spec(&img, &o, &HostRootfs::new(dir.path())).unwrap();
        assert_eq!(process(&spec).user().uid(), 0);
        // Without files, the name cannot be resolved.
        let err = build_spec(&img, &SpecOptions::new("default", "c1"), &NoRootfsFiles).unwrap_err();
        assert!(matches!(err, OciError::NotFound(_)));
    }

    #[test]
    fn long_ids_make_63_byte_hostnames() {
        let id = "a".repeat(100);
        let spec = build(&SpecOptions::new("default", &id));
        assert_eq!(spec.hostname().as_deref(), Some(&id[..63]));
    }

    #[test]
    fn bad_hostnames_are_refused() {
        for bad in ["", "a b", "-x", "a/b", &"h".repeat(65)] {
            let mut o = SpecOptions::new("default", "c1");
            o.hostname = Some(bad.to_string());
            assert!(build_spec(&image(), &o, &NoRootfsFiles).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_ids_and_annotations_are_refused() {
        let o = SpecOptions::new("default", "../../etc");
        assert!(matches!(
            build_spec(&image(), &o, &NoRootfsFiles),
            Err(OciError::InvalidArgument(_))
        ));
        let mut o = SpecOptions::new("default", "c1");
        o.annotations.insert(String::new(), "v".into());
        assert!(build_spec(&image(), &o, &NoRootfsFiles).is_err());
    }

    #[test]
    fn cgroup_namespace_as_asked_else_as_nerdctl_chooses() {
        let mut o = SpecOptions::new("default", "c1");
        o.cgroupns = Some(CgroupNamespace::Private);
        assert!(namespace_types(&build(&o)).contains(&LinuxNamespaceType::Cgroup));
        o.cgroupns = Some(CgroupNamespace::Host);
        assert!(!namespace_types(&build(&o)).contains(&LinuxNamespaceType::Cgroup));
        // The default follows the host: private only where /sys/fs/cgroup
        // is the unified (v2) hierarchy.
        let unified = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "));
        let expected = if unified {
            CgroupNamespace::Private
        } else {
            CgroupNamespace::Host
        };
        assert_eq!(CgroupNamespace::host_default(), expected);
        o.cgroupns = None;
        assert_eq!(
            namespace_types(&build(&o)).contains(&LinuxNamespaceType::Cgroup),
            unified
        );
        assert_eq!(
            CgroupNamespace::parse("private"),
            Ok(CgroupNamespace::Private)
        );
        assert_eq!(CgroupNamespace::parse("host"), Ok(CgroupNamespace::Host));
        assert!(CgroupNamespace::parse("Host").is_err());
    }

    #[test]
    fn host_network() {
        let mut o = SpecOptions::new("default", "c1");
        o.network = NetworkMode::Host;
        let spec = build(&o);
        let types = namespace_types(&spec);
        assert!(!types.contains(&LinuxNamespaceType::Network));
        assert!(!types.contains(&LinuxNamespaceType::Uts));
        assert!(types.contains(&LinuxNamespaceType::Pid));
        assert!(spec.hostname().is_none());
        let mounts = spec.mounts().as_ref().unwrap();
        let has = |p: &str| mounts.iter().any(|m| m.destination() == Path::new(p));
        assert_eq!(
            has("/etc/resolv.conf"),
            Path::new("/etc/resolv.conf").exists()
        );
        assert_eq!(has("/etc/hosts"), Path::new("/etc/hosts").exists());
        o.hostname = Some("x".into());
        assert!(build_spec(&image(), &o, &NoRootfsFiles).is_err());
    }

    #[test]
    fn privileged() {
        let mut o = SpecOptions::new("default", "c1");
        o.privileged = true;
        let spec = build(&o);
        let caps = process(&spec).capabilities().as_ref().unwrap();
        assert_eq!(
            caps.bounding().as_ref().unwrap(),
            &crate::capabilities::all_held()
        );
        assert_eq!(
            caps.effective().as_ref().unwrap(),
            &crate::capabilities::all_held()
        );
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        let l = linux(&spec);
        assert!(l.seccomp().is_none());
        assert!(l.masked_paths().is_none());
        assert!(l.readonly_paths().is_none());
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
        assert_eq!(process(&spec).no_new_privileges(), Some(true));
        // Every device allowed (the caller lists the host's nodes).
        let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
        assert_eq!(rules[0].typ(), Some(oci_spec::runtime::LinuxDeviceType::A));
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
    }

    #[test]
    fn a_given_device_is_listed_and_allowed_with_its_permissions() {
        let mut o = SpecOptions::new("default", "c1");
        o.devices = vec![crate::Device {
            path: "/dev/mytun".into(),
            kind: crate::DeviceKind::Char,
            major: 10,
            minor: 200,
            file_mode: 0o600,
            uid: 0,
            gid: 0,
            permissions: "rw".into(),
        }];
        let spec = build(&o);
        let l = linux(&spec);
        let devices = l.devices().clone().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].path(), Path::new("/dev/mytun"));
        assert_eq!((devices[0].major(), devices[0].minor()), (10, 200));
        assert_eq!(devices[0].file_mode(), Some(0o600));
        let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
        // The ten default rules, then this device's.
        assert_eq!(rules.len(), 11);
        let last = &rules[10];
        assert!(last.allow());
        assert_eq!(last.typ(), Some(oci_spec::runtime::LinuxDeviceType::C));
        assert_eq!((last.major(), last.minor()), (Some(10), Some(200)));
        assert_eq!(last.access().as_deref(), Some("rw"));
        assert!(!rules[0].allow(), "still deny-all first");

        // Without devices the spec lists none.
        assert!(linux(&build(&SpecOptions::new("default", "c2")))
            .devices()
            .is_none());
    }

    #[test]
    fn seccomp_choices() {
        let mut o = SpecOptions::new("default", "c1");
        let p = linux(&build(&o)).seccomp().clone().unwrap();
        assert_eq!(verdict(&p, "mount"), Verdict::Denied);
        o.cap_add = vec!["SYS_ADMIN".into()];
        let spec = build(&o);
        let caps = process(&spec).capabilities().as_ref().unwrap();
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        let p = linux(&spec).seccomp().clone().unwrap();
        assert_eq!(verdict(&p, "mount"), Verdict::Allowed);
        assert_eq!(verdict(&p, "clone"), Verdict::Allowed);

        o.seccomp = Seccomp::Unconfined;
        assert!(linux(&build(&o)).seccomp().is_none());

        let Seccomp::Profile(custom) =
            Seccomp::parse_profile_json(br#"{"defaultAction": "SCMP_ACT_LOG", "syscalls": []}"#)
                .unwrap()
        else {
            panic!("not a profile")
        };
        o.seccomp = Seccomp::Profile(custom.clone());
        assert_eq!(linux(&build(&o)).seccomp().as_ref(), Some(&custom));
        o.privileged = true;
        assert_eq!(linux(&build(&o)).seccomp().as_ref(), Some(&custom));
    }

    #[test]
    fn resources_and_mounts_reach_the_spec() {
        let mut o = SpecOptions::new("default", "c1");
        o.limits.memory_bytes = Some(64 << 20);
        o.limits.cpus = Some(0.5);
        o.limits.pids_limit = Some(64);
        o.cgroup = crate::CgroupDriver::Systemd;
        o.mounts = vec![MountOption::parse_volume_flag("/srv/data:/data:ro").unwrap()];
        let spec = build(&o);
        let l = linux(&spec);
        let r = l.resources().as_ref().unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.pids().unwrap().limit(), 64);
        assert_eq!(
            l.cgroups_path().as_deref(),
            Some(Path::new("berth.slice:berth-default:c1"))
        );
        let data = spec.mounts().as_ref().unwrap().last().unwrap();
        assert_eq!(data.destination(), Path::new("/data"));
        o.limits.memory_bytes = Some(1);
        assert!(build_spec(&image(), &o, &NoRootfsFiles).is_err());
    }

    #[test]
    fn no_command_is_an_error() {
        let img = ImageDefaults::default();
        let err = build_spec(&img, &SpecOptions::new("default", "c1"), &NoRootfsFiles).unwrap_err();
        assert!(matches!(err, OciError::InvalidArgument(m) if m.contains("no command")));
    }

    #[test]
    fn json_round_trips_with_oci_keys() {
        let mut o = SpecOptions::new("default", "c1");
        o.limits.memory_bytes = Some(64 << 20);
        o.limits.cpus = Some(2.0);
        o.limits.pids_limit = Some(10);
        o.terminal = true;
        o.annotations.insert("a".into(), "b".into());
        o.mounts = vec![MountOption::parse_mount_flag("type=tmpfs,dst=/t,tmpfs-size=1m").unwrap()];
        let spec = build(&o);
        let json = serde_json::to_string_pretty(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        for key in [
            "\"ociVersion\"",
            "\"noNewPrivileges\"",
            "\"cgroupsPath\"",
            "\"maskedPaths\"",
            "\"readonlyPaths\"",
            "\"defaultAction\"",
            "\"defaultErrnoRet\"",
            "\"rlimits\"",
            "\"RLIMIT_NOFILE\"",
            "\"SCMP_ACT_ERRNO\"",
            "\"SCMP_CMP_MASKED_EQ\"",
            "\"SCMP_ARCH_",
            "\"CAP_CHOWN\"",
            "\"inheritable\"",
            "\"hostname\"",
            "\"annotations\"",
        ] {
            assert!(json.contains(key), "{key} missing");
        }
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["root"]["path"], "rootfs");
        assert_eq!(value["process"]["user"]["uid"], 0);
        assert_eq!(value["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(value["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(value["linux"]["resources"]["pids"]["limit"], 10);
        assert_eq!(value["linux"]["resources"]["devices"][0]["allow"], false);
        assert_eq!(value["linux"]["resources"]["devices"][1]["type"], "c");
        assert_eq!(value["linux"]["namespaces"][0]["type"], "pid");
        assert_eq!(value["mounts"][0]["type"], "proc");
        // No snake_case leaks.
        for key in [
            "no_new_privileges",
            "cgroups_path",
            "masked_paths",
            "default_action",
        ] {
            assert!(!json.contains(key), "{key}");
        }
    }
}
