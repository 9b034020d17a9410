#![allow(clippy::unwrap_used, clippy::expect_used)]

//! `berth run` and `berth tasks` end to end: all four daemons on temp
//! dirs, an image built here from Debian's busybox-static and imported,
//! containers run by runc through containerd-shim-berth-v2 (and, where
//! said, through Debian's and containerd 2.2.7's Go shims).

use std::path::{Path, PathBuf};
use std::process::Output;

use berth_e2e::images::RUN_IMAGE;
use berth_e2e::stack::Stack;
use berth_e2e::{on_path, processes_under, require};

fn prerequisites() -> bool {
    berth_e2e::run_prerequisites()
}

/// A stack with the run image imported (recorded and unpacked).
fn setup() -> (tempfile::TempDir, Stack) {
    Stack::with_run_image("berth-run-")
}

fn run(stack: &Stack, args: &[&str]) -> Output {
    stack.command(args).output().expect("running berth")
}

/// `berth ARGS` with `input` on its stdin, then end of file.
fn run_with_input(stack: &Stack, args: &[&str], input: &[u8]) -> Output {
    let mut child = stack
        .command(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running berth");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("berth's stdin");
        stdin.write_all(input).expect("writing berth's stdin");
    }
    child.wait_with_output().expect("waiting for berth")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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
    let bundles = stack
        .taskd
        .state
        .join("io.containerd.runtime.v2.task")
        .join("default");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");
    // Removed bundles' files go just after their Delete, from the trash.
    let trash = bundles.parent().unwrap().join(".trash");
    let trashed = || {
        std::fs::read_dir(&trash)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !trashed().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        trashed(),
        Vec::<std::ffi::OsString>::new(),
        "removed bundles left"
    );
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
    // Read while it runs: once killed, `--rm` may remove them at once.
    let cgroups = cgroups_of("doomed");
    assert!(
        !cgroups.is_empty(),
        "no cgroup of a running container found"
    );
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
    assert_eq!(cgroups_of("doomed"), Vec::<PathBuf>::new(), "cgroups left");

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

/// The cgroups of container `id` (in the default namespace, under berth's
/// default parent) that exist: on cgroup v2 the one directory, on v1 one
/// per controller hierarchy.
fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let path = format!("berth/default/{id}");
    let mut found: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|hierarchy| hierarchy.path().join(&path))
        .collect();
    found.push(Path::new("/sys/fs/cgroup").join(&path));
    found.retain(|p| p.exists());
    found
}

/// Polls `seen` every 50 ms until `done` holds for what it returns, for
/// at most 30 s; then fails with `what` and the last thing seen.
fn wait_until<T: std::fmt::Display>(what: &str, seen: impl Fn() -> T, done: impl Fn(&T) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = seen();
        if done(&now) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {now}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Polls `berth tasks ls` until `id` has `status`.
fn wait_for_status(stack: &Stack, id: &str, status: &str) {
    wait_until(
        &format!("{id} never became {status}"),
        || stack.berth_json(&["tasks", "ls"]),
        |tasks| {
            tasks
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["id"] == id && t["status"] == status)
        },
    );
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
    // CVE-2023-25173: by number as by name, the user's groups in the
    // image's /etc/group are its supplementary groups.
    for user in ["1234", "1234:1234"] {
        let (code, out, err) = id(user);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            out.trim(),
            "uid=1234(berth) gid=1234(berth) groups=1234(berth),2000(extra)",
            "--user {user}"
        );
    }
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

/// Capabilities, no_new_privs, seccomp, masked and read-only /proc, no
/// new namespaces; no inheritable capabilities (CVE-2022-24769); and only
/// fds 0, 1 and 2 reach the container, so no host descriptor can serve as
/// its working directory (CVE-2024-21626, fixed in runc; this shows berth
/// leaks none to runc either).
/// A shell snippet that says "masked-paths-present" when any of a few of
/// containerd's masked paths exists in the container (which ones a kernel
/// has varies: this host has no /proc/kcore), and "PATH-unmasked" for each
/// that shows anything: a masked file reads as empty (/dev/null is bound
/// over it), a masked directory lists nothing (an empty tmpfs).
const MASKED_PATHS_PROBE: &str = "for f in /proc/kcore /proc/keys /proc/timer_list /sys/firmware; do \
       if [ -e $f ]; then echo masked-paths-present; fi; \
       if [ -f $f ] && [ \"$(head -c 1 $f 2>/dev/null | wc -c)\" != 0 ]; then echo $f-unmasked; fi; \
       if [ -d $f ] && [ -n \"$(ls $f)\" ]; then echo $f-unmasked; fi; \
     done;";

/// Whether /sys/fs/cgroup is the unified (v2) hierarchy on this host.
fn cgroup_v2_host() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup") && l.contains(" - cgroup2 "))
}

/// `--cgroupns private` gives the container a cgroup namespace of its own
/// (its cgroups are `/` in /proc/self/cgroup), `host` the host's (their
/// host paths, under berth's parent); without the flag it is nerdctl's
/// choice: private on a cgroup v2 host, the host's on v1 and hybrid ones.
#[test]
fn cgroup_namespace_as_asked_and_by_default_as_nerdctl() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let cgroups = |id: &str, flag: Option<&str>| -> Vec<String> {
        let mut args = vec!["run", "--rm", "--name", id];
        if let Some(flag) = flag {
            args.extend(["--cgroupns", flag]);
        }
        args.extend([RUN_IMAGE, "cat", "/proc/self/cgroup"]);
        let out = run(&stack, &args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
        assert!(!lines.is_empty());
        lines
    };
    // Each line is HIERARCHY:CONTROLLERS:PATH.
    let in_own_namespace = |lines: &[String]| lines.iter().all(|l| l.ends_with(":/"));
    let in_hosts = |lines: &[String], id: &str| {
        lines
            .iter()
            .filter(|l| !l.ends_with(":/") && !l.contains(":name="))
            .all(|l| l.contains("/berth/") && l.ends_with(&format!("/{id}")))
            && lines.iter().any(|l| l.ends_with(&format!("/{id}")))
    };

    let private = cgroups("cgns-private", Some("private"));
    assert!(in_own_namespace(&private), "{private:?}");
    let host = cgroups("cgns-host", Some("host"));
    assert!(in_hosts(&host, "cgns-host"), "{host:?}");
    let default = cgroups("cgns-default", None);
    if cgroup_v2_host() {
        assert!(in_own_namespace(&default), "{default:?}");
    } else {
        assert!(in_hosts(&default, "cgns-default"), "{default:?}");
    }
    let out = run(
        &stack,
        &["run", "--rm", "--cgroupns", "shared", RUN_IMAGE, "true"],
    );
    assert_ne!(out.status.code(), Some(0));
    assert_nothing_left(&stack);
}

#[test]
fn containers_get_the_security_defaults() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let script = format!(
        "grep -E '^(CapInh|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status; \
         ls /proc/1/fd; {MASKED_PATHS_PROBE} \
         if echo 1 > /proc/sys/kernel/domainname 2>/dev/null; then echo proc-sys-writable; fi; \
         unshare -m true 2>&1 || echo unshare-denied"
    );
    let out = run(&stack, &["run", "--rm", RUN_IMAGE, "sh", "-c", &script]);
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
    // Masked: each path that exists reads as nothing, and some exist
    // (otherwise the probe proves nothing).
    assert!(stdout.contains("masked-paths-present"), "{stdout}");
    assert!(!stdout.contains("-unmasked"), "{stdout}");
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
            &format!(
                "grep Seccomp: /proc/1/status; unshare -m true && echo unshared; {MASKED_PATHS_PROBE}"
            ),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Seccomp:\t0"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("unshared"), "{stdout}");
    // The probe sees what masking hides when nothing is masked.
    assert!(stdout.contains("-unmasked"), "{stdout}");
    assert_nothing_left(&stack);
}

/// A copy of the host's /etc under `dir` in which `berthtest` has the
/// subordinate ids 300000 (uids) and 310000 (gids), 65536 of each.
fn private_etc_with_subids(dir: &Path) -> PathBuf {
    let etc = dir.join("etc");
    let copied = std::process::Command::new("cp")
        .args(["-a", "/etc"])
        .arg(&etc)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::write(etc.join("subuid"), "berthtest:300000:65536\n").unwrap();
    std::fs::write(etc.join("subgid"), "berthtest:310000:65536\n").unwrap();
    etc
}

