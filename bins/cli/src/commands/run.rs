//! `berth run IMAGE [CMD...]`: a container from an image, run to its end
//! (or detached), as `nerdctl run` does it. The container is made by
//! [`berth_tasks::container`], its task by berth-taskd; this is the flags,
//! the standard streams and the signals.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_client::{
    RemoteContainers, RemoteContentStore, RemoteImages, RemoteLeases, RemoteSnapshotter,
    RemoteTasks,
};
use berth_errdefs::ErrorKind;
use berth_metadata::{ContainerStore, Runtime};
use berth_network::{DnsConfig, PortMapping};
use berth_oci::{
    container_devices, is_cdi_device_name, CdiRegistry, CgroupDriver, DeviceRequest, MountOption,
    NetworkMode, Seccomp, SpecOptions, DEFAULT_CDI_SPEC_DIRS,
};
use berth_tasks::container::{
    create_container_then, remove_container_and_snapshot, ContainerServices, ImageRead,
    NewContainer, DEFAULT_RUNTIME,
};
use berth_tasks::{CreateTask, KillProcess, Stdio, Tasks};

use super::network::NetworkRequest;
use super::snapshots::SnapshotterArg;
use crate::global::Global;
use crate::stdio::{new_id, Fifos};

/// The label that records where a detached container's output goes.
pub const LOG_URI_LABEL: &str = "berth.io/log-uri";
/// Where detached containers log unless BERTH_LOG_DIR says otherwise.
const LOG_ROOT: &str = "/var/lib/berth/logs";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

#[derive(Debug, clap::Args)]
pub struct ContainerArgs {
    /// The container's id (default: 16 random hex digits).
    #[arg(long)]
    pub name: Option<String>,
    /// The shim: io.containerd.NAME.VERSION or an absolute path.
    #[arg(long, default_value = DEFAULT_RUNTIME)]
    pub runtime: String,
    #[command(flatten)]
    pub snapshotter: SnapshotterArg,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable KEY=VALUE (KEY alone: this environment's
    /// value); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A file of KEY=VALUE lines.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(
        short = 'w',
        long = "workdir",
        visible_alias = "cwd",
        value_name = "DIR"
    )]
    pub workdir: Option<String>,
    /// USER[:GROUP], by name or number.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Replaces the image's entrypoint (and its Cmd).
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Every capability, every host device, no seccomp, no masked paths.
    #[arg(long)]
    pub privileged: bool,
    /// A host device, or every device below a host directory, in the
    /// container: HOST[:CONTAINER[:PERMISSIONS]] (permissions of r, w, m;
    /// default rwm); or a CDI device VENDOR/CLASS=NAME, as the CDI spec
    /// files of --cdi-spec-dir describe it; repeatable.
    #[arg(long, value_name = "HOST[:CONTAINER[:rwm]]|VENDOR/CLASS=NAME")]
    pub device: Vec<String>,
    /// Where CDI spec files are (*.json, *.yaml), in rising priority;
    /// repeatable [default: /etc/cdi /var/run/cdi].
    #[arg(long, value_name = "DIR")]
    pub cdi_spec_dir: Vec<PathBuf>,
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges[=false].
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// type=bind,src=DIR,dst=DIR[,ro] or type=tmpfs,dst=DIR.
    #[arg(long, value_name = "MOUNT")]
    pub mount: Vec<String>,
    /// SRC:DST[:ro|rw]: a bind mount.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Run in a user namespace of its own: root inside is the first
    /// subordinate id of USER in /etc/subuid (and of GROUP, default USER,
    /// in /etc/subgid), as with `nerdctl run --userns-remap`. The image's
    /// layers are mounted id-mapped; volumes are not (their files show as
    /// 65534 unless owned by mapped ids).
    #[arg(long, value_name = "USER[:GROUP]")]
    pub userns_remap: Option<String>,
    /// none (own network namespace, loopback only), host, or a CNI network
    /// by name (`berth network ls`): `bridge` is berth's default bridge,
    /// made on first use.
    #[arg(long = "net", visible_alias = "network", default_value = "none")]
    pub network: String,
    /// Publish a container port on the host (CNI network only):
    /// [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp|sctp], ports or equal
    /// ranges; repeatable.
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub publish: Vec<String>,
    /// A nameserver for the container's resolv.conf (CNI network only);
    /// repeatable.
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// A DNS search domain (CNI network only); repeatable.
    #[arg(long, value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// A resolv.conf option (CNI network only); repeatable.
    #[arg(long, value_name = "OPTION")]
    pub dns_option: Vec<String>,
    /// An /etc/hosts entry NAME:IP (CNI network only); repeatable.
    #[arg(long, value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// cgroupfs or systemd.
    #[arg(long, default_value = "cgroupfs")]
    pub cgroup_manager: String,
    /// The cgroup to put the container's under: an absolute path under
    /// cgroupfs (the container's is PARENT/ID), a NAME.slice under systemd
    /// (default: /berth/NAMESPACE, berth.slice).
    #[arg(long, value_name = "PARENT")]
    pub cgroup_parent: Option<String>,
    /// host or private: the container's own cgroup namespace or the
    /// host's (default, as nerdctl's: private on a cgroup v2 host, the
    /// host's on v1 and hybrid hosts).
    #[arg(long, value_name = "MODE", value_parser = ["host", "private"])]
    pub cgroupns: Option<String>,
    /// Label KEY=VALUE on the container record; repeatable.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// An image name (pulled or imported), or a manifest digest.
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the container when it exits (also when interrupted).
    #[arg(long)]
    pub rm: bool,
    /// Start it and print its id; its output goes to a log file (see
    /// `berth logs`).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Pull the image: when missing, always, or never.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    #[command(flatten)]
    pub container: ContainerArgs,
}

