//! The local snapshotters: overlayfs (committed snapshots stack as lower
//! directories) and native (plain directories, the parent copied on
//! prepare, with reflinks where the filesystem has them).
//!
//! Each snapshot owns `<root>/<snapshotter>/snapshots/<id>/` (mode 0700)
//! with `fs/` (its files; for overlayfs its upper directory) and, for
//! overlayfs, `work/`. Ids are numbers, so that 128 stacked lower
//! directories stay short.

use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_daemon::blocking;
use berth_errdefs::{Error, Result};
use berth_filters::Filter;
use berth_snapshot::{
    apply_label_update, validate_key, Info, InfoFields, Labels, Mount, Snapshotter, Usage,
};

use crate::os::io;
use crate::records::{
    check_committed_parent, now_nanos, to_system_time, Record, Records, StoredKind,
};
use crate::write_back::{written_in, Marks, WriteBack, DEFAULT_WRITE_BACK_DELAY};

/// Which on-disk scheme a snapshotter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Overlay,
    Native,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Overlay => "overlayfs",
            Backend::Native => "native",
        }
    }

    pub fn from_name(name: &str) -> Result<Backend> {
        match berth_snapshot::canonical_snapshotter(name) {
            "overlayfs" => Ok(Backend::Overlay),
            "native" => Ok(Backend::Native),
            other => Err(Error::invalid_argument(format!(
                "unknown snapshotter {other:?} (overlayfs, native)"
            ))),
        }
    }
}

/// Where a layer is applied: the snapshot's own files and, for overlayfs,
/// the directories below it (nearest first), where hardlink targets from
/// lower layers are found.
#[derive(Debug, Clone)]
pub struct ApplyTarget {
    pub dir: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub overlay: bool,
}

#[derive(Debug, Clone)]
pub struct LocalSnapshotter {
    backend: Backend,
    records: Arc<Records>,
    dir: PathBuf,
    /// Held shared while a directory exists without its record, exclusively
    /// by cleanup.
    cleanup: Arc<RwLock<()>>,
    /// The last snapshot id handed out. Ids are handed out here, without a
    /// transaction of their own: each is recorded with its snapshot, and
    /// the directory of one handed out but never recorded (a crash in
    /// between) counts at the next start, until cleanup removes it.
    last_id: Arc<AtomicU64>,
    trash: Trash,
    /// Commits not yet known to be on disk (see `write_back.rs`).
    marks: Marks,
    write_back: WriteBack,
}

/// The snapshot directories in `dir` (named by their ids), with their ids.
fn snapshot_dirs(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
        let entry = entry.map_err(io("reading snapshot directories"))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((id, entry.path()));
        }
    }
    Ok(found)
}

/// Removes the directories of removed snapshots on a thread of its own,
/// one at a time, so that Remove (and a collection holding metad's
/// writers) waits for the record only. A directory the process dies
/// before removing has no record, so the next start's cleanup takes it.
#[derive(Debug, Clone)]
struct Trash {
    queue: std::sync::mpsc::Sender<PathBuf>,
}

impl Trash {
    fn start() -> Result<Trash> {
        let (queue, removals) = std::sync::mpsc::channel::<PathBuf>();
        std::thread::Builder::new()
            .name("snapshot-trash".to_string())
            .spawn(move || {
                // Ends when every snapshotter handle is gone.
                for dir in removals {
                    remove_dir_logged(&dir);
                }
            })
            .map_err(io("starting the snapshot removal thread"))?;
        Ok(Trash { queue })
    }

    fn remove(&self, dir: PathBuf) {
        if let Err(std::sync::mpsc::SendError(dir)) = self.queue.send(dir) {
            remove_dir_logged(&dir);
        }
    }
}

/// Removes a directory whose record is gone: a failure leaves work for
/// cleanup only.
fn remove_dir_logged(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing snapshot directory"),
    }
}

fn check_ns(namespace: &str) -> Result<()> {
    berth_ids::validate_namespace(namespace)?;
    Ok(())
}

