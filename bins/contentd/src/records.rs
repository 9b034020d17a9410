//! The LMDB records of the content store.
//!
//! Keys join validated names with `/`, which no namespace, ref or digest can
//! contain, so a prefix scan over `"<namespace>/"` sees exactly one
//! namespace.
//!
//! | database | key | value |
//! |---|---|---|
//! | `blobs` | `<namespace>/<digest>` | [`BlobRecord`] |
//! | `holders` | `<digest>/<namespace>` | (none): which namespaces hold a blob |
//! | `ingests` | `<namespace>/<ref>` | [`IngestRecord`] |
//!
//! Every write transaction is short and does no file IO: blob data is
//! written and synced before a transaction starts.

use std::collections::HashMap;
use std::path::Path;

use berth_daemon::lmdb::open_env;
pub use berth_daemon::lmdb::{db_error, now_nanos, to_system_time};
use berth_errdefs::{Error, Result};
use berth_ids::{Digest, Sha256Checkpoint};
use heed::types::{SerdeJson, Str, Unit};
use heed::{Database, Env, RoTxn, RwTxn};
use serde::{Deserialize, Serialize};

/// Upper bound on the metadata file (LMDB maps it sparsely).
const MAP_SIZE: usize = 8 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub created_at: u64,
    pub updated_at: u64,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRecord {
    pub reference: String,
    /// Expected size, 0 if unknown.
    pub total: u64,
    pub expected: Option<Digest>,
    pub started_at: u64,
    pub updated_at: u64,
    /// Hash state at a point where the data before it was synced to disk.
    pub checkpoint: Option<Sha256Checkpoint>,
}

/// See [`Records::usage`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Namespace → (blob records, their bytes).
    pub namespaces: std::collections::BTreeMap<String, (u64, u64)>,
    pub stored_blobs: u64,
    pub stored_bytes: u64,
    pub ingests: u64,
}

pub fn blob_key(namespace: &str, digest: &Digest) -> String {
    format!("{namespace}/{digest}")
}

pub fn ingest_key(namespace: &str, reference: &str) -> String {
    format!("{namespace}/{reference}")
}

fn holder_key(digest: &Digest, namespace: &str) -> String {
    format!("{digest}/{namespace}")
}

#[derive(Debug, Clone)]
pub struct Records {
    env: Env,
    blobs: Database<Str, SerdeJson<BlobRecord>>,
    holders: Database<Str, Unit>,
    ingests: Database<Str, SerdeJson<IngestRecord>>,
}

