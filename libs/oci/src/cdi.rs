//! CDI, the Container Device Interface: devices named `VENDOR/CLASS=NAME`
//! (`nvidia.com/gpu=0`), described by spec files a device vendor's tools
//! write to `/etc/cdi` and `/var/run/cdi`, and given to a container as the
//! edits those files list: device nodes, environment, mounts, hooks,
//! supplementary groups, Intel RDT and network devices.
//!
//! What containerd does through the CDI library, done on berth's own
//! options: [`CdiRegistry::load`] reads every `*.json` and `*.yaml` spec of
//! the directories (a later directory's device replaces an earlier one's of
//! the same name; two files of one directory naming the same device make
//! it unresolvable there), and [`CdiRegistry::resolve`] turns the requested
//! names into [`CdiEdits`], which [`CdiEdits::apply`] adds to a container's
//! [`SpecOptions`] as the last of its changes (so CDI's environment wins,
//! and its mounts replace any on the same path, as with containerd). A
//! spec file that is malformed, has a field the specification does not
//! define, or is invalid is left out whole, and its reason is part of the
//! error of any request it could have answered.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::devices::{check_container_path, libc_major, libc_minor};
use crate::error::{OciError, Result};
use crate::{Device, DeviceKind, SpecHook, SpecOptions};

/// Where CDI spec files are, in rising priority (containerd's and the CDI
/// library's default).
pub const DEFAULT_CDI_SPEC_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

/// The spec versions this reader knows (with or without a leading `v`).
const KNOWN_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// A spec file larger than this is refused unread.
const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;

/// The hooks a CDI spec may name (the OCI runtime spec's).
const HOOK_NAMES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// Whether `value` is a CDI device name (`VENDOR/CLASS=NAME`) rather than a
/// path: what `--device` takes in either form.
pub fn is_cdi_device_name(value: &str) -> bool {
    parse_qualified_name(value).is_ok()
}

/// Splits `VENDOR/CLASS=NAME`, checking each part as the CDI library does:
/// the vendor and the class letters, digits, `.`, `-` and `_`, a letter
/// first; the device name letters, digits, `_`, `.`, `:` and `-`, a letter
/// or digit first; each ends with a letter or digit.
pub fn parse_qualified_name(value: &str) -> Result<(&str, &str, &str)> {
    let bad = |why: &str| OciError::invalid(format!("CDI device {value:?}: {why}"));
    let (kind, name) = value
        .split_once('=')
        .ok_or_else(|| bad("not VENDOR/CLASS=NAME"))?;
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| bad("not VENDOR/CLASS=NAME"))?;
    check_kind_part(vendor).map_err(|why| bad(&format!("vendor {vendor:?} {why}")))?;
    check_kind_part(class).map_err(|why| bad(&format!("class {class:?} {why}")))?;
    check_device_name(name).map_err(|why| bad(&format!("name {name:?} {why}")))?;
    Ok((vendor, class, name))
}

fn check_kind_part(part: &str) -> std::result::Result<(), &'static str> {
    let first = part.chars().next().ok_or("is empty")?;
    if !first.is_ascii_alphabetic() {
        return Err("must start with a letter");
    }
    check_middle_and_end(part, "._-")
}

fn check_device_name(name: &str) -> std::result::Result<(), &'static str> {
    let first = name.chars().next().ok_or("is empty")?;
    if !first.is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    check_middle_and_end(name, "_.:-")
}

fn check_middle_and_end(part: &str, extra: &str) -> std::result::Result<(), &'static str> {
    if !part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    {
        return Err("has a character outside letters, digits and the allowed punctuation");
    }
    if !part.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must end with a letter or digit");
    }
    Ok(())
}

// ---- the spec files, as the CDI specification writes them (a field it
// does not define makes the file invalid, as the CDI library parses) ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpecFile {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    devices: Vec<DeviceSpec>,
    #[serde(default)]
    container_edits: ContainerEdits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeviceSpec {
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    container_edits: ContainerEdits,
}