/// Creates a directory with exactly `mode` (whatever the umask).
fn mkdir(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(io(format!("creating {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

impl LocalSnapshotter {
    /// Opens the snapshotter under `root` (`<root>/<name>/snapshots`), with
    /// the records shared by every snapshotter of the daemon.
    pub fn open(root: &Path, backend: Backend, records: Records) -> Result<LocalSnapshotter> {
        Self::open_writing_back_after(root, backend, records, DEFAULT_WRITE_BACK_DELAY)
    }

    /// [`LocalSnapshotter::open`], with commits written back to disk
    /// `write_back_delay` after them rather than the default half second.
    pub fn open_writing_back_after(
        root: &Path,
        backend: Backend,
        records: Records,
        write_back_delay: Duration,
    ) -> Result<LocalSnapshotter> {
        let base = root.join(backend.name());
        let dir = base.join("snapshots");
        for d in [root, base.as_path(), dir.as_path()] {
            if !d.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
                    .map_err(io(format!("creating {}", d.display())))?;
            }
        }
        if backend == Backend::Overlay {
            // Checked up front so that an unusable overlayfs fails at start.
            let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if !filesystems
                .lines()
                .any(|l| l.trim_end().ends_with("overlay"))
            {
                tracing::warn!("overlay is not in /proc/filesystems; mounts may fail");
            }
        }
        let highest_dir = snapshot_dirs(&dir)?.into_iter().map(|(id, _)| id).max();
        let last_id = records
            .last_id(backend.name())?
            .max(highest_dir.unwrap_or(0));
        // The write-back thread holds the records weakly: the store closes
        // when the last handle goes, as before.
        let records = Arc::new(records);
        let marks = Marks {
            records: Arc::downgrade(&records),
            snapshotter: backend.name(),
            dir: dir.clone(),
            written_in: written_in(&dir)?,
        };
        Ok(LocalSnapshotter {
            backend,
            records,
            write_back: WriteBack::start(marks.clone(), write_back_delay)?,
            marks,
            dir,
            cleanup: Arc::new(RwLock::new(())),
            last_id: Arc::new(AtomicU64::new(last_id)),
            trash: Trash::start()?,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn info(key: &str, record: Record) -> Info {
        Info {
            kind: record.kind.into(),
            name: key.to_string(),
            parent: record.parent,
            labels: record.labels,
            created_at: to_system_time(record.created_at),
            updated_at: to_system_time(record.updated_at),
        }
    }

    fn get(&self, namespace: &str, key: &str) -> Result<Record> {
        check_ns(namespace)?;
        validate_key("snapshot key", key)?;
        self.records
            .get(self.name(), namespace, key)?
            .ok_or_else(|| Error::not_found(format!("snapshot {key} not found")))
    }

    fn mounts_of(&self, namespace: &str, key: &str) -> Result<Vec<Mount>> {
        let chain = self.records.chain(self.name(), namespace, key)?;
        let Some(own) = chain.first() else {
            return Err(Error::not_found(format!("snapshot {key} not found")));
        };
        let path = |id: u64| self.fs_dir(id).to_string_lossy().into_owned();
        let bind = |id: u64, ro: bool| Mount {
            kind: "bind".to_string(),
            source: path(id),
            options: vec![
                if ro { "ro" } else { "rw" }.to_string(),
                "rbind".to_string(),
            ],
        };
        let ro = own.kind != StoredKind::Active;
        if self.backend == Backend::Native {
            return Ok(vec![bind(own.id, ro)]);
        }
        let parents = &chain[1..];
        if own.kind == StoredKind::Active {
            if parents.is_empty() {
                return Ok(vec![bind(own.id, false)]);
            }
            let lowers: Vec<String> = parents.iter().map(|r| path(r.id)).collect();
            let mut options = vec![
                format!(
                    "workdir={}",
                    self.snapshot_dir(own.id).join("work").display()
                ),
                format!("upperdir={}", path(own.id)),
                format!("lowerdir={}", lowers.join(":")),
            ];
            // A container in a user namespace sees the parents through
            // its mapping (its own layer was given to its root when made).
            if let Some(mapping) = id_mapping_labels(&own.labels)? {
                options.push(format!("uidmap={}", mapping.uids));
                options.push(format!("gidmap={}", mapping.gids));
            }
            return Ok(vec![Mount {
                kind: "overlay".to_string(),
                source: "overlay".to_string(),
                options,
            }]);
        }
        // Read-only: a view sees its parents; a committed snapshot itself
        // and its parents.
        let layers: Vec<&Record> = if own.kind == StoredKind::View {
            parents.iter().collect()
        } else {
            chain.iter().collect()
        };
        match layers.as_slice() {
            [] => Ok(vec![bind(own.id, true)]),
            [one] => Ok(vec![bind(one.id, true)]),
            many => Ok(vec![Mount {
                kind: "overlay".to_string(),
                source: "overlay".to_string(),
                options: vec![
                    "ro".to_string(),
                    format!(
                        "lowerdir={}",
                        many.iter()
                            .map(|r| path(r.id))
                            .collect::<Vec<_>>()
                            .join(":")
                    ),
                ],
            }]),
        }
    }

    fn create(
        &self,
        kind: StoredKind,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        check_ns(namespace)?;
        validate_key("snapshot key", key)?;
        if let Some(parent) = parent {
            validate_key("parent", parent)?;
        }
        berth_ids::validate_labels(&labels)?;
        if self.records.get(self.name(), namespace, key)?.is_some() {
            return Err(Error::already_exists(format!(
                "snapshot {key} already exists"
            )));
        }
        let mapped_root = match id_mapping_labels(&labels)? {
            None => None,
            Some(_) if kind != StoredKind::Active || self.backend != Backend::Overlay => {
                return Err(Error::invalid_argument(format!(
                    "snapshot {key}: id-mapped snapshots are active snapshots of the overlay backend"
                )))
            }
            Some(mapping) => Some(mapping.root),
        };
        let parent_record = match parent {
            Some(p) => Some(check_committed_parent(
                self.records.get(self.name(), namespace, p)?,
                p,
            )?),
            None => None,
        };
        let id = self.last_id.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = self
            .cleanup
            .read()
            .map_err(|_| Error::internal("cleanup lock poisoned"))?;
        let dir = self.snapshot_dir(id);
        let made = self.make_dirs(&dir, parent_record.as_ref()).and_then(|()| {
            let Some((uid, gid)) = mapped_root else {
                return Ok(());
            };
            let fs = dir.join("fs");
            std::os::unix::fs::lchown(&fs, Some(uid), Some(gid))
                .map_err(|e| Error::io(format!("giving {} to {uid}:{gid}", fs.display()), &e))
        });
        let now = now_nanos();
        let result = made.and_then(|()| {
            self.records.insert(
                self.name(),
                namespace,
                key,
                &Record {
                    id,
                    kind,
                    parent: parent.map(str::to_string),
                    created_at: now,
                    updated_at: now,
                    labels,
                    usage: None,
                },
            )
        });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        drop(_guard);
        self.mounts_of(namespace, key)
    }

    fn make_dirs(&self, dir: &Path, parent: Option<&Record>) -> Result<()> {
        mkdir(dir, 0o700)?;
        let fs = dir.join("fs");
        mkdir(&fs, 0o755)?;
        match self.backend {
            Backend::Overlay => mkdir(&dir.join("work"), 0o700),
            Backend::Native => match parent {
                Some(parent) => crate::copy::copy_tree(&self.fs_dir(parent.id), &fs).map(|_| ()),
                None => Ok(()),
            },
        }
    }

    /// Where to apply a layer into the active snapshot `key`.
    pub fn apply_target(&self, namespace: &str, key: &str) -> Result<ApplyTarget> {
        let record = self.get(namespace, key)?;
        if record.kind != StoredKind::Active {
            return Err(Error::failed_precondition(format!(
                "snapshot {key} is not active"
            )));
        }
        let chain = self.records.chain(self.name(), namespace, key)?;
        let overlay = self.backend == Backend::Overlay;
        Ok(ApplyTarget {
            dir: self.fs_dir(record.id),
            lowers: if overlay {
                chain[1..].iter().map(|r| self.fs_dir(r.id)).collect()
            } else {
                Vec::new()
            },
            overlay,
        })
    }

    /// Whether a snapshot can be prepared without its parent and given it
    /// at commit ([`LocalSnapshotter::commit_rebased`]): on overlayfs a
    /// snapshot's directory holds its own layer only, so the lower layers
    /// need not be there while it is written.
    pub fn can_rebase(&self) -> bool {
        self.backend == Backend::Overlay
    }

    /// Commits active `key` as `name`; with `rebase`, onto that committed
    /// parent (`key` was prepared without one; overlayfs only).
    pub async fn commit_rebased(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        rebase: Option<&str>,
        labels: Labels,
    ) -> Result<()> {
        if rebase.is_some() && !self.can_rebase() {
            return Err(Error::failed_precondition(format!(
                "the {} snapshotter cannot commit a snapshot onto another parent",
                self.name()
            )));
        }
        let (this, namespace, name, key) = (
            self.clone(),
            namespace.to_string(),
            name.to_string(),
            key.to_string(),
        );
        let rebase = rebase.map(str::to_string);
        blocking(move || {
            check_ns(&namespace)?;
            validate_key("snapshot name", &name)?;
            validate_key("snapshot key", &key)?;
            if let Some(parent) = &rebase {
                validate_key("parent", parent)?;
            }
            berth_ids::validate_labels(&labels)?;
            let record = this.get(&namespace, &key)?;
            if this.backend == Backend::Overlay {
                // The work directory is overlayfs scratch, not part of the
                // layer.
                let work = this.snapshot_dir(record.id).join("work");
                let _ = std::fs::remove_dir_all(&work);
                mkdir(&work, 0o700)?;
            }
            this.records.commit(
                this.name(),
                &namespace,
                &name,
                &key,
                labels,
                &this.marks.written_in,
                rebase.as_deref(),
            )?;
            this.write_back.ask();
            Ok(())
        })
        .await
    }

    /// Read-only mounts of what `key` looks like (an active snapshot
    /// included), for snapd's own reading (diff).
    pub fn read_only_mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>> {
        self.get(namespace, key)?;
        let chain = self.records.chain(self.name(), namespace, key)?;
        let path = |id: u64| self.fs_dir(id).to_string_lossy().into_owned();
        if self.backend == Backend::Native || chain.len() == 1 {
            return Ok(vec![Mount {
                kind: "bind".to_string(),
                source: path(chain[0].id),
                options: vec!["ro".to_string(), "rbind".to_string()],
            }]);
        }
        Ok(vec![Mount {
            kind: "overlay".to_string(),
            source: "overlay".to_string(),
            options: vec![
                "ro".to_string(),
                format!(
                    "lowerdir={}",
                    chain
                        .iter()
                        .map(|r| path(r.id))
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            ],
        }])
    }

    /// The directory with a snapshot's own files (its upper directory on
    /// overlayfs).
    pub fn own_dir(&self, namespace: &str, key: &str) -> Result<PathBuf> {
        Ok(self.fs_dir(self.get(namespace, key)?.id))
    }

    /// A scratch directory on the snapshotter's filesystem, for mount points.
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.parent().unwrap_or(&self.dir).join("mnt")
    }

    /// Removes a snapshot (only if its `updated_at` is still `seen`, when
    /// given), then its directory.
    fn remove_blocking(&self, namespace: &str, key: &str, seen: Option<SystemTime>) -> Result<()> {
        check_ns(namespace)?;
        validate_key("snapshot key", key)?;
        let seen = seen.map(crate::records::nanos_of);
        let record = self.records.remove(self.name(), namespace, key, seen)?;
        self.trash.remove(self.snapshot_dir(record.id));
        Ok(())
    }

    /// Removes snapshot directories no record owns; returns how many.
    pub fn cleanup_blocking(&self) -> Result<usize> {
        let _guard = self
            .cleanup
            .write()
            .map_err(|_| Error::internal("cleanup lock poisoned"))?;
        let owned = self.records.ids(self.name())?;
        let mut removed = 0;
        for (id, path) in snapshot_dirs(&self.dir)? {
            if !owned.contains(&id) {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => removed += 1,
                    // The removal thread was there first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(format!("removing {}", path.display()), &e)),
                }
            }
        }
        Ok(removed)
    }

    /// At start: discards the committed snapshots whose files a power cut
    /// may have taken (marked from another boot or mount), with everything
    /// built on them, and writes back those marked in this mount. Returns
    /// (discarded, written back).
    pub fn recover_write_back(&self) -> Result<(usize, usize)> {
        let lost = self.marks.lost()?;
        for (namespace, key) in &lost {
            tracing::warn!(
                snapshotter = self.name(),
                %namespace,
                %key,
                "discarding a snapshot committed before a power cut or remount and not known to be on disk"
            );
            self.remove_blocking(namespace, key, None)?;
        }
        Ok((lost.len(), self.marks.write_back()?))
    }

    /// Writes back every commit not known to be on disk (at a clean stop).
    pub fn write_back_now(&self) -> Result<usize> {
        self.marks.write_back()
    }

    /// Drops the mark of a commit whose files were written back before it.
    pub async fn written_back_before_commit(&self, namespace: &str, name: &str) -> Result<()> {
        let (marks, namespace, name) =
            (self.marks.clone(), namespace.to_string(), name.to_string());
        blocking(move || marks.written_back_before_commit(&namespace, &name)).await
    }

    /// Removes active snapshots whose key starts with `prefix` in every
    /// namespace (unpack's scratch snapshots left by a crash).
    pub fn remove_prefixed_actives(&self, prefix: &str) -> Result<usize> {
        let mut removed = 0;
        for (namespace, key, record) in self.records.all(self.name())? {
            if record.kind == StoredKind::Active && key.starts_with(prefix) {
                self.remove_blocking(&namespace, &key, None)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Active snapshots are measured on every call; committed ones once.
    fn usage_blocking(&self, namespace: &str, key: &str) -> Result<Usage> {
        let record = self.get(namespace, key)?;
        if let Some(usage) = record.usage {
            return Ok(usage.into());
        }
        let usage = disk_usage(&self.fs_dir(record.id))?;
        if record.kind == StoredKind::Committed {
            self.records
                .cache_usage(self.name(), namespace, key, record.id, usage)?;
        }
        Ok(usage)
    }
}

/// Bytes allocated and inodes used under `dir` (hardlinks counted once),
/// walked by fds like a diff, never following a symlink.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
    let tree = crate::tree::Tree::open(dir)?;
    let root = tree.root_stat()?;
    let mut usage = Usage {
        size: root.st_blocks as u64 * 512,
        inodes: 1,
    };
    let mut seen = HashSet::new();
    for stat in tree.listing()?.values() {
        let is_dir = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if stat.st_nlink > 1 && !is_dir && !seen.insert((stat.st_dev, stat.st_ino)) {
            continue;
        }
        usage.inodes += 1;
        usage.size += stat.st_blocks as u64 * 512;
    }
    Ok(usage)
}

#[async_trait]
impl Snapshotter for LocalSnapshotter {
    async fn stat(&self, namespace: &str, key: &str) -> Result<Info> {
        let (this, namespace, key) = (self.clone(), namespace.to_string(), key.to_string());
        blocking(move || {
            let record = this.get(&namespace, &key)?;
            Ok(LocalSnapshotter::info(&key, record))
        })
        .await
    }

    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info> {
        let (this, namespace, paths) = (self.clone(), namespace.to_string(), paths.to_vec());
        blocking(move || {
            this.get(&namespace, &info.name)?;
            let record =
                this.records
                    .update_labels(this.name(), &namespace, &info.name, |labels| {
                        apply_label_update(labels, &info.labels, &paths)
                    })?;
            Ok(LocalSnapshotter::info(&info.name, record))
        })
        .await
    }

    async fn usage(&self, namespace: &str, key: &str) -> Result<Usage> {
        let (this, namespace, key) = (self.clone(), namespace.to_string(), key.to_string());
        blocking(move || this.usage_blocking(&namespace, &key)).await
    }

    async fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>> {
        let (this, namespace, key) = (self.clone(), namespace.to_string(), key.to_string());
        blocking(move || {
            this.get(&namespace, &key)?;
            this.mounts_of(&namespace, &key)
        })
        .await
    }

    async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let (this, namespace, key) = (self.clone(), namespace.to_string(), key.to_string());
        let parent = parent.map(str::to_string);
        blocking(move || {
            this.create(
                StoredKind::Active,
                &namespace,
                &key,
                parent.as_deref(),
                labels,
            )
        })
        .await
    }

    async fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let (this, namespace, key) = (self.clone(), namespace.to_string(), key.to_string());
        let parent = parent.map(str::to_string);
        blocking(move || {
            this.create(
                StoredKind::View,
                &namespace,
                &key,
                parent.as_deref(),
                labels,
            )
        })
        .await
    }

    async fn commit(&self, namespace: &str, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.commit_rebased(namespace, name, key, None, labels)
            .await
    }

    async fn remove(&self, namespace: &str, key: &str) -> Result<()> {
        let (this, namespace, key) = (self.clone(), namespace.to_string(), key.to_string());
        blocking(move || this.remove_blocking(&namespace, &key, None)).await
    }

    async fn remove_if_unchanged(
        &self,
        namespace: &str,
        key: &str,
        seen: SystemTime,
    ) -> Result<()> {
        let (this, namespace, key) = (self.clone(), namespace.to_string(), key.to_string());
        blocking(move || this.remove_blocking(&namespace, &key, Some(seen))).await
    }

    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>> {
        let (this, namespace) = (self.clone(), namespace.to_string());
        let filter = Filter::parse_any(filters)?;
        blocking(move || {
            check_ns(&namespace)?;
            Ok(this
                .records
                .list(this.name(), &namespace)?
                .into_iter()
                .map(|(key, record)| LocalSnapshotter::info(&key, record))
                .filter(|info| filter.matches(&InfoFields(info)))
                .collect())
        })
        .await
    }

    async fn cleanup(&self) -> Result<()> {
        let this = self.clone();
        blocking(move || this.cleanup_blocking().map(|_| ())).await
    }
}

/// A snapshot's uid and gid mapping labels, and the host ids of the
/// namespace's root they give.
struct IdMappingLabels<'a> {
    uids: &'a str,
    gids: &'a str,
    root: (u32, u32),
}

/// The uid and gid mapping labels of a snapshot, checked: both or neither,
/// each a mapping list that maps 0.
fn id_mapping_labels(labels: &Labels) -> Result<Option<IdMappingLabels<'_>>> {
    use berth_api::labels::{SNAPSHOT_GID_MAPPING, SNAPSHOT_UID_MAPPING};
    match (
        labels.get(SNAPSHOT_UID_MAPPING),
        labels.get(SNAPSHOT_GID_MAPPING),
    ) {
        (None, None) => Ok(None),
        (Some(uids), Some(gids)) => Ok(Some(IdMappingLabels {
            uids,
            gids,
            root: berth_mount::root_pair(
                &berth_mount::parse_id_mappings(uids)?,
                &berth_mount::parse_id_mappings(gids)?,
            )?,
        })),
        _ => Err(Error::invalid_argument(format!(
            "{SNAPSHOT_UID_MAPPING} and {SNAPSHOT_GID_MAPPING} go together"
        ))),
    }
}
