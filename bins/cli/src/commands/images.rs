//! `berth images ...`: image records in berth-metad (a name bound to the
//! descriptor of an image's root in the content store).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use berth_client::{RemoteContentStore, RemoteImages};
use berth_content::ContentStore;
use berth_errdefs::ErrorKind;
use berth_ids::Digest;
use berth_metadata::{Descriptor, Image, ImageStore};
use serde::Serialize;

use crate::global::Global;
use crate::labels::{label_update, labels_text, parse_labels, sorted};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// List images, optionally matching filters (e.g. 'name~=busybox',
    /// 'labels.env==prod').
    #[command(visible_alias = "list")]
    Ls {
        /// Print names only.
        #[arg(short, long)]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Show one image record.
    Inspect { name: String },
    /// Record an image: NAME bound to the blob DIGEST in the content store
    /// (its media type and size are read from berth-contentd unless given).
    Create {
        name: String,
        digest: String,
        /// The target's media type.
        #[arg(long)]
        media_type: Option<String>,
        /// The target's size in bytes.
        #[arg(long)]
        size: Option<u64>,
        /// Labels, KEY=VALUE.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Give an image more names (same target and labels).
    Tag {
        source: String,
        #[arg(required = true)]
        targets: Vec<String>,
        /// Point existing names at the source's target instead of failing.
        #[arg(long)]
        force: bool,
    },
    /// Set (KEY=VALUE) or remove (KEY=) labels on an image.
    Label {
        name: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove image records (their content goes at the next collection).
    #[command(visible_alias = "del")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// Collect garbage before returning.
        #[arg(long)]
        sync: bool,
    },
}

#[derive(Serialize)]
struct DescriptorJson {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ImageJson {
    name: String,
    target: DescriptorJson,
    labels: BTreeMap<String, String>,
    created_at: f64,
    updated_at: f64,
}

impl From<&Image> for ImageJson {
    fn from(image: &Image) -> ImageJson {
        ImageJson {
            name: image.name.clone(),
            target: DescriptorJson {
                media_type: image.target.media_type.clone(),
                digest: image.target.digest.to_string(),
                size: image.target.size,
                annotations: sorted(&image.target.annotations),
            },
            labels: sorted(&image.labels),
            created_at: output::unix_seconds(image.created_at),
            updated_at: output::unix_seconds(image.updated_at),
        }
    }
}

/// `index`, `manifest`, `manifest.list` ...: the kind of a media type.
fn short_type(media_type: &str) -> String {
    let kind = media_type
        .strip_prefix("application/vnd.oci.image.")
        .or_else(|| media_type.strip_prefix("application/vnd.docker.distribution."))
        .unwrap_or(media_type);
    kind.split(['+', ';'])
        .next()
        .unwrap_or(kind)
        .trim_end_matches(".v1")
        .trim_end_matches(".v2")
        .to_string()
}

fn print_image(format: Format, image: &Image) -> Result<()> {
    match format {
        Format::Json => output::json(&ImageJson::from(image)),
        Format::Table => {
            println!("name:        {}", image.name);
            println!("media type:  {}", image.target.media_type);
            println!("digest:      {}", image.target.digest);
            println!(
                "size:        {} ({})",
                image.target.size,
                output::size(image.target.size)
            );
            println!("created:     {}", output::age(image.created_at));
            println!("updated:     {}", output::age(image.updated_at));
            let mut annotations: Vec<_> = image.target.annotations.iter().collect();
            annotations.sort();
            for (k, v) in annotations {
                println!("annotation:  {k}={v}");
            }
            let mut labels: Vec<_> = image.labels.iter().collect();
            labels.sort();
            for (k, v) in labels {
                println!("label:       {k}={v}");
            }
            Ok(())
        }
    }
}

/// The target of `images create`: what was given, the rest from
/// berth-contentd.
async fn target(
    global: &Global,
    namespace: &str,
    digest: Digest,
    media_type: Option<String>,
    size: Option<u64>,
) -> Result<Descriptor> {
    let (media_type, size) = match (media_type, size) {
        (Some(media_type), Some(size)) => (media_type, size),
        (media_type, size) => {
            let content = RemoteContentStore::connect(global.contentd_socket())
                .await
                .context("berth-contentd")?;
            let info = content
                .info(namespace, &digest)
                .await
                .with_context(|| format!("content {digest}"))?;
            let media_type = match media_type {
                Some(media_type) => media_type,
                None => {
                    let blob = berth_content::read_blob(
                        &content,
                        namespace,
                        &digest,
                        berth_image::MAX_DOCUMENT_SIZE,
                    )
                    .await
                    .with_context(|| format!("reading {digest}"))?;
                    match berth_image::sniff_media_type(&blob) {
                        Some(media_type) => media_type,
                        None => bail!(
                            "cannot tell the media type of {digest}: it is not an image index or manifest; pass --media-type"
                        ),
                    }
                }
            };
            (media_type, size.unwrap_or(info.size))
        }
    };
    Ok(Descriptor::new(media_type, digest, size))
}

pub async fn run(global: &Global, command: ImagesCommand) -> Result<()> {
    let namespace = global.namespace()?.to_string();
    let ns = namespace.as_str();
    let images = RemoteImages::connect(global.metad_socket())
        .await
        .context("berth-metad")?;
    match command {
        ImagesCommand::Ls { quiet, filters } => {
            let mut list = images.list(ns, &filters).await.context("images ls")?;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            if quiet {
                for image in &list {
                    println!("{}", image.name);
                }
                return Ok(());
            }
            match global.format {
                Format::Json => output::json(&list.iter().map(ImageJson::from).collect::<Vec<_>>()),
                Format::Table => {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|i| {
                            vec![
                                i.name.clone(),
                                short_type(&i.target.media_type),
                                i.target.digest.to_string(),
                                output::age(i.updated_at),
                                labels_text(&i.labels),
                            ]
                        })
                        .collect();
                    output::table(&["NAME", "TYPE", "DIGEST", "UPDATED", "LABELS"], &rows)
                }
            }
        }
        ImagesCommand::Inspect { name } => {
            let image = images
                .get(ns, &name)
                .await
                .with_context(|| format!("images inspect {name}"))?;
            print_image(global.format, &image)
        }
        ImagesCommand::Create {
            name,
            digest,
            media_type,
            size,
            labels,
        } => {
            let what = || format!("images create {name}");
            let digest = Digest::parse(&digest).with_context(what)?;
            let labels = parse_labels(&labels)?;
            let target = target(global, ns, digest, media_type, size)
                .await
                .with_context(what)?;
            let created = images
                .create(
                    ns,
                    Image {
                        name: name.clone(),
                        labels,
                        target,
                        created_at: std::time::UNIX_EPOCH,
                        updated_at: std::time::UNIX_EPOCH,
                    },
                )
                .await
                .with_context(what)?;
            match global.format {
                Format::Json => output::json(&ImageJson::from(&created)),
                Format::Table => {
                    println!("{}", created.name);
                    Ok(())
                }
            }
        }
        ImagesCommand::Tag {
            source,
            targets,
            force,
        } => {
            let image = images
                .get(ns, &source)
                .await
                .with_context(|| format!("images tag {source}"))?;
            for name in targets {
                let what = || format!("images tag {source} {name}");
                let tagged = Image {
                    name: name.clone(),
                    ..image.clone()
                };
                match images.create(ns, tagged.clone()).await {
                    Ok(_) => {}
                    Err(e) if force && e.kind() == ErrorKind::AlreadyExists => {
                        images
                            .update(ns, tagged, &["target".to_string()])
                            .await
                            .with_context(what)?;
                    }
                    Err(e) => return Err(e).with_context(what),
                }
                if global.format == Format::Table {
                    println!("{name}");
                }
            }
            Ok(())
        }
        ImagesCommand::Label { name, labels } => {
            let what = || format!("images label {name}");
            let (labels, paths) = label_update(&labels)?;
            let mut image = images.get(ns, &name).await.with_context(what)?;
            image.labels = labels;
            let updated = images.update(ns, image, &paths).await.with_context(what)?;
            match global.format {
                Format::Json => output::json(&ImageJson::from(&updated)),
                Format::Table => {
                    println!("{}", labels_text(&updated.labels));
                    Ok(())
                }
            }
        }
        ImagesCommand::Rm { names, sync } => {
            for name in names {
                images
                    .delete(ns, &name, sync)
                    .await
                    .with_context(|| format!("images rm {name}"))?;
                if global.format == Format::Table {
                    println!("{name}");
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_image::media::{OCI_INDEX, OCI_MANIFEST};

    #[test]
    fn media_types_read_naturally_and_are_found_in_blobs() {
        assert_eq!(short_type(OCI_INDEX), "index");
        assert_eq!(short_type(OCI_MANIFEST), "manifest");
        assert_eq!(
            short_type("application/vnd.docker.distribution.manifest.list.v2+json"),
            "manifest.list"
        );
        assert_eq!(short_type("text/plain"), "text/plain");
        assert_eq!(
            berth_image::sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            berth_image::sniff_media_type(br#"{"mediaType":"x/y","manifests":[]}"#).as_deref(),
            Some("x/y")
        );
        assert_eq!(
            berth_image::sniff_media_type(br#"{"config":{},"layers":[]}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(berth_image::sniff_media_type(b"not json"), None);
    }
}
