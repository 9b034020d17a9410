//! The container's mounts: containerd's defaults, then the caller's bind
//! and tmpfs mounts (`--mount` and `-v`).

use std::path::Path;

use oci_spec::runtime::Mount;

use crate::error::{OciError, Result};

/// A mount the caller asks for: a bind mount of a host path or a tmpfs.
/// `options` are OCI mount options; those [`MountOption::parse_mount_flag`]
/// and [`MountOption::parse_volume_flag`] give are complete, and a mount
/// built by hand gets the missing defaults (`rbind`, `rw`, `rprivate` for a
/// bind; `nosuid`, `nodev` for a tmpfs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOption {
    /// `bind` or `tmpfs`.
    pub kind: String,
    /// The host path of a bind mount; empty for a tmpfs.
    pub source: String,
    /// The absolute path in the container.
    pub destination: String,
    /// OCI mount options.
    pub options: Vec<String>,
}

const PROPAGATIONS: &[&str] = &[
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

impl MountOption {
    /// Parses a `--mount` value: `type=bind,src=/a,dst=/b[,ro|readonly]
    /// [,bind-propagation=rprivate]` (also `source=`, `target=`,
    /// `destination=`, `dst=`; `ro=true|false`) or
    /// `type=tmpfs,dst=/x[,tmpfs-size=BYTES][,tmpfs-mode=OCTAL][,ro]`.
    pub fn parse_mount_flag(value: &str) -> Result<MountOption> {
        let bad = |why: String| OciError::invalid(format!("--mount {value:?}: {why}"));
        let mut kind = None;
        let mut source = None;
        let mut destination = None;
        let mut readonly = false;
        let mut propagation = None;
        let mut size = None;
        let mut mode = None;
        for field in value.split(',') {
            let (key, val) = match field.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (field, None),
            };
            let slot = match key {
                "type" => &mut kind,
                "src" | "source" => &mut source,
                "dst" | "destination" | "target" => &mut destination,
                "bind-propagation" => &mut propagation,
                "tmpfs-size" => &mut size,
                "tmpfs-mode" => &mut mode,
                "ro" | "readonly" => {
                    readonly = match val {
                        None | Some("true") | Some("1") => true,
                        Some("false") | Some("0") => false,
                        Some(other) => return Err(bad(format!("{key}={other} is not a boolean"))),
                    };
                    continue;
                }
                "" => return Err(bad("empty field".into())),
                other => return Err(bad(format!("unknown field {other:?}"))),
            };
            let Some(val) = val else {
                return Err(bad(format!("{key} needs a value")));
            };
            if slot.replace(val).is_some() {
                return Err(bad(format!("{key} given twice")));
            }
        }
        let destination = destination.ok_or_else(|| bad("no destination (dst=)".into()))?;
        let destination = clean_destination(destination)?;
        match kind {
            Some("bind") => {
                if size.is_some() || mode.is_some() {
                    return Err(bad("tmpfs-size and tmpfs-mode are for type=tmpfs".into()));
                }
                let source = source.ok_or_else(|| bad("no source (src=)".into()))?;
                check_source(source)?;
                let propagation = propagation.unwrap_or("rprivate");
                if !PROPAGATIONS.contains(&propagation) {
                    return Err(bad(format!("unknown bind-propagation {propagation:?}")));
                }
                Ok(bind(source, destination, readonly, propagation))
            }
            Some("tmpfs") => {
                if source.is_some() || propagation.is_some() {
                    return Err(bad("a tmpfs has no source or propagation".into()));
                }
                let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                if let Some(size) = size {
                    options.push(format!("size={}", parse_size(size).map_err(bad)?));
                }
                if let Some(mode) = mode {
                    let m = parse_mode(mode)
                        .ok_or_else(|| bad(format!("tmpfs-mode {mode:?} is not octal")))?;
                    options.push(format!("mode={m:o}"));
                }
                if readonly {
                    options.push("ro".to_string());
                }
                Ok(MountOption {
                    kind: "tmpfs".to_string(),
                    source: String::new(),
                    destination,
                    options,
                })
            }
            Some("volume") => Err(bad(
                "named volumes are not supported: use type=bind with an absolute source".into(),
            )),
            Some(other) => Err(bad(format!("unsupported type {other:?} (bind or tmpfs)"))),
            None => Err(bad("no type (type=bind or type=tmpfs)".into())),
        }
    }

    /// Parses a `-v` value: `SRC:DST[:OPTS]`, `SRC` an absolute host path
    /// and `OPTS` a comma-separated list of `ro`, `rw` and a propagation.
    pub fn parse_volume_flag(value: &str) -> Result<MountOption> {
        let bad = |why: &str| OciError::invalid(format!("-v {value:?}: {why}"));
        let parts: Vec<&str> = value.split(':').collect();
        let (source, destination, opts) = match parts.as_slice() {
            [src, dst] => (*src, *dst, ""),
            [src, dst, opts] => (*src, *dst, *opts),
            [_] => return Err(bad("anonymous volumes are not supported: use SRC:DST")),
            _ => return Err(bad("expected SRC:DST[:OPTIONS]")),
        };
        if !source.starts_with('/') {
            return Err(bad(
                "named volumes are not supported: the source must be an absolute host path",
            ));
        }
        check_source(source)?;
        let destination = clean_destination(destination)?;
        let mut readonly = None;
        let mut propagation = None;
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt {
                "ro" | "rw" => {
                    if readonly.replace(opt == "ro").is_some() {
                        return Err(bad("ro/rw given twice"));
                    }
                }
                p if PROPAGATIONS.contains(&p) => {
                    if propagation.replace(p).is_some() {
                        return Err(bad("propagation given twice"));
                    }
                }
                "z" | "Z" => return Err(bad("SELinux relabelling (z, Z) is not supported")),
                _ => return Err(bad(&format!("unknown option {opt:?}"))),
            }
        }
        Ok(bind(
            source,
            destination,
            readonly.unwrap_or(false),
            propagation.unwrap_or("rprivate"),
        ))
    }

    /// The OCI mount, after checking what a hand-built option may get
    /// wrong.
    pub(crate) fn to_oci(&self) -> Result<Mount> {
        let destination = clean_destination(&self.destination)?;
        let mut options: Vec<String> = Vec::with_capacity(self.options.len() + 3);
        for o in &self.options {
            if !allowed_option(o) {
                return Err(OciError::invalid(format!(
                    "mount on {destination}: option {o:?} is not allowed"
                )));
            }
            if !options.contains(o) {
                options.push(o.clone());
            }
        }
        let has =
            |options: &[String], any: &[&str]| options.iter().any(|o| any.contains(&o.as_str()));
        let mut mount = Mount::default();
        match self.kind.as_str() {
            "bind" => {
                check_source(&self.source)?;
                if !has(&options, &["bind", "rbind"]) {
                    options.insert(0, "rbind".to_string());
                }
                if !has(&options, &["ro", "rw"]) {
                    options.push("rw".to_string());
                }
                if !has(&options, PROPAGATIONS) {
                    options.push("rprivate".to_string());
                }
                mount.set_typ(Some("bind".to_string()));
                mount.set_source(Some(self.source.clone().into()));
            }
            "tmpfs" => {
                if !self.source.is_empty() && self.source != "tmpfs" {
                    return Err(OciError::invalid(format!(
                        "tmpfs mount on {destination} has a source"
                    )));
                }
                if has(&options, &["bind", "rbind"]) || has(&options, PROPAGATIONS) {
                    return Err(OciError::invalid(format!(
                        "tmpfs mount on {destination} has bind options"
                    )));
                }
                for default in ["nodev", "nosuid"] {
                    if !options.iter().any(|o| o == default) {
                        options.insert(0, default.to_string());
                    }
                }
                mount.set_typ(Some("tmpfs".to_string()));
                mount.set_source(Some("tmpfs".into()));
            }
            other => {
                return Err(OciError::invalid(format!(
                    "mount on {destination}: unsupported type {other:?} (bind or tmpfs)"
                )))
            }
        }
        mount.set_destination(destination.into());
        mount.set_options(Some(options));
        Ok(mount)
    }
}

