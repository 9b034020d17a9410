//! `berth snapshots ...` and `berth unpack`: berth-snapd's snapshots.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use berth_client::{RemoteContentStore, RemoteImages, RemoteLeases, RemoteSnapshotter};
use berth_snapshot::{Info, Snapshotter, DEFAULT_SNAPSHOTTER};
use serde::Serialize;

use crate::global::Global;
use crate::labels::parse_labels;
use crate::output::{self, Format};
use berth_image::{Matcher, UnpackOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotterArg {
    /// The snapshotter (overlayfs, native).
    #[arg(long, global = true, env = "BERTH_SNAPSHOTTER", default_value = DEFAULT_SNAPSHOTTER)]
    pub snapshotter: String,
}

#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub snapshotter: SnapshotterArg,
    #[command(subcommand)]
    pub command: SnapshotsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots, optionally matching filters (e.g. kind==committed).
    #[command(visible_alias = "list")]
    Ls { filters: Vec<String> },
    /// Show one snapshot.
    Info { key: String },
    /// Show snapshots as a tree of parents and children.
    Tree,
    /// Create an active snapshot on PARENT; prints its mounts. (Nothing
    /// holds it against garbage collection unless a label such as
    /// containerd.io/gc.root=... or a lease does.)
    Prepare {
        key: String,
        parent: Option<String>,
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Create a read-only view of PARENT; prints its mounts (held as
    /// prepare's are).
    View {
        key: String,
        parent: Option<String>,
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Print a snapshot's mounts.
    Mounts { key: String },
    /// Commit the active snapshot KEY as NAME.
    Commit { name: String, key: String },
    /// Remove snapshots (refused while one has children).
    #[command(visible_alias = "del")]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Disk used by a snapshot itself.
    Usage { keys: Vec<String> },
    /// Set (KEY=VALUE) or remove (KEY=) labels.
    Label {
        key: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Store the layer of UPPER against LOWER in the content store; prints
    /// its digest.
    Diff {
        upper: String,
        lower: Option<String>,
        /// The layer's media type: application/vnd.oci.image.layer.v1.tar,
        /// ...tar+gzip (the default, as containerd) or ...tar+zstd.
        #[arg(long, default_value = "application/vnd.oci.image.layer.v1.tar+gzip")]
        media_type: String,
    },
    /// Remove directories no snapshot owns.
    Cleanup,
}

#[derive(Debug, clap::Args)]
pub struct UnpackArgs {
    #[command(flatten)]
    pub snapshotter: SnapshotterArg,
    /// The image: a name recorded in berth-metad (as `berth pull` and
    /// `berth images create` record them), or its manifest or index digest.
    /// Its blobs must be in the content store.
    pub image: String,
    /// Write each layer back to disk (syncfs) before committing it, so
    /// that every layer is on disk when the command returns. Without it
    /// snapd writes layers back within about a second, and discards at
    /// start any that a power cut took before that (the next pull unpacks
    /// them again).
    #[arg(long)]
    pub sync_fs: bool,
}

#[derive(Serialize)]
struct InfoJson<'a> {
    name: &'a str,
    parent: Option<&'a str>,
    kind: &'static str,
    created_at: f64,
    updated_at: f64,
    labels: &'a HashMap<String, String>,
}

fn info_json(info: &Info) -> InfoJson<'_> {
    InfoJson {
        name: &info.name,
        parent: info.parent.as_deref(),
        kind: info.kind.as_str(),
        created_at: output::unix_seconds(info.created_at),
        updated_at: output::unix_seconds(info.updated_at),
        labels: &info.labels,
    }
}

async fn connect(global: &Global, name: &str) -> Result<RemoteSnapshotter> {
    let socket = global.snapd_socket();
    RemoteSnapshotter::connect(socket, name)
        .await
        .with_context(|| format!("connecting to berth-snapd at {}", socket.display()))
}

fn print_mounts(global: &Global, mounts: &[berth_snapshot::Mount]) -> Result<()> {
    if global.format == Format::Json {
        let list: Vec<_> = mounts
            .iter()
            .map(|m| serde_json::json!({"type": m.kind, "source": m.source, "options": m.options}))
            .collect();
        return output::json(&list);
    }
    for m in mounts {
        println!(
            "mount -t {} {} -o {} TARGET",
            m.kind,
            m.source,
            m.options.join(",")
        );
    }
    Ok(())
}

pub async fn run(global: &Global, args: SnapshotsArgs) -> Result<()> {
    let ns = global.namespace()?.to_string();
    let sn = connect(global, &args.snapshotter.snapshotter).await?;
    match args.command {
        SnapshotsCommand::Ls { filters } => {
            let mut infos = sn.list(&ns, &filters).await.context("listing snapshots")?;
            infos.sort_by(|a, b| a.name.cmp(&b.name));
            if global.format == Format::Json {
                return output::json(&infos.iter().map(info_json).collect::<Vec<_>>());
            }
            let rows: Vec<Vec<String>> = infos
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.parent.clone().unwrap_or_default(),
                        i.kind.to_string(),
                    ]
                })
                .collect();
            output::table(&["KEY", "PARENT", "KIND"], &rows)
        }
        SnapshotsCommand::Info { key } => {
            let info = sn
                .stat(&ns, &key)
                .await
                .with_context(|| format!("snapshot {key}"))?;
            output::json(&info_json(&info))
        }
        SnapshotsCommand::Tree => {
            let infos = sn.list(&ns, &[]).await.context("listing snapshots")?;
            let mut children: HashMap<Option<String>, Vec<&Info>> = HashMap::new();
            for info in &infos {
                children.entry(info.parent.clone()).or_default().push(info);
            }
            fn walk(
                children: &HashMap<Option<String>, Vec<&Info>>,
                parent: Option<String>,
                depth: usize,
            ) {
                let mut list = children.get(&parent).cloned().unwrap_or_default();
                list.sort_by(|a, b| a.name.cmp(&b.name));
                for info in list {
                    println!("{}{} ({})", "  ".repeat(depth), info.name, info.kind);
                    walk(children, Some(info.name.clone()), depth + 1);
                }
            }
            walk(&children, None, 0);
            Ok(())
        }
        SnapshotsCommand::Prepare {
            key,
            parent,
            labels,
        } => {
            let mounts = sn
                .prepare(&ns, &key, parent.as_deref(), parse_labels(&labels)?)
                .await
                .with_context(|| format!("preparing {key}"))?;
            print_mounts(global, &mounts)
        }
        SnapshotsCommand::View {
            key,
            parent,
            labels,
        } => {
            let mounts = sn
                .view(&ns, &key, parent.as_deref(), parse_labels(&labels)?)
                .await
                .with_context(|| format!("creating view {key}"))?;
            print_mounts(global, &mounts)
        }
        SnapshotsCommand::Mounts { key } => {
            let mounts = sn
                .mounts(&ns, &key)
                .await
                .with_context(|| format!("mounts of {key}"))?;
            print_mounts(global, &mounts)
        }
        SnapshotsCommand::Commit { name, key } => sn
            .commit(&ns, &name, &key, HashMap::new())
            .await
            .with_context(|| format!("committing {key} as {name}")),
        SnapshotsCommand::Rm { keys } => {
            for key in keys {
                sn.remove(&ns, &key)
                    .await
                    .with_context(|| format!("removing {key}"))?;
            }
            Ok(())
        }
        SnapshotsCommand::Usage { keys } => {
            let keys = if keys.is_empty() {
                sn.list(&ns, &[])
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            } else {
                keys
            };
            let mut rows = Vec::new();
            let mut json = Vec::new();
            for key in keys {
                let usage = sn
                    .usage(&ns, &key)
                    .await
                    .with_context(|| format!("usage of {key}"))?;
                json.push(
                    serde_json::json!({"key": key, "size": usage.size, "inodes": usage.inodes}),
                );
                rows.push(vec![
                    key,
                    output::size(usage.size),
                    usage.inodes.to_string(),
                ]);
            }
            if global.format == Format::Json {
                return output::json(&json);
            }
            output::table(&["KEY", "SIZE", "INODES"], &rows)
        }
        SnapshotsCommand::Label { key, labels } => {
            let mut info = sn
                .stat(&ns, &key)
                .await
                .with_context(|| format!("snapshot {key}"))?;
            let mut paths = Vec::new();
            info.labels.clear();
            for label in labels {
                let Some((k, v)) = label.split_once('=') else {
                    bail!("label {label:?} is not KEY=VALUE");
                };
                if !v.is_empty() {
                    info.labels.insert(k.to_string(), v.to_string());
                }
                paths.push(format!("labels.{k}"));
            }
            let info = sn
                .update(&ns, info, &paths)
                .await
                .with_context(|| format!("labelling {key}"))?;
            output::json(&info_json(&info))
        }
        SnapshotsCommand::Diff {
            upper,
            lower,
            media_type,
        } => {
            let layer = sn
                .diff(&ns, lower.as_deref(), &upper, &media_type, HashMap::new())
                .await
                .with_context(|| format!("diff of {upper}"))?;
            let desc = &layer.descriptor;
            if global.format == Format::Json {
                return output::json(&serde_json::json!({
                    "mediaType": desc.media_type,
                    "digest": desc.digest.to_string(),
                    "size": desc.size,
                    "diffID": layer.diff_id.to_string(),
                }));
            }
            println!("{}", desc.digest);
            Ok(())
        }
        SnapshotsCommand::Cleanup => sn.cleanup().await.context("cleaning up"),
    }
}

