//! What an image is made of, read from the content store: the manifest
//! for this host's platform, its layers and their diff IDs. Shared by
//! `berth pull` and `berth unpack`.

use anyhow::{bail, Context, Result};
use berth_client::RemoteContentStore;
use berth_ids::Digest;
use berth_snapshot::Descriptor;

/// Largest manifest, index or config read whole.
const MAX_DOCUMENT: u64 = 4 << 20;

/// The layers of one platform's manifest.
#[derive(Debug, Clone)]
pub struct ImageLayers {
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<Descriptor>,
}

impl ImageLayers {
    /// Parses an image manifest's JSON.
    pub fn from_manifest(manifest: Digest, data: &[u8]) -> Result<ImageLayers> {
        let doc: serde_json::Value =
            serde_json::from_slice(data).with_context(|| format!("parsing {manifest}"))?;
        let config = digest_at(&doc["config"], "the manifest's config")?;
        let layers = doc["layers"]
            .as_array()
            .context("the manifest has no layers")?
            .iter()
            .map(|l| {
                Ok(Descriptor {
                    media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
                    digest: digest_at(l, "a layer")?,
                    size: l["size"].as_u64().context("a layer has no size")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageLayers {
            manifest,
            config,
            layers,
        })
    }

    /// The manifest `root` names for this host (itself, or the index entry
    /// for `platform`, else for linux on this machine's architecture).
    pub async fn resolve(
        store: &RemoteContentStore,
        ns: &str,
        root: &Digest,
        platform: Option<&str>,
    ) -> Result<ImageLayers> {
        let mut digest = root.clone();
        let mut data = read_document(store, ns, &digest).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&data).with_context(|| format!("parsing {digest}"))?;
        if let Some(manifests) = doc["manifests"].as_array() {
            let wanted = platform.map(str::to_string).unwrap_or_else(host_platform);
            let chosen = manifests
                .iter()
                .find(|m| platform_of(&m["platform"]).as_deref() == Some(wanted.as_str()))
                .with_context(|| format!("{root} has no manifest for {wanted}"))?;
            digest = digest_at(chosen, "the index entry")?;
            data = read_document(store, ns, &digest).await?;
        }
        ImageLayers::from_manifest(digest, &data)
    }

    /// The diff IDs from the image config (which must be in the store).
    pub async fn diff_ids(&self, store: &RemoteContentStore, ns: &str) -> Result<Vec<Digest>> {
        let data = read_document(store, ns, &self.config).await?;
        let config: serde_json::Value =
            serde_json::from_slice(&data).with_context(|| format!("parsing {}", self.config))?;
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .context("the config has no diff_ids")?
            .iter()
            .map(|d| {
                Ok(Digest::parse(
                    d.as_str().context("a diff ID is not a string")?,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        if diff_ids.len() != self.layers.len() {
            bail!(
                "{} lists {} layers but its config {} diff IDs",
                self.manifest,
                self.layers.len(),
                diff_ids.len()
            );
        }
        Ok(diff_ids)
    }
}

/// Tells the collector that the image (through its config blob) holds the
/// snapshot chain it was unpacked into, as containerd labels it.
pub async fn label_unpacked(
    store: &RemoteContentStore,
    ns: &str,
    config: &Digest,
    snapshotter: &str,
    chain_id: &Digest,
) -> Result<()> {
    // snapd also answers to "overlay"; the collector knows it as overlayfs.
    let snapshotter = match snapshotter {
        "overlay" | "" => berth_snapshot::DEFAULT_SNAPSHOTTER,
        other => other,
    };
    let key = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
    berth_content::set_label(store, ns, config, &key, Some(chain_id.to_string()))
        .await
        .with_context(|| format!("labelling {config}"))?;
    Ok(())
}

/// `os/arch` of this machine, as image indexes name platforms.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

/// `os/arch[/variant]` of an index entry's platform object.
pub fn platform_of(platform: &serde_json::Value) -> Option<String> {
    let os = platform["os"].as_str()?;
    let arch = platform["architecture"].as_str()?;
    Some(match platform["variant"].as_str() {
        Some(variant) if !variant.is_empty() && !matches_host_variant(arch, variant) => {
            format!("{os}/{arch}/{variant}")
        }
        _ => format!("{os}/{arch}"),
    })
}

/// Variants that name the default for their architecture (arm64/v8).
fn matches_host_variant(arch: &str, variant: &str) -> bool {
    arch == "arm64" && variant == "v8"
}

/// A manifest, index or config, checked against its digest.
pub async fn read_document(
    store: &RemoteContentStore,
    ns: &str,
    digest: &Digest,
) -> Result<Vec<u8>> {
    let data = berth_content::read_blob(store, ns, digest, MAX_DOCUMENT)
        .await
        .with_context(|| format!("reading {digest}"))?;
    if Digest::of(&data) != *digest {
        bail!("{digest} does not match its content");
    }
    Ok(data)
}

fn digest_at(value: &serde_json::Value, what: &str) -> Result<Digest> {
    let text = value["digest"]
        .as_str()
        .with_context(|| format!("{what} has no digest"))?;
    Ok(Digest::parse(text)?)
}
