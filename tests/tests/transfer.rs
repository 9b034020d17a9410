#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `berth content fetch` against Debian's docker-registry, with images built
//! here and pushed with skopeo.

use std::io::Write;
use std::path::Path;
use std::process::ChildStdin;

use berth_client::RemoteContentStore;
use berth_content::ContentStore;
use berth_e2e::fake_registry::{Behaviour, FakeRegistry};
use berth_e2e::images::{busybox_rootfs, files_rootfs, Blob, Layout};
use berth_e2e::registry::Registry;
use berth_e2e::{berth, require, BlockSource, Daemon};
use berth_ids::{Digest, Sha256Hasher};

fn tools_present() -> bool {
    ["docker-registry", "skopeo", "htpasswd"]
        .iter()
        .all(|t| berth_e2e::on_path(t))
        && Path::new("/bin/busybox").exists()
}

/// A two-layer busybox image for amd64 and a one-layer image for arm64,
/// under one index.
struct TestImage {
    index: Blob,
    amd64: Blob,
    arm64: Blob,
    amd64_blobs: Vec<Digest>,
    arm64_blobs: Vec<Digest>,
}

fn build_image(dir: &Path, layout: &mut Layout) -> TestImage {
    let base = busybox_rootfs(&dir.join("rootfs-base"), &[]);
    let (base_layer, base_diff) = layout.add_layer(&base);
    let top = files_rootfs(
        &dir.join("rootfs-top"),
        &[("etc/motd", b"hello from the top layer\n".to_vec())],
    );
    let (top_layer, top_diff) = layout.add_layer(&top);
    let amd64 = layout.add_image(
        &[
            (base_layer.clone(), base_diff.clone()),
            (top_layer.clone(), top_diff),
        ],
        "amd64",
        false,
    );
    let arm_only = files_rootfs(&dir.join("rootfs-arm"), &[("arm", b"arm64 only".to_vec())]);
    let (arm_layer, arm_diff) = layout.add_layer(&arm_only);
    let arm64 = layout.add_image(&[(arm_layer.clone(), arm_diff)], "arm64", false);
    let index = layout.add_index(&[(amd64.clone(), "amd64"), (arm64.clone(), "arm64")]);
    layout.tag("multi", &index);
    let config_of = |manifest: &Blob| -> Digest {
        let data =
            std::fs::read(layout.dir.join("blobs/sha256").join(manifest.digest.hex())).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&data).unwrap();
        Digest::parse(json["config"]["digest"].as_str().unwrap()).unwrap()
    };
    TestImage {
        amd64_blobs: vec![
            amd64.digest.clone(),
            config_of(&amd64),
            base_layer.digest.clone(),
            top_layer.digest.clone(),
        ],
        arm64_blobs: vec![
            arm64.digest.clone(),
            config_of(&arm64),
            arm_layer.digest.clone(),
        ],
        index,
        amd64,
        arm64,
    }
}

