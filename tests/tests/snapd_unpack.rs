#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Unpack across real daemons: an image built here (busybox-static plus
//! file layers) is written to berth-contentd, and berth-snapd unpacks it
//! into committed snapshots named by chain ID, for both snapshotters.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_client::{RemoteContentStore, RemoteSnapshotter};
use berth_e2e::images::{busybox_rootfs, files_rootfs, Layout};
use berth_e2e::Daemon;
use berth_errdefs::ErrorKind;
use berth_ids::Digest;
use berth_mount::TempMount;
use berth_snapshot::{chain_ids, Descriptor, Snapshotter};

struct Stack {
    dir: tempfile::TempDir,
    contentd: Daemon,
    snapd: Daemon,
    content: RemoteContentStore,
}

async fn stack() -> Option<Stack> {
    if !berth_e2e::require(berth_e2e::is_root(), "berth-snapd needs root") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let snapd = Daemon::snapd(&dir.path().join("snapd"), &contentd);
    let content = RemoteContentStore::connect(&contentd.socket).await.unwrap();
    Some(Stack {
        dir,
        contentd,
        snapd,
        content,
    })
}

/// Writes the layout's blobs for `layers` into contentd under `ns`.
async fn upload(stack: &Stack, layout: &Layout, layers: &[(Descriptor, Digest)], ns: &str) {
    for (desc, _) in layers {
        let data = std::fs::read(layout.dir.join("blobs/sha256").join(desc.digest.hex())).unwrap();
        berth_content::write_blob(
            &stack.content,
            ns,
            &format!("upload-{}", desc.digest.hex()),
            &data,
            Some(desc.digest.clone()),
            Default::default(),
        )
        .await
        .unwrap();
    }
}

fn desc(blob: &berth_e2e::images::Blob) -> Descriptor {
    Descriptor {
        urls: Vec::new(),
        platform: None,
        annotations: Default::default(),
        media_type: blob.media_type.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
    }
}

/// A three-layer image: busybox; a layer that deletes (whiteout) and adds;
/// an uncompressed layer with a hardlink to a file of the first layer.
fn image(dir: &Path) -> (Layout, Vec<(Descriptor, Digest)>) {
    let layout = Layout::new(&dir.join("layout"));
    let one = busybox_rootfs(
        &dir.join("l1"),
        &[("hello", b"hello\n"), ("etc/keep", b"keep")],
    );
    let (b1, d1) = layout.add_layer(&one);
    let two = files_rootfs(
        &dir.join("l2"),
        &[
            (".wh.hello", Vec::new()),
            ("etc/motd", b"welcome\n".to_vec()),
        ],
    );
    let (b2, d2) = layout.add_layer(&two);
    let three = dir.join("l3");
    std::fs::create_dir_all(three.join("bin")).unwrap();
    std::fs::write(three.join("note"), b"three").unwrap();
    let l3 = tar_layer(&layout, &three, &[("bin/ls", "bin/busybox")]);
    (layout, vec![(desc(&b1), d1), (desc(&b2), d2), l3])
}

/// An uncompressed layer of the files under `root`, then a hardlink entry
/// (link, target) for each of `links`, whose targets may be in lower
/// layers.
fn tar_layer(layout: &Layout, root: &Path, links: &[(&str, &str)]) -> (Descriptor, Digest) {
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(root)
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-cf",
            "-",
            ".",
        ])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut bytes = tar.stdout;
    if !links.is_empty() {
        // Cut the end-of-archive blocks, append the links, end it again.
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut end = 0;
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        }
        bytes.truncate(usize::try_from(end).unwrap());
        let mut builder = tar::Builder::new(bytes);
        for (link, target) in links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Link);
            header.set_size(0);
            header.set_mode(0o755);
            header.set_mtime(0);
            builder.append_link(&mut header, link, target).unwrap();
        }
        bytes = builder.into_inner().unwrap();
    }
    let diff_id = Digest::of(&bytes);
    let blob = layout.add_blob("application/vnd.oci.image.layer.v1.tar", &bytes);
    (desc(&blob), diff_id)
}

/// Every file under `root`: kind, mode, owner, content digest or target.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else {
                Digest::of(&std::fs::read(&path).unwrap()).to_string()
            };
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                format!("{what} {:o} {}:{}", meta.mode(), meta.uid(), meta.gid()),
            );
        }
    }
    out
}

