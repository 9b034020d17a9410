//! The container's cgroup: its path and its limits.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxPids, LinuxResources, Spec};

use crate::error::{OciError, Result};
use crate::options::{CgroupDriver, SpecOptions};

/// docker's smallest memory limit: below it a container cannot even start.
pub(crate) const MIN_MEMORY_BYTES: i64 = 6 << 20;

/// The CFS period, in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// The kernel's smallest CFS quota (1 ms), so `cpus` is at least 0.01.
const MIN_CPU_QUOTA: i64 = 1_000;

/// More CPUs than any machine has; keeps the quota far from overflowing.
const MAX_CPUS: f64 = 65_536.0;

/// Checks a namespace or container id used in the cgroup path: letters,
/// digits, `.`, `_` and `-`, not `.` or `..`, at most 255 bytes.
pub(crate) fn check_path_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(OciError::invalid(format!(
            "{what} {name:?} may only have letters, digits, '.', '_' and '-'"
        )))
    }
}

/// `/berth/<namespace>/<id>` for cgroupfs; `berth.slice:berth-<namespace>:<id>`
/// (runc's `slice:prefix:name`) for systemd. Under a parent:
/// `<parent>/<id>`, or `<parent slice>:berth-<namespace>:<id>`.
pub(crate) fn cgroups_path(options: &SpecOptions) -> Result<String> {
    check_path_name("namespace", &options.namespace)?;
    check_path_name("container id", &options.id)?;
    let (ns, id) = (&options.namespace, &options.id);
    Ok(match (&options.cgroup, &options.cgroup_parent) {
        (CgroupDriver::Cgroupfs, None) => format!("/berth/{ns}/{id}"),
        (CgroupDriver::Systemd, None) => format!("berth.slice:berth-{ns}:{id}"),
        (driver, Some(parent)) => {
            let parent = check_cgroup_parent(driver, parent)?;
            match driver {
                CgroupDriver::Cgroupfs => format!("{parent}/{id}"),
                CgroupDriver::Systemd => format!("{parent}:berth-{ns}:{id}"),
            }
        }
    })
}

/// Checks a cgroup parent and returns it as used in a path: for cgroupfs
/// an absolute path of names as [`check_path_name`] allows (a trailing
/// `/` dropped; `/` alone is the hierarchy's root), for systemd one
/// slice's name (`NAME.slice`, the same letters).
pub fn check_cgroup_parent<'a>(driver: &CgroupDriver, parent: &'a str) -> Result<&'a str> {
    let bad = |why: &str| {
        Err(OciError::invalid(format!(
            "cgroup parent {parent:?}: {why}"
        )))
    };
    if parent.len() > 4096 {
        return bad("too long");
    }
    match driver {
        CgroupDriver::Cgroupfs => {
            let Some(rest) = parent.strip_prefix('/') else {
                return bad("not an absolute path");
            };
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            if !rest.is_empty() {
                for name in rest.split('/') {
                    if check_path_name("name", name).is_err() {
                        return bad("a path of names with letters, digits, '.', '_' and '-'");
                    }
                }
            }
            Ok(parent.strip_suffix('/').unwrap_or(parent))
        }
        CgroupDriver::Systemd => {
            let valid = parent
                .strip_suffix(".slice")
                .is_some_and(|name| !name.is_empty() && check_path_name("slice", parent).is_ok());
            if valid {
                Ok(parent)
            } else {
                bad("not a slice's name (NAME.slice, letters, digits, '.', '_' and '-')")
            }
        }
    }
}

/// The device rules, memory, CPU and pids limits.
pub(crate) fn linux_resources(options: &SpecOptions) -> Result<LinuxResources> {
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(device_rules(options)));
    apply_limits(&mut resources, &options.limits)?;
    Ok(resources)
}

/// The limits `berth run` takes and `berth update` changes: memory, CPUs
/// and processes. `None` leaves a limit as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// At least 6 MiB.
    pub memory_bytes: Option<i64>,
    /// CPUs, as a CFS quota over a 100 ms period: 0.01 and up.
    pub cpus: Option<f64>,
    /// At least 1.
    pub pids_limit: Option<i64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// Sets each limit `limits` has in `resources`, keeping what else is
