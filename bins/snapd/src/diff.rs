//! Diff: an OCI layer (uncompressed tar, whiteouts for deletions) of the
//! difference between two snapshots, stored in the content store.
//!
//! Both snapshots are mounted read-only in a scratch directory and walked
//! side by side: what is new or changed in `upper` is written, what is
//! gone from it becomes a `.wh.` whiteout (only at the top of a deleted
//! tree).
//!
//! The trees are read through fds on their roots, never by joined paths:
//! each directory and file is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` and `O_NOFOLLOW`, and symlinks
//! are read with `readlinkat` in their directory's fd. An active upper
//! snapshot can change while it is read (its container still runs): a
//! symlink swapped in then fails the walk instead of redirecting it out of
//! the snapshot, and a file that is not the one listed (another inode, or
//! shorter than listed) fails the diff rather than corrupt the tar.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_content::{CommitOptions, ContentStore, WriterOptions, MAX_READ};
use berth_errdefs::{Error, Result};
use berth_ids::{Digest, Sha256Hasher};
use berth_mount::TempMount;
use berth_snapshot::{Descriptor, DiffLayer, Labels};
use nix::sys::stat::{FileStat, SFlag};

use crate::local::LocalSnapshotter;
use crate::os::{file_type, io};
use crate::tree::Tree;
use crate::unpack::{Compression, ContentSource};

/// The media types of the layers Diff writes.
pub use berth_image::media::{
    OCI_LAYER as LAYER_TAR, OCI_LAYER_GZIP as LAYER_TAR_GZIP, OCI_LAYER_ZSTD as LAYER_TAR_ZSTD,
};

/// The label containerd puts on a compressed layer: its diff ID.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// How a requested media type is compressed; empty means gzip, as in
/// containerd.
pub fn layer_compression(media_type: &str) -> Result<(String, Compression)> {
    let compression = match media_type {
        "" => return Ok((LAYER_TAR_GZIP.to_string(), Compression::Gzip)),
        LAYER_TAR | berth_image::media::DOCKER_LAYER => Compression::None,
        LAYER_TAR_GZIP | berth_image::media::DOCKER_LAYER_GZIP => Compression::Gzip,
        LAYER_TAR_ZSTD => Compression::Zstd,
        other => {
            return Err(Error::invalid_argument(format!(
                "diff media type {other:?}: not a layer type berth writes (tar, tar+gzip, tar+zstd)"
            )))
        }
    };
    Ok((media_type.to_string(), compression))
}

/// Writes the tar of `upper` against `lower` through `encoder`; returns
/// the encoder and the tar's digest.
fn write_layer<E: Write>(encoder: E, lower: Option<&Path>, upper: &Path) -> Result<(E, Digest)> {
    let mut tar = HashingWriter {
        inner: encoder,
        hasher: Sha256Hasher::new(),
    };
    write_diff(lower, upper, &mut tar)?;
    Ok((tar.inner, tar.hasher.finalize()))
}

pub struct Differ {
    content: ContentSource,
}

impl std::fmt::Debug for Differ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Differ").finish_non_exhaustive()
    }
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

/// Whether `rel` is the same in both trees (content compared only when
/// the metadata cannot tell).
fn same(lower: &Tree, upper: &Tree, rel: &Path, a: &FileStat, b: &FileStat) -> Result<bool> {
    if a.st_mode != b.st_mode || a.st_uid != b.st_uid || a.st_gid != b.st_gid {
        return Ok(false);
    }
    if !same_inode_kind(lower, upper, rel, a, b)? {
        return Ok(false);
    }
    Ok(lower.xattrs(rel)? == upper.xattrs(rel)?)
}

fn same_inode_kind(
    lower: &Tree,
    upper: &Tree,
    rel: &Path,
    a: &FileStat,
    b: &FileStat,
) -> Result<bool> {
    match file_type(a) {
        SFlag::S_IFDIR => Ok(true),
        SFlag::S_IFLNK => Ok(lower.read_link(rel)? == upper.read_link(rel)?),
        SFlag::S_IFREG => {
            if a.st_size != b.st_size
                || (a.st_mtime, a.st_mtime_nsec) != (b.st_mtime, b.st_mtime_nsec)
            {
                return Ok(false);
            }
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) {
                return Ok(true);
            }
            files_equal(lower.open_file(rel, a)?, upper.open_file(rel, b)?)
                .map_err(io(format!("comparing {}", rel.display())))
        }
        _ => Ok(a.st_rdev == b.st_rdev),
    }
}