async fn digests_in(daemon: &Daemon) -> Vec<Digest> {
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    let mut all: Vec<Digest> = store
        .list("default", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    all.sort();
    all
}

fn sorted(mut v: Vec<Digest>) -> Vec<Digest> {
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_by_tag_and_digest_with_platform_selection() {
    if !require(
        tools_present(),
        "docker-registry, skopeo, htpasswd and busybox-static",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("reg"), None);
    let mut layout = Layout::new(&dir.path().join("layout"));
    let image = build_image(dir.path(), &mut layout);
    layout.push(
        "multi",
        &format!("{}/test/busybox:multi", registry.host),
        None,
        false,
    );
    let reference = format!("{}/test/busybox:multi", registry.host);

    // Default platform: the host's (amd64 here), plus the index.
    let daemon = Daemon::contentd(&dir.path().join("d1"));
    let (ok, out, err) = berth(
        &daemon.socket,
        &[
            "content",
            "fetch",
            "--quiet",
            &reference,
            "--platform",
            "linux/amd64",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        image.index.digest.as_str()
    );
    let mut want = image.amd64_blobs.clone();
    want.push(image.index.digest.clone());
    assert_eq!(digests_in(&daemon).await, sorted(want.clone()));

    // The index points at its manifests, each manifest at its config and
    // layers, for garbage collection; every blob says where it came from.
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    let index_info = store.info("default", &image.index.digest).await.unwrap();
    assert_eq!(
        index_info
            .labels
            .get("containerd.io/gc.ref.content.m.0")
            .map(String::as_str),
        Some(image.amd64.digest.as_str())
    );
    let manifest_info = store.info("default", &image.amd64.digest).await.unwrap();
    assert_eq!(
        manifest_info
            .labels
            .get("containerd.io/gc.ref.content.config")
            .map(String::as_str),
        Some(image.amd64_blobs[1].as_str())
    );
    assert_eq!(
        manifest_info
            .labels
            .get("containerd.io/gc.ref.content.l.1")
            .map(String::as_str),
        Some(image.amd64_blobs[3].as_str())
    );
    let source_key = format!("containerd.io/distribution.source.{}", registry.host);
    for digest in &want {
        let info = store.info("default", digest).await.unwrap();
        assert_eq!(
            info.labels.get(&source_key).map(String::as_str),
            Some("test/busybox"),
            "{digest}"
        );
    }

    // Fetching again finds everything present.
    let (ok, _, err) = berth(
        &daemon.socket,
        &["content", "fetch", &reference, "--platform", "linux/amd64"],
        None,
    );
    assert!(ok, "{err}");
    assert!(err.contains("exists"), "{err}");

    // Another platform, by digest.
    let daemon2 = Daemon::contentd(&dir.path().join("d2"));
    let by_digest = format!("{}/test/busybox@{}", registry.host, image.index.digest);
    let (ok, _, err) = berth(
        &daemon2.socket,
        &["content", "fetch", &by_digest, "--platform", "linux/arm64"],
        None,
    );
    assert!(ok, "{err}");
    let mut want_arm = image.arm64_blobs.clone();
    want_arm.push(image.index.digest.clone());
    assert_eq!(digests_in(&daemon2).await, sorted(want_arm));

    // All platforms.
    let daemon3 = Daemon::contentd(&dir.path().join("d3"));
    let (ok, _, err) = berth(
        &daemon3.socket,
        &["content", "fetch", &reference, "--all-platforms"],
        None,
    );
    assert!(ok, "{err}");
    let mut everything = image.amd64_blobs.clone();
    everything.extend(image.arm64_blobs.clone());
    everything.push(image.index.digest.clone());
    assert_eq!(digests_in(&daemon3).await, sorted(everything));

    // A single manifest by its digest, and a platform nobody built.
    let daemon4 = Daemon::contentd(&dir.path().join("d4"));
    let manifest_ref = format!("{}/test/busybox@{}", registry.host, image.arm64.digest);
    let (ok, _, err) = berth(&daemon4.socket, &["content", "fetch", &manifest_ref], None);
    assert!(ok, "{err}");
    assert_eq!(
        digests_in(&daemon4).await,
        sorted(image.arm64_blobs.clone())
    );
    let (ok, _, err) = berth(
        &daemon4.socket,
        &["content", "fetch", &reference, "--platform", "linux/s390x"],
        None,
    );
    assert!(!ok);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("berth: content fetch") && last.contains("no manifest for linux/s390x"),
        "{err}"
    );
    let (ok, _, err) = berth(
        &daemon4.socket,
        &[
            "content",
            "fetch",
            &format!("{}/test/missing:1", registry.host),
        ],
        None,
    );
    assert!(!ok && err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_user_flag_and_docker_config_and_docker_schema2() {
    if !require(
        tools_present(),
        "docker-registry, skopeo, htpasswd and busybox-static",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("reg"), Some(("carol", "s3cret")));
    let mut layout = Layout::new(&dir.path().join("layout"));
    let rootfs = busybox_rootfs(&dir.path().join("rootfs"), &[]);
    let layer = layout.add_layer(&rootfs);
    let manifest = layout.add_image(&[layer], "amd64", false);
    layout.tag("v2s2", &manifest);
    let reference = format!("{}/private/busybox:v2s2", registry.host);
    layout.push("v2s2", &reference, Some("carol:s3cret"), true);

    let daemon = Daemon::contentd(&dir.path().join("d"));
    // No credentials: refused, nothing stored.
    let (ok, _, err) = berth(&daemon.socket, &["content", "fetch", &reference], None);
    assert!(!ok);
    assert!(err.contains("user name and password"), "{err}");
    assert!(digests_in(&daemon).await.is_empty());
    // Wrong password.
    let (ok, _, err) = berth(
        &daemon.socket,
        &["content", "fetch", "--user", "carol:wrong", &reference],
        None,
    );
    assert!(!ok && err.contains("denied"), "{err}");

    // From docker's config.json.
    let docker_dir = dir.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    std::fs::write(
        docker_dir.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"Y2Fyb2w6czNjcmV0"}}}}}}"#,
            registry.host
        ),
    )
    .unwrap();
    let out = std::process::Command::new(berth_e2e::binary("berth"))
        .env("BERTH_CONTENTD_ADDRESS", &daemon.socket)
        .env("DOCKER_CONFIG", &docker_dir)
        .args(["content", "fetch", "-q", &reference])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // skopeo may rewrite the manifest when it converts; the registry's
    // digest is what berth reports and stores.
    let root = Digest::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    let manifest_bytes = berth_content::read_blob(&store, "default", &root, 1 << 20)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(
        json["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(digests_in(&daemon).await.len(), 3);

    // And with --user, into another daemon.
    let daemon2 = Daemon::contentd(&dir.path().join("d2"));
    let (ok, _, err) = berth(
        &daemon2.socket,
        &["content", "fetch", "--user", "carol:s3cret", &reference],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(digests_in(&daemon2).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_fetch_round_trips_byte_for_byte() {
    if !require(
        tools_present(),
        "docker-registry, skopeo, htpasswd and busybox-static",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("reg"), Some(("dave", "pw")));
    let mut layout = Layout::new(&dir.path().join("layout"));
    let base = busybox_rootfs(&dir.path().join("rootfs"), &[]);
    let base_layer = layout.add_layer(&base);
    // Random bytes do not compress: a layer larger than one upload chunk.
    let big = files_rootfs(
        &dir.path().join("big"),
        &[(
            "data/random",
            berth_e2e::BlockSource::new(12 * 1024 * 1024).block(1),
        )],
    );
    let big_layer = layout.add_layer(&big);
    assert!(big_layer.0.size > 8 * 1024 * 1024);
    let manifest = layout.add_image(&[base_layer, big_layer], "amd64", false);
    layout.tag("v1", &manifest);
    let source = format!("{}/team/origin:v1", registry.host);
    layout.push("v1", &source, Some("dave:pw"), false);

    let daemon = Daemon::contentd(&dir.path().join("d"));
    let (ok, out, err) = berth(
        &daemon.socket,
        &["content", "fetch", "-q", "--user", "dave:pw", &source],
        None,
    );
    assert!(ok, "{err}");
    let root = String::from_utf8_lossy(&out).trim().to_string();

    // Without credentials the registry refuses, and says so.
    let target = format!("{}/team/copy:v2", registry.host);
    let (ok, _, err) = berth(&daemon.socket, &["push", &target, &root], None);
    assert!(!ok);
    assert!(
        err.lines().last().unwrap().starts_with("berth: push"),
        "{err}"
    );

    // Blobs the registry holds in team/origin are mounted, not uploaded.
    let (ok, out, err) = berth(
        &daemon.socket,
        &["push", "--user", "dave:pw", &target, &root],
        None,
    );
    assert!(ok, "{err}");
    assert!(err.contains("mounted"), "{err}");
    assert!(String::from_utf8_lossy(&out).contains(&root));

    // skopeo sees exactly the manifest berth holds.
    let inspect = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "dave:pw",
        ])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert_eq!(Digest::of(&inspect.stdout).as_str(), root);

    // Into a new repository on a fresh registry: every blob is uploaded
    // (the big one in chunks), then fetched back into a fresh store.
    let registry2 = Registry::start(&dir.path().join("reg2"), None);
    let target2 = format!("{}/elsewhere/app:v3", registry2.host);
    let (ok, _, err) = berth(&daemon.socket, &["push", &target2, &root], None);
    assert!(ok, "{err}");
    assert!(
        err.contains("uploading") && !err.contains("mounted"),
        "{err}"
    );
    let daemon2 = Daemon::contentd(&dir.path().join("d2"));
    let (ok, out, err) = berth(&daemon2.socket, &["content", "fetch", "-q", &target2], None);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), root);
    let (a, b) = (digests_in(&daemon).await, digests_in(&daemon2).await);
    assert_eq!(a, b);
    let store1 = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    let store2 = RemoteContentStore::connect(&daemon2.socket).await.unwrap();
    for digest in &a {
        let one = berth_content::read_blob(&store1, "default", digest, 1 << 30)
            .await
            .unwrap();
        let two = berth_content::read_blob(&store2, "default", digest, 1 << 30)
            .await
            .unwrap();
        assert!(one == two, "{digest} differs");
    }

    // Pushing something that is not an image is refused before any upload.
    let (ok, _, err) = berth(
        &daemon.socket,
        &[
            "push",
            &target2,
            &a.iter().find(|d| d.as_str() != root).unwrap().to_string(),
        ],
        None,
    );
    assert!(!ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_what_skopeo_writes_and_skopeo_reads_what_berth_exports() {
    if !require(
        tools_present(),
        "docker-registry, skopeo, htpasswd and busybox-static",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("reg"), None);
    let mut layout = Layout::new(&dir.path().join("layout"));
    let image = build_image(dir.path(), &mut layout);
    let source = format!("{}/test/busybox:multi", registry.host);
    layout.push("multi", &source, None, false);
    let skopeo = |args: &[&str]| {
        let out = std::process::Command::new("skopeo")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };

    // skopeo's OCI archive (one platform) into berth.
    let oci_archive = dir.path().join("oci.tar");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--override-arch",
        "amd64",
        &format!("docker://{source}"),
        &format!("oci-archive:{}:busybox:v1", oci_archive.display()),
    ]);
    let daemon = Daemon::contentd(&dir.path().join("d"));
    let (ok, out, err) = berth(
        &daemon.socket,
        &[
            "--address",
            daemon.socket.to_str().unwrap(),
            "import",
            "--format",
            "json",
            oci_archive.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let imported: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(imported[0]["name"], "busybox:v1");
    assert_eq!(imported[0]["digest"], image.amd64.digest.as_str());
    let mut want = image.amd64_blobs.clone();
    want.sort();
    assert_eq!(digests_in(&daemon).await, want);
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    let info = store.info("default", &image.amd64.digest).await.unwrap();
    assert_eq!(
        info.labels
            .get("containerd.io/gc.ref.content.l.0")
            .map(String::as_str),
        Some(image.amd64_blobs[2].as_str())
    );

    // skopeo's docker archive (docker save format) into berth.
    let docker_archive = dir.path().join("docker.tar");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--override-arch",
        "amd64",
        &format!("docker://{source}"),
        &format!(
            "docker-archive:{}:berth.test/busybox:saved",
            docker_archive.display()
        ),
    ]);
    let daemon2 = Daemon::contentd(&dir.path().join("d2"));
    let (ok, out, err) = berth(
        &daemon2.socket,
        &[
            "--address",
            daemon2.socket.to_str().unwrap(),
            "import",
            "--format",
            "json",
            docker_archive.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let imported: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(imported[0]["name"], "berth.test/busybox:saved");
    let saved_root = Digest::parse(imported[0]["digest"].as_str().unwrap()).unwrap();
    // Its layers are the uncompressed tars: their digests are the diff IDs.
    let store2 = RemoteContentStore::connect(&daemon2.socket).await.unwrap();
    let manifest = json_blob(&store2, &saved_root).await;
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    let config_digest = Digest::parse(manifest["config"]["digest"].as_str().unwrap()).unwrap();
    let config = json_blob(&store2, &config_digest).await;
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        manifest["layers"][0]["digest"]
    );

    // berth's export, read by skopeo, pushed, and fetched back unchanged.
    let exported = dir.path().join("export.tar");
    let name_arg = format!("exported:v1={}", image.amd64.digest);
    let (ok, _, err) = berth(
        &daemon.socket,
        &["export", exported.to_str().unwrap(), &name_arg],
        None,
    );
    assert!(ok, "{err}");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}:exported:v1", exported.display()),
    ]);
    assert_eq!(Digest::of(&raw), image.amd64.digest);
    let target = format!("{}/roundtrip/busybox:v1", registry.host);
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci-archive:{}:exported:v1", exported.display()),
        &format!("docker://{target}"),
    ]);
    let daemon3 = Daemon::contentd(&dir.path().join("d3"));
    let (ok, out, err) = berth(&daemon3.socket, &["content", "fetch", "-q", &target], None);
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        image.amd64.digest.as_str()
    );
    assert_eq!(digests_in(&daemon3).await, want);
    // And berth imports its own export.
    let daemon4 = Daemon::contentd(&dir.path().join("d4"));
    let (ok, _, err) = berth(
        &daemon4.socket,
        &[
            "--address",
            daemon4.socket.to_str().unwrap(),
            "import",
            exported.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(digests_in(&daemon4).await, want);
}

/// A tar header for `name` claiming `size` bytes.
/// Whether the store's default namespace has no ingest in progress.
async fn no_ingest_left(store: &RemoteContentStore) -> bool {
    store
        .list_statuses("default", &[])
        .await
        .unwrap()
        .is_empty()
}

/// A JSON document of the store's default namespace (a manifest, a config).
async fn json_blob(store: &RemoteContentStore, digest: &Digest) -> serde_json::Value {
    let bytes = berth_content::read_blob(store, "default", digest, 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn tar_header(name: &str, size: u64) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let fields: [(usize, usize, String); 5] = [
        (100, 8, format!("{:07o}\0", 0o644)),
        (108, 8, format!("{:07o}\0", 0)),
        (116, 8, format!("{:07o}\0", 0)),
        (124, 12, format!("{size:011o}\0")),
        (136, 12, format!("{:011o}\0", 0)),
    ];
    for (at, len, value) in fields {
        header[at..at + len].copy_from_slice(&value.as_bytes()[..len]);
    }
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    header.to_vec()
}

/// A whole tar entry: header, data, padding to the next 512-byte block.
fn tar_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut entry = tar_header(name, data.len() as u64);
    entry.extend_from_slice(data);
    entry.resize(entry.len().next_multiple_of(512), 0);
    entry
}

/// How a measured child ended, and its own peak resident memory.
struct ChildUsage {
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    /// `ru_maxrss` of wait4 on the child's pid, KiB: this child's alone,
    /// where `getrusage(RUSAGE_CHILDREN)` is the largest of every child the
    /// test process has reaped.
    peak_rss_kib: u64,
}

/// Runs `command` with piped standard streams, `feed` writing its standard
/// input on a thread (a failed write, the child having gone, ends the
/// feed), and reaps it with wait4 to get its own resource usage.
#[allow(
    clippy::zombie_processes,
    reason = "reaped with wait4, which std's Child cannot do"
)]
fn run_measured(
    mut command: std::process::Command,
    feed: impl FnOnce(ChildStdin) + Send + 'static,
) -> ChildUsage {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || feed(stdin));
    let mut stdout = child.stdout.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut data = Vec::new();
        let _ = stdout.read_to_end(&mut data);
        data
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut data = Vec::new();
        let _ = stderr.read_to_end(&mut data);
        data
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = loop {
        // SAFETY: `status` and `usage` are live and writable, of the types
        // wait4 fills; `pid` is this test's unreaped child, and its Child
        // is never waited on after this.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped != -1 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break reaped;
        }
    };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let _ = feeder.join();
    ChildUsage {
        status: std::process::ExitStatus::from_raw(status),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap(),
    }
}

