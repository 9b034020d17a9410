//! Image archives — OCI image layouts and `docker save` archives — to and
//! from the content store.
//!
//! Archives are streamed: every blob goes from the tar entry straight into
//! an ingest writer (the store verifies its digest), and the only things
//! read into memory are small JSON documents, each refused above 20 MiB.
//! Archive entry names are never used as paths.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};

use berth_api::labels;
use berth_content::{read_blob, CommitOptions, ContentStore, Labels, WriterOptions, MAX_READ};
use berth_errdefs::{Error, ErrorKind, Result};
use berth_ids::Digest;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::document::{Descriptor, Document, MAX_DOCUMENT_SIZE};
use crate::media::{self, Compression};
use crate::store::read_document;

/// Largest JSON document read from an archive (containerd's limit after
/// CVE-2023-25153).
pub const MAX_ARCHIVE_DOCUMENT: u64 = 20 * 1024 * 1024;

/// Most manifests and indexes one imported or exported tree may hold.
const MAX_TREE: usize = 1024;

/// An image an archive names: its name there, if any, and its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    pub name: Option<String>,
    pub root: Digest,
}

fn invalid(message: String) -> Error {
    Error::invalid_argument(message)
}

/// What the reading thread sends on.
enum Piece {
    Blob { name: String, size: u64 },
    Data(Vec<u8>),
    End,
    Document { name: String, data: Vec<u8> },
    Link { name: String, target: String },
}

fn check_entry_name(name: &str) -> Result<String> {
    let trimmed = name.trim_start_matches("./");
    if trimmed.starts_with('/') || trimmed.split('/').any(|c| c == "..") {
        return Err(invalid(format!(
            "archive entry {name:?} points outside the archive"
        )));
    }
    Ok(trimmed.to_string())
}

fn is_document(name: &str) -> bool {
    matches!(
        name,
        "oci-layout" | "index.json" | "manifest.json" | "repositories"
    ) || (name.ends_with(".json") && !name.starts_with("blobs/"))
}

fn reading(e: std::io::Error) -> Error {
    Error::io("reading the archive", &e)
}

/// Reads the archive on a thread, sending entries on in pieces.
fn read_archive(input: Box<dyn Read + Send>, tx: mpsc::Sender<Result<Piece>>) {
    let send = |piece: Result<Piece>| tx.blocking_send(piece).is_ok();
    let mut archive = tar::Archive::new(input);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            send(Err(reading(e)));
            return;
        }
    };
    for entry in entries {
        let result: Result<bool> = (|| {
            let mut entry = entry.map_err(reading)?;
            let raw_name = entry
                .path()
                .map_err(|e| Error::io("archive entry name", &e))?
                .to_string_lossy()
                .into_owned();
            let name = check_entry_name(&raw_name)?;
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| Error::io("archive link target", &e))?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Links resolve inside the archive, relative to the entry.
                let base = name.rsplit_once('/').map_or("", |(d, _)| d);
                let joined = if target.starts_with('/') || base.is_empty() || kind.is_hard_link() {
                    target.clone()
                } else {
                    format!("{base}/{target}")
                };
                let target = normalize(&joined)?;
                return Ok(send(Ok(Piece::Link { name, target })));
            }
            if !kind.is_file() {
                return Ok(true);
            }
            let size = entry
                .header()
                .size()
                .map_err(|e| Error::io("archive entry size", &e))?;
            if is_document(&name) {
                if size > MAX_ARCHIVE_DOCUMENT {
                    return Err(Error::resource_exhausted(format!(
                        "{name} is {size} bytes; at most {MAX_ARCHIVE_DOCUMENT} are accepted"
                    )));
                }
                let mut data = Vec::with_capacity(size as usize);
                entry
                    .by_ref()
                    .take(MAX_ARCHIVE_DOCUMENT + 1)
                    .read_to_end(&mut data)
                    .map_err(reading)?;
                return Ok(send(Ok(Piece::Document { name, data })));
            }
            if !send(Ok(Piece::Blob { name, size })) {
                return Ok(false);
            }
            loop {
                let mut buf = vec![0u8; MAX_READ];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = entry.read(&mut buf[filled..]).map_err(reading)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                if !send(Ok(Piece::Data(buf))) {
                    return Ok(false);
                }
            }
            Ok(send(Ok(Piece::End)))
        })();
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                send(Err(e));
                return;
            }
        }
    }
}

