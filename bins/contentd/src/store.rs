//! The local content store: blobs as files, records in LMDB.
//!
//! ```text
//! <root>/blobs/sha256/<hex>      committed blobs, read-only, stored once
//! <root>/ingest/<hash of key>/data   ingests in progress
//! <root>/meta/                   LMDB: see records.rs
//! ```
//!
//! Order of work, so a crash at any point leaves nothing that start-up
//! recovery cannot fix: data is synced before any record names it; a blob is
//! renamed into place (and its directory synced) before the transaction that
//! makes it visible; a record is removed before the files it names.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use berth_content::{
    apply_label_update, ContentStore, ContentWriter, Info, InfoFields, Status, StatusFields,
    WriterOptions, MAX_READ,
};
use berth_daemon::blocking;
use berth_errdefs::{Error, Result};
use berth_filters::Filter;
use berth_ids::{validate_labels, validate_namespace, validate_ref, Digest};

use crate::ingest;
use crate::records::{
    self, ingest_key, now_nanos, to_system_time, BlobRecord, IngestRecord, Records,
};

const PUBLISH_STRIPES: usize = 16;

/// The content store on local disk. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) blobs_dir: PathBuf,
    pub(crate) ingest_dir: PathBuf,
    pub(crate) records: Records,
    /// Ingest keys a writer holds.
    writers: Mutex<HashSet<String>>,
    /// Serialise making a blob visible and deleting it, per digest, so a
    /// delete never unlinks a file a concurrent commit is about to record.
    publish_locks: Vec<Mutex<()>>,
}

/// What start-up recovery cleaned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub orphan_blobs: usize,
    pub orphan_ingest_dirs: usize,
    pub ingests_without_data: usize,
}

fn create_private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), &e))
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", path.display()), &e))
}

fn not_found(digest: &Digest) -> Error {
    Error::not_found(format!("content {digest}: not found"))
}

fn info_from_record(digest: Digest, record: BlobRecord) -> Info {
    Info {
        digest,
        size: record.size,
        created_at: to_system_time(record.created_at),
        updated_at: to_system_time(record.updated_at),
        labels: record.labels,
    }
}

/// Holds an ingest key for a writer (or an abort); frees it on drop.
#[derive(Debug)]
pub(crate) struct RefLock {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for RefLock {
    fn drop(&mut self) {
        self.inner.lock_writers().remove(&self.key);
    }
}

impl Inner {
    fn lock_writers(&self) -> MutexGuard<'_, HashSet<String>> {
        // A panic while holding this lock cannot leave the set inconsistent
        // (each operation is one insert or remove), so poison is ignored.
        self.writers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn publish_lock(&self, digest: &Digest) -> MutexGuard<'_, ()> {
        let stripe = usize::from_str_radix(&digest.hex()[..2], 16).unwrap_or(0) % PUBLISH_STRIPES;
        self.publish_locks[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir.join(digest.hex())
    }

    /// The directory of an ingest: a hash of its key, so no ref ever
    /// becomes a path.
    pub(crate) fn ingest_path(&self, key: &str) -> PathBuf {
        self.ingest_dir.join(Digest::of(key.as_bytes()).hex())
    }

    fn take_ref(self: &Arc<Self>, key: String, reference: &str) -> Result<RefLock> {
        if !self.lock_writers().insert(key.clone()) {
            return Err(Error::unavailable(format!(
                "ref {reference} is locked: another writer holds it"
            )));
        }
        Ok(RefLock {
            inner: self.clone(),
            key,
        })
    }

    fn status_of(&self, record: IngestRecord, key: &str) -> Status {
        let data = self.ingest_path(key).join("data");
        let meta = std::fs::metadata(&data).ok();
        let offset = meta.as_ref().map(|m| m.len()).unwrap_or(0);
        let updated_at = meta
            .and_then(|m| m.modified().ok())
            .unwrap_or_else(|| to_system_time(record.updated_at));
        Status {
            reference: record.reference,
            offset,
            total: record.total,
            expected: record.expected,
            started_at: to_system_time(record.started_at),
            updated_at,
        }
    }
}

impl LocalStore {
    /// Removes a namespace's record of a blob (only if its `updated_at` is
    /// still `seen`, when given) and the blob's bytes once no namespace
    /// holds it.
    async fn delete_blob(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: Option<SystemTime>,
    ) -> Result<()> {
        check_namespace(namespace)?;
        let (inner, namespace, digest) =
            (self.inner.clone(), namespace.to_string(), digest.clone());
        blocking(move || {
            let _publishing = inner.publish_lock(&digest);
            let mut txn = inner.records.write()?;
            if let Some(seen) = seen {
                let record = inner
                    .records
                    .blob(&txn, &namespace, &digest)?
                    .ok_or_else(|| not_found(&digest))?;
                if to_system_time(record.updated_at) != seen {
                    return Err(Error::failed_precondition(format!(
                        "content {digest} changed since it was read; not deleted"
                    )));
                }
            }
            if !inner.records.delete_blob(&mut txn, &namespace, &digest)? {
                return Err(not_found(&digest));
            }
            let still_held = inner.records.is_held(&txn, &digest)?;
            records::commit(txn)?;
            if !still_held {
                remove_all(&inner.blob_path(&digest));
            }
            Ok(())
        })
        .await
    }

