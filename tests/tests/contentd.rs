#![allow(clippy::unwrap_used, clippy::expect_used)]
//! berth-contentd as a process: memory bounds, crashes, bad input, sockets,
//! permissions, signals and systemd integration.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_api::content as pb;
use berth_client::{request_context, RemoteContentStore};
use berth_content::{read_blob, CommitOptions, ContentStore, WriterOptions, MAX_READ};
use berth_e2e::{berth, binary, is_root, require, BlockSource, Daemon};
use berth_errdefs::{Error, ErrorKind};
use berth_ids::{Digest, Sha256Hasher};

const MIB: u64 = 1024 * 1024;

async fn connect(daemon: &Daemon) -> RemoteContentStore {
    RemoteContentStore::connect(&daemon.socket)
        .await
        .expect("connect to contentd")
}

/// Writes blocks `from..to` of `source`, returning nothing; the hasher
/// follows along.
async fn write_blocks(
    writer: &mut Box<dyn berth_content::ContentWriter>,
    source: &BlockSource,
    range: std::ops::Range<u64>,
    hasher: &mut Sha256Hasher,
) {
    for i in range {
        let block = source.block(i);
        hasher.update(&block);
        writer.write(block).await.expect("write");
    }
}

/// Reads a whole blob through the pipelined read path, hashing as it goes.
async fn digest_by_reading(
    store: &RemoteContentStore,
    ns: &str,
    digest: &Digest,
    size: u64,
) -> Digest {
    let mut hasher = Sha256Hasher::new();
    let mut offset = 0;
    while offset < size {
        let chunk = store
            .read_at(ns, digest, offset, MAX_READ)
            .await
            .expect("read");
        assert!(!chunk.is_empty());
        hasher.update(&chunk);
        offset += chunk.len() as u64;
    }
    hasher.finalize()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_ingest_and_read_with_bounded_daemon_memory() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let store = connect(&daemon).await;
    let source = BlockSource::new(MIB as usize);
    let blocks = 1024;
    let mut writer = store
        .writer("default", WriterOptions::new("big").total(blocks * MIB))
        .await
        .unwrap();
    let mut hasher = Sha256Hasher::new();
    write_blocks(&mut writer, &source, 0..blocks, &mut hasher).await;
    let expected = hasher.finalize();
    let digest = writer
        .commit(CommitOptions {
            expected: Some(expected.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(digest, expected);
    assert_eq!(
        store.info("default", &digest).await.unwrap().size,
        blocks * MIB
    );
    assert_eq!(
        digest_by_reading(&store, "default", &digest, blocks * MIB).await,
        expected
    );
    let peak = daemon.peak_rss_kib();
    // The daemon holds a window of chunks, not the blob.
    assert!(
        peak < 128 * 1024,
        "contentd peaked at {peak} KiB for a 1 GiB blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_ingest_then_resume_from_the_stored_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::contentd(dir.path());
    let store = connect(&daemon).await;
    let source = BlockSource::new(MIB as usize);
    let (written, total) = (100, 130);
    let mut writer = store
        .writer("default", WriterOptions::new("crashy").total(total * MIB))
        .await
        .unwrap();
    let mut hasher = Sha256Hasher::new();
    write_blocks(&mut writer, &source, 0..written, &mut hasher).await;
    // Wait until the daemon has everything sent so far, then crash it.
    assert_eq!(writer.status().await.unwrap().offset, written * MIB);
    daemon.kill();
    drop(writer);
    daemon.restart();
    let store = connect(&daemon).await;

    let status = store.status("default", "crashy").await.unwrap();
    assert_eq!(status.offset, written * MIB);
    assert_eq!(status.total, total * MIB);
    let mut writer = store
        .writer("default", WriterOptions::new("crashy"))
        .await
        .unwrap();
    assert_eq!(writer.status().await.unwrap().offset, written * MIB);
    // The daemon resumed from its last hash checkpoint (at 64 MiB), not by
    // re-reading the whole ingest.
    let log = daemon.log_text();
    let rehashed: u64 = log
        .lines()
        .rev()
        .filter(|l| l.contains("resumed ingest"))
        .filter_map(|l| l.split("rehashed=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next()
        .expect("resume is logged");
    assert_eq!(rehashed, (written - 64) * MIB, "{log}");

    write_blocks(&mut writer, &source, written..total, &mut hasher).await;
    let expected = hasher.finalize();
    let digest = writer
        .commit(CommitOptions {
            expected: Some(expected.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(digest, expected);
    assert_eq!(
        digest_by_reading(&store, "default", &digest, total * MIB).await,
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_blobs_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::contentd(dir.path());
    let store = connect(&daemon).await;
    let mut digests = Vec::new();
    for i in 0..50u8 {
        let data = vec![i; 1000 + i as usize];
        digests.push((
            berth_content::write_blob(
                &store,
                "default",
                &format!("b{i}"),
                &data,
                None,
                Default::default(),
            )
            .await
            .unwrap(),
            data,
        ));
    }
    daemon.kill();
    daemon.restart();
    let store = connect(&daemon).await;
    for (digest, data) in &digests {
        assert_eq!(
            &read_blob(&store, "default", digest, 1 << 20).await.unwrap(),
            data
        );
    }
    assert_eq!(
        store.list("default", &[]).await.unwrap().len(),
        digests.len()
    );
}

/// Names and sizes of every file under `dir` except LMDB's, whose pages
/// may move without meaning anything.
fn tree(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let name = entry
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string();
            if meta.is_dir() {
                stack.push(entry.path());
                out.insert(format!("{name}/"), 0);
            } else if !name.starts_with("meta/") {
                out.insert(name, meta.len());
            }
        }
    }
    out
}

fn kind_of<T: std::fmt::Debug>(result: Result<T, ttrpc::Error>) -> ErrorKind {
    Error::from(result.expect_err("request must fail")).kind()
}

/// One WRITE_FILE on an open write stream: `passed` goes with the request
/// (SCM_RIGHTS), `named` is the file the request says it is.
async fn write_file_request(
    outbox: &berth_client::FileOutbox,
    tx: &ttrpc::r#async::CSSender<pb::WriteRequest>,
    rx: &mut ttrpc::r#async::CSReceiver<pb::WriteResponse>,
    passed: &std::fs::File,
    named: &std::fs::File,
    offset: u64,
) -> pb::WriteResponse {
    use std::os::fd::AsFd;
    let meta = named.metadata().unwrap();
    outbox.pass(passed.as_fd()).unwrap();
    tx.send(&pb::WriteRequest {
        action: pb::WriteAction::WRITE_FILE.into(),
        offset: offset as i64,
        source: Some(pb::FileSource {
            device: meta.dev(),
            inode: meta.ino(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .await
    .unwrap();
    rx.recv().await.unwrap()
}

/// A caller on the host can pass contentd a file instead of its bytes:
/// contentd reads a regular file on a disk or memory filesystem itself,
/// through the caller's own open file (so it can read nothing the caller
/// could not), and refuses anything else with its reason and the ingest as
/// it was, for the caller to send the bytes instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contentd_reads_a_passed_file_itself_and_refuses_what_it_should_not() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let (client, outbox) = berth_client::connect_passing_files(&daemon.socket)
        .await
        .unwrap();
    let raw = pb::ContentClient::new(client);
    let (tx, mut rx) = raw.write(request_context("default")).await.unwrap().split();
    tx.send(&pb::WriteRequest {
        action: pb::WriteAction::STAT.into(),
        ref_: "passed".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(rx.recv().await.unwrap().offset, 0);

    let data = berth_content::testsuite::test_data(5 * MIB as usize + 3, 21);
    let skipped = 4096;
    let file_path = dir.path().join("blob");
    let mut file = std::fs::File::create_new(&file_path).unwrap();
    file.write_all(&vec![7u8; skipped]).unwrap();
    file.write_all(&data).unwrap();
    let file = std::fs::File::open(&file_path).unwrap();
    (&file).seek(SeekFrom::Start(skipped as u64)).unwrap();

    let refused = |r: &pb::WriteResponse, why: &str| {
        assert!(r.source_refused.contains(why), "{why:?}: {r:?}");
        assert_eq!(r.offset, 0, "a refusal leaves the ingest as it was");
    };
    // A socket (or a pipe) is not read: contentd would wait on whoever
    // holds its other end. It is not even kept: only regular files are.
    let (pipe, _other_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let pipe = std::fs::File::from(std::os::fd::OwnedFd::from(pipe));
    let r = write_file_request(&outbox, &tx, &mut rx, &pipe, &pipe, 0).await;
    refused(&r, "no descriptor");
    // procfs answers by who reads: not read for a caller.
    let status = std::fs::File::open("/proc/self/status").unwrap();
    let r = write_file_request(&outbox, &tx, &mut rx, &status, &status, 0).await;
    refused(&r, "filesystem");
    // A file the caller may not read through this descriptor.
    let write_only = std::fs::OpenOptions::new()
        .write(true)
        .open(&file_path)
        .unwrap();
    let r = write_file_request(&outbox, &tx, &mut rx, &write_only, &write_only, 0).await;
    refused(&r, "not open for reading");
    // A sparse file: contentd would write what its holes read as, at no
    // cost to the caller.
    let sparse = tempfile::tempfile_in(dir.path()).unwrap();
    sparse.set_len(64 * MIB).unwrap();
    let r = write_file_request(&outbox, &tx, &mut rx, &sparse, &sparse, 0).await;
    refused(&r, "sparse");
    // The request names one file and passes another: not taken.
    let other = tempfile::tempfile_in(dir.path()).unwrap();
    let r = write_file_request(&outbox, &tx, &mut rx, &other, &file, 0).await;
    refused(&r, "no descriptor");
    // Named and passed: read from its position to its end.
    let r = write_file_request(&outbox, &tx, &mut rx, &file, &file, 0).await;
    assert_eq!(r.source_refused, "", "{r:?}");
    assert_eq!(r.offset, data.len() as i64);
    assert_eq!(
        (&file).stream_position().unwrap(),
        (skipped + data.len()) as u64,
        "contentd read through the caller's own open file"
    );
    let digest = Digest::of(&data);
    tx.send(&pb::WriteRequest {
        action: pb::WriteAction::COMMIT.into(),
        offset: data.len() as i64,
        expected: digest.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(rx.recv().await.unwrap().digest, digest.to_string());
    let store = connect(&daemon).await;
    assert_eq!(
        read_blob(&store, "default", &digest, u64::MAX)
            .await
            .unwrap(),
        data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let store = connect(&daemon).await;
    let digest = berth_content::write_blob(
        &store,
        "default",
        "keep",
        b"keep me",
        None,
        Default::default(),
    )
    .await
    .unwrap();
    let before = tree(&daemon.root);
    let raw = store.raw();
    let ctx = || request_context("default");

    for bad in [
        "",
        "sha256:",
        "sha256:../../../../etc/passwd",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        &format!("{digest}/../x"),
    ] {
        let info = pb::InfoRequest {
            digest: bad.to_string(),
            ..Default::default()
        };
        assert_eq!(
            kind_of(raw.info(ctx(), &info).await),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
        let read = pb::ReadAtRequest {
            digest: bad.to_string(),
            ..Default::default()
        };
        assert_eq!(
            kind_of(raw.read_at(ctx(), &read).await),
            ErrorKind::InvalidArgument
        );
        let delete = pb::DeleteRequest {
            digest: bad.to_string(),
            ..Default::default()
        };
        assert_eq!(
            kind_of(raw.delete(ctx(), &delete).await),
            ErrorKind::InvalidArgument
        );
    }
    let negative = pb::ReadAtRequest {
        digest: digest.to_string(),
        offset: -1,
        ..Default::default()
    };
    assert_eq!(
        kind_of(raw.read_at(ctx(), &negative).await),
        ErrorKind::InvalidArgument
    );

    // Namespaces from the metadata are validated like everything else.
    for ns in ["../x", "a/b", "..", "-"] {
        let info = pb::InfoRequest {
            digest: digest.to_string(),
            ..Default::default()
        };
        assert_eq!(
            kind_of(raw.info(request_context(ns), &info).await),
            ErrorKind::InvalidArgument,
            "{ns:?}"
        );
        let err = berth_content::write_blob(&store, ns, "r", b"x", None, Default::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    // Refs that look like paths never open an ingest.
    for reference in ["../../x", "/etc/passwd", "a/../../b", ".."] {
        let err = store
            .writer("default", WriterOptions::new(reference))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{reference:?}");
    }
    // Oversized labels on commit and on update.
    let huge: std::collections::HashMap<String, String> =
        [("k".to_string(), "v".repeat(5000))].into_iter().collect();
    let err = berth_content::write_blob(&store, "default", "labels", b"other", None, huge.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        store
            .info("default", &Digest::of(b"other"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    // The data written before the refused commit stays as a resumable
    // ingest, as a failed digest check leaves it; it is the caller's to
    // retry or abort.
    assert_eq!(store.status("default", "labels").await.unwrap().offset, 5);
    // The refused writer checkpoints what it wrote before it lets go of
    // the ref; until then abort says the ref is locked.
    let mut aborted = false;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < give_up {
        match store.abort("default", "labels").await {
            Ok(()) => {
                aborted = true;
                break;
            }
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(aborted, "the ref stayed locked");
    let mut info = store.info("default", &digest).await.unwrap();
    info.labels = huge;
    assert_eq!(
        store.update("default", info, &[]).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    // A write stream whose first request names no ref.
    let stream = raw.write(ctx()).await.unwrap();
    let (sender, mut receiver) = stream.split();
    sender.send(&pb::WriteRequest::default()).await.unwrap();
    // The failure comes first as the stream's last message, then as the
    // status it ends with.
    let last = receiver.recv().await.unwrap();
    assert_eq!(
        last.error_code,
        ttrpc::Code::INVALID_ARGUMENT as i32,
        "{last:?}"
    );
    assert!(last.error_message.contains("must name a ref"), "{last:?}");
    assert_eq!(kind_of(receiver.recv().await), ErrorKind::InvalidArgument);

    // Nothing changed, inside the root or beside it.
    let after = tree(&daemon.root);
    let leftover_ingests: Vec<_> = after
        .keys()
        .filter(|k| k.starts_with("ingest/") && !before.contains_key(*k))
        .collect();
    assert!(leftover_ingests.is_empty(), "{leftover_ingests:?}");
    assert_eq!(before, after);
    assert!(!dir.path().join("x").exists());
    assert!(!daemon.root.join("x").exists());
    assert!(store
        .list_statuses("default", &[])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.list("default", &[]).await.unwrap().len(), 1);
}

/// The daemon's socket is a file (never abstract: CVE-2020-15257), 0660 in
/// a 0711 directory; its root, state and store directories are 0700
/// (CVE-2021-41103).
#[test]
fn sockets_and_directories_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&daemon.socket), 0o660);
    assert_eq!(mode(daemon.socket.parent().unwrap()), 0o711);
    assert_eq!(mode(&daemon.root), 0o700);
    assert_eq!(mode(&daemon.state), 0o700);
    // Every directory and blob under the root is private or read-only.
    for sub in ["blobs", "blobs/sha256", "ingest", "meta"] {
        assert_eq!(mode(&daemon.root.join(sub)), 0o700, "{sub}");
    }
    // The socket is a path, never in the abstract namespace.
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    assert!(unix.contains(daemon.socket.to_str().unwrap()));
    let inode_lines: Vec<_> = unix.lines().filter(|l| l.contains(" @")).collect();
    let pid = daemon.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    for fd in fds {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        let target = target.display().to_string();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            assert!(
                !inode_lines
                    .iter()
                    .any(|l| l.split_whitespace().nth(6) == Some(inode)),
                "contentd holds an abstract socket"
            );
        }
    }
}

/// Runs the berth CLI as another user against `socket`.
fn berth_as(uid: u32, gid: u32, socket: &Path, args: &[&str]) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new(binary("berth"))
        .env("BERTH_CONTENTD_ADDRESS", socket)
        .args(args)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .output()
        .expect("running berth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Opens the directories on the way to the socket so only the daemon's
/// credential check stands between another user and it.
fn open_up(dir: &Path, socket: &Path) {
    for d in [dir, socket.parent().unwrap()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// What acting as users of the test's own needs: root, the passwd and
/// util-linux tools, and a berth binary other users can reach. False
/// (skip) outside CI when missing.
fn can_act_as_other_users() -> bool {
    require(is_root(), "needs root to add users and act as them")
        && require(
            ["useradd", "userdel", "groupadd", "groupdel", "setpriv"]
                .iter()
                .all(|tool| berth_e2e::on_path(tool)),
            "needs useradd, userdel, groupadd, groupdel (passwd) and setpriv (util-linux)",
        )
        && require(
            other_user_can_run_berth(),
            "other users cannot reach target/debug/berth",
        )
}

fn other_user_can_run_berth() -> bool {
    // The test binaries must be reachable by uid 65534.
    binary("berth").ancestors().all(|p| {
        std::fs::metadata(p)
            .map(|m| m.mode() & 0o001 != 0 || p.as_os_str().is_empty())
            .unwrap_or(true)
    })
}

#[test]
fn callers_other_than_root_the_daemon_user_or_its_group_are_refused() {
    if !require(is_root(), "needs root to act as another user") {
        return;
    }
    if !require(
        other_user_can_run_berth(),
        "uid 65534 cannot reach target/debug/berth",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    open_up(dir.path(), &daemon.socket);
    let (ok, stderr) = berth_as(65534, 65534, &daemon.socket, &["content", "ls"]);
    assert!(!ok, "uid 65534 was served");
    assert!(stderr.starts_with("berth: "), "{stderr}");
    assert!(daemon.log_text().contains("refused connection"));
    // Root is served on the same socket.
    let (ok, stderr) = berth_as(0, 0, &daemon.socket, &["content", "ls"]);
    assert!(ok, "{stderr}");
    drop(daemon);

    // With --socket-group, members of that group are served.
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        Daemon::start_with_args("berth-contentd", dir.path(), &["--socket-group", "65534"]);
    open_up(dir.path(), &daemon.socket);
    assert_eq!(std::fs::metadata(&daemon.socket).unwrap().gid(), 65534);
    let (ok, stderr) = berth_as(65534, 65534, &daemon.socket, &["content", "ls"]);
    assert!(ok, "{stderr}");
}

/// Users and groups made for one test with the shadow tools, removed again
/// when dropped, also when the test fails half-way.
#[derive(Default)]
struct Accounts {
    users: Vec<String>,
    groups: Vec<String>,
}

/// A user of [`Accounts`]: its name, uid and primary gid.
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

impl Accounts {
    /// A name unique to this test process; `useradd` takes at most 32 bytes.
    fn name(role: &str) -> String {
        format!("berth-t{}-{role}", std::process::id())
    }

    /// A new group; returns its name and gid.
    fn group(&mut self, role: &str) -> (String, u32) {
        let name = Accounts::name(role);
        if nix::unistd::Group::from_name(&name).unwrap().is_some() {
            // Left by an earlier run that died with this pid.
            shadow_tool(&["groupdel", &name]);
        }
        shadow_tool(&["groupadd", &name]);
        self.groups.push(name.clone());
        let group = nix::unistd::Group::from_name(&name).unwrap().unwrap();
        (name, group.gid.as_raw())
    }

    /// A new user without a home, whose primary group is nogroup (65534)
    /// and who is a supplementary member of `groups` (by name).
    fn user(&mut self, role: &str, groups: &[&str]) -> Account {
        let name = Accounts::name(role);
        if nix::unistd::User::from_name(&name).unwrap().is_some() {
            shadow_tool(&["userdel", &name]);
        }
        let joined = groups.join(",");
        let mut args = vec![
            "useradd",
            "--no-create-home",
            "--no-user-group",
            "--gid",
            "65534",
            "--shell",
            "/usr/sbin/nologin",
        ];
        if !groups.is_empty() {
            args.extend(["--groups", joined.as_str()]);
        }
        args.push(&name);
        shadow_tool(&args);
        self.users.push(name.clone());
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        Account {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in self.users.drain(..).rev() {
            if let Err(e) = try_shadow_tool(&["userdel", &user]) {
                eprintln!("could not remove test user {user}: {e}");
            }
        }
        for group in self.groups.drain(..).rev() {
            if let Err(e) = try_shadow_tool(&["groupdel", &group]) {
                eprintln!("could not remove test group {group}: {e}");
            }
        }
    }
}

/// Runs useradd & co, retrying while another process holds /etc/passwd's
/// lock (their exit code 10).
fn try_shadow_tool(args: &[&str]) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..50 {
        let out = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", args[0]))?;
        if out.status.success() {
            return Ok(());
        }
        last = format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        if out.status.code() != Some(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

fn shadow_tool(args: &[&str]) {
    if let Err(e) = try_shadow_tool(args) {
        panic!("{e}");
    }
}

/// Runs the berth CLI as `user` with the supplementary groups a login gives
/// that user (`setpriv --init-groups`), unlike `berth_as`, which drops them
/// all. Returns (exit ok, stdout, stderr).
/// Runs `berth` as `user`, with the supplementary groups `groups` sets:
/// setpriv's `--init-groups` (as a login would: the group database's),
/// `--clear-groups`, or `--groups=GID,...`.
fn berth_as_user(
    user: &Account,
    groups: &str,
    socket: &Path,
    args: &[&str],
    stdin: &[u8],
) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg(groups)
        .arg("--")
        .arg(binary("berth"))
        .args(args)
        .env("BERTH_CONTENTD_ADDRESS", socket)
        .env_remove("BERTH_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running setpriv");
    let mut pipe = child.stdin.take().unwrap();
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The daemon's log lines refusing a connection from `uid`.
fn refusals_of(daemon: &Daemon, uid: u32) -> usize {
    daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("refused connection") && l.contains(&format!("uid={uid} ")))
        .count()
}

#[test]
fn socket_group_admits_supplementary_members_and_no_one_else() {
    if !can_act_as_other_users() {
        return;
    }
    let mut accounts = Accounts::default();
    let (group, gid) = accounts.group("g");
    // In the group only through /etc/group, never as a primary group.
    let member = accounts.user("m", &[&group]);
    let outsider = accounts.user("o", &[]);
    assert_ne!(member.gid, gid);

    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_args("berth-contentd", dir.path(), &["--socket-group", &group]);
    // Only the temp dir is opened up: the daemon's 0711 directory and its
    // 0660 socket owned by the group are as the daemon made them.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, gid));

    // The member is served: a blob it writes is stored.
    let data = b"written by a member of the socket group\n";
    let (ok, out, stderr) = berth_as_user(
        &member,
        "--init-groups",
        &daemon.socket,
        &["content", "ingest", "by-member"],
        data,
    );
    assert!(
        ok,
        "{} (in --socket-group) was refused: {stderr}",
        member.name
    );
    assert_eq!(out.trim(), Digest::of(data).as_str());
    // Root is served, and sees the member's blob.
    let (ok, out, stderr) = berth(&daemon.socket, &["content", "ls", "-q"], None);
    assert!(ok, "{stderr}");
    assert!(
        String::from_utf8_lossy(&out).contains(Digest::of(data).as_str()),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // The outsider is stopped by the socket's mode before the daemon sees it.
    let (ok, _, stderr) = berth_as_user(
        &outsider,
        "--init-groups",
        &daemon.socket,
        &["content", "ls"],
        b"",
    );
    assert!(!ok, "a caller outside --socket-group was served");
    assert!(stderr.contains("ermission denied"), "{stderr}");

    // With the socket open to all, only the daemon's own check stands
    // between a caller and it: it still serves the member and refuses the
    // outsider.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, out, stderr) = berth_as_user(
        &member,
        "--init-groups",
        &daemon.socket,
        &["content", "ls", "-q"],
        b"",
    );
    assert!(
        ok,
        "{} (in --socket-group) was refused: {stderr}",
        member.name
    );
    assert!(out.contains(Digest::of(data).as_str()), "{out}");
    let (ok, out, stderr) = berth_as_user(
        &outsider,
        "--init-groups",
        &daemon.socket,
        &["content", "ls", "-q"],
        b"",
    );
    assert!(
        !ok,
        "a caller outside --socket-group was served by the daemon: {out}"
    );
    assert!(stderr.starts_with("berth: "), "{stderr}");
    assert_eq!(
        refusals_of(&daemon, outsider.uid),
        1,
        "{}",
        daemon.log_text()
    );
    assert_eq!(refusals_of(&daemon, member.uid), 0, "{}", daemon.log_text());
    // The groups that count are the calling process's, not the group
    // database's: the member without its groups is refused, the outsider
    // given the group is served.
    let (ok, out, _) = berth_as_user(
        &member,
        "--clear-groups",
        &daemon.socket,
        &["content", "ls", "-q"],
        b"",
    );
    assert!(!ok, "a member that dropped the group was served: {out}");
    assert_eq!(refusals_of(&daemon, member.uid), 1, "{}", daemon.log_text());
    let (ok, out, stderr) = berth_as_user(
        &outsider,
        &format!("--groups={gid}"),
        &daemon.socket,
        &["content", "ls", "-q"],
        b"",
    );
    assert!(ok, "a caller given the group was refused: {stderr}");
    assert!(out.contains(Digest::of(data).as_str()), "{out}");
    // More supplementary groups than the daemon's first guess (64): the
    // socket group, last of 100, still counts; 100 others do not.
    let others: Vec<String> = (70_000..70_099).map(|g: u32| g.to_string()).collect();
    let (ok, _, stderr) = berth_as_user(
        &outsider,
        &format!("--groups={},{gid}", others.join(",")),
        &daemon.socket,
        &["content", "ls", "-q"],
        b"",
    );
    assert!(
        ok,
        "a caller with the group among 100 was refused: {stderr}"
    );
    let (ok, out, _) = berth_as_user(
        &outsider,
        &format!("--groups={},70099", others.join(",")),
        &daemon.socket,
        &["content", "ls", "-q"],
        b"",
    );
    assert!(!ok, "a caller with 100 other groups was served: {out}");
    assert_eq!(
        refusals_of(&daemon, outsider.uid),
        2,
        "{}",
        daemon.log_text()
    );
    let (ok, _, stderr) = berth(&daemon.socket, &["content", "ls"], None);
    assert!(ok, "{stderr}");
    drop(daemon);

    // Only the groups the kernel reports count, not the rest of the
    // buffer they were read into: with root's group as the socket group, a
    // caller in one other group is refused.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_args("berth-contentd", dir.path(), &["--socket-group", "0"]);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, out, _) = berth_as_user(
        &outsider,
        "--groups=70000",
        &daemon.socket,
        &["content", "ls", "-q"],
        b"",
    );
    assert!(!ok, "a caller outside group 0 was served: {out}");
    assert_eq!(
        refusals_of(&daemon, outsider.uid),
        1,
        "{}",
        daemon.log_text()
    );
    drop(daemon);
    drop(accounts);
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::contentd(dir.path());
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    assert!(!daemon.socket.exists());
    // A second daemon on the same root starts, and a live one is not
    // displaced by a third.
    daemon.restart();
    let third = Command::new(binary("berth-contentd"))
        .arg("--root")
        .arg(dir.path().join("root2"))
        .arg("--state")
        .arg(dir.path().join("state2"))
        .arg("--address")
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(!third.status.success());
    assert!(String::from_utf8_lossy(&third.stderr).contains("in use"));
    assert!(std::os::unix::net::UnixStream::connect(&daemon.socket).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_systemd_activated_socket() {
    let Some(activate) = berth_e2e::which("systemd-socket-activate") else {
        assert!(
            !berth_e2e::in_ci(),
            "systemd-socket-activate is missing under CI"
        );
        eprintln!("skipping: systemd-socket-activate not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let unused = dir.path().join("not-bound.sock");
    let mut child = Command::new(activate)
        .arg("-l")
        .arg(&socket)
        .arg(binary("berth-contentd"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(&unused)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let store = RemoteContentStore::connect(&socket).await.unwrap();
    let digest = berth_content::write_blob(
        &store,
        "default",
        "activated",
        b"hello",
        None,
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        read_blob(&store, "default", &digest, 100).await.unwrap(),
        b"hello"
    );
    // It served the inherited socket and bound nothing of its own.
    assert!(!unused.exists());
    drop(guard);
    let _ = child.wait();
}

/// Whether contentd at `socket` answers a real request (a List, which needs
/// the server's accept loop and a handler; a bound socket alone takes the
/// connection and never answers). The ceiling only turns a hang into a
/// failure: a daemon that serves answers whenever it is asked.
fn answers_a_request(socket: &Path) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let request = async {
            let store = RemoteContentStore::connect(socket)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            store
                .list("default", &[])
                .await
                .map_err(|e| format!("list: {e}"))
        };
        match tokio::time::timeout(Duration::from_secs(30), request).await {
            Ok(Ok(infos)) if infos.is_empty() => Ok(()),
            Ok(Ok(infos)) => Err(format!("a fresh store lists {infos:?}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("no answer".to_string()),
        }
    })
}

#[test]
fn tells_systemd_when_ready_stopping_and_pets_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Fill the notify socket's queue before the daemon starts: its first
    // notification then cannot be delivered (sd_notify's send blocks) until
    // the test reads, so whatever the daemon does before it can be seen
    // with READY=1 still unsent.
    let filler = std::os::unix::net::UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut fillers = 0;
    loop {
        match filler.send_to(b"FILLER", &notify_path) {
            Ok(_) => fillers += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the notify socket: {e}"),
        }
    }
    assert!(fillers > 0);
    let socket = dir.path().join("run/c.sock");
    let mut child = Command::new(binary("berth-contentd"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "100000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "contentd never bound its socket");
        assert!(child.try_wait().unwrap().is_none(), "contentd exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    // READY=1 cannot have been delivered yet, and requests are answered
    // already: it is sent only once the daemon serves. A daemon that said
    // READY=1 before serving would now be stuck saying it, not serving.
    if let Err(e) = answers_a_request(&socket) {
        panic!("contentd did not answer while its READY=1 was still unsent ({e}): it is not serving before it says it is ready");
    }

    let mut buf = [0u8; 512];
    let mut seen = Vec::new();
    for _ in 0..fillers {
        let n = notify.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"FILLER");
    }
    // The daemon's first notification is READY=1, and the moment it is
    // received (before anything else) the daemon answers requests.
    let n = notify.recv(&mut buf).unwrap();
    seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(seen[0].contains("READY=1"), "{seen:?}");
    if let Err(e) = answers_a_request(&socket) {
        panic!("contentd said READY=1 but did not answer a request: {e}");
    }
    while !seen.iter().any(|m| m.contains("WATCHDOG=1")) && Instant::now() < deadline {
        let n = notify.recv(&mut buf).unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen.iter().any(|m| m.contains("WATCHDOG=1")), "{seen:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    assert!(child.wait().unwrap().success());
    drop(guard);
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Many small pipelined writes on several streams at once: ttrpc-rust can
/// deliver a stream's frames out of order, and the daemon must put them
/// back in order (the ingest benchmark once caught a write overtaking the
/// one before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelined_ingests_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::contentd(dir.path());
    let store = connect(&daemon).await;
    let source = std::sync::Arc::new(BlockSource::new(64 * 1024));
    let mut tasks = Vec::new();
    for stream in 0..4u64 {
        let (store, source) = (store.clone(), source.clone());
        tasks.push(tokio::spawn(async move {
            let mut writer = store
                .writer("default", WriterOptions::new(format!("stream-{stream}")))
                .await
                .unwrap();
            let mut hasher = Sha256Hasher::new();
            for i in 0..512 {
                let block = source.block(stream * 10_000 + i);
                hasher.update(&block);
                writer.write(block).await.unwrap();
            }
            let expected = hasher.finalize();
            let digest = writer
                .commit(CommitOptions {
                    expected: Some(expected.clone()),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(digest, expected);
            digest
        }));
    }
    for task in tasks {
        let digest = task.await.unwrap();
        let size = store.info("default", &digest).await.unwrap().size;
        assert_eq!(size, 512 * 64 * 1024);
        assert_eq!(
            digest_by_reading(&store, "default", &digest, size).await,
            digest
        );
    }
}

/// The same peer check stands in front of every daemon's socket, not only
/// contentd's: with the socket opened to all (so the socket's mode does not
/// decide), a member of `--socket-group` is served by metad, snapd and
/// taskd, and a caller outside it is refused and logged.
#[test]
fn every_daemon_serves_its_socket_group_and_refuses_others() {
    if !can_act_as_other_users() {
        return;
    }
    let mut accounts = Accounts::default();
    let (group, _) = accounts.group("every");
    let member = accounts.user("em", &[&group]);
    let outsider = accounts.user("eo", &[]);

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let with_group = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--socket-group", &group]);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let contentd = Daemon::contentd(&dir.path().join("contentd"));
    let contentd_socket = contentd.socket.display().to_string();
    let snapd_args = with_group(&["--contentd", &contentd_socket]);
    let snapd_args: Vec<&str> = snapd_args.iter().map(String::as_str).collect();
    let snapd = Daemon::start_with_args("berth-snapd", &dir.path().join("snapd"), &snapd_args);
    let snapd_socket = snapd.socket.display().to_string();
    let metad_args = with_group(&["--contentd", &contentd_socket, "--snapd", &snapd_socket]);
    let metad_args: Vec<&str> = metad_args.iter().map(String::as_str).collect();
    let metad = Daemon::start_with_args("berth-metad", &dir.path().join("metad"), &metad_args);
    let metad_socket = metad.socket.display().to_string();
    let taskd_args = with_group(&["--metad", &metad_socket, "--snapd", &snapd_socket]);
    let taskd_args: Vec<&str> = taskd_args.iter().map(String::as_str).collect();
    let taskd = Daemon::start_with_args("berth-taskd", &dir.path().join("taskd"), &taskd_args);

    for (daemon, command) in [
        (&snapd, &["snapshots", "ls"][..]),
        (&metad, &["namespaces", "ls"]),
        (&taskd, &["tasks", "ls"]),
    ] {
        std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let socket = daemon.socket.display().to_string();
        let mut args = vec!["--address", &socket];
        args.extend_from_slice(command);
        let (ok, _, stderr) = berth_as_user(&member, "--init-groups", &daemon.socket, &args, b"");
        assert!(ok, "{command:?}: a member was refused: {stderr}");
        let (ok, out, _) = berth_as_user(&outsider, "--init-groups", &daemon.socket, &args, b"");
        assert!(
            !ok,
            "{command:?}: a caller outside the group was served: {out}"
        );
        assert_eq!(
            refusals_of(daemon, outsider.uid),
            1,
            "{command:?}: {}",
            daemon.log_text()
        );
        assert_eq!(refusals_of(daemon, member.uid), 0, "{}", daemon.log_text());
    }
}