/// there (CPU shares beside a quota, a swap limit beside memory); checks
/// them all before changing anything.
fn apply_limits(resources: &mut LinuxResources, limits: &Limits) -> Result<()> {
    if let Some(limit) = limits.memory_bytes {
        if limit < MIN_MEMORY_BYTES {
            return Err(OciError::invalid(format!(
                "memory limit {limit} is below the minimum of {MIN_MEMORY_BYTES} bytes (6 MiB)"
            )));
        }
    }
    let quota = limits.cpus.map(cpu_quota).transpose()?;
    if let Some(limit) = limits.pids_limit {
        if limit <= 0 {
            return Err(OciError::invalid(format!(
                "pids limit {limit} must be greater than 0"
            )));
        }
    }
    if let Some(limit) = limits.memory_bytes {
        let mut memory = (*resources.memory()).unwrap_or_default();
        memory.set_limit(Some(limit));
        resources.set_memory(Some(memory));
    }
    if let Some(quota) = quota {
        let mut cpu = resources.cpu().clone().unwrap_or_default();
        cpu.set_quota(Some(quota));
        cpu.set_period(Some(CPU_PERIOD));
        resources.set_cpu(Some(cpu));
    }
    if let Some(limit) = limits.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(limit);
        resources.set_pids(Some(pids));
    }
    Ok(())
}

/// `berth update`: puts `limits` into a container's `spec` (its record,
/// so that its next task has them too) and returns the resources to give
/// its running task: memory, CPU and pids as the spec now has them (the
/// device rules stay as the task has them).
pub fn update_limits(spec: &mut Spec, limits: &Limits) -> Result<LinuxResources> {
    let mut linux = spec
        .linux()
        .clone()
        .ok_or_else(|| OciError::invalid("the container's spec has no linux section"))?;
    let mut resources = linux.resources().clone().unwrap_or_default();
    apply_limits(&mut resources, limits)?;
    let mut for_task = LinuxResources::default();
    for_task.set_memory(*resources.memory());
    for_task.set_cpu(resources.cpu().clone());
    for_task.set_pids(*resources.pids());
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    Ok(for_task)
}

/// The CFS quota for `cpus` CPUs over [`CPU_PERIOD`].
fn cpu_quota(cpus: f64) -> Result<i64> {
    let bad = || {
        OciError::invalid(format!(
            "cpus {cpus} must be a number from 0.01 to {MAX_CPUS}"
        ))
    };
    if !cpus.is_finite() || cpus <= 0.0 || cpus > MAX_CPUS {
        return Err(bad());
    }
    // In range by the checks above: at most 65536 * 100000.
    #[allow(clippy::cast_possible_truncation)]
    let quota = (cpus * CPU_PERIOD as f64).round() as i64;
    if quota < MIN_CPU_QUOTA {
        return Err(bad());
    }
    Ok(quota)
}

/// The device cgroup rules: for a privileged container every device;
/// else containerd's defaults and one rule per device the container was
/// given, with the permissions asked for it.
fn device_rules(options: &SpecOptions) -> Vec<LinuxDeviceCgroup> {
    if options.privileged {
        let mut all = LinuxDeviceCgroup::default();
        all.set_allow(true);
        all.set_typ(Some(LinuxDeviceType::A));
        all.set_access(Some("rwm".to_string()));
        return vec![all];
    }
    let mut rules = default_device_rules();
    for device in &options.devices {
        let typ = match device.kind {
            crate::DeviceKind::Char => LinuxDeviceType::C,
            crate::DeviceKind::Block => LinuxDeviceType::B,
            // The device cgroup knows only char and block devices.
            crate::DeviceKind::Unbuffered | crate::DeviceKind::Fifo => continue,
        };
        if device.permissions.is_empty() {
            continue;
        }
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(typ));
        rule.set_major(i64::try_from(device.major).ok());
        rule.set_minor(i64::try_from(device.minor).ok());
        rule.set_access(Some(device.permissions.clone()));
        rules.push(rule);
    }
    rules
}

