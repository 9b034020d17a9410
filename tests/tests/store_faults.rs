#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A corrupted metadata store at start (issue 15): contentd, snapd and
//! metad each refuse to start on an LMDB file whose header is garbage,
//! with an error that names the store, and leave the file as it was (no
//! new, empty store over the old one: nothing is silently lost). Put back,
//! the file serves again with everything it held.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::{binary, Daemon};

/// `berth --address SOCKET ARGS` (one daemon); (ok, stdout, stderr).
fn berth_at(daemon: &Daemon, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    let socket = daemon.socket.display().to_string();
    let mut all = vec!["--address", &socket];
    all.extend_from_slice(args);
    let (ok, out, err) = berth_e2e::berth(&daemon.socket, &all, stdin);
    (ok, String::from_utf8_lossy(&out).into_owned(), err)
}

/// Starts `name` on `daemon`'s directories (it must be stopped) and waits
/// for it to exit; returns its exit status and stderr. Panics if it is
/// still running after 20 s.
fn start_expecting_exit(name: &str, daemon: &Daemon, extra: &[&str]) -> (bool, String) {
    let mut child = Command::new(binary(name))
        .arg("--root")
        .arg(&daemon.root)
        .arg("--state")
        .arg(&daemon.state)
        .arg("--address")
        .arg(&daemon.socket)
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} started on a corrupted store");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Overwrites the first 8 KiB of `store/data.mdb` (LMDB's two meta
/// pages) with garbage; returns the file's original bytes.
fn corrupt(store: &Path) -> Vec<u8> {
    let file = store.join("data.mdb");
    let original = std::fs::read(&file).unwrap();
    let mut bad = original.clone();
    bad[..8192].fill(0xa5);
    std::fs::write(&file, &bad).unwrap();
    original
}

fn refuses_then_recovers(
    name: &str,
    mut daemon: Daemon,
    extra: &[&str],
    holds_data: impl Fn(&Daemon) -> bool,
) {
    assert!(
        holds_data(&daemon),
        "{name}: the data is not there to begin"
    );
    daemon.terminate();
    let store = daemon.root.join("meta");
    let original = corrupt(&store);
    let corrupted = std::fs::read(store.join("data.mdb")).unwrap();

    let (ok, stderr) = start_expecting_exit(name, &daemon, extra);
    assert!(!ok, "{name} exited 0 on a corrupted store");
    assert!(
        stderr.contains("metadata store") && stderr.contains("MDB_INVALID"),
        "{name}: {stderr}"
    );
    assert!(
        stderr.contains(&daemon.root.display().to_string()),
        "{name} does not say where: {stderr}"
    );
    assert_eq!(
        std::fs::read(store.join("data.mdb")).unwrap(),
        corrupted,
        "{name} changed the corrupted file"
    );

    // The documented recovery: the store back from a copy, and a start.
    std::fs::write(store.join("data.mdb"), &original).unwrap();
    daemon.restart();
    assert!(
        holds_data(&daemon),
        "{name}: the data is gone after recovery"
    );
}