/// What a device (or every device of a spec file) changes in a container.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ContainerEdits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    hooks: Vec<HookSpec>,
    #[serde(default)]
    mounts: Vec<MountSpec>,
    #[serde(default)]
    intel_rdt: Option<IntelRdt>,
    #[serde(default)]
    additional_gids: Vec<u32>,
    #[serde(default)]
    net_devices: Vec<NetDevice>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeviceNode {
    path: String,
    #[serde(default)]
    host_path: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    major: Option<i64>,
    #[serde(default)]
    minor: Option<i64>,
    #[serde(default)]
    file_mode: Option<u32>,
    #[serde(default)]
    permissions: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HookSpec {
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    timeout: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MountSpec {
    host_path: String,
    container_path: String,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntelRdt {
    #[serde(default, rename = "closID")]
    clos_id: Option<String>,
    #[serde(default, rename = "l3CacheSchema")]
    l3_cache_schema: Option<String>,
    #[serde(default, rename = "memBwSchema", alias = "memBWSchema")]
    mem_bw_schema: Option<String>,
    #[serde(default)]
    schemata: Vec<String>,
    #[serde(default, rename = "enableMonitoring")]
    enable_monitoring: Option<bool>,
    /// Before CDI 1.1: what `enableMonitoring` replaced.
    #[serde(default, rename = "enableCMT")]
    enable_cmt: Option<bool>,
    #[serde(default, rename = "enableMBM")]
    enable_mbm: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetDevice {
    host_interface_name: String,
    name: String,
}

fn check_env(entries: &[String]) -> std::result::Result<(), String> {
    for entry in entries {
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() && !entry.contains('\0') => {}
            _ => return Err(format!("environment entry {entry:?} is not KEY=VALUE")),
        }
    }
    Ok(())
}

/// Device cgroup permissions as CDI writes them: letters of `rwm` (a
/// letter may repeat), or `none`; `None` if they are neither.
fn cgroup_permissions(permissions: &str) -> Option<String> {
    if permissions == "none" {
        return Some(String::new());
    }
    if permissions.is_empty() || !permissions.chars().all(|c| "rwm".contains(c)) {
        return None;
    }
    Some("rwm".chars().filter(|c| permissions.contains(*c)).collect())
}

impl ContainerEdits {
    fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.hooks.is_empty()
            && self.mounts.is_empty()
            && self.intel_rdt.is_none()
            && self.additional_gids.is_empty()
            && self.net_devices.is_empty()
    }

    fn check(&self) -> std::result::Result<(), String> {
        check_env(&self.env)?;
        for node in &self.device_nodes {
            check_container_path(Path::new(&node.path)).map_err(|e| e.to_string())?;
            if let Some(host) = &node.host_path {
                if !Path::new(host).is_absolute() {
                    return Err(format!("device host path {host:?} is not absolute"));
                }
            }
            if let Some(kind) = node.kind.as_deref().filter(|k| !k.is_empty()) {
                if !["b", "c", "u", "p"].contains(&kind) {
                    return Err(format!(
                        "device {}: type {kind:?} is none of b, c, u and p",
                        node.path
                    ));
                }
            }
            for number in [node.major, node.minor].into_iter().flatten() {
                if number < 0 {
                    return Err(format!("device {}: negative device number", node.path));
                }
            }
            if let Some(permissions) = node.permissions.as_deref().filter(|p| !p.is_empty()) {
                if cgroup_permissions(permissions).is_none() {
                    return Err(format!(
                        "device {}: permissions {permissions:?} are neither of r, w and m nor none",
                        node.path
                    ));
                }
            }
        }
        for hook in &self.hooks {
            if !HOOK_NAMES.contains(&hook.hook_name.as_str()) {
                return Err(format!("unknown hook {:?}", hook.hook_name));
            }
            if !Path::new(&hook.path).is_absolute() {
                return Err(format!("hook path {:?} is not absolute", hook.path));
            }
            check_env(&hook.env).map_err(|why| format!("hook {}: {why}", hook.path))?;
        }
        for mount in &self.mounts {
            if mount.host_path.is_empty() {
                return Err(format!(
                    "mount on {:?} has no host path",
                    mount.container_path
                ));
            }
            check_container_path(Path::new(&mount.container_path)).map_err(|e| e.to_string())?;
        }
        if let Some(clos) = self.intel_rdt.as_ref().and_then(|r| r.clos_id.as_deref()) {
            // A resctrl group's directory name.
            if clos.is_empty() || clos == "." || clos == ".." || clos.contains('/') {
                return Err(format!("intelRdt closID {clos:?} is not a directory name"));
            }
        }
        let mut hosts = HashSet::new();
        let mut names = HashSet::new();
        for device in &self.net_devices {
            if device.host_interface_name.is_empty() || device.name.is_empty() {
                return Err("a network device needs a host interface name and a name".into());
            }
            if !hosts.insert(&device.host_interface_name) || !names.insert(&device.name) {
                return Err(format!(
                    "network device {:?} ({:?}) is given twice",
                    device.host_interface_name, device.name
                ));
            }
        }
        Ok(())
    }
}

impl SpecFile {
    /// Every container edits of the file: its own, then each device's.
    fn all_edits(&self) -> impl Iterator<Item = &ContainerEdits> {
        std::iter::once(&self.container_edits)
            .chain(self.devices.iter().map(|d| &d.container_edits))
    }

    /// The oldest specification version that has every field this file
    /// uses, as the CDI library works it out (a file that names an older
    /// one is invalid).
    fn required_version(&self) -> &'static str {
        let edits: Vec<&ContainerEdits> = self.all_edits().collect();
        let any = |f: &dyn Fn(&ContainerEdits) -> bool| edits.iter().any(|e| f(e));
        if any(&|e| {
            !e.net_devices.is_empty()
                || e.intel_rdt
                    .as_ref()
                    .is_some_and(|r| !r.schemata.is_empty() || r.enable_monitoring == Some(true))
        }) {
            return "1.1.0";
        }
        if any(&|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()) {
            return "0.7.0";
        }
        let class_has_dot = self
            .kind
            .split_once('/')
            .is_some_and(|(_, class)| class.contains('.'));
        if !self.annotations.is_empty()
            || self.devices.iter().any(|d| !d.annotations.is_empty())
            || class_has_dot
        {
            return "0.6.0";
        }
        if self
            .devices
            .iter()
            .any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
            || any(&|e| e.device_nodes.iter().any(|n| n.host_path.is_some()))
        {
            return "0.5.0";
        }
        if any(&|e| {
            e.mounts
                .iter()
                .any(|m| m.kind.as_deref().is_some_and(|k| !k.is_empty()))
        }) {
            return "0.4.0";
        }
        "0.3.0"
    }

    fn check(&self) -> std::result::Result<(), String> {
        let version = self
            .cdi_version
            .strip_prefix('v')
            .unwrap_or(&self.cdi_version);
        let Some(given) = KNOWN_VERSIONS.iter().position(|v| *v == version) else {
            return Err(format!("unknown cdiVersion {:?}", self.cdi_version));
        };
        let needed = self.required_version();
        if KNOWN_VERSIONS.iter().position(|v| *v == needed) > Some(given) {
            return Err(format!(
                "cdiVersion {:?} is older than the {needed} its fields need",
                self.cdi_version
            ));
        }
        parse_qualified_name(&format!("{}=x", self.kind))
            .map_err(|_| format!("kind {:?} is not VENDOR/CLASS", self.kind))?;
        if self.devices.is_empty() {
            return Err("it names no device".into());
        }
        self.container_edits.check()?;
        let mut seen = HashSet::new();
        for device in &self.devices {
            check_device_name(&device.name)
                .map_err(|why| format!("device name {:?} {why}", device.name))?;
            if !seen.insert(device.name.as_str()) {
                return Err(format!("device {:?} is named twice", device.name));
            }
            if device.container_edits.is_empty() {
                return Err(format!("device {:?} edits nothing", device.name));
            }
            device
                .container_edits
                .check()
                .map_err(|why| format!("device {:?}: {why}", device.name))?;
        }
        Ok(())
    }
}

/// A device of some spec file.
#[derive(Debug)]
struct Known {
    /// The index of its directory: a higher one wins.
    priority: usize,
    file: PathBuf,
    /// The spec file's own edits (applied once however many of its devices
    /// a container gets), then the device's.
    spec_edits: Arc<ContainerEdits>,
    edits: ContainerEdits,
}

/// The CDI devices of a set of spec directories.
#[derive(Debug, Default)]
pub struct CdiRegistry {
    devices: BTreeMap<String, Known>,
    /// Devices two spec files of one directory both name, with that
    /// directory's priority: unresolvable unless a later directory names
    /// them.
    conflicts: BTreeMap<String, (usize, Vec<PathBuf>)>,
    /// Spec files (and directories) left out, with why.
    problems: Vec<String>,
}

impl CdiRegistry {
    /// Reads every `*.json` and `*.yaml` spec file of `dirs` (a missing
    /// directory has none), in rising priority. Subdirectories are not
    /// read; a symlink to a file is.
    pub fn load<P: AsRef<Path>>(dirs: &[P]) -> CdiRegistry {
        let mut registry = CdiRegistry::default();
        for (priority, dir) in dirs.iter().enumerate() {
            let dir = dir.as_ref();
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    registry
                        .problems
                        .push(format!("CDI spec directory {}: {e}", dir.display()));
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml")
                    )
                })
                .collect();
            files.sort();
            for file in files {
                match read_spec_file(&file) {
                    Ok(Some(spec)) => registry.add(priority, file, spec),
                    Ok(None) => {}
                    Err(why) => registry
                        .problems
                        .push(format!("CDI spec {}: {why}", file.display())),
                }
            }
        }
        registry
    }

    fn add(&mut self, priority: usize, file: PathBuf, spec: SpecFile) {
        let spec_edits = Arc::new(spec.container_edits);
        for device in spec.devices {
            let name = format!("{}={}", spec.kind, device.name);
            if let Some((at, files)) = self.conflicts.get_mut(&name) {
                if *at == priority {
                    files.push(file.clone());
                    continue;
                }
                self.conflicts.remove(&name);
            }
            if let Some(known) = self.devices.get(&name) {
                if known.priority == priority {
                    let first = known.file.clone();
                    self.devices.remove(&name);
                    self.conflicts
                        .insert(name, (priority, vec![first, file.clone()]));
                    continue;
                }
            }
            self.devices.insert(
                name,
                Known {
                    priority,
                    file: file.clone(),
                    spec_edits: spec_edits.clone(),
                    edits: device.container_edits,
                },
            );
        }
    }

    /// The names of every device this registry can give, sorted.
    pub fn device_names(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    /// The edits that give a container these devices (each named once).
    /// A name that is malformed or that no valid spec file gives is an
    /// error that says why, with the spec files left out.
    pub fn resolve<S: AsRef<str>>(&self, names: &[S]) -> Result<CdiEdits> {
        let mut edits = CdiEdits::default();
        // The spec files whose own edits are applied already.
        let mut applied_specs: HashSet<&Path> = HashSet::new();
        let mut unresolved = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let name = name.as_ref();
            parse_qualified_name(name)?;
            if !seen.insert(name) {
                continue;
            }
            let Some(known) = self.devices.get(name) else {
                match self.conflicts.get(name) {
                    Some((_, files)) => unresolved.push(format!(
                        "{name} (named by {} at the same priority)",
                        files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    )),
                    None => unresolved.push(name.to_string()),
                }
                continue;
            };
            if applied_specs.insert(&known.file) {
                edits
                    .add(&known.spec_edits)
                    .map_err(|e| in_file(e, &known.file))?;
            }
            edits
                .add(&known.edits)
                .map_err(|e| in_file(e, &known.file))?;
        }
        if !unresolved.is_empty() {
            let mut message = format!("unresolvable CDI devices: {}", unresolved.join(", "));
            if !self.problems.is_empty() {
                message.push_str(&format!(
                    " (spec files left out: {})",
                    self.problems.join("; ")
                ));
            }
            return Err(OciError::NotFound(message));
        }
        Ok(edits)
    }
}

