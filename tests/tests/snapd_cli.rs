#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `berth unpack` and `berth snapshots ...` against real daemons, and Diff
//! producing a layer that round-trips.

use std::io::Read;

use berth_client::RemoteContentStore;
use berth_content::ContentStore;
use berth_e2e::images::{busybox_rootfs, files_rootfs, Layout};
use berth_e2e::{berth, Daemon};
use berth_ids::Digest;
use berth_mount::TempMount;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpack_snapshots_and_diff_from_the_cli() {
    if !berth_e2e::require(berth_e2e::is_root(), "berth-snapd needs root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let snapd = Daemon::snapd(&dir.path().join("snapd"), &contentd);
    let ssock = snapd.socket.display().to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["--snapd", ssock.as_str()];
        all.extend_from_slice(args);
        berth(&contentd.socket, &all, None)
    };

    // An image: busybox, then a file layer; an index over it.
    let layout = Layout::new(&dir.path().join("layout"));
    let l1 = layout.add_layer(&busybox_rootfs(&dir.path().join("r1"), &[("old", b"old")]));
    let l2 = layout.add_layer(&files_rootfs(
        &dir.path().join("r2"),
        &[("etc/new", b"new".to_vec())],
    ));
    let manifest = layout.add_image(&[l1.clone(), l2.clone()], "amd64", false);
    let index = layout.add_index(&[(manifest.clone(), "amd64")]);
    let store = RemoteContentStore::connect(&contentd.socket).await.unwrap();
    store_layout(&store, &layout, "default").await;
    let chain = berth_snapshot::chain_ids(&[l1.1.clone(), l2.1.clone()]);

    // (--sync-fs: every layer written back before its commit.)
    let (ok, out, err) = cli(&["unpack", index.digest.as_str(), "--sync-fs"]);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8(out).unwrap().trim(), chain[1].to_string());

    let (ok, out, err) = cli(&["snapshots", "ls", "--format", "json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["kind"] == "committed"));

    // Removing a parent is refused.
    let (ok, _, err) = cli(&["snapshots", "rm", chain[0].as_str()]);
    assert!(!ok);
    assert!(err.contains("child"), "{err}");

    let (ok, _, err) = cli(&[
        "snapshots",
        "prepare",
        "work",
        chain[1].as_str(),
        "--label",
        "containerd.io/gc.root=test",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["snapshots", "info", "work", "--format", "json"]);
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(info["labels"]["containerd.io/gc.root"], "test", "{info}");
    let (ok, out, err) = cli(&["snapshots", "mounts", "work", "--format", "json"]);
    assert!(ok, "{err}");
    let mounts: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(mounts[0]["type"], "overlay");

    // Change the active snapshot, then diff it against its parent.
    let sn = berth_client::RemoteSnapshotter::connect(&snapd.socket, "overlayfs")
        .await
        .unwrap();
    let scratch = dir.path().join("mnt");
    std::fs::create_dir(&scratch).unwrap();
    {
        use berth_snapshot::Snapshotter;
        let m = TempMount::new(&sn.mounts("default", "work").await.unwrap(), &scratch).unwrap();
        std::fs::write(m.path().join("added"), b"added").unwrap();
        std::fs::remove_file(m.path().join("old")).unwrap();
    }
    let (ok, out, err) = cli(&["snapshots", "diff", "work", chain[1].as_str()]);
    assert!(ok, "{err}");
    let digest = Digest::parse(String::from_utf8(out).unwrap().trim()).unwrap();
    let gzipped = berth_content::read_blob(&store, "default", &digest, 1 << 30)
        .await
        .unwrap();
    // gzip by default, as containerd; the blob carries its diff ID.
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(&gzipped[..])
        .read_to_end(&mut layer)
        .unwrap();
    let info = store.info("default", &digest).await.unwrap();
    assert_eq!(
        info.labels.get("containerd.io/uncompressed"),
        Some(&Digest::of(&layer).to_string())
    );
    // The same diff again: its blob is stored already, which is success
    // (with the same digest), not an error.
    let (ok, out, err) = cli(&["snapshots", "diff", "work", chain[1].as_str()]);
    assert!(ok, "a diff whose blob is stored: {err}");
    assert_eq!(String::from_utf8(out).unwrap().trim(), digest.to_string());
    // The blob gone, and its ingest held by another writer: the diff fails
    // (it must not report a blob it did not store). Once that writer has
    // gone, leaving bytes that are not the diff's in the ingest, the diff
    // starts the ingest over and stores the right blob.
    store.delete("default", &digest).await.unwrap();
    let reference = format!("diff-{digest}");
    let mut held = store
        .writer(
            "default",
            berth_content::WriterOptions::new(reference.clone())
                .total(info.size)
                .expected(digest.clone()),
        )
        .await
        .unwrap();
    held.write(b"not the diff".to_vec()).await.unwrap();
    let (ok, _, err) = cli(&["snapshots", "diff", "work", chain[1].as_str()]);
    assert!(
        !ok,
        "a diff whose ingest another writer holds reported success"
    );
    assert!(store.info("default", &digest).await.is_err(), "{err}");
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        let (ok, out, err) = cli(&["snapshots", "diff", "work", chain[1].as_str()]);
        if ok {
            break out;
        }
        // The dropped writer lets its ingest go in the background.
        assert!(std::time::Instant::now() < deadline, "{err}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(String::from_utf8(out).unwrap().trim(), digest.to_string());
    let again = berth_content::read_blob(&store, "default", &digest, 1 << 30)
        .await
        .unwrap();
    assert_eq!(again, gzipped, "the stored diff is whole");
    // The same diff as a plain tar and as zstd: one diff ID.
    for (media_type, decode) in [
        (
            "application/vnd.oci.image.layer.v1.tar",
            (|b: &[u8]| b.to_vec()) as fn(&[u8]) -> Vec<u8>,
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            |b: &[u8]| zstd::stream::decode_all(b).unwrap(),
        ),
    ] {
        let (ok, out, err) = cli(&[
            "snapshots",
            "diff",
            "work",
            chain[1].as_str(),
            "--media-type",
            media_type,
            "--format",
            "json",
        ]);
        assert!(ok, "{err}");
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["mediaType"], media_type);
        assert_eq!(json["diffID"], Digest::of(&layer).to_string());
        let digest = Digest::parse(json["digest"].as_str().unwrap()).unwrap();
        let blob = berth_content::read_blob(&store, "default", &digest, 1 << 30)
            .await
            .unwrap();
        assert_eq!(decode(&blob), layer);
    }
    let (ok, _, err) = cli(&["snapshots", "diff", "work", "--media-type", "text/plain"]);
    assert!(!ok);
    assert!(err.contains("media type"), "{err}");
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(&layer[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        names.push((name, data));
    }
    assert!(
        names.contains(&("added".to_string(), b"added".to_vec())),
        "{names:?}"
    );
    assert!(names.iter().any(|(n, _)| n == ".wh.old"), "{names:?}");
    assert!(
        !names.iter().any(|(n, _)| n.contains("busybox")),
        "unchanged files stay out: {names:?}"
    );

    let (ok, out, err) = cli(&["snapshots", "usage", "work", "--format", "json"]);
    assert!(ok, "{err}");
    let usage: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(usage[0]["inodes"].as_u64().unwrap() >= 3);

    let (ok, _, err) = cli(&["snapshots", "label", "work", "a=b"]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["snapshots", "ls", "labels.a==b", "--format", "json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(list[0]["name"], "work");

    let (ok, _, err) = cli(&["snapshots", "--snapshotter", "btrfs9", "ls"]);
    assert!(!ok);
    assert!(err.contains("unknown snapshotter"), "{err}");

    let (ok, out, err) = cli(&["snapshots", "tree"]);
    assert!(ok, "{err}");
    let tree = String::from_utf8(out).unwrap();
    assert!(tree.contains("    work (active)"), "{tree}");
    assert!(cli(&["snapshots", "rm", "work"]).0);
}

/// The file of [`sync_fs_image`]: big enough that what ext4 writes shows
/// whether it was synced.
const SYNC_FILE_BYTES: usize = 32 << 20;

/// `berth unpack --sync-fs` writes the layers back before it returns, and
/// `berth unpack` does not: the flag goes from the CLI through the
/// request to snapd's apply. Measured by what ext4 reports written to the
/// device of snapd's root, a fresh loop filesystem (as the apply-level
/// test in bins/snapd/tests/sync_fs.rs measures it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpack_sync_fs_reaches_snapd_from_the_cli() {
    if !berth_e2e::require(berth_e2e::is_root(), "berth-snapd needs root") {
        return;
    }
    let Some(fs) = berth_snapshot::loop_mount::LoopMount::ext4(256 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    // snapd's root and state on the loop filesystem, nothing else (and
    // snapd, declared after it, is dropped before it is unmounted). Its
    // own write-back half a second after the commit would otherwise land
    // inside the lazy unpack whenever the machine is slow.
    let snapd = Daemon::snapd_without_prompt_write_back(&fs.dir.join("snapd"), &contentd);
    let ssock = snapd.socket.display().to_string();

    let layout = Layout::new(&dir.path().join("layout"));
    let data: Vec<u8> = (0..SYNC_FILE_BYTES).map(|i| (i % 251) as u8 + 1).collect();
    let layer = layout.add_layer(&files_rootfs(&dir.path().join("r"), &[("big", data)]));
    let manifest = layout.add_image(&[layer], "amd64", false);
    let store = RemoteContentStore::connect(&contentd.socket).await.unwrap();
    for ns in ["lazy", "synced"] {
        store_layout(&store, &layout, ns).await;
    }
    // One namespace each: the same layer is applied afresh in both.
    let unpack = |ns: &str, extra: &[&str]| {
        let mut args = vec!["--snapd", ssock.as_str(), "-n", ns, "unpack"];
        args.push(manifest.digest.as_str());
        args.extend_from_slice(extra);
        let (written, (ok, _, err)) =
            fs.ext4_kib_written_by(|| berth(&contentd.socket, &args, None));
        assert!(ok, "berth {args:?}: {err}");
        written
    };
    let file_kib = SYNC_FILE_BYTES as u64 >> 10;
    // Without: the file waits in the page cache (for snapd's write-back,
    // held off here, or the kernel's after 30 s or under memory pressure).
    let lazy = unpack("lazy", &[]);
    assert!(lazy < file_kib, "without --sync-fs: {lazy} KiB written");
    let synced = unpack("synced", &["--sync-fs"]);
    eprintln!("KiB written: {lazy} without --sync-fs, {synced} with");
    assert!(
        synced >= file_kib,
        "with --sync-fs: {synced} KiB written, the file alone is {file_kib} KiB"
    );
}

/// Stores every blob of `layout` in contentd's namespace `ns`.
async fn store_layout(store: &RemoteContentStore, layout: &Layout, ns: &str) {
    for entry in std::fs::read_dir(layout.dir.join("blobs/sha256")).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        berth_content::write_blob(
            store,
            ns,
            &format!("b-{}", Digest::of(&data).hex()),
            &data,
            None,
            Default::default(),
        )
        .await
        .unwrap();
    }
}
