#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `berth content ...` against a real berth-contentd.

use std::io::Write;
use std::process::{Command, Stdio};
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
    let mut child = Command::new(binary("berth"))
        .env("BERTH_CONTENTD_ADDRESS", sock)
        .args(["content", "ingest", "half-done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&vec![7u8; 3 * 1024 * 1024]).unwrap();
    stdin.flush().unwrap();
    wait_for_offset(sock, "half-done", 3 * 1024 * 1024);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);

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

    let all: Vec<u8> = blocks.concat();
    let (ok, out, err) = berth(
        &daemon.socket,
        &[
            "content",
            "ingest",
            "resumable",
            "--expected",
            digest.as_str(),
        ],
        Some(&all),
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