fn in_file(e: OciError, file: &Path) -> OciError {
    match e {
        OciError::InvalidArgument(m) => {
            OciError::invalid(format!("CDI spec {}: {m}", file.display()))
        }
        other => other,
    }
}

/// One spec file, checked; `None` for what is not a regular file.
fn read_spec_file(path: &Path) -> std::result::Result<Option<SpecFile>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(format!("larger than {MAX_SPEC_BYTES} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let spec: SpecFile = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else {
        serde_saphyr::from_str(&text).map_err(|e| e.to_string())?
    };
    spec.check()?;
    Ok(Some(spec))
}

/// A hook a CDI device asks for, at one point of the container's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiHook {
    /// The OCI hook name: `prestart`, `createRuntime`, `createContainer`,
    /// `startContainer`, `poststart` or `poststop`.
    pub hook_name: String,
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<i64>,
}

/// A mount a CDI device asks for, given to the runtime as written (its
/// type, when the spec names none, is left for the runtime to take from
/// its options, as `bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiMount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub options: Vec<String>,
    pub kind: Option<String>,
}

/// What some CDI devices change in a container, resolved against the host
/// (a device node's missing type and numbers read from its host path).
#[derive(Debug, Clone, Default)]
pub struct CdiEdits {
    pub env: Vec<String>,
    pub devices: Vec<Device>,
    /// The container paths of `devices` whose spec gave no owner: they get
    /// the container process's uid and gid (when not root's), as the CDI
    /// library gives them.
    unowned: Vec<(PathBuf, bool, bool)>,
    pub mounts: Vec<CdiMount>,
    pub hooks: Vec<CdiHook>,
    pub additional_gids: Vec<u32>,
    intel_rdt: Option<IntelRdt>,
    /// Host interface name → its name in the container.
    net_devices: BTreeMap<String, String>,
}