/// The memory, CPU and pids limits, as `berth run` and `berth update` take
/// them.
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// Memory limit: bytes, or with a k, m or g suffix.
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPUs the container may use (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    #[arg(long)]
    pub pids_limit: Option<i64>,
}

impl LimitArgs {
    /// The limits given (checked when they are applied to a spec).
    pub fn limits(&self) -> Result<berth_oci::Limits> {
        Ok(berth_oci::Limits {
            memory_bytes: self.memory.as_deref().map(parse_bytes).transpose()?,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
        })
    }
}

fn parse_bytes(value: &str) -> Result<i64> {
    let lower = value.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let n: i64 = digits
        .parse()
        .with_context(|| format!("{value:?}: not a size"))?;
    let multiplier: i64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => bail!("{value:?}: a size is a number with an optional k, m or g"),
    };
    n.checked_mul(multiplier)
        .with_context(|| format!("{value:?}: too large"))
}

fn environment(args: &ContainerArgs) -> Result<Vec<String>> {
    let mut env = Vec::new();
    for file in &args.env_file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            env.push(line.to_string());
        }
    }
    env.extend(args.env.iter().cloned());
    env.into_iter()
        .filter_map(|entry| {
            if entry.contains('=') {
                Some(Ok(entry))
            } else if entry.is_empty() {
                Some(Err(anyhow::anyhow!("an empty environment variable")))
            } else {
                // KEY alone: this environment's value, if it has one.
                std::env::var(&entry)
                    .ok()
                    .map(|v| Ok(format!("{entry}={v}")))
            }
        })
        .collect()
}