/// `a/./b/../c` -> `a/c`, refusing to climb out.
fn normalize(path: &str) -> Result<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(invalid(format!(
                        "archive link {path:?} points outside the archive"
                    )));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// A blob stored from the archive.
#[derive(Debug, Clone)]
struct Stored {
    digest: Digest,
    size: u64,
    compression: Compression,
}

/// How long a failed import waits for its reader thread to stop.
const READER_STOP: std::time::Duration = std::time::Duration::from_secs(1);

/// What an archive held, by entry name.
#[derive(Default)]
struct ArchivePieces {
    documents: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Stored>,
    links: HashMap<String, String>,
}

/// Receives the reader's pieces, storing blobs as they come; consumes the
/// receiver, so the reader's next send fails once this returns.
async fn receive_pieces(
    store: &dyn ContentStore,
    namespace: &str,
    mut rx: mpsc::Receiver<Result<Piece>>,
) -> Result<ArchivePieces> {
    let mut pieces = ArchivePieces::default();
    while let Some(piece) = rx.recv().await {
        match piece? {
            Piece::Document { name, data } => {
                pieces.documents.insert(name, data);
            }
            Piece::Link { name, target } => {
                pieces.links.insert(name, target);
            }
            Piece::Blob { name, size } => {
                let stored = import_blob(store, namespace, &name, size, &mut rx).await?;
                pieces.blobs.insert(name, stored);
            }
            Piece::Data(_) | Piece::End => {
                return Err(Error::internal("the archive reader lost its place"))
            }
        }
    }
    Ok(pieces)
}

/// Imports an archive into the content store, each tree labelled for the
/// collector; returns the images it names.
pub async fn import(
    store: &dyn ContentStore,
    namespace: &str,
    input: Box<dyn Read + Send>,
) -> Result<Vec<ArchiveImage>> {
    let (tx, rx) = mpsc::channel(4);
    let (finished_tx, finished) = tokio::sync::oneshot::channel::<()>();
    let reader = std::thread::spawn(move || {
        read_archive(input, tx);
        let _ = finished_tx.send(());
    });
    let received = receive_pieces(store, namespace, rx).await;
    // The receiver is gone now, on an error too, so the reader stops at
    // its next send. It is waited for, so that no thread outlives a failed
    // import reading on, but only briefly: an input that stalls (a pipe
    // left open) must not hold up the error.
    if tokio::time::timeout(READER_STOP, finished).await.is_ok() {
        let _ = reader.join();
    }
    let ArchivePieces {
        documents,
        blobs,
        links,
    } = received?;
    let resolve = |name: &str| -> Option<Stored> {
        let mut name = name.trim_start_matches("./").to_string();
        for _ in 0..16 {
            if let Some(b) = blobs.get(&name) {
                return Some(b.clone());
            }
            name = links.get(&name)?.clone();
        }
        None
    };
    let images = if let Some(index) = documents.get("index.json") {
        layout_images(index, &resolve)?
    } else if let Some(manifest) = documents.get("manifest.json") {
        docker_images(store, namespace, manifest, &documents, &resolve).await?
    } else {
        return Err(invalid(
            "neither index.json (OCI image layout) nor manifest.json (docker save) is in the archive"
                .into(),
        ));
    };
    for image in &images {
        label_tree(store, namespace, &image.root).await?;
    }
    Ok(images)
}

