#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fetching from a registry that misbehaves or insists: corrupted blobs,
//! a crash mid-download, bearer tokens, foreign layers. The registry here is
//! the test's own (tests/src/fake_registry.rs), which can be made to do all
//! of that and records every request.

use std::time::{Duration, Instant};

use berth_client::RemoteContentStore;
use berth_content::ContentStore;
use berth_e2e::fake_registry::{Behaviour, FakeRegistry};
use berth_e2e::{berth, BlockSource, Daemon};
use berth_ids::Digest;
use serde_json::json;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct Image {
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

/// Puts an image with the given layer bodies (opaque bytes: fetch does not
/// unpack) under `repo:tag`.
fn put_image(
    registry: &FakeRegistry,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
    layer_type: &str,
    urls: Option<&str>,
) -> Image {
    let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        .to_string()
        .into_bytes();
    let config_digest = Digest::of(&config);
    registry.put(repo, "blobs", config_digest.as_str(), CONFIG, &config);
    let mut layer_digests = Vec::new();
    let mut descriptors = Vec::new();
    for layer in layers {
        let digest = Digest::of(layer);
        registry.put(
            repo,
            "blobs",
            digest.as_str(),
            "application/octet-stream",
            layer,
        );
        let mut d =
            json!({"mediaType": layer_type, "digest": digest.to_string(), "size": layer.len()});
        if let Some(url) = urls {
            d["urls"] = json!([url]);
        }
        descriptors.push(d);
        layer_digests.push(digest);
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": descriptors,
    })
    .to_string()
    .into_bytes();
    let manifest_digest = Digest::of(&manifest);
    registry.put(repo, "manifests", tag, MANIFEST, &manifest);
    registry.put(
        repo,
        "manifests",
        manifest_digest.as_str(),
        MANIFEST,
        &manifest,
    );
    Image {
        manifest: manifest_digest,
        config: config_digest,
        layers: layer_digests,
    }
}

async fn visible(daemon: &Daemon) -> Vec<Digest> {
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    store
        .list("default", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect()
}

async fn active(daemon: &Daemon) -> Vec<(String, u64)> {
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    store
        .list_statuses("default", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.reference, s.offset))
        .collect()
}