    /// What the store holds (see [`crate::records::Records::usage`]).
    pub async fn usage(&self) -> Result<crate::records::Usage> {
        let inner = self.inner.clone();
        blocking(move || {
            let txn = inner.records.read()?;
            inner.records.usage(&txn)
        })
        .await
    }

    /// Opens the store under `root`, creating it if needed, and cleans up
    /// whatever a crash left behind.
    pub fn open(root: &Path) -> Result<(LocalStore, Recovery)> {
        let blobs_dir = root.join("blobs").join("sha256");
        let ingest_dir = root.join("ingest");
        for dir in [root, &root.join("blobs"), &blobs_dir, &ingest_dir] {
            create_private_dir(dir)?;
        }
        let records = Records::open(&root.join("meta"))?;
        let store = LocalStore {
            inner: Arc::new(Inner {
                blobs_dir,
                ingest_dir,
                records,
                writers: Mutex::new(HashSet::new()),
                publish_locks: (0..PUBLISH_STRIPES).map(|_| Mutex::new(())).collect(),
            }),
        };
        let recovery = store.recover()?;
        Ok((store, recovery))
    }

    fn recover(&self) -> Result<Recovery> {
        let inner = &self.inner;
        let mut recovery = Recovery::default();

        // Ingest records whose data is gone (a commit that moved the data
        // but died before its transaction) are dropped.
        let ingests = {
            let txn = inner.records.read()?;
            inner.records.all_ingests(&txn)?
        };
        let mut live_dirs = HashSet::new();
        let mut txn = inner.records.write()?;
        for (key, _) in &ingests {
            let dir = inner.ingest_path(key);
            if dir.join("data").exists() {
                live_dirs.insert(dir);
            } else {
                inner.records.delete_ingest_key(&mut txn, key)?;
                recovery.ingests_without_data += 1;
            }
        }
        records::commit(txn)?;

        // Ingest directories no record names (a writer that died between
        // creating its directory and recording it).
        for entry in read_dir(&inner.ingest_dir)? {
            let path = entry.path();
            if !live_dirs.contains(&path) {
                remove_all(&path);
                recovery.orphan_ingest_dirs += 1;
            }
        }

        // Blob files no namespace holds (a commit that renamed but died
        // before its transaction, or a delete that died before unlinking).
        let held = {
            let txn = inner.records.read()?;
            inner.records.all_held_digests(&txn)?
        };
        for entry in read_dir(&inner.blobs_dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !held.contains(&format!("sha256:{name}")) {
                remove_all(&entry.path());
                recovery.orphan_blobs += 1;
            }
        }
        Ok(recovery)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)
        .and_then(|entries| entries.collect())
        .map_err(|e| Error::io(format!("reading {}", dir.display()), &e))
}

pub(crate) fn remove_all(path: &Path) {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove");
        }
    }
}

fn check_namespace(namespace: &str) -> Result<()> {
    Ok(validate_namespace(namespace)?)
}

#[async_trait]
impl ContentStore for LocalStore {
    async fn info(&self, namespace: &str, digest: &Digest) -> Result<Info> {
        check_namespace(namespace)?;
        let (inner, namespace, digest) =
            (self.inner.clone(), namespace.to_string(), digest.clone());
        blocking(move || {
            let txn = inner.records.read()?;
            let record = inner
                .records
                .blob(&txn, &namespace, &digest)?
                .ok_or_else(|| not_found(&digest))?;
            Ok(info_from_record(digest, record))
        })
        .await
    }

    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info> {
        check_namespace(namespace)?;
        validate_labels(&info.labels)?;
        let (inner, namespace, paths) = (self.inner.clone(), namespace.to_string(), paths.to_vec());
        blocking(move || {
            let mut txn = inner.records.write()?;
            let mut record = inner
                .records
                .blob(&txn, &namespace, &info.digest)?
                .ok_or_else(|| not_found(&info.digest))?;
            apply_label_update(&mut record.labels, &info.labels, &paths)?;
            validate_labels(&record.labels)?;
            record.updated_at = now_nanos().max(record.updated_at + 1);
            inner
                .records
                .put_blob(&mut txn, &namespace, &info.digest, &record)?;
            records::commit(txn)?;
            Ok(info_from_record(info.digest, record))
        })
        .await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        check_namespace(namespace)?;
        let filter = Filter::parse_any(filters)?;
        let (inner, namespace) = (self.inner.clone(), namespace.to_string());
        blocking(move || {
            let txn = inner.records.read()?;
            Ok(inner
                .records
                .blobs_in(&txn, &namespace)?
                .into_iter()
                .map(|(digest, record)| info_from_record(digest, record))
                .filter(|info| filter.matches(&InfoFields(info)))
                .collect())
        })
        .await
    }

