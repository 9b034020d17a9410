//! The LMDB records of the snapshotters.
//!
//! Keys join validated names with `/`, which no snapshotter name,
//! namespace, key or name can contain.
//!
//! | database | key | value |
//! |---|---|---|
//! | `snapshots` | `<snapshotter>/<namespace>/<key>` | [`Record`] |
//! | `counters` | `<snapshotter>` | the last snapshot id handed out |
//! | `unsynced` | `<snapshotter>/<namespace>/<name>` | [`CommitMark`]: a committed snapshot whose files may be in the page cache only |
//!
//! A snapshot's directory is `<root>/<snapshotter>/snapshots/<id>`. Ids are
//! allocated in their own transaction before the directory is made, and the
//! record is written after it: a crash in between leaves a directory no
//! record names, which `cleanup` removes. Removal deletes the record first
//! and the directory after, with the same effect. No transaction does file
//! IO.
//!
//! A commit is durable when its transaction returns, but the files of the
//! snapshot are written back by the kernel in its own time. Each commit
//! therefore also records where its files were written ([`WrittenIn`]),
//! in the same transaction, until a syncfs has written them back (see
//! `WriteBack` in `local.rs`). After a power cut, a snapshot still marked
//! from an earlier boot may hold empty or missing files, and is discarded.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use berth_daemon::lmdb::open_env;
pub use berth_daemon::lmdb::{db_error, nanos_of, now_nanos, to_system_time};
use berth_errdefs::{Error, Result};
use berth_snapshot::Kind;
use heed::types::{SerdeJson, Str};
use heed::{Database, Env};
use serde::{Deserialize, Serialize};

/// Upper bound on the metadata file (LMDB maps it sparsely).
const MAP_SIZE: usize = 4 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: StoredKind,
    pub parent: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub labels: HashMap<String, String>,
    /// A committed snapshot's usage, measured once on first ask (its tree
    /// never changes after commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<StoredUsage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUsage {
    pub size: u64,
    pub inodes: u64,
}

impl From<StoredUsage> for berth_snapshot::Usage {
    fn from(u: StoredUsage) -> berth_snapshot::Usage {
        berth_snapshot::Usage {
            size: u.size,
            inodes: u.inodes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredKind {
    View,
    Active,
    Committed,
}

impl From<StoredKind> for Kind {
    fn from(kind: StoredKind) -> Kind {
        match kind {
            StoredKind::View => Kind::View,
            StoredKind::Active => Kind::Active,
            StoredKind::Committed => Kind::Committed,
        }
    }
}

/// Where a commit's files were written: the boot and the mount of the
/// snapshotter's filesystem. While both are the same, the page cache still
/// holds whatever was not written back yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenIn {
    pub boot_id: String,
    pub mount_id: u64,
}

/// The mark of a commit whose files may not be on disk yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMark {
    pub written_in: WrittenIn,
    /// The commit's time: a later commit under the same name is another.
    pub committed_at: u64,
}

/// A committed snapshot not known to be on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsynced {
    pub namespace: String,
    pub name: String,
    pub mark: CommitMark,
}

fn key_of(snapshotter: &str, namespace: &str, key: &str) -> String {
    format!("{snapshotter}/{namespace}/{key}")
}

#[derive(Debug, Clone)]
pub struct Records {
    env: Env,
    snapshots: Database<Str, SerdeJson<Record>>,
    counters: Database<Str, SerdeJson<u64>>,
    unsynced: Database<Str, SerdeJson<CommitMark>>,
}