impl Records {
    pub fn open(dir: &Path) -> Result<Records> {
        let env = open_env(dir, MAP_SIZE, 4)?;
        let mut txn = env.write_txn().map_err(db_error)?;
        let blobs = env
            .create_database(&mut txn, Some("blobs"))
            .map_err(db_error)?;
        let holders = env
            .create_database(&mut txn, Some("holders"))
            .map_err(db_error)?;
        let ingests = env
            .create_database(&mut txn, Some("ingests"))
            .map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Records {
            env,
            blobs,
            holders,
            ingests,
        })
    }

    pub fn read(&self) -> Result<RoTxn<'_, heed::WithTls>> {
        self.env.read_txn().map_err(db_error)
    }

    pub fn write(&self) -> Result<RwTxn<'_>> {
        self.env.write_txn().map_err(db_error)
    }

    pub fn blob(
        &self,
        txn: &RoTxn,
        namespace: &str,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>> {
        self.blobs
            .get(txn, &blob_key(namespace, digest))
            .map_err(db_error)
    }

    pub fn put_blob(
        &self,
        txn: &mut RwTxn,
        namespace: &str,
        digest: &Digest,
        record: &BlobRecord,
    ) -> Result<()> {
        self.blobs
            .put(txn, &blob_key(namespace, digest), record)
            .map_err(db_error)?;
        self.holders
            .put(txn, &holder_key(digest, namespace), &())
            .map_err(db_error)
    }

    /// Removes a namespace's record; false if it had none.
    pub fn delete_blob(&self, txn: &mut RwTxn, namespace: &str, digest: &Digest) -> Result<bool> {
        let existed = self
            .blobs
            .delete(txn, &blob_key(namespace, digest))
            .map_err(db_error)?;
        self.holders
            .delete(txn, &holder_key(digest, namespace))
            .map_err(db_error)?;
        Ok(existed)
    }

    /// Whether any namespace still holds the blob.
    pub fn is_held(&self, txn: &RoTxn, digest: &Digest) -> Result<bool> {
        let prefix = format!("{digest}/");
        let mut iter = self.holders.prefix_iter(txn, &prefix).map_err(db_error)?;
        Ok(iter.next().transpose().map_err(db_error)?.is_some())
    }

    /// Every blob of a namespace.
    pub fn blobs_in(&self, txn: &RoTxn, namespace: &str) -> Result<Vec<(Digest, BlobRecord)>> {
        let prefix = format!("{namespace}/");
        let mut out = Vec::new();
        for item in self.blobs.prefix_iter(txn, &prefix).map_err(db_error)? {
            let (key, record) = item.map_err(db_error)?;
            let digest = Digest::parse(&key[prefix.len()..])
                .map_err(|e| Error::internal(format!("corrupt blob key {key:?}: {e}")))?;
            out.push((digest, record));
        }
        Ok(out)
    }

    /// The digests of every held blob, across namespaces.
    pub fn all_held_digests(&self, txn: &RoTxn) -> Result<std::collections::HashSet<String>> {
        let mut out = std::collections::HashSet::new();
        for item in self.holders.iter(txn).map_err(db_error)? {
            let (key, ()) = item.map_err(db_error)?;
            if let Some((digest, _)) = key.split_once('/') {
                out.insert(digest.to_string());
            }
        }
        Ok(out)
    }

    pub fn ingest(
        &self,
        txn: &RoTxn,
        namespace: &str,
        reference: &str,
    ) -> Result<Option<IngestRecord>> {
        self.ingests
            .get(txn, &ingest_key(namespace, reference))
            .map_err(db_error)
    }

    pub fn put_ingest(
        &self,
        txn: &mut RwTxn,
        namespace: &str,
        record: &IngestRecord,
    ) -> Result<()> {
        self.ingests
            .put(txn, &ingest_key(namespace, &record.reference), record)
            .map_err(db_error)
    }

    pub fn delete_ingest(&self, txn: &mut RwTxn, namespace: &str, reference: &str) -> Result<bool> {
        self.ingests
            .delete(txn, &ingest_key(namespace, reference))
            .map_err(db_error)
    }

    pub fn ingests_in(&self, txn: &RoTxn, namespace: &str) -> Result<Vec<IngestRecord>> {
        let prefix = format!("{namespace}/");
        let mut out = Vec::new();
        for item in self.ingests.prefix_iter(txn, &prefix).map_err(db_error)? {
            out.push(item.map_err(db_error)?.1);
        }
        Ok(out)
    }

    /// What the store holds: per namespace, its blob records and their
    /// bytes; across namespaces, the distinct blobs and bytes on disk; and
    /// the ingests in progress.
    pub fn usage(&self, txn: &RoTxn) -> Result<Usage> {
        let mut usage = Usage::default();
        let mut distinct = std::collections::HashSet::new();
        for item in self.blobs.iter(txn).map_err(db_error)? {
            let (key, record) = item.map_err(db_error)?;
            let Some((namespace, digest)) = key.split_once('/') else {
                continue;
            };
            let entry = usage.namespaces.entry(namespace.to_string()).or_default();
            entry.0 += 1;
            entry.1 += record.size;
            if distinct.insert(digest.to_string()) {
                usage.stored_blobs += 1;
                usage.stored_bytes += record.size;
            }
        }
        usage.ingests = self.ingests.len(txn).map_err(db_error)?;
        Ok(usage)
    }

    /// Every ingest, with its key.
    pub fn all_ingests(&self, txn: &RoTxn) -> Result<Vec<(String, IngestRecord)>> {
        let mut out = Vec::new();
        for item in self.ingests.iter(txn).map_err(db_error)? {
            let (key, record) = item.map_err(db_error)?;
            out.push((key.to_string(), record));
        }
        Ok(out)
    }

    pub fn delete_ingest_key(&self, txn: &mut RwTxn, key: &str) -> Result<()> {
        self.ingests.delete(txn, key).map_err(db_error).map(|_| ())
    }
}

pub fn commit(txn: RwTxn) -> Result<()> {
    txn.commit().map_err(db_error)
}