/// `berth import -` run in `cwd` against `daemon`, standard input written
/// by `feed`, measured on its own (its peak memory, not the test's other
/// children's).
fn import_measured(
    daemon: &Daemon,
    cwd: &Path,
    feed: impl FnOnce(ChildStdin) + Send + 'static,
) -> ChildUsage {
    let mut command = std::process::Command::new(berth_e2e::binary("berth"));
    command
        .env("BERTH_CONTENTD_ADDRESS", &daemon.socket)
        .env_remove("BERTH_NAMESPACE")
        .current_dir(cwd)
        // One daemon: the import only stores the content.
        .arg("--address")
        .arg(&daemon.socket)
        .args(["import", "--format", "json", "-"]);
    run_measured(command, feed)
}

/// Every path under `root`, relative to it.
fn tree_under(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            }
        }
    }
    found.sort();
    found
}

const MIB: u64 = 1024 * 1024;
/// The layer streamed through `berth import`: far more than the CLI may
/// hold at once.
const BIG_LAYER: u64 = 512 * MIB;
/// What the CLI may hold of a blob beyond what a tiny import costs it: the
/// reading thread's channel (4 pieces) and the piece on each side of it,
/// plus the client's window of 8 writes in flight, each at most MAX_READ
/// (1 MiB), is 14 MiB; four times that, rounded up, leaves the allocator
/// room and is still an eighth of the layer.
const STREAMING_ALLOWANCE: u64 = 64 * MIB;