impl Records {
    pub fn open(dir: &Path) -> Result<Records> {
        let env = open_env(dir, MAP_SIZE, 4)?;
        let mut txn = env.write_txn().map_err(db_error)?;
        let snapshots = env
            .create_database(&mut txn, Some("snapshots"))
            .map_err(db_error)?;
        let counters = env
            .create_database(&mut txn, Some("counters"))
            .map_err(db_error)?;
        let unsynced = env
            .create_database(&mut txn, Some("unsynced"))
            .map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Records {
            env,
            snapshots,
            counters,
            unsynced,
        })
    }

    /// The highest snapshot id recorded: each insert records its id, so
    /// no snapshot that was ever stored has a higher one.
    pub fn last_id(&self, snapshotter: &str) -> Result<u64> {
        let txn = self.env.read_txn().map_err(db_error)?;
        Ok(self
            .counters
            .get(&txn, snapshotter)
            .map_err(db_error)?
            .unwrap_or(0))
    }

    pub fn get(&self, snapshotter: &str, namespace: &str, key: &str) -> Result<Option<Record>> {
        let txn = self.env.read_txn().map_err(db_error)?;
        self.snapshots
            .get(&txn, &key_of(snapshotter, namespace, key))
            .map_err(db_error)
    }

    /// The record of `key` and its ancestors, nearest first.
    pub fn chain(&self, snapshotter: &str, namespace: &str, key: &str) -> Result<Vec<Record>> {
        let txn = self.env.read_txn().map_err(db_error)?;
        let mut out = Vec::new();
        let mut next = Some(key.to_string());
        while let Some(name) = next {
            let record = self
                .snapshots
                .get(&txn, &key_of(snapshotter, namespace, &name))
                .map_err(db_error)?
                .ok_or_else(|| Error::not_found(format!("snapshot {name} not found")))?;
            next = record.parent.clone();
            out.push(record);
            if out.len() > 100_000 {
                return Err(Error::internal("snapshot parent chain loops"));
            }
        }
        Ok(out)
    }

    /// The record of `parent`, which must be a committed snapshot.
    fn committed_parent(
        &self,
        txn: &heed::RoTxn,
        snapshotter: &str,
        namespace: &str,
        parent: &str,
    ) -> Result<Record> {
        check_committed_parent(
            self.snapshots
                .get(txn, &key_of(snapshotter, namespace, parent))
                .map_err(db_error)?,
            parent,
        )
    }

    /// Inserts a new snapshot, checking that the key is free and that the
    /// parent (if any) is committed.
    pub fn insert(
        &self,
        snapshotter: &str,
        namespace: &str,
        key: &str,
        record: &Record,
    ) -> Result<()> {
        let mut txn = self.env.write_txn().map_err(db_error)?;
        let full = key_of(snapshotter, namespace, key);
        if self.snapshots.get(&txn, &full).map_err(db_error)?.is_some() {
            return Err(Error::already_exists(format!(
                "snapshot {key} already exists"
            )));
        }
        if let Some(parent) = &record.parent {
            self.committed_parent(&txn, snapshotter, namespace, parent)?;
        }
        self.snapshots
            .put(&mut txn, &full, record)
            .map_err(db_error)?;
        // The id is handed out in memory; it is recorded here, in the
        // snapshot's own transaction, and so never handed out again.
        let last = self
            .counters
            .get(&txn, snapshotter)
            .map_err(db_error)?
            .unwrap_or(0);
        if record.id > last {
            self.counters
                .put(&mut txn, snapshotter, &record.id)
                .map_err(db_error)?;
        }
        txn.commit().map_err(db_error)
    }

    /// Turns active `key` into committed `name`; returns the new record.
    /// With `rebase`, the committed snapshot's parent becomes that
    /// committed snapshot (`key` must have none): an overlay layer applied
    /// before its lower layers were there.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        snapshotter: &str,
        namespace: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
        written_in: &WrittenIn,
        rebase: Option<&str>,
    ) -> Result<Record> {
        let mut txn = self.env.write_txn().map_err(db_error)?;
        let from = key_of(snapshotter, namespace, key);
        let to = key_of(snapshotter, namespace, name);
        let mut record = self
            .snapshots
            .get(&txn, &from)
            .map_err(db_error)?
            .ok_or_else(|| Error::not_found(format!("snapshot {key} not found")))?;
        if record.kind != StoredKind::Active {
            return Err(Error::failed_precondition(format!(
                "snapshot {key} is not active"
            )));
        }
        if self.snapshots.get(&txn, &to).map_err(db_error)?.is_some() {
            return Err(Error::already_exists(format!(
                "snapshot {name} already exists"
            )));
        }
        if let Some(parent) = rebase {
            if record.parent.is_some() {
                return Err(Error::failed_precondition(format!(
                    "snapshot {key} has a parent already; only one without can be committed onto {parent}"
                )));
            }
            self.committed_parent(&txn, snapshotter, namespace, parent)?;
            record.parent = Some(parent.to_string());
        }
        let now = now_nanos();
        record.kind = StoredKind::Committed;
        record.created_at = now;
        record.updated_at = now;
        record.labels = labels;
        self.snapshots.delete(&mut txn, &from).map_err(db_error)?;
        self.snapshots
            .put(&mut txn, &to, &record)
            .map_err(db_error)?;
        let mark = CommitMark {
            written_in: written_in.clone(),
            committed_at: now,
        };
        self.unsynced.put(&mut txn, &to, &mark).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(record)
    }

    /// Removes `key` unless it has children (or, with `seen`, unless its
    /// `updated_at` changed from that); returns what was removed.
    pub fn remove(
        &self,
        snapshotter: &str,
        namespace: &str,
        key: &str,
        seen: Option<u64>,
    ) -> Result<Record> {
        let mut txn = self.env.write_txn().map_err(db_error)?;
        let full = key_of(snapshotter, namespace, key);
        let record = self
            .snapshots
            .get(&txn, &full)
            .map_err(db_error)?
            .ok_or_else(|| Error::not_found(format!("snapshot {key} not found")))?;
        if seen.is_some_and(|seen| seen != record.updated_at) {
            return Err(Error::failed_precondition(format!(
                "snapshot {key} changed since it was read; not removed"
            )));
        }
        let prefix = key_of(snapshotter, namespace, "");
        for item in self
            .snapshots
            .prefix_iter(&txn, &prefix)
            .map_err(db_error)?
        {
            let (child, value) = item.map_err(db_error)?;
            if value.parent.as_deref() == Some(key) {
                return Err(Error::failed_precondition(format!(
                    "snapshot {key} has a child ({}); remove it first",
                    &child[prefix.len()..]
                )));
            }
        }
        self.snapshots.delete(&mut txn, &full).map_err(db_error)?;
        self.unsynced.delete(&mut txn, &full).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(record)
    }

    /// The committed snapshots of a snapshotter not known to be on disk.
    pub fn unsynced(&self, snapshotter: &str) -> Result<Vec<Unsynced>> {
        let txn = self.env.read_txn().map_err(db_error)?;
        let prefix = format!("{snapshotter}/");
        let mut out = Vec::new();
        for item in self.unsynced.prefix_iter(&txn, &prefix).map_err(db_error)? {
            let (key, mark) = item.map_err(db_error)?;
            if let Some((namespace, name)) = key[prefix.len()..].split_once('/') {
                out.push(Unsynced {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    mark,
                });
            }
        }
        Ok(out)
    }

    /// Drops the marks of `written_back` (a syncfs that started after they
    /// were read has written their files back). A mark that changed since
    /// (the snapshot removed and committed again) stays.
    pub fn written_back(&self, snapshotter: &str, written_back: &[Unsynced]) -> Result<()> {
        if written_back.is_empty() {
            return Ok(());
        }
        let mut txn = self.env.write_txn().map_err(db_error)?;
        for mark in written_back {
            let key = key_of(snapshotter, &mark.namespace, &mark.name);
            if self.unsynced.get(&txn, &key).map_err(db_error)?.as_ref() == Some(&mark.mark) {
                self.unsynced.delete(&mut txn, &key).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }

    pub fn update_labels(
        &self,
        snapshotter: &str,
        namespace: &str,
        key: &str,
        change: impl FnOnce(&mut HashMap<String, String>) -> Result<()>,
    ) -> Result<Record> {
        let mut txn = self.env.write_txn().map_err(db_error)?;
        let full = key_of(snapshotter, namespace, key);
        let mut record = self
            .snapshots
            .get(&txn, &full)
            .map_err(db_error)?
            .ok_or_else(|| Error::not_found(format!("snapshot {key} not found")))?;
        change(&mut record.labels)?;
        berth_ids::validate_labels(&record.labels)?;
        // Strictly later, so a conditional remove sees every change.
        record.updated_at = now_nanos().max(record.updated_at + 1);
        self.snapshots
            .put(&mut txn, &full, &record)
            .map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(record)
    }

    /// Keeps `usage` as the measured usage of `key`, if it is still the
    /// committed snapshot `id` that was measured.
    pub fn cache_usage(
        &self,
        snapshotter: &str,
        namespace: &str,
        key: &str,
        id: u64,
        usage: berth_snapshot::Usage,
    ) -> Result<()> {
        let usage = StoredUsage {
            size: usage.size,
            inodes: usage.inodes,
        };
        let mut txn = self.env.write_txn().map_err(db_error)?;
        let full = key_of(snapshotter, namespace, key);
        let Some(mut record) = self.snapshots.get(&txn, &full).map_err(db_error)? else {
            return Ok(());
        };
        if record.id != id || record.kind != StoredKind::Committed {
            return Ok(());
        }
        record.usage = Some(usage);
        self.snapshots
            .put(&mut txn, &full, &record)
            .map_err(db_error)?;
        txn.commit().map_err(db_error)
    }

    /// Every snapshot of a namespace, by key.
    pub fn list(&self, snapshotter: &str, namespace: &str) -> Result<Vec<(String, Record)>> {
        let txn = self.env.read_txn().map_err(db_error)?;
        let prefix = key_of(snapshotter, namespace, "");
        let mut out = Vec::new();
        for item in self
            .snapshots
            .prefix_iter(&txn, &prefix)
            .map_err(db_error)?
        {
            let (key, value) = item.map_err(db_error)?;
            out.push((key[prefix.len()..].to_string(), value));
        }
        Ok(out)
    }

    /// Every (namespace, key, record) of a snapshotter.
    pub fn all(&self, snapshotter: &str) -> Result<Vec<(String, String, Record)>> {
        let txn = self.env.read_txn().map_err(db_error)?;
        let prefix = format!("{snapshotter}/");
        let mut out = Vec::new();
        for item in self
            .snapshots
            .prefix_iter(&txn, &prefix)
            .map_err(db_error)?
        {
            let (key, value) = item.map_err(db_error)?;
            if let Some((namespace, key)) = key[prefix.len()..].split_once('/') {
                out.push((namespace.to_string(), key.to_string(), value));
            }
        }
        Ok(out)
    }

    /// The ids every record of a snapshotter owns.
    pub fn ids(&self, snapshotter: &str) -> Result<HashSet<u64>> {
        Ok(self
            .all(snapshotter)?
            .into_iter()
            .map(|(_, _, r)| r.id)
            .collect())
    }
}

pub fn check_committed_parent(parent: Option<Record>, name: &str) -> Result<Record> {
    match parent {
        None => Err(Error::not_found(format!(
            "parent snapshot {name} not found"
        ))),
        Some(record) if record.kind != StoredKind::Committed => Err(Error::failed_precondition(
            format!("parent snapshot {name} is not committed"),
        )),
        Some(record) => Ok(record),
    }
}