async fn view_tree(
    sn: &RemoteSnapshotter,
    ns: &str,
    chain: &Digest,
    scratch: &Path,
) -> BTreeMap<PathBuf, String> {
    let key = format!("look-{}", chain.hex());
    let _ = sn.remove(ns, &key).await;
    let mounts = sn
        .view(ns, &key, Some(chain.as_str()), Default::default())
        .await
        .unwrap();
    let t = {
        let m = TempMount::new(&mounts, scratch).unwrap();
        tree(m.path())
    };
    sn.remove(ns, &key).await.unwrap();
    t
}

async fn unpack_image_with(snapshotter: &str) {
    let Some(stack) = stack().await else { return };
    let (layout, layers) = image(stack.dir.path());
    let ns = "unpack";
    upload(&stack, &layout, &layers, ns).await;
    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, snapshotter)
        .await
        .unwrap();
    let descs: Vec<Descriptor> = layers.iter().map(|(d, _)| d.clone()).collect();
    let diff_ids: Vec<Digest> = layers.iter().map(|(_, d)| d.clone()).collect();
    let chains = chain_ids(&diff_ids);
    let done = sn.unpack(ns, &descs, &diff_ids).await.unwrap();
    assert_eq!(done.chain_id, chains[2]);
    assert_eq!(done.applied, 3);
    for (i, chain) in chains.iter().enumerate() {
        let info = sn.stat(ns, chain.as_str()).await.unwrap();
        assert_eq!(info.kind, berth_snapshot::Kind::Committed);
        assert_eq!(
            info.parent,
            if i == 0 {
                None
            } else {
                Some(chains[i - 1].to_string())
            }
        );
    }
    // Nothing but the three chains is left.
    assert_eq!(sn.list(ns, &[]).await.unwrap().len(), 3);
    // Again: every chain is there already.
    let again = sn.unpack(ns, &descs, &diff_ids).await.unwrap();
    assert_eq!(
        (again.chain_id.clone(), again.applied),
        (chains[2].clone(), 0)
    );

    let scratch = stack.dir.path().join("mnt");
    std::fs::create_dir_all(&scratch).unwrap();
    let t = view_tree(&sn, ns, &chains[2], &scratch).await;
    let busybox = Digest::of(&std::fs::read("/bin/busybox").unwrap()).to_string();
    assert!(t[Path::new("bin/busybox")].starts_with(&busybox), "{t:?}");
    assert!(t[Path::new("bin/sh")].starts_with("-> busybox"));
    assert!(!t.contains_key(Path::new("hello")), "whited out: {t:?}");
    assert!(t[Path::new("etc/motd")].starts_with(&Digest::of(b"welcome\n").to_string()));
    assert!(t[Path::new("etc/keep")].starts_with(&Digest::of(b"keep").to_string()));
    assert!(t[Path::new("note")].starts_with(&Digest::of(b"three").to_string()));
    // The third layer links to a file of the first: on overlayfs that
    // layer is applied alongside the first, finds no target, and is
    // applied again once the first is committed.
    assert!(t[Path::new("bin/ls")].starts_with(&busybox), "{t:?}");

    // Two unpacks of the same image at once in a fresh namespace do the
    // work once between them.
    let ns2 = "twice";
    upload(&stack, &layout, &layers, ns2).await;
    let (a, b) = tokio::join!(
        sn.unpack(ns2, &descs, &diff_ids),
        sn.unpack(ns2, &descs, &diff_ids)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.chain_id, b.chain_id);
    assert_eq!(a.applied + b.applied, 3);
    assert_eq!(view_tree(&sn, ns2, &chains[2], &scratch).await, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpack_multi_layer_image_overlay() {
    unpack_image_with("overlayfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpack_multi_layer_image_native() {
    unpack_image_with("native").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_whose_diff_id_does_not_match_is_refused() {
    let Some(stack) = stack().await else { return };
    let (layout, layers) = image(stack.dir.path());
    let ns = "mismatch";
    upload(&stack, &layout, &layers, ns).await;
    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    let descs: Vec<Descriptor> = layers.iter().map(|(d, _)| d.clone()).collect();
    let mut diff_ids: Vec<Digest> = layers.iter().map(|(_, d)| d.clone()).collect();
    diff_ids[1] = Digest::of(b"not this layer");
    let err = sn.unpack(ns, &descs, &diff_ids).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(
        err.message().contains(&format!(
            "uncompresses to {}, but the image config says {}",
            layers[1].1, diff_ids[1]
        )),
        "{err}"
    );
    // The first layer is committed; nothing of the second remains.
    let left = sn.list(ns, &[]).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].name, chain_ids(&diff_ids)[0].to_string());
    // A layer missing from the namespace is not found. (The checks of a
    // present blob against its descriptor have tests of their own below.)
    let err = sn.unpack("other", &descs, &diff_ids).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(sn.list("other", &[]).await.unwrap().is_empty());
}

/// A one-layer gzip image (a few files) in contentd under `ns`: its
/// descriptor, diff ID and blob bytes.
async fn small_layer(stack: &Stack, ns: &str) -> (Descriptor, Digest, Vec<u8>) {
    let dir = stack.dir.path().join(format!("small-{ns}"));
    let layout = Layout::new(&dir.join("layout"));
    let root = files_rootfs(
        &dir.join("rootfs"),
        &[
            ("etc/motd", b"hello\n".to_vec()),
            ("data", vec![7u8; 64 << 10]),
        ],
    );
    let (blob, diff_id) = layout.add_layer(&root);
    let layer = (desc(&blob), diff_id);
    upload(stack, &layout, std::slice::from_ref(&layer), ns).await;
    let data = std::fs::read(layout.dir.join("blobs/sha256").join(blob.digest.hex())).unwrap();
    (layer.0, layer.1, data)
}

/// Nothing at all is left in `ns`: no committed chain, no active or
/// `extract-` scratch snapshot.
async fn assert_no_snapshots(sn: &RemoteSnapshotter, ns: &str) {
    let left = sn.list(ns, &[]).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_present_blob_whose_size_is_not_the_descriptors_is_refused() {
    let Some(stack) = stack().await else { return };
    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    let ns = "size";
    let (layer, diff_id, data) = small_layer(&stack, ns).await;
    let size = data.len() as u64;
    // The blob is there, under the descriptor's digest, with the right
    // bytes: only the stated size is wrong, larger or smaller.
    for stated in [size + 1, size - 1] {
        let wrong = Descriptor {
            size: stated,
            ..layer.clone()
        };
        let err = sn
            .unpack(ns, &[wrong], std::slice::from_ref(&diff_id))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(
            err.message().contains(&format!(
                "layer {} is {size} bytes, the manifest says {stated}",
                layer.digest
            )),
            "{err}"
        );
        assert_no_snapshots(&sn, ns).await;
    }
    // The same blob with its true size unpacks: the size was the reason.
    let done = sn.unpack(ns, &[layer], &[diff_id]).await.unwrap();
    assert_eq!(done.applied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_present_blob_whose_bytes_are_not_its_digest_is_refused() {
    let Some(stack) = stack().await else { return };
    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    let ns = "digest";
    let (layer, diff_id, data) = small_layer(&stack, ns).await;
    // contentd will not take bytes under a digest that is not theirs ...
    let mut forged = data.clone();
    forged[4] = 1;
    let refused = berth_content::write_blob(
        &stack.content,
        ns,
        "forged",
        &forged,
        Some(layer.digest.clone()),
        Default::default(),
    )
    .await;
    assert!(
        refused.is_err(),
        "contentd stored bytes under another digest"
    );
    // ... so the blob goes bad where it lies (a corrupt disk, or whoever
    // can write contentd's root): the gzip header's MTIME changes. The
    // size is the same and the blob still inflates to the same tar, so
    // the size and diff ID checks pass: only the blob's digest tells.
    assert_eq!(&data[..2], &[0x1f, 0x8b]);
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(&forged[..]),
        &mut unpacked,
    )
    .unwrap();
    assert_eq!(Digest::of(&unpacked), diff_id);
    let path = stack
        .contentd
        .root
        .join("blobs/sha256")
        .join(layer.digest.hex());
    assert_eq!(std::fs::read(&path).unwrap(), data);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&forged[4..5], 4).unwrap();
    }
    assert_eq!(
        berth_content::read_blob(&stack.content, ns, &layer.digest, 1 << 30)
            .await
            .unwrap(),
        forged,
        "contentd serves the bytes on its disk"
    );

    let err = sn
        .unpack(
            ns,
            std::slice::from_ref(&layer),
            std::slice::from_ref(&diff_id),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(
        err.message().contains(&format!(
            "layer blob has digest {}, expected {}",
            Digest::of(&forged),
            layer.digest
        )),
        "{err}"
    );
    assert_no_snapshots(&sn, ns).await;
    // Again with the native snapshotter: the same refusal.
    let native = RemoteSnapshotter::connect(&stack.snapd.socket, "native")
        .await
        .unwrap();
    let err = native.unpack(ns, &[layer], &[diff_id]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("layer blob has digest"), "{err}");
    assert_no_snapshots(&native, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_unpack_then_the_same_unpack_completes() {
    let Some(mut stack) = stack().await else {
        return;
    };
    let dir = stack.dir.path().to_path_buf();
    let layout = Layout::new(&dir.join("layout"));
    // Big, incompressible layers, so that the kill lands mid-apply.
    let source = berth_e2e::BlockSource::new(4 << 20);
    let mut layers = Vec::new();
    for l in 0..3u64 {
        let files: Vec<(String, Vec<u8>)> = (0..16)
            .map(|i| (format!("layer{l}/file{i}"), source.block(l * 100 + i)))
            .collect();
        let refs: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        let root = files_rootfs(&dir.join(format!("big{l}")), &refs);
        layers.push(tar_layer(&layout, &root, &[]));
    }
    let descs: Vec<Descriptor> = layers.iter().map(|(d, _)| d.clone()).collect();
    let diff_ids: Vec<Digest> = layers.iter().map(|(_, d)| d.clone()).collect();
    upload(&stack, &layout, &layers, "crash").await;
    upload(&stack, &layout, &layers, "clean").await;

    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    let background = {
        let sn = sn.clone();
        let (descs, diff_ids) = (descs.clone(), diff_ids.clone());
        tokio::spawn(async move { sn.unpack("crash", &descs, &diff_ids).await })
    };
    // Wait until an unpack scratch snapshot exists, then kill.
    let mut seen = false;
    for _ in 0..20_000 {
        let list = sn.list("crash", &[]).await.unwrap();
        if list.iter().any(|i| i.name.starts_with("extract-")) {
            seen = true;
            break;
        }
        if background.is_finished() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(seen, "the unpack finished before it could be interrupted");
    stack.snapd.kill();
    // Almost always an error; an unpack that committed its last layer
    // just before the kill is fine too.
    let _ = background.await.unwrap();
    stack.snapd.restart();

    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    // The restart removed the scratch snapshot.
    let left = sn.list("crash", &[]).await.unwrap();
    assert!(
        left.iter().all(|i| !i.name.starts_with("extract-")),
        "{left:?}"
    );
    let done = sn.unpack("crash", &descs, &diff_ids).await.unwrap();
    let clean = sn.unpack("clean", &descs, &diff_ids).await.unwrap();
    assert_eq!(done.chain_id, clean.chain_id);
    assert_eq!(clean.applied, 3);
    let scratch = dir.join("mnt");
    std::fs::create_dir_all(&scratch).unwrap();
    let crashed = view_tree(&sn, "crash", &done.chain_id, &scratch).await;
    let fresh = view_tree(&sn, "clean", &clean.chain_id, &scratch).await;
    assert_eq!(crashed.len(), 3 + 48);
    assert_eq!(crashed, fresh);
    // No directory is left that no snapshot owns: 3 + 3 chains, once the
    // removal thread has taken those of removed snapshots (the views).
    let count = || {
        std::fs::read_dir(stack.snapd.root.join("overlayfs/snapshots"))
            .unwrap()
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count() != 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gib_sparse_file_unpacks_sparse_with_bounded_memory() {
    let Some(stack) = stack().await else { return };
    let dir = stack.dir.path().to_path_buf();
    let src = dir.join("sparse-src");
    std::fs::create_dir_all(&src).unwrap();
    let file = std::fs::File::create(src.join("huge")).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"head", 0).unwrap();
    file.write_all_at(b"tail", (1 << 30) - 4).unwrap();
    drop(file);
    // GNU tar's sparse format: the archive holds only the data.
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&src)
        .args([
            "--sparse",
            "--format=gnu",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
            "-",
            ".",
        ])
        .output()
        .unwrap();
    assert!(tar.status.success());
    assert!(
        tar.stdout.len() < 1 << 20,
        "tar made {} bytes",
        tar.stdout.len()
    );
    let layout = Layout::new(&dir.join("layout"));
    let diff_id = Digest::of(&tar.stdout);
    let blob = layout.add_blob("application/vnd.oci.image.layer.v1.tar", &tar.stdout);
    let layers = vec![(desc(&blob), diff_id.clone())];
    upload(&stack, &layout, &layers, "sparse").await;
    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    let before = stack.snapd.peak_rss_kib();
    let done = sn
        .unpack("sparse", &[desc(&blob)], &[diff_id])
        .await
        .unwrap();
    let after = stack.snapd.peak_rss_kib();
    assert!(
        after < before + 64 * 1024,
        "snapd's peak RSS grew from {before} KiB to {after} KiB"
    );
    let scratch = dir.join("mnt");
    std::fs::create_dir_all(&scratch).unwrap();
    sn.view(
        "sparse",
        "look",
        Some(done.chain_id.as_str()),
        Default::default(),
    )
    .await
    .unwrap();
    let mounts = sn.mounts("sparse", "look").await.unwrap();
    let m = TempMount::new(&mounts, &scratch).unwrap();
    let meta = std::fs::metadata(m.path().join("huge")).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 16 << 20,
        "{} blocks allocated",
        meta.blocks()
    );
    let f = std::fs::File::open(m.path().join("huge")).unwrap();
    let mut buf = [0u8; 4];
    f.read_exact_at(&mut buf, (1 << 30) - 4).unwrap();
    assert_eq!(&buf, b"tail");
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpack_needs_one_diff_id_per_layer_and_at_least_one_layer() {
    let Some(stack) = stack().await else { return };
    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    let ns = "counts";
    let (layer, diff_id, _) = small_layer(&stack, ns).await;
    for (layers, diff_ids) in [
        (Vec::new(), Vec::new()),
        (vec![layer.clone(), layer.clone()], vec![diff_id.clone()]),
        (vec![layer.clone()], vec![diff_id.clone(), diff_id.clone()]),
    ] {
        let err = sn.unpack(ns, &layers, &diff_ids).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(
            err.message().contains(&format!(
                "{} layers but {} diff IDs",
                layers.len(),
                diff_ids.len()
            )),
            "{err}"
        );
        assert_no_snapshots(&sn, ns).await;
    }
}

/// A snapshot named as a layer's chain that is not committed (someone
/// prepared it under that name) is not taken for the layer: the unpack
/// fails and leaves it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_snapshot_named_as_a_chain_is_not_taken_for_the_layer() {
    let Some(stack) = stack().await else { return };
    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    let ns = "squatted";
    let (layer, diff_id, _) = small_layer(&stack, ns).await;
    let chain = chain_ids(std::slice::from_ref(&diff_id))[0].to_string();
    sn.prepare(ns, &chain, None, Default::default())
        .await
        .unwrap();
    let err = sn.unpack(ns, &[layer], &[diff_id]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(
        err.message()
            .contains(&format!("snapshot {chain} exists but is not committed")),
        "{err}"
    );
    let left = sn.list(ns, &[]).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].kind, berth_snapshot::Kind::Active);
}

/// A blob whose digest and size are right but whose gzip stream is
/// corrupt fails the unpack (it is not retried, nor taken as a short
/// layer) and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_does_not_decompress_is_refused() {
    let Some(stack) = stack().await else { return };
    let sn = RemoteSnapshotter::connect(&stack.snapd.socket, "overlayfs")
        .await
        .unwrap();
    let ns = "corrupt";
    let (_, diff_id, mut data) = small_layer(&stack, ns).await;
    // The deflate data after the 10-byte gzip header, inverted: no longer
    // a valid stream. Stored as a blob of its own, under its own digest.
    for byte in &mut data[10..] {
        *byte = !*byte;
    }
    let layout = Layout::new(&stack.dir.path().join("corrupt-layout"));
    let blob = layout.add_blob("application/vnd.oci.image.layer.v1.tar+gzip", &data);
    let layers = vec![(desc(&blob), diff_id.clone())];
    upload(&stack, &layout, &layers, ns).await;
    let err = sn.unpack(ns, &[desc(&blob)], &[diff_id]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("decompressing the layer"), "{err}");
    assert_no_snapshots(&sn, ns).await;
}