fn files_equal(mut fa: std::fs::File, mut fb: std::fs::File) -> std::io::Result<bool> {
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb)? == 0);
        }
        if let Err(e) = fb.read_exact(&mut bb[..n]) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Ok(false);
            }
            return Err(e);
        }
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Exactly `remaining` bytes of a file, or an error if it ends sooner
/// (it shrank after it was listed: its header already has the size).
struct Exactly<R> {
    inner: std::io::Take<R>,
    remaining: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a file shrank while the diff read it",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A tar header for `stat` (permission bits, owner, mtime, type, device).
fn header_for(stat: &FileStat, kind: tar::EntryType) -> std::io::Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(u64::from(stat.st_uid));
    header.set_gid(u64::from(stat.st_gid));
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_size(0);
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        header.set_device_major(nix::sys::stat::major(stat.st_rdev) as u32)?;
        header.set_device_minor(nix::sys::stat::minor(stat.st_rdev) as u32)?;
    }
    Ok(header)
}

/// Writes the tar of `upper` against `lower` (None: everything) to `out`.
pub fn write_diff(lower: Option<&Path>, upper: &Path, out: impl Write) -> Result<()> {
    let lower_tree = lower.map(Tree::open).transpose()?;
    let upper_tree = Tree::open(upper)?;
    let lower_list = match &lower_tree {
        Some(tree) => tree.listing()?,
        None => BTreeMap::new(),
    };
    let upper_list = upper_tree.listing()?;
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
    for (rel, stat) in &upper_list {
        if let (Some(lower_tree), Some(lower_stat)) = (&lower_tree, lower_list.get(rel)) {
            if same(lower_tree, &upper_tree, rel, lower_stat, stat)? {
                continue;
            }
        }
        let kind = match file_type(stat) {
            SFlag::S_IFREG => tar::EntryType::Regular,
            SFlag::S_IFDIR => tar::EntryType::Directory,
            SFlag::S_IFLNK => tar::EntryType::Symlink,
            SFlag::S_IFCHR if stat.st_rdev == 0 => {
                // An overlay whiteout seen through a mount cannot happen;
                // on a raw upper dir it is a deletion.
                continue;
            }
            SFlag::S_IFCHR => tar::EntryType::Char,
            SFlag::S_IFBLK => tar::EntryType::Block,
            SFlag::S_IFIFO => tar::EntryType::Fifo,
            // Sockets have no tar form (containerd skips them too).
            _ => continue,
        };
        let mut header = header_for(stat, kind).map_err(tar_err)?;
        if kind == tar::EntryType::Regular && stat.st_nlink > 1 {
            if let Some(first) = links.get(&(stat.st_dev, stat.st_ino)) {
                header.set_entry_type(tar::EntryType::Link);
                builder
                    .append_link(&mut header, rel, first)
                    .map_err(tar_err)?;
                continue;
            }
            links.insert((stat.st_dev, stat.st_ino), rel.clone());
        }
        let xattrs = upper_tree.xattrs(rel)?;
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .filter_map(|(key, value)| {
                let key = key.to_str().ok()?;
                Some((format!("SCHILY.xattr.{key}"), value.as_slice()))
            })
            .collect();
        builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(tar_err)?;
        match kind {
            tar::EntryType::Regular => {
                let file = upper_tree.open_file(rel, stat)?;
                let size = u64::try_from(stat.st_size).unwrap_or(0);
                header.set_size(size);
                let data = Exactly {
                    inner: file.take(size),
                    remaining: size,
                };
                builder
                    .append_data(&mut header, rel, data)
                    .map_err(tar_err)?;
            }
            tar::EntryType::Symlink => {
                let target = upper_tree.read_link(rel)?;
                builder
                    .append_link(&mut header, rel, target)
                    .map_err(tar_err)?;
            }
            _ => builder
                .append_data(&mut header, rel, std::io::empty())
                .map_err(tar_err)?,
        }
    }
    builder.finish().map_err(tar_err)?;
    Ok(())
}