impl CdiEdits {
    fn add(&mut self, edits: &ContainerEdits) -> Result<()> {
        self.env.extend(edits.env.iter().cloned());
        for node in &edits.device_nodes {
            let device = resolve_node(node)?;
            self.devices.retain(|d| d.path != device.path);
            self.unowned.retain(|(path, ..)| *path != device.path);
            if node.uid.is_none() || node.gid.is_none() {
                self.unowned
                    .push((device.path.clone(), node.uid.is_none(), node.gid.is_none()));
            }
            self.devices.push(device);
        }
        for mount in &edits.mounts {
            let container_path = PathBuf::from(&mount.container_path);
            self.mounts.retain(|m| m.container_path != container_path);
            self.mounts.push(CdiMount {
                host_path: PathBuf::from(&mount.host_path),
                container_path,
                options: mount.options.clone(),
                kind: mount.kind.clone().filter(|k| !k.is_empty()),
            });
        }
        for hook in &edits.hooks {
            self.hooks.push(CdiHook {
                hook_name: hook.hook_name.clone(),
                path: PathBuf::from(&hook.path),
                args: hook.args.clone(),
                env: hook.env.clone(),
                timeout: hook.timeout,
            });
        }
        for gid in &edits.additional_gids {
            // The specification: a gid of 0 is ignored.
            if *gid != 0 && !self.additional_gids.contains(gid) {
                self.additional_gids.push(*gid);
            }
        }
        if let Some(rdt) = &edits.intel_rdt {
            // As the CDI library: a later device's RDT settings replace
            // an earlier one's.
            self.intel_rdt = Some(rdt.clone());
        }
        for device in &edits.net_devices {
            self.net_devices
                .insert(device.host_interface_name.clone(), device.name.clone());
        }
        Ok(())
    }

