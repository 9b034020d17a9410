//! Unpack: an image's layers, read from berth-contentd, applied in order
//! as committed snapshots named by their chain IDs.
//!
//! Per layer: skip if the chain is already committed; otherwise prepare a
//! scratch snapshot (`extract-...`) on the previous chain, stream the blob
//! from the content store (a reader task fills a bounded channel while a
//! blocking thread verifies the compressed digest, decompresses, hashes the
//! tar stream and applies it), check the uncompressed digest against the
//! diff ID, and commit under the chain ID. Concurrent unpacks of the same
//! chain wait for each other and do the work once. A crash leaves only
//! `extract-` snapshots, which the daemon removes when it starts.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use berth_content::{ContentStore, MAX_READ};
use berth_errdefs::{Error, ErrorKind, Result};
use berth_ids::{Digest, Sha256Hasher};
use berth_snapshot::{chain_ids, Descriptor, Snapshotter};

use crate::apply::{apply, ApplyOptions, Privileged};
use crate::local::LocalSnapshotter;

/// The key prefix of unpack's scratch snapshots.
pub const SCRATCH_PREFIX: &str = "extract-";

/// How many chunks the reader may run ahead of the applier.
const READ_AHEAD: usize = 8;

/// Where blobs come from.
#[derive(Clone)]
pub enum ContentSource {
    /// berth-contentd's socket, connected per unpack.
    Socket(PathBuf),
    /// A store in this process (tests).
    Store(Arc<dyn ContentStore>),
}

impl std::fmt::Debug for ContentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContentSource::Socket(path) => f.debug_tuple("Socket").field(path).finish(),
            ContentSource::Store(_) => f.write_str("Store(..)"),
        }
    }
}

impl ContentSource {
    async fn open(&self) -> Result<Arc<dyn ContentStore>> {
        match self {
            ContentSource::Socket(path) => Ok(Arc::new(
                berth_client::RemoteContentStore::connect(path)
                    .await
                    .map_err(|e| e.context("connecting to berth-contentd"))?,
            )),
            ContentSource::Store(store) => Ok(store.clone()),
        }
    }
}

/// The result of an unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub chain_id: Digest,
    /// Layers applied (the others were already committed).
    pub applied: usize,
}

pub struct Unpacker {
    content: ContentSource,
    privileged: Arc<dyn Privileged>,
    devices: bool,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unpacker")
            .field("content", &self.content)
            .finish_non_exhaustive()
    }
}

/// How a layer blob is compressed: its media type says, or else its
/// first bytes.
pub use berth_image::Compression;

/// A reader over a channel of chunks.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    error: Option<Error>,
}

