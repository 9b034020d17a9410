//! Writers: appending to an ingest, checkpointing its hash, committing it.
//!
//! The sha256 state is checkpointed into the ingest's record every
//! [`CHECKPOINT_INTERVAL`] bytes (after the data before it is synced) and
//! when a writer goes away, so resuming an ingest re-hashes at most the
//! bytes after the last checkpoint instead of the whole file.
//!
//! Each write is hashed on one thread while it is written on another, and
//! a checkpoint is saved in the background while the writes go on: the
//! hash, one core's worth of work, is what sets an ingest's pace.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use berth_content::{CommitOptions, ContentWriter, Status};
use berth_errdefs::{Error, Result};
use berth_ids::{validate_labels, Digest, Sha256Checkpoint, Sha256Hasher};

use crate::records::{self, ingest_key, now_nanos, to_system_time, BlobRecord, IngestRecord};
use berth_daemon::blocking;

use crate::store::{make_read_only, remove_all, sync_dir, Inner, RefLock};

/// How much is written between hash checkpoints.
pub const CHECKPOINT_INTERVAL: u64 = 64 * 1024 * 1024;

/// The open file and running hash of an ingest. Moved into blocking tasks
/// and back; absent after an IO error, which breaks the writer (a new writer
/// on the same ref resumes from what is on disk).
#[derive(Debug)]
struct WriteState {
    file: Arc<File>,
    hasher: Sha256Hasher,
    unsynced: u64,
    /// The checkpoint being saved in the background, if one is: at most
    /// one at a time, and its outcome is taken before the next checkpoint,
    /// a restart or the commit.
    saving: Option<tokio::task::JoinHandle<Result<()>>>,
}

/// A writer on one ingest of the local store.
#[derive(Debug)]
pub struct LocalWriter {
    inner: Arc<Inner>,
    namespace: String,
    reference: String,
    key: String,
    total: u64,
    expected: Option<Digest>,
    started_at: u64,
    state: Option<WriteState>,
    // The ref stays locked while the writer or any blocking work it started
    // lives: a caller that gives up on a write (its future dropped) must not
    // free the ref while the write still runs on its thread.
    lock: Option<Arc<RefLock>>,
}

/// Opens or resumes the ingest for `options.reference` in `namespace`.
/// Runs on a blocking thread.
pub(crate) fn open(
    inner: Arc<Inner>,
    lock: RefLock,
    namespace: String,
    options: berth_content::WriterOptions,
) -> Result<LocalWriter> {
    let reference = options.reference;
    let key = ingest_key(&namespace, &reference);
    let dir = inner.ingest_path(&key);
    let data_path = dir.join("data");
    let existing = {
        let txn = inner.records.read()?;
        inner.records.ingest(&txn, &namespace, &reference)?
    };
    let (record, state) = match existing {
        Some(mut record) => {
            let mut changed = false;
            if let Some(total) = options.total {
                if record.total != 0 && record.total != total {
                    return Err(Error::invalid_argument(format!(
                        "ingest {reference} expects {} bytes, not {total}",
                        record.total
                    )));
                }
                changed |= record.total != total;
                record.total = total;
            }
            if let Some(expected) = options.expected {
                if record.expected.as_ref().is_some_and(|e| *e != expected) {
                    return Err(Error::invalid_argument(format!(
                        "ingest {reference} expects a different digest"
                    )));
                }
                changed |= record.expected.is_none();
                record.expected = Some(expected);
            }
            let state = resume(&data_path, &dir, &record)?;
            if changed {
                let mut txn = inner.records.write()?;
                inner.records.put_ingest(&mut txn, &namespace, &record)?;
                records::commit(txn)?;
            }
            (record, state)
        }
        None => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::io("creating ingest", &e))?;
            let file = open_data(&data_path, true)?;
            let now = now_nanos();
            let record = IngestRecord {
                reference: reference.clone(),
                total: options.total.unwrap_or(0),
                expected: options.expected,
                started_at: now,
                updated_at: now,
                checkpoint: None,
            };
            let mut txn = inner.records.write()?;
            inner.records.put_ingest(&mut txn, &namespace, &record)?;
            records::commit(txn)?;
            let state = WriteState {
                file: Arc::new(file),
                hasher: Sha256Hasher::new(),
                unsynced: 0,
                saving: None,
            };
            (record, state)
        }
    };
    Ok(LocalWriter {
        inner,
        namespace,
        reference,
        key,
        total: record.total,
        expected: record.expected,
        started_at: record.started_at,
        state: Some(state),
        lock: Some(Arc::new(lock)),
    })
}

