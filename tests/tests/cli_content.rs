#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `berth content ...` against a real berth-contentd.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_e2e::{berth, binary, BlockSource, Daemon};
use berth_ids::{Digest, Sha256Hasher};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ingest_list_info_get_label_remove() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let sock = &daemon.socket;
    let data = b"hello from the command line\n";
    let digest = Digest::of(data);

    let (ok, out, err) = berth(
        sock,
        &["content", "ingest", "greeting", "--label", "team=core"],
        Some(data),
    );
    assert!(ok, "{err}");
    assert_eq!(text(&out).trim(), digest.as_str());

    let (ok, out, _) = berth(sock, &["content", "ls"], None);
    assert!(ok);
    let listing = text(&out);
    assert!(listing.starts_with("DIGEST"), "{listing}");
    assert!(
        listing.contains(digest.as_str()) && listing.contains("team=core"),
        "{listing}"
    );

    let (ok, out, _) = berth(sock, &["content", "ls", "--format", "json"], None);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json[0]["digest"], digest.as_str());
    assert_eq!(json[0]["size"], data.len());
    assert_eq!(json[0]["labels"]["team"], "core");

    let (ok, out, _) = berth(sock, &["content", "ls", "-q", "labels.team==other"], None);
    assert!(ok);
    assert!(out.is_empty());

    let (ok, out, _) = berth(sock, &["content", "get", digest.as_str()], None);
    assert!(ok);
    assert_eq!(out, data);

    let (ok, out, _) = berth(
        sock,
        &["content", "info", digest.as_str(), "--format", "json"],
        None,
    );
    assert!(ok);
    let info: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(info["size"], data.len());

    let (ok, _, err) = berth(
        sock,
        &["content", "label", digest.as_str(), "team=", "tier=1"],
        None,
    );
    assert!(ok, "{err}");
    let (_, out, _) = berth(
        sock,
        &["content", "info", digest.as_str(), "--format", "json"],
        None,
    );
    let info: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(info["labels"], serde_json::json!({"tier": "1"}));

    let (ok, _, err) = berth(sock, &["content", "rm", digest.as_str()], None);
    assert!(ok, "{err}");
    let (ok, _, err) = berth(sock, &["content", "info", digest.as_str()], None);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("berth: content info sha256:") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn errors_are_one_line_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let sock = &daemon.socket;
    let wrong = Digest::of(b"not this");
    let cases: &[&[&str]] = &[
        &["content", "ingest", "r", "--expected", wrong.as_str()],
        &["content", "ingest", "r2", "--size", "3"],
        &["content", "ingest", "../../x"],
        &["content", "info", "sha256:../../etc/passwd"],
        &["content", "get", "sha256:00"],
        &["-n", "../other", "content", "ls"],
        &["content", "ingest", "r3", "--label", "novalue"],
    ];
    for args in cases {
        let (ok, _, err) = berth(sock, args, Some(b"some content"));
        assert!(!ok, "{args:?} succeeded");
        assert!(err.starts_with("berth: "), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    let (_, out, _) = berth(sock, &["content", "ls", "-q"], None);
    assert!(out.is_empty(), "{}", text(&out));
    // A daemon that is not there is one line too.
    let (ok, _, err) = berth(&dir.path().join("nothing.sock"), &["content", "ls"], None);
    assert!(!ok);
    assert!(
        err.starts_with("berth: berth-contentd: connecting to"),
        "{err}"
    );
}

#[test]
fn namespaces_do_not_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let sock = &daemon.socket;
    let (ok, out, _) = berth(
        sock,
        &["-n", "team-a", "content", "ingest", "x"],
        Some(b"secret"),
    );
    assert!(ok);
    let digest = text(&out).trim().to_string();
    let (ok, _, err) = berth(sock, &["-n", "team-b", "content", "get", &digest], None);
    assert!(!ok && err.contains("not found"), "{err}");
    let (_, out, _) = berth(
        sock,
        &["--namespace", "team-b", "content", "ls", "-q"],
        None,
    );
    assert!(out.is_empty());
    let (_, out, _) = berth(sock, &["-n", "team-a", "content", "ls", "-q"], None);
    assert_eq!(text(&out).trim(), digest);
}

#[test]
fn active_and_abort() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let sock = &daemon.socket;
    // An ingest whose client dies part way stays active.
    interrupted_ingest(sock, "half-done", &vec![7u8; 3 * 1024 * 1024]);

    let (ok, out, _) = berth(sock, &["content", "active", "--format", "json"], None);
    assert!(ok);
    let active: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(active[0]["ref"], "half-done");
    assert_eq!(active[0]["offset"], 3 * 1024 * 1024);
    let (ok, out, _) = berth(sock, &["content", "active"], None);
    assert!(ok);
    assert!(text(&out).contains("half-done"));

    // The dead client's stream is noticed and its checkpoint saved before
    // the ref is free; until then abort says the ref is locked.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _, err) = berth(sock, &["content", "abort", "half-done"], None);
        if ok {
            break;
        }
        assert!(err.contains("locked") && Instant::now() < deadline, "{err}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, out, _) = berth(sock, &["content", "active", "--format", "json"], None);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([])
    );
    let (ok, _, err) = berth(sock, &["content", "abort", "half-done"], None);
    assert!(!ok && err.contains("not found"), "{err}");
}

