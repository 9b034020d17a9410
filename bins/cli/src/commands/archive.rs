//! `berth import FILE` and `berth export FILE IMAGE...`: image archives
//! (OCI image layouts and `docker save` archives) to and from the content
//! store, through [`berth_image::archive`] (and, for an import, its
//! records and snapshots through [`berth_image::Importer`]).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use berth_client::RemoteContentStore;
use berth_ids::Digest;
use berth_image::archive::{self, ArchiveImage};
use berth_image::ImportEvent;
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
        let importer = berth_image::Importer {
            content: &store,
            images: &records,
            leases: &leases,
            unpacker: snapshots.as_ref().map(|s| s as &dyn berth_image::Unpacker),
        };
        importer
            .import(
                &namespace,
                input,
                &berth_image::ImportOptions::default(),
                &mut |event| match event {
                    ImportEvent::NotUnpacked { root, reason } => {
                        eprintln!("berth: warning: import: {root}: not unpacked: {reason}")
                    }
                    ImportEvent::Warning(warning) => eprintln!("berth: warning: import: {warning}"),
                },
            )
            .await
            .with_context(|| format!("import {}", args.file.display()))?
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
