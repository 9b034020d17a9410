//! `berth import FILE` and `berth export FILE IMAGE...`: image archives
//! (OCI image layouts and `docker save` archives) to and from the content
//! store, through [`berth_image::archive`].

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use berth_client::RemoteContentStore;
use berth_content::ContentStore;
use berth_ids::Digest;
use berth_image::archive::{self, ArchiveImage};
use berth_snapshot::Snapshotter;
use serde_json::json;

use crate::global::Global;
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The archive; - reads standard input.
    pub file: PathBuf,
    /// Do not unpack the imported images into snapshots.
    #[arg(long)]
    pub no_unpack: bool,
    #[command(flatten)]
    pub snapshotter: super::snapshots::SnapshotterArg,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Where to write the archive; - writes standard output.
    pub file: PathBuf,
    /// Images to export: DIGEST of an index or manifest in the content
    /// store, or NAME=DIGEST to give it a name in the archive.
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn import(global: &Global, args: ImportArgs) -> Result<()> {
    let namespace = global.namespace()?.to_string();
    let store = RemoteContentStore::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?;
    let input: Box<dyn Read + Send> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("import: opening {}", args.file.display()))?,
        )
    };
    // Pointed at one daemon (--address), import only stores the content;
    // otherwise named images are recorded in metad and unpacked for this
    // machine's platform, as `ctr import` does, all under a lease, so that
    // a collection meanwhile takes nothing before the records hold it.
    let images = if global.address.is_some() {
        archive::import(&store, &namespace, input)
            .await
            .with_context(|| format!("import {}", args.file.display()))?
    } else {
        let leases = berth_client::RemoteLeases::connect(global.metad_socket())
            .await
            .context("berth-metad")?;
        let (imported, dropped) = berth_metadata::with_held_lease(
            &leases,
            &namespace,
            berth_metadata::CLIENT_LEASE_TTL,
            |lease| {
                let (store, namespace, args) = (&store, &namespace, &args);
                async move {
                    let leased = store.clone().with_lease(lease.clone());
                    let images = archive::import(&leased, namespace, input)
                        .await
                        .with_context(|| format!("import {}", args.file.display()))?;
                    record_and_unpack(global, namespace, &images, args, &leased, &lease).await?;
                    Ok::<_, anyhow::Error>(images)
                }
            },
        )
        .await?;
        if let Err(e) = dropped {
            eprintln!("berth: warning: import: {e}");
        }
        imported?
    };
    match global.format {
        Format::Json => output::json(
            &images
                .iter()
                .map(|i| json!({"name": i.name, "digest": i.root.to_string()}))
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone().unwrap_or_else(|| "-".into()),
                        i.root.to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "DIGEST"], &rows)
        }
    }
}

async fn record_and_unpack(
    global: &Global,
    namespace: &str,
    images: &[ArchiveImage],
    args: &ImportArgs,
    store: &RemoteContentStore,
    lease: &str,
) -> Result<()> {
    let records = berth_client::RemoteImages::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    let snapshots = if args.no_unpack {
        None
    } else {
        Some(
            berth_client::RemoteSnapshotter::connect(
                global.snapd_socket(),
                &args.snapshotter.snapshotter,
            )
            .await
            .context("berth-snapd")?,
        )
    };
    for image in images {
        if let Some(name) = &image.name {
            let root = berth_image::store::root_descriptor(store, namespace, &image.root)
                .await
                .with_context(|| format!("import: {name}"))?;
            berth_image::store::record_image(&records, namespace, name, &root)
                .await
                .with_context(|| format!("import: {name}"))?;
        }
        if let Some(snapshots) = &snapshots {
            let unpacked = berth_image::unpack(
                store,
                snapshots,
                namespace,
                &image.root,
                &berth_image::Matcher::host(),
                &berth_image::UnpackOptions {
                    lease: Some(lease.to_string()),
                    sync_fs: false,
                },
            )
            .await;
            match unpacked {
                Ok(_) => {}
                // An image for other machines is stored, not unpacked.
                Err(e) if e.kind() == berth_errdefs::ErrorKind::NotFound => {
                    eprintln!("berth: warning: import: {}: not unpacked: {e}", image.root)
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::from(e).context(format!("import: unpacking {}", image.root))
                    )
                }
            }
        }
    }
    // The records hold it all now: the lease's labels come off (best
    // effort: a stale label holds nothing once the lease is gone).
    let _ = store.release_lease(namespace, lease).await;
    if let Some(snapshots) = &snapshots {
        let _ = snapshots.release_lease(namespace, lease).await;
    }
    Ok(())
}

pub async fn export(global: &Global, args: ExportArgs) -> Result<()> {
    let namespace = global.namespace()?.to_string();
    let store = RemoteContentStore::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?;
    let mut images = Vec::new();
    for image in &args.images {
        let (name, digest) = match image.rsplit_once('=') {
            Some((name, digest)) => (Some(name.to_string()), digest),
            None => (None, image.as_str()),
        };
        let root = Digest::parse(digest).with_context(|| format!("export: {image}"))?;
        images.push(ArchiveImage { name, root });
    }
    let what = || format!("export {}", args.file.display());
    let export = archive::plan_export(&store, &namespace, &images)
        .await
        .with_context(what)?;
    let mut out: Box<dyn Write> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.file)
                .with_context(|| format!("export: creating {}", args.file.display()))?,
        ))
    };
    export
        .write(&store, &namespace, &mut out)
        .await
        .with_context(what)
}