impl ContainerArgs {
    /// The spec options these flags ask for.
    pub fn spec_options(&self, global: &Global, namespace: &str, id: &str) -> Result<SpecOptions> {
        let mut options = SpecOptions::new(namespace, id);
        options.args = self.args.clone();
        options.entrypoint = self.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                Vec::new()
            } else {
                vec![e.clone()]
            }
        });
        options.env = environment(self)?;
        options.cwd = self.workdir.clone();
        options.user = self.user.clone();
        options.hostname = self.hostname.clone();
        options.terminal = self.tty;
        options.read_only_rootfs = self.read_only;
        options.privileged = self.privileged;
        options.cap_add = self.cap_add.clone();
        options.cap_drop = self.cap_drop.clone();
        for opt in &self.security_opt {
            match opt.split_once('=') {
                Some(("seccomp", "unconfined")) => options.seccomp = Seccomp::Unconfined,
                Some(("seccomp", path)) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading the seccomp profile {path}"))?;
                    options.seccomp = Seccomp::parse_profile_json(&bytes)?;
                }
                Some(("no-new-privileges", value)) => {
                    options.no_new_privileges = value
                        .parse()
                        .with_context(|| format!("--security-opt {opt}"))?
                }
                None if opt == "no-new-privileges" => options.no_new_privileges = true,
                _ => bail!("--security-opt {opt:?}: berth knows seccomp=unconfined|PROFILE.json and no-new-privileges[=true|false]"),
            }
        }
        for mount in &self.mount {
            options.mounts.push(MountOption::parse_mount_flag(mount)?);
        }
        for volume in &self.volume {
            options.mounts.push(MountOption::parse_volume_flag(volume)?);
        }
        options.limits = self.limits.limits()?;
        if let Some(remap) = &self.userns_remap {
            options.user_namespace = Some(super::userns::remap(
                remap,
                Path::new(super::userns::SUBUID),
                Path::new(super::userns::SUBGID),
            )?);
        }
        let (cdi_names, host_devices): (Vec<&String>, Vec<&String>) =
            self.device.iter().partition(|d| is_cdi_device_name(d));
        let requests = host_devices
            .into_iter()
            .map(|d| DeviceRequest::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        options.devices = container_devices(self.privileged, &requests)?;
        let cni_only = [
            ("--publish", self.publish.is_empty()),
            ("--dns", self.dns.is_empty()),
            ("--dns-search", self.dns_search.is_empty()),
            ("--dns-option", self.dns_option.is_empty()),
            ("--add-host", self.add_host.is_empty()),
        ];
        options.network = match self.network.as_str() {
            "none" | "host" => {
                if let Some((flag, _)) = cni_only.iter().find(|(_, unused)| !unused) {
                    bail!(
                        "{flag} needs a CNI network (--net bridge), not --net {}",
                        self.network
                    );
                }
                if self.network == "host" {
                    NetworkMode::Host
                } else {
                    NetworkMode::None
                }
            }
            name => {
                let request = self.network_request(name)?;
                let (mounts, annotations, hooks) =
                    super::network::prepare(global, namespace, id, &request, &options.mounts)?;
                options.mounts.extend(mounts);
                options.annotations.extend(annotations);
                options.hooks.push(hooks);
                NetworkMode::None
            }
        };
        options.cgroup = match self.cgroup_manager.as_str() {
            "cgroupfs" => CgroupDriver::Cgroupfs,
            "systemd" => CgroupDriver::Systemd,
            other => bail!("--cgroup-manager {other:?}: cgroupfs or systemd"),
        };
        options.cgroup_parent = self.cgroup_parent.clone();
        options.cgroupns = self
            .cgroupns
            .as_deref()
            .map(berth_oci::CgroupNamespace::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        // CDI's edits come last, as containerd applies them: its
        // environment wins, its mounts replace any on the same path.
        if !cdi_names.is_empty() {
            let registry = if self.cdi_spec_dir.is_empty() {
                CdiRegistry::load(DEFAULT_CDI_SPEC_DIRS)
            } else {
                CdiRegistry::load(&self.cdi_spec_dir)
            };
            registry.resolve(&cdi_names)?.apply(&mut options);
        }
        Ok(options)
    }

    /// What `--net NAME` and its flags ask of a CNI network.
    fn network_request(&self, name: &str) -> Result<NetworkRequest> {
        berth_ids::validate_id(name).with_context(|| format!("--net {name:?}"))?;
        let mut ports = Vec::new();
        for value in &self.publish {
            ports.extend(PortMapping::parse_publish(value)?);
        }
        for server in &self.dns {
            server
                .parse::<std::net::IpAddr>()
                .with_context(|| format!("--dns {server:?}: not an IP address"))?;
        }
        for word in self.dns_search.iter().chain(&self.dns_option) {
            if word.is_empty() || word.chars().any(char::is_whitespace) {
                bail!("{word:?}: a DNS search domain or option is one word");
            }
        }
        let extra_hosts = self
            .add_host
            .iter()
            .map(|value| berth_network::parse_add_host(value))
            .collect::<berth_errdefs::Result<Vec<_>>>()?;
        Ok(NetworkRequest {
            name: name.to_string(),
            ports,
            dns: DnsConfig {
                servers: self.dns.clone(),
                searches: self.dns_search.clone(),
                options: self.dns_option.clone(),
            },
            extra_hosts,
        })
    }

    pub fn labels(&self) -> Result<HashMap<String, String>> {
        self.labels
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Ok((l.clone(), String::new())),
            })
            .collect()
    }
}