/// `berth unpack IMAGE`: the image's layers into snapshots, and the
/// image's config labelled as holding them.
pub async fn unpack(global: &Global, args: UnpackArgs) -> Result<()> {
    let ns = global.namespace()?.to_string();
    let store = RemoteContentStore::connect(global.contentd_socket())
        .await
        .context("connecting to berth-contentd")?;
    // A digest needs no image record (nor berth-metad).
    let root = match berth_ids::Digest::parse(&args.image) {
        Ok(digest) => digest,
        Err(_) => {
            let images = RemoteImages::connect(global.metad_socket())
                .await
                .context("berth-metad")?;
            berth_image::store::image_root(&images, &ns, &args.image).await?
        }
    };
    let sn = connect(global, &args.snapshotter.snapshotter).await?;
    let options = UnpackOptions {
        lease: None,
        sync_fs: args.sync_fs,
    };
    // Under a lease while berth-metad runs: its collections would otherwise
    // take the layers between their commit and the config's label. With
    // no berth-metad, nothing collects.
    let image = match RemoteLeases::connect(global.metad_socket()).await {
        Ok(leases) => {
            berth_image::unpack_held(&store, &sn, &leases, &ns, &root, &Matcher::host(), &options)
                .await?
        }
        Err(e) if e.kind() == berth_errdefs::ErrorKind::Unavailable => {
            berth_image::unpack(&store, &sn, &ns, &root, &Matcher::host(), &options).await?
        }
        Err(e) => return Err(anyhow::Error::new(e).context("berth-metad")),
    };
    let done = image.unpacked;
    if global.format == Format::Json {
        return output::json(&serde_json::json!({
            "chain_id": done.chain_id.to_string(), "applied": done.applied, "layers": image.layers
        }));
    }
    println!("{}", done.chain_id);
    Ok(())
}