/// A `docker save` archive, written as it is generated: `layer.tar` of
/// `layer_size` bytes (the CLI hashes it as it streams, since its name is
/// not a digest), its config and manifest.json. Sends the layer's digest on
/// `digest` once all is written.
fn feed_docker_archive(
    layer_size: u64,
    digest: std::sync::mpsc::Sender<Digest>,
) -> impl FnOnce(ChildStdin) + Send + 'static {
    move |mut stdin: ChildStdin| {
        let mut hasher = Sha256Hasher::new();
        if stdin
            .write_all(&tar_header("layer.tar", layer_size))
            .is_err()
        {
            return;
        }
        let source = BlockSource::new(MIB as usize);
        let mut written = 0;
        for index in 0.. {
            if written == layer_size {
                break;
            }
            let mut block = source.block(index);
            block.truncate((layer_size - written).min(MIB) as usize);
            hasher.update(&block);
            if stdin.write_all(&block).is_err() {
                return;
            }
            written += block.len() as u64;
        }
        let padding = vec![0u8; (layer_size.next_multiple_of(512) - layer_size) as usize];
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let manifest =
            br#"[{"Config":"config.json","RepoTags":["berth.test/big:v1"],"Layers":["layer.tar"]}]"#;
        let mut rest = padding;
        rest.extend(tar_entry("config.json", config));
        rest.extend(tar_entry("manifest.json", manifest));
        rest.extend_from_slice(&[0u8; 1024]);
        if stdin.write_all(&rest).is_ok() {
            let _ = digest.send(hasher.finalize());
        }
    }
}

