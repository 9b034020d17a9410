//! `berth import FILE` and `berth export FILE IMAGE...`: image archives
//! (OCI image layouts and `docker save` archives) to and from the content
//! store.
//!
//! Archives are streamed: every blob goes from the tar entry straight into
//! an ingest writer (contentd verifies its digest), and the only things read
//! into memory are small JSON documents, each refused above 20 MiB.
//! Archive entry names are never used as paths.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use berth_client::RemoteContentStore;
use berth_content::{read_blob, CommitOptions, ContentStore, Labels, WriterOptions, MAX_READ};
use berth_errdefs::ErrorKind;
use berth_ids::Digest;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::global::Global;
use crate::output::{self, Format};

/// Largest JSON document read from an archive (containerd's limit after
/// CVE-2023-25153).
const MAX_DOCUMENT: u64 = 20 * 1024 * 1024;
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The archive; - reads standard input.
    pub file: PathBuf,
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
        bail!("archive entry {name:?} points outside the archive");
    }
    Ok(trimmed.to_string())
}

fn is_document(name: &str) -> bool {
    matches!(
        name,
        "oci-layout" | "index.json" | "manifest.json" | "repositories"
    ) || (name.ends_with(".json") && !name.starts_with("blobs/"))
}

/// Reads the archive on a thread, sending entries on in pieces.
fn read_archive(input: Box<dyn Read + Send>, tx: mpsc::Sender<Result<Piece>>) {
    let send = |piece: Result<Piece>| tx.blocking_send(piece).is_ok();
    let mut archive = tar::Archive::new(input);
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            send(Err(anyhow!("reading the archive: {e}")));
            return;
        }
    };
    for entry in entries {
        let result: Result<bool> = (|| {
            let mut entry = entry.context("reading the archive")?;
            let raw_name = entry
                .path()
                .context("archive entry name")?
                .to_string_lossy()
                .into_owned();
            let name = check_entry_name(&raw_name)?;
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .context("archive link target")?
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
            let size = entry.header().size().context("archive entry size")?;
            if is_document(&name) {
                if size > MAX_DOCUMENT {
                    bail!("{name} is {size} bytes; at most {MAX_DOCUMENT} are accepted");
                }
                let mut data = Vec::with_capacity(size as usize);
                entry
                    .by_ref()
                    .take(MAX_DOCUMENT + 1)
                    .read_to_end(&mut data)?;
                return Ok(send(Ok(Piece::Document { name, data })));
            }
            if !send(Ok(Piece::Blob { name, size })) {
                return Ok(false);
            }
            loop {
                let mut buf = vec![0u8; MAX_READ];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = entry.read(&mut buf[filled..])?;
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
                    bail!("archive link {path:?} points outside the archive");
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
    compression: &'static str,
}

fn compression_of(first: &[u8]) -> &'static str {
    match first {
        [0x1f, 0x8b, ..] => "gzip",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        _ => "none",
    }
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
    let what = format!("import {}", args.file.display());
    let images = import_archive(&store, &namespace, input)
        .await
        .with_context(|| what.clone())?;
    match global.format {
        Format::Json => output::json(
            &images
                .iter()
                .map(|(name, d)| json!({"name": name, "digest": d.to_string()}))
                .collect::<Vec<_>>(),
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|(name, d)| vec![name.clone().unwrap_or_else(|| "-".into()), d.to_string()])
                .collect();
            output::table(&["NAME", "DIGEST"], &rows)
        }
    }
}

/// Imports an archive; returns the images it names: (name, root digest).
async fn import_archive(
    store: &RemoteContentStore,
    namespace: &str,
    input: Box<dyn Read + Send>,
) -> Result<Vec<(Option<String>, Digest)>> {
    let (tx, mut rx) = mpsc::channel(4);
    let reader = std::thread::spawn(move || read_archive(input, tx));
    let mut documents: HashMap<String, Vec<u8>> = HashMap::new();
    let mut blobs: HashMap<String, Stored> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    while let Some(piece) = rx.recv().await {
        match piece? {
            Piece::Document { name, data } => {
                documents.insert(name, data);
            }
            Piece::Link { name, target } => {
                links.insert(name, target);
            }
            Piece::Blob { name, size } => {
                let stored = import_blob(store, namespace, &name, size, &mut rx).await?;
                blobs.insert(name, stored);
            }
            Piece::Data(_) | Piece::End => bail!("the archive reader lost its place"),
        }
    }
    let _ = reader.join();
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
        let index: Value = serde_json::from_slice(index).context("index.json")?;
        let mut images = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let digest = Digest::parse(m["digest"].as_str().unwrap_or_default())
                .map_err(|e| anyhow!("index.json: {e}"))?;
            if resolve(&format!("blobs/sha256/{}", digest.hex())).is_none() {
                bail!("index.json names {digest}, which the archive does not hold");
            }
            images.push((
                m["annotations"][REF_NAME].as_str().map(str::to_string),
                digest,
            ));
        }
        images
    } else if let Some(manifest) = documents.get("manifest.json") {
        docker_images(store, namespace, manifest, &documents, &resolve).await?
    } else {
        bail!("neither index.json (OCI image layout) nor manifest.json (docker save) is in the archive");
    };
    for (_, root) in &images {
        label_tree(store, namespace, root).await?;
    }
    Ok(images)
}