fn open_data(path: &std::path::Path, truncate: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("opening ingest data", &e))
}

/// Reopens an ingest's data and restores its hash: from the checkpoint when
/// it is usable, re-hashing only what follows it.
fn resume(
    data_path: &std::path::Path,
    dir: &std::path::Path,
    record: &IngestRecord,
) -> Result<WriteState> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("creating ingest", &e))?;
    }
    let mut file = open_data(data_path, false)?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("inspecting ingest data", &e))?
        .len();
    let mut hasher = record
        .checkpoint
        .filter(|c| c.offset <= len)
        .and_then(|c| Sha256Hasher::resume(&c))
        .unwrap_or_default();
    file.seek(SeekFrom::Start(hasher.len()))
        .map_err(|e| Error::io("seeking ingest data", &e))?;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut rehashed = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("reading ingest data", &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        rehashed += n as u64;
    }
    if hasher.len() != len {
        return Err(Error::internal("ingest data changed while resuming"));
    }
    tracing::debug!(reference = %record.reference, offset = len, rehashed, "resumed ingest");
    // Only a checkpoint further on than the recorded one is worth saving.
    let unsynced = if record.checkpoint == Some(hasher.checkpoint()) {
        0
    } else {
        rehashed
    };
    Ok(WriteState {
        file: Arc::new(file),
        hasher,
        unsynced,
        saving: None,
    })
}

impl WriteState {
    /// Waits for the checkpoint being saved, if one is; its failure breaks
    /// the writer, as a failed write does.
    async fn saved(&mut self) -> Result<()> {
        match self.saving.take() {
            Some(saving) => saving
                .await
                .map_err(|e| Error::internal(format!("saving a checkpoint failed: {e}")))?,
            None => Ok(()),
        }
    }
}