/// The images of an OCI image layout's index.json.
fn layout_images(
    index: &[u8],
    resolve: &(dyn Fn(&str) -> Option<Stored> + Sync),
) -> Result<Vec<ArchiveImage>> {
    // The layout's own index: parsed leniently (schemaVersion is often
    // missing), its digests checked all the same.
    #[derive(Deserialize)]
    struct LayoutIndex {
        #[serde(default)]
        manifests: Vec<LayoutEntry>,
    }
    #[derive(Deserialize)]
    struct LayoutEntry {
        digest: String,
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    let index: LayoutIndex =
        serde_json::from_slice(index).map_err(|e| invalid(format!("index.json: {e}")))?;
    let mut images = Vec::new();
    for m in index.manifests {
        let root = Digest::parse(&m.digest).map_err(|e| invalid(format!("index.json: {e}")))?;
        if resolve(&format!("blobs/sha256/{}", root.hex())).is_none() {
            return Err(invalid(format!(
                "index.json names {root}, which the archive does not hold"
            )));
        }
        images.push(ArchiveImage {
            name: m.annotations.get(labels::OCI_REF_NAME).cloned(),
            root,
        });
    }
    Ok(images)
}

async fn import_blob(
    store: &dyn ContentStore,
    namespace: &str,
    name: &str,
    size: u64,
    rx: &mut mpsc::Receiver<Result<Piece>>,
) -> Result<Stored> {
    // Blobs named by digest are checked against it; other files (docker's
    // legacy layer.tar) are stored under the digest they turn out to have.
    let expected = name
        .strip_prefix("blobs/sha256/")
        .map(|hex| {
            Digest::parse(&format!("sha256:{hex}"))
                .map_err(|e| invalid(format!("archive entry {name}: {e}")))
        })
        .transpose()?;
    let reference = format!("import-{}", &Digest::of(name.as_bytes()).hex()[..32]);
    let mut options = WriterOptions::new(reference.clone()).total(size);
    options.expected = expected.clone();
    let mut writer = match store.writer(namespace, options).await {
        Ok(w) => Some(w),
        Err(e) if e.is(ErrorKind::AlreadyExists) => None,
        Err(e) => return Err(e),
    };
    let opened = writer.is_some();
    let stored: Result<Stored> = async {
        if let Some(w) = writer.as_mut() {
            if w.status().await?.offset != 0 {
                w.restart().await?;
            }
        }
        let mut compression = Compression::None;
        let mut first = true;
        // Entries not named by their digest are hashed here too, to know what
        // they are when the store already has them.
        let mut hasher = expected.is_none().then(berth_ids::Sha256Hasher::new);
        loop {
            match rx.recv().await {
                Some(Ok(Piece::Data(data))) => {
                    if first {
                        compression = Compression::sniff(&data);
                        first = false;
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(&data);
                    }
                    if let Some(w) = writer.as_mut() {
                        w.write(data).await?;
                    }
                }
                Some(Ok(Piece::End)) => break,
                Some(Err(e)) => return Err(e),
                _ => return Err(invalid(format!("archive entry {name} ended early"))),
            }
        }
        let known = expected.clone().or_else(|| hasher.map(|h| h.finalize()));
        let digest = match writer {
            Some(w) => match w
                .commit(CommitOptions {
                    size: Some(size),
                    expected: expected.clone(),
                    labels: Labels::new(),
                })
                .await
            {
                Ok(d) => d,
                Err(e) if e.is(ErrorKind::AlreadyExists) => known.clone().ok_or(e)?,
                Err(e) => return Err(e.context(format!("archive entry {name}"))),
            },
            None => known
                .clone()
                .ok_or_else(|| Error::internal(format!("{name}: no digest")))?,
        };
        Ok(Stored {
            digest,
            size,
            compression,
        })
    }
    .await;
    if stored.is_err() && opened {
        // A failed entry leaves no ingest behind: nothing would resume it.
        // (The entry's own error is what the caller needs to see.)
        let _ = berth_content::abort_released(store, namespace, &reference).await;
    }
    stored
}

/// Stores a small document the archive holds whole; present already is
/// fine.
async fn store_document(
    store: &dyn ContentStore,
    namespace: &str,
    reference: &str,
    data: &[u8],
) -> Result<Digest> {
    match berth_content::write_blob(store, namespace, reference, data, None, Labels::new()).await {
        Ok(digest) => Ok(digest),
        Err(e) if e.is(ErrorKind::AlreadyExists) => Ok(Digest::of(data)),
        Err(e) => Err(e),
    }
}

/// One entry of a `docker save` archive's manifest.json.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// The Docker schema 2 manifest made for a `docker save` entry.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DockerManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Images of a `docker save` archive: a Docker schema 2 manifest is made for
/// each entry of manifest.json from its config and layer files.
async fn docker_images(
    store: &dyn ContentStore,
    namespace: &str,
    manifest: &[u8],
    documents: &HashMap<String, Vec<u8>>,
    resolve: &(dyn Fn(&str) -> Option<Stored> + Sync),
) -> Result<Vec<ArchiveImage>> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(manifest).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let mut images = Vec::new();
    for entry in entries {
        let config_name = check_entry_name(&entry.config)?;
        let config = match documents.get(&config_name) {
            Some(data) => {
                let digest = store_document(store, namespace, "import-config", data).await?;
                Descriptor::new(media::DOCKER_CONFIG, digest, data.len() as u64)
            }
            None => {
                let stored = resolve(&config_name).ok_or_else(|| {
                    invalid(format!(
                        "manifest.json names {config_name}, which the archive does not hold"
                    ))
                })?;
                Descriptor::new(media::DOCKER_CONFIG, stored.digest, stored.size)
            }
        };
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let name = check_entry_name(layer)?;
            let stored = resolve(&name).ok_or_else(|| {
                invalid(format!(
                    "manifest.json names layer {name}, which the archive does not hold"
                ))
            })?;
            layers.push(Descriptor::new(
                stored.compression.docker_layer(),
                stored.digest,
                stored.size,
            ));
        }
        let manifest = to_json(&DockerManifest {
            schema_version: 2,
            media_type: media::DOCKER_MANIFEST,
            config,
            layers,
        })?;
        let root = store_document(store, namespace, "import-manifest", &manifest).await?;
        let tags = entry.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            images.push(ArchiveImage {
                name: None,
                root: root.clone(),
            });
        }
        for tag in tags {
            images.push(ArchiveImage {
                name: Some(tag),
                root: root.clone(),
            });
        }
    }
    Ok(images)
}

