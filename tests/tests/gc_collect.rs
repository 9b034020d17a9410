#![allow(clippy::unwrap_used, clippy::expect_used)]
//! berth-metad's collector against real daemons: an image built here is
//! written to berth-contentd with containerd's reference labels and
//! unpacked by berth-snapd; metad's records are stood in for by a fixed set
//! of roots. What a collection keeps and removes is checked in both
//! daemons.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use berth_api::protobuf::Message;
use berth_client::{RemoteContentStore, RemoteSnapshotter};
use berth_content::{ContentStore, Labels};
use berth_e2e::images::{busybox_rootfs, files_rootfs, Blob, Layout};
use berth_e2e::Daemon;
use berth_errdefs::Result;
use berth_ids::Digest;
use berth_metad::gc::{
    Collector, CollectorConfig, LeaseRoots, NamespaceRoots, Report, RootSource, Roots, Sockets,
    CONTENTD,
};
use berth_snapshot::{chain_ids, Descriptor, Snapshotter};
use containerd_shim_protos::events::snapshot::SnapshotRemove;
use tokio::sync::RwLock;

const NS: &str = "gc-e2e";
const OTHER: &str = "gc-e2e-other";

struct Stack {
    dir: tempfile::TempDir,
    contentd: Daemon,
    snapd: Daemon,
}

impl Stack {
    async fn content(&self) -> RemoteContentStore {
        RemoteContentStore::connect(&self.contentd.socket)
            .await
            .unwrap()
    }

    async fn overlay(&self) -> RemoteSnapshotter {
        RemoteSnapshotter::connect(&self.snapd.socket, "overlayfs")
            .await
            .unwrap()
    }

    fn collector(&self, roots: &Arc<FixedRoots>) -> Collector {
        Collector::new(
            roots.clone(),
            Arc::new(Sockets {
                contentd: self.contentd.socket.clone(),
                snapd: self.snapd.socket.clone(),
            }),
            CollectorConfig::default(),
        )
    }
}

fn stack() -> Option<Stack> {
    if !berth_e2e::require(berth_e2e::is_root(), "berth-snapd needs root") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let snapd = Daemon::snapd(&dir.path().join("snapd"), &contentd);
    Some(Stack {
        dir,
        contentd,
        snapd,
    })
}

/// metad's records as the test sets them.
#[derive(Default)]
struct FixedRoots {
    roots: Mutex<Roots>,
    deleted_leases: Mutex<Vec<(String, String)>>,
}

impl FixedRoots {
    fn set(&self, namespaces: Vec<NamespaceRoots>) {
        *self.roots.lock().unwrap() = Roots { namespaces };
    }
}

impl RootSource for FixedRoots {
    fn roots(&self) -> Result<Roots> {
        Ok(self.roots.lock().unwrap().clone())
    }

    fn delete_leases(&self, leases: &[(String, String)]) -> Result<()> {
        self.deleted_leases
            .lock()
            .unwrap()
            .extend_from_slice(leases);
        Ok(())
    }
}

fn namespace(name: &str) -> NamespaceRoots {
    NamespaceRoots {
        namespace: name.to_string(),
        ..Default::default()
    }
}

