#![allow(clippy::unwrap_used, clippy::expect_used)]
//! berth-image as a library, with no CLI: a pull through [`Puller`] over
//! the daemons' clients, an unpack of what it brought, and an export and
//! import of it, each checked against what the daemons then hold.

use berth_client::{
    RemoteContentStore, RemoteImages, RemoteLeases, RemoteSnapshotter, RemoteTransfer,
};
use berth_content::ContentStore;
use berth_e2e::images::{busybox_rootfs, files_rootfs, Layout};
use berth_e2e::registry::Registry;
use berth_e2e::stack::Stack;
use berth_ids::Digest;
use berth_image::archive::{self, ArchiveImage};
use berth_image::{
    BlobState, Matcher, Platform, Progress, PullEvent, PullOptions, Puller, UnpackOptions, Unpacker,
};
use berth_metadata::{ImageStore, LeaseManager};
use berth_snapshot::{chain_ids, Snapshotter};

fn prerequisites() -> bool {
    berth_e2e::pull_prerequisites()
}

/// The daemons' clients, as any program using berth-image holds them.
struct Clients {
    content: RemoteContentStore,
    transfer: RemoteTransfer,
    images: RemoteImages,
    leases: RemoteLeases,
    snapshots: RemoteSnapshotter,
}

impl Clients {
    async fn connect(stack: &Stack) -> Clients {
        Clients {
            content: RemoteContentStore::connect(&stack.contentd.socket)
                .await
                .unwrap(),
            transfer: RemoteTransfer::connect(&stack.contentd.socket)
                .await
                .unwrap(),
            images: RemoteImages::connect(&stack.metad.socket).await.unwrap(),
            leases: RemoteLeases::connect(&stack.metad.socket).await.unwrap(),
            snapshots: RemoteSnapshotter::connect(&stack.snapd.socket, "overlay")
                .await
                .unwrap(),
        }
    }

    fn puller(&self) -> Puller<'_> {
        Puller {
            content: &self.content,
            transfer: &self.transfer,
            images: &self.images,
            leases: &self.leases,
            unpacker: Some(&self.snapshots as &dyn Unpacker),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_unpack_export_and_import_through_the_library() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("reg"), None);
    let mut layout = Layout::new(&dir.path().join("layout"));
    let base = layout.add_layer(&busybox_rootfs(
        &dir.path().join("r1"),
        &[("etc/motd", b"hi\n")],
    ));
    let top = layout.add_layer(&files_rootfs(
        &dir.path().join("r2"),
        &[("etc/top", b"top".to_vec())],
    ));
    let amd64 = layout.add_image(&[base.clone(), top.clone()], "amd64", false);
    // Another platform's manifest, whose layers are not this host's.
    let other = layout.add_layer(&files_rootfs(
        &dir.path().join("r3"),
        &[("etc/other", b"other".to_vec())],
    ));
    let s390x = layout.add_image(std::slice::from_ref(&other), "s390x", false);
    let index = layout.add_index(&[(amd64.clone(), "amd64"), (s390x, "s390x")]);
    layout.tag("v1", &index);
    let reference = format!("{}/lib/pull:v1", registry.host);
    layout.push("v1", &reference, None, false);

    let stack = Stack::start(&dir.path().join("stack"));
    let clients = Clients::connect(&stack).await;
    let options = PullOptions {
        request: berth_api::transfer::FetchRequest {
            reference: reference.clone(),
            plain_http: true,
            max_concurrent: 1,
            ..Default::default()
        },
        unpack_platform: Some(Platform::parse("linux/amd64").unwrap()),
        sync_fs: false,
    };
    let mut events = Vec::new();
    let pulled = clients
        .puller()
        .pull("default", &options, &mut |e| events.push(e))
        .await
        .unwrap();