fn bind(source: &str, destination: String, readonly: bool, propagation: &str) -> MountOption {
    MountOption {
        kind: "bind".to_string(),
        source: source.to_string(),
        destination,
        options: vec![
            "rbind".to_string(),
            if readonly { "ro" } else { "rw" }.to_string(),
            propagation.to_string(),
        ],
    }
}

/// Options a caller's mount may carry.
fn allowed_option(o: &str) -> bool {
    const FLAGS: &[&str] = &[
        "bind",
        "rbind",
        "ro",
        // runc's recursive read-only (mount_setattr, kernel 5.12+).
        "rro",
        "rw",
        "nosuid",
        "suid",
        "nodev",
        "dev",
        "noexec",
        "exec",
        "noatime",
        "relatime",
        "strictatime",
    ];
    if FLAGS.contains(&o) || PROPAGATIONS.contains(&o) {
        return true;
    }
    match o.split_once('=') {
        Some(("size", v)) => parse_size(v).is_ok(),
        Some(("mode", v)) => parse_mode(v).is_some(),
        _ => false,
    }
}

/// A permission mode: octal digits, at most `7777`.
fn parse_mode(mode: &str) -> Option<u32> {
    if mode.is_empty() || mode.len() > 5 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(mode, 8).ok().filter(|m| *m <= 0o7777)
}

