//! Containers on CNI networks: `berth run --net NAME -p HOST:CTR`, as
//! `nerdctl run --net bridge -p` does it, and `berth network ls`.
//!
//! The network is attached and detached by OCI hooks that runc runs, each
//! calling `berth internal oci-hook`: `createRuntime` once the container's
//! namespaces exist (attach, with its published ports), `poststop` when its
//! task is deleted (detach). A detached container's network therefore goes
//! with its task whichever client deletes it, and a `berth run` killed half
//! way leaves nothing the task's deletion does not remove.
//!
//! What the hooks share with the CLI lives in one directory per container,
//! `RUN_DIR/networks/NAMESPACE/ID`: the `resolv.conf` and `hosts` bound
//! into the container, the caller's extra host entries, and the attachment
//! (each plugin's result, handed back to the plugins on detach). `berth rm`
//! removes it with the container.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use berth_network::{Attachment, Cni, DnsConfig, NetworkList, PodNetwork, PortMapping};
use berth_oci::{MountOption, SpecHook};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::global::Global;
use crate::output::{self, Format};

/// The spec annotation (and container label) naming the container's CNI
/// network.
pub const NETWORK_ANNOTATION: &str = "berth.io/network";
/// The spec annotation (and container label) with its published ports, as
/// CNI's `portMappings` JSON.
pub const PORTS_ANNOTATION: &str = "berth.io/ports";
/// The most of runc's state the hook reads from its stdin.
const MAX_STATE: u64 = 1 << 20;
/// The most of a bundle's config.json the hook reads.
const MAX_CONFIG: u64 = 16 << 20;
/// How long runc lets a hook run: the CNI plugins' own limit.
const HOOK_TIMEOUT_SECONDS: i64 = 60;

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// The CNI networks of the configuration directory (--cni-conf-dir);
    /// `bridge` is listed before its first use too.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
}

/// What `berth run` asks of a container's network beyond its name.
#[derive(Debug, Clone, Default)]
pub struct NetworkRequest {
    /// The CNI network list's name.
    pub name: String,
    pub ports: Vec<PortMapping>,
    pub dns: DnsConfig,
    /// `--add-host` entries: (name, address).
    pub extra_hosts: Vec<(String, String)>,
}

/// What the hooks read back from the container's network directory.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Settings {
    extra_hosts: Vec<(String, String)>,
}

impl Global {
    /// The CNI plugins and configuration the CLI uses.
    pub fn cni(&self) -> Cni {
        Cni {
            conf_dir: self.cni_conf_dir.clone(),
            bin_dirs: std::env::split_paths(&self.cni_path).collect(),
        }
    }

    /// The directory of one container's network files.
    pub fn network_dir(&self, namespace: &str, id: &str) -> PathBuf {
        self.run_dir.join("networks").join(namespace).join(id)
    }
}