fn wait_for_offset(sock: &std::path::Path, reference: &str, offset: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (_, out, _) = berth(sock, &["content", "active", "--format", "json"], None);
        if let Ok(active) = serde_json::from_slice::<serde_json::Value>(&out) {
            if active
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["ref"] == reference && s["offset"] == offset)
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{reference} never reached {offset}");
}

/// A unix socket in front of contentd's that counts the bytes clients
/// send through it: what a CLI run pointed at it sends to contentd.
struct CountingProxy {
    path: PathBuf,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<Vec<std::thread::JoinHandle<()>>>>,
}

impl CountingProxy {
    fn start(path: &Path, upstream: &Path) -> CountingProxy {
        let listener = UnixListener::bind(path).unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_path_buf();
        let acceptor = std::thread::spawn({
            let (sent, stop) = (sent.clone(), stop.clone());
            move || {
                let mut counters = Vec::new();
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let client = client.unwrap();
                    let server = UnixStream::connect(&upstream).unwrap();
                    let (mut from_client, mut to_server) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let sent = sent.clone();
                    counters.push(std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = from_client.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            sent.fetch_add(n as u64, Ordering::SeqCst);
                            if to_server.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to_server.shutdown(Shutdown::Write);
                    }));
                    let (mut from_server, mut to_client) = (server, client);
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from_server, &mut to_client);
                        let _ = to_client.shutdown(Shutdown::Write);
                    });
                }
                counters
            }
        });
        CountingProxy {
            path: path.to_path_buf(),
            sent,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Once every client has gone: all the bytes they sent.
    fn finish(mut self) -> u64 {
        self.stop_accepting()
            .into_iter()
            .for_each(|counter| counter.join().unwrap());
        self.sent.load(Ordering::SeqCst)
    }

    fn stop_accepting(&mut self) -> Vec<std::thread::JoinHandle<()>> {
        let Some(acceptor) = self.acceptor.take() else {
            return Vec::new();
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = UnixStream::connect(&self.path);
        acceptor.join().unwrap()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

/// `berth content ingest REFERENCE` killed once contentd holds `data`:
/// the ingest is left behind with no writer.
fn interrupted_ingest(sock: &std::path::Path, reference: &str, data: &[u8]) {
    let mut child = Command::new(binary("berth"))
        .env("BERTH_CONTENTD_ADDRESS", sock)
        .args(["content", "ingest", reference])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(data).unwrap();
    stdin.flush().unwrap();
    wait_for_offset(sock, reference, data.len() as u64);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_interrupted_ingest_resumes_without_resending() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::contentd(dir.path());
    let source = BlockSource::new(1024 * 1024);
    let blocks: Vec<Vec<u8>> = (0..40).map(|i| source.block(i)).collect();
    let mut hasher = Sha256Hasher::new();
    for b in &blocks {
        hasher.update(b);
    }
    let digest = hasher.finalize();
    let first_part = 25 * 1024 * 1024;

    let mut child = Command::new(binary("berth"))
        .env("BERTH_CONTENTD_ADDRESS", &daemon.socket)
        .args([
            "content",
            "ingest",
            "resumable",
            "--expected",
            digest.as_str(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for b in &blocks[..25] {
        stdin.write_all(b).unwrap();
    }
    stdin.flush().unwrap();
    wait_for_offset(&daemon.socket, "resumable", first_part);
    // The daemon crashes with the client.
    daemon.kill();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    daemon.restart();
    // contentd itself holds the first part after the crash.
    wait_for_offset(&daemon.socket, "resumable", first_part);

    // The second run's standard input has the right length, but its first
    // part is garbage: only an ingest that resumes at the stored offset,
    // skipping what it already holds, commits to the expected digest. Had
    // the CLI sent the first part again (from offset 0, contentd restarts
    // the ingest), the garbage would be stored and the digest would not
    // match.
    let mut input = vec![0x5a; first_part as usize];
    for b in &blocks[25..] {
        input.extend_from_slice(b);
    }
    let total = input.len() as u64;
    // Through a proxy that counts what the CLI sends to contentd.
    let proxy = CountingProxy::start(&dir.path().join("proxy.sock"), &daemon.socket);
    let (ok, out, err) = berth(
        &proxy.path,
        &[
            "content",
            "ingest",
            "resumable",
            "--expected",
            digest.as_str(),
        ],
        Some(&input),
    );
    let sent = proxy.finish();
    // Counted in bytes: the CLI sent contentd the rest of the blob and its
    // requests' framing, less than the rest plus one more 1 MiB write.
    let rest = total - first_part;
    eprintln!("the CLI sent contentd {sent} bytes; {rest} were missing");
    assert!(
        sent < rest + 1024 * 1024,
        "the CLI sent contentd {sent} bytes to resume an ingest missing {rest}: {err}"
    );
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("resuming resumable at offset {first_part}")),
        "{err}"
    );
    assert_eq!(text(&out).trim(), digest.as_str());
    let (ok, out, _) = berth(&daemon.socket, &["content", "get", digest.as_str()], None);
    assert!(ok);
    assert_eq!(Digest::of(&out), digest);
}

#[test]
fn a_leftover_ingest_is_started_afresh_without_an_expected_digest() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::contentd(dir.path());
    // An interrupted ingest leaves 1 MiB of other bytes under the ref.
    interrupted_ingest(&daemon.socket, "leftover", &vec![b'x'; 1024 * 1024]);
    // Restarted, contentd holds the ingest with no writer attached (left
    // running, it may not have seen the dead client let go of it yet).
    daemon.kill();
    daemon.restart();

    // Without --expected nothing can tell whether the held bytes are the
    // start of this input: they are dropped, and the blob stored is
    // exactly the new input, not the old prefix with the new tail.
    let fresh: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (ok, out, err) = berth(
        &daemon.socket,
        &["content", "ingest", "leftover"],
        Some(&fresh),
    );
    assert!(ok, "{err}");
    assert!(err.contains("restarting leftover"), "{err}");
    let digest = Digest::of(&fresh);
    assert_eq!(text(&out).trim(), digest.as_str());
    let (ok, out, _) = berth(&daemon.socket, &["content", "get", digest.as_str()], None);
    assert!(ok);
    assert_eq!(out, fresh);
}

/// `berth content ingest --expected DIGEST REFERENCE < FILE`.
fn ingest_from_file(
    socket: &Path,
    reference: &str,
    digest: &Digest,
    file: &Path,
) -> std::process::Output {
    Command::new(binary("berth"))
        .env("BERTH_CONTENTD_ADDRESS", socket)
        .env_remove("BERTH_NAMESPACE")
        .args([
            "content",
            "ingest",
            "--expected",
            digest.as_str(),
            reference,
        ])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .unwrap()
}

/// `berth content ingest < FILE` resuming an interrupted ingest: standard
/// input is a file, handed to contentd past what it already holds (the
/// CLI seeks over those bytes instead of reading them). The file's first
/// part is garbage: only a resume that skips exactly what contentd holds
/// commits to the expected digest.
#[test]
fn a_resumed_ingest_from_a_file_skips_what_contentd_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::contentd(dir.path());
    let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let digest = Digest::of(&data);
    let held = 1024 * 1024;
    interrupted_ingest(&daemon.socket, "from-file", &data[..held]);
    daemon.kill();
    daemon.restart();

    let path = dir.path().join("input");
    let mut input = vec![0x5a; held];
    input.extend_from_slice(&data[held..]);
    std::fs::write(&path, &input).unwrap();
    let out = ingest_from_file(&daemon.socket, "from-file", &digest, &path);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("resuming from-file at offset {held}")),
        "{err}"
    );
    assert_eq!(text(&out.stdout).trim(), digest.as_str());
    let (ok, got, _) = berth(&daemon.socket, &["content", "get", digest.as_str()], None);
    assert!(ok);
    assert_eq!(got, data);

    // Shorter than what contentd holds: refused, as from a pipe.
    let other: Vec<u8> = data.iter().map(|b| b ^ 0xff).collect();
    let digest = Digest::of(&other);
    interrupted_ingest(&daemon.socket, "short-file", &other[..held]);
    daemon.kill();
    daemon.restart();
    std::fs::write(&path, &other[..held / 2]).unwrap();
    let out = ingest_from_file(&daemon.socket, "short-file", &digest, &path);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("shorter than what the ingest already holds"),
        "{}",
        text(&out.stderr)
    );
}

