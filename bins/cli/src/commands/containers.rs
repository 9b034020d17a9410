//! `berth containers ...`: container records in berth-metad (what a
//! container is made of; its running task lives in berth-taskd).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use berth_client::{RemoteContainers, RemoteImages};
use berth_metadata::{Any, Container, ContainerStore, ImageStore, Runtime};
use serde::Serialize;

use super::run::{Clients, ContainerArgs};
use crate::global::Global;
use crate::labels::{label_update, labels_text, sorted};
use crate::output::{self, Format};

/// Largest spec file read.
const MAX_SPEC: u64 = 2 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Record this OCI runtime spec (JSON) as it is instead of building
    /// one: the image is only checked to exist, and no snapshot is
    /// prepared (name one with --snapshot-key).
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// With --spec: the active snapshot that is its root filesystem.
    #[arg(long, requires = "spec", value_name = "KEY")]
    snapshot_key: Option<String>,
    #[command(flatten)]
    container: ContainerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ContainersCommand {
    /// List containers, optionally matching filters (e.g. 'image~=busybox',
    /// 'runtime.name==io.containerd.runc.v2').
    #[command(visible_alias = "list")]
    Ls {
        /// Print ids only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Show one container record (its spec as JSON).
    Info { id: String },
    /// Make a container from IMAGE as `berth create` does (its snapshot,
    /// a spec built from the image's config and the flags, its record), as
    /// ID; or, with --spec, record exactly the spec given.
    #[command(override_usage = "berth containers create [OPTIONS] IMAGE ID [COMMAND [ARG]...]")]
    Create(Box<CreateArgs>),
    /// Set (KEY=VALUE) or remove (KEY=) labels on a container.
    Label {
        id: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove container records.
    #[command(visible_alias = "del")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// FailedPrecondition-like refusal when taskd holds a task for `id` (a
/// taskd that is not running holds none).
async fn refuse_with_task(global: &Global, ns: &str, id: &str) -> Result<()> {
    use berth_tasks::Tasks;
    let Ok(tasks) = berth_client::RemoteTasks::connect(global.taskd_socket()).await else {
        return Ok(());
    };
    match tasks.get(ns, id, "").await {
        Ok(task) => anyhow::bail!(
            "containers rm {id}: it has a task ({}); delete the task first (berth tasks rm)",
            task.status
        ),
        Err(_) => Ok(()),
    }
}

async fn remove_snapshot(global: &Global, ns: &str, record: &Container) -> Result<()> {
    use berth_snapshot::Snapshotter;
    let snapshots =
        berth_client::RemoteSnapshotter::connect(global.snapd_socket(), &record.snapshotter)
            .await
            .context("berth-snapd")?;
    match snapshots.remove(ns, &record.snapshot_key).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context(format!(
            "containers rm {}: removing its snapshot {}",
            record.id, record.snapshot_key
        ))),
    }
}

/// An `Any` for people: its spec as JSON when it is JSON, else hex.
#[derive(Serialize)]
struct AnyJson {
    type_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
}

impl From<&Any> for AnyJson {
    fn from(any: &Any) -> AnyJson {
        let json = serde_json::from_slice(&any.value).ok();
        let hex = json.is_none().then(|| {
            any.value
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
        AnyJson {
            type_url: any.type_url.clone(),
            json,
            hex,
        }
    }
}

#[derive(Serialize)]
struct RuntimeJson {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<AnyJson>,
}

#[derive(Serialize)]
struct ContainerJson {
    id: String,
    image: String,
    runtime: RuntimeJson,
    snapshotter: String,
    snapshot_key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    sandbox: String,
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<AnyJson>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extensions: BTreeMap<String, AnyJson>,
    created_at: f64,
    updated_at: f64,
}

impl From<&Container> for ContainerJson {
    fn from(c: &Container) -> ContainerJson {
        ContainerJson {
            id: c.id.clone(),
            image: c.image.clone(),
            runtime: RuntimeJson {
                name: c.runtime.name.clone(),
                options: c.runtime.options.as_ref().map(AnyJson::from),
            },
            snapshotter: c.snapshotter.clone(),
            snapshot_key: c.snapshot_key.clone(),
            sandbox: c.sandbox.clone(),
            labels: sorted(&c.labels),
            spec: c.spec.as_ref().map(AnyJson::from),
            extensions: c
                .extensions
                .iter()
                .map(|(k, v)| (k.clone(), AnyJson::from(v)))
                .collect(),
            created_at: output::unix_seconds(c.created_at),
            updated_at: output::unix_seconds(c.updated_at),
        }
    }
}

fn or_dash(value: &str) -> String {
    if value.is_empty() {
        "-".to_string()
    } else {
        value.to_string()
    }
}

fn read_spec(path: &std::path::Path) -> Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > MAX_SPEC {
        anyhow::bail!("{} is larger than {MAX_SPEC} bytes", path.display());
    }
    let spec = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice::<serde_json::Value>(&spec)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(spec)
}

/// `containers create`: the ID is the first word after IMAGE, as in
/// `ctr containers create IMAGE ID [COMMAND...]`.
async fn create(
    global: &Global,
    ns: &str,
    args: CreateArgs,
    containers: &RemoteContainers,
) -> Result<Container> {
    let CreateArgs {
        spec,
        snapshot_key,
        mut container,
    } = args;
    if container.name.is_some() {
        bail!("containers create takes the id after the image, not --name");
    }
    if container.args.is_empty() {
        bail!("containers create needs IMAGE and ID");
    }
    let id = container.args.remove(0);
    let what = || format!("containers create {id}");
    let Some(spec) = spec else {
        container.name = Some(id.clone());
        let clients = Clients::connect(global, &container.snapshotter.snapshotter).await?;
        super::run::create(global, &container, &clients, HashMap::new()).await?;
        return containers.get(ns, &id).await.with_context(what);
    };
    // As given: the image must exist, nothing else is read or made.
    let spec = read_spec(&spec).with_context(what)?;
    let labels = container.labels()?;
    let images = RemoteImages::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    images.get(ns, &container.image).await.with_context(what)?;
    let snapshotter = if snapshot_key.is_some() {
        container.snapshotter.snapshotter.clone()
    } else {
        String::new()
    };
    containers
        .create(
            ns,
            Container {
                id: id.clone(),
                labels,
                image: container.image,
                runtime: Runtime {
                    name: container.runtime,
                    options: None,
                },
                spec: Some(Any {
                    type_url: berth_tasks::container::SPEC_TYPE.to_string(),
                    value: spec,
                }),
                snapshotter,
                snapshot_key: snapshot_key.unwrap_or_default(),
                created_at: std::time::UNIX_EPOCH,
                updated_at: std::time::UNIX_EPOCH,
                extensions: BTreeMap::new(),
                sandbox: String::new(),
            },
        )
        .await
        .with_context(what)
}

pub async fn run(global: &Global, command: ContainersCommand) -> Result<()> {
    let namespace = global.namespace()?.to_string();
    let ns = namespace.as_str();
    let containers = RemoteContainers::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    match command {
        ContainersCommand::Ls { quiet, filters } => {
            let mut list = containers
                .list(ns, &filters)
                .await
                .context("containers ls")?;
            list.sort_by(|a, b| a.id.cmp(&b.id));
            if quiet {
                for c in &list {
                    println!("{}", c.id);
                }
                return Ok(());
            }
            match global.format {
                Format::Json => {
                    output::json(&list.iter().map(ContainerJson::from).collect::<Vec<_>>())
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|c| {
                            vec![
                                c.id.clone(),
                                or_dash(&c.image),
                                c.runtime.name.clone(),
                                or_dash(&c.snapshotter),
                                output::age(c.created_at),
                                labels_text(&c.labels),
                            ]
                        })
                        .collect();
                    output::table(
                        &["ID", "IMAGE", "RUNTIME", "SNAPSHOTTER", "CREATED", "LABELS"],
                        &rows,
                    )
                }
            }
        }
        ContainersCommand::Info { id } => {
            let container = containers
                .get(ns, &id)
                .await
                .with_context(|| format!("containers info {id}"))?;
            // Like ctr, the record as JSON whatever the format: the spec
            // does not fit a table.
            output::json(&ContainerJson::from(&container))
        }
        ContainersCommand::Create(args) => {
            let created = create(global, ns, *args, &containers).await?;
            match global.format {
                Format::Json => output::json(&ContainerJson::from(&created)),
                Format::Table => {
                    println!("{}", created.id);
                    Ok(())
                }
            }
        }
        ContainersCommand::Label { id, labels } => {
            let what = || format!("containers label {id}");
            let (labels, paths) = label_update(&labels)?;
            let mut container = containers.get(ns, &id).await.with_context(what)?;
            container.labels = labels;
            let updated = containers
                .update(ns, container, &paths)
                .await
                .with_context(what)?;
            match global.format {
                Format::Json => output::json(&ContainerJson::from(&updated)),
                Format::Table => {
                    println!("{}", labels_text(&updated.labels));
                    Ok(())
                }
            }
        }
        ContainersCommand::Rm { ids } => {
            for id in ids {
                let record = containers
                    .get(ns, &id)
                    .await
                    .with_context(|| format!("containers rm {id}"))?;
                // Across the whole stack (not one --address): a container
                // with a task is refused, and its snapshot goes with it, as
                // `ctr containers rm` does.
                if global.address.is_none() {
                    refuse_with_task(global, ns, &id).await?;
                }
                containers
                    .delete(ns, &id)
                    .await
                    .with_context(|| format!("containers rm {id}"))?;
                if global.address.is_none() && !record.snapshot_key.is_empty() {
                    remove_snapshot(global, ns, &record).await?;
                }
                if global.format == Format::Table {
                    println!("{id}");
                }
            }
            Ok(())
        }
    }
}
