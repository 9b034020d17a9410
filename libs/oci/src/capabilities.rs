//! The process's capabilities: containerd's default set, adjusted by
//! `--cap-add` and `--cap-drop` as docker does.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use crate::error::{OciError, Result};
use crate::options::SpecOptions;

/// containerd's default capability set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability `oci-spec` knows, by name without the `CAP_` prefix.
const ALL: &[(&str, Capability)] = &[
    ("AUDIT_CONTROL", Capability::AuditControl),
    ("AUDIT_READ", Capability::AuditRead),
    ("AUDIT_WRITE", Capability::AuditWrite),
    ("BLOCK_SUSPEND", Capability::BlockSuspend),
    ("BPF", Capability::Bpf),
    ("CHECKPOINT_RESTORE", Capability::CheckpointRestore),
    ("CHOWN", Capability::Chown),
    ("DAC_OVERRIDE", Capability::DacOverride),
    ("DAC_READ_SEARCH", Capability::DacReadSearch),
    ("FOWNER", Capability::Fowner),
    ("FSETID", Capability::Fsetid),
    ("IPC_LOCK", Capability::IpcLock),
    ("IPC_OWNER", Capability::IpcOwner),
    ("KILL", Capability::Kill),
    ("LEASE", Capability::Lease),
    ("LINUX_IMMUTABLE", Capability::LinuxImmutable),
    ("MAC_ADMIN", Capability::MacAdmin),
    ("MAC_OVERRIDE", Capability::MacOverride),
    ("MKNOD", Capability::Mknod),
    ("NET_ADMIN", Capability::NetAdmin),
    ("NET_BIND_SERVICE", Capability::NetBindService),
    ("NET_BROADCAST", Capability::NetBroadcast),
    ("NET_RAW", Capability::NetRaw),
    ("PERFMON", Capability::Perfmon),
    ("SETGID", Capability::Setgid),
    ("SETFCAP", Capability::Setfcap),
    ("SETPCAP", Capability::Setpcap),
    ("SETUID", Capability::Setuid),
    ("SYS_ADMIN", Capability::SysAdmin),
    ("SYS_BOOT", Capability::SysBoot),
    ("SYS_CHROOT", Capability::SysChroot),
    ("SYS_MODULE", Capability::SysModule),
    ("SYS_NICE", Capability::SysNice),
    ("SYS_PACCT", Capability::SysPacct),
    ("SYS_PTRACE", Capability::SysPtrace),
    ("SYS_RAWIO", Capability::SysRawio),
    ("SYS_RESOURCE", Capability::SysResource),
    ("SYS_TIME", Capability::SysTime),
    ("SYS_TTY_CONFIG", Capability::SysTtyConfig),
    ("SYSLOG", Capability::Syslog),
    ("WAKE_ALARM", Capability::WakeAlarm),
];

/// A capability named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    All,
    One(Capability),
}

/// `NET_ADMIN`, `CAP_NET_ADMIN` or `ALL`, in any case.
fn parse(name: &str) -> Result<Named> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok(Named::All);
    }
    ALL.iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, c)| Named::One(*c))
        .ok_or_else(|| OciError::invalid(format!("unknown capability {name:?}")))
}

/// Every capability.
pub(crate) fn all() -> Capabilities {
    ALL.iter().map(|(_, c)| *c).collect()
}

/// The kernel's capability numbers, by name (the bit each has in a
/// capability mask).
const NUMBERED: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities in `mask` (a kernel capability bit mask).
fn in_mask(mask: u64) -> Capabilities {
    ALL.iter()
        .filter(|(name, _)| {
            NUMBERED
                .iter()
                .position(|n| n == name)
                .is_some_and(|bit| mask & (1u64 << bit) != 0)
        })
        .map(|(_, c)| *c)
        .collect()
}

/// This process's capability bounding set (`CapBnd` of /proc/self/status),
/// a bit per capability number; None if it cannot be read.
pub fn bounding_set() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
}

/// "Every capability" as this process can grant it: the ones in its own
/// bounding set (containerd's `WithAllCurrentCapabilities`). A host that
/// withholds one (a sandbox without CAP_SYS_RESOURCE) would otherwise make
/// runc fail to apply the set.
pub(crate) fn all_held() -> Capabilities {
    match bounding_set() {
        Some(mask) => in_mask(mask),
        None => all(),
    }
}

