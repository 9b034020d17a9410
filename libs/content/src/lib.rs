//! The content store contract.
//!
//! [`ContentStore`] is implemented twice: by berth-contentd's local store
//! (blobs on disk, records in LMDB) and by berth-client's ttrpc proxy. The
//! conformance suite in [`testsuite`] (feature `testsuite`) runs against both,
//! so the store behaves the same in-process and across the socket.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use berth_errdefs::{Error, Result};
use berth_ids::Digest;

mod fields;
mod leased;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod wire;

pub use fields::{apply_label_update, InfoFields, StatusFields};
pub use leased::{hold_for_lease, Leased};

/// Labels on a blob.
pub type Labels = HashMap<String, String>;

/// A committed blob as one namespace sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: Labels,
}

/// An ingest: a write in progress, named by its ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub reference: String,
    /// Bytes written so far; where the next write goes.
    pub offset: u64,
    /// Expected size, 0 if unknown.
    pub total: u64,
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// What a writer is opened with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterOptions {
    pub reference: String,
    /// Expected size, if known.
    pub total: Option<u64>,
    /// Expected digest, if known. If a blob with this digest is already
    /// visible in the namespace, opening fails with AlreadyExists.
    pub expected: Option<Digest>,
}

impl WriterOptions {
    pub fn new(reference: impl Into<String>) -> WriterOptions {
        WriterOptions {
            reference: reference.into(),
            ..Default::default()
        }
    }

    pub fn total(mut self, total: u64) -> WriterOptions {
        self.total = Some(total);
        self
    }

    pub fn expected(mut self, digest: Digest) -> WriterOptions {
        self.expected = Some(digest);
        self
    }
}

/// How a commit checks what was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// The size the blob must have (besides the writer's `total`).
    pub size: Option<u64>,
    /// The digest the blob must have (besides the writer's `expected`).
    pub expected: Option<Digest>,
    pub labels: Labels,
}

/// The largest read one `read_at` call returns.
pub const MAX_READ: usize = 1024 * 1024;

/// A content-addressed blob store with per-namespace visibility.
///
/// Every method takes the namespace first; implementations validate it.
#[async_trait]
pub trait ContentStore: Send + Sync {
    async fn info(&self, namespace: &str, digest: &Digest) -> Result<Info>;

    /// Changes labels. With no paths, or the path `labels`, the labels are
    /// replaced; with `labels.KEY` paths only those keys change (a key
    /// missing from `info.labels` is removed).
    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info>;

    /// Blobs matching any of the filters (containerd syntax over `digest`,
    /// `size` and `labels.KEY`).
    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>>;

    /// Removes the blob from the namespace.
    async fn delete(&self, namespace: &str, digest: &Digest) -> Result<()>;