/// A bind source: an absolute host path.
fn check_source(source: &str) -> Result<()> {
    if !source.starts_with('/') || source.contains('\0') {
        return Err(OciError::invalid(format!(
            "mount source {source:?} is not an absolute host path"
        )));
    }
    Ok(())
}

/// An absolute destination without `..`, normalised (no `.`, repeated or
/// trailing `/`); `/` itself is refused.
pub(crate) fn clean_destination(destination: &str) -> Result<String> {
    let bad = |why: &str| OciError::invalid(format!("mount destination {destination:?} {why}"));
    if !destination.starts_with('/') {
        return Err(bad("is not an absolute path"));
    }
    if destination.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut clean = String::with_capacity(destination.len());
    for component in destination.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(bad("contains a `..` component")),
            c => {
                clean.push('/');
                clean.push_str(c);
            }
        }
    }
    if clean.is_empty() {
        return Err(bad("is the root"));
    }
    Ok(clean)
}

/// A size in bytes, with an optional `k`, `m` or `g` suffix (any case),
/// greater than zero; returned in bytes.
fn parse_size(size: &str) -> std::result::Result<u64, String> {
    let lower = size.to_ascii_lowercase();
    let (digits, unit) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1u64 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("size {size:?} is not a number of bytes"));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("size {size:?} is out of range"))
}

