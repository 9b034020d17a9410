#![allow(clippy::unwrap_used, clippy::expect_used)]

//! `berth run` and `berth tasks` end to end: all four daemons on temp
//! dirs, an image built here from Debian's busybox-static and imported,
//! containers run by runc through containerd-shim-berth-v2 (and, where
//! said, through Debian's and containerd 2.2.7's Go shims).

use std::path::{Path, PathBuf};
use std::process::Output;

use berth_e2e::images::{run_image_archive, RUN_IMAGE};
use berth_e2e::stack::Stack;
use berth_e2e::{on_path, require};

fn prerequisites() -> bool {
    require(
        nix::unistd::Uid::effective().is_root(),
        "running containers needs root",
    ) && require(on_path("runc"), "runc is not installed")
        && require(
            Path::new("/bin/busybox").exists(),
            "busybox-static is not installed",
        )
}

/// A stack with the run image imported (recorded and unpacked).
fn setup() -> (tempfile::TempDir, Stack) {
    let dir = tempfile::Builder::new()
        .prefix("berth-run-")
        .tempdir_in("/tmp")
        .unwrap();
    let archive = run_image_archive(dir.path());
    let stack = Stack::start(&dir.path().join("stack"));
    let (ok, _, err) = stack.berth(&["import", archive.to_str().unwrap()]);
    assert!(ok, "import: {err}");
    (dir, stack)
}

fn run(stack: &Stack, args: &[&str]) -> Output {
    stack.command(args).output().expect("running berth")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Processes whose working directory is under `dir` (shims run in their
/// bundles): what a test left running.
fn processes_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(dir) {
                found.push((pid, cwd));
            }
        }
    }
    found
}

/// Nothing of a container is left: no record, task, active snapshot,
/// bundle, shim or mount.
fn assert_nothing_left(stack: &Stack) {
    let (ok, containers, err) = stack.berth(&["containers", "ls", "-q"]);
    assert!(ok, "{err}");
    assert_eq!(containers.trim(), "", "containers left");
    let (ok, tasks, err) = stack.berth(&["tasks", "ls", "-q"]);
    assert!(ok, "{err}");
    assert_eq!(tasks.trim(), "", "tasks left");
    let snapshots = stack.berth_json(&["snapshots", "ls"]);
    let active: Vec<_> = snapshots
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] != "committed")
        .collect();
    assert!(active.is_empty(), "snapshots left: {active:?}");
    let bundles = stack.taskd.state.join("bundles").join("default");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");
    // Shims exit just after their task is deleted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_under(&stack.dir).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(processes_under(&stack.dir), vec![], "processes left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = stack.dir.display().to_string();
    let ours: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&dir) && l.contains("rootfs"))
        .collect();
    assert!(ours.is_empty(), "mounts left: {ours:?}");
}

