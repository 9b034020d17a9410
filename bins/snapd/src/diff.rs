//! Diff: an OCI layer (uncompressed tar, whiteouts for deletions) of the
//! difference between two snapshots, stored in the content store.
//!
//! Both snapshots are mounted read-only in a scratch directory and walked
//! side by side: what is new or changed in `upper` is written, what is
//! gone from it becomes a `.wh.` whiteout (only at the top of a deleted
//! tree).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_content::{CommitOptions, ContentStore, WriterOptions, MAX_READ};
use berth_errdefs::{Error, Result};
use berth_ids::{Digest, Sha256Hasher};
use berth_snapshot::mount::TempMount;
use berth_snapshot::{Descriptor, Labels};

use crate::local::LocalSnapshotter;
use crate::unpack::ContentSource;

/// The media type of the layers Diff writes.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub struct Differ {
    content: ContentSource,
}

impl std::fmt::Debug for Differ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Differ").finish_non_exhaustive()
    }
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, &e)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Entries of a tree by relative path.
fn listing(root: &Path) -> Result<BTreeMap<PathBuf, std::fs::Metadata>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        for entry in std::fs::read_dir(&full).map_err(io(format!("reading {}", full.display())))? {
            let entry = entry.map_err(io("reading a directory"))?;
            let child = rel.join(entry.file_name());
            let meta = std::fs::symlink_metadata(entry.path())
                .map_err(io(format!("stat {}", entry.path().display())))?;
            if meta.is_dir() {
                stack.push(child.clone());
            }
            out.insert(child, meta);
        }
    }
    Ok(out)
}

fn same(a: &std::fs::Metadata, b: &std::fs::Metadata, pa: &Path, pb: &Path) -> bool {
    if a.file_type() != b.file_type()
        || a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
        || a.rdev() != b.rdev()
    {
        return false;
    }
    if a.is_dir() {
        return true;
    }
    if a.file_type().is_symlink() {
        return std::fs::read_link(pa).ok() == std::fs::read_link(pb).ok();
    }
    if a.size() != b.size() || a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec() {
        return false;
    }
    // Same metadata: compare content only if the inodes differ.
    if a.dev() == b.dev() && a.ino() == b.ino() {
        return true;
    }
    files_equal(pa, pb).unwrap_or(false)
}

fn files_equal(a: &Path, b: &Path) -> std::io::Result<bool> {
    let mut fa = std::fs::File::open(a)?;
    let mut fb = std::fs::File::open(b)?;
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb)? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Writes the tar of `upper` against `lower` (None: everything) to `out`.
pub fn write_diff(lower: Option<&Path>, upper: &Path, out: impl Write) -> Result<()> {
    let lower_list = match lower {
        Some(l) => listing(l)?,
        None => BTreeMap::new(),
    };
    let upper_list = listing(upper)?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut deleted: Vec<PathBuf> = Vec::new();
    // Sorted by components, a directory's entries follow it directly: only
    // the top of a deleted tree gets a whiteout.
    for rel in lower_list.keys() {
        if upper_list.contains_key(rel) || deleted.last().is_some_and(|d| rel.starts_with(d)) {
            continue;
        }
        deleted.push(rel.clone());
    }
    let tar_err = |e: std::io::Error| Error::io("writing the diff", &e);
    for rel in &deleted {
        let name = rel
            .file_name()
            .ok_or_else(|| Error::internal("deleted path without a name"))?;
        let mut wh = std::ffi::OsString::from(".wh.");
        wh.push(name);
        let path = rel.parent().unwrap_or(Path::new("")).join(wh);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(0);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, &path, std::io::empty())
            .map_err(tar_err)?;
    }
    for (rel, meta) in &upper_list {
        let full = upper.join(rel);
        if let Some(lmeta) = lower_list.get(rel) {
            if same(
                lmeta,
                meta,
                &lower.unwrap_or(Path::new("/")).join(rel),
                &full,
            ) {
                continue;
            }
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        let ft = meta.file_type();
        if ft.is_file() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                builder
                    .append_link(&mut header, rel, first)
                    .map_err(tar_err)?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), rel.clone());
        }
        if ft.is_file() {
            let file =
                std::fs::File::open(&full).map_err(io(format!("opening {}", full.display())))?;
            builder
                .append_data(&mut header, rel, file)
                .map_err(tar_err)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&full).map_err(io(format!("reading {}", full.display())))?;
            header.set_size(0);
            builder
                .append_link(&mut header, rel, target)
                .map_err(tar_err)?;
        } else if ft.is_char_device() && meta.rdev() == 0 {
            // An overlay whiteout seen through a mount cannot happen; on a
            // raw upper dir it is a deletion.
            continue;
        } else {
            header.set_size(0);
            builder
                .append_data(&mut header, rel, std::io::empty())
                .map_err(tar_err)?;
        }
    }
    builder.finish().map_err(tar_err)?;
    Ok(())
}