    // The root is the index; the amd64 manifest was announced before its
    // blobs, which then all arrived; layers were unpacked bottom first.
    assert_eq!(pulled.root.digest, index.digest);
    let chains = chain_ids(&[base.1.clone(), top.1.clone()]);
    assert_eq!(
        pulled.unpacked,
        Some((amd64.digest.clone(), chains[1].clone()))
    );
    let position = |want: &dyn Fn(&PullEvent) -> bool| events.iter().position(want);
    let announced = position(&|e| {
        matches!(e, PullEvent::Transfer(p) if matches!(&**p,
            Progress::Manifest { descriptor, platform, .. }
                if descriptor.digest == amd64.digest && platform.as_deref() == Some("linux/amd64")))
    })
    .expect("the amd64 manifest was announced");
    let stored = |digest: &Digest| {
        position(&|e| {
            matches!(e, PullEvent::Transfer(p) if matches!(&**p,
                Progress::Blob { descriptor, state: BlobState::Done, .. }
                    if descriptor.digest == *digest))
        })
    };
    for layer in [&base.0.digest, &top.0.digest] {
        let at = stored(layer).unwrap_or_else(|| panic!("{layer} never stored: {events:?}"));
        assert!(at > announced);
    }
    assert!(stored(&other.0.digest).is_none(), "s390x layer fetched");
    let unpacked: Vec<(usize, Digest)> = events
        .iter()
        .filter_map(|e| match e {
            PullEvent::Unpacked {
                chain_id, layers, ..
            } => Some((*layers, chain_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        unpacked,
        vec![(1, chains[0].clone()), (2, chains[1].clone())]
    );
    assert!(
        !events.iter().any(|e| matches!(e, PullEvent::Warning(_))),
        "{events:?}"
    );

    // metad records the image; the lease is gone, and so are its labels.
    let record = clients.images.get("default", &reference).await.unwrap();
    assert_eq!(record.target.digest, index.digest);
    assert!(clients
        .leases
        .list("default", &[])
        .await
        .unwrap()
        .is_empty());
    for info in clients.content.list("default", &[]).await.unwrap() {
        assert!(
            !info
                .labels
                .keys()
                .any(|k| k.starts_with(berth_api::labels::LEASE_PREFIX)),
            "{} {:?}",
            info.digest,
            info.labels
        );
    }
    let snapshots = clients.snapshots.list("default", &[]).await.unwrap();
    assert_eq!(snapshots.len(), 2);
    assert!(snapshots.iter().all(|s| !s
        .labels
        .keys()
        .any(|k| k.starts_with(berth_api::labels::LEASE_PREFIX))));

    // Unpacking again through the library finds every layer in place.
    let again = berth_image::unpack(
        &clients.content,
        &clients.snapshots,
        "default",
        &index.digest,
        &Matcher::new(vec![Platform::parse("linux/amd64").unwrap()]),
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(again.manifest, amd64.digest);
    assert_eq!(again.unpacked.chain_id, chains[1]);
    assert_eq!(again.unpacked.applied, 0);
    // Asking for a platform the index does not have is NotFound.
    let err = berth_image::unpack(
        &clients.content,
        &clients.snapshots,
        "default",
        &index.digest,
        &Matcher::new(vec![Platform::parse("linux/riscv64").unwrap()]),
        &UnpackOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::ErrorKind::NotFound, "{err}");

    // Export to bytes and import into another namespace: the same root,
    // the same blobs, and the manifest labelled for the collector.
    let images = [ArchiveImage {
        name: Some("lib/pull:v1".into()),
        root: index.digest.clone(),
    }];
    let plan = archive::plan_export(&clients.content, "default", &images)
        .await
        .unwrap();
    let mut tar = Vec::new();
    plan.write(&clients.content, "default", &mut tar)
        .await
        .unwrap();
    let imported = archive::import(
        &clients.content,
        "copy",
        Box::new(std::io::Cursor::new(tar)),
    )
    .await
    .unwrap();
    assert_eq!(imported, images.to_vec());
    let manifest = clients.content.info("copy", &amd64.digest).await.unwrap();
    assert_eq!(
        manifest.labels.get("containerd.io/gc.ref.content.l.1"),
        Some(&top.0.digest.to_string())
    );
    let mut copied: Vec<Digest> = clients
        .content
        .list("copy", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    copied.sort();
    let mut pulled_blobs: Vec<Digest> = clients
        .content
        .list("default", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    pulled_blobs.sort();
    assert_eq!(copied, pulled_blobs);
}

/// An archive reader that says when it is dropped (when the import's
/// reader thread has let go of it), and that is slow past its first
/// 2 KiB, as a pipe is: the reader is in the middle of a read when the
/// import fails.
struct WatchedArchive {
    bytes: std::io::Cursor<Vec<u8>>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::io::Read for WatchedArchive {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bytes.position() >= 2048 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let n = buf.len().min(512);
        self.bytes.read(&mut buf[..n])
    }
}

impl Drop for WatchedArchive {
    fn drop(&mut self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A failed import has stopped reading its archive when it returns: the
/// fuzz target `archive_import` found its reader thread still running
/// (and holding the input) after a blob failed its digest, with the rest
/// of the archive waiting to be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_stops_reading_its_archive() {
    let dir = tempfile::tempdir().unwrap();
    let contentd = berth_e2e::Daemon::contentd(&dir.path().join("contentd"));
    let content = RemoteContentStore::connect(&contentd.socket).await.unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    };
    // Not the blob its name says: the import fails on it.
    append(&format!("blobs/sha256/{}", "0".repeat(64)), b"other bytes");
    for i in 0..64 {
        append(&format!("doc{i}.json"), b"{}");
    }
    let bytes = builder.into_inner().unwrap();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input = WatchedArchive {
        bytes: std::io::Cursor::new(bytes),
        dropped: dropped.clone(),
    };
    let err = archive::import(&content, "default", Box::new(input))
        .await
        .unwrap_err();
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the import returned ({err}) with its reader still holding the archive"
    );
}