/// The daemons `berth run` talks to.
pub struct Clients {
    pub content: RemoteContentStore,
    pub images: RemoteImages,
    pub snapshots: RemoteSnapshotter,
    pub containers: RemoteContainers,
    pub leases: RemoteLeases,
    pub snapshotter: String,
}

impl Clients {
    pub async fn connect(global: &Global, snapshotter: &str) -> Result<Clients> {
        // metad's three services share one connection.
        let metad = berth_client::connect(global.metad_socket())
            .await
            .context("berth-metad")?;
        Ok(Clients {
            content: RemoteContentStore::connect(global.contentd_socket())
                .await
                .context("berth-contentd")?,
            images: RemoteImages::new(metad.clone()),
            snapshots: RemoteSnapshotter::connect(global.snapd_socket(), snapshotter)
                .await
                .context("berth-snapd")?,
            containers: RemoteContainers::new(metad.clone()),
            leases: RemoteLeases::new(metad),
            snapshotter: snapshotter.to_string(),
        })
    }

    pub fn services(&self) -> ContainerServices<'_> {
        ContainerServices {
            content: &self.content,
            images: &self.images,
            snapshots: &self.snapshots,
            snapshotter: &self.snapshotter,
            containers: &self.containers,
            leases: &self.leases,
            unpacker: Some(&self.snapshots),
        }
    }
}

fn scratch_dir(global: &Global) -> PathBuf {
    global.fifo_root().join("views")
}

/// Makes the image present per `policy` (pulling through berth-image).
/// Returns the index or manifest its name was found at when nothing was
/// pulled (the container is made from there, without looking the name up
/// again).
async fn ensure_image(
    global: &Global,
    args: &RunArgs,
    clients: &Clients,
) -> Result<Option<berth_ids::Digest>> {
    let ns = global.namespace()?;
    let root =
        match berth_image::store::image_root(&clients.images, ns, &args.container.image).await {
            Ok(root) => Some(root),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
    let present = root.is_some();
    let pull = match args.pull {
        PullPolicy::Always => true,
        PullPolicy::Missing => !present,
        PullPolicy::Never if present => false,
        PullPolicy::Never => bail!(
            "image {} is not here and --pull never",
            args.container.image
        ),
    };
    if pull {
        let source = super::transfer::SourceArgs {
            reference: args.container.image.clone(),
            platforms: Vec::new(),
            all_platforms: false,
            user: None,
            plain_http: false,
            max_concurrent_downloads: 3,
            allow_foreign_layers: false,
        };
        super::pull::run(
            global,
            super::pull::PullArgs {
                source,
                skip_unpack: false,
                sync_fs: false,
                snapshotter: SnapshotterArg {
                    snapshotter: clients.snapshotter.clone(),
                },
                quiet: true,
            },
        )
        .await
        .with_context(|| format!("pulling {}", args.container.image))?;
        return Ok(None);
    }
    Ok(root)
}

/// Creates the container record (and its snapshot) for `args`.
pub async fn create(
    global: &Global,
    args: &ContainerArgs,
    clients: &Clients,
    extra_labels: HashMap<String, String>,
) -> Result<String> {
    create_then(global, args, None, clients, extra_labels, |_, _| async {})
        .await
        .map(|(id, ())| id)
}

/// As [`create`], then `next` with the container's id and rootfs mounts as
/// soon as its record exists (see [`create_container_then`]); returns the
/// id and what `next` gave. `image_root`: where the image's name was found
/// just now, if it was.
pub async fn create_then<T, Next, NextFut>(
    global: &Global,
    args: &ContainerArgs,
    image_root: Option<berth_ids::Digest>,
    clients: &Clients,
    extra_labels: HashMap<String, String>,
    next: Next,
) -> Result<(String, T)>
where
    Next: FnOnce(String, Vec<berth_tasks::Mount>) -> NextFut,
    NextFut: std::future::Future<Output = T>,
{
    let ns = global.namespace()?;
    // A CNI network's files are written (by the container's id) before
    // the record exists; none or the host's network writes nothing.
    let writes_network_files = !matches!(args.network.as_str(), "none" | "host");
    let id = match &args.name {
        Some(name) => {
            berth_ids::validate_id(name)?;
            if writes_network_files {
                // A name already taken fails here, before the network
                // files of the container that has it could be rewritten.
                // (Otherwise metad refuses the record, and nothing of
                // the container that has the name is touched.)
                match clients.containers.get(ns, name).await {
                    Ok(_) => bail!("creating container {name}: a container by that name exists"),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(
                            anyhow::Error::from(e).context(format!("creating container {name}"))
                        )
                    }
                }
            }
            name.clone()
        }
        // A new random id is nobody's (and metad refuses it if it were).
        None => new_id()?,
    };
    if writes_network_files {
        // What a killed `berth run` left of its network files goes first.
        let _ = super::network::remove_unrecorded(global, ns, &clients.containers).await;
    }
    let forget_network = || {
        if writes_network_files {
            let _ = super::network::forget(global, ns, &id);
        }
    };
    let mut labels = args.labels()?;
    labels.extend(extra_labels);
    let options = match args.spec_options(global, ns, &id) {
        Ok(options) => options,
        Err(e) => {
            // A flag refused after the network files were written.
            forget_network();
            return Err(e);
        }
    };
    // The network and its ports on the record too, for `berth ps`.
    for key in [
        super::network::NETWORK_ANNOTATION,
        super::network::PORTS_ANNOTATION,
    ] {
        if let Some(value) = options.annotations.get(key) {
            labels.insert(key.to_string(), value.clone());
        }
    }
    let new = NewContainer {
        image: args.image.clone(),
        read: match image_root {
            Some(root) => ImageRead::Resolved(root),
            None => ImageRead::Unread,
        },
        runtime: Runtime {
            name: args.runtime.clone(),
            options: None,
        },
        labels,
        options,
        scratch: scratch_dir(global),
        copy_up: Vec::new(),
    };
    match create_container_then(clients.services(), ns, new, |made| {
        next(made.record.id, made.rootfs)
    })
    .await
    {
        Ok(then) => Ok((id, then)),
        Err(e) => {
            if e.kind() != ErrorKind::AlreadyExists {
                forget_network();
            }
            Err(anyhow::Error::from(e).context(format!("creating container {id}")))
        }
    }
}