/// What a diff is stored as.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// The layer's media type (empty: tar+gzip, as containerd).
    pub media_type: String,
    /// Labels for the stored blob.
    pub labels: Labels,
    /// The lease the stored blob joins (a blob already stored joins it too).
    pub lease: Option<String>,
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
        options: DiffOptions,
    ) -> Result<DiffLayer> {
        let DiffOptions {
            media_type,
            mut labels,
            lease,
        } = options;
        berth_ids::validate_labels(&labels)?;
        let (media_type, compression) = layer_compression(&media_type)?;
        let lower_mounts = match lower {
            Some(l) => Some(snapshotter.read_only_mounts(namespace, l)?),
            None => None,
        };
        let upper_mounts = snapshotter.read_only_mounts(namespace, upper)?;
        let scratch = snapshotter.scratch_dir();
        let (tmp, digest, size, diff_id) =
            tokio::task::spawn_blocking(move || -> Result<(std::fs::File, Digest, u64, Digest)> {
                std::fs::create_dir_all(&scratch)
                    .map_err(io(format!("creating {}", scratch.display())))?;
                let lower_mount = match &lower_mounts {
                    Some(m) => Some(TempMount::new(m, &scratch)?),
                    None => None,
                };
                let upper_mount = TempMount::new(&upper_mounts, &scratch)?;
                let lower = lower_mount.as_ref().map(|m| m.path());
                let upper = upper_mount.path();
                let stored = HashingWriter {
                    inner: std::io::BufWriter::new(tempfile_in(&scratch)?),
                    hasher: Sha256Hasher::new(),
                };
                let compressing = io("compressing the diff");
                let (stored, diff_id) = match compression {
                    Compression::None => write_layer(stored, lower, upper)?,
                    Compression::Gzip => {
                        let gzip =
                            flate2::write::GzEncoder::new(stored, flate2::Compression::default());
                        let (gzip, diff_id) = write_layer(gzip, lower, upper)?;
                        (gzip.finish().map_err(compressing)?, diff_id)
                    }
                    Compression::Zstd => {
                        let zstd = zstd::stream::write::Encoder::new(stored, 3)
                            .map_err(io("starting zstd"))?;
                        let (zstd, diff_id) = write_layer(zstd, lower, upper)?;
                        (zstd.finish().map_err(compressing)?, diff_id)
                    }
                };
                let size = stored.hasher.len();
                let digest = stored.hasher.finalize();
                let mut file = stored
                    .inner
                    .into_inner()
                    .map_err(|e| Error::io("flushing the diff", e.error()))?;
                file.rewind().map_err(io("rewinding the diff"))?;
                Ok((file, digest, size, diff_id))
            })
            .await
            .map_err(|e| Error::internal(format!("diff task failed: {e}")))??;
        if compression != Compression::None {
            labels.insert(UNCOMPRESSED_LABEL.to_string(), diff_id.to_string());
        }
        let store: Arc<dyn ContentStore> = match &self.content {
            ContentSource::Store(s) => s.clone(),
            ContentSource::Socket(p) => {
                Arc::new(berth_client::RemoteContentStore::connect(p).await?)
            }
        };
        // Under a lease the layer joins it, stored now or found stored.
        let store = berth_content::Leased::new(store, lease);
        upload(&store, namespace, tmp, &digest, size, labels).await?;
        Ok(DiffLayer {
            descriptor: Descriptor {
                urls: Vec::new(),
                platform: None,
                annotations: Default::default(),
                media_type,
                digest,
                size,
            },
            diff_id,
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
        // Already stored (and, under a lease, now held by it).
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
    use std::ffi::CString;
    use std::os::fd::AsFd;

    use nix::sys::stat::Mode;

    use super::*;
    use crate::xattr::Node;

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

    #[test]
    fn layer_media_types_choose_the_compression() {
        let gzip = (LAYER_TAR_GZIP.to_string(), Compression::Gzip);
        assert_eq!(layer_compression("").unwrap(), gzip);
        assert_eq!(layer_compression(LAYER_TAR_GZIP).unwrap(), gzip);
        assert_eq!(
            layer_compression(LAYER_TAR).unwrap(),
            (LAYER_TAR.to_string(), Compression::None)
        );
        assert_eq!(
            layer_compression(LAYER_TAR_ZSTD).unwrap().1,
            Compression::Zstd
        );
        let docker = "application/vnd.docker.image.rootfs.diff.tar.gzip";
        assert_eq!(
            layer_compression(docker).unwrap(),
            (docker.to_string(), Compression::Gzip)
        );
        for bad in ["text/plain", "application/vnd.oci.image.layer.v1.tar+bzip2"] {
            let err = layer_compression(bad).unwrap_err();
            assert_eq!(err.kind(), berth_errdefs::ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn xattrs_are_written_and_an_xattr_change_is_a_change() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        for root in [lower.path(), upper.path()] {
            put(root, "plain", b"p");
            put(root, "tagged", b"t");
        }
        let set = |rel: &str, key: &str, value: &[u8]| {
            let file = std::fs::File::open(upper.path().join(rel)).unwrap();
            Node::Open(file.as_fd())
                .set_xattr(&CString::new(key).unwrap(), value)
                .unwrap();
        };
        set("tagged", "user.k", b"v\0binary");
        put(upper.path(), "new", b"n");
        set("new", "user.n", b"1");
        let mut out = Vec::new();
        write_diff(Some(lower.path()), upper.path(), &mut out).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut xattrs = Vec::new();
            if let Some(pax) = entry.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    xattrs.push((ext.key().unwrap().to_string(), ext.value_bytes().to_vec()));
                }
            }
            found.push((path, xattrs));
        }
        found.sort();
        assert_eq!(
            found,
            [
                (
                    "new".to_string(),
                    vec![("SCHILY.xattr.user.n".to_string(), b"1".to_vec())]
                ),
                (
                    "tagged".to_string(),
                    vec![("SCHILY.xattr.user.k".to_string(), b"v\0binary".to_vec())]
                ),
            ]
        );
        // And they apply back.
        let applied = tempfile::tempdir().unwrap();
        crate::apply::apply(
            &out[..],
            applied.path(),
            &crate::apply::ApplyOptions::default(),
            &crate::apply::Host,
        )
        .unwrap();
        let file = std::fs::File::open(applied.path().join("tagged")).unwrap();
        let got = Node::Open(file.as_fd()).xattrs().unwrap();
        assert_eq!(
            got,
            [(CString::new("user.k").unwrap(), b"v\0binary".to_vec())]
        );
    }

    fn entries(tar: &[u8]) -> Vec<(String, tar::EntryType, u32, String)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    e.header().mode().unwrap(),
                    link,
                )
            })
            .collect()
    }

    #[test]
    fn symlinks_hardlinks_fifos_and_modes_are_written_as_they_are() {
        use std::os::unix::fs::PermissionsExt;
        let upper = tempfile::tempdir().unwrap();
        put(upper.path(), "file", b"data");
        std::fs::set_permissions(upper.path().join("file"), PermissionsExt::from_mode(0o4750))
            .unwrap();
        std::fs::hard_link(upper.path().join("file"), upper.path().join("hard")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", upper.path().join("link")).unwrap();
        nix::unistd::mkfifo(&upper.path().join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        let mut out = Vec::new();
        write_diff(None, upper.path(), &mut out).unwrap();
        let mut got = entries(&out);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                (
                    "fifo".to_string(),
                    tar::EntryType::Fifo,
                    0o640,
                    String::new()
                ),
                (
                    "file".to_string(),
                    tar::EntryType::Regular,
                    0o4750,
                    String::new()
                ),
                (
                    "hard".to_string(),
                    tar::EntryType::Link,
                    0o4750,
                    "file".to_string()
                ),
                (
                    "link".to_string(),
                    tar::EntryType::Symlink,
                    0o777,
                    "/etc/shadow".to_string()
                ),
            ]
        );
    }

    /// Every kind of change `same` must see, each alone: mode, owner,
    /// group, modification time, content behind an equal size and time,
    /// a symlink's target; device nodes are written with their numbers,
    /// and a 0/0 char device (a raw upper dir's whiteout) never as a node.
    #[test]
    fn each_metadata_change_alone_is_a_change_and_devices_are_written() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::Uid::effective().is_root() {
            assert!(std::env::var_os("CI").is_none(), "needs root under CI");
            return;
        }
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        for root in [lower.path(), upper.path()] {
            for rel in ["mode", "owner", "group", "touched", "unchanged"] {
                put(root, rel, b"same");
            }
            std::fs::create_dir(root.join("dir")).unwrap();
        }
        put(lower.path(), "content", b"aaaa");
        put(upper.path(), "content", b"bbbb");
        std::os::unix::fs::symlink("a", lower.path().join("link")).unwrap();
        std::os::unix::fs::symlink("b", upper.path().join("link")).unwrap();
        let up = |rel: &str| upper.path().join(rel);
        std::fs::set_permissions(up("mode"), PermissionsExt::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(up("owner"), Some(1234), None).unwrap();
        std::os::unix::fs::chown(up("group"), None, Some(1234)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(up("touched"))
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000))
            .unwrap();
        let node = |rel: &str, kind: SFlag, major: u64, minor: u64| {
            nix::sys::stat::mknod(
                &up(rel),
                kind,
                Mode::from_bits_truncate(0o660),
                nix::sys::stat::makedev(major, minor),
            )
            .unwrap();
        };
        node("chr", SFlag::S_IFCHR, 1, 3);
        node("blk", SFlag::S_IFBLK, 7, 200);
        node("whiteout", SFlag::S_IFCHR, 0, 0);
        // A device in both trees: unchanged with the same numbers, changed
        // with others.
        for (name, lower_minor, upper_minor) in [("samedev", 3, 3), ("newnum", 3, 5)] {
            for (root, minor) in [(lower.path(), lower_minor), (upper.path(), upper_minor)] {
                nix::sys::stat::mknod(
                    &root.join(name),
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o660),
                    nix::sys::stat::makedev(1, minor),
                )
                .unwrap();
            }
        }
        let mut out = Vec::new();
        write_diff(Some(lower.path()), upper.path(), &mut out).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        let mut got: Vec<(String, tar::EntryType, Option<u32>, Option<u32>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let header = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    header.entry_type(),
                    header.device_major().ok().flatten(),
                    header.device_minor().ok().flatten(),
                )
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            names,
            ["blk", "chr", "content", "group", "link", "mode", "newnum", "owner", "touched"],
            "{got:?}"
        );
        assert_eq!(
            (got[0].1, got[0].2, got[0].3),
            (tar::EntryType::Block, Some(7), Some(200))
        );
        assert_eq!(
            (got[1].1, got[1].2, got[1].3),
            (tar::EntryType::Char, Some(1), Some(3))
        );
    }

    /// What a container could do to an active snapshot between the listing
    /// and the reading: the walk fails, it never reads through the swap
    /// (CVE-2018-15664, docker cp's symlink race).
    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_followed() {
        let top = tempfile::tempdir().unwrap();
        let (upper, outside) = (top.path().join("upper"), top.path().join("outside"));
        put(&upper, "dir/secret", b"mine");
        put(&outside, "secret", b"host secret");
        let tree = Tree::open(&upper).unwrap();
        let listed = tree.listing().unwrap();
        let stat = listed.get(Path::new("dir/secret")).unwrap();
        std::fs::rename(upper.join("dir"), upper.join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, upper.join("dir")).unwrap();
        assert!(tree.open_file(Path::new("dir/secret"), stat).is_err());
        // Nor does a new listing descend into it: it is a symlink entry.
        let again = tree.listing().unwrap();
        assert!(!again.contains_key(Path::new("dir/secret")));
        let mut out = Vec::new();
        write_diff(None, &upper, &mut out).unwrap();
        assert!(!out.windows(11).any(|w| w == b"host secret"));
    }

    #[test]
    fn a_file_replaced_after_listing_fails_the_diff() {
        let upper = tempfile::tempdir().unwrap();
        put(upper.path(), "f", b"one");
        let tree = Tree::open(upper.path()).unwrap();
        let listed = tree.listing().unwrap();
        let stat = *listed.get(Path::new("f")).unwrap();
        // Renamed, not removed, so that the new file cannot reuse the inode.
        std::fs::rename(upper.path().join("f"), upper.path().join("old")).unwrap();
        put(upper.path(), "f", b"another");
        let err = tree.open_file(Path::new("f"), &stat).unwrap_err();
        assert_eq!(err.kind(), berth_errdefs::ErrorKind::Aborted, "{err}");
        // A file shorter than its header fails instead of corrupting.
        let mut short = Exactly {
            inner: (&b"ab"[..]).take(5),
            remaining: 5,
        };
        let mut sink = Vec::new();
        assert!(std::io::copy(&mut short, &mut sink).is_err());
    }
}