/// Gives an imported tree containerd's garbage-collection labels, parents
/// pointing at children (an index at the manifests the store holds).
async fn label_tree(store: &dyn ContentStore, namespace: &str, root: &Digest) -> Result<()> {
    let mut pending = vec![root.clone()];
    let mut seen = HashSet::new();
    while let Some(digest) = pending.pop() {
        if !seen.insert(digest.clone()) || seen.len() > MAX_TREE {
            continue;
        }
        let data = read_document(store, namespace, &digest).await?;
        let document = Document::parse(None, &data).map_err(|e| e.context(&digest))?;
        if let Document::Index(index) = &document {
            for child in &index.manifests {
                if store.info(namespace, &child.digest).await.is_ok() {
                    pending.push(child.digest.clone());
                }
            }
        }
        let labels: Labels = document.gc_labels().into_iter().collect();
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        let mut info = store.info(namespace, &digest).await?;
        info.labels = labels;
        store.update(namespace, info, &paths).await?;
    }
    Ok(())
}

/// An export whose trees have been walked: every blob it will write is
/// known to be in the store.
#[derive(Debug)]
pub struct Export {
    /// Blobs by digest, with their sizes.
    members: BTreeMap<Digest, u64>,
    index_entries: Vec<Descriptor>,
    docker_entries: Vec<DockerEntry>,
}