/// Imports a generated docker archive with a `layer_size` layer; returns
/// the import's peak memory (KiB), after checking the layer was stored
/// whole under the digest of what was sent.
async fn import_layer(daemon: &Daemon, cwd: &Path, layer_size: u64) -> u64 {
    let (tx, rx) = std::sync::mpsc::channel();
    let run = import_measured(daemon, cwd, feed_docker_archive(layer_size, tx));
    assert!(run.status.success(), "{}", run.stderr);
    let layer_digest = rx.recv().expect("the whole archive was written");
    let imported: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(imported[0]["name"], "berth.test/big:v1");
    let root = Digest::parse(imported[0]["digest"].as_str().unwrap()).unwrap();
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    let manifest = json_blob(&store, &root).await;
    assert_eq!(manifest["layers"][0]["digest"], layer_digest.as_str());
    assert_eq!(manifest["layers"][0]["size"], layer_size);
    let info = store.info("default", &layer_digest).await.unwrap();
    assert_eq!(info.size, layer_size);
    run.peak_rss_kib
}

/// CVE-2023-25153: containerd's importer read whole documents into
/// memory. Here a 1 GiB index.json is refused on its header, with the
/// CLI's peak memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_fail_cleanly_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(&dir.path().join("d"));
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    // The CLI runs two levels down in a directory of its own, so that an
    // entry climbing out with ../../ has a definite place to land: the
    // jail's top. An absolute name points into the jail too.
    let jail = dir.path().join("jail");
    let cwd = jail.join("one").join("two");
    std::fs::create_dir_all(&cwd).unwrap();
    let jail_before = tree_under(&jail);
    let absolute = jail.join("absolute-escape");
    for name in [
        "../../escape".to_string(),
        "./../../escape".to_string(),
        "blobs/../../../escape".to_string(),
        absolute.display().to_string(),
    ] {
        let mut escaping = tar_entry(&name, b"boom");
        escaping.extend_from_slice(&[0u8; 1024]);
        let run = import_measured(&daemon, &cwd, move |mut stdin| {
            let _ = stdin.write_all(&escaping);
        });
        assert!(!run.status.success(), "{name}: {}", run.stderr);
        assert!(run.stderr.contains("outside the archive"), "{}", run.stderr);
        // Nothing landed where the entry points (cwd/../../escape is the
        // jail's top), nor anywhere else under the jail.
        assert!(!cwd.join(&name).exists(), "{name} was written");
        assert!(!jail.join("escape").exists(), "{name} was written");
        assert!(!absolute.exists(), "{name} was written");
        assert_eq!(tree_under(&jail), jail_before, "{name}");
        // Refused on its name: no blob stored, no ingest even opened.
        assert!(digests_in(&daemon).await.is_empty(), "{name}");
        assert!(no_ingest_left(&store).await, "{name} opened an ingest");
    }

    // A blob whose name is not its digest.
    let wrong = format!("blobs/sha256/{}", Digest::of(b"other").hex());
    let mut lying = tar_header(&wrong, 4);
    lying.extend_from_slice(b"boom");
    lying.resize(1024, 0);
    lying.extend_from_slice(&[0u8; 1024]);
    let address = daemon.socket.to_str().unwrap();
    let (ok, _, err) = berth(
        &daemon.socket,
        &["--address", address, "import", "-"],
        Some(&lying),
    );
    assert!(!ok, "{err}");
    assert!(digests_in(&daemon).await.is_empty());
    // The refused entry's ingest is aborted, not left behind.
    assert!(
        no_ingest_left(&store).await,
        "a failed import left its ingest"
    );
    // Also when the archive ends in the middle of an entry, while its
    // writer still holds the ingest.
    let content = vec![7u8; 1 << 20];
    let named = format!("blobs/sha256/{}", Digest::of(&content).hex());
    let mut truncated = tar_header(&named, content.len() as u64);
    truncated.extend_from_slice(&content[..content.len() / 2]);
    let (ok, _, err) = berth(
        &daemon.socket,
        &["--address", address, "import", "-"],
        Some(&truncated),
    );
    assert!(!ok, "{err}");
    assert!(digests_in(&daemon).await.is_empty());
    assert!(
        no_ingest_left(&store).await,
        "an import cut off mid-entry left its ingest: {err}"
    );

    // What a tiny import costs the CLI (KiB), to measure the rest against.
    let baseline = import_layer(&daemon, &cwd, MIB).await;
    let bound = baseline + STREAMING_ALLOWANCE / 1024;

    // A layer of half a gibibyte streams through: stored whole, while the
    // CLI's own peak stays within a small allowance of the tiny import's.
    let peak = import_layer(&daemon, &cwd, BIG_LAYER).await;
    eprintln!("import peaks: tiny {baseline} KiB, {BIG_LAYER}-byte layer {peak} KiB");
    assert!(
        peak <= bound,
        "importing a {BIG_LAYER}-byte layer peaked at {peak} KiB; a tiny import at {baseline} KiB, bound {bound} KiB"
    );

    // An index.json that claims a gibibyte, streamed, never stored: refused
    // on its header, before any of it is read.
    let run = import_measured(&daemon, &cwd, |mut stdin| {
        let _ = stdin.write_all(&tar_header("index.json", 1 << 30));
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..1024 {
            if stdin.write_all(&spaces).is_err() {
                break;
            }
        }
    });
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("index.json is 1073741824 bytes"),
        "{}",
        run.stderr
    );
    assert!(
        run.peak_rss_kib <= bound,
        "refusing a 1 GiB index.json peaked at {} KiB, bound {bound} KiB",
        run.peak_rss_kib
    );
    assert_eq!(tree_under(&jail), jail_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_gives_a_registry_its_ca_and_a_mirror() {
    if !require(
        tools_present() && berth_e2e::on_path("openssl"),
        "docker-registry, skopeo, openssl and busybox-static",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secure = Registry::start_tls(&dir.path().join("tls"));
    let mut layout = Layout::new(&dir.path().join("layout"));
    let rootfs = busybox_rootfs(&dir.path().join("rootfs"), &[]);
    let layer = layout.add_layer(&rootfs);
    let manifest = layout.add_image(&[layer], "amd64", false);
    layout.tag("v1", &manifest);
    let cert = dir.path().join("tls/ca.pem");
    let push = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.dir.display()))
        .arg(format!("docker://{}/app:v1", secure.host))
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );

    // certs.d/<host>/hosts.toml: HTTPS with our CA.
    let hosts = dir.path().join("certs.d");
    let host_dir = hosts.join(&secure.host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(&cert, host_dir.join("registry-ca.pem")).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{}\"\nca = \"registry-ca.pem\"\n",
            secure.host
        ),
    )
    .unwrap();
    let daemon = Daemon::start_with_args(
        "berth-contentd",
        &dir.path().join("d"),
        &["--hosts-dir", hosts.to_str().unwrap()],
    );
    let reference = format!("{}/app:v1", secure.host);
    let (ok, out, err) = berth(
        &daemon.socket,
        &["content", "fetch", "-q", &reference],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        manifest.digest.as_str()
    );

    // Without the CA the certificate is not trusted.
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"https://{}\"\n", secure.host),
    )
    .unwrap();
    std::fs::remove_file(host_dir.join("registry-ca.pem")).unwrap();
    let daemon2 = Daemon::start_with_args(
        "berth-contentd",
        &dir.path().join("d2"),
        &["--hosts-dir", hosts.to_str().unwrap()],
    );
    let (ok, _, err) = berth(&daemon2.socket, &["content", "fetch", &reference], None);
    assert!(!ok, "fetched from an untrusted registry");
    assert!(digests_in(&daemon2).await.is_empty(), "{err}");

    // A mirror that has the image, tried first.
    let mirror = Registry::start(&dir.path().join("mirror"), None);
    layout.push("v1", &format!("{}/app:v1", mirror.host), None, false);
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{}\"\n\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            secure.host, mirror.host
        ),
    )
    .unwrap();
    drop(secure);
    let daemon3 = Daemon::start_with_args(
        "berth-contentd",
        &dir.path().join("d3"),
        &["--hosts-dir", hosts.to_str().unwrap()],
    );
    let (ok, out, err) = berth(
        &daemon3.socket,
        &["content", "fetch", "-q", &reference],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        manifest.digest.as_str()
    );
}