    /// Gives these edits to a container; call it after every other change
    /// of the options, as containerd applies CDI last: the environment
    /// after the caller's (a CDI variable wins over the image's and the
    /// caller's of the same key), the devices replacing any of the same
    /// path, and on the built spec the mounts (replacing any on the same
    /// path, then every mount ordered by its depth, parents first), hooks,
    /// groups, device owners, RDT and network devices.
    pub fn apply(self, options: &mut SpecOptions) {
        options.env.extend(self.env);
        for device in self.devices {
            options.devices.retain(|d| d.path != device.path);
            options.devices.push(device);
        }
        let (mounts, hooks, gids, unowned, rdt, net_devices) = (
            self.mounts,
            self.hooks,
            self.additional_gids,
            self.unowned,
            self.intel_rdt,
            self.net_devices,
        );
        options.hooks.push(SpecHook(Arc::new(move |spec| {
            add_mounts(spec, &mounts);
            add_hooks(spec, &hooks)?;
            let (uid, gid) = spec
                .process()
                .as_ref()
                .map(|p| (p.user().uid(), p.user().gid()))
                .unwrap_or((0, 0));
            if !gids.is_empty() {
                if let Some(process) = spec.process_mut() {
                    let mut user = process.user().clone();
                    let mut all = user.additional_gids().clone().unwrap_or_default();
                    for gid in &gids {
                        if !all.contains(gid) {
                            all.push(*gid);
                        }
                    }
                    user.set_additional_gids(Some(all));
                    process.set_user(user);
                }
            }
            if let Some(linux) = spec.linux_mut() {
                if let Some(devices) = linux.devices_mut() {
                    for device in devices.iter_mut() {
                        let Some((_, no_uid, no_gid)) =
                            unowned.iter().find(|(path, ..)| path == device.path())
                        else {
                            continue;
                        };
                        if *no_uid && uid > 0 {
                            device.set_uid(Some(uid));
                        }
                        if *no_gid && gid > 0 {
                            device.set_gid(Some(gid));
                        }
                    }
                }
                if let Some(rdt) = &rdt {
                    let mut oci = oci_spec::runtime::LinuxIntelRdt::default();
                    oci.set_clos_id(rdt.clos_id.clone());
                    oci.set_l3_cache_schema(rdt.l3_cache_schema.clone());
                    oci.set_mem_bw_schema(rdt.mem_bw_schema.clone());
                    oci.set_schemata((!rdt.schemata.is_empty()).then(|| rdt.schemata.clone()));
                    oci.set_enable_monitoring(rdt.enable_monitoring);
                    #[allow(deprecated)]
                    {
                        oci.set_enable_cmt(rdt.enable_cmt);
                        oci.set_enable_mbm(rdt.enable_mbm);
                    }
                    linux.set_intel_rdt(Some(oci));
                }
                if !net_devices.is_empty() {
                    let mut all = linux.net_devices().clone().unwrap_or_default();
                    for (host, name) in &net_devices {
                        let mut device = oci_spec::runtime::LinuxNetDevice::default();
                        device.set_name(Some(name.clone()));
                        all.insert(host.clone(), device);
                    }
                    linux.set_net_devices(Some(all));
                }
            }
            Ok(())
        })));
    }
}

/// Adds the CDI mounts, each replacing a mount on its path, then orders
/// every mount by the depth of its path (stable: parents before what is
/// mounted below them), as the CDI library does.
fn add_mounts(spec: &mut oci_spec::runtime::Spec, mounts: &[CdiMount]) {
    if mounts.is_empty() {
        return;
    }
    let mut all = spec.mounts().clone().unwrap_or_default();
    for mount in mounts {
        all.retain(|m| m.destination() != &mount.container_path);
        let mut oci = oci_spec::runtime::Mount::default();
        oci.set_destination(mount.container_path.clone());
        oci.set_source(Some(mount.host_path.clone()));
        oci.set_typ(mount.kind.clone());
        oci.set_options((!mount.options.is_empty()).then(|| mount.options.clone()));
        all.push(oci);
    }
    all.sort_by_key(|m| {
        m.destination()
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count()
    });
    spec.set_mounts(Some(all));
}

fn add_hooks(spec: &mut oci_spec::runtime::Spec, hooks: &[CdiHook]) -> Result<()> {
    if hooks.is_empty() {
        return Ok(());
    }
    let mut all = spec.hooks().clone().unwrap_or_default();
    for hook in hooks {
        let mut oci = oci_spec::runtime::Hook::default();
        oci.set_path(hook.path.clone());
        oci.set_args((!hook.args.is_empty()).then(|| hook.args.clone()));
        oci.set_env((!hook.env.is_empty()).then(|| hook.env.clone()));
        oci.set_timeout(hook.timeout);
        let list = match hook.hook_name.as_str() {
            "prestart" => {
                #[allow(deprecated)]
                let list = all.prestart_mut();
                list
            }
            "createRuntime" => all.create_runtime_mut(),
            "createContainer" => all.create_container_mut(),
            "startContainer" => all.start_container_mut(),
            "poststart" => all.poststart_mut(),
            "poststop" => all.poststop_mut(),
            other => return Err(OciError::invalid(format!("unknown hook {other:?}"))),
        };
        list.get_or_insert_with(Vec::new).push(oci);
    }
    spec.set_hooks(Some(all));
    Ok(())
}