/// The id CNI knows the container by: unique across berth's namespaces
/// (container ids repeat between namespaces, and no separator is free of
/// both), and of the characters CNI allows.
fn cni_container_id(namespace: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The network list called `name`; `bridge`, when the configuration
/// directory has none by that name, is written there first (berth's
/// default bridge network, with its addresses leased under the run
/// directory so that a reboot frees them with the containers).
pub fn find_or_make_network(global: &Global, name: &str) -> Result<NetworkList> {
    let cni = global.cni();
    if let Some(list) = cni.network_named(name)? {
        return Ok(list);
    }
    if name != berth_network::DEFAULT_BRIDGE_NETWORK {
        bail!(
            "no CNI network {name:?} in {} (berth network ls lists them)",
            cni.conf_dir.display()
        );
    }
    let config = berth_network::bridge_conflist(
        name,
        berth_network::DEFAULT_BRIDGE_DEVICE,
        berth_network::DEFAULT_BRIDGE_SUBNET,
        &global.run_dir.join("cni").join("ipam"),
    );
    let path = cni.conf_dir.join(format!("berth-{name}.conflist"));
    let bytes = serde_json::to_vec_pretty(&config).context("encoding the network")?;
    write_replacing(&path, &bytes)?;
    cni.network_named(name)?
        .with_context(|| format!("{} does not define {name:?}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file renamed over it, so a
/// reader sees the old file or the new one, whole.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

/// Readies a container for `request`'s network: checks that the network
/// and its plugins exist, writes the container's `resolv.conf` and `hosts`
/// and returns the mounts that bind them (unless the caller mounts those
/// paths), the annotations the hooks read, and the hooks themselves.
pub fn prepare(
    global: &Global,
    namespace: &str,
    id: &str,
    request: &NetworkRequest,
    caller_mounts: &[MountOption],
) -> Result<(Vec<MountOption>, HashMap<String, String>, SpecHook)> {
    let network = find_or_make_network(global, &request.name)?;
    let missing = global.cni().missing_plugins(&network);
    if !missing.is_empty() {
        bail!(
            "network {:?} needs CNI plugins that are not in {}: {} (Debian: containernetworking-plugins)",
            request.name,
            global.cni_path.to_string_lossy(),
            missing.join(", ")
        );
    }
    let dir = global.network_dir(namespace, id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv = berth_network::container_resolv_conf(&host_resolv, &request.dns);
    std::fs::write(dir.join("resolv.conf"), resolv).context("writing resolv.conf")?;
    // Addresses come with the attachment; the hook rewrites this file then.
    let hosts = berth_network::container_hosts("", &[], &request.extra_hosts);
    std::fs::write(dir.join("hosts"), hosts).context("writing hosts")?;
    let settings = Settings {
        extra_hosts: request.extra_hosts.clone(),
    };
    write_replacing(&dir.join("settings.json"), &serde_json::to_vec(&settings)?)?;

    let mut mounts = Vec::new();
    for file in ["resolv.conf", "hosts"] {
        let destination = format!("/etc/{file}");
        if caller_mounts.iter().any(|m| m.destination == destination) {
            continue;
        }
        mounts.push(MountOption {
            kind: "bind".to_string(),
            source: dir.join(file).display().to_string(),
            destination,
            options: vec!["rbind".to_string(), "rprivate".to_string()],
        });
    }
    let annotations = HashMap::from([
        (NETWORK_ANNOTATION.to_string(), request.name.clone()),
        (
            PORTS_ANNOTATION.to_string(),
            serde_json::to_string(&request.ports)?,
        ),
    ]);
    Ok((mounts, annotations, oci_hooks(global, namespace)?))
}

/// The spec's createRuntime and poststop hooks: this binary's `internal
/// oci-hook`, with the settings that find the same networks and files.
fn oci_hooks(global: &Global, namespace: &str) -> Result<SpecHook> {
    use oci_spec::runtime::{HookBuilder, HooksBuilder};
    let exe = std::env::current_exe().context("finding the berth binary for the OCI hooks")?;
    let args = |event: &str| -> Vec<String> {
        vec![
            "berth".to_string(),
            "--namespace".to_string(),
            namespace.to_string(),
            "--run-dir".to_string(),
            global.run_dir.display().to_string(),
            "--cni-conf-dir".to_string(),
            global.cni_conf_dir.display().to_string(),
            "--cni-path".to_string(),
            global.cni_path.to_string_lossy().into_owned(),
            "internal".to_string(),
            "oci-hook".to_string(),
            event.to_string(),
        ]
    };
    // runc gives a hook only the environment the spec names: the caller's
    // PATH (the plugins themselves run with berth_network's PLUGIN_PATH).
    let env = vec![format!(
        "PATH={}",
        std::env::var("PATH").unwrap_or_else(|_| berth_network::PLUGIN_PATH.into())
    )];
    let hook = |event: &str| {
        HookBuilder::default()
            .path(exe.clone())
            .args(args(event))
            .env(env.clone())
            .timeout(HOOK_TIMEOUT_SECONDS)
            .build()
    };
    let hooks = HooksBuilder::default()
        .create_runtime(vec![hook("create-runtime")?])
        .poststop(vec![hook("poststop")?])
        .build()?;
    Ok(SpecHook(Arc::new(
        move |spec: &mut oci_spec::runtime::Spec| {
            // The caller's hooks, if any, run before berth's.
            let mut merged = spec.hooks().clone().unwrap_or_default();
            let mut create_runtime = merged.create_runtime().clone().unwrap_or_default();
            create_runtime.extend(hooks.create_runtime().clone().unwrap_or_default());
            merged.set_create_runtime(Some(create_runtime));
            let mut poststop = merged.poststop().clone().unwrap_or_default();
            poststop.extend(hooks.poststop().clone().unwrap_or_default());
            merged.set_poststop(Some(poststop));
            spec.set_hooks(Some(merged));
            Ok(())
        },
    )))
}

/// How long a container's network directory may be without a container
/// before a `berth run` on a network removes it. A `berth run` or `berth
/// create` killed after writing the files and before recording its
/// container leaves them; a live one records its container within seconds
/// of writing them, and is never this old.
const UNRECORDED_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the network directories in `namespace` that no recorded
/// container has and that are older than [`UNRECORDED_GRACE`]; returns how
/// many. Housekeeping for every `berth run --net`: a caller ignores its
/// failure.
pub async fn remove_unrecorded(
    global: &Global,
    namespace: &str,
    containers: &berth_client::RemoteContainers,
) -> Result<usize> {
    use berth_metadata::ContainerStore;
    let dir = global.run_dir.join("networks").join(namespace);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let now = std::time::SystemTime::now();
    let mut old = Vec::new();
    for entry in entries {
        let entry = entry?;
        let modified = entry.metadata()?.modified()?;
        if now.duration_since(modified).unwrap_or_default() >= UNRECORDED_GRACE {
            old.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if old.is_empty() {
        return Ok(0);
    }
    let recorded: std::collections::HashSet<String> = containers
        .list(namespace, &[])
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut removed = 0;
    for id in old.iter().filter(|id| !recorded.contains(*id)) {
        if berth_ids::validate_id(id).is_ok() {
            forget(global, namespace, id)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a container's network files (`berth rm`); nothing when it has
/// none.
pub fn forget(global: &Global, namespace: &str, id: &str) -> Result<()> {
    let dir = global.network_dir(namespace, id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

#[derive(Debug, clap::Args)]
pub struct OciHookArgs {
    /// create-runtime (attach) or poststop (detach).
    pub event: String,
}

/// The part of runc's state a hook gets on stdin that berth reads.
#[derive(Debug, Deserialize)]
struct HookState {
    id: String,
    #[serde(default)]
    pid: i32,
    #[serde(default)]
    bundle: PathBuf,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// `berth internal oci-hook EVENT`: attaches or detaches the container
/// whose runc state is on stdin.
pub async fn oci_hook(global: &Global, args: OciHookArgs) -> Result<()> {
    let ns = global.namespace()?;
    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_STATE + 1)
        .read_to_end(&mut input)
        .context("reading the container's state")?;
    if input.len() as u64 > MAX_STATE {
        bail!("the container's state is larger than {MAX_STATE} bytes");
    }
    let state: HookState =
        serde_json::from_slice(&input).context("the container's state is not runc's JSON")?;
    berth_ids::validate_id(&state.id)?;
    let name = state
        .annotations
        .get(NETWORK_ANNOTATION)
        .with_context(|| format!("{} has no {NETWORK_ANNOTATION} annotation", state.id))?;
    let ports: Vec<PortMapping> = match state.annotations.get(PORTS_ANNOTATION) {
        Some(text) => serde_json::from_str(text)
            .with_context(|| format!("{PORTS_ANNOTATION} {text:?} is not a port list"))?,
        None => Vec::new(),
    };
    let cni = global.cni();
    let network = cni
        .network_named(name)?
        .with_context(|| format!("no CNI network {name:?} in {}", cni.conf_dir.display()))?;
    let dir = global.network_dir(ns, &state.id);
    let attachment_path = dir.join("attachment.json");
    let mut pod = PodNetwork {
        id: cni_container_id(ns, &state.id),
        netns: PathBuf::new(),
        pod_name: state.id.clone(),
        pod_namespace: ns.to_string(),
        pod_uid: String::new(),
        port_mappings: ports,
    };
    match args.event.as_str() {
        "create-runtime" => {
            if state.pid <= 0 {
                bail!("the container's state has no pid");
            }
            pod.netns = PathBuf::from(format!("/proc/{}/ns/net", state.pid));
            let attachment = cni
                .attach(&network, &pod)
                .await
                .with_context(|| format!("attaching {} to network {name}", state.id))?;
            let recorded = serde_json::to_vec(&attachment)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| write_replacing(&attachment_path, &bytes))
                .and_then(|()| write_hosts(&dir, &state.bundle, &attachment));
            if let Err(e) = recorded {
                let _ = cni.detach(&network, &pod, Some(&attachment)).await;
                return Err(e);
            }
            Ok(())
        }
        "poststop" => {
            // The namespace went with the process: plugins release the
            // address and the port rules by the container's id alone.
            let attachment: Option<Attachment> = std::fs::read(&attachment_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            cni.detach(&network, &pod, attachment.as_ref())
                .await
                .with_context(|| format!("detaching {} from network {name}", state.id))?;
            match std::fs::remove_file(&attachment_path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("removing {}", attachment_path.display())),
            }
        }
        other => bail!("oci-hook {other:?}: create-runtime or poststop"),
    }
}

/// Rewrites the container's `hosts` in place (the container's bind mount
/// holds this inode, so a renamed file would not be seen) with its
/// addresses under its hostname, read from the bundle's spec.
fn write_hosts(dir: &Path, bundle: &Path, attachment: &Attachment) -> Result<()> {
    let settings: Settings = std::fs::read(dir.join("settings.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut config = Vec::new();
    std::fs::File::open(bundle.join("config.json"))
        .and_then(|file| file.take(MAX_CONFIG).read_to_end(&mut config))
        .with_context(|| format!("reading {}/config.json", bundle.display()))?;
    let hostname = serde_json::from_slice::<serde_json::Value>(&config)
        .ok()
        .and_then(|spec| spec["hostname"].as_str().map(str::to_string))
        .unwrap_or_default();
    let ips = if hostname.is_empty() {
        Vec::new()
    } else {
        attachment.ips()
    };
    let text = berth_network::container_hosts(&hostname, &ips, &settings.extra_hosts);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dir.join("hosts"))
        .context("opening the container's hosts")?;
    file.write_all(text.as_bytes())
        .context("writing the container's hosts")
}

/// The addresses a container got from its network, if it is attached.
pub fn addresses(global: &Global, namespace: &str, id: &str) -> Vec<String> {
    std::fs::read(global.network_dir(namespace, id).join("attachment.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Attachment>(&bytes).ok())
        .map(|a| a.ips())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct NetworkRow {
    name: String,
    plugins: String,
    file: String,
}

pub fn run(global: &Global, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Ls { quiet } => {
            let mut lists = global.cni().networks()?;
            let default = berth_network::DEFAULT_BRIDGE_NETWORK;
            let mut rows: Vec<NetworkRow> = lists
                .drain(..)
                .map(|list| NetworkRow {
                    name: list.name,
                    plugins: list
                        .plugins
                        .iter()
                        .filter_map(|p| p["type"].as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    file: list.source.display().to_string(),
                })
                .collect();
            if !rows.iter().any(|r| r.name == default) {
                rows.push(NetworkRow {
                    name: default.to_string(),
                    plugins: "bridge,portmap,firewall".to_string(),
                    file: "(made on first use)".to_string(),
                });
            }
            for name in ["host", "none"] {
                rows.push(NetworkRow {
                    name: name.to_string(),
                    plugins: String::new(),
                    file: String::new(),
                });
            }
            if quiet {
                for row in &rows {
                    println!("{}", row.name);
                }
                return Ok(());
            }
            match global.format {
                Format::Json => output::json(&rows),
                Format::Table => {
                    let table: Vec<Vec<String>> = rows
                        .iter()
                        .map(|r| vec![r.name.clone(), r.plugins.clone(), r.file.clone()])
                        .collect();
                    output::table(&["NAME", "PLUGINS", "FILE"], &table)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cni_ids_differ_where_namespace_and_id_would_join_alike() {
        let a = cni_container_id("a-b", "c");
        let b = cni_container_id("a", "b-c");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