fn lease(id: &str, labels: &[(&str, &str)]) -> LeaseRoots {
    LeaseRoots {
        id: id.to_string(),
        created_at: std::time::SystemTime::now(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        resources: Vec::new(),
    }
}

/// A two-layer image as pull leaves it: blobs labelled parent to child,
/// the config naming its top snapshot.
struct Image {
    manifest: Digest,
    config: Digest,
    layers: Vec<(Descriptor, Digest)>,
    chains: Vec<Digest>,
}

fn build_image(dir: &Path) -> (Layout, Image) {
    let layout = Layout::new(&dir.join("layout"));
    let one = layout.add_layer(&busybox_rootfs(&dir.join("l1"), &[("hello", b"hi\n")]));
    let two = layout.add_layer(&files_rootfs(
        &dir.join("l2"),
        &[("etc/motd", b"welcome\n".to_vec())],
    ));
    let manifest = layout.add_image(&[one.clone(), two.clone()], "amd64", false);
    let doc: serde_json::Value = serde_json::from_slice(&read(&layout, &manifest.digest)).unwrap();
    let config = Digest::parse(doc["config"]["digest"].as_str().unwrap()).unwrap();
    let descriptor = |blob: &Blob| Descriptor {
        urls: Vec::new(),
        platform: None,
        annotations: Default::default(),
        media_type: blob.media_type.clone(),
        digest: blob.digest.clone(),
        size: blob.size,
    };
    let layers = vec![
        (descriptor(&one.0), one.1.clone()),
        (descriptor(&two.0), two.1.clone()),
    ];
    let chains = chain_ids(&[one.1, two.1]);
    let image = Image {
        manifest: manifest.digest,
        config,
        layers,
        chains,
    };
    (layout, image)
}

fn read(layout: &Layout, digest: &Digest) -> Vec<u8> {
    std::fs::read(layout.dir.join("blobs/sha256").join(digest.hex())).unwrap()
}

async fn write(content: &RemoteContentStore, ns: &str, data: &[u8], labels: Labels) -> Digest {
    let digest = Digest::of(data);
    berth_content::write_blob(
        content,
        ns,
        &format!("gc-{}", digest.hex()),
        data,
        Some(digest),
        labels,
    )
    .await
    .unwrap()
}

/// Writes the image's blobs into `ns` with their reference labels.
async fn upload(content: &RemoteContentStore, ns: &str, layout: &Layout, image: &Image) {
    for (layer, _) in &image.layers {
        write(content, ns, &read(layout, &layer.digest), Labels::new()).await;
    }
    let top = image.chains.last().unwrap().to_string();
    let config_labels = Labels::from([("containerd.io/gc.ref.snapshot.overlayfs".into(), top)]);
    write(content, ns, &read(layout, &image.config), config_labels).await;
    let mut manifest_labels = Labels::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        image.config.to_string(),
    )]);
    for (i, (layer, _)) in image.layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.to_string(),
        );
    }
    write(content, ns, &read(layout, &image.manifest), manifest_labels).await;
}

async fn blobs(content: &RemoteContentStore, ns: &str) -> BTreeSet<Digest> {
    content
        .list(ns, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.digest)
        .collect()
}

async fn snapshots(sn: &RemoteSnapshotter, ns: &str) -> BTreeSet<String> {
    sn.list(ns, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.name)
        .collect()
}

fn removed(report: &Report) -> BTreeSet<(String, String, String)> {
    report
        .removed
        .iter()
        .map(|r| (r.kind.clone(), r.namespace.clone(), r.id.clone()))
        .collect()
}

fn image_objects(ns: &str, image: &Image) -> BTreeSet<(String, String, String)> {
    let mut out: BTreeSet<_> = [&image.manifest, &image.config]
        .into_iter()
        .chain(image.layers.iter().map(|(l, _)| &l.digest))
        .map(|d| ("content".to_string(), ns.to_string(), d.to_string()))
        .collect();
    out.extend(image.chains.iter().map(|c| {
        (
            "snapshots/overlayfs".to_string(),
            ns.to_string(),
            c.to_string(),
        )
    }));
    out
}