/// An ingest of a blob that is stored already (an ingest cut off after
/// contentd committed it, run again) succeeds, as `ctr content ingest`
/// does, adds its labels, and leaves no ingest behind.
#[test]
fn ingesting_a_stored_blob_again_succeeds_and_adds_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let sock = &daemon.socket;
    let data = b"stored once\n";
    let digest = Digest::of(data);
    let (ok, out, err) = berth(
        sock,
        &["content", "ingest", "first", "--expected", digest.as_str()],
        Some(data),
    );
    assert!(ok, "{err}");
    assert_eq!(text(&out).trim(), digest.as_str());
    for (reference, label) in [("again", "keep=yes"), ("third", "team=core")] {
        let (ok, out, err) = berth(
            sock,
            &[
                "content",
                "ingest",
                reference,
                "--expected",
                digest.as_str(),
                "--label",
                label,
            ],
            Some(data),
        );
        assert!(ok, "{reference}: {err}");
        assert_eq!(text(&out).trim(), digest.as_str());
    }
    let (ok, out, _) = berth(sock, &["content", "ls", "--format", "json"], None);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json[0]["labels"]["keep"], "yes", "{json}");
    assert_eq!(json[0]["labels"]["team"], "core", "{json}");
    let (ok, out, _) = berth(sock, &["content", "active"], None);
    assert!(ok);
    assert!(!text(&out).contains("again"), "{}", text(&out));
}