/// Walks the trees of `images`, so a missing blob fails before anything is
/// written; [`Export::write`] then writes the archive.
pub async fn plan_export(
    store: &dyn ContentStore,
    namespace: &str,
    images: &[ArchiveImage],
) -> Result<Export> {
    // Blobs by digest, with their sizes.
    let mut members: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut index_entries = Vec::new();
    let mut docker_entries = Vec::new();
    for image in images {
        let root = &image.root;
        let data = read_blob(store, namespace, root, MAX_DOCUMENT_SIZE).await?;
        let root_document = Document::parse(None, &data)
            .map_err(|e| e.context(format!("{root} is not an image index or manifest")))?;
        let mut entry = Descriptor::new(
            root_document.media_type().to_string(),
            root.clone(),
            data.len() as u64,
        );
        if let Some(name) = &image.name {
            entry
                .annotations
                .insert(labels::OCI_REF_NAME.into(), name.clone());
            entry
                .annotations
                .insert(labels::CONTAINERD_IMAGE_NAME.into(), name.clone());
        }
        index_entries.push(entry);
        let mut pending = vec![(root.clone(), root_document, data.len() as u64)];
        while let Some((digest, document, size)) = pending.pop() {
            members.insert(digest.clone(), size);
            if members.len() > MAX_TREE * 64 {
                return Err(Error::resource_exhausted(format!(
                    "{root}: too many blobs to export"
                )));
            }
            match document {
                Document::Index(index) => {
                    for child in index.manifests {
                        match read_blob(store, namespace, &child.digest, MAX_DOCUMENT_SIZE).await {
                            Ok(bytes) => {
                                let doc = Document::parse(Some(&child.media_type), &bytes)
                                    .map_err(|e| e.context(&child.digest))?;
                                pending.push((child.digest, doc, bytes.len() as u64));
                            }
                            // A platform not fetched.
                            Err(e) if e.is(ErrorKind::NotFound) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Document::Manifest(manifest) => {
                    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                        let info = store
                            .info(namespace, &blob.digest)
                            .await
                            .map_err(|e| e.context(format!("{} of {digest}", blob.digest)))?;
                        members.insert(blob.digest.clone(), info.size);
                    }
                    docker_entries.push(DockerEntry {
                        config: format!("blobs/sha256/{}", manifest.config.digest.hex()),
                        repo_tags: Some(image.name.iter().cloned().collect()),
                        layers: manifest
                            .layers
                            .iter()
                            .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                            .collect(),
                    });
                }
            }
        }
    }
    Ok(Export {
        members,
        index_entries,
        docker_entries,
    })
}

impl Export {
    /// Writes the archive: both an OCI image layout and a `docker save`
    /// archive.
    pub async fn write(
        self,
        store: &dyn ContentStore,
        namespace: &str,
        out: &mut dyn Write,
    ) -> Result<()> {
        let Export {
            members,
            index_entries,
            docker_entries,
        } = self;
        write_entry(
            out,
            "oci-layout",
            format!(
                r#"{{"imageLayoutVersion":"{}"}}"#,
                media::OCI_LAYOUT_VERSION
            )
            .as_bytes(),
        )?;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct LayoutIndex<'a> {
            schema_version: u32,
            media_type: &'a str,
            manifests: Vec<Descriptor>,
        }
        let index = to_json(&LayoutIndex {
            schema_version: 2,
            media_type: media::OCI_INDEX,
            manifests: index_entries,
        })?;
        write_entry(out, "index.json", &index)?;
        write_entry(out, "manifest.json", &to_json(&docker_entries)?)?;
        write_dir(out, "blobs/")?;
        write_dir(out, "blobs/sha256/")?;
        for (digest, size) in &members {
            write_header(
                out,
                &format!("blobs/sha256/{}", digest.hex()),
                *size,
                tar::EntryType::Regular,
            )?;
            let mut offset = 0u64;
            while offset < *size {
                let chunk = store.read_at(namespace, digest, offset, MAX_READ).await?;
                if chunk.is_empty() {
                    return Err(Error::failed_precondition(format!(
                        "{digest} ended at {offset} of {size} bytes"
                    )));
                }
                out.write_all(&chunk).map_err(writing)?;
                offset += chunk.len() as u64;
            }
            pad(out, *size)?;
        }
        // The end of a tar archive: two zero blocks.
        out.write_all(&[0u8; 1024]).map_err(writing)?;
        out.flush().map_err(writing)?;
        Ok(())
    }
}

/// The archive's own JSON documents.
fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::internal(format!("encoding JSON: {e}")))
}

fn writing(e: std::io::Error) -> Error {
    Error::io("writing the archive", &e)
}

fn write_header(out: &mut dyn Write, name: &str, size: u64, kind: tar::EntryType) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name).map_err(writing)?;
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    out.write_all(header.as_bytes()).map_err(writing)
}

fn pad(out: &mut dyn Write, size: u64) -> Result<()> {
    let rest = (512 - size % 512) % 512;
    out.write_all(&vec![0u8; rest as usize]).map_err(writing)
}

fn write_entry(out: &mut dyn Write, name: &str, data: &[u8]) -> Result<()> {
    write_header(out, name, data.len() as u64, tar::EntryType::Regular)?;
    out.write_all(data).map_err(writing)?;
    pad(out, data.len() as u64)
}

fn write_dir(out: &mut dyn Write, name: &str) -> Result<()> {
    write_header(out, name, 0, tar::EntryType::Directory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_stay_inside() {
        assert_eq!(
            check_entry_name("./blobs/sha256/ab").unwrap(),
            "blobs/sha256/ab"
        );
        for bad in ["../x", "/etc/passwd", "blobs/../../x", "a/../../b"] {
            assert!(check_entry_name(bad).is_err(), "{bad}");
        }
        assert_eq!(normalize("abc/../def/layer.tar").unwrap(), "def/layer.tar");
        assert!(normalize("../outside").is_err());
    }
}