#[test]
fn run_rm_prints_and_exits_with_the_containers_status_and_leaves_nothing() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let out = run(
        &stack,
        &[
            "run",
            "--rm",
            RUN_IMAGE,
            "sh",
            "-c",
            "echo hello from $(hostname); echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("hello from "),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));
    assert_nothing_left(&stack);

    // A death by signal is 128 + the signal; --rm still cleans up.
    let child = stack.spawn_berth(&[
        "run", "--rm", "--name", "doomed", RUN_IMAGE, "sleep", "1000",
    ]);
    wait_for_status(&stack, "doomed", "RUNNING");
    let (ok, _, err) = stack.berth(&["tasks", "kill", "-s", "SIGKILL", "doomed"]);
    assert!(ok, "{err}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_nothing_left(&stack);

    // A command the image does not have: a clear error, nothing left.
    let out = run(&stack, &["run", "--rm", RUN_IMAGE, "/no/such/binary"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/no/such/binary"),
        "{}",
        text(&out.stderr)
    );
    assert_nothing_left(&stack);
}

/// Polls `berth tasks ls` until `id` has `status`.
fn wait_for_status(stack: &Stack, id: &str, status: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let tasks = stack.berth_json(&["tasks", "ls"]);
        let found = tasks
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id && t["status"] == status);
        if found {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never became {status}: {tasks}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn users_are_numbers_or_names_from_the_image_and_bad_ones_are_refused() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let id = |user: &str| {
        let flag = format!("--user={user}");
        let out = run(&stack, &["run", "--rm", &flag, RUN_IMAGE, "id"]);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = id("1234:1234");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("uid=1234(berth) gid=1234(berth)"), "{out}");
    let (code, out, err) = id("berth");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("uid=1234(berth) gid=1234(berth)"), "{out}");
    assert!(
        out.contains("2000(extra)"),
        "supplementary group missing: {out}"
    );
    let (code, out, err) = id("4321");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("uid=4321 gid=0"), "{out}");
    for bad in ["4294967295", "-1", "nosuchuser", "1234:nosuchgroup"] {
        let (code, _, err) = id(bad);
        assert_ne!(code, Some(0), "--user {bad} was accepted");
        assert!(
            err.contains("user") || err.contains("group"),
            "--user {bad}: {err}"
        );
    }
    assert_nothing_left(&stack);
}

#[test]
fn containers_get_the_security_defaults() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let script = "grep -E '^(CapInh|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status; \
                  ls /proc/1/fd; \
                  if cat /proc/kcore >/dev/null 2>&1; then echo kcore-readable; fi; \
                  if echo 1 > /proc/sys/kernel/domainname 2>/dev/null; then echo proc-sys-writable; fi; \
                  unshare -m true 2>&1 || echo unshare-denied";
    let out = run(&stack, &["run", "--rm", RUN_IMAGE, "sh", "-c", script]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("CapInh:\t0000000000000000"), "{stdout}");
    // containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID
    // SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE
    // SETFCAP.
    assert!(stdout.contains("CapBnd:\t00000000a80425fb"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    let fds: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Seccomp"))
        .skip(1)
        .take_while(|l| l.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(fds, vec!["0", "1", "2"], "{stdout}");
    assert!(!stdout.contains("kcore-readable"), "{stdout}");
    assert!(!stdout.contains("proc-sys-writable"), "{stdout}");
    assert!(stdout.contains("Operation not permitted"), "{stdout}");
    assert!(stdout.contains("unshare-denied"), "{stdout}");

    // --privileged lifts them.
    let out = run(
        &stack,
        &[
            "run",
            "--rm",
            "--privileged",
            RUN_IMAGE,
            "sh",
            "-c",
            "grep Seccomp: /proc/1/status; unshare -m true && echo unshared",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Seccomp:\t0"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("unshared"), "{stdout}");
    assert_nothing_left(&stack);
}

#[test]
fn detached_containers_take_exec_pause_ps_kill_and_log_to_a_file() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let out = run(
        &stack,
        &[
            "run",
            "-d",
            "--name",
            "web",
            RUN_IMAGE,
            "sh",
            "-c",
            "echo started; exec sleep 1000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "web");
    wait_for_status(&stack, "web", "RUNNING");

    let out = run(
        &stack,
        &["tasks", "exec", "web", "sh", "-c", "echo in-exec; exit 5"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in-exec\n");

    let ps = stack.berth_json(&["tasks", "ps", "web"]);
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps}");

    let (ok, _, err) = stack.berth(&["tasks", "pause", "web"]);
    assert!(ok, "{err}");
    wait_for_status(&stack, "web", "PAUSED");
    let (ok, _, err) = stack.berth(&["tasks", "resume", "web"]);
    assert!(ok, "{err}");
    wait_for_status(&stack, "web", "RUNNING");

    // A running task cannot be deleted.
    let (ok, _, err) = stack.berth(&["tasks", "rm", "web"]);
    assert!(!ok);
    assert!(err.contains("stopped"), "{err}");

    // sleep is pid 1 of its namespace: SIGTERM, unhandled, is ignored.
    let (ok, _, err) = stack.berth(&["tasks", "kill", "-s", "KILL", "web"]);
    assert!(ok, "{err}");
    let out = run(&stack, &["tasks", "wait", "web"]);
    assert_eq!(text(&out.stdout).trim(), "137", "{}", text(&out.stderr));
    // Killing a stopped task: NotFound, as containerd says it.
    let (ok, _, err) = stack.berth(&["tasks", "kill", "web"]);
    assert!(!ok);
    assert!(
        err.contains("not found") || err.contains("finished"),
        "{err}"
    );

    let log = stack.log_dir().join("default").join("web.log");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "started\n");

    let (ok, _, err) = stack.berth(&["tasks", "rm", "web"]);
    assert!(ok, "{err}");
    let (ok, _, err) = stack.berth(&["containers", "rm", "web"]);
    assert!(ok, "{err}");
}