impl ChannelReader {
    /// Makes sure the current chunk has unread bytes, unless the stream
    /// ended; false at its end.
    fn fill(&mut self) -> std::io::Result<bool> {
        while self.pos == self.current.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => {
                    let io = std::io::Error::other(e.to_string());
                    self.error = Some(e);
                    return Err(io);
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.fill()? {
            return Ok(0);
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The decompressor reads the received chunks in place, without copying
/// them into a buffer of its own first.
impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.fill()?;
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.current.len());
    }
}

/// A decompressed chunk: a buffer and how much of it is filled.
type Decoded = std::io::Result<(Vec<u8>, usize)>;

/// A reader over the chunks the hashing thread hands on, giving each spent
/// buffer back to the decompressor for reuse.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Decoded>,
    spent: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    filled: usize,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.filled {
            match self.rx.recv() {
                Ok(Ok((chunk, filled))) => {
                    let spent = std::mem::replace(&mut self.current, chunk);
                    if !spent.is_empty() {
                        // The decompressor may be gone; the buffer is then
                        // simply dropped.
                        let _ = self.spent.send(spent);
                    }
                    self.filled = filled;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.filled - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Hashes every chunk the decompressor sends and hands it on to the
/// applier; returns the digest of all it saw, or none if the applier went
/// away first (it failed: the digest no longer matters). A thread of its
/// own, so that inflate, hash and file creation spread over the cores
/// however their costs fall on a given filesystem (on tmpfs inflate is the
/// slowest, on a journalled ext4 creating the files).
fn hash_into(
    rx: std::sync::mpsc::Receiver<Decoded>,
    tx: std::sync::mpsc::SyncSender<Decoded>,
) -> Option<Digest> {
    let mut hasher = Sha256Hasher::new();
    for decoded in rx {
        if let Ok((chunk, filled)) = &decoded {
            hasher.update(&chunk[..*filled]);
        }
        tx.send(decoded).ok()?;
    }
    Some(hasher.finalize())
}

/// Chunks the decompressing thread may run ahead of the applier.
const DECODED_AHEAD: usize = 4;
const DECODED_CHUNK: usize = 1 << 20;

/// Decompresses `decoded` into chunks for `tx`, reusing the buffers that
/// come back on `spent`, until the stream ends or the receiver goes away.
fn decode_into(
    mut decoded: Box<dyn Read + Send + '_>,
    tx: std::sync::mpsc::SyncSender<Decoded>,
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<()> {
    loop {
        let mut chunk = spent
            .try_recv()
            .unwrap_or_else(|_| vec![0u8; DECODED_CHUNK]);
        let mut filled = 0;
        while filled < chunk.len() {
            match decoded.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let message = e.to_string();
                    let _ = tx.send(Err(e));
                    return Err(Error::invalid_argument(format!(
                        "decompressing the layer: {message}"
                    )));
                }
            }
        }
        if filled == 0 || tx.send(Ok((chunk, filled))).is_err() {
            return Ok(());
        }
    }
}

/// Applies one compressed (or not) layer stream to `target`; returns the
/// digest of the uncompressed stream. Decompression runs on a thread of
/// its own, overlapping the writes.
pub fn apply_layer(
    reader: impl Read + Send,
    compression: Option<Compression>,
    target: &std::path::Path,
    options: &ApplyOptions,
    privileged: &dyn Privileged,
) -> Result<Digest> {
    apply_buffered_layer(
        BufReader::with_capacity(1 << 20, reader),
        compression,
        target,
        options,
        privileged,
    )
}

/// [`apply_layer`] on a reader that buffers already.
fn apply_buffered_layer(
    mut buffered: impl BufRead + Send,
    compression: Option<Compression>,
    target: &std::path::Path,
    options: &ApplyOptions,
    privileged: &dyn Privileged,
) -> Result<Digest> {
    let compression = match compression {
        Some(c) => c,
        None => {
            let head = buffered
                .fill_buf()
                .map_err(|e| Error::io("reading the layer", &e))?;
            Compression::sniff(head)
        }
    };
    let decoded: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| Error::io("starting zstd", &e))?,
        ),
    };
    std::thread::scope(|scope| {
        let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel(DECODED_AHEAD);
        let (hashed_tx, hashed_rx) = std::sync::mpsc::sync_channel(DECODED_AHEAD);
        let (spent_tx, spent_rx) = std::sync::mpsc::channel();
        let decoder = std::thread::Builder::new()
            .name("layer-decode".to_string())
            .spawn_scoped(scope, move || decode_into(decoded, decoded_tx, spent_rx))
            .map_err(|e| Error::io("starting the decompressor", &e))?;
        let hasher = std::thread::Builder::new()
            .name("layer-hash".to_string())
            .spawn_scoped(scope, move || hash_into(decoded_rx, hashed_tx))
            .map_err(|e| Error::io("starting the layer hasher", &e))?;
        let mut reader = ChunkReader {
            rx: hashed_rx,
            spent: spent_tx,
            current: Vec::new(),
            filled: 0,
            pos: 0,
        };
        let applied = apply(&mut reader, target, options, privileged).and_then(|_| {
            // The tar end and any padding belong to the diff ID too.
            std::io::copy(&mut reader, &mut std::io::sink())
                .map_err(|e| Error::invalid_argument(format!("reading the layer: {e}")))
        });
        drop(reader);
        let digest = hasher
            .join()
            .map_err(|_| Error::internal("the layer hasher panicked"))?;
        decoder
            .join()
            .map_err(|_| Error::internal("the decompressor panicked"))??;
        applied?;
        let digest = digest.ok_or_else(|| Error::internal("the layer hasher stopped early"))?;
        if options.sync_fs {
            crate::write_back::sync_fs(target)?;
        }
        Ok(digest)
    })
}

/// How many layers of one unpack are applied at once (overlayfs): each
/// has a thread inflating, one hashing and one writing files, and a layer
/// that creates many small files leaves the cores to the others.
const UNPACK_CONCURRENCY: usize = 3;

