//! Image documents — indexes, manifests and configs — parsed with
//! `oci-spec` from bytes that are hostile until checked: size bounded
//! before parsing, schema version 2 required, every digest validated as
//! berth's [`Digest`] (so it can name a blob in the store), every size
//! within bounds.

use std::collections::BTreeMap;

use berth_api::labels;
use berth_errdefs::{Error, Result};
use berth_ids::Digest;
use oci_spec::image as spec;
use serde::Deserialize;

use crate::media::{self, Kind};
use crate::platform::{Platform, PlatformExt};

/// Largest manifest, index or config read into memory (containerd's limit
/// for manifests).
pub const MAX_DOCUMENT_SIZE: u64 = 4 * 1024 * 1024;

/// Most descriptors one document may list.
pub const MAX_CHILDREN: usize = 4096;

pub use berth_ids::Descriptor;

/// What the image library adds to the shared descriptor: reading one from
/// `oci-spec`'s types, and what kind of document or blob it names.
pub trait DescriptorExt: Sized {
    /// Checks an `oci-spec` descriptor.
    fn from_spec(d: &spec::Descriptor) -> Result<Self>;
    fn kind(&self) -> Kind;
}

impl DescriptorExt for Descriptor {
    fn from_spec(d: &spec::Descriptor) -> Result<Descriptor> {
        let digest = Digest::parse(d.digest().as_ref())
            .map_err(|e| Error::invalid_argument(format!("descriptor digest: {e}")))?;
        if d.size() > i64::MAX as u64 {
            return Err(Error::invalid_argument(format!(
                "{digest}: size {} is out of range",
                d.size()
            )));
        }
        Ok(Descriptor {
            media_type: d.media_type().to_string(),
            digest,
            size: d.size(),
            urls: d.urls().clone().unwrap_or_default(),
            platform: d.platform().as_ref().map(Platform::from_spec),
            annotations: d.annotations().clone().unwrap_or_default(),
        })
    }

    fn kind(&self) -> Kind {
        media::kind(&self.media_type)
    }
}

/// An image manifest: a config and layers, bottom first.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// containerd's references from a manifest to its blobs, for the
    /// collector.
    pub fn gc_labels(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(
            labels::GC_REF_CONFIG.to_string(),
            self.config.digest.to_string(),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            out.insert(labels::gc_ref_layer(i), layer.digest.to_string());
        }
        out
    }
}

/// An image index (or Docker manifest list): manifests by platform.
#[derive(Debug, Clone)]
pub struct Index {
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// containerd's references from an index to the children it keeps (those
/// fetched, or present), numbered in order.
pub fn index_gc_labels<'a>(
    children: impl IntoIterator<Item = &'a Descriptor>,
) -> BTreeMap<String, String> {
    children
        .into_iter()
        .enumerate()
        .map(|(i, c)| (labels::gc_ref_manifest(i), c.digest.to_string()))
        .collect()
}

/// An index or a manifest: what an image's root may be.
#[derive(Debug, Clone)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

impl Document {
    /// Parses a root of `media_type` (or, if that says nothing useful,
    /// whatever the document says it is).
    pub fn parse(media_type: Option<&str>, data: &[u8]) -> Result<Document> {
        let media_type = match media_type.map(media::kind) {
            Some(Kind::Index | Kind::Manifest) => media_type.map(str::to_string),
            _ => sniff_media_type(data),
        };
        match media_type.as_deref().map(media::kind) {
            Some(Kind::Index) => parse_index(data).map(Document::Index),
            Some(Kind::Manifest) => parse_manifest(data).map(Document::Manifest),
            _ => Err(Error::invalid_argument(
                "not an image index or manifest".to_string(),
            )),
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Document::Index(i) => &i.media_type,
            Document::Manifest(m) => &m.media_type,
        }
    }

    /// The blobs the document names: an index's manifests, or a manifest's
    /// config then layers.
    pub fn children(&self) -> Vec<&Descriptor> {
        match self {
            Document::Index(i) => i.manifests.iter().collect(),
            Document::Manifest(m) => std::iter::once(&m.config).chain(&m.layers).collect(),
        }
    }

    /// containerd's references from the document to all its children.
    pub fn gc_labels(&self) -> BTreeMap<String, String> {
        match self {
            Document::Index(i) => index_gc_labels(&i.manifests),
            Document::Manifest(m) => m.gc_labels(),
        }
    }
}

