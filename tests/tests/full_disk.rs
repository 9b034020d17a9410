#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A full disk (issue 15): every daemon's root on one small ext4 (no
//! reserved blocks, so root fills it too), filled with a ballast file.
//! Pulls, ingests and record writes then fail with an error that says the
//! disk is full, nothing half-written becomes visible, no daemon dies, and
//! once the ballast is gone the same work succeeds.

use std::os::unix::fs::FileExt;
use std::path::Path;

use berth_e2e::images::{busybox_rootfs, files_rootfs, Layout};
use berth_e2e::registry::Registry;
use berth_e2e::stack::Stack;
use berth_e2e::BlockSource;
use berth_ids::Digest;
use berth_snapshot::loop_mount::LoopMount;

/// Bytes still free for root on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(dir).unwrap();
    stat.blocks_available() * stat.fragment_size()
}

/// Grows `ballast` until at most `leave` bytes are free (written, not just
/// allocated, in 1 MiB steps; the last step may stop short with ENOSPC).
fn fill(ballast: &Path, leave: u64) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ballast)
        .unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    loop {
        let free = free_bytes(ballast.parent().unwrap());
        if free <= leave {
            break;
        }
        let len = (free - leave).min(chunk.len() as u64) as usize;
        let at = file.metadata().unwrap().len();
        match file.write_at(&chunk[..len], at) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
        file.sync_all().unwrap();
    }
}

/// `berth content ingest` of `blob` (checked against its digest) under
/// one ref, so a second try resumes the first. The blob is a GC root:
/// nothing else refers to it, and metad's collection (which the pulls
/// set off) would otherwise take it before the test looks for it.
fn ingest(stack: &Stack, blob: &[u8]) -> std::process::Output {
    let digest = Digest::of(blob);
    stack.berth_output(
        &[
            "content",
            "ingest",
            "--expected",
            digest.as_str(),
            "--label",
            "containerd.io/gc.root=full-disk-test",
            "full-ingest",
        ],
        Some(blob.to_vec()),
    )
}

fn says_full(err: &str) -> bool {
    err.contains("No space left on device") || err.contains("is full")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_work_clearly_and_work_resumes_once_space_is_freed() {
    if !berth_e2e::pull_prerequisites() {
        return;
    }
    let Some(fs) = LoopMount::new("mkfs.ext4", &["-q", "-F", "-m", "0"], 160 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // An image with a 24 MiB incompressible layer, and a blob of 16 MiB.
    let registry = Registry::start(&dir.path().join("registry"), None);
    let mut layout = Layout::new(&dir.path().join("layout"));
    let base = layout.add_layer(&busybox_rootfs(&dir.path().join("base"), &[]));
    let big = layout.add_layer(&files_rootfs(
        &dir.path().join("big"),
        &[("data/big", BlockSource::new(24 << 20).block(5))],
    ));
    let manifest = layout.add_image(&[base, big.clone()], "amd64", false);
    layout.tag("v1", &manifest);
    let reference = format!("{}/full/disk:v1", registry.host);
    layout.push("v1", &reference, None, false);
    let blob = BlockSource::new(16 << 20).block(6);
    let blob_digest = Digest::of(&blob);

    // The daemons (dropped before the filesystem, declared before them).
    let stack = Stack::start(&fs.dir.join("stack"));
    let ballast = fs.dir.join("ballast");
    fill(&ballast, 4 << 20);

    // A pull: a clear error, no image, no layer, no snapshot of it.
    let (ok, _, err) = stack.berth(&["pull", "--quiet", &reference]);
    assert!(!ok, "the pull succeeded on a full disk");
    assert!(says_full(&err), "{err}");
    eprintln!("pull: {}", err.trim());
    let images = stack.berth_json(&["images", "ls"]);
    assert_eq!(images.as_array().unwrap().len(), 0, "{images}");
    let (ok, _, _) = stack.berth(&["content", "info", &big.0.digest.to_string()]);
    assert!(!ok, "the big layer is visible");
    // An unpack the failed pull had started ends on its own (snapd does
    // not drop it when its caller hangs up): committed, or its scratch
    // snapshot removed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let snapshots = loop {
        let snapshots = stack.berth_json(&["snapshots", "ls"]);
        let list = snapshots.as_array().unwrap();
        if list.iter().all(|s| s["kind"] == "committed") {
            break snapshots;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a scratch snapshot was left: {snapshots}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // At most the base layer's: never the big one's.
    assert!(snapshots.as_array().unwrap().len() <= 1, "{snapshots}");

    // An ingest: a clear error, and the blob is not there.
    let out = ingest(&stack, &blob);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the ingest succeeded on a full disk");
    assert!(says_full(&err), "{err}");
    eprintln!("ingest: {}", err.trim());
    let (ok, _, _) = stack.berth(&["content", "info", blob_digest.as_str()]);
    assert!(!ok, "a blob that did not fit is visible");

    // Record writes with no byte left: done or refused, never half done.
    fill(&ballast, 0);
    for i in 0..64 {
        let name = format!("full-{i}");
        let (ok, _, err) = stack.berth(&["namespaces", "create", &name]);
        let listed = stack.berth_json(&["namespaces", "ls"]).to_string();
        if ok {
            assert!(listed.contains(&name), "{name} created but not listed");
        } else {
            assert!(says_full(&err), "{err}");
            assert!(
                !listed.contains(&format!("\"{name}\"")),
                "{name} refused but listed"
            );
            eprintln!("namespace {i}: {}", err.trim());
            break;
        }
    }
    for daemon in [&stack.contentd, &stack.snapd, &stack.metad, &stack.taskd] {
        assert!(
            berth_e2e::alive(daemon.pid()),
            "a daemon died: {}",
            daemon.log_text()
        );
    }

    // Space again: the same work succeeds.
    std::fs::remove_file(&ballast).unwrap();
    let (ok, _, err) = stack.berth(&["pull", "--quiet", &reference]);
    assert!(ok, "the pull after freeing space: {err}");
    let (ok, out, _) = stack.berth(&["unpack", &reference]);
    assert!(ok);
    assert!(!out.trim().is_empty());
    let (ok, _, err) = stack.berth(&["namespaces", "create", "after-full"]);
    assert!(ok, "{err}");
    let out = ingest(&stack, &blob);
    assert!(
        out.status.success(),
        "the ingest after freeing space: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _, err) = stack.berth(&["content", "info", blob_digest.as_str()]);
    assert!(ok, "{err}");
}