    /// Removes the blob from the namespace only if its `updated_at` is still
    /// `seen` (what the caller read before deciding): FailedPrecondition if
    /// it was touched since. The garbage collector deletes this way, so a
    /// blob that gains a label (a lease, a reference) meanwhile survives.
    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: SystemTime,
    ) -> Result<()>;

    /// Up to `len` (at most [`MAX_READ`]) bytes at `offset`; empty at the end.
    async fn read_at(
        &self,
        namespace: &str,
        digest: &Digest,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>>;

    async fn status(&self, namespace: &str, reference: &str) -> Result<Status>;

    /// Ingests matching any of the filters (over `ref`).
    async fn list_statuses(&self, namespace: &str, filters: &[String]) -> Result<Vec<Status>>;

    /// Drops an ingest and its data. Unavailable while a writer holds it.
    async fn abort(&self, namespace: &str, reference: &str) -> Result<()>;

    /// Unties every blob of the namespace from `lease` (removes its
    /// [`berth_api::labels::lease`] label) in one call, leaving their other
    /// labels alone; returns how many blobs it untied. A client that is
    /// done with a lease calls it once instead of once per blob.
    async fn release_lease(&self, namespace: &str, lease: &str) -> Result<u64> {
        let key = berth_api::labels::lease(lease);
        let mut released = 0;
        for info in self.list(namespace, &[]).await? {
            if !info.labels.contains_key(&key) {
                continue;
            }
            let untie = Info {
                labels: Labels::new(),
                ..info
            };
            match self
                .update(namespace, untie, &[format!("labels.{key}")])
                .await
            {
                Ok(_) => released += 1,
                // Deleted meanwhile: nothing left to untie.
                Err(e) if e.is(berth_errdefs::ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(released)
    }

    /// Opens (or resumes) the ingest named by `options.reference` and takes
    /// it: a second writer on the same ref gets Unavailable until this one
    /// is dropped or committed.
    async fn writer(
        &self,
        namespace: &str,
        options: WriterOptions,
    ) -> Result<Box<dyn ContentWriter>>;
}

/// An open ingest. Dropping it without committing keeps what was written
/// for a later writer on the same ref to resume.
#[async_trait]
pub trait ContentWriter: Send {
    async fn status(&mut self) -> Result<Status>;

    /// Appends at the current offset. Takes the buffer so that no layer
    /// needs to copy it again.
    async fn write(&mut self, data: Vec<u8>) -> Result<()>;

    /// Appends the bytes of `file` from its position to its end (its size
    /// now, for a regular file; its end of input otherwise), consuming them
    /// as a read would, and returns how many. A writer across a socket may
    /// pass the file to its daemon, which then reads it itself; the default
    /// reads it here and writes its bytes.
    async fn write_file(&mut self, file: std::fs::File) -> Result<u64> {
        write_file_in_chunks(self, file).await
    }

    /// Starts the ingest over from offset 0.
    async fn restart(&mut self) -> Result<()>;

    /// Verifies size and digest and makes the blob visible in the namespace.
    /// AlreadyExists if it already was (the ingest is dropped either way).
    async fn commit(self: Box<Self>, options: CommitOptions) -> Result<Digest>;
}

/// [`ContentWriter::write_file`] by reading `file` on a thread of its own
/// and writing what it reads in chunks of at most [`MAX_READ`] bytes; the
/// next chunk is read while the last one is written.
pub async fn write_file_in_chunks<W: ContentWriter + ?Sized>(
    writer: &mut W,
    file: std::fs::File,
) -> Result<u64> {
    let mut chunks = read_in_chunks(file, MAX_READ);
    let mut written = 0u64;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk?;
        written += chunk.len() as u64;
        writer.write(chunk).await?;
    }
    Ok(written)
}

/// The bytes of `file` from its position, `chunk` bytes at a time, read by
/// a thread that stays at most two chunks ahead and stops when the receiver
/// is dropped. A regular file is read up to its size as it is now.
pub fn read_in_chunks(
    file: std::fs::File,
    chunk: usize,
) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>>> {
    use std::io::{Read, Seek};
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    std::thread::spawn(move || {
        let mut file = file;
        let limit = match file.metadata() {
            Ok(meta) if meta.is_file() => match file.stream_position() {
                Ok(at) => meta.len().saturating_sub(at),
                Err(e) => {
                    let _ = tx.blocking_send(Err(Error::io("finding the file's position", &e)));
                    return;
                }
            },
            _ => u64::MAX,
        };
        let mut reader = file.take(limit);
        loop {
            let mut buf = vec![0u8; chunk];
            let mut filled = 0;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Error::io("reading the file", &e)));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            if tx.blocking_send(Ok(buf)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Writes `data` as one blob under `reference`, the way most callers want.
pub async fn write_blob(
    store: &dyn ContentStore,
    namespace: &str,
    reference: &str,
    data: &[u8],
    expected: Option<Digest>,
    labels: Labels,
) -> Result<Digest> {
    let mut options = WriterOptions::new(reference).total(data.len() as u64);
    if let Some(digest) = &expected {
        options = options.expected(digest.clone());
    }
    let mut writer = store.writer(namespace, options).await?;
    let status = writer.status().await?;
    if status.offset != 0 {
        writer.restart().await?;
    }
    for chunk in data.chunks(MAX_READ) {
        writer.write(chunk.to_vec()).await?;
    }
    writer
        .commit(CommitOptions {
            size: Some(data.len() as u64),
            expected,
            labels,
        })
        .await
}

/// Sets (or with `None`, removes) one label of a blob, leaving its other
/// labels alone; like any label change, it moves the blob's `updated_at`.
pub async fn set_label(
    store: &dyn ContentStore,
    namespace: &str,
    digest: &Digest,
    key: &str,
    value: Option<String>,
) -> Result<()> {
    let info = Info {
        digest: digest.clone(),
        size: 0,
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
        labels: value.map(|v| (key.to_string(), v)).into_iter().collect(),
    };
    store
        .update(namespace, info, &[format!("labels.{key}")])
        .await
        .map(|_| ())
}

/// Aborts the ingest `reference` once its writer has let go of it. A
/// writer that was just dropped releases its ref in the background, and
/// until it has, abort answers Unavailable ("locked"): this retries for
/// about two seconds before giving that answer back.
pub async fn abort_released(
    store: &(impl ContentStore + ?Sized),
    namespace: &str,
    reference: &str,
) -> Result<()> {
    let mut answer = Ok(());
    for _ in 0..200 {
        answer = store.abort(namespace, reference).await;
        match &answer {
            Err(e) if e.kind() == berth_errdefs::ErrorKind::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            _ => break,
        }
    }
    answer
}

/// The value of a lease label (see [`berth_api::labels::lease_value`]).
pub use berth_api::labels::lease_value as lease_label_value;

/// Reads a whole blob into memory; for small blobs (manifests, configs) and
/// tests. Refuses blobs larger than `limit`.
pub async fn read_blob(
    store: &dyn ContentStore,
    namespace: &str,
    digest: &Digest,
    limit: u64,
) -> Result<Vec<u8>> {
    let info = store.info(namespace, digest).await?;
    if info.size > limit {
        return Err(Error::resource_exhausted(format!(
            "{digest} is {} bytes, more than the {limit} allowed here",
            info.size
        )));
    }
    let mut data = Vec::with_capacity(info.size as usize);
    while (data.len() as u64) < info.size {
        let chunk = store
            .read_at(namespace, digest, data.len() as u64, MAX_READ)
            .await?;
        if chunk.is_empty() {
            return Err(Error::internal(format!(
                "{digest} ended at {} of {} bytes",
                data.len(),
                info.size
            )));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}