/// containerd's default set.
pub(crate) fn defaults() -> Capabilities {
    DEFAULT_CAPABILITIES
        .iter()
        .filter_map(|n| match parse(n) {
            Ok(Named::One(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// The capability set of the container: every capability when privileged
/// (adds and drops are then only checked), else docker's rules: `ALL`
/// added gives every capability but the dropped ones; `ALL` dropped gives
/// only the added ones; otherwise the defaults less the dropped plus the
/// added.
pub(crate) fn effective_set(options: &SpecOptions) -> Result<Capabilities> {
    let add = options
        .cap_add
        .iter()
        .map(|n| parse(n))
        .collect::<Result<Vec<_>>>()?;
    let drop = options
        .cap_drop
        .iter()
        .map(|n| parse(n))
        .collect::<Result<Vec<_>>>()?;
    if options.privileged {
        return Ok(all_held());
    }
    let ones = |named: &[Named]| -> Vec<Capability> {
        named
            .iter()
            .filter_map(|n| match n {
                Named::One(c) => Some(*c),
                Named::All => None,
            })
            .collect()
    };
    let mut set = if add.contains(&Named::All) {
        let mut set = all_held();
        for c in ones(&drop) {
            set.remove(&c);
        }
        return Ok(set);
    } else if drop.contains(&Named::All) {
        Capabilities::new()
    } else {
        let mut set = defaults();
        for c in ones(&drop) {
            set.remove(&c);
        }
        set
    };
    set.extend(ones(&add));
    Ok(set)
}

/// The process's capabilities: bounding, effective and permitted are the
/// set; inheritable and ambient are empty (so an exec'd file capability
/// cannot bring back more than it may).
pub(crate) fn linux_capabilities(set: &Capabilities) -> LinuxCapabilities {
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set.clone()));
    caps.set_inheritable(Some(Capabilities::new()));
    caps.set_ambient(Some(Capabilities::new()));
    caps
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with(add: &[&str], drop: &[&str]) -> Result<Capabilities> {
        let mut o = SpecOptions::new("default", "c1");
        o.cap_add = add.iter().map(|s| s.to_string()).collect();
        o.cap_drop = drop.iter().map(|s| s.to_string()).collect();
        effective_set(&o)
    }

    #[test]
    fn the_default_set_is_containerds() {
        let set = with(&[], &[]).unwrap();
        assert_eq!(set.len(), 14);
        assert_eq!(set, defaults());
        for c in [
            Capability::Chown,
            Capability::NetRaw,
            Capability::AuditWrite,
        ] {
            assert!(set.contains(&c));
        }
        for c in [
            Capability::SysAdmin,
            Capability::NetAdmin,
            Capability::SysPtrace,
        ] {
            assert!(!set.contains(&c));
        }
    }

    #[test]
    fn every_name_in_the_table_round_trips_through_oci_spec() {
        assert_eq!(ALL.len(), 41);
        assert_eq!(NUMBERED.len(), 41);
        assert!(NUMBERED.iter().all(|n| ALL.iter().any(|(a, _)| a == n)));
        // Bit 24 is SYS_RESOURCE; bit 0 CHOWN.
        let some = in_mask((1 << 24) | 1);
        assert_eq!(some.len(), 2);
        assert!(some.contains(&Capability::SysResource));
        assert!(some.contains(&Capability::Chown));
        assert_eq!(in_mask(0x1ff_ffff_ffff), all());
        for (name, cap) in ALL {
            let json = serde_json::to_string(cap).unwrap();
            assert_eq!(json, format!("\"CAP_{name}\""));
        }
    }

    #[test]
    fn add_and_drop_any_spelling() {
        let set = with(&["net_admin", "CAP_SYS_PTRACE"], &["cap_net_raw", "Chown"]).unwrap();
        assert!(set.contains(&Capability::NetAdmin));
        assert!(set.contains(&Capability::SysPtrace));
        assert!(!set.contains(&Capability::NetRaw));
        assert!(!set.contains(&Capability::Chown));
        assert_eq!(set.len(), 14);
    }

    #[test]
    fn all_rules() {
        assert_eq!(with(&["ALL"], &[]).unwrap(), all_held());
        let set = with(&["all"], &["SYS_ADMIN"]).unwrap();
        assert_eq!(set.len(), all_held().len() - 1);
        assert!(!set.contains(&Capability::SysAdmin));
        assert!(with(&[], &["ALL"]).unwrap().is_empty());
        let only = with(&["NET_BIND_SERVICE"], &["CAP_ALL"]).unwrap();
        assert_eq!(
            only.into_iter().collect::<Vec<_>>(),
            [Capability::NetBindService]
        );
    }

    #[test]
    fn unknown_capabilities_are_refused() {
        for (add, drop) in [
            (&["NET_ADMINISTRATOR"][..], &[][..]),
            (&[], &["CAP_"]),
            (&[], &[""]),
        ] {
            assert!(matches!(with(add, drop), Err(OciError::InvalidArgument(_))));
        }
    }

    #[test]
    fn privileged_is_everything_but_still_checks_names() {
        let mut o = SpecOptions::new("default", "c1");
        o.privileged = true;
        o.cap_drop = vec!["NET_RAW".into()];
        assert_eq!(effective_set(&o).unwrap(), all_held());
        o.cap_add = vec!["NOPE".into()];
        assert!(effective_set(&o).is_err());
    }

    #[test]
    fn inheritable_and_ambient_are_empty() {
        let caps = linux_capabilities(&defaults());
        assert_eq!(caps.bounding().as_ref().unwrap(), &defaults());
        assert_eq!(caps.effective().as_ref().unwrap(), &defaults());
        assert_eq!(caps.permitted().as_ref().unwrap(), &defaults());
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().as_ref().unwrap().is_empty());
    }
}