#[tokio::test]
async fn collects_exactly_what_no_image_or_lease_holds() {
    let Some(stack) = stack() else { return };
    let content = stack.content().await;
    let overlay = stack.overlay().await;
    let (layout, image) = build_image(stack.dir.path());
    upload(&content, NS, &layout, &image).await;
    let descriptors: Vec<Descriptor> = image.layers.iter().map(|(d, _)| d.clone()).collect();
    let diff_ids: Vec<Digest> = image.layers.iter().map(|(_, d)| d.clone()).collect();
    overlay.unpack(NS, &descriptors, &diff_ids).await.unwrap();
    // The same image's blobs in a namespace that holds nothing.
    upload(&content, OTHER, &layout, &image).await;
    // Blobs written under leases: contentd labels them with the lease.
    let leased = write(
        &content.clone().with_lease("pull-1"),
        NS,
        b"held by a live lease",
        Labels::new(),
    )
    .await;
    let expired = write(
        &content.clone().with_lease("old"),
        NS,
        b"held by an expired lease",
        Labels::new(),
    )
    .await;
    let image_blobs = blobs(&content, OTHER).await;
    assert_eq!(image_blobs.len(), 4);

    let roots = Arc::new(FixedRoots::default());
    let mut ns = namespace(NS);
    ns.images = vec![image.manifest.clone()];
    ns.leases = vec![
        lease("pull-1", &[]),
        lease(
            "old",
            &[("containerd.io/gc.expire", "2020-01-01T00:00:00Z")],
        ),
    ];
    roots.set(vec![ns.clone(), namespace(OTHER)]);
    let gate = RwLock::new(());

    // The image holds its tree, the live lease its blob; the other
    // namespace's copies and the expired lease's blob go.
    let report = stack.collector(&roots).collect(&gate).await.unwrap();
    let mut want: BTreeSet<_> = image_blobs
        .iter()
        .map(|d| ("content".to_string(), OTHER.to_string(), d.to_string()))
        .collect();
    want.insert(("content".into(), NS.into(), expired.to_string()));
    want.insert(("leases".into(), NS.into(), "old".into()));
    assert_eq!(removed(&report), want);
    assert!(report.skipped.is_empty());
    assert_eq!(
        *roots.deleted_leases.lock().unwrap(),
        [(NS.to_string(), "old".to_string())]
    );
    let mut kept = image_blobs.clone();
    kept.insert(leased.clone());
    assert_eq!(blobs(&content, NS).await, kept);
    assert!(blobs(&content, OTHER).await.is_empty());
    let chains: BTreeSet<String> = image.chains.iter().map(|c| c.to_string()).collect();
    assert_eq!(snapshots(&overlay, NS).await, chains);

    // Nothing more to do while the roots stay.
    ns.leases.retain(|l| l.id != "old");
    roots.set(vec![ns.clone()]);
    let report = stack.collector(&roots).collect(&gate).await.unwrap();
    assert_eq!(removed(&report), BTreeSet::new());

    // Without the image: its blobs and snapshots, exactly; the leased blob
    // stays. Each removed snapshot is announced as containerd's collector
    // announces it.
    ns.images.clear();
    roots.set(vec![ns.clone()]);
    let exchange = berth_metad::events::Exchange::new();
    let subscription = exchange
        .subscribe(&[r#"topic=="/snapshot/remove""#.to_string()])
        .unwrap();
    let report = stack
        .collector(&roots)
        .with_events(exchange.clone())
        .collect(&gate)
        .await
        .unwrap();
    assert_eq!(removed(&report), image_objects(NS, &image));
    assert_eq!(blobs(&content, NS).await, BTreeSet::from([leased.clone()]));
    assert!(snapshots(&overlay, NS).await.is_empty());
    let mut announced = BTreeSet::new();
    for _ in 0..chains.len() {
        let envelope =
            tokio::time::timeout(std::time::Duration::from_secs(30), subscription.next())
                .await
                .expect("a /snapshot/remove event")
                .unwrap();
        assert_eq!(envelope.namespace, NS);
        let any = envelope.event.get_or_default();
        assert_eq!(any.type_url, "containerd.events.SnapshotRemove");
        let event = SnapshotRemove::parse_from_bytes(&any.value).unwrap();
        assert_eq!(event.snapshotter, "overlayfs");
        announced.insert(event.key);
    }
    assert_eq!(announced, chains);

    // And without the lease, its blob.
    roots.set(vec![namespace(NS)]);
    let report = stack.collector(&roots).collect(&gate).await.unwrap();
    assert_eq!(
        removed(&report),
        BTreeSet::from([("content".to_string(), NS.to_string(), leased.to_string())])
    );
    assert!(blobs(&content, NS).await.is_empty());
}

#[tokio::test]
async fn a_stopped_contentd_is_skipped_and_nothing_is_deleted() {
    let Some(mut stack) = stack() else { return };
    let content = stack.content().await;
    let overlay = stack.overlay().await;
    let (layout, image) = build_image(stack.dir.path());
    upload(&content, NS, &layout, &image).await;
    let descriptors: Vec<Descriptor> = image.layers.iter().map(|(d, _)| d.clone()).collect();
    let diff_ids: Vec<Digest> = image.layers.iter().map(|(_, d)| d.clone()).collect();
    overlay.unpack(NS, &descriptors, &diff_ids).await.unwrap();
    drop(content);

    // Nothing holds the image, but with contentd down its blobs cannot be
    // listed, and without them the snapshots they name cannot be judged.
    let roots = Arc::new(FixedRoots::default());
    roots.set(vec![namespace(NS)]);
    let gate = RwLock::new(());
    stack.contentd.kill();
    let report = stack.collector(&roots).collect(&gate).await.unwrap();
    assert_eq!(report.skipped, [CONTENTD]);
    assert!(report.removed.is_empty());
    assert_eq!(snapshots(&overlay, NS).await.len(), 2);

    stack.contentd.restart();
    let report = stack.collector(&roots).collect(&gate).await.unwrap();
    assert!(report.skipped.is_empty());
    assert_eq!(removed(&report), image_objects(NS, &image));
    let content = stack.content().await;
    assert!(blobs(&content, NS).await.is_empty());
    assert!(snapshots(&overlay, NS).await.is_empty());
}