/// Starts writing `len` bytes at `offset` of `file` to disk without
/// waiting for them, so that the sync at the next checkpoint or the commit
/// finds little left to write. (A hint: failing to start changes nothing.)
fn start_write_back(file: &File, offset: u64, len: usize) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its arguments; the descriptor is
    // open for as long as `file` is borrowed.
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(file),
            offset,
            len,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Syncs the data and records `checkpoint` (the hash of the data before
/// it), so a later writer resumes without re-reading that data. A record
/// already further on is kept: a writer's checkpoints may be saved out of
/// order (one in the background, the last when the writer goes away).
fn save_checkpoint(
    inner: &Inner,
    namespace: &str,
    reference: &str,
    file: &File,
    checkpoint: Sha256Checkpoint,
) -> Result<()> {
    file.sync_data()
        .map_err(|e| Error::io("syncing ingest data", &e))?;
    let mut txn = inner.records.write()?;
    let Some(mut record) = inner.records.ingest(&txn, namespace, reference)? else {
        return Ok(());
    };
    if record
        .checkpoint
        .is_some_and(|saved| saved.offset >= checkpoint.offset)
    {
        return Ok(());
    }
    record.checkpoint = Some(checkpoint);
    record.updated_at = now_nanos();
    inner.records.put_ingest(&mut txn, namespace, &record)?;
    records::commit(txn)
}

impl LocalWriter {
    fn take_state(&mut self) -> Result<WriteState> {
        self.state.take().ok_or_else(|| self.broken())
    }

    fn broken(&self) -> Error {
        Error::failed_precondition(format!(
            "writer for {} failed earlier; open a new writer to resume",
            self.reference
        ))
    }

    fn data_path(&self) -> PathBuf {
        self.inner.ingest_path(&self.key).join("data")
    }
}

#[async_trait]
impl ContentWriter for LocalWriter {
    async fn status(&mut self) -> Result<Status> {
        let offset = match &self.state {
            Some(state) => state.hasher.len(),
            None => return Err(self.broken()),
        };
        Ok(Status {
            reference: self.reference.clone(),
            offset,
            total: self.total,
            expected: self.expected.clone(),
            started_at: to_system_time(self.started_at),
            updated_at: std::time::SystemTime::now(),
        })
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        let state = self.take_state()?;
        let offset = state.hasher.len();
        if self.total != 0 && offset + data.len() as u64 > self.total {
            self.state = Some(state);
            return Err(Error::invalid_argument(format!(
                "writing {} bytes at offset {offset} would pass the expected size {}",
                data.len(),
                self.total
            )));
        }
        let WriteState {
            file,
            mut hasher,
            unsynced,
            saving,
        } = state;
        let len = data.len() as u64;
        let data = Arc::new(data);
        let written = {
            let (file, data, held) = (file.clone(), data.clone(), self.lock.clone());
            blocking(move || {
                let _held = held;
                file.write_all_at(&data, offset)
                    .map_err(|e| Error::io("writing ingest data", &e))?;
                start_write_back(&file, offset, data.len());
                Ok(())
            })
        };
        let hashed = blocking(move || {
            hasher.update(&data);
            Ok(hasher)
        });
        let (written, hashed) = tokio::join!(written, hashed);
        written?;
        let mut state = WriteState {
            file,
            hasher: hashed?,
            unsynced: unsynced + len,
            saving,
        };
        crate::metrics::INGESTED_BYTES.inc_by(len);
        if state.unsynced >= CHECKPOINT_INTERVAL {
            state.saved().await?;
            let (inner, namespace, reference, file, held) = (
                self.inner.clone(),
                self.namespace.clone(),
                self.reference.clone(),
                state.file.clone(),
                self.lock.clone(),
            );
            let checkpoint = state.hasher.checkpoint();
            state.saving = Some(tokio::task::spawn_blocking(move || {
                let _held = held;
                save_checkpoint(&inner, &namespace, &reference, &file, checkpoint)
            }));
            state.unsynced = 0;
        }
        self.state = Some(state);
        Ok(())
    }

    async fn restart(&mut self) -> Result<()> {
        let mut state = self.take_state()?;
        // A checkpoint saved after the truncation would describe data
        // that is gone.
        state.saved().await?;
        let (inner, namespace, reference) = (
            self.inner.clone(),
            self.namespace.clone(),
            self.reference.clone(),
        );
        let state = blocking(move || {
            // Forget the checkpoint first: it describes data about to go.
            let mut txn = inner.records.write()?;
            if let Some(mut record) = inner.records.ingest(&txn, &namespace, &reference)? {
                record.checkpoint = None;
                inner.records.put_ingest(&mut txn, &namespace, &record)?;
            }
            records::commit(txn)?;
            state
                .file
                .set_len(0)
                .map_err(|e| Error::io("truncating ingest data", &e))?;
            state.hasher = Sha256Hasher::new();
            state.unsynced = 0;
            Ok(state)
        })
        .await?;
        self.state = Some(state);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, options: CommitOptions) -> Result<Digest> {
        validate_labels(&options.labels)?;
        let mut state = self.take_state()?;
        state.saved().await?;
        let wanted_sizes: Vec<u64> = [options.size, (self.total != 0).then_some(self.total)]
            .into_iter()
            .flatten()
            .collect();
        let expected: Vec<Digest> = [options.expected, self.expected.clone()]
            .into_iter()
            .flatten()
            .collect();
        let (inner, namespace, reference, key) = (
            self.inner.clone(),
            self.namespace.clone(),
            self.reference.clone(),
            self.key.clone(),
        );
        let data_path = self.data_path();
        let held = self.lock.clone();
        let result = blocking(move || {
            let _held = held;
            let size = state.hasher.len();
            if let Some(wanted) = wanted_sizes.iter().find(|w| **w != size) {
                return Err(Error::failed_precondition(format!(
                    "commit of {reference}: {size} bytes written, {wanted} expected"
                )));
            }
            let digest = state.hasher.digest();
            if let Some(other) = expected.iter().find(|e| **e != digest) {
                return Err(Error::failed_precondition(format!(
                    "commit of {reference}: content is {digest}, {other} expected"
                )));
            }
            state
                .file
                .sync_data()
                .map_err(|e| Error::io("syncing ingest data", &e))?;
            drop(state);
            publish(
                &inner,
                &namespace,
                &reference,
                &key,
                &data_path,
                digest,
                size,
                options.labels,
            )
        })
        .await;
        // The writer is done either way; a failed verification leaves the
        // ingest on disk for the caller to inspect or abort.
        result
    }
}

/// Moves verified data into the blob store (unless another namespace stored
/// it already) and records it in the namespace.
#[allow(clippy::too_many_arguments)]
fn publish(
    inner: &Inner,
    namespace: &str,
    reference: &str,
    key: &str,
    data_path: &std::path::Path,
    digest: Digest,
    size: u64,
    labels: std::collections::HashMap<String, String>,
) -> Result<Digest> {
    let _publishing = inner.publish_lock(&digest);
    let present = {
        let txn = inner.records.read()?;
        inner.records.blob(&txn, namespace, &digest)?.is_some()
    };
    if present {
        drop_ingest(inner, namespace, reference, key)?;
        return Err(Error::already_exists(format!(
            "content {digest}: already exists"
        )));
    }
    let blob_path = inner.blob_path(&digest);
    if blob_path.exists() {
        // Stored for another namespace already: the bytes are the same.
        remove_all(data_path);
    } else {
        make_read_only(data_path)?;
        std::fs::rename(data_path, &blob_path)
            .map_err(|e| Error::io(format!("moving {digest} into place"), &e))?;
        sync_dir(&inner.blobs_dir)?;
    }
    let now = now_nanos();
    let record = BlobRecord {
        size,
        created_at: now,
        updated_at: now,
        labels,
    };
    let mut txn = inner.records.write()?;
    inner
        .records
        .put_blob(&mut txn, namespace, &digest, &record)?;
    inner
        .records
        .delete_ingest(&mut txn, namespace, reference)?;
    records::commit(txn)?;
    remove_all(&inner.ingest_path(key));
    crate::metrics::COMMITTED_BLOBS.inc();
    Ok(digest)
}

fn drop_ingest(inner: &Inner, namespace: &str, reference: &str, key: &str) -> Result<()> {
    let mut txn = inner.records.write()?;
    inner
        .records
        .delete_ingest(&mut txn, namespace, reference)?;
    records::commit(txn)?;
    remove_all(&inner.ingest_path(key));
    Ok(())
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Checkpoint what was written since the last checkpoint, holding the
        // ref until it is saved so the next writer resumes from it.
        let (Some(state), Some(lock)) = (self.state.take(), self.lock.take()) else {
            return;
        };
        if state.unsynced == 0 {
            return;
        }
        let (inner, namespace, reference) = (
            self.inner.clone(),
            self.namespace.clone(),
            self.reference.clone(),
        );
        let work = move || {
            let _lock = lock;
            let checkpoint = state.hasher.checkpoint();
            if let Err(e) = save_checkpoint(&inner, &namespace, &reference, &state.file, checkpoint)
            {
                tracing::warn!(%reference, error = %e, "could not checkpoint ingest");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }
}