    async fn delete(&self, namespace: &str, digest: &Digest) -> Result<()> {
        self.delete_blob(namespace, digest, None).await
    }

    async fn delete_if_unchanged(
        &self,
        namespace: &str,
        digest: &Digest,
        seen: SystemTime,
    ) -> Result<()> {
        self.delete_blob(namespace, digest, Some(seen)).await
    }

    async fn read_at(
        &self,
        namespace: &str,
        digest: &Digest,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        check_namespace(namespace)?;
        let len = len.min(MAX_READ);
        let (inner, namespace, digest) =
            (self.inner.clone(), namespace.to_string(), digest.clone());
        blocking(move || {
            let size = {
                let txn = inner.records.read()?;
                inner
                    .records
                    .blob(&txn, &namespace, &digest)?
                    .ok_or_else(|| not_found(&digest))?
                    .size
            };
            if offset > size {
                return Err(Error::invalid_argument(format!(
                    "offset {offset} is past the end of {digest} ({size} bytes)"
                )));
            }
            let want = len.min((size - offset) as usize);
            let mut buf = vec![0u8; want];
            let file = File::open(inner.blob_path(&digest)).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => not_found(&digest),
                _ => Error::io(format!("opening {digest}"), &e),
            })?;
            let mut filled = 0;
            while filled < want {
                let n = file
                    .read_at(&mut buf[filled..], offset + filled as u64)
                    .map_err(|e| Error::io(format!("reading {digest}"), &e))?;
                if n == 0 {
                    return Err(Error::internal(format!(
                        "{digest} is shorter on disk than its record says"
                    )));
                }
                filled += n;
            }
            Ok(buf)
        })
        .await
    }

    async fn status(&self, namespace: &str, reference: &str) -> Result<Status> {
        check_namespace(namespace)?;
        validate_ref(reference)?;
        let (inner, namespace, reference) = (
            self.inner.clone(),
            namespace.to_string(),
            reference.to_string(),
        );
        blocking(move || {
            let record = {
                let txn = inner.records.read()?;
                inner.records.ingest(&txn, &namespace, &reference)?
            }
            .ok_or_else(|| Error::not_found(format!("ingest {reference}: not found")))?;
            Ok(inner.status_of(record, &ingest_key(&namespace, &reference)))
        })
        .await
    }

    async fn list_statuses(&self, namespace: &str, filters: &[String]) -> Result<Vec<Status>> {
        check_namespace(namespace)?;
        let filter = Filter::parse_any(filters)?;
        let (inner, namespace) = (self.inner.clone(), namespace.to_string());
        blocking(move || {
            let ingests = {
                let txn = inner.records.read()?;
                inner.records.ingests_in(&txn, &namespace)?
            };
            Ok(ingests
                .into_iter()
                .map(|record| {
                    let key = ingest_key(&namespace, &record.reference);
                    inner.status_of(record, &key)
                })
                .filter(|status| filter.matches(&StatusFields(status)))
                .collect())
        })
        .await
    }

    async fn abort(&self, namespace: &str, reference: &str) -> Result<()> {
        check_namespace(namespace)?;
        validate_ref(reference)?;
        let key = ingest_key(namespace, reference);
        let lock = self.inner.take_ref(key.clone(), reference)?;
        let (inner, namespace, reference) = (
            self.inner.clone(),
            namespace.to_string(),
            reference.to_string(),
        );
        blocking(move || {
            let _lock = lock;
            let mut txn = inner.records.write()?;
            if !inner
                .records
                .delete_ingest(&mut txn, &namespace, &reference)?
            {
                return Err(Error::not_found(format!("ingest {reference}: not found")));
            }
            records::commit(txn)?;
            remove_all(&inner.ingest_path(&key));
            Ok(())
        })
        .await
    }

    async fn writer(
        &self,
        namespace: &str,
        options: WriterOptions,
    ) -> Result<Box<dyn ContentWriter>> {
        check_namespace(namespace)?;
        validate_ref(&options.reference)?;
        let key = ingest_key(namespace, &options.reference);
        let lock = self.inner.take_ref(key, &options.reference)?;
        if let Some(expected) = &options.expected {
            match self.info(namespace, expected).await {
                Ok(_) => {
                    return Err(Error::already_exists(format!(
                        "content {expected}: already exists"
                    )))
                }
                Err(e) if e.is(berth_errdefs::ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let inner = self.inner.clone();
        let namespace = namespace.to_string();
        let writer = blocking(move || ingest::open(inner, lock, namespace, options)).await?;
        Ok(Box::new(writer) as Box<dyn ContentWriter>)
    }
}

/// Makes a committed blob read-only, as containerd does.
pub(crate) fn make_read_only(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), &e))
}