/// A device node as the container gets it: the type and numbers the spec
/// gives, else those of its host path (the container path when none is
/// given; a symlink there is not a device node), which must be of the type
/// given; the file mode the spec gives, else the host node's.
fn resolve_node(node: &DeviceNode) -> Result<Device> {
    let path = PathBuf::from(&node.path);
    let host = PathBuf::from(node.host_path.as_deref().unwrap_or(&node.path));
    if host.components().any(|c| c == Component::ParentDir) {
        return Err(OciError::invalid(format!(
            "device host path {} has ..",
            host.display()
        )));
    }
    let given = node.kind.as_deref().filter(|k| !k.is_empty());
    let given_major = node.major.unwrap_or(0);
    let given_minor = node.minor.unwrap_or(0);
    let host_meta = std::fs::symlink_metadata(&host);
    let complete = given.is_some_and(|kind| given_major != 0 || kind == "p");
    let (kind, major, minor) = if complete {
        (given.unwrap_or("c"), given_major, given_minor)
    } else {
        let meta = host_meta
            .as_ref()
            .map_err(|e| OciError::invalid(format!("device node {}: {e}", host.display())))?;
        let found = if meta.file_type().is_char_device() {
            "c"
        } else if meta.file_type().is_block_device() {
            "b"
        } else if meta.file_type().is_fifo() {
            "p"
        } else {
            return Err(OciError::invalid(format!(
                "{} is not a device node",
                host.display()
            )));
        };
        if let Some(kind) = given.filter(|kind| *kind != found) {
            return Err(OciError::invalid(format!(
                "device {}: type {kind:?} but {} is {found:?}",
                node.path,
                host.display()
            )));
        }
        if found == "p" || given_major != 0 {
            (found, given_major, given_minor)
        } else {
            let rdev = meta.rdev();
            (found, libc_major(rdev) as i64, libc_minor(rdev) as i64)
        }
    };
    let file_mode = node.file_mode.unwrap_or_else(|| {
        host_meta
            .as_ref()
            .map(|m| m.mode() & 0o7777)
            .unwrap_or(0o666)
    });
    let permissions = match node.permissions.as_deref().filter(|p| !p.is_empty()) {
        Some(given) => cgroup_permissions(given).ok_or_else(|| {
            OciError::invalid(format!("device {}: permissions {given:?}", node.path))
        })?,
        None => "rwm".to_string(),
    };
    Ok(Device {
        path,
        kind: kind_of(kind)?,
        major: u64::try_from(major).unwrap_or(0),
        minor: u64::try_from(minor).unwrap_or(0),
        file_mode,
        uid: node.uid.unwrap_or(0),
        gid: node.gid.unwrap_or(0),
        permissions,
    })
}