/// A detached task's stdio: its output appended to `log` (the shim opens
/// it for appending), whose directory is made if missing.
pub fn log_stdio(log: &Path) -> Result<Stdio> {
    if let Some(dir) = log.parent() {
        // Containers' output is theirs and root's: 0700 as under
        // systemd's /var/lib/berth/logs.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let uri = log_uri(log);
    Ok(Stdio {
        stdin: String::new(),
        stdout: uri.clone(),
        stderr: uri,
        terminal: false,
    })
}

/// The `file://` URI of a log, as the shim takes it and as
/// [`LOG_URI_LABEL`] records it.
pub fn log_uri(log: &Path) -> String {
    format!("file://{}", log.display())
}

/// The log file a container's record names ([`LOG_URI_LABEL`]), if any.
pub fn recorded_log(labels: &HashMap<String, String>, id: &str) -> Result<Option<PathBuf>> {
    let Some(uri) = labels.get(LOG_URI_LABEL) else {
        return Ok(None);
    };
    let path = uri
        .strip_prefix("file://")
        .with_context(|| format!("container {id}: log {uri} is not a file"))?;
    Ok(Some(PathBuf::from(path)))
}

/// Where a detached container's output goes.
pub fn log_path(namespace: &str, id: &str) -> PathBuf {
    std::env::var_os("BERTH_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(LOG_ROOT))
        .join(namespace)
        .join(format!("{id}.log"))
}

/// Runs the container; returns the exit status to leave with.
pub async fn run(global: &Global, args: RunArgs) -> Result<u8> {
    let ns = global.namespace()?.to_string();
    if args.detach && args.rm {
        bail!("--rm with -d: a detached container is removed with `berth rm`");
    }
    let clients = Clients::connect(global, &args.container.snapshotter.snapshotter).await?;
    let image_root = ensure_image(global, &args, &clients).await?;
    let tasks = RemoteTasks::connect(global.taskd_socket())
        .await
        .context("berth-taskd")?;

    let id_hint = args.container.name.clone();
    let mut extra = HashMap::new();
    if args.detach {
        let id = match &id_hint {
            Some(id) => id.clone(),
            None => new_id()?,
        };
        // With -i or -t its stdio are fifos that stay for `berth tasks
        // attach` (as with `ctr run -d`); otherwise its output goes to a
        // log file for `berth logs`.
        let output = if args.interactive || args.container.tty {
            DetachedOutput::Fifos {
                stdin: args.interactive,
            }
        } else {
            let path = log_path(&ns, &id);
            extra.insert(LOG_URI_LABEL.to_string(), log_uri(&path));
            DetachedOutput::Log(path)
        };
        let mut container = args.container;
        container.name = Some(id);
        return detached(
            global, &ns, container, image_root, &clients, &tasks, extra, output,
        )
        .await;
    }
    // The task is made while the container's snapshot lease goes.
    let fifo_root = global.fifo_root();
    let (id, outcome) = create_then(
        global,
        &args.container,
        image_root,
        &clients,
        extra,
        |id, rootfs| {
            let (fifo_root, ns, args, tasks) = (&fifo_root, &ns, &args, &tasks);
            async move { attached(fifo_root, ns, &id, rootfs, args, tasks).await }
        },
    )
    .await?;
    if args.rm {
        let removed = remove_task_and_container(global, &ns, &id, &tasks, &clients).await;
        if let (Ok(_), Err(e)) = (&outcome, removed) {
            return Err(e);
        }
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn detached(
    global: &Global,
    ns: &str,
    container: ContainerArgs,
    image_root: Option<berth_ids::Digest>,
    clients: &Clients,
    tasks: &RemoteTasks,
    extra: HashMap<String, String>,
    output: DetachedOutput,
) -> Result<u8> {
    // The task is made while the container's snapshot lease goes; its
    // fifos once the record is ours (another container's by that name may
    // have fifos at the same place).
    let tty = container.tty;
    let (id, (started, fifos)) = create_then(
        global,
        &container,
        image_root,
        clients,
        extra,
        |id, rootfs| async move {
            let (stdio, fifos) = match output {
                DetachedOutput::Log(log) => (log_stdio(&log)?, None),
                DetachedOutput::Fifos { stdin } => {
                    let fifos = Fifos::new(&global.fifo_root(), &id, stdin, tty)?;
                    (fifos.stdio.clone(), Some(fifos))
                }
            };
            let started = async {
                tasks
                    .create(
                        ns,
                        CreateTask {
                            container_id: id.clone(),
                            rootfs,
                            stdio,
                            ..Default::default()
                        },
                    )
                    .await?;
                tasks.start(ns, &id, "").await
            }
            .await;
            anyhow::Ok((started, fifos))
        },
    )
    .await
    .and_then(|(id, made)| Ok((id, made?)))?;
    if let Err(e) = started {
        let _ = tasks.delete(ns, &id).await;
        return Err(anyhow::Error::from(e).context(format!("starting container {id}")));
    }
    if let Some(fifos) = fifos {
        fifos.keep();
    }
    println!("{id}");
    Ok(0)
}

/// Where a detached container's stdio go.
enum DetachedOutput {
    /// Its output to this log file.
    Log(PathBuf),
    /// Fifos left for `berth tasks attach` (stdin too if asked).
    Fifos { stdin: bool },
}

/// The exit status a shell would show: the code, or 128 + the signal.
fn exit_code(status: u32) -> u8 {
    u8::try_from(status).unwrap_or(255)
}

async fn attached(
    fifo_root: &Path,
    ns: &str,
    id: &str,
    rootfs: Vec<berth_tasks::Mount>,
    args: &RunArgs,
    tasks: &RemoteTasks,
) -> Result<u8> {
    let fifos = Fifos::new(fifo_root, id, args.interactive, args.container.tty)?;
    let mut attached = fifos.attach()?;
    tasks
        .create(
            ns,
            CreateTask {
                container_id: id.to_string(),
                rootfs,
                stdio: fifos.stdio.clone(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating the task of {id}"))?;
    // The terminal has our size before the process starts.
    if args.container.tty {
        if let Some((width, height)) = crate::stdio::terminal_size() {
            tasks
                .resize_pty(ns, id, "", u32::from(width), u32::from(height))
                .await
                .with_context(|| format!("sizing the terminal of {id}"))?;
        }
    }
    let stdin = if args.interactive {
        attached.forward_stdin()
    } else {
        None
    };
    // Wait is asked before Start, so a quick exit is never missed.
    let wait_tasks = tasks.clone();
    let (ns_owned, id_owned) = (ns.to_string(), id.to_string());
    let waiting = tokio::spawn(async move { wait_tasks.wait(&ns_owned, &id_owned, "").await });
    if let Err(e) = tasks.start(ns, id, "").await {
        waiting.abort();
        return Err(anyhow::Error::from(e).context(format!("starting {id}")));
    }
    if let Some(stdin) = stdin {
        let closer = tasks.clone();
        let (ns_owned, id_owned) = (ns.to_string(), id.to_string());
        tokio::spawn(async move {
            let _ = stdin.await;
            let _ = closer.close_stdin(&ns_owned, &id_owned, "").await;
        });
    }
    // Under -t, keys (^C too) reach the container through the terminal;
    // its size follows ours.
    let raw = if args.container.tty {
        crate::stdio::RawMode::enter()
    } else {
        None
    };
    let resizing = args
        .container
        .tty
        .then(|| follow_terminal_size(ns, id, "", tasks.clone()));
    let signals = forward_signals(ns, id, tasks.clone(), args.container.tty);
    let exit = waiting
        .await
        .context("waiting for the container")?
        .with_context(|| format!("waiting for {id}"))?;
    signals.abort();
    if let Some(resizing) = resizing {
        resizing.abort();
    }
    drop(raw);
    attached.drain(Duration::from_secs(2)).await;
    Ok(exit_code(exit.status))
}

/// Tells a process's terminal our size now and on every SIGWINCH.
pub fn follow_terminal_size(
    ns: &str,
    id: &str,
    exec_id: &str,
    tasks: RemoteTasks,
) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (ns, id, exec_id) = (ns.to_string(), id.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        let mut changes = signal(SignalKind::window_change()).ok();
        loop {
            if let Some((width, height)) = crate::stdio::terminal_size() {
                let _ = tasks
                    .resize_pty(&ns, &id, &exec_id, u32::from(width), u32::from(height))
                    .await;
            }
            match changes.as_mut() {
                Some(changes) => {
                    if changes.recv().await.is_none() {
                        return;
                    }
                }
                None => return,
            }
        }
    })
}

/// Signals berth receives go to the container's init process (with a
/// terminal, ^C is a key the container reads, not a signal berth gets).
fn forward_signals(
    ns: &str,
    id: &str,
    tasks: RemoteTasks,
    terminal: bool,
) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (ns, id) = (ns.to_string(), id.to_string());
    tokio::spawn(async move {
        let kinds = [
            (SignalKind::interrupt(), libc::SIGINT),
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::hangup(), libc::SIGHUP),
            (SignalKind::quit(), libc::SIGQUIT),
            (SignalKind::user_defined1(), libc::SIGUSR1),
            (SignalKind::user_defined2(), libc::SIGUSR2),
        ];
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        for (kind, number) in kinds {
            if terminal && number == libc::SIGINT {
                continue;
            }
            let Ok(mut stream) = signal(kind) else {
                continue;
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if sender.send(number).is_err() {
                        break;
                    }
                }
            });
        }
        while let Some(number) = receiver.recv().await {
            let _ = tasks
                .kill(
                    &ns,
                    KillProcess {
                        container_id: id.clone(),
                        exec_id: String::new(),
                        signal: number as u32,
                        all: false,
                    },
                )
                .await;
        }
    })
}

/// `--rm`: the task (killed if it still runs), the container and its
/// snapshot.
async fn remove_task_and_container(
    global: &Global,
    ns: &str,
    id: &str,
    tasks: &RemoteTasks,
    clients: &Clients,
) -> Result<()> {
    match tasks.delete(ns, id).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) if e.kind() == ErrorKind::FailedPrecondition => {
            berth_tasks::kill_all_and_wait(tasks, ns, id, Duration::from_secs(10)).await;
            match tasks.delete(ns, id).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!("deleting the task of {id}")))
                }
            }
        }
        Err(e) => return Err(anyhow::Error::from(e).context(format!("deleting the task of {id}"))),
    }
    // The container `run` made: its snapshot's key is its id.
    remove_container_and_snapshot(clients.services(), ns, id, id)
        .await
        .with_context(|| format!("removing container {id}"))?;
    super::network::forget(global, ns, id)
}