/// `command` with `etc` bound over /etc in a mount namespace of its own:
/// it reads those files, and the host's are never touched.
fn with_private_etc(mut command: std::process::Command, etc: &Path) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let etc = etc.to_path_buf();
    // SAFETY: the child only makes the unshare and mount syscalls before it
    // execs.
    unsafe {
        command.pre_exec(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            mount(None::<&str>, "/", None::<&str>, private, None::<&str>)?;
            mount(
                Some(&etc),
                "/etc",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        });
    }
    command
}

/// `berth run --userns-remap USER` (nerdctl's flag): the container runs in
/// a user namespace whose root is USER's first subordinate range in
/// /etc/subuid and /etc/subgid, its image's files are root's inside
/// (id-mapped layers) and what it writes is the mapped root's outside; on
/// the host's network /sys is the host's, bound. The CLI reads the
/// subordinate ids of a private copy of /etc made for this test (bound
/// over /etc in a mount namespace of the CLI's own), so the host's files
/// are never touched. A user with no range is refused with nothing made.
#[test]
fn userns_remap_runs_root_as_the_users_subordinate_ids() {
    if !prerequisites() {
        return;
    }
    let (dir, stack) = setup();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // runc reaches the bundle from inside the user namespace: the way to
    // taskd's state must be passable, as /run is.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let etc = private_etc_with_subids(dir.path());
    let with_etc = |args: &[&str]| {
        with_private_etc(stack.command(args), &etc)
            .output()
            .unwrap()
    };
    let out = with_etc(&[
        "run",
        "--rm",
        "--userns-remap",
        "berthtest",
        RUN_IMAGE,
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; busybox stat -c %u:%g /bin/busybox; \
         echo x > /written && busybox stat -c %u:%g /written",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let words: Vec<String> = text(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        words,
        ["0", "300000", "65536", "0", "310000", "65536", "0", "0:0", "0:0"],
        "{}",
        text(&out.stderr)
    );
    // Kept, to look at its layer from the host.
    let out = with_etc(&[
        "run",
        "-d",
        "--name",
        "remapped",
        "--net",
        "host",
        "--userns-remap",
        "berthtest",
        RUN_IMAGE,
        "sh",
        "-c",
        "echo y > /kept; sleep 1000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "remapped", "RUNNING");
    let exec = run(
        &stack,
        &[
            "tasks",
            "exec",
            "remapped",
            "busybox",
            "ls",
            "/sys/class/net",
        ],
    );
    assert!(
        exec.status.success() && text(&exec.stdout).contains("lo"),
        "{}",
        text(&exec.stderr)
    );
    let ps = stack.berth_json(&["tasks", "ps", "remapped"]);
    let pid = ps[0]["pid"].as_u64().unwrap_or_else(|| panic!("{ps}"));
    // Written by the container's shell on its own time.
    let kept_path = format!("/proc/{pid}/root/kept");
    wait_until(
        "the container wrote /kept",
        || Path::new(&kept_path).exists(),
        |written| *written,
    );
    let kept = std::fs::metadata(&kept_path).unwrap();
    assert_eq!((kept.uid(), kept.gid()), (300000, 310000));
    let out = run(&stack, &["rm", "-f", "remapped"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = with_etc(&[
        "run",
        "--rm",
        "--userns-remap",
        "nobody-here",
        RUN_IMAGE,
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no range"),
        "{}",
        text(&out.stderr)
    );
    assert_nothing_left(&stack);
}

/// CVE-2021-41103 (and moby's CVE-2021-41091): a container's rootfs, its
/// bundle and the snapshots under it must not be reachable by other host
/// users, who could otherwise run the image's setuid binaries. The test's
/// own directories are opened up to 0755, as /var/lib would be, so that
/// only berth's directories can stand in the way.
#[test]
fn other_host_users_cannot_reach_a_containers_files() {
    if !prerequisites() || !require(on_path("setpriv"), "needs setpriv (util-linux)") {
        return;
    }
    let (dir, stack) = setup();
    use std::os::unix::fs::PermissionsExt;
    for open in [
        dir.path(),
        stack.dir.as_path(),
        stack.taskd.dir.as_path(),
        stack.snapd.dir.as_path(),
    ] {
        std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = run(
        &stack,
        &["run", "-d", "--name", "private", RUN_IMAGE, "sleep", "1000"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "private", "RUNNING");

    // Every directory of taskd's and snapd's root and state, down to each
    // bundle and snapshot, is closed to other users.
    let bundle = stack
        .taskd
        .state
        .join("io.containerd.runtime.v2.task")
        .join("default")
        .join("private");
    let snapshots = stack.snapd.root.join("overlayfs").join("snapshots");
    let mut closed = vec![
        stack.taskd.root.clone(),
        stack.taskd.state.clone(),
        stack.snapd.root.clone(),
        stack.snapd.state.clone(),
        bundle.clone(),
        snapshots.clone(),
    ];
    closed.extend(
        std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for path in &closed {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }

    // As nobody, the container's shell is out of reach through its rootfs
    // and through the snapshot it comes from: neither stat nor exec.
    let busybox_layer = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().path().join("fs").join("bin").join("sh"))
        .find(|p| p.symlink_metadata().is_ok())
        .expect("a snapshot with bin/sh");
    for target in [bundle.join("rootfs").join("bin").join("sh"), busybox_layer] {
        assert!(
            target.symlink_metadata().is_ok(),
            "root sees {}",
            target.display()
        );
        // (setpriv itself execs with the capabilities it is about to drop:
        // the exec is tried from a shell already running as nobody.)
        for script in ["stat \"$0\"", "exec \"$0\" -c true"] {
            let out = std::process::Command::new("setpriv")
                .args([
                    "--reuid",
                    "65534",
                    "--regid",
                    "65534",
                    "--clear-groups",
                    "--",
                ])
                .args(["/bin/sh", "-c", script])
                .arg(&target)
                .output()
                .unwrap();
            assert!(
                !out.status.success() && text(&out.stderr).contains("Permission denied"),
                "nobody {script} {}: {} {}",
                target.display(),
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }
    let out = run(&stack, &["rm", "--force", "private"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_nothing_left(&stack);
}

/// Whether the shim at `socket` serves this process: one ttrpc request,
/// then a reply (served), or the connection closed unanswered (refused).
fn probe_shim(socket: &Path) -> &'static str {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return "unreachable";
    };
    use berth_e2e::wire::{frame, request, TYPE_REQUEST};
    let frame = frame(
        1,
        TYPE_REQUEST,
        0,
        &request("containerd.task.v2.Task", "Connect", Vec::new(), None),
    );
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    if stream.write_all(&frame).is_err() {
        return "refused";
    }
    let mut header = [0; 10];
    match stream.read_exact(&mut header) {
        Ok(()) => "served",
        Err(_) => "refused",
    }
}

/// Run by `a_shim_refuses_other_users_even_on_an_opened_socket` as uid
/// 65534; does nothing otherwise.
#[test]
fn shim_probe_as_another_user() {
    if let Some(socket) = std::env::var_os("BERTH_SHIM_PROBE") {
        println!("probe: {}", probe_shim(Path::new(&socket)));
    }
}

/// CVE-2020-15257's second line: even with its socket opened up to
/// everyone (the first line, 0600 in a 0700 directory, taken away), a shim
/// serves only root and its own user, by SO_PEERCRED.
#[test]
fn a_shim_refuses_other_users_even_on_an_opened_socket() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !prerequisites() {
        return;
    }
    let test_binary = std::env::current_exe().unwrap();
    let reachable = test_binary.ancestors().all(|p| {
        p.as_os_str().is_empty()
            || std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(true)
    });
    if !require(reachable, "uid 65534 cannot run the test binary") {
        return;
    }
    let (dir, stack) = setup();
    let out = run(
        &stack,
        &["run", "-d", "--name", "probed", RUN_IMAGE, "sleep", "1000"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "probed", "RUNNING");
    let bundle = stack
        .taskd
        .state
        .join("io.containerd.runtime.v2.task")
        .join("default")
        .join("probed");
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert_eq!(probe_shim(&socket), "served", "root is served");

    // Only what the test made is opened up: the socket must be in it.
    assert!(socket.starts_with(dir.path()), "{}", socket.display());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for dir in socket
        .ancestors()
        .skip(1)
        .take_while(|d| d.starts_with(dir.path()))
    {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001)).unwrap();
    }
    let probe = std::process::Command::new(&test_binary)
        .args(["--exact", "shim_probe_as_another_user", "--nocapture"])
        .env("BERTH_SHIM_PROBE", &socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let said = text(&probe.stdout);
    assert!(
        said.contains("probe: refused"),
        "{said} {}",
        text(&probe.stderr)
    );
    let out = run(&stack, &["rm", "--force", "probed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    // Its shim serves on a socket under this taskd's state dir.
    let sockets: Vec<_> = std::fs::read_dir(stack.taskd.state.join("s"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(!sockets.is_empty(), "no shim socket under taskd's state");

    let out = run(
        &stack,
        &["tasks", "exec", "web", "sh", "-c", "echo in-exec; exit 5"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in-exec\n");
    // A user by name, from the container's own /etc/passwd and /etc/group
    // (berth is 1234, also in extra 2000); a name it lacks is refused.
    let out = run(&stack, &["tasks", "exec", "--user", "berth", "web", "id"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "uid=1234(berth) gid=1234(berth) groups=1234(berth),2000(extra)",
        "{}",
        text(&out.stderr)
    );
    // CVE-2023-25173: a user by number gets its passwd group and the
    // groups /etc/group lists it in, as by name; root by number stays root.
    for (user, groups) in [
        (
            "1234",
            "uid=1234(berth) gid=1234(berth) groups=1234(berth),2000(extra)",
        ),
        (
            "1234:1234",
            "uid=1234(berth) gid=1234(berth) groups=1234(berth),2000(extra)",
        ),
        (
            "1234:2000",
            "uid=1234(berth) gid=2000(extra) groups=2000(extra)",
        ),
        ("0", "uid=0(root) gid=0(root) groups=0(root)"),
    ] {
        let out = run(&stack, &["tasks", "exec", "--user", user, "web", "id"]);
        assert_eq!(
            text(&out.stdout).trim(),
            groups,
            "--user {user}: {}",
            text(&out.stderr)
        );
    }
    let out = run(&stack, &["tasks", "exec", "--user", "nobody", "web", "id"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nobody"),
        "{}",
        text(&out.stderr)
    );

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

/// containerd 2.2.7's Go runc shim, built for the tests (see
/// ../shared/peers/README.md).
fn peer_shim() -> PathBuf {
    berth_e2e::cri::shared().join("peers/bin/containerd-shim-runc-v2")
}

/// The runtimes every scenario below runs through: berth's shim, Debian's
/// Go shim (containerd 1.6) and containerd 2.2.7's.
fn runtimes() -> Vec<String> {
    let mut runtimes = vec!["io.containerd.berth.v2".to_string()];
    if require(
        on_path("containerd-shim-runc-v2"),
        "Debian's containerd-shim-runc-v2 is not installed",
    ) {
        runtimes.push("io.containerd.runc.v2".to_string());
    }
    let peer = peer_shim();
    if require(
        peer.exists(),
        "../shared/peers/bin/containerd-shim-runc-v2 is missing",
    ) {
        runtimes.push(peer.canonicalize().unwrap().display().to_string());
    }
    runtimes
}

#[test]
fn every_shim_runs_execs_kills_and_cleans_up_through_taskd() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    for (n, runtime) in runtimes().iter().enumerate() {
        let out = run(
            &stack,
            &[
                "run",
                "--rm",
                "--runtime",
                runtime,
                RUN_IMAGE,
                "sh",
                "-c",
                "echo out; grep -E '^(CapInh|NoNewPrivs):' /proc/1/status; exit 7",
            ],
        );
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{runtime}: {}",
            text(&out.stderr)
        );
        assert!(stdout.starts_with("out\n"), "{runtime}: {stdout}");
        assert!(
            stdout.contains("CapInh:\t0000000000000000"),
            "{runtime}: {stdout}"
        );
        assert!(stdout.contains("NoNewPrivs:\t1"), "{runtime}: {stdout}");
        assert_nothing_left(&stack);

        let id = format!("shim{n}");
        let out = run(
            &stack,
            &[
                "run",
                "-d",
                "--runtime",
                runtime,
                "--name",
                &id,
                RUN_IMAGE,
                "sleep",
                "1000",
            ],
        );
        assert!(out.status.success(), "{runtime}: {}", text(&out.stderr));
        wait_for_status(&stack, &id, "RUNNING");
        // The task is served by the shim asked for.
        let bundle = stack
            .taskd
            .state
            .join("io.containerd.runtime.v2.task")
            .join("default")
            .join(&id);
        let shims: Vec<PathBuf> = processes_under(&bundle)
            .into_iter()
            .filter_map(|(pid, _)| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
            .filter(|exe| exe.to_string_lossy().contains("containerd-shim"))
            .collect();
        let wanted = match runtime.as_str() {
            "io.containerd.berth.v2" => "containerd-shim-berth-v2".to_string(),
            "io.containerd.runc.v2" => "/usr/bin/containerd-shim-runc-v2".to_string(),
            path => path.to_string(),
        };
        assert!(
            shims
                .iter()
                .any(|exe| exe.to_string_lossy().ends_with(&wanted)),
            "{runtime}: shims in the bundle: {shims:?}"
        );
        let out = run(
            &stack,
            &["tasks", "exec", &id, "sh", "-c", "echo exec-out; exit 4"],
        );
        assert_eq!(
            out.status.code(),
            Some(4),
            "{runtime}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "exec-out\n", "{runtime}");
        let (ok, _, err) = stack.berth(&["tasks", "pause", &id]);
        assert!(ok, "{runtime}: {err}");
        wait_for_status(&stack, &id, "PAUSED");
        let (ok, _, err) = stack.berth(&["tasks", "resume", &id]);
        assert!(ok, "{runtime}: {err}");
        let ps = stack.berth_json(&["tasks", "ps", &id]);
        assert!(!ps.as_array().unwrap().is_empty(), "{runtime}: {ps}");
        let metrics = stack.berth_json(&["tasks", "metrics", &id]);
        assert!(
            metrics[0]["type"]
                .as_str()
                .unwrap_or("")
                .contains("cgroups"),
            "{runtime}: {metrics}"
        );
        let (ok, _, err) = stack.berth(&["tasks", "kill", "-s", "KILL", &id]);
        assert!(ok, "{runtime}: {err}");
        let (_, status, _) = stack.berth(&["tasks", "wait", &id]);
        assert_eq!(status.trim(), "137", "{runtime}");
        let (ok, _, err) = stack.berth(&["tasks", "rm", &id]);
        assert!(ok, "{runtime}: {err}");
        let (ok, _, err) = stack.berth(&["containers", "rm", &id]);
        assert!(ok, "{runtime}: {err}");
        assert_nothing_left(&stack);
    }
}

/// A file of the container's cgroup, read from the host: cgroup v2 at
/// /sys/fs/cgroup/<path>, v1 under each controller's hierarchy.
fn cgroup_file(controller: &str, id: &str, file_v1: &str, file_v2: &str) -> String {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let path = if unified {
        PathBuf::from(format!("/sys/fs/cgroup/berth/default/{id}/{file_v2}"))
    } else {
        PathBuf::from(format!(
            "/sys/fs/cgroup/{controller}/berth/default/{id}/{file_v1}"
        ))
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn resource_limits_reach_the_containers_cgroup() {
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
            "limited",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "42",
            RUN_IMAGE,
            "sleep",
            "1000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "limited", "RUNNING");
    let limits = || {
        (
            cgroup_file("memory", "limited", "memory.limit_in_bytes", "memory.max"),
            cgroup_file("cpu", "limited", "cpu.cfs_quota_us", "cpu.max"),
            cgroup_file("pids", "limited", "pids.max", "pids.max"),
        )
    };
    let (memory, quota, pids) = limits();
    assert_eq!(memory, (64 << 20).to_string());
    assert!(
        quota == "50000" || quota == "50000 100000",
        "cpu quota {quota}"
    );
    assert_eq!(pids, "42");

    // `berth update` changes the running task's cgroup...
    let (ok, out, err) = stack.berth(&[
        "update",
        "--memory",
        "96m",
        "--cpus",
        "1.5",
        "--pids-limit",
        "50",
        "limited",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "limited");
    let (memory, quota, pids) = limits();
    assert_eq!(memory, (96 << 20).to_string());
    assert!(
        quota == "150000" || quota == "150000 100000",
        "cpu quota {quota}"
    );
    assert_eq!(pids, "50");
    // ...refuses nonsense and unknown containers, changing nothing...
    for (args, said) in [
        (vec!["update", "--pids-limit", "0", "limited"], "pids limit"),
        (vec!["update", "--memory", "1k", "limited"], "memory limit"),
        (vec!["update", "limited"], "nothing to update"),
        (vec!["update", "--memory", "96m", "nosuch"], "nosuch"),
    ] {
        let (ok, _, err) = stack.berth(&args);
        assert!(!ok, "{args:?} accepted");
        assert!(err.contains(said), "{args:?}: {err}");
    }
    assert_eq!(limits().2, "50");

    // `berth stats` reads the limits back from the metrics the shim reports,
    // and a busy container's CPU use, held under its quota.
    let out = run(
        &stack,
        &[
            "run",
            "-d",
            "--name",
            "busy",
            "--cpus",
            "0.25",
            RUN_IMAGE,
            "sh",
            "-c",
            "while :; do :; done",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "busy", "RUNNING");
    let stats = stack.berth_json(&["stats", "--no-stream", "--format", "json"]);
    let row = |id: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {stats}"))
            .clone()
    };
    let limited = row("limited");
    assert_eq!(limited["memory_limit_bytes"], 96 << 20, "{stats}");
    assert_eq!(limited["pids_limit"], 50, "{stats}");
    assert!(limited["pids"].as_u64().unwrap() >= 1, "{stats}");
    assert!(limited["memory_bytes"].as_u64().unwrap() > 0, "{stats}");
    let busy = row("busy");
    let cpu = busy["cpu_percent"].as_f64().unwrap();
    assert!(cpu > 0.0 && cpu < 50.0, "a quarter CPU's quota: {stats}");
    assert_eq!(
        busy["memory_limit_bytes"],
        serde_json::Value::Null,
        "{stats}"
    );
    let (ok, table, err) = stack.berth(&["stats", "--no-stream", "limited"]);
    assert!(ok, "{err}");
    assert!(table.starts_with("CONTAINER ID"), "{table}");
    assert!(table.contains("/ 96.0 MiB"), "{table}");
    assert!(!table.contains("busy"), "{table}");
    let (ok, _, err) = stack.berth(&["stats", "--no-stream", "nosuch"]);
    assert!(!ok);
    assert!(err.contains("nosuch"), "{err}");
    let (ok, _, err) = stack.berth(&["rm", "--force", "busy"]);
    assert!(ok, "{err}");

    // ...and the record, so the container's next task has the new limits.
    let (ok, _, err) = stack.berth(&["tasks", "kill", "-s", "KILL", "limited"]);
    assert!(ok, "{err}");
    let (_, status, _) = stack.berth(&["tasks", "wait", "limited"]);
    assert_eq!(status.trim(), "137");
    let (ok, _, err) = stack.berth(&["start", "limited"]);
    assert!(ok, "{err}");
    wait_for_status(&stack, "limited", "RUNNING");
    let (memory, _, pids) = limits();
    assert_eq!(memory, (96 << 20).to_string());
    assert_eq!(pids, "50");
    let (ok, _, err) = stack.berth(&["rm", "--force", "limited"]);
    assert!(ok, "{err}");
    // Nonsense is refused before anything is made.
    for bad in [["--memory", "lots"], ["--cpus", "0"], ["--pids-limit", "0"]] {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(&bad);
        args.extend_from_slice(&[RUN_IMAGE, "true"]);
        let out = run(&stack, &args);
        assert!(!out.status.success(), "{bad:?} accepted");
    }
    assert_nothing_left(&stack);
}

/// `--device`: a node made here (char 240:0, a major of the "local use"
/// range no driver has, so an open that the device cgroup lets through
/// fails with ENXIO, and one it stops with EPERM) appears where asked and
/// passes the device cgroup; the same node merely bind-mounted does not;
/// a directory gives the devices below it; `--privileged` gets the host's.
#[test]
fn host_devices_reach_the_container_and_pass_its_device_cgroup() {
    if !prerequisites() {
        return;
    }
    let (dir, stack) = setup();
    let devs = dir.path().join("devs");
    std::fs::create_dir_all(devs.join("sub")).unwrap();
    berth_e2e::make_char_device(&devs.join("local"), 240, 0);
    berth_e2e::make_char_device(&devs.join("sub").join("zero"), 1, 5);
    let local = devs.join("local");
    let local = local.to_str().unwrap();
    let sh = |args: &[&str], script: &str| {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[RUN_IMAGE, "sh", "-c", script]);
        let out = run(&stack, &all);
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let open = "stat -c %t:%T /dev/mine && exec 3<>/dev/mine";

    let given = format!("{local}:/dev/mine:rw");
    let (ok, out, err) = sh(&["--device", &given], open);
    assert!(!ok, "a device without a driver opened");
    assert_eq!(out, "f0:0\n", "{err}");
    assert!(
        err.contains("No such device or address"),
        "the device cgroup refused a given device: {err}"
    );

    // The node without --device: there, but the device cgroup refuses it.
    let bound = format!("{local}:/dev/mine");
    let (ok, out, err) = sh(&["-v", &bound], open);
    assert!(!ok, "a bind-mounted device opened: {out}");
    assert!(err.contains("not permitted"), "{err}");

    // A directory: every device below it, at the same place below.
    let tree = format!("{}:/dev/things", devs.display());
    let (ok, out, err) = sh(
        &["--device", &tree],
        "stat -c %t:%T /dev/things/local /dev/things/sub/zero && head -c 3 /dev/things/sub/zero | wc -c",
    );
    assert!(ok, "{out}{err}");
    assert_eq!(out, "f0:0\n1:5\n3\n");

    // Privileged: the host's devices (not the default few): /dev/kmsg is
    // on every host and not among a container's defaults.
    let probe = "test -c /dev/kmsg && echo host devices || echo defaults";
    let (ok, out, err) = sh(&["--privileged"], probe);
    assert!(ok, "{err}");
    assert_eq!(out, "host devices\n");
    let (ok, out, err) = sh(&[], probe);
    assert!(ok, "{err}");
    assert_eq!(out, "defaults\n");

    // Bad requests are refused before anything is made.
    let not_a_device = dir.path().join("run-image.tar");
    assert!(not_a_device.is_file());
    let no_devices = dir.path().join("empty");
    std::fs::create_dir(&no_devices).unwrap();
    for bad in [
        "dev/null",
        "/nonexistent/device",
        not_a_device.to_str().unwrap(),
        no_devices.to_str().unwrap(),
        "/dev/null:relative",
        "/dev/null:/dev/x:rwx",
    ] {
        let (ok, _, err) = sh(&["--device", bad], "true");
        assert!(!ok, "--device {bad} accepted");
        assert!(err.contains("device"), "{bad}: {err}");
    }
    assert_nothing_left(&stack);
}

#[test]
fn cdi_devices_bring_their_nodes_environment_mounts_hooks_and_groups() {
    if !prerequisites() {
        return;
    }
    let (dir, stack) = setup();
    // A vendor's device: a node made here (char 240:0, no driver: an open
    // the device cgroup lets through fails with ENXIO), a library
    // directory, a hook that leaves a mark on the host.
    let node = dir.path().join("vendor-node");
    berth_e2e::make_char_device(&node, 240, 0);
    let library = dir.path().join("vendor-lib");
    std::fs::create_dir(&library).unwrap();
    std::fs::write(library.join("libvendor"), "vendor library\n").unwrap();
    let mark = dir.path().join("hook-ran");
    let specs = dir.path().join("cdi");
    std::fs::create_dir(&specs).unwrap();
    std::fs::write(
        specs.join("vendor.yaml"),
        format!(
            r#"cdiVersion: "0.7.0"
kind: berth.test/accel
containerEdits:
  env: [ACCEL_VENDOR=berth]
devices:
  - name: "0"
    containerEdits:
      env: [ACCEL_DEVICE=0]
      deviceNodes:
        - path: /dev/accel0
          hostPath: {node}
          permissions: rw
      mounts:
        - hostPath: {library}
          containerPath: /usr/lib/accel
          options: [ro, nosuid, nodev, bind]
      hooks:
        - hookName: createRuntime
          path: /bin/sh
          args: [sh, -c, "echo hooked >> {mark}"]
      additionalGids: [4242]
"#,
            node = node.display(),
            library = library.display(),
            mark = mark.display(),
        ),
    )
    .unwrap();
    let spec_dir = specs.to_str().unwrap();
    let script = "echo $ACCEL_VENDOR $ACCEL_DEVICE; cat /usr/lib/accel/libvendor; \
        grep -o 4242 /proc/self/status; stat -c %t:%T /dev/accel0; \
        touch /usr/lib/accel/x 2>/dev/null && echo library writable; exec 3<>/dev/accel0";
    let out = run(
        &stack,
        &[
            "run",
            "--rm",
            "--cdi-spec-dir",
            spec_dir,
            "--device",
            "berth.test/accel=0",
            RUN_IMAGE,
            "sh",
            "-c",
            script,
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "a device without a driver opened");
    assert_eq!(stdout, "berth 0\nvendor library\n4242\nf0:0\n", "{stderr}");
    assert!(
        stderr.contains("No such device or address"),
        "the device cgroup refused the CDI device: {stderr}"
    );
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "hooked\n");

    // A device no spec names, and a spec file that is broken: refused with
    // the reason, and nothing made.
    std::fs::write(specs.join("broken.json"), "{").unwrap();
    let out = run(
        &stack,
        &[
            "run",
            "--rm",
            "--cdi-spec-dir",
            spec_dir,
            "--device",
            "berth.test/accel=1",
            RUN_IMAGE,
            "true",
        ],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unresolvable CDI devices: berth.test/accel=1")
            && stderr.contains("broken.json"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "hooked\n");
    assert_nothing_left(&stack);
}

#[test]
fn bind_mounts_are_read_only_or_writable_as_asked_and_stdin_is_forwarded() {
    if !prerequisites() {
        return;
    }
    let (dir, stack) = setup();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the host\n").unwrap();
    let ro = format!("{}:/data:ro", shared.display());
    let out = run(
        &stack,
        &[
            "run",
            "--rm",
            "-v",
            &ro,
            RUN_IMAGE,
            "sh",
            "-c",
            "cat /data/hello; touch /data/new && echo wrote",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "from the host\n",
        "{}",
        text(&out.stderr)
    );
    assert!(!shared.join("new").exists());
    let rw = format!("type=bind,src={},dst=/data", shared.display());
    let out = run(
        &stack,
        &[
            "run",
            "--rm",
            "--mount",
            &rw,
            RUN_IMAGE,
            "sh",
            "-c",
            "echo written > /data/new",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(shared.join("new")).unwrap(),
        "written\n"
    );
    // A relative destination is refused.
    let bad = format!("{}:data", shared.display());
    assert!(
        !run(&stack, &["run", "--rm", "-v", &bad, RUN_IMAGE, "true"])
            .status
            .success()
    );

    // -i: stdin reaches the container, and its end ends `cat`.
    let out = run_with_input(
        &stack,
        &["run", "--rm", "-i", RUN_IMAGE, "sh", "-c", "cat; echo done"],
        b"line one\nline two\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line one\nline two\ndone\n");

    // -d -i: the task keeps fifos, and `tasks attach` reaches them later:
    // our input to it, its output here, its exit status ours.
    let (ok, _, err) = stack.berth(&[
        "run",
        "-d",
        "-i",
        "--name",
        "attachable",
        RUN_IMAGE,
        "sh",
        "-c",
        "read line; echo got $line; exit 3",
    ]);
    assert!(ok, "{err}");
    wait_for_status(&stack, "attachable", "RUNNING");
    let fifo_dirs = || {
        std::fs::read_dir(stack.fifo_dir())
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(fifo_dirs(), 1, "the detached task's fifos");
    let out = run_with_input(&stack, &["tasks", "attach", "attachable"], b"hello\n");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "got hello\n");

    // The detach keys (ctrl-p ctrl-q) leave the task running and are not
    // passed on; what came before them is. Other keys can be chosen, and
    // then ctrl-p is input like any other.
    let (ok, _, err) = stack.berth(&[
        "run",
        "-d",
        "-i",
        "--name",
        "detachable",
        RUN_IMAGE,
        "sh",
        "-c",
        "while read line; do echo \"got $line\"; [ \"$line\" = last ] && break; done; echo bye",
    ]);
    assert!(ok, "{err}");
    wait_for_status(&stack, "detachable", "RUNNING");
    let first = run_with_input(&stack, &["tasks", "attach", "detachable"], b"one\n\x10\x11");
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("detached from detachable"),
        "{}",
        text(&first.stderr)
    );
    wait_for_status(&stack, "detachable", "RUNNING");
    let second = run_with_input(
        &stack,
        &["tasks", "attach", "--detach-keys", "ctrl-a", "detachable"],
        b"\x10x\nlast\n",
    );
    // (The task's stdin stays open between attaches: `last` ends it.)
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let said = format!("{}{}", text(&first.stdout), text(&second.stdout));
    assert_eq!(said, "got one\ngot \x10x\ngot last\nbye\n");
    let (ok, _, err) = stack.berth(&["tasks", "attach", "--detach-keys", "ctrl-", "detachable"]);
    assert!(!ok && err.contains("detach keys"), "{err}");
    let (ok, _, err) = stack.berth(&["rm", "detachable"]);
    assert!(ok, "{err}");
    let (ok, _, err) = stack.berth(&["rm", "attachable"]);
    assert!(ok, "{err}");
    assert_eq!(fifo_dirs(), 0, "rm left the task's fifos");

    // A task whose output goes to a log cannot be attached to, and says
    // where its output is.
    let (ok, _, err) = stack.berth(&["run", "-d", "--name", "logged", RUN_IMAGE, "sleep", "100"]);
    assert!(ok, "{err}");
    let (ok, _, err) = stack.berth(&["tasks", "attach", "logged"]);
    assert!(!ok && err.contains("logs -f logged"), "{err}");
    let (ok, _, err) = stack.berth(&["rm", "--force", "logged"]);
    assert!(ok, "{err}");
    assert_nothing_left(&stack);
}

/// Runs `berth ARGS` on a new pseudo terminal of 99x33 (python's pty
/// module holds the master), resizes it to 120x40 once the container has
/// printed `ready`, and returns everything the terminal showed.
const PTY_DRIVER: &str = r#"
import fcntl, os, select, struct, subprocess, sys, termios, time
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 99, 0, 0))
def controlling():
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
child = subprocess.Popen(sys.argv[1:], stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling)
os.close(slave)
seen = b""
resized = False
deadline = time.time() + 60
while time.time() < deadline:
    ready, _, _ = select.select([master], [], [], 0.2)
    if ready:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    if not resized and b"ready" in seen:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        resized = True
    if child.poll() is not None and not ready:
        break
child.wait()
sys.stdout.write(seen.decode(errors="replace"))
sys.stdout.write("\nEXIT %d\n" % child.returncode)
"#;

#[test]
fn a_terminal_under_t_has_our_size_and_follows_resizes() {
    if !prerequisites() || !require(on_path("python3"), "python3 is not installed") {
        return;
    }
    let (_dir, stack) = setup();
    let berth = stack.command(&[]);
    let mut python = std::process::Command::new("python3");
    python.arg("-c").arg(PTY_DRIVER).arg(berth.get_program());
    for (key, value) in berth.get_envs() {
        match value {
            Some(value) => python.env(key, value),
            None => python.env_remove(key),
        };
    }
    let script = "tty; stty size; echo ready; \
                  while [ \"$(stty size)\" != \"40 120\" ]; do sleep 0.1; done; \
                  echo resized; exit 6";
    let out = python
        .args(["run", "--rm", "-t", RUN_IMAGE, "sh", "-c", script])
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/"), "no terminal inside: {shown}");
    assert!(shown.contains("33 99"), "size not passed in: {shown}");
    assert!(shown.contains("resized"), "resize not seen inside: {shown}");
    assert!(shown.contains("EXIT 6"), "{shown} {}", text(&out.stderr));

    // The same for an exec with a terminal in a running container.
    let (ok, _, err) = stack.berth(&["run", "-d", "--name", "host", RUN_IMAGE, "sleep", "1000"]);
    assert!(ok, "{err}");
    wait_for_status(&stack, "host", "RUNNING");
    let mut python = std::process::Command::new("python3");
    python.arg("-c").arg(PTY_DRIVER).arg(berth.get_program());
    for (key, value) in berth.get_envs() {
        match value {
            Some(value) => python.env(key, value),
            None => python.env_remove(key),
        };
    }
    let out = python
        .args(["tasks", "exec", "-t", "host", "sh", "-c", script])
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/"), "exec: no terminal: {shown}");
    assert!(shown.contains("resized"), "exec: resize not seen: {shown}");
    assert!(
        shown.contains("EXIT 6"),
        "exec: {shown} {}",
        text(&out.stderr)
    );
    let (ok, _, err) = stack.berth(&["rm", "--force", "host"]);
    assert!(ok, "{err}");
    assert_nothing_left(&stack);
}

#[test]
fn fifty_runs_in_a_row_leave_no_shim_mount_cgroup_or_bundle() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let taskd_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", stack.taskd.pid()))
            .unwrap()
            .count()
    };
    // One run first: whatever taskd opens once (connections, the runtime's
    // own) is open before counting.
    let out = run(&stack, &["run", "--rm", RUN_IMAGE, "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fds_before = taskd_fds();
    for i in 0..50 {
        let name = format!("churn{i}");
        let out = run(&stack, &["run", "--rm", "--name", &name, RUN_IMAGE, "true"]);
        assert!(out.status.success(), "run {i}: {}", text(&out.stderr));
    }
    assert_nothing_left(&stack);
    let left: Vec<PathBuf> = (0..50)
        .flat_map(|i| cgroups_of(&format!("churn{i}")))
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    // Nothing per container stays open in taskd (its shims' log fifos);
    // the last runs' connections close on their own time. A leak would be
    // fifty or more.
    wait_until(
        &format!("taskd's descriptors back near {fds_before}"),
        taskd_fds,
        |after| *after <= fds_before + 4,
    );
}

#[test]
fn create_ps_logs_and_rm_work_over_the_whole_stack() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let (ok, id, err) =
        stack.berth(&["create", "--name", "made", RUN_IMAGE, "sh", "-c", "echo hi"]);
    assert!(ok, "{err}");
    assert_eq!(id.trim(), "made");
    let listed = stack.berth_json(&["ps", "-a"]);
    assert_eq!(listed[0]["id"], "made");
    assert_eq!(listed[0]["status"], "created");
    assert_eq!(listed[0]["command"], "sh -c echo hi");
    // The name is taken: a run by that name (attached or not) fails and
    // leaves the container that has it as it was, its snapshot too.
    for detach in [false, true] {
        let mut args = vec!["run", "--name", "made", RUN_IMAGE, "true"];
        args.insert(1, if detach { "-d" } else { "--rm" });
        let (ok, _, err) = stack.berth(&args);
        assert!(!ok && err.contains("already exists"), "{args:?}: {err}");
    }
    let listed = stack.berth_json(&["ps", "-a"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["command"], "sh -c echo hi");
    let (ok, snapshots, _) = stack.berth(&["snapshots", "ls"]);
    assert!(ok && snapshots.contains("made"), "{snapshots}");
    let out = run(&stack, &["tasks", "start", "made"]);
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let listed = stack.berth_json(&["ps", "-a"]);
    assert_eq!(listed[0]["status"], "exited (0)");
    assert!(stack.berth_json(&["ps"]).as_array().unwrap().is_empty());
    let (ok, _, err) = stack.berth(&["rm", "made"]);
    assert!(ok, "{err}");

    // ctr's form: IMAGE ID COMMAND, flags first; the spec is built from the
    // image and the flags, the snapshot prepared.
    let (ok, id, err) = stack.berth(&[
        "containers",
        "create",
        "--env",
        "GREETING=from containers create",
        RUN_IMAGE,
        "made-too",
        "sh",
        "-c",
        "echo $GREETING; exit 7",
    ]);
    assert!(ok, "{err}");
    assert_eq!(id.trim(), "made-too");
    let info = stack.berth_json(&["containers", "info", "made-too"]);
    assert_eq!(info["snapshot_key"], "made-too");
    assert_eq!(
        info["spec"]["json"]["process"]["args"],
        serde_json::json!(["sh", "-c", "echo $GREETING; exit 7"])
    );
    let (ok, snapshots, _) = stack.berth(&["snapshots", "ls"]);
    assert!(ok && snapshots.contains("made-too"), "{snapshots}");
    let out = run(&stack, &["tasks", "start", "made-too"]);
    assert_eq!(text(&out.stdout), "from containers create\n");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let (ok, _, err) = stack.berth(&["rm", "made-too"]);
    assert!(ok, "{err}");
    let (ok, _, err) = stack.berth(&["containers", "create", "--name", "x", RUN_IMAGE, "y"]);
    assert!(!ok && err.contains("not --name"), "{err}");

    let (ok, _, err) = stack.berth(&[
        "run",
        "-d",
        "--name",
        "chatty",
        RUN_IMAGE,
        "sh",
        "-c",
        "echo one; echo two >&2; sleep 1000",
    ]);
    assert!(ok, "{err}");
    wait_for_status(&stack, "chatty", "RUNNING");
    let listed = stack.berth_json(&["ps"]);
    assert_eq!(listed[0]["status"], "running");
    // Output arrives asynchronously: poll until both lines are in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (ok, log, err) = stack.berth(&["logs", "chatty"]);
        assert!(ok, "{err}");
        if log.contains("one\n") && log.contains("two\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "log: {log:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (ok, _, err) = stack.berth(&["rm", "chatty"]);
    assert!(!ok, "a running container was removed");
    assert!(err.contains("--force"), "{err}");
    let (ok, _, err) = stack.berth(&["rm", "--force", "chatty"]);
    assert!(ok, "{err}");
    assert!(!stack.log_dir().join("default/chatty.log").exists());
    assert_nothing_left(&stack);
}

/// Runs `test` on a thread of its own inside a new network namespace with
/// `lo` up. Whatever it spawns (daemons, shims, runc, the CNI plugins they
/// run) is born there too, so bridges, veths, addresses and iptables rules
/// stay off the host's network and vanish with the namespace.
fn in_own_network_namespace(test: impl FnOnce() + Send + 'static) {
    let result = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running ip");
        assert!(up.success(), "ip link set lo up");
        test()
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// One HTTP/1.0 GET of `/` from `address`; None until something answers.
fn http_get(address: &str) -> Option<String> {
    use std::io::{Read, Write};
    let address: std::net::SocketAddr = address.parse().unwrap();
    let mut stream =
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn http_get_eventually(address: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match http_get(address) {
            Some(answer) if !answer.is_empty() => return answer,
            _ if std::time::Instant::now() > deadline => panic!("nothing answers on {address}"),
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// `berth run --net bridge -p`, as with nerdctl: the container gets an
/// address on berth's default bridge (its conflist written on first use),
/// its published ports answer on the host, its /etc/hosts and resolv.conf
/// are its own; `berth rm` (its task's poststop hook) gives back the
/// address and removes the port rules. Bad network flags change nothing.
#[test]
fn bridge_network_publishes_ports_and_goes_with_the_task() {
    if !prerequisites()
        || !require(
            Path::new("/usr/lib/cni/bridge").exists(),
            "containernetworking-plugins",
        )
        || !require(on_path("iptables"), "iptables")
        || !require(on_path("ip"), "iproute2")
    {
        return;
    }
    in_own_network_namespace(|| {
        let (dir, stack) = setup();
        let conf_dir = dir.path().join("net.d");
        let run_dir = dir.path().join("run");
        let berth = |args: &[&str]| {
            stack
                .command(args)
                .env("BERTH_CNI_CONF_DIR", &conf_dir)
                .env("BERTH_RUN_DIR", &run_dir)
                .output()
                .expect("running berth")
        };

        // Flags that need a CNI network, or a network that is not there:
        // refused, and nothing is made.
        let out = berth(&["run", "--rm", "-p", "8080:80", RUN_IMAGE, "true"]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("--publish needs a CNI network"),
            "{}",
            text(&out.stderr)
        );
        let out = berth(&["run", "--rm", "--net", "nosuch", RUN_IMAGE, "true"]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("no CNI network \"nosuch\""),
            "{}",
            text(&out.stderr)
        );
        let out = berth(&[
            "run", "--rm", "--net", "bridge", "-p", "80", RUN_IMAGE, "true",
        ]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("no host port"),
            "{}",
            text(&out.stderr)
        );
        assert_nothing_left(&stack);
        assert!(
            !conf_dir.exists(),
            "a refused run wrote network configuration"
        );

        // What a `berth run` killed before it recorded its container left
        // behind: an old directory goes with the next run on a network, a
        // fresh one (a run still on its way) stays.
        let networks = run_dir.join("networks/default");
        let aged = |dir: &Path| {
            let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            std::fs::File::open(dir)
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        };
        for orphan in ["killed-run", "run-on-its-way"] {
            std::fs::create_dir_all(networks.join(orphan)).unwrap();
            std::fs::write(networks.join(orphan).join("hosts"), "").unwrap();
        }
        aged(&networks.join("killed-run"));

        let out = berth(&[
            "run",
            "-d",
            "--name",
            "bridged",
            "--net",
            "bridge",
            "-p",
            "127.0.0.1:18080:80",
            "--add-host",
            "db.example:192.0.2.9",
            "--dns",
            "192.0.2.53",
            RUN_IMAGE,
            "sh",
            "-c",
            "busybox mkdir -p /www && echo hello-from-web > /www/index.html && exec busybox httpd -f -p 80 -h /www",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            conf_dir.join("berth-bridge.conflist").exists(),
            "the default bridge network was not written"
        );

        assert!(
            !networks.join("killed-run").exists(),
            "an old unrecorded container's network files stayed"
        );
        assert!(networks.join("run-on-its-way").exists());

        let answer = http_get_eventually("127.0.0.1:18080");
        assert!(answer.contains("hello-from-web"), "{answer}");
        // berth ps shows the published port, and the container's address
        // (read from its network's state), which answers too from the
        // host's side of the bridge.
        let out = berth(&["--format", "json", "ps"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "bridged")
            .unwrap_or_else(|| panic!("bridged not in ps: {rows}"));
        assert_eq!(row["ports"], serde_json::json!(["127.0.0.1:18080->80/tcp"]));
        let address = row["addresses"][0]
            .as_str()
            .unwrap_or_else(|| panic!("no address in ps: {rows}"))
            .to_string();
        assert!(address.starts_with("10.87."), "{address}");
        let answer = http_get_eventually(&format!("{address}:80"));
        assert!(answer.contains("hello-from-web"), "{answer}");

        let out = berth(&[
            "tasks",
            "exec",
            "bridged",
            "cat",
            "/etc/hosts",
            "/etc/resolv.conf",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let files = text(&out.stdout);
        assert!(files.contains(&format!("{address}\tbridged\n")), "{files}");
        assert!(files.contains("192.0.2.9\tdb.example\n"), "{files}");
        assert!(files.contains("nameserver 192.0.2.53\n"), "{files}");

        // A recorded container's files stay, however old.
        aged(&networks.join("bridged"));
        let out = berth(&[
            "run",
            "--rm",
            "--net",
            "bridge",
            "--cgroup-manager",
            "bogus",
            RUN_IMAGE,
            "true",
        ]);
        assert!(!out.status.success());
        assert!(networks.join("bridged/hosts").exists());

        let lease = run_dir.join("cni/ipam/bridge").join(&address);
        assert!(lease.exists(), "no lease at {}", lease.display());
        let nat = || {
            let out = std::process::Command::new("iptables-save")
                .args(["-t", "nat"])
                .output()
                .expect("iptables-save");
            text(&out.stdout)
        };
        assert!(nat().contains("18080"), "no port rule:\n{}", nat());

        // In a user namespace (`--userns-remap`), runc makes the network
        // namespace inside it and the hook attaches it to the bridge as
        // before: sysfs shows the container's own interface.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let etc = private_etc_with_subids(dir.path());
        let mut remapped = with_private_etc(
            stack.command(&[
                "run",
                "--rm",
                "--net",
                "bridge",
                "--userns-remap",
                "berthtest",
                RUN_IMAGE,
                "sh",
                "-c",
                "cat /proc/self/uid_map; busybox ls /sys/class/net",
            ]),
            &etc,
        );
        let out = remapped
            .env("BERTH_CNI_CONF_DIR", &conf_dir)
            .env("BERTH_RUN_DIR", &run_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let said = text(&out.stdout);
        assert!(said.contains("300000") && said.contains("eth0"), "{said}");

        let out = berth(&["rm", "--force", "bridged"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(!lease.exists(), "the address was not given back");
        assert!(
            !nat().contains("18080"),
            "the port rule outlived the container:\n{}",
            nat()
        );
        assert!(
            http_get("127.0.0.1:18080").is_none(),
            "the port still answers"
        );
        assert!(
            !networks.join("bridged").exists(),
            "the container's network files outlived it"
        );
        assert_nothing_left(&stack);

        // A flag refused after the network was prepared leaves no files.
        let out = berth(&[
            "run",
            "--rm",
            "--name",
            "bad",
            "--net",
            "bridge",
            "--cgroup-manager",
            "bogus",
            RUN_IMAGE,
            "true",
        ]);
        assert!(!out.status.success());
        assert!(
            !run_dir.join("networks/default/bad").exists(),
            "a refused run left network files"
        );

        // A run to its end with --rm: attached, detached, gone.
        let out = berth(&[
            "run",
            "--rm",
            "--net",
            "bridge",
            "--name",
            "once",
            RUN_IMAGE,
            "cat",
            "/etc/hosts",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("\tonce\n"),
            "{}",
            text(&out.stdout)
        );
        let leases: Vec<_> = std::fs::read_dir(run_dir.join("cni/ipam/bridge"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("10."))
            .collect();
        assert!(leases.is_empty(), "addresses still leased: {leases:?}");
        assert_nothing_left(&stack);
    });
}

/// Waits until `path` holds `want` (a container's log fills as it runs).
fn wait_for_log(path: &Path, want: &str) {
    wait_until(
        &format!("{} never held {want:?}", path.display()),
        || std::fs::read_to_string(path).unwrap_or_default(),
        |text| text == want,
    );
}

/// `berth stop`, `start`, `restart`, `kill` and `exec`, as nerdctl and
/// docker users type them: stop asks with the container's stop signal
/// (the flag's, the recorded one, else SIGTERM) and kills after --time,
/// deleting the task and keeping the container; start makes a new task
/// whose output is appended to the container's log (one is given to a
/// container that had none), or with -a attached and exiting with the
/// container's status; kill sends SIGKILL unless told otherwise.
#[test]
fn containers_stop_start_restart_and_kill_as_nerdctl_users_expect() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let log = |id: &str| stack.log_dir().join("default").join(format!("{id}.log"));
    let script = "echo started; trap 'echo term; exit 3' TERM; trap 'echo usr1; exit 0' USR1; \
                  while true; do sleep 0.1; done";
    let out = run(
        &stack,
        &[
            "run",
            "-d",
            "--name",
            "cycle-web",
            RUN_IMAGE,
            "sh",
            "-c",
            script,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_log(&log("cycle-web"), "started\n");

    let out = run(
        &stack,
        &["exec", "cycle-web", "sh", "-c", "echo via-exec; exit 4"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "via-exec\n");

    // Stop: SIGTERM, handled; the task goes, the container stays.
    let out = run(&stack, &["stop", "-t", "30", "cycle-web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "cycle-web");
    wait_for_log(&log("cycle-web"), "started\nterm\n");
    let (_, tasks, _) = stack.berth(&["tasks", "ls", "-q"]);
    assert_eq!(tasks.trim(), "", "stop leaves no task");
    let (_, containers, _) = stack.berth(&["containers", "ls", "-q"]);
    assert_eq!(containers.trim(), "cycle-web");
    // Stopping a stopped container is no error.
    let out = run(&stack, &["stop", "cycle-web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Start: a new task, its output after the old in the same log.
    let out = run(&stack, &["start", "cycle-web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "cycle-web");
    wait_for_status(&stack, "cycle-web", "RUNNING");
    wait_for_log(&log("cycle-web"), "started\nterm\nstarted\n");
    // Starting a running container changes nothing.
    let out = run(&stack, &["start", "cycle-web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&stack, &["logs", "cycle-web"]);
    assert_eq!(text(&out.stdout), "started\nterm\nstarted\n");

    // Restart with another signal; a paused container is stopped too.
    let (ok, _, err) = stack.berth(&["tasks", "pause", "cycle-web"]);
    assert!(ok, "{err}");
    wait_for_status(&stack, "cycle-web", "PAUSED");
    let out = run(&stack, &["restart", "-s", "USR1", "cycle-web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "cycle-web", "RUNNING");
    wait_for_log(&log("cycle-web"), "started\nterm\nstarted\nusr1\nstarted\n");

    // Kill: SIGKILL by default; start replaces the stopped task.
    let out = run(&stack, &["kill", "cycle-web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&stack, &["tasks", "wait", "cycle-web"]);
    assert_eq!(text(&out.stdout).trim(), "137", "{}", text(&out.stderr));
    let out = run(&stack, &["start", "cycle-web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "cycle-web", "RUNNING");

    // The recorded stop signal, as an image's StopSignal is recorded.
    let out = run(
        &stack,
        &[
            "run",
            "-d",
            "--name",
            "cycle-quits",
            "--label",
            "berth.io/stop-signal=SIGUSR1",
            RUN_IMAGE,
            "sh",
            "-c",
            script,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_log(&log("cycle-quits"), "started\n");
    let out = run(&stack, &["stop", "cycle-quits"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_log(&log("cycle-quits"), "started\nusr1\n");

    // sleep as pid 1 ignores SIGTERM: stop kills it after --time, and the
    // task is gone (a delete of a running task would have failed).
    let out = run(
        &stack,
        &[
            "run",
            "-d",
            "--name",
            "cycle-stubborn",
            RUN_IMAGE,
            "sleep",
            "1000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "cycle-stubborn", "RUNNING");
    let out = run(&stack, &["stop", "-t", "1", "cycle-stubborn"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, tasks, _) = stack.berth(&["tasks", "ls", "-q"]);
    assert_eq!(tasks.trim(), "cycle-web");

    // A created container, which has no log yet, gets one when started.
    let out = run(
        &stack,
        &[
            "create",
            "--name",
            "cycle-made",
            RUN_IMAGE,
            "sh",
            "-c",
            "echo made",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&stack, &["start", "cycle-made"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&stack, &["tasks", "wait", "cycle-made"]);
    assert_eq!(text(&out.stdout).trim(), "0", "{}", text(&out.stderr));
    let out = run(&stack, &["logs", "cycle-made"]);
    assert_eq!(text(&out.stdout), "made\n", "{}", text(&out.stderr));
    // Attached: the output here, and the container's status.
    let out = run(
        &stack,
        &[
            "create",
            "--name",
            "cycle-attached",
            RUN_IMAGE,
            "sh",
            "-c",
            "echo here; exit 7",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&stack, &["start", "-a", "cycle-attached"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "here\n");

    // Unknown containers: a clear error (stop included: not taken for a
    // container already stopped).
    for verb in ["start", "stop", "restart"] {
        let out = run(&stack, &[verb, "nosuch"]);
        assert!(!out.status.success(), "{verb} nosuch succeeded");
        assert!(
            text(&out.stderr).contains("container nosuch"),
            "{verb}: {}",
            text(&out.stderr)
        );
    }

    for id in [
        "cycle-web",
        "cycle-quits",
        "cycle-stubborn",
        "cycle-made",
        "cycle-attached",
    ] {
        let (ok, _, err) = stack.berth(&["rm", "-f", id]);
        assert!(ok, "rm {id}: {err}");
    }
    assert_nothing_left(&stack);
}

/// `--cgroup-parent`: the container's cgroup is PARENT/ID (its limit read
/// back there, its init process in it), and goes with the container; a
/// parent that is not an absolute path of plain names is refused before
/// anything is made.
#[test]
fn a_cgroup_parent_holds_the_containers_cgroup() {
    if !prerequisites() {
        return;
    }
    let (_dir, stack) = setup();
    let parent = format!("/berth-e2e-parent-{}", std::process::id());
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let memory_dir = if unified {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    let cgroup = memory_dir.join(&parent[1..]).join("parented");
    let out = run(
        &stack,
        &[
            "run",
            "-d",
            "--name",
            "parented",
            "--cgroup-parent",
            &parent,
            "--memory",
            "48m",
            RUN_IMAGE,
            "sleep",
            "1000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_status(&stack, "parented", "RUNNING");
    let limit_file = if unified {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit = std::fs::read_to_string(cgroup.join(limit_file))
        .unwrap_or_else(|e| panic!("{}: {e}", cgroup.display()));
    assert_eq!(limit.trim(), (48 << 20).to_string());
    let tasks = stack.berth_json(&["tasks", "ls"]);
    let pid = tasks[0]["pid"].as_u64().unwrap().to_string();
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|p| p == pid), "{pid} not in {procs}");
    let (ok, _, err) = stack.berth(&["rm", "--force", "parented"]);
    assert!(ok, "{err}");
    assert!(!cgroup.exists(), "the container's cgroup outlived it");
    // runc leaves the parent it made; this test made it through runc.
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(&parent[1..]));
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&parent[1..]));

    for bad in ["relative", "/a/../../escape", "/a b", "/a//b"] {
        let out = run(
            &stack,
            &["run", "--rm", "--cgroup-parent", bad, RUN_IMAGE, "true"],
        );
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            text(&out.stderr).contains("cgroup parent"),
            "{bad:?}: {}",
            text(&out.stderr)
        );
    }
    assert_nothing_left(&stack);
}

/// The tests above whose subject cgroups touch (limits, a cgroup parent,
/// the freezer behind pause, metrics, the device filter, cleanup) and the
/// security defaults, once more in a virtual machine whose kernel has
/// cgroup v2 alone (berth_e2e::guest): on this host every controller but
/// hugetlb is bound to v1, so the v2 paths of berth, its shim and runc
/// would otherwise never run.
#[test]
fn the_cgroup_tests_pass_again_on_a_cgroup_v2_kernel() {
    if !prerequisites() {
        return;
    }
    let guest = berth_e2e::guest::Guest::find();
    if !require(
        guest.is_ok(),
        guest.as_ref().err().map_or("", String::as_str),
    ) {
        return;
    }
    let tests = [
        "run_rm_prints_and_exits_with_the_containers_status_and_leaves_nothing",
        "containers_get_the_security_defaults",
        "detached_containers_take_exec_pause_ps_kill_and_log_to_a_file",
        "resource_limits_reach_the_containers_cgroup",
        "a_cgroup_parent_holds_the_containers_cgroup",
        "host_devices_reach_the_container_and_pass_its_device_cgroup",
    ];
    let dir = tempfile::Builder::new()
        .prefix("berth-guest-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let run = guest
        .unwrap()
        .run_tests(dir.path(), &tests, "cgroup_no_v1=all");
    run.assert_all_passed_on_cgroup_v2(&tests);
}