/// One unpack's layers, for applying and committing them one by one.
struct Job<'a> {
    unpacker: &'a Unpacker,
    namespace: &'a str,
    snapshotter: &'a LocalSnapshotter,
    store: &'a Arc<dyn ContentStore>,
    layers: &'a [Descriptor],
    diff_ids: &'a [Digest],
    chains: &'a [Digest],
    sync_fs: bool,
}

impl Job<'_> {
    /// Applies layer `i` into a new scratch snapshot and returns its key:
    /// on its parent's committed snapshot, or `detached` on none (the
    /// parent is committed later: see [`Job::commit`]).
    async fn apply_layer(&self, i: usize, detached: bool) -> Result<String> {
        let (namespace, snapshotter) = (self.namespace, self.snapshotter);
        let parent = match i {
            0 => None,
            _ if detached => None,
            _ => Some(self.chains[i - 1].to_string()),
        };
        let key = format!(
            "{SCRATCH_PREFIX}{}-{}",
            crate::records::now_nanos(),
            &self.chains[i].hex()[..12]
        );
        // A root until it is committed or removed: a collection that runs
        // meanwhile must not take it from under the apply. (A crash leaves
        // it to snapd's startup sweep of scratch keys.)
        let scratch_labels = HashMap::from([(
            berth_metadata::LABEL_GC_ROOT.to_string(),
            String::from("unpack"),
        )]);
        snapshotter
            .prepare(namespace, &key, parent.as_deref(), scratch_labels)
            .await?;
        let applied = match snapshotter.apply_target(namespace, &key) {
            Ok(target) => {
                let options = ApplyOptions {
                    overlay: target.overlay,
                    lowers: target.lowers,
                    lowers_pending: detached,
                    devices: self.unpacker.devices,
                    sync_fs: self.sync_fs,
                };
                let layer = &self.layers[i];
                let started = std::time::Instant::now();
                let applied = self
                    .unpacker
                    .apply_one(
                        namespace,
                        self.store,
                        target.dir,
                        options,
                        layer,
                        &self.diff_ids[i],
                    )
                    .await;
                if applied.is_ok() {
                    crate::metrics::layer_applied(layer.size, started.elapsed());
                }
                applied
            }
            Err(e) => Err(e),
        };
        match applied {
            Ok(()) => Ok(key),
            Err(e) => {
                self.discard(&key).await;
                Err(e)
            }
        }
    }

    /// Commits layer `i`'s scratch snapshot `key` under its chain ID (onto
    /// its parent, if it was applied `detached`); false if another unpack
    /// committed that chain first.
    async fn commit(
        &self,
        leased: &berth_snapshot::Leased<&LocalSnapshotter>,
        i: usize,
        key: &str,
        detached: bool,
    ) -> Result<bool> {
        let (namespace, snapshotter) = (self.namespace, self.snapshotter);
        let chain = self.chains[i].to_string();
        // (Only a layer above another is ever applied detached.)
        let parent = match i {
            0 => None,
            _ if detached => Some(self.chains[i - 1].to_string()),
            _ => None,
        };
        let labels = leased.with_lease(HashMap::new());
        match snapshotter
            .commit_rebased(namespace, &chain, key, parent.as_deref(), labels)
            .await
        {
            Ok(()) => {
                if self.sync_fs {
                    // Its files were on disk before the commit.
                    snapshotter
                        .written_back_before_commit(namespace, &chain)
                        .await?;
                }
                Ok(true)
            }
            Err(e) => {
                self.discard(key).await;
                if e.kind() == ErrorKind::AlreadyExists {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Removes a scratch snapshot that is not to be committed.
    async fn discard(&self, key: &str) {
        if let Err(removal) = self.snapshotter.remove(self.namespace, key).await {
            // Left for the next start's cleanup of scratch snapshots.
            tracing::warn!(%key, error = %removal, "cannot remove an unpack's scratch snapshot");
        }
    }
}

impl Unpacker {
    pub fn new(content: ContentSource, privileged: Arc<dyn Privileged>, devices: bool) -> Unpacker {
        Unpacker {
            content,
            privileged,
            devices,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    fn chain_lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.inflight.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Drop locks nobody holds any more.
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(key).or_default().clone()
    }

    pub async fn unpack(
        &self,
        namespace: &str,
        snapshotter: &LocalSnapshotter,
        layers: &[Descriptor],
        diff_ids: &[Digest],
        lease: Option<&str>,
        sync_fs: bool,
    ) -> Result<Unpacked> {
        berth_ids::validate_namespace(namespace)?;
        // What this unpack commits, or finds committed, joins its lease.
        let leased = berth_snapshot::Leased::new(snapshotter, lease.map(str::to_string));
        if layers.is_empty() || layers.len() != diff_ids.len() {
            return Err(Error::invalid_argument(format!(
                "{} layers but {} diff IDs",
                layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(diff_ids);
        // The layers to apply, each under its chain's lock until it is
        // committed. Locks are taken bottom up, in every unpack, so two
        // unpacks sharing layers cannot wait for each other in a circle.
        let mut pending = Vec::new();
        for (i, chain) in chains.iter().enumerate() {
            let chain = chain.to_string();
            let lock = self.chain_lock(format!(
                "{}/{namespace}/{chain}",
                snapshotter.backend().name()
            ));
            let held = lock.lock_owned().await;
            match snapshotter.stat(namespace, &chain).await {
                Ok(info) if info.kind == berth_snapshot::Kind::Committed => {
                    match leased.hold(namespace, &chain).await {
                        Ok(()) => continue,
                        // Collected between the stat and the hold (its
                        // last holder had just let go): applied again.
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(_) => {
                    return Err(Error::failed_precondition(format!(
                        "snapshot {chain} exists but is not committed"
                    )))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            pending.push((i, held));
        }
        let last = chains[chains.len() - 1].clone();
        if pending.is_empty() {
            return Ok(Unpacked {
                chain_id: last,
                applied: 0,
            });
        }
        let store = self.content.open().await?;
        let job = Job {
            unpacker: self,
            namespace,
            snapshotter,
            store: &store,
            layers,
            diff_ids,
            chains: &chains,
            sync_fs,
        };
        // On overlayfs the layers above the first missing one are applied
        // alongside it, each into a snapshot of its own with no parent yet,
        // and committed onto their parents in order. Elsewhere a layer is
        // applied onto its committed parent, one after another.
        let first = pending[0].0;
        let alongside = if snapshotter.can_rebase() {
            UNPACK_CONCURRENCY
        } else {
            1
        };
        let (indices, locks): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        let mut applying = futures::stream::iter(indices.into_iter().map(|i| {
            let job = &job;
            async move {
                // A layer whose parent is committed already (or that has
                // none) is prepared on it; the others are rebased at
                // commit.
                let detached = alongside > 1 && i > first;
                (i, detached, job.apply_layer(i, detached).await)
            }
        }))
        .buffered(alongside);
        let mut applied = 0;
        let mut failed = None;
        let mut locks = locks.into_iter();
        while let Some((i, detached, result)) = applying.next().await {
            let held = locks.next();
            if failed.is_some() {
                // Above a layer that failed: nothing more is committed.
                if let Ok(key) = result {
                    job.discard(&key).await;
                }
                continue;
            }
            let (result, detached) = match result {
                // A hardlink into a lower layer: applied again, onto its
                // parent, now that the layers below are committed.
                Err(e) if detached && e.kind() == ErrorKind::Aborted => {
                    tracing::debug!(layer = i, error = %e, "applying a layer again on its parent");
                    (job.apply_layer(i, false).await, false)
                }
                other => (other, detached),
            };
            let committed = match result {
                Ok(key) => job.commit(&leased, i, &key, detached).await,
                Err(e) => Err(e),
            };
            drop(held);
            match committed {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(e) => failed = Some(e.context(format!("layer {} ({})", i, layers[i].digest))),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(Unpacked {
            chain_id: last,
            applied,
        })
    }

    /// Applies `layer` into `dir` (an active snapshot's), checking the
    /// blob's digest and the diff ID.
    async fn apply_one(
        &self,
        namespace: &str,
        store: &Arc<dyn ContentStore>,
        dir: PathBuf,
        options: ApplyOptions,
        layer: &Descriptor,
        diff_id: &Digest,
    ) -> Result<()> {
        let info = store.info(namespace, &layer.digest).await?;
        if info.size != layer.size {
            return Err(Error::invalid_argument(format!(
                "layer {} is {} bytes, the manifest says {}",
                layer.digest, info.size, layer.size
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>>>(READ_AHEAD);
        let compression = berth_image::media::layer_compression(&layer.media_type);
        let privileged = self.privileged.clone();
        let applier = tokio::task::spawn_blocking(move || -> Result<Digest> {
            let mut reader = ChannelReader {
                rx,
                current: Vec::new(),
                pos: 0,
                error: None,
            };
            let result = apply_buffered_layer(
                &mut reader,
                compression,
                &dir,
                &options,
                privileged.as_ref(),
            );
            if let Some(e) = reader.error.take() {
                return Err(e);
            }
            let uncompressed = result?;
            // Drain what the decompressor left, so that the reader hashes
            // the whole blob.
            std::io::copy(&mut reader, &mut std::io::sink())
                .map_err(|e| Error::io("reading the layer", &e))?;
            Ok(uncompressed)
        });
        let namespace_owned = namespace.to_string();
        let digest = layer.digest.clone();
        let size = layer.size;
        let store = store.clone();
        // The blob is hashed here, as it is read, off the threads that
        // decompress and write.
        let reader = tokio::spawn(async move {
            let mut hasher = Sha256Hasher::new();
            let mut offset = 0u64;
            while offset < size {
                // Never past the descriptor's size: the bytes hashed and
                // applied are exactly the ones the descriptor names.
                let want = usize::try_from(size - offset).map_or(MAX_READ, |n| n.min(MAX_READ));
                let chunk = store.read_at(&namespace_owned, &digest, offset, want).await;
                let chunk = match chunk {
                    Ok(c) if c.is_empty() => Err(Error::internal(format!(
                        "{digest} ended at {offset} of {size} bytes"
                    ))),
                    Ok(c) if c.len() > want => Err(Error::internal(format!(
                        "{digest}: asked for {want} bytes at {offset}, got {}",
                        c.len()
                    ))),
                    other => other,
                };
                let failed = chunk.is_err();
                if let Ok(c) = &chunk {
                    hasher.update(c);
                    offset += c.len() as u64;
                }
                let sent = tx.send(chunk).await.is_ok();
                if failed || !sent {
                    return None;
                }
            }
            Some(hasher.finalize())
        });
        let applied = applier
            .await
            .map_err(|e| Error::internal(format!("apply task failed: {e}")));
        let uncompressed = match applied {
            Ok(Ok(uncompressed)) => uncompressed,
            Ok(Err(e)) | Err(e) => {
                reader.abort();
                return Err(e);
            }
        };
        let blob = reader
            .await
            .map_err(|e| Error::internal(format!("blob reader failed: {e}")))?
            .ok_or_else(|| Error::internal("the blob reader stopped early"))?;
        if blob != layer.digest {
            return Err(Error::invalid_argument(format!(
                "layer blob has digest {blob}, expected {}",
                layer.digest
            )));
        }
        if &uncompressed != diff_id {
            return Err(Error::invalid_argument(format!(
                "layer {} uncompresses to {uncompressed}, but the image config says {diff_id}",
                layer.digest
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_from_media_type_or_magic() {
        use Compression::*;
        let mt = berth_image::media::layer_compression;
        assert_eq!(
            mt("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(Gzip)
        );
        assert_eq!(
            mt("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Zstd)
        );
        assert_eq!(mt("application/vnd.oci.image.layer.v1.tar"), Some(None));
        assert_eq!(
            mt("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Gzip)
        );
        assert_eq!(mt("application/octet-stream"), Option::None);
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Zstd);
        assert_eq!(Compression::sniff(b"etc/"), None);
    }

    #[test]
    fn a_zstd_layer_applies_and_hashes_to_its_diff_id() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "hello", &b"world"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let diff_id = Digest::of(&tar);
        let compressed = zstd::stream::encode_all(&tar[..], 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let got = apply_layer(
            &compressed[..],
            Option::None,
            dir.path(),
            &ApplyOptions::default(),
            &crate::apply::Unprivileged,
        )
        .unwrap();
        assert_eq!(got, diff_id);
        assert_eq!(std::fs::read(dir.path().join("hello")).unwrap(), b"world");
    }
}
