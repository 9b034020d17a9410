#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `berth pull` end to end: a registry on 127.0.0.1, then berth-contentd
//! fetching, berth-snapd unpacking as layers arrive, and berth-metad
//! recording the image under a lease; `berth images rm` and `berth gc`
//! then leave nothing behind.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_client::RemoteContentStore;
use berth_content::ContentStore;
use berth_e2e::fake_registry::{Behaviour, FakeRegistry};
use berth_e2e::images::{busybox_rootfs, files_rootfs, Blob, Layout, OCI_MANIFEST};
use berth_e2e::registry::Registry;
use berth_e2e::stack::Stack;
use berth_e2e::{is_root, require, BlockSource, Daemon};
use berth_ids::Digest;
use berth_snapshot::chain_ids;
use berth_snapshot::loop_mount::LoopMount;

fn prerequisites() -> bool {
    berth_e2e::pull_prerequisites()
}

/// A busybox image with a second layer holding `big` bytes of
/// incompressible data.
struct TestImage {
    manifest: Blob,
    config: Digest,
    layers: Vec<Blob>,
    diff_ids: Vec<Digest>,
}

/// A registry of this test's own, serving the image of [`build_image`]
/// as `repository_tag`; returns the registry (it stops when dropped), the
/// image and its full reference.
fn pushed(dir: &Path, repository_tag: &str, big: usize) -> (Registry, TestImage, String) {
    let registry = Registry::start(&dir.join("reg"), None);
    let mut layout = Layout::new(&dir.join("layout"));
    let image = build_image(dir, &layout, big);
    layout.tag("v1", &image.manifest);
    let reference = format!("{}/{repository_tag}", registry.host);
    layout.push("v1", &reference, None, false);
    (registry, image, reference)
}

fn build_image(dir: &Path, layout: &Layout, big: usize) -> TestImage {
    let base = busybox_rootfs(&dir.join("rootfs-base"), &[("etc/motd", b"hello\n")]);
    let (l1, d1) = layout.add_layer(&base);
    let data = BlockSource::new(big).block(7);
    let top = files_rootfs(&dir.join("rootfs-top"), &[("data/blob", data)]);
    let (l2, d2) = layout.add_layer(&top);
    let manifest = layout.add_image(
        &[(l1.clone(), d1.clone()), (l2.clone(), d2.clone())],
        "amd64",
        false,
    );
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.dir.join("blobs/sha256").join(manifest.digest.hex())).unwrap(),
    )
    .unwrap();
    let config = Digest::parse(doc["config"]["digest"].as_str().unwrap()).unwrap();
    TestImage {
        manifest,
        config,
        layers: vec![l1, l2],
        diff_ids: vec![d1, d2],
    }
}

impl TestImage {
    fn blobs(&self) -> Vec<Digest> {
        let mut all = vec![self.manifest.digest.clone(), self.config.clone()];
        all.extend(self.layers.iter().map(|l| l.digest.clone()));
        all
    }

    fn chains(&self) -> Vec<String> {
        chain_ids(&self.diff_ids)
            .iter()
            .map(|c| c.to_string())
            .collect()
    }
}

/// Names of the committed snapshots in the default namespace.
fn committed(stack: &Stack) -> Vec<String> {
    let list = stack.berth_json(&["snapshots", "ls"]);
    list.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "committed")
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// No lease is left, and no blob carries a lease's label.
async fn assert_no_lease_left(stack: &Stack, content: &RemoteContentStore) {
    let leases = stack.berth_json(&["leases", "ls"]);
    assert_eq!(leases.as_array().unwrap().len(), 0, "{leases}");
    for info in content.list("default", &[]).await.unwrap() {
        assert!(
            !info
                .labels
                .keys()
                .any(|k| k.starts_with(berth_api::LEASE_LABEL_PREFIX)),
            "{:?}",
            info.labels
        );
    }
}