async fn import_blob(
    store: &RemoteContentStore,
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
                .map_err(|e| anyhow!("archive entry {name}: {e}"))
        })
        .transpose()?;
    let reference = format!("import-{}", &Digest::of(name.as_bytes()).hex()[..32]);
    let mut options = WriterOptions::new(reference.clone()).total(size);
    options.expected = expected.clone();
    let mut writer = match store.writer(namespace, options).await {
        Ok(w) => Some(w),
        Err(e) if e.is(ErrorKind::AlreadyExists) => None,
        Err(e) => return Err(e.into()),
    };
    let opened = writer.is_some();
    let stored: Result<Stored> = async {
        if let Some(w) = writer.as_mut() {
            if w.status().await?.offset != 0 {
                w.restart().await?;
            }
        }
        let mut compression = "none";
        let mut first = true;
        // Entries not named by their digest are hashed here too, to know what
        // they are when the store already has them.
        let mut hasher = expected.is_none().then(berth_ids::Sha256Hasher::new);
        loop {
            match rx.recv().await {
                Some(Ok(Piece::Data(data))) => {
                    if first {
                        compression = compression_of(&data);
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
                _ => bail!("archive entry {name} ended early"),
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
                Err(e) if e.is(ErrorKind::AlreadyExists) => {
                    known.clone().ok_or_else(|| anyhow!("{e}"))?
                }
                Err(e) => return Err(anyhow!(e).context(format!("archive entry {name}"))),
            },
            None => known.clone().ok_or_else(|| anyhow!("{name}: no digest"))?,
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
        if let Err(e) = berth_content::abort_released(store, namespace, &reference).await {
            eprintln!("berth: warning: aborting ingest {reference}: {e}");
        }
    }
    stored
}

/// Images of a `docker save` archive: a Docker schema 2 manifest is made for
/// each entry of manifest.json from its config and layer files.
async fn docker_images(
    store: &RemoteContentStore,
    namespace: &str,
    manifest: &[u8],
    documents: &HashMap<String, Vec<u8>>,
    resolve: &dyn Fn(&str) -> Option<Stored>,
) -> Result<Vec<(Option<String>, Digest)>> {
    let entries: Value = serde_json::from_slice(manifest).context("manifest.json")?;
    let mut images = Vec::new();
    for entry in entries
        .as_array()
        .ok_or_else(|| anyhow!("manifest.json is not a list"))?
    {
        let config_name = entry["Config"]
            .as_str()
            .ok_or_else(|| anyhow!("manifest.json: an entry without Config"))?;
        let config_name = check_entry_name(config_name)?;
        let config = match documents.get(&config_name) {
            Some(data) => {
                let digest = berth_content::write_blob(
                    store,
                    namespace,
                    "import-config",
                    data,
                    None,
                    Labels::new(),
                )
                .await
                .or_else(|e| {
                    if e.is(ErrorKind::AlreadyExists) {
                        Ok(Digest::of(data))
                    } else {
                        Err(e)
                    }
                })?;
                (digest, data.len() as u64)
            }
            None => {
                let stored = resolve(&config_name).ok_or_else(|| {
                    anyhow!("manifest.json names {config_name}, which the archive does not hold")
                })?;
                (stored.digest, stored.size)
            }
        };
        let mut layers = Vec::new();
        for layer in entry["Layers"].as_array().into_iter().flatten() {
            let name = check_entry_name(layer.as_str().unwrap_or_default())?;
            let stored = resolve(&name).ok_or_else(|| {
                anyhow!("manifest.json names layer {name}, which the archive does not hold")
            })?;
            let media_type = match stored.compression {
                "gzip" => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "zstd" => "application/vnd.oci.image.layer.v1.tar+zstd",
                _ => "application/vnd.docker.image.rootfs.diff.tar",
            };
            layers.push(json!({"mediaType": media_type, "digest": stored.digest.to_string(), "size": stored.size}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config.0.to_string(), "size": config.1},
            "layers": layers,
        })
        .to_string()
        .into_bytes();
        let digest = berth_content::write_blob(
            store,
            namespace,
            "import-manifest",
            &manifest,
            None,
            Labels::new(),
        )
        .await
        .or_else(|e| {
            if e.is(ErrorKind::AlreadyExists) {
                Ok(Digest::of(&manifest))
            } else {
                Err(e)
            }
        })?;
        let tags: Vec<String> = entry["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        if tags.is_empty() {
            images.push((None, digest.clone()));
        }
        for tag in tags {
            images.push((Some(tag), digest.clone()));
        }
    }
    Ok(images)
}

/// Gives an imported tree containerd's garbage-collection labels, parents
/// pointing at children.
async fn label_tree(store: &RemoteContentStore, namespace: &str, root: &Digest) -> Result<()> {
    let mut pending = vec![root.clone()];
    let mut seen = std::collections::HashSet::new();
    while let Some(digest) = pending.pop() {
        if !seen.insert(digest.clone()) || seen.len() > 1024 {
            continue;
        }
        let data = read_blob(store, namespace, &digest, MAX_MANIFEST).await?;
        let doc: Value =
            serde_json::from_slice(&data).with_context(|| format!("{digest} is not JSON"))?;
        let mut labels = Labels::new();
        if let Some(manifests) = doc["manifests"].as_array() {
            for (i, m) in manifests.iter().enumerate() {
                let child = Digest::parse(m["digest"].as_str().unwrap_or_default())
                    .map_err(|e| anyhow!("{digest}: {e}"))?;
                labels.insert(
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    child.to_string(),
                );
                if store.info(namespace, &child).await.is_ok() {
                    pending.push(child);
                }
            }
        } else if doc["config"].is_object() {
            labels.insert(
                "containerd.io/gc.ref.content.config".into(),
                doc["config"]["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            for (i, l) in doc["layers"].as_array().into_iter().flatten().enumerate() {
                labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    l["digest"].as_str().unwrap_or_default().to_string(),
                );
            }
        }
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        let mut info = store.info(namespace, &digest).await?;
        info.labels = labels;
        store.update(namespace, info, &paths).await?;
    }
    Ok(())
}

/// One blob of an export, with what the archive needs to know of it.
struct Member {
    digest: Digest,
    size: u64,
}

pub async fn export(global: &Global, args: ExportArgs) -> Result<()> {
    let namespace = global.namespace()?.to_string();
    let store = RemoteContentStore::connect(global.contentd_socket())
        .await
        .context("berth-contentd")?;
    let what = format!("export {}", args.file.display());
    export_archive(&store, &namespace, &args)
        .await
        .with_context(|| what.clone())
}

async fn export_archive(
    store: &RemoteContentStore,
    namespace: &str,
    args: &ExportArgs,
) -> Result<()> {
    let mut roots = Vec::new();
    for image in &args.images {
        let (name, digest) = match image.rsplit_once('=') {
            Some((name, digest)) => (Some(name.to_string()), digest),
            None => (None, image.as_str()),
        };
        let digest = Digest::parse(digest).map_err(|e| anyhow!(e))?;
        roots.push((name, digest));
    }
    // Walk every tree first, so a missing blob fails before anything is
    // written.
    let mut members: BTreeMap<Digest, Member> = BTreeMap::new();
    let mut index_entries = Vec::new();
    let mut docker_entries = Vec::new();
    for (name, root) in &roots {
        let data = read_blob(store, namespace, root, MAX_MANIFEST).await?;
        let doc: Value = serde_json::from_slice(&data)
            .with_context(|| format!("{root} is not an image index or manifest"))?;
        let media_type = doc["mediaType"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                if doc["manifests"].is_array() {
                    OCI_INDEX.into()
                } else {
                    OCI_MANIFEST.into()
                }
            });
        let mut entry =
            json!({"mediaType": media_type, "digest": root.to_string(), "size": data.len()});
        if let Some(name) = name {
            entry["annotations"] = json!({ REF_NAME: name, "io.containerd.image.name": name });
        }
        index_entries.push(entry);
        let mut pending = vec![(root.clone(), data)];
        while let Some((digest, data)) = pending.pop() {
            members.insert(
                digest.clone(),
                Member {
                    digest: digest.clone(),
                    size: data.len() as u64,
                },
            );
            let doc: Value =
                serde_json::from_slice(&data).with_context(|| format!("{digest} is not JSON"))?;
            if let Some(manifests) = doc["manifests"].as_array() {
                for m in manifests {
                    let child = Digest::parse(m["digest"].as_str().unwrap_or_default())
                        .map_err(|e| anyhow!("{digest}: {e}"))?;
                    match read_blob(store, namespace, &child, MAX_MANIFEST).await {
                        Ok(bytes) => pending.push((child, bytes)),
                        Err(e) if e.is(ErrorKind::NotFound) => {} // a platform not fetched
                        Err(e) => return Err(e.into()),
                    }
                }
            } else if doc["config"].is_object() {
                let mut layer_names = Vec::new();
                let blobs = std::iter::once(&doc["config"])
                    .chain(doc["layers"].as_array().into_iter().flatten());
                for (i, blob) in blobs.enumerate() {
                    let d = Digest::parse(blob["digest"].as_str().unwrap_or_default())
                        .map_err(|e| anyhow!("{digest}: {e}"))?;
                    let info = store
                        .info(namespace, &d)
                        .await
                        .with_context(|| format!("{d} of {digest}"))?;
                    if i > 0 {
                        layer_names.push(format!("blobs/sha256/{}", d.hex()));
                    }
                    members.insert(
                        d.clone(),
                        Member {
                            digest: d,
                            size: info.size,
                        },
                    );
                }
                docker_entries.push(json!({
                    "Config": format!("blobs/sha256/{}", Digest::parse(doc["config"]["digest"].as_str().unwrap_or_default()).map_err(|e| anyhow!(e))?.hex()),
                    "RepoTags": name.iter().collect::<Vec<_>>(),
                    "Layers": layer_names,
                }));
            }
        }
    }

    let mut out: Box<dyn Write> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(&args.file)?))
    };
    write_entry(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index =
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries}).to_string();
    write_entry(&mut out, "index.json", index.as_bytes())?;
    write_entry(
        &mut out,
        "manifest.json",
        Value::Array(docker_entries).to_string().as_bytes(),
    )?;
    write_dir(&mut out, "blobs/")?;
    write_dir(&mut out, "blobs/sha256/")?;
    for member in members.values() {
        write_header(
            &mut out,
            &format!("blobs/sha256/{}", member.digest.hex()),
            member.size,
            tar::EntryType::Regular,
        )?;
        let mut offset = 0u64;
        while offset < member.size {
            let chunk = store
                .read_at(namespace, &member.digest, offset, MAX_READ)
                .await?;
            if chunk.is_empty() {
                bail!(
                    "{} ended at {offset} of {} bytes",
                    member.digest,
                    member.size
                );
            }
            out.write_all(&chunk)?;
            offset += chunk.len() as u64;
        }
        pad(&mut out, member.size)?;
    }
    // The end of a tar archive: two zero blocks.
    out.write_all(&[0u8; 1024])?;
    out.flush()?;
    Ok(())
}

fn write_header(out: &mut dyn Write, name: &str, size: u64, kind: tar::EntryType) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
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
    out.write_all(header.as_bytes())?;
    Ok(())
}

fn pad(out: &mut dyn Write, size: u64) -> Result<()> {
    let rest = (512 - size % 512) % 512;
    out.write_all(&vec![0u8; rest as usize])?;
    Ok(())
}

fn write_entry(out: &mut dyn Write, name: &str, data: &[u8]) -> Result<()> {
    write_header(out, name, data.len() as u64, tar::EntryType::Regular)?;
    out.write_all(data)?;
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