/// containerd's device cgroup rules: deny everything, then allow the
/// devices every container has (null, zero, full, random, urandom, tty,
/// console, ptmx and the pts).
fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |allow: bool, typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some("rwm".to_string()));
        r
    };
    let char_dev =
        |major: i64, minor: Option<i64>| rule(true, LinuxDeviceType::C, Some(major), minor);
    vec![
        rule(false, LinuxDeviceType::A, None, None),
        char_dev(1, Some(3)), // /dev/null
        char_dev(1, Some(8)), // /dev/random
        char_dev(1, Some(7)), // /dev/full
        char_dev(5, Some(0)), // /dev/tty
        char_dev(1, Some(5)), // /dev/zero
        char_dev(1, Some(9)), // /dev/urandom
        char_dev(5, Some(1)), // /dev/console
        char_dev(136, None),  // /dev/pts/*
        char_dev(5, Some(2)), // /dev/ptmx
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn options() -> SpecOptions {
        SpecOptions::new("default", "web-1")
    }

    #[test]
    fn cgroups_path_for_both_drivers() {
        let mut o = options();
        assert_eq!(cgroups_path(&o).unwrap(), "/berth/default/web-1");
        o.cgroup = CgroupDriver::Systemd;
        assert_eq!(cgroups_path(&o).unwrap(), "berth.slice:berth-default:web-1");
    }

    #[test]
    fn cgroups_path_under_a_parent() {
        let mut o = options();
        o.cgroup_parent = Some("/tenants/a/".into());
        assert_eq!(cgroups_path(&o).unwrap(), "/tenants/a/web-1");
        o.cgroup_parent = Some("/".into());
        assert_eq!(cgroups_path(&o).unwrap(), "/web-1");
        o.cgroup = CgroupDriver::Systemd;
        o.cgroup_parent = Some("tenants-a.slice".into());
        assert_eq!(
            cgroups_path(&o).unwrap(),
            "tenants-a.slice:berth-default:web-1"
        );
        for (driver, parent) in [
            (CgroupDriver::Cgroupfs, "relative/path"),
            (CgroupDriver::Cgroupfs, "/a/../../escape"),
            (CgroupDriver::Cgroupfs, "/a//b"),
            (CgroupDriver::Cgroupfs, "/a/./b"),
            (CgroupDriver::Cgroupfs, "/a b"),
            (CgroupDriver::Cgroupfs, ""),
            (CgroupDriver::Systemd, "/tenants.slice"),
            (CgroupDriver::Systemd, "tenants"),
            (CgroupDriver::Systemd, ".slice"),
            (CgroupDriver::Systemd, "a:b.slice"),
        ] {
            let mut o = options();
            o.cgroup = driver;
            o.cgroup_parent = Some(parent.into());
            assert!(
                matches!(cgroups_path(&o), Err(OciError::InvalidArgument(_))),
                "{parent:?}"
            );
        }
        let long = format!("/{}", ["a"; 2100].join("/"));
        let mut o = options();
        o.cgroup_parent = Some(long);
        assert!(cgroups_path(&o).is_err());
    }

    #[test]
    fn cgroups_path_refuses_odd_names() {
        for (ns, id) in [
            ("default", ".."),
            ("..", "x"),
            ("default", "a/b"),
            ("def ault", "x"),
            ("", "x"),
            ("default", ""),
            ("default", "a:b"),
        ] {
            let o = SpecOptions::new(ns, id);
            assert!(
                matches!(cgroups_path(&o), Err(OciError::InvalidArgument(_))),
                "{ns:?} {id:?}"
            );
        }
        let long = "x".repeat(256);
        assert!(cgroups_path(&SpecOptions::new("default", &long)).is_err());
    }

    #[test]
    fn no_limits_by_default_but_device_rules() {
        let r = linux_resources(&options()).unwrap();
        assert!(r.memory().is_none() && r.cpu().is_none() && r.pids().is_none());
        let devices = r.devices().clone().unwrap();
        assert_eq!(devices.len(), 10);
        assert!(!devices[0].allow());
        assert_eq!(devices[0].typ(), Some(LinuxDeviceType::A));
        assert_eq!(devices[0].access().as_deref(), Some("rwm"));
        assert!(devices[1..].iter().all(|d| d.allow()));
        let null = &devices[1];
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (Some(LinuxDeviceType::C), Some(1), Some(3))
        );
        assert!(devices
            .iter()
            .any(|d| d.major() == Some(136) && d.minor().is_none()));
    }

    #[test]
    fn limits() {
        let mut o = options();
        o.limits.memory_bytes = Some(512 << 20);
        o.limits.cpus = Some(1.5);
        o.limits.pids_limit = Some(100);
        let r = linux_resources(&o).unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(512 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(150_000));
        assert_eq!(r.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(r.pids().unwrap().limit(), 100);
        o.limits.cpus = Some(0.01);
        assert_eq!(
            linux_resources(&o).unwrap().cpu().as_ref().unwrap().quota(),
            Some(1_000)
        );
        o.limits.memory_bytes = Some(MIN_MEMORY_BYTES);
        assert!(linux_resources(&o).is_ok());
    }

    #[test]
    fn an_update_changes_only_the_limits_it_has_and_checks_them_all_first() {
        let mut o = options();
        o.limits.memory_bytes = Some(64 << 20);
        o.limits.pids_limit = Some(10);
        let image = crate::ImageDefaults {
            env: Vec::new(),
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
            working_dir: String::new(),
            user: String::new(),
            stop_signal: None,
            volumes: Vec::new(),
        };
        let mut spec = crate::build_spec(&image, &o, &crate::NoRootfsFiles).unwrap();
        let mut shares = spec.linux().clone().unwrap();
        let mut resources = shares.resources().clone().unwrap();
        let mut cpu = oci_spec::runtime::LinuxCpu::default();
        cpu.set_shares(Some(512));
        resources.set_cpu(Some(cpu));
        shares.set_resources(Some(resources));
        spec.set_linux(Some(shares));
        let devices_before = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let devices_before = devices_before.devices().clone();

        let update = Limits {
            cpus: Some(0.5),
            pids_limit: Some(20),
            ..Limits::default()
        };
        let for_task = update_limits(&mut spec, &update).unwrap();
        let recorded = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        for r in [&for_task, &recorded] {
            assert_eq!(r.memory().unwrap().limit(), Some(64 << 20), "kept");
            assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
            assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(512), "kept");
            assert_eq!(r.pids().unwrap().limit(), 20);
        }
        assert_eq!(recorded.devices(), &devices_before);
        assert_eq!(for_task.devices(), &None, "the task's device rules stay");

        // One bad limit: nothing changes.
        let before = spec.clone();
        let bad = Limits {
            memory_bytes: Some(128 << 20),
            pids_limit: Some(0),
            ..Limits::default()
        };
        assert!(matches!(
            update_limits(&mut spec, &bad),
            Err(OciError::InvalidArgument(_))
        ));
        assert_eq!(spec, before);
        assert!(Limits::default().is_empty());
        assert!(!update.is_empty());
    }

    #[test]
    fn invalid_limits_are_refused() {
        let check = |f: &dyn Fn(&mut SpecOptions)| {
            let mut o = options();
            f(&mut o);
            assert!(matches!(
                linux_resources(&o),
                Err(OciError::InvalidArgument(_))
            ));
        };
        check(&|o| o.limits.memory_bytes = Some(0));
        check(&|o| o.limits.memory_bytes = Some(-1));
        check(&|o| o.limits.memory_bytes = Some(MIN_MEMORY_BYTES - 1));
        check(&|o| o.limits.cpus = Some(0.0));
        check(&|o| o.limits.cpus = Some(-1.0));
        check(&|o| o.limits.cpus = Some(0.004));
        check(&|o| o.limits.cpus = Some(f64::NAN));
        check(&|o| o.limits.cpus = Some(f64::INFINITY));
        check(&|o| o.limits.cpus = Some(1e300));
        check(&|o| o.limits.pids_limit = Some(0));
        check(&|o| o.limits.pids_limit = Some(-1));
    }
}