// A plain-HTTP registry's client has no TLS until a request needs it: a
// redirect to HTTPS blob storage is followed with a TLS client that trusts
// the CA certs.d gives the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_registry_redirecting_to_https_storage() {
    if !require(
        tools_present() && berth_e2e::on_path("openssl"),
        "docker-registry, skopeo, openssl and busybox-static",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let storage = Registry::start_tls(&dir.path().join("tls"));
    let mut layout = Layout::new(&dir.path().join("layout"));
    let rootfs = files_rootfs(
        &dir.path().join("rootfs"),
        &[("hello", b"stored behind TLS".to_vec())],
    );
    let layer = layout.add_layer(&rootfs);
    let layer_digest = layer.0.digest.clone();
    let manifest = layout.add_image(&[layer], "amd64", false);
    layout.tag("v1", &manifest);
    let push = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.dir.display()))
        .arg(format!("docker://{}/app:v1", storage.host))
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );

    // The plain registry has the manifest and config, and redirects the
    // layer to the TLS one.
    let registry = FakeRegistry::start(Behaviour::default()).await;
    let blob = |digest: &Digest| {
        std::fs::read(layout.dir.join("blobs/sha256").join(digest.hex())).unwrap()
    };
    let manifest_bytes = blob(&manifest.digest);
    let parsed: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let config = Digest::parse(parsed["config"]["digest"].as_str().unwrap()).unwrap();
    for name in ["v1", manifest.digest.as_str()] {
        registry.put(
            "app",
            "manifests",
            name,
            &manifest.media_type,
            &manifest_bytes,
        );
    }
    registry.put(
        "app",
        "blobs",
        config.as_str(),
        "application/octet-stream",
        &blob(&config),
    );
    registry.behaviour.lock().unwrap().redirect.insert(
        layer_digest.clone(),
        format!("https://{}/v2/app/blobs/{layer_digest}", storage.host),
    );

    let hosts = dir.path().join("certs.d");
    let host_dir = hosts.join(&registry.host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(dir.path().join("tls/ca.pem"), host_dir.join("ca.pem")).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"http://{}\"\nca = \"ca.pem\"\n", registry.host),
    )
    .unwrap();
    let daemon = Daemon::start_with_args(
        "berth-contentd",
        &dir.path().join("d"),
        &["--hosts-dir", hosts.to_str().unwrap()],
    );
    let reference = format!("{}/app:v1", registry.host);
    let (ok, out, err) = berth(
        &daemon.socket,
        &["content", "fetch", "-q", &reference],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        manifest.digest.as_str()
    );
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.path.ends_with(layer_digest.as_str())),
        "the layer was not asked of the plain registry"
    );
    assert!(digests_in(&daemon).await.contains(&layer_digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_certs_d() {
    if !require(
        tools_present() && berth_e2e::on_path("openssl"),
        "docker-registry, skopeo, openssl and busybox-static",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let registry = Registry::start_tls_requiring_client_certificates(&tls);
    let mut layout = Layout::new(&dir.path().join("layout"));
    let rootfs = files_rootfs(
        &dir.path().join("rootfs"),
        &[("hello", b"mutual TLS".to_vec())],
    );
    let layer = layout.add_layer(&rootfs);
    let manifest = layout.add_image(&[layer], "amd64", false);
    layout.tag("v1", &manifest);
    // skopeo takes the client pair from a directory of *.cert/*.key.
    let skopeo_certs = dir.path().join("skopeo-certs");
    std::fs::create_dir_all(&skopeo_certs).unwrap();
    std::fs::copy(tls.join("client.cert"), skopeo_certs.join("client.cert")).unwrap();
    std::fs::copy(tls.join("client.key"), skopeo_certs.join("client.key")).unwrap();
    let push = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-cert-dir",
        ])
        .arg(&skopeo_certs)
        .arg(format!("oci:{}:v1", layout.dir.display()))
        .arg(format!("docker://{}/mtls:v1", registry.host))
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );

    // certs.d/<host>: the CA as ca.crt, the client pair as client.cert and
    // client.key, docker-style, and hosts.toml naming the HTTPS server.
    let hosts = dir.path().join("certs.d");
    let host_dir = hosts.join(&registry.host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(tls.join("ca.pem"), host_dir.join("ca.crt")).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"https://{}\"\n", registry.host),
    )
    .unwrap();
    let reference = format!("{}/mtls:v1", registry.host);

    let daemon = Daemon::start_with_args(
        "berth-contentd",
        &dir.path().join("d"),
        &["--hosts-dir", hosts.to_str().unwrap()],
    );
    let (ok, _, err) = berth(&daemon.socket, &["content", "fetch", &reference], None);
    assert!(!ok, "served without a client certificate: {err}");

    std::fs::copy(tls.join("client.cert"), host_dir.join("client.cert")).unwrap();
    std::fs::copy(tls.join("client.key"), host_dir.join("client.key")).unwrap();
    let daemon2 = Daemon::start_with_args(
        "berth-contentd",
        &dir.path().join("d2"),
        &["--hosts-dir", hosts.to_str().unwrap()],
    );
    let (ok, out, err) = berth(
        &daemon2.socket,
        &["content", "fetch", "-q", &reference],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        manifest.digest.as_str()
    );
}