async fn digests_in(content: &RemoteContentStore) -> Vec<Digest> {
    let mut all: Vec<Digest> = content
        .list("default", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_unpacks_records_and_gc_cleans_up_after_rm() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image, reference) = pushed(dir.path(), "test/pull:v1", 256 * 1024);
    let stack = Stack::start(&dir.path().join("stack"));

    let (ok, out, err) = stack.berth(&[
        "--format",
        "json",
        "pull",
        "--max-concurrent-downloads",
        "1",
        &reference,
    ]);
    assert!(ok, "pull failed: {err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Layers were unpacked one by one as they arrived, bottom first.
    let unpacked: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["event"] == "unpacked")
        .map(|e| {
            (
                e["layers"].as_u64().unwrap(),
                e["chain_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let chains = image.chains();
    assert_eq!(
        unpacked,
        vec![(1, chains[0].clone()), (2, chains[1].clone())],
        "{out}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "pulled");
    assert_eq!(last["digest"], image.manifest.digest.to_string());

    // The image is recorded, its blobs and snapshots are there, the config
    // names the chain for the collector, and the pull's lease is gone.
    let info = stack.berth_json(&["images", "inspect", &reference]);
    assert_eq!(info["target"]["digest"], image.manifest.digest.to_string());
    let mut snapshots = committed(&stack);
    snapshots.sort();
    let mut want = chains.clone();
    want.sort();
    assert_eq!(snapshots, want);
    let content = RemoteContentStore::connect(&stack.contentd.socket)
        .await
        .unwrap();
    let mut blobs = image.blobs();
    blobs.sort();
    assert_eq!(digests_in(&content).await, blobs);
    let config = content.info("default", &image.config).await.unwrap();
    assert_eq!(
        config.labels.get("containerd.io/gc.ref.snapshot.overlayfs"),
        Some(&chains[1])
    );
    // ... and so are the labels that tied the pieces to it.
    assert_no_lease_left(&stack, &content).await;
    let snapshots_json = stack.berth_json(&["snapshots", "ls"]);
    assert!(
        !snapshots_json
            .to_string()
            .contains(berth_api::LEASE_LABEL_PREFIX),
        "{snapshots_json}"
    );

    // A collection now removes nothing: the image holds it all.
    let (ok, _, err) = stack.berth(&["gc"]);
    assert!(ok, "{err}");
    assert_eq!(digests_in(&content).await, blobs);
    assert_eq!(committed(&stack).len(), 2);

    // A second pull of the same image changes nothing and succeeds.
    let (ok, _, err) = stack.berth(&["pull", "--quiet", &reference]);
    assert!(ok, "second pull failed: {err}");
    assert_eq!(digests_in(&content).await, blobs);

    // Remove the image: the next collection takes everything it held. The
    // deletion calls for a collection of its own, which may run before
    // `berth gc` does: then this one finds nothing left to remove.
    let (ok, _, err) = stack.berth(&["images", "rm", &reference]);
    assert!(ok, "{err}");
    let summary = stack.berth_json(&["gc"]);
    let removed = summary["removed"].as_array().unwrap();
    let removed_content: Vec<&str> = removed
        .iter()
        .filter(|r| r["type"] == "content")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let removed_snapshots = removed
        .iter()
        .filter(|r| r["type"] == "snapshots/overlayfs")
        .count();
    assert!(
        (removed_content.len(), removed_snapshots) == (blobs.len(), 2)
            || (removed_content.is_empty() && removed_snapshots == 0),
        "{summary}"
    );
    assert_eq!(digests_in(&content).await, Vec::<Digest>::new());
    assert!(committed(&stack).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_image_unpacks_by_its_name() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (registry, image, reference) = pushed(dir.path(), "test/byname:v1", 64 * 1024);
    let stack = Stack::start(&dir.path().join("stack"));

    let (ok, _, err) = stack.berth(&["pull", "--quiet", "--skip-unpack", &reference]);
    assert!(ok, "{err}");
    assert!(committed(&stack).is_empty());

    let (ok, out, err) = stack.berth(&["unpack", &reference]);
    assert!(ok, "{err}");
    let chains = image.chains();
    assert_eq!(out.trim(), chains[1]);
    let mut snapshots = committed(&stack);
    snapshots.sort();
    let mut want = chains.clone();
    want.sort();
    assert_eq!(snapshots, want);

    let (ok, _, err) = stack.berth(&["unpack", &format!("{}/test/missing:v1", registry.host)]);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
}

/// `berth gc`, back to back on a thread of its own, until stopped. Also
/// stopped (and waited for) when dropped, so that a failing test's stack,
/// which the thread shares, is dropped and its daemons stopped before the
/// test process ends.
struct Collections {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<serde_json::Value>)>>,
}

impl Collections {
    fn start(stack: std::sync::Arc<Stack>) -> Collections {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let mut removed = Vec::new();
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let summary = stack.berth_json(&["gc"]);
                removed.extend(summary["removed"].as_array().unwrap().iter().cloned());
                runs += 1;
            }
            (runs, removed)
        });
        Collections {
            done,
            thread: Some(thread),
        }
    }

    /// How many collections ran, and every object they removed.
    fn stop(mut self) -> (usize, Vec<serde_json::Value>) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Collections {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `berth unpack` holds what it makes until the image's config does: once
/// the top layer is committed, nothing else refers to the layers until the
/// config is labelled with them (the first time: later unpacks find the
/// label there). Collections run back to back while the image is unpacked
/// for the first time again and again; none may take a layer, and every
/// unpack must end with the whole chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_during_berth_unpack_take_nothing_it_made() {
    const ROUNDS: usize = 30;
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_registry, image, reference) = pushed(dir.path(), "test/held:v1", 64 * 1024);
    let stack = std::sync::Arc::new(Stack::start(&dir.path().join("stack")));
    let (ok, _, err) = stack.berth(&["pull", "--quiet", "--skip-unpack", &reference]);
    assert!(ok, "{err}");

    let collector = Collections::start(stack.clone());
    let chains = image.chains();
    let mut want = chains.clone();
    want.sort();
    for round in 0..ROUNDS {
        let (ok, _, err) = stack.berth(&["unpack", &reference]);
        assert!(ok, "round {round}: {err}");
        let mut snapshots = committed(&stack);
        snapshots.sort();
        assert_eq!(snapshots, want, "round {round}");
        // Back to an image never unpacked: the top goes (the config's
        // label holds it: only this can take it), then the label, then the
        // bottom, which a collection may take first.
        let (ok, _, err) = stack.berth(&["snapshots", "rm", &chains[1]]);
        assert!(ok, "round {round}: the top layer: {err}");
        let (ok, _, err) = stack.berth(&[
            "content",
            "label",
            image.config.as_str(),
            "containerd.io/gc.ref.snapshot.overlayfs=",
        ]);
        assert!(ok, "round {round}: {err}");
        let (ok, _, err) = stack.berth(&["snapshots", "rm", &chains[0]]);
        assert!(ok || err.contains("not found"), "round {round}: {err}");
    }
    let (runs, removed) = collector.stop();
    eprintln!("{runs} collections during {ROUNDS} unpacks");
    assert!(runs > ROUNDS, "only {runs} collections ran");
    let top_taken: Vec<_> = removed
        .iter()
        .filter(|object| object.to_string().contains(&chains[1]))
        .collect();
    assert!(
        top_taken.is_empty(),
        "collections took an unpack's top layer: {top_taken:?}"
    );
    // Their leases went with them.
    let content = RemoteContentStore::connect(&stack.contentd.socket)
        .await
        .unwrap();
    assert_no_lease_left(&stack, &content).await;
}

/// Serves the layout's image from the fake registry, which can trickle,
/// as `repo:v1`.
fn serve_from_layout(registry: &FakeRegistry, repo: &str, layout: &Layout, image: &TestImage) {
    let blob = |d: &Digest| std::fs::read(layout.dir.join("blobs/sha256").join(d.hex())).unwrap();
    let manifest = blob(&image.manifest.digest);
    registry.put(repo, "manifests", "v1", OCI_MANIFEST, &manifest);
    registry.put(
        repo,
        "manifests",
        image.manifest.digest.as_str(),
        OCI_MANIFEST,
        &manifest,
    );
    for digest in image.blobs().iter().skip(1) {
        registry.put(
            repo,
            "blobs",
            digest.as_str(),
            "application/octet-stream",
            &blob(digest),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_during_a_pull_takes_nothing_the_pull_holds() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(&dir.path().join("layout"));
    let image = build_image(dir.path(), &layout, 3 * 1024 * 1024);
    let registry = FakeRegistry::start(Behaviour::default()).await;
    serve_from_layout(&registry, "test/slow", &layout, &image);
    // The top layer comes slowly: the collection runs while it does.
    registry
        .behaviour
        .lock()
        .unwrap()
        .trickle
        .insert(image.layers[1].digest.clone(), 32 * 1024);
    let stack = Stack::start(&dir.path().join("stack"));
    let reference = format!("{}/test/slow:v1", registry.host);
    let mut pull = stack.spawn_berth(&[
        "--format",
        "json",
        "pull",
        "--max-concurrent-downloads",
        "1",
        &reference,
    ]);

    // Wait until the bottom layer is unpacked (its blobs and snapshot are
    // not yet held by any image).
    let chains = image.chains();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !committed(&stack).contains(&chains[0]) {
        assert!(Instant::now() < deadline, "the bottom layer never unpacked");
        assert!(pull.try_wait().unwrap().is_none(), "pull ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let summary = stack.berth_json(&["gc"]);
    assert_eq!(summary["removed"].as_array().unwrap().len(), 0, "{summary}");
    assert!(
        pull.try_wait().unwrap().is_none(),
        "the pull finished before the collection: trickle more slowly"
    );

    let status = pull.wait().unwrap();
    let mut err = String::new();
    pull.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "pull failed: {err}");
    let content = RemoteContentStore::connect(&stack.contentd.socket)
        .await
        .unwrap();
    let mut blobs = image.blobs();
    blobs.sort();
    assert_eq!(digests_in(&content).await, blobs);
    let mut snapshots = committed(&stack);
    snapshots.sort();
    let mut want = chains.clone();
    want.sort();
    assert_eq!(snapshots, want);
}

/// `berth pull --sync-fs` writes each layer back before committing it,
/// and `berth pull` does not: the flag goes from the CLI through the
/// unpack requests to snapd's apply. Measured by what ext4 reports
/// written to the device of snapd's root, a fresh loop filesystem (as the
/// apply-level test in bins/snapd/tests/sync_fs.rs measures it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_sync_fs_reaches_snapd_from_the_cli() {
    if !require(is_root(), "berth-snapd needs root")
        || !require(
            Path::new("/bin/busybox").exists(),
            "busybox-static is needed",
        )
    {
        return;
    }
    let Some(fs) = LoopMount::ext4(256 << 20) else {
        return;
    };
    const BIG: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(&dir.path().join("layout"));
    let image = build_image(dir.path(), &layout, BIG);
    let registry = FakeRegistry::start(Behaviour::default()).await;
    serve_from_layout(&registry, "test/synced", &layout, &image);
    let reference = format!("{}/test/synced:v1", registry.host);
    // Only snapd's root and state are on the loop filesystem (and the
    // daemons, declared after it, are dropped before it is unmounted).
    // snapd's own write-back, half a second after each commit, would
    // otherwise land inside the lazy pull whenever the machine is slow.
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let snapd = Daemon::snapd_without_prompt_write_back(&fs.dir.join("snapd"), &contentd);
    let metad = Daemon::metad(&dir.path().join("metad"), &contentd, &snapd);
    let taskd = Daemon::taskd(&dir.path().join("taskd"), &metad, &snapd);
    let stack = Stack {
        dir: dir.path().to_path_buf(),
        contentd,
        snapd,
        metad,
        taskd,
    };
    // One namespace each: the same layers are fetched and applied afresh.
    let pull = |ns: &str, extra: &[&str]| {
        let mut args = vec!["-n", ns, "pull", "--quiet"];
        args.extend_from_slice(extra);
        args.push(&reference);
        // The registry serves from this runtime's other tasks.
        let (written, (ok, _, err)) =
            tokio::task::block_in_place(|| fs.ext4_kib_written_by(|| stack.berth(&args)));
        assert!(ok, "berth {args:?}: {err}");
        let list = stack.berth_json(&["-n", ns, "snapshots", "ls"]);
        let mut names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "committed")
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        let mut want = image.chains();
        want.sort();
        assert_eq!(names, want);
        written
    };
    let big_kib = BIG as u64 >> 10;
    // Without: the big file waits in the page cache (for snapd's
    // write-back, held off here, or the kernel's after 30 s or under
    // memory pressure).
    let lazy = pull("lazy", &[]);
    assert!(lazy < big_kib, "without --sync-fs: {lazy} KiB written");
    let synced = pull("synced", &["--sync-fs"]);
    eprintln!("KiB written: {lazy} without --sync-fs, {synced} with");
    assert!(
        synced >= big_kib,
        "with --sync-fs: {synced} KiB written, the big file alone is {big_kib} KiB"
    );
}

/// `berth import` holds what it stores under a lease until the image
/// records hold it: a collection in the middle of an import takes
/// nothing (before, the blobs an import had stored belonged to nothing
/// until the records were written). The lease expires minutes on, not a
/// day, and is gone after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_during_an_import_takes_nothing_from_it() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&dir.path().join("layout"));
    let image = build_image(dir.path(), &layout, 512 * 1024);
    layout.tag("imported:v1", &image.manifest);
    let archive = std::fs::read(layout.archive(&dir.path().join("image.tar"))).unwrap();
    let stack = Stack::start(&dir.path().join("stack"));
    let content = RemoteContentStore::connect(&stack.contentd.socket)
        .await
        .unwrap();

    // All of the archive but its end: every layer is stored, nothing is
    // recorded yet.
    let mut import = stack
        .command(&["import", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = import.stdin.take().unwrap();
    let (head, tail) = archive.split_at(archive.len() - 1024);
    std::io::Write::write_all(&mut stdin, head).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for layer in &image.layers {
        while content.info("default", &layer.digest).await.is_err() {
            assert!(Instant::now() < deadline, "the layers were never stored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let leases = stack.berth_json(&["leases", "ls"]);
    let leases = leases.as_array().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    let expires = berth_metadata::parse_rfc3339(
        leases[0]["labels"]["containerd.io/gc.expire"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(
        expires <= std::time::SystemTime::now() + berth_metadata::CLIENT_LEASE_TTL,
        "{leases:?}"
    );
    let (ok, _, err) = stack.berth(&["gc"]);
    assert!(ok, "{err}");
    for layer in &image.layers {
        let held = content.info("default", &layer.digest).await;
        assert!(held.is_ok(), "{} was collected", layer.digest);
    }

    std::io::Write::write_all(&mut stdin, tail).unwrap();
    drop(stdin);
    let out = import.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Whole, unpacked, and the lease and its labels gone.
    let mut blobs = image.blobs();
    blobs.sort();
    assert_eq!(digests_in(&content).await, blobs);
    let mut snapshots = committed(&stack);
    snapshots.sort();
    let mut chains = image.chains();
    chains.sort();
    assert_eq!(snapshots, chains);
    assert_no_lease_left(&stack, &content).await;
}