fn kind_of(kind: &str) -> Result<DeviceKind> {
    match kind {
        "c" => Ok(DeviceKind::Char),
        "u" => Ok(DeviceKind::Unbuffered),
        "b" => Ok(DeviceKind::Block),
        "p" => Ok(DeviceKind::Fifo),
        other => Err(OciError::invalid(format!("device type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const VENDOR_YAML: &str = r#"
cdiVersion: "0.7.0"
kind: berth.test/sink
containerEdits:
  env: ["SINK_SPEC=1"]
devices:
  - name: null0
    containerEdits:
      env: ["SINK=null0"]
      deviceNodes:
        - path: /dev/sink0
          hostPath: /dev/null
          permissions: rw
      mounts:
        - hostPath: /etc/hostname
          containerPath: /etc/sink-host
          options: [ro, nosuid, nodev, bind]
      hooks:
        - hookName: createRuntime
          path: /bin/true
          args: ["true", "one"]
      additionalGids: [4242]
  - name: zero
    containerEdits:
      deviceNodes:
        - path: /dev/sink-zero
          hostPath: /dev/zero
"#;

    #[test]
    fn qualified_names_parse_as_the_cdi_specification_defines_them() {
        assert_eq!(
            parse_qualified_name("nvidia.com/gpu=0").unwrap(),
            ("nvidia.com", "gpu", "0")
        );
        assert!(is_cdi_device_name("vendor.example/class_a=dev:1.a-b"));
        assert!(is_cdi_device_name("vendor.example/class.a=0"));
        for bad in [
            "/dev/null",
            "nvidia.com/gpu",
            "nvidia.com=0",
            "1vendor/gpu=0",
            "vendor/gpu-=0",
            "vendor/9gpu=0",
            "vendor/gpu=",
            "vendor/gpu=a/b",
            "vendor/gpu=-a",
            "vendor/gpu=a.",
            "/gpu=0",
        ] {
            assert!(!is_cdi_device_name(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_yaml_spec_resolves_to_its_nodes_env_mounts_hooks_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sink.yaml", VENDOR_YAML);
        let registry = CdiRegistry::load(&[dir.path()]);
        assert_eq!(
            registry.device_names(),
            ["berth.test/sink=null0", "berth.test/sink=zero"]
        );
        let edits = registry
            .resolve(&["berth.test/sink=null0", "berth.test/sink=zero"])
            .unwrap();
        // The spec's own edits once, then each device's.
        assert_eq!(edits.env, ["SINK_SPEC=1", "SINK=null0"]);
        assert_eq!(edits.devices.len(), 2);
        let sink = &edits.devices[0];
        assert_eq!(sink.path, Path::new("/dev/sink0"));
        assert_eq!(
            (sink.kind, sink.major, sink.minor),
            (DeviceKind::Char, 1, 3)
        );
        assert_eq!(sink.permissions, "rw");
        assert_eq!(sink.file_mode, 0o666);
        assert_eq!((edits.devices[1].major, edits.devices[1].minor), (1, 5));
        assert_eq!(edits.devices[1].permissions, "rwm");
        assert_eq!(edits.mounts.len(), 1);
        assert_eq!(edits.mounts[0].kind, None);
        assert_eq!(edits.mounts[0].container_path, Path::new("/etc/sink-host"));
        assert_eq!(edits.hooks[0].hook_name, "createRuntime");
        assert_eq!(edits.hooks[0].args, ["true", "one"]);
        assert_eq!(edits.additional_gids, [4242]);
    }

    #[test]
    fn applied_edits_reach_the_built_spec() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sink.yaml", VENDOR_YAML);
        let registry = CdiRegistry::load(&[dir.path()]);
        let mut options = SpecOptions::new("default", "c1");
        options.env = vec!["SINK=mine".into()];
        options.user = Some("1000:1001".into());
        // A mount of the caller's on a CDI mount's path is replaced.
        options.mounts.push(crate::MountOption {
            kind: "tmpfs".into(),
            source: String::new(),
            destination: "/etc/sink-host".into(),
            options: Vec::new(),
        });
        registry
            .resolve(&["berth.test/sink=null0"])
            .unwrap()
            .apply(&mut options);
        let image = crate::ImageDefaults {
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        };
        let spec = crate::build_spec(&image, &options, &crate::NoRootfsFiles).unwrap();
        let process = spec.process().as_ref().unwrap();
        let env = process.env().clone().unwrap();
        assert!(env.contains(&"SINK_SPEC=1".to_string()), "{env:?}");
        assert!(
            env.contains(&"SINK=null0".to_string()),
            "CDI's wins: {env:?}"
        );
        assert!(!env.contains(&"SINK=mine".to_string()), "{env:?}");
        let gids = process.user().additional_gids().clone().unwrap_or_default();
        assert!(gids.contains(&4242), "{gids:?}");
        let linux = spec.linux().as_ref().unwrap();
        let devices = linux.devices().clone().unwrap();
        assert_eq!(devices[0].path(), Path::new("/dev/sink0"));
        // No owner in the spec: the container process's.
        assert_eq!(
            (devices[0].uid(), devices[0].gid()),
            (Some(1000), Some(1001))
        );
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        let last = rules.last().unwrap();
        assert_eq!((last.major(), last.minor()), (Some(1), Some(3)));
        assert_eq!(last.access().as_deref(), Some("rw"));
        let mounts = spec.mounts().clone().unwrap();
        let on_path: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/sink-host"))
            .collect();
        assert_eq!(on_path.len(), 1, "{mounts:?}");
        assert_eq!(
            on_path[0].source().as_deref(),
            Some(Path::new("/etc/hostname"))
        );
        assert_eq!(on_path[0].typ(), &None);
        // Parents before what is mounted below them.
        let depths: Vec<usize> = mounts
            .iter()
            .map(|m| m.destination().components().count())
            .collect();
        assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{mounts:?}");
        let hooks = spec.hooks().clone().unwrap();
        let create = hooks.create_runtime().clone().unwrap();
        assert_eq!(create[0].path(), Path::new("/bin/true"));
    }

    #[test]
    fn a_later_directory_wins_and_one_directory_naming_a_device_twice_loses_it() {
        let low = tempfile::tempdir().unwrap();
        let high = tempfile::tempdir().unwrap();
        let spec = |env: &str, name: &str| {
            format!(
                r#"{{"cdiVersion":"0.5.0","kind":"berth.test/x","devices":[{{"name":"{name}","containerEdits":{{"env":["{env}"]}}}}]}}"#
            )
        };
        write(low.path(), "a.json", &spec("FROM=low", "one"));
        write(high.path(), "a.json", &spec("FROM=high", "one"));
        write(low.path(), "b.json", &spec("FROM=b", "two"));
        write(low.path(), "c.json", &spec("FROM=c", "two"));
        let registry = CdiRegistry::load(&[low.path(), high.path()]);
        assert_eq!(
            registry.resolve(&["berth.test/x=one"]).unwrap().env,
            ["FROM=high"]
        );
        let err = registry.resolve(&["berth.test/x=two"]).unwrap_err();
        assert!(matches!(err, OciError::NotFound(_)), "{err}");
        assert!(err.to_string().contains("same priority"), "{err}");
        // A higher directory naming it resolves the conflict.
        write(high.path(), "b.json", &spec("FROM=high-b", "two"));
        let registry = CdiRegistry::load(&[low.path(), high.path()]);
        assert_eq!(
            registry.resolve(&["berth.test/x=two"]).unwrap().env,
            ["FROM=high-b"]
        );
    }

    #[test]
    fn bad_spec_files_are_left_out_and_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            (
                "version.json",
                r#"{"cdiVersion":"9.0.0","kind":"a.b/c","devices":[{"name":"d"}]}"#,
            ),
            (
                "kind.json",
                r#"{"cdiVersion":"0.6.0","kind":"nokind","devices":[{"name":"d"}]}"#,
            ),
            (
                "twice.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/c","devices":[{"name":"d","containerEdits":{"env":["A=1"]}},{"name":"d","containerEdits":{"env":["A=2"]}}]}"#,
            ),
            (
                "relative.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/e","devices":[{"name":"d","containerEdits":{"deviceNodes":[{"path":"dev/x"}]}}]}"#,
            ),
            (
                "escape.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/f","devices":[{"name":"d","containerEdits":{"mounts":[{"hostPath":"/x","containerPath":"/a/../../etc"}]}}]}"#,
            ),
            (
                "hook.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/g","devices":[{"name":"d","containerEdits":{"hooks":[{"hookName":"whenever","path":"/bin/true"}]}}]}"#,
            ),
            (
                "env.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/h","devices":[{"name":"d","containerEdits":{"env":["=x"]}}]}"#,
            ),
            ("broken.yaml", "cdiVersion: [\n"),
            (
                "unknown.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/i","devices":[{"name":"d","containerEdit":{"env":["A=1"]}}]}"#,
            ),
            (
                "empty.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/j","devices":[{"name":"d"}]}"#,
            ),
            (
                "perms.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/k","devices":[{"name":"d","containerEdits":{"deviceNodes":[{"path":"/dev/x","permissions":"rwx"}]}}]}"#,
            ),
            (
                "old.json",
                r#"{"cdiVersion":"0.6.0","kind":"a.b/l","devices":[{"name":"d","containerEdits":{"additionalGids":[5]}}]}"#,
            ),
        ] {
            write(dir.path(), name, text);
        }
        write(dir.path(), "ignored.txt", "not a spec");
        let registry = CdiRegistry::load(&[dir.path()]);
        assert!(
            registry.device_names().is_empty(),
            "{:?}",
            registry.device_names()
        );
        assert_eq!(registry.problems.len(), 12, "{:?}", registry.problems);
        assert!(
            registry
                .problems
                .iter()
                .any(|p| p.contains("old.json: cdiVersion \"0.6.0\" is older than the 0.7.0")),
            "{:?}",
            registry.problems
        );
        let err = registry.resolve(&["a.b/c=d"]).unwrap_err().to_string();
        assert!(err.contains("unresolvable CDI devices: a.b/c=d"), "{err}");
        assert!(err.contains("version.json: unknown cdiVersion"), "{err}");
        assert!(err.contains("escape.json"), "{err}");
        let err = registry.resolve(&["not a name"]).unwrap_err();
        assert!(matches!(err, OciError::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn a_node_whose_host_path_is_not_a_device_or_disagrees_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "n.json",
            &r#"{"cdiVersion":"0.6.0","kind":"a.b/n","devices":[
                {"name":"file","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/etc/hostname"}]}},
                {"name":"block","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/dev/null","type":"b"}]}},
                {"name":"given","containerEdits":{"deviceNodes":[{"path":"/dev/x","type":"c","major":240,"minor":7,"fileMode":384}]}},
                {"name":"gone","containerEdits":{"deviceNodes":[{"path":"/dev/berth-no-such-node"}]}},
                {"name":"unbuffered","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/dev/null","type":"u"}]}},
                {"name":"linked","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"LINK"}]}},
                {"name":"repeated","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/dev/null","permissions":"wrw"}]}},
                {"name":"unruled","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/dev/null","permissions":"none"}]}}
            ]}"#
            .replace("LINK", dir.path().join("null-link").to_str().unwrap()),
        );
        std::os::unix::fs::symlink("/dev/null", dir.path().join("null-link")).unwrap();
        let registry = CdiRegistry::load(&[dir.path()]);
        let err = registry.resolve(&["a.b/n=file"]).unwrap_err().to_string();
        assert!(err.contains("not a device node"), "{err}");
        let err = registry.resolve(&["a.b/n=block"]).unwrap_err().to_string();
        assert!(err.contains("type \"b\" but /dev/null is \"c\""), "{err}");
        let err = registry.resolve(&["a.b/n=gone"]).unwrap_err().to_string();
        assert!(err.contains("/dev/berth-no-such-node"), "{err}");
        let err = registry
            .resolve(&["a.b/n=unbuffered"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("type \"u\" but /dev/null is \"c\""), "{err}");
        // A symlink is not followed to a device node.
        let err = registry.resolve(&["a.b/n=linked"]).unwrap_err().to_string();
        assert!(err.contains("not a device node"), "{err}");
        let repeated = registry.resolve(&["a.b/n=repeated"]).unwrap();
        assert_eq!(repeated.devices[0].permissions, "rw");
        let unruled = registry.resolve(&["a.b/n=unruled"]).unwrap();
        assert_eq!(unruled.devices[0].permissions, "");
        // Type and numbers given: nothing is read from the host.
        let given = registry.resolve(&["a.b/n=given"]).unwrap();
        let d = &given.devices[0];
        assert_eq!(
            (d.kind, d.major, d.minor, d.file_mode),
            (DeviceKind::Char, 240, 7, 0o600)
        );
    }
}