/// containerd's default mounts, with `/sys/fs/cgroup` read-only.
pub(crate) fn default_mounts() -> Vec<Mount> {
    let m = |destination: &str, typ: &str, source: &str, options: &[&str]| {
        let mut mount = Mount::default();
        mount.set_destination(destination.into());
        mount.set_typ(Some(typ.to_string()));
        mount.set_source(Some(source.into()));
        mount.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
        mount
    };
    vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// A read-only bind of a host file, for the host network.
fn host_file(path: &str) -> Mount {
    let mut mount = Mount::default();
    mount.set_destination(path.into());
    mount.set_typ(Some("bind".to_string()));
    mount.set_source(Some(path.into()));
    mount.set_options(Some(vec!["rbind".to_string(), "ro".to_string()]));
    mount
}

/// The container's mounts: the defaults (with `/sys` and `/sys/fs/cgroup`
/// writable when privileged), minus those the caller's replace, then the
/// caller's, then — for the host network — the host's `/etc/resolv.conf`
/// and `/etc/hosts` when they exist and the caller did not mount them.
pub(crate) fn container_mounts(
    user: &[MountOption],
    privileged: bool,
    host_network: bool,
) -> Result<Vec<Mount>> {
    let mut users: Vec<Mount> = Vec::with_capacity(user.len());
    for option in user {
        let mount = option.to_oci()?;
        if users.iter().any(|m| m.destination() == mount.destination()) {
            return Err(OciError::invalid(format!(
                "two mounts on {}",
                mount.destination().display()
            )));
        }
        users.push(mount);
    }
    let mut mounts: Vec<Mount> = default_mounts()
        .into_iter()
        .filter(|d| !users.iter().any(|u| u.destination() == d.destination()))
        .collect();
    if privileged {
        for mount in &mut mounts {
            if matches!(mount.typ().as_deref(), Some("sysfs" | "cgroup")) {
                if let Some(options) = mount.options_mut() {
                    for o in options.iter_mut().filter(|o| *o == "ro") {
                        *o = "rw".to_string();
                    }
                }
            }
        }
    }
    mounts.extend(users);
    if host_network {
        for file in ["/etc/resolv.conf", "/etc/hosts"] {
            let taken = mounts.iter().any(|m| m.destination() == Path::new(file));
            if !taken && Path::new(file).exists() {
                mounts.push(host_file(file));
            }
        }
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap()
    }

    #[test]
    fn defaults_are_containerds() {
        let mounts = container_mounts(&[], false, false).unwrap();
        let dests: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
            .map(std::path::PathBuf::from)
        );
        assert_eq!(opts(&mounts[0]), ["nosuid", "noexec", "nodev"]);
        assert_eq!(mounts[2].typ().as_deref(), Some("devpts"));
        assert!(opts(&mounts[2]).contains(&"gid=5".to_string()));
        assert_eq!(mounts[3].source().as_deref(), Some(Path::new("shm")));
        assert!(opts(&mounts[5]).contains(&"ro".to_string()));
        assert!(opts(&mounts[6]).contains(&"ro".to_string()));
    }

    #[test]
    fn privileged_makes_sys_and_cgroup_writable() {
        let mounts = container_mounts(&[], true, false).unwrap();
        for m in &mounts[5..7] {
            assert!(opts(m).contains(&"rw".to_string()));
            assert!(!opts(m).contains(&"ro".to_string()));
        }
        // /proc and the rest keep their options.
        assert_eq!(opts(&mounts[0]), ["nosuid", "noexec", "nodev"]);
    }

    #[test]
    fn volume_flag() {
        let m = MountOption::parse_volume_flag("/data:/srv/data").unwrap();
        assert_eq!(
            m,
            MountOption {
                kind: "bind".into(),
                source: "/data".into(),
                destination: "/srv/data".into(),
                options: vec!["rbind".into(), "rw".into(), "rprivate".into()],
            }
        );
        let m = MountOption::parse_volume_flag("/data:/srv//data/:ro,rslave").unwrap();
        assert_eq!(m.destination, "/srv/data");
        assert_eq!(m.options, ["rbind", "ro", "rslave"]);
        assert_eq!(
            MountOption::parse_volume_flag("/a:/b:rw").unwrap().options,
            ["rbind", "rw", "rprivate"]
        );
    }

    #[test]
    fn volume_flag_errors() {
        for (bad, why) in [
            ("data:/srv", "named volumes"),
            ("myvol:/srv:ro", "named volumes"),
            ("/srv", "anonymous"),
            ("/a:srv", "absolute"),
            ("/a:/srv/../etc", ".."),
            ("/a:/", "root"),
            ("/a:/b:ro,rw", "twice"),
            ("/a:/b:z", "SELinux"),
            ("/a:/b:exec", "unknown option"),
            ("/a:/b:ro:x", "expected"),
            ("", "anonymous"),
        ] {
            let err = MountOption::parse_volume_flag(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn mount_flag_bind() {
        let m = MountOption::parse_mount_flag("type=bind,src=/a,dst=/b").unwrap();
        assert_eq!(m.options, ["rbind", "rw", "rprivate"]);
        assert_eq!((m.source.as_str(), m.destination.as_str()), ("/a", "/b"));
        let m = MountOption::parse_mount_flag(
            "type=bind,source=/a,target=/b,readonly,bind-propagation=rshared",
        )
        .unwrap();
        assert_eq!(m.options, ["rbind", "ro", "rshared"]);
        let m =
            MountOption::parse_mount_flag("type=bind,source=/a,destination=/b,ro=true").unwrap();
        assert_eq!(m.options[1], "ro");
        let m =
            MountOption::parse_mount_flag("type=bind,source=/a,destination=/b,ro=false").unwrap();
        assert_eq!(m.options[1], "rw");
    }

    #[test]
    fn mount_flag_tmpfs() {
        let m = MountOption::parse_mount_flag("type=tmpfs,dst=/scratch").unwrap();
        assert_eq!(m.kind, "tmpfs");
        assert_eq!(m.options, ["nosuid", "nodev"]);
        let m = MountOption::parse_mount_flag("type=tmpfs,dst=/x,tmpfs-size=64m,tmpfs-mode=1770")
            .unwrap();
        assert_eq!(m.options, ["nosuid", "nodev", "size=67108864", "mode=1770"]);
        let m = MountOption::parse_mount_flag("type=tmpfs,target=/x,tmpfs-size=1000,ro").unwrap();
        assert_eq!(m.options, ["nosuid", "nodev", "size=1000", "ro"]);
        let mount = m.to_oci().unwrap();
        assert_eq!(mount.typ().as_deref(), Some("tmpfs"));
        assert_eq!(mount.source().as_deref(), Some(Path::new("tmpfs")));
    }

    #[test]
    fn mount_flag_errors() {
        for (bad, why) in [
            ("type=bind,src=/a,dst=b", "absolute"),
            ("type=bind,src=/a,dst=/b/../../etc", ".."),
            ("type=bind,dst=/b", "no source"),
            ("type=bind,src=rel,dst=/b", "absolute host path"),
            ("type=bind,src=/a", "no destination"),
            ("src=/a,dst=/b", "no type"),
            ("type=volume,src=v,dst=/b", "named volumes"),
            ("type=nfs,src=/a,dst=/b", "unsupported type"),
            (
                "type=bind,src=/a,dst=/b,bind-propagation=weird",
                "bind-propagation",
            ),
            ("type=bind,src=/a,dst=/b,colour=red", "unknown field"),
            ("type=bind,src=/a,src=/c,dst=/b", "twice"),
            ("type=bind,src=/a,dst=/b,ro=maybe", "boolean"),
            ("type=bind,src=/a,dst=/b,tmpfs-size=1", "tmpfs"),
            ("type=tmpfs,src=/a,dst=/b", "no source"),
            ("type=tmpfs,dst=/b,tmpfs-size=0", "out of range"),
            ("type=tmpfs,dst=/b,tmpfs-size=-1", "not a number"),
            (
                "type=tmpfs,dst=/b,tmpfs-size=99999999999999999999",
                "out of range",
            ),
            ("type=tmpfs,dst=/b,tmpfs-mode=999", "octal"),
            ("type=bind,,src=/a,dst=/b", "empty field"),
            ("type,src=/a,dst=/b", "needs a value"),
        ] {
            let err = MountOption::parse_mount_flag(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_user_mount_replaces_the_default_on_its_destination() {
        let shm = MountOption::parse_mount_flag("type=tmpfs,dst=/dev/shm/,tmpfs-size=1g").unwrap();
        let data = MountOption::parse_volume_flag("/data:/data:ro").unwrap();
        let mounts = container_mounts(&[shm, data], false, false).unwrap();
        let shms: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/dev/shm"))
            .collect();
        assert_eq!(shms.len(), 1);
        assert!(opts(shms[0]).contains(&"size=1073741824".to_string()));
        assert_eq!(mounts.len(), 8);
        let last = mounts.last().unwrap();
        assert_eq!(last.typ().as_deref(), Some("bind"));
        assert_eq!(last.source().as_deref(), Some(Path::new("/data")));
        assert_eq!(opts(last), ["rbind", "ro", "rprivate"]);
    }

    #[test]
    fn two_user_mounts_on_one_destination_are_refused() {
        let a = MountOption::parse_volume_flag("/a:/x").unwrap();
        let b = MountOption::parse_volume_flag("/b:/x/").unwrap();
        assert!(container_mounts(&[a, b], false, false).is_err());
    }

    #[test]
    fn hand_built_mounts_get_defaults_and_checks() {
        let m = MountOption {
            kind: "bind".into(),
            source: "/host".into(),
            destination: "/c".into(),
            options: vec!["ro".into()],
        };
        assert_eq!(opts(&m.to_oci().unwrap()), ["rbind", "ro", "rprivate"]);
        let t = MountOption {
            kind: "tmpfs".into(),
            source: String::new(),
            destination: "/t".into(),
            options: vec!["size=10".into()],
        };
        assert_eq!(opts(&t.to_oci().unwrap()), ["nosuid", "nodev", "size=10"]);
        for bad in [
            MountOption {
                options: vec!["suid,dev".into()],
                ..m.clone()
            },
            MountOption {
                options: vec!["context=x".into()],
                ..m.clone()
            },
            MountOption {
                kind: "overlay".into(),
                ..m.clone()
            },
            MountOption {
                source: "rel".into(),
                ..m.clone()
            },
            MountOption {
                destination: "/../x".into(),
                ..m.clone()
            },
            MountOption {
                options: vec!["rbind".into()],
                ..t.clone()
            },
            MountOption {
                source: "/host".into(),
                ..t.clone()
            },
        ] {
            assert!(
                matches!(bad.to_oci(), Err(OciError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn host_network_binds_the_host_files_that_exist() {
        let mounts = container_mounts(&[], false, true).unwrap();
        for file in ["/etc/resolv.conf", "/etc/hosts"] {
            let bound = mounts.iter().find(|m| m.destination() == Path::new(file));
            assert_eq!(bound.is_some(), Path::new(file).exists(), "{file}");
            if let Some(m) = bound {
                assert_eq!(opts(m), ["rbind", "ro"]);
                assert_eq!(m.source().as_deref(), Some(Path::new(file)));
            }
        }
        // A caller's mount on one of them wins.
        let own = MountOption::parse_volume_flag("/tmp/hosts:/etc/hosts:ro").unwrap();
        let mounts = container_mounts(&[own], false, true).unwrap();
        let hosts: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/tmp/hosts")));
    }

    #[test]
    fn destinations_are_cleaned() {
        assert_eq!(clean_destination("/a/./b//c/").unwrap(), "/a/b/c");
        assert!(clean_destination("/a/..").is_err());
        assert!(clean_destination("//").is_err());
        assert!(clean_destination("a/b").is_err());
        // `..` inside a name is just a name.
        assert_eq!(clean_destination("/a..b").unwrap(), "/a..b");
    }
}