#[test]
fn a_corrupted_store_stops_the_start_and_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();

    // metad: a namespace with a label.
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let metad_args = ["--contentd", "/nonexistent", "--snapd", "/nonexistent"];
    let metad = Daemon::start_with_args("berth-metad", &dir.path().join("metad"), &metad_args);
    let (ok, _, err) = berth_at(
        &metad,
        &["namespaces", "create", "kept", "--label", "a=b"],
        None,
    );
    assert!(ok, "{err}");
    refuses_then_recovers("berth-metad", metad, &metad_args, |daemon| {
        let (ok, out, _) = berth_at(daemon, &["namespaces", "ls"], None);
        ok && out.contains("kept")
    });

    // contentd: a blob.
    let (ok, out, err) = berth_at(
        &contentd,
        &["content", "ingest", "kept"],
        Some(b"kept across a corruption"),
    );
    assert!(ok, "{err}");
    let digest = out.trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    refuses_then_recovers("berth-contentd", contentd, &[], |daemon| {
        berth_at(daemon, &["content", "info", &digest], None).0
    });

    // snapd (root: it mounts): a committed snapshot.
    if !berth_e2e::require(berth_e2e::is_root(), "berth-snapd needs root") {
        return;
    }
    let contentd = Daemon::contentd(&dir.path().join("contentd-2"));
    let snapd = Daemon::snapd(&dir.path().join("snapd"), &contentd);
    for args in [
        &["snapshots", "prepare", "work"][..],
        &["snapshots", "commit", "kept", "work"],
    ] {
        let (ok, _, err) = berth_at(&snapd, args, None);
        assert!(ok, "{args:?}: {err}");
    }
    let contentd_socket = contentd.socket.display().to_string();
    refuses_then_recovers(
        "berth-snapd",
        snapd,
        &["--contentd", &contentd_socket],
        |daemon| berth_at(daemon, &["snapshots", "info", "kept"], None).0,
    );
}

/// A full metadata map (issue 15): contentd started with a 1 MiB map
/// (`--metadata-max-mib 1`), written to until a write fails. The failure
/// is ResourceExhausted `metadata store is full`; the blob of the failed
/// write is not visible; everything written before is there and readable,
/// and the daemon keeps serving. The recovery operating.md gives, a
/// restart with a larger map, serves all of it and takes new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_metadata_map_fails_writes_clearly_and_a_larger_one_serves_on() {
    use berth_client::RemoteContentStore;
    use berth_content::{write_blob, ContentStore, Labels};
    use berth_errdefs::ErrorKind;
    use berth_ids::Digest;

    const NS: &str = "default";
    let dir = tempfile::tempdir().unwrap();
    let mut daemon =
        Daemon::start_with_args("berth-contentd", dir.path(), &["--metadata-max-mib", "1"]);
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    // Labels make each record a few KiB, so that 1 MiB fills in hundreds.
    let label = "x".repeat(3000);
    let mut written: Vec<Digest> = Vec::new();
    let (failure, failed) = loop {
        let data = format!("blob {}", written.len()).into_bytes();
        let labels = Labels::from([("test.fill".to_string(), label.clone())]);
        let reference = format!("fill-{}", written.len());
        match write_blob(&store, NS, &reference, &data, None, labels).await {
            Ok(digest) => written.push(digest),
            Err(e) => break (e, Digest::of(&data)),
        }
        assert!(written.len() < 5_000, "a 1 MiB map never filled");
    };
    assert_eq!(failure.kind(), ErrorKind::ResourceExhausted, "{failure}");
    assert!(
        failure.to_string().contains("metadata store is full"),
        "{failure}"
    );
    assert!(written.len() > 10, "full after {} blobs", written.len());
    eprintln!("1 MiB map full after {} blobs: {failure}", written.len());
    let info = store.info(NS, &failed).await;
    assert_eq!(
        info.map(|_| ()).unwrap_err().kind(),
        ErrorKind::NotFound,
        "the failed write's blob is visible"
    );
    let listed = store.list(NS, &[]).await.unwrap();
    assert_eq!(listed.len(), written.len());
    for digest in &written {
        assert_eq!(
            store.info(NS, digest).await.unwrap().labels["test.fill"],
            label
        );
    }

    // Recovery: a larger map, from the next start.
    drop(store);
    daemon.terminate();
    let daemon =
        Daemon::start_with_args("berth-contentd", dir.path(), &["--metadata-max-mib", "64"]);
    let store = RemoteContentStore::connect(&daemon.socket).await.unwrap();
    assert_eq!(store.list(NS, &[]).await.unwrap().len(), written.len());
    for digest in &written {
        assert_eq!(
            store.info(NS, digest).await.unwrap().labels["test.fill"],
            label
        );
    }
    let more = write_blob(&store, NS, "after", b"room again", None, Labels::new())
        .await
        .unwrap();
    assert_eq!(more, Digest::of(b"room again"));
}
