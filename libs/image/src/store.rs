//! Reading an image back from the content store.

use berth_api::labels;
use berth_content::ContentStore;
use berth_errdefs::{Error, Result};
use berth_ids::Digest;

use crate::document::{parse_config, Config, Document, Manifest, MAX_DOCUMENT_SIZE};
use crate::platform::Matcher;

/// A manifest, index or config from the store, checked against its digest.
pub async fn read_document(
    store: &dyn ContentStore,
    namespace: &str,
    digest: &Digest,
) -> Result<Vec<u8>> {
    // Most documents come whole in one read, and their digest says so: the
    // size need not be asked first.
    let first = store
        .read_at(namespace, digest, 0, berth_content::MAX_READ)
        .await
        .map_err(|e| e.context(format!("reading {digest}")))?;
    if first.len() < berth_content::MAX_READ && Digest::of(&first) == *digest {
        return Ok(first);
    }
    let data = berth_content::read_blob(store, namespace, digest, MAX_DOCUMENT_SIZE)
        .await
        .map_err(|e| e.context(format!("reading {digest}")))?;
    if Digest::of(&data) != *digest {
        return Err(Error::failed_precondition(format!(
            "{digest} does not match its content"
        )));
    }
    Ok(data)
}

/// One platform's image manifest, as resolved from a root.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    pub digest: Digest,
    pub manifest: Manifest,
}

/// The manifest `root` names for `platforms`: the root itself, or the best
/// of its index's entries (nested indexes followed).
pub async fn resolve_manifest(
    store: &dyn ContentStore,
    namespace: &str,
    root: &Digest,
    platforms: &Matcher,
) -> Result<ResolvedManifest> {
    let mut digest = root.clone();
    // An index may point at an index; a few levels are plenty.
    for _ in 0..4 {
        let data = read_document(store, namespace, &digest).await?;
        match Document::parse(None, &data).map_err(|e| e.context(&digest))? {
            Document::Manifest(manifest) => return Ok(ResolvedManifest { digest, manifest }),
            Document::Index(index) => {
                let chosen = platforms
                    .best(
                        index
                            .manifests
                            .iter()
                            .filter_map(|m| m.platform.as_ref().map(|p| (p, m))),
                    )
                    .or_else(|| index.manifests.iter().find(|m| m.platform.is_none()))
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "{root} has no manifest for {}",
                            platforms
                                .wanted()
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                digest = chosen.digest.clone();
            }
        }
    }
    Err(Error::invalid_argument(format!(
        "{root}: indexes nested too deep"
    )))
}

/// The image config a manifest names (which must be in the store).
pub async fn read_config(
    store: &dyn ContentStore,
    namespace: &str,
    manifest: &Manifest,
) -> Result<Config> {
    let data = read_document(store, namespace, &manifest.config.digest).await?;
    parse_config(&data).map_err(|e| e.context(&manifest.config.digest))
}

/// Tells the collector that the image (through its config blob) holds the
/// snapshot chain it was unpacked into, as containerd labels it.
pub async fn label_unpacked(
    store: &dyn ContentStore,
    namespace: &str,
    config: &Digest,
    snapshotter: &str,
    chain_id: &Digest,
) -> Result<()> {
    let key = labels::gc_ref_snapshot(berth_snapshot::canonical_snapshotter(snapshotter));
    berth_content::set_label(store, namespace, config, &key, Some(chain_id.to_string()))
        .await
        .map_err(|e| e.context(format!("labelling {config}")))
}

/// The root an image argument names: a digest as it is, else the target of
/// the image record of that name (as given, or as a normalised reference:
/// `busybox` is `docker.io/library/busybox:latest`).
pub async fn image_root(
    images: &dyn berth_metadata::ImageStore,
    namespace: &str,
    image: &str,
) -> Result<Digest> {
    if image.starts_with("sha256:") {
        return Digest::parse(image).map_err(|e| Error::invalid_argument(e.to_string()));
    }
    let mut names = vec![image.to_string()];
    if let Ok(reference) = berth_reference::Reference::parse(image) {
        names.push(reference.to_string());
    }
    for name in &names {
        match images.get(namespace, name).await {
            Ok(record) => return Ok(record.target.digest),
            Err(e) if e.is(berth_errdefs::ErrorKind::NotFound) => {}
            Err(e) => return Err(e.context(format!("image {name}"))),
        }
    }
    Err(Error::not_found(format!("image {image} not found")))
}

/// Creates the image record `name` for `root`, or points an existing one at
/// it.
pub async fn record_image(
    images: &dyn berth_metadata::ImageStore,
    namespace: &str,
    name: &str,
    root: &crate::document::Descriptor,
) -> Result<()> {
    let image = berth_metadata::Image {
        name: name.to_string(),
        labels: Default::default(),
        // The record names the root only: not its annotations or platform.
        target: berth_metadata::Descriptor::new(
            root.media_type.clone(),
            root.digest.clone(),
            root.size,
        ),
        created_at: std::time::SystemTime::UNIX_EPOCH,
        updated_at: std::time::SystemTime::UNIX_EPOCH,
    };
    match images.create(namespace, image.clone()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == berth_errdefs::ErrorKind::AlreadyExists => images
            .update(namespace, image, &["target".to_string()])
            .await
            .map(|_| ())
            .map_err(|e| e.context(format!("updating image {name}"))),
        Err(e) => Err(e.context(format!("recording image {name}"))),
    }
}

/// The descriptor of a root (index or manifest) in the store: its media
/// type read from the document itself.
pub async fn root_descriptor(
    store: &dyn ContentStore,
    namespace: &str,
    root: &Digest,
) -> Result<crate::document::Descriptor> {
    let data = read_document(store, namespace, root).await?;
    let media_type = crate::document::sniff_media_type(&data).ok_or_else(|| {
        Error::invalid_argument(format!("{root} is neither an index nor a manifest"))
    })?;
    Ok(crate::document::Descriptor::new(
        media_type,
        root.clone(),
        data.len() as u64,
    ))
}