impl Differ {
    pub fn new(content: ContentSource) -> Differ {
        Differ { content }
    }

    pub async fn diff(
        &self,
        namespace: &str,
        snapshotter: &LocalSnapshotter,
        lower: Option<&str>,
        upper: &str,
        labels: Labels,
    ) -> Result<Descriptor> {
        berth_ids::validate_labels(&labels)?;
        let lower_mounts = match lower {
            Some(l) => Some(snapshotter.read_only_mounts(namespace, l)?),
            None => None,
        };
        let upper_mounts = snapshotter.read_only_mounts(namespace, upper)?;
        let scratch = snapshotter.scratch_dir();
        let (tmp, digest, size) =
            tokio::task::spawn_blocking(move || -> Result<(std::fs::File, Digest, u64)> {
                std::fs::create_dir_all(&scratch)
                    .map_err(io(format!("creating {}", scratch.display())))?;
                let lower_mount = match &lower_mounts {
                    Some(m) => Some(TempMount::new(m, &scratch)?),
                    None => None,
                };
                let upper_mount = TempMount::new(&upper_mounts, &scratch)?;
                let file = tempfile_in(&scratch)?;
                let mut writer = HashingWriter {
                    inner: std::io::BufWriter::new(file),
                    hasher: Sha256Hasher::new(),
                };
                write_diff(
                    lower_mount.as_ref().map(|m| m.path()),
                    upper_mount.path(),
                    &mut writer,
                )?;
                let size = writer.hasher.len();
                let digest = writer.hasher.finalize();
                let mut file = writer
                    .inner
                    .into_inner()
                    .map_err(|e| Error::io("flushing the diff", e.error()))?;
                file.rewind().map_err(io("rewinding the diff"))?;
                Ok((file, digest, size))
            })
            .await
            .map_err(|e| Error::internal(format!("diff task failed: {e}")))??;
        let store: Arc<dyn ContentStore> = match &self.content {
            ContentSource::Store(s) => s.clone(),
            ContentSource::Socket(p) => {
                Arc::new(berth_client::RemoteContentStore::connect(p).await?)
            }
        };
        upload(store.as_ref(), namespace, tmp, &digest, size, labels).await?;
        Ok(Descriptor {
            media_type: LAYER_TAR.to_string(),
            digest,
            size,
        })
    }
}

fn tempfile_in(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(format!(
        "diff-{}-{}",
        std::process::id(),
        crate::records::now_nanos()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io(format!("creating {}", path.display())))?;
    // Unlinked at once: the open file is all that is needed.
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

async fn upload(
    store: &dyn ContentStore,
    namespace: &str,
    mut file: std::fs::File,
    digest: &Digest,
    size: u64,
    labels: Labels,
) -> Result<()> {
    let options = WriterOptions::new(format!("diff-{digest}"))
        .total(size)
        .expected(digest.clone());
    let mut writer = match store.writer(namespace, options).await {
        Ok(w) => w,
        Err(e) if e.kind() == berth_errdefs::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    if writer.status().await?.offset != 0 {
        writer.restart().await?;
    }
    loop {
        let mut chunk = vec![0u8; MAX_READ];
        let (n, back) = tokio::task::spawn_blocking(move || {
            let n = file.read(&mut chunk);
            (
                n.map(|n| {
                    chunk.truncate(n);
                    chunk
                }),
                file,
            )
        })
        .await
        .map_err(|e| Error::internal(format!("read task failed: {e}")))?;
        file = back;
        let data = n.map_err(io("reading the diff"))?;
        if data.is_empty() {
            break;
        }
        writer.write(data).await?;
    }
    match writer
        .commit(CommitOptions {
            size: Some(size),
            expected: Some(digest.clone()),
            labels,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == berth_errdefs::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, data: &[u8]) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn changes_are_written_and_deletions_become_one_whiteout_per_tree() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        for (rel, data) in [
            ("keep", &b"k"[..]),
            ("changed", b"1"),
            ("gone/a", b"a"),
            ("gone/b/c", b"c"),
        ] {
            put(lower.path(), rel, data);
        }
        for (rel, data) in [("keep", &b"k"[..]), ("changed", b"2"), ("new/file", b"n")] {
            put(upper.path(), rel, data);
        }
        let mut out = Vec::new();
        write_diff(Some(lower.path()), upper.path(), &mut out).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, [".wh.gone", "changed", "new", "new/file"]);
    }
}