/// Runs the CLI off the async threads.
async fn berth_async(socket: std::path::PathBuf, args: Vec<String>) -> (bool, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        berth(&socket, &args, None)
    })
    .await
    .unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_fails_the_fetch_and_nothing_of_it_is_kept() {
    let registry = FakeRegistry::start(Behaviour::default()).await;
    let source = BlockSource::new(300_000);
    let image = put_image(
        &registry,
        "app",
        "v1",
        &[source.block(1), source.block(2)],
        LAYER,
        None,
    );
    registry
        .behaviour
        .lock()
        .unwrap()
        .corrupt
        .push(image.layers[1].clone());
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let reference = format!("{}/app:v1", registry.host);
    let (ok, _, err) =
        berth_async(daemon.socket.clone(), s(&["content", "fetch", &reference])).await;
    assert!(!ok);
    let last = err.lines().last().unwrap();
    assert!(
        last.contains(image.layers[1].as_str()) && last.contains("expected"),
        "{err}"
    );
    let stored = visible(&daemon).await;
    // The corrupted layer is not stored, no ingest of it lingers to be
    // resumed from, and the image (its manifest) is not recorded.
    assert!(!stored.contains(&image.layers[1]), "{stored:?}");
    assert!(!stored.contains(&image.manifest), "{stored:?}");
    // (Other layers cut short by the failure may stay, resumable: their
    // bytes so far are good.)
    let corrupted_ref = format!("layer-{}", image.layers[1]);
    assert!(
        active(&daemon)
            .await
            .iter()
            .all(|(r, _)| *r != corrupted_ref),
        "an ingest of the corrupted blob lingers"
    );
    // Once the registry serves the right bytes, the fetch completes.
    registry.behaviour.lock().unwrap().corrupt.clear();
    let (ok, _, err) =
        berth_async(daemon.socket.clone(), s(&["content", "fetch", &reference])).await;
    assert!(ok, "{err}");
    let stored = visible(&daemon).await;
    for d in [
        &image.manifest,
        &image.config,
        &image.layers[0],
        &image.layers[1],
    ] {
        assert!(stored.contains(d), "{d} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_fetch_then_the_next_fetch_resumes_with_a_range_request() {
    let registry = FakeRegistry::start(Behaviour::default()).await;
    let layer = BlockSource::new(4 * 1024 * 1024).block(7);
    let image = put_image(
        &registry,
        "big",
        "v1",
        std::slice::from_ref(&layer),
        LAYER,
        None,
    );
    // ~1.6 MB/s: the layer takes a few seconds.
    registry
        .behaviour
        .lock()
        .unwrap()
        .trickle
        .insert(image.layers[0].clone(), 16 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::contentd(dir.path());
    let reference = format!("{}/big:v1", registry.host);
    let fetch = tokio::spawn(berth_async(
        daemon.socket.clone(),
        s(&["content", "fetch", &reference]),
    ));

    // Wait until part of the layer is in the ingest, then crash contentd.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored_offset = loop {
        let partial = active(&daemon)
            .await
            .into_iter()
            .find(|(r, o)| r.starts_with("layer-") && *o > 0);
        if let Some((_, offset)) = partial {
            break offset;
        }
        assert!(
            Instant::now() < deadline,
            "the layer never started arriving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    daemon.kill();
    let (ok, _, _) = fetch.await.unwrap();
    assert!(!ok, "the fetch survived its daemon");
    daemon.restart();
    let resumed_at = active(&daemon).await[0].1;
    assert!(resumed_at >= stored_offset);

    registry.behaviour.lock().unwrap().trickle.clear();
    let before = registry.requests().len();
    let (ok, _, err) =
        berth_async(daemon.socket.clone(), s(&["content", "fetch", &reference])).await;
    assert!(ok, "{err}");
    let ranges: Vec<String> = registry.requests()[before..]
        .iter()
        .filter(|r| r.path.ends_with(image.layers[0].as_str()) && r.method == "GET")
        .filter_map(|r| r.headers.get("range").cloned())
        .collect();
    assert_eq!(ranges, vec![format!("bytes={resumed_at}-")]);
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    let data = berth_content::read_blob(&store, "default", &image.layers[0], 1 << 30)
        .await
        .unwrap();
    assert_eq!(data, layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_anonymous_and_with_credentials() {
    let registry = FakeRegistry::start(Behaviour {
        bearer_token: Some("t0ken".into()),
        ..Default::default()
    })
    .await;
    let image = put_image(&registry, "secure", "v1", &[b"layer".to_vec()], LAYER, None);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let reference = format!("{}/secure:v1", registry.host);

    // An anonymous token.
    let (ok, _, err) =
        berth_async(daemon.socket.clone(), s(&["content", "fetch", &reference])).await;
    assert!(ok, "{err}");
    assert!(visible(&daemon).await.contains(&image.manifest));
    let requests = registry.requests();
    let token_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    assert!(!token_requests.is_empty());
    assert!(
        token_requests[0].path.contains("service=fake")
            && token_requests[0]
                .path
                .contains("scope=repository%3Asecure%3Apull"),
        "{:?}",
        token_requests[0]
    );
    assert!(requests
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
        .all(|r| r.headers.get("authorization").map(String::as_str) == Some("Bearer t0ken")));

    // A token service that wants credentials.
    registry.behaviour.lock().unwrap().token_credentials = Some(("alice".into(), "pw".into()));
    let daemon2 = Daemon::contentd(&dir.path().join("second"));
    let (ok, _, err) =
        berth_async(daemon2.socket.clone(), s(&["content", "fetch", &reference])).await;
    assert!(!ok);
    assert!(err.contains("access denied"), "{err}");
    assert!(visible(&daemon2).await.is_empty());
    let (ok, _, err) = berth_async(
        daemon2.socket.clone(),
        s(&["content", "fetch", "--user", "alice:pw", &reference]),
    )
    .await;
    assert!(ok, "{err}");
    assert!(visible(&daemon2).await.contains(&image.layers[0]));
}

/// CVE-2020-15157: containerd sent registry credentials to the URLs a
/// manifest's foreign layers named. Here those URLs are never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_layers_are_not_followed_and_credentials_stay_home() {
    let elsewhere = FakeRegistry::start(Behaviour::default()).await;
    let registry = FakeRegistry::start(Behaviour::default()).await;
    let url = format!("http://{}/layer.tar.gz", elsewhere.host);
    let image = put_image(
        &registry,
        "win",
        "v1",
        &[b"foreign bytes".to_vec()],
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Some(&url),
    );
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let reference = format!("{}/win:v1", registry.host);
    let (ok, _, err) = berth_async(
        daemon.socket.clone(),
        s(&["content", "fetch", "--user", "bob:secret", &reference]),
    )
    .await;
    assert!(ok, "{err}");
    assert!(err.contains("skipped"), "{err}");
    let stored = visible(&daemon).await;
    assert!(stored.contains(&image.manifest) && !stored.contains(&image.layers[0]));
    assert!(
        elsewhere.requests().is_empty(),
        "the foreign URL was contacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_as_lines_json_and_quiet() {
    let registry = FakeRegistry::start(Behaviour::default()).await;
    let image = put_image(
        &registry,
        "p",
        "v1",
        &[b"one".to_vec(), b"two".to_vec()],
        LAYER,
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let reference = format!("{}/p:v1", registry.host);
    let (ok, out, err) = berth_async(
        daemon.socket.clone(),
        s(&["content", "fetch", "--format", "json", &reference]),
    )
    .await;
    assert!(ok, "{err}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "resolved");
    assert!(events
        .iter()
        .any(|e| e["state"] == "done" && e["digest"] == image.layers[1].as_str()));
    assert_eq!(events.last().unwrap()["event"], "fetched");
    assert_eq!(events.last().unwrap()["digest"], image.manifest.as_str());

    let (ok, out, err) = berth_async(
        daemon.socket.clone(),
        s(&["content", "fetch", "-q", &reference]),
    )
    .await;
    assert!(ok);
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        image.manifest.as_str()
    );
    assert!(err.is_empty(), "{err}");

    let daemon2 = Daemon::contentd(&dir.path().join("lines"));
    let (ok, out, err) =
        berth_async(daemon2.socket.clone(), s(&["content", "fetch", &reference])).await;
    assert!(ok);
    assert!(String::from_utf8_lossy(&out).contains(image.manifest.as_str()));
    // Not a terminal: one line per blob and state, no bars.
    assert!(
        err.lines()
            .any(|l| l.starts_with("layer") && l.contains("done")),
        "{err}"
    );
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fetches_of_one_image_at_once_both_succeed() {
    let registry = FakeRegistry::start(Behaviour::default()).await;
    let layer = BlockSource::new(1024 * 1024).block(3);
    let image = put_image(
        &registry,
        "same",
        "v1",
        std::slice::from_ref(&layer),
        LAYER,
        None,
    );
    registry
        .behaviour
        .lock()
        .unwrap()
        .trickle
        .insert(image.layers[0].clone(), 64 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let reference = format!("{}/same:v1", registry.host);
    let first = tokio::spawn(berth_async(
        daemon.socket.clone(),
        s(&["content", "fetch", "-q", &reference]),
    ));
    let second = tokio::spawn(berth_async(
        daemon.socket.clone(),
        s(&["content", "fetch", "-q", &reference]),
    ));
    for run in [first, second] {
        let (ok, out, err) = run.await.unwrap();
        assert!(ok, "{err}");
        assert_eq!(
            String::from_utf8_lossy(&out).trim(),
            image.manifest.as_str()
        );
    }
    // The layer was downloaded once.
    let downloads = registry
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(image.layers[0].as_str()))
        .count();
    assert_eq!(downloads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_answers_are_retried_and_oversized_manifests_refused() {
    let registry = FakeRegistry::start(Behaviour::default()).await;
    let image = put_image(
        &registry,
        "flaky",
        "v1",
        &[b"layer bytes".to_vec()],
        LAYER,
        None,
    );
    registry
        .behaviour
        .lock()
        .unwrap()
        .unavailable_first
        .insert(image.layers[0].to_string(), 2);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let reference = format!("{}/flaky:v1", registry.host);
    let (ok, _, err) =
        berth_async(daemon.socket.clone(), s(&["content", "fetch", &reference])).await;
    assert!(ok, "{err}");
    let attempts = registry
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(image.layers[0].as_str()))
        .count();
    assert_eq!(attempts, 3, "two 503s, then the blob");

    // A "manifest" of 5 MiB is refused before it is read.
    let big = vec![b' '; 5 * 1024 * 1024];
    registry.put("huge", "manifests", "v1", MANIFEST, &big);
    let (ok, _, err) = berth_async(
        daemon.socket.clone(),
        s(&["content", "fetch", &format!("{}/huge:v1", registry.host)]),
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("larger than") || err.contains("at most"),
        "{err}"
    );
    assert!(!visible(&daemon).await.contains(&Digest::of(&big)));
}

/// CVE-2020-15157, the other half: a redirect to blob storage gets no
/// Authorization header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_are_followed_without_the_registry_token() {
    let storage = FakeRegistry::start(Behaviour {
        storage: true,
        ..Default::default()
    })
    .await;
    let registry = FakeRegistry::start(Behaviour {
        bearer_token: Some("registry-only".into()),
        ..Default::default()
    })
    .await;
    let layer = BlockSource::new(200_000).block(9);
    let image = put_image(
        &registry,
        "redirected",
        "v1",
        std::slice::from_ref(&layer),
        LAYER,
        None,
    );
    storage.put(
        "any",
        "blobs",
        image.layers[0].as_str(),
        "application/octet-stream",
        &layer,
    );
    registry.behaviour.lock().unwrap().redirect.insert(
        image.layers[0].clone(),
        format!("http://{}/storage/{}", storage.host, image.layers[0]),
    );
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let reference = format!("{}/redirected:v1", registry.host);
    let (ok, _, err) =
        berth_async(daemon.socket.clone(), s(&["content", "fetch", &reference])).await;
    assert!(ok, "{err}");
    let served = storage.requests();
    assert!(!served.is_empty(), "the redirect was not followed");
    assert!(
        served
            .iter()
            .all(|r| !r.headers.contains_key("authorization")),
        "the registry's token went to blob storage"
    );
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    let data = berth_content::read_blob(&store, "default", &image.layers[0], 1 << 20)
        .await
        .unwrap();
    assert_eq!(data, layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_on_a_terminal() {
    if !berth_e2e::require(
        std::path::Path::new("/usr/bin/script").exists(),
        "script (util-linux) to give berth a terminal",
    ) {
        return;
    }
    let registry = FakeRegistry::start(Behaviour::default()).await;
    let layer = BlockSource::new(2 * 1024 * 1024).block(5);
    let image = put_image(
        &registry,
        "tty",
        "v1",
        std::slice::from_ref(&layer),
        LAYER,
        None,
    );
    registry
        .behaviour
        .lock()
        .unwrap()
        .trickle
        .insert(image.layers[0].clone(), 128 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let command = format!(
        "BERTH_CONTENTD_ADDRESS={} {} content fetch {}/tty:v1",
        daemon.socket.display(),
        berth_e2e::binary("berth").display(),
        registry.host
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = String::from_utf8_lossy(&out.stdout);
    // Bars: redrawn in place, with sizes and a rate, ending done.
    assert!(
        screen.contains('\u{1b}') || screen.contains('\r'),
        "{screen}"
    );
    assert!(screen.contains("MiB") && screen.contains("/s"), "{screen}");
    assert!(screen.contains("done"), "{screen}");
    assert!(screen.contains(image.manifest.as_str()), "{screen}");
}