fn bounded(what: &str, data: &[u8]) -> Result<()> {
    if data.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(Error::resource_exhausted(format!(
            "the image {what} is {} bytes; at most {MAX_DOCUMENT_SIZE} are read",
            data.len()
        )));
    }
    Ok(())
}

fn schema_v2(what: &str, version: u32) -> Result<()> {
    if version != 2 {
        return Err(Error::invalid_argument(format!(
            "image {what} has schemaVersion {version}; only 2 is supported"
        )));
    }
    Ok(())
}

fn descriptors(what: &str, list: &[spec::Descriptor]) -> Result<Vec<Descriptor>> {
    if list.len() > MAX_CHILDREN {
        return Err(Error::resource_exhausted(format!(
            "the image {what} lists {} descriptors; at most {MAX_CHILDREN} are accepted",
            list.len()
        )));
    }
    list.iter()
        .map(|d| Descriptor::from_spec(d).map_err(|e| e.context(format!("image {what}"))))
        .collect()
}

fn malformed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid_argument(format!("malformed image {what}: {e}"))
}

/// An image manifest (OCI or Docker schema 2).
pub fn parse_manifest(data: &[u8]) -> Result<Manifest> {
    bounded("manifest", data)?;
    let m: spec::ImageManifest =
        serde_json::from_slice(data).map_err(|e| malformed("manifest", e))?;
    schema_v2("manifest", m.schema_version())?;
    let media_type = m
        .media_type()
        .as_ref()
        .map_or(media::OCI_MANIFEST.to_string(), |t| t.to_string());
    if media::kind(&media_type) != Kind::Manifest {
        return Err(malformed(
            "manifest",
            format!("media type {media_type:?} is not a manifest's"),
        ));
    }
    let config = Descriptor::from_spec(m.config())?;
    Ok(Manifest {
        media_type,
        config,
        layers: descriptors("manifest", m.layers())?,
    })
}

/// An image index (OCI) or manifest list (Docker).
pub fn parse_index(data: &[u8]) -> Result<Index> {
    bounded("index", data)?;
    let i: spec::ImageIndex = serde_json::from_slice(data).map_err(|e| malformed("index", e))?;
    schema_v2("index", i.schema_version())?;
    let media_type = i
        .media_type()
        .as_ref()
        .map_or(media::OCI_INDEX.to_string(), |t| t.to_string());
    if media::kind(&media_type) != Kind::Index {
        return Err(malformed(
            "index",
            format!("media type {media_type:?} is not an index's"),
        ));
    }
    Ok(Index {
        media_type,
        manifests: descriptors("index", i.manifests())?,
    })
}

/// An image config: the spec's whole document (what a container runs),
/// with its diff IDs checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub spec: spec::ImageConfiguration,
    /// The digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
}

pub fn parse_config(data: &[u8]) -> Result<Config> {
    bounded("config", data)?;
    let config: spec::ImageConfiguration =
        serde_json::from_slice(data).map_err(|e| malformed("config", e))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() > MAX_CHILDREN {
        return Err(Error::resource_exhausted(format!(
            "the image config lists {} layers; at most {MAX_CHILDREN} are accepted",
            diff_ids.len()
        )));
    }
    let diff_ids = diff_ids
        .iter()
        .map(|d| Digest::parse(d).map_err(|e| malformed("config", format!("diff ID: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(Config {
        spec: config,
        diff_ids,
    })
}

impl Config {
    /// The diff IDs for `manifest`'s layers, which must be as many.
    pub fn diff_ids_for(&self, manifest: &Manifest) -> Result<&[Digest]> {
        if self.diff_ids.len() != manifest.layers.len() {
            return Err(Error::invalid_argument(format!(
                "the manifest lists {} layers but its config {} diff IDs",
                manifest.layers.len(),
                self.diff_ids.len()
            )));
        }
        Ok(&self.diff_ids)
    }
}

/// The media type of a manifest document, from the document itself when
/// whoever sent it said nothing useful.
pub fn sniff_media_type(data: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    if data.len() as u64 > MAX_DOCUMENT_SIZE {
        return None;
    }
    let probe: Probe = serde_json::from_slice(data).ok()?;
    match probe {
        Probe {
            media_type: Some(m),
            ..
        } if !m.is_empty() => Some(m),
        Probe {
            manifests: Some(_), ..
        } => Some(media::OCI_INDEX.to_string()),
        Probe {
            config: Some(_), ..
        } => Some(media::OCI_MANIFEST.to_string()),
        _ => None,
    }
}
