//! End-to-end: upstream containerd and `ctr` drive the shim. Every scenario
//! runs for our shim and for containerd's own Go runc shim, so the
//! expectations are containerd's, not ours; and each runs under Debian's
//! containerd 1.6.20 (module `v16`) and under containerd 2.2.7 from
//! ../shared/peers (module `v22`, with 2.2.7's Go shim).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{running, text, Containerd, Version, BERTH, RUNC};

/// One test per scenario, containerd version and shim:
/// `v16::berth::NAME`, `v16::runc::NAME`, `v22::berth::NAME`, `v22::runc::NAME`.
macro_rules! for_every_variant {
    ($($name:ident),* $(,)?) => {
        mod v16 { for_every_variant!(@shims V16; $($name),*); }
        mod v22 { for_every_variant!(@shims V22; $($name),*); }
    };
    (@shims $version:ident; $($name:ident),*) => {
        mod berth { for_every_variant!(@tests $version, BERTH; $($name),*); }
        mod runc { for_every_variant!(@tests $version, RUNC; $($name),*); }
    };
    (@tests $version:ident, $runtime:ident; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let version = crate::Version::$version;
                if crate::support::prerequisites(version) {
                    crate::$name(crate::Containerd::start(version), crate::$runtime)
                }
            }
        )*
    };
}

for_every_variant!(
    run_prints_output_and_propagates_exit_code,
    run_with_terminal,
    exec_with_and_without_terminal,
    tty_exec_delivers_a_large_output_before_its_status,
    kill_with_sigterm_and_sigkill,
    pause_resume_ps_and_metrics,
    oom_is_reported_and_the_task_exits_137,
    update_changes_the_memory_limit,
    log_uri_file_and_binary,
    delete_of_a_running_task,
    containerd_restart_keeps_the_task,
    fifty_containers_leave_nothing_behind,
    user_namespaced_stdio_can_be_reopened,
    an_exec_racing_an_init_kill_never_outlives_it,
    containers_of_one_pod_share_a_shim,
);

/// containerd 2.x only (1.6's ctr has no `plugins inspect-runtime`).
mod v22_only {
    macro_rules! for_both_shims {
        ($($name:ident),*) => {
            mod berth { $(#[test] fn $name() {
                let version = crate::Version::V22;
                if crate::support::prerequisites(version) {
                    crate::$name(crate::Containerd::start(version), crate::BERTH)
                }
            })* }
            mod runc { $(#[test] fn $name() {
                let version = crate::Version::V22;
                if crate::support::prerequisites(version) {
                    crate::$name(crate::Containerd::start(version), crate::RUNC)
                }
            })* }
        };
    }
    for_both_shims!(inspect_runtime_reports_the_runtimes_features);
}

/// Our shim only: it starts a runc container without a `runc start`
/// process, releasing the created init through runc's exec fifo itself,
/// and deletes a stopped one without `runc delete`, removing its cgroups
/// and state itself; a runtime of another name still gets `start` and
/// `delete`. Under both containerds.
mod berth_start {
    #[test]
    fn v16() {
        if crate::support::prerequisites(crate::Version::V16) {
            crate::a_runc_container_starts_and_goes_without_runc_start_or_delete(
                crate::Containerd::start(crate::Version::V16),
            )
        }
    }
    #[test]
    fn v22() {
        if crate::support::prerequisites(crate::Version::V22) {
            crate::a_runc_container_starts_and_goes_without_runc_start_or_delete(
                crate::Containerd::start(crate::Version::V22),
            )
        }
    }
}

/// Through wrappers that log every runc command line before running it: one
/// named `runc` (no `runc start` or `runc delete`), one named otherwise
/// (both). Either way the container runs, reports its output and status,
/// runc itself sees it running, exec and kill work on it, and its delete
/// leaves none of its cgroups and no runc state behind.
fn a_runc_container_starts_and_goes_without_runc_start_or_delete(containerd: Containerd) {
    let runc = support::which("runc").expect("runc is on PATH");
    let log = containerd.dir.path().join("runc-calls.log");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {log}\nexec {runc} \"$@\"\n",
        log = log.display(),
        runc = runc.display()
    );
    let named_runc = containerd.dir.path().join("wrapped").join("runc");
    let named_otherwise = containerd.dir.path().join("runc-logged");
    std::fs::create_dir_all(named_runc.parent().unwrap()).unwrap();
    for wrapper in [&named_runc, &named_otherwise] {
        std::fs::write(wrapper, &script).unwrap();
        std::fs::set_permissions(wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let calls = || -> Vec<Vec<String>> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|line| line.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let ran = |command: &str, id: &str| {
        calls().iter().any(|call| {
            call.iter().any(|a| a == command) && call.last().map(String::as_str) == Some(id)
        })
    };

    for (wrapper, through_fifo) in [(&named_runc, true), (&named_otherwise, false)] {
        let _ = std::fs::remove_file(&log);
        let config = containerd.dir.path().join("berth-runtime.toml");
        std::fs::write(&config, format!("BinaryName = \"{}\"\n", wrapper.display())).unwrap();
        let config_arg = config.display().to_string();
        let flags = ["--runtime-config-path", config_arg.as_str()];

        let mut extra = vec!["--rm"];
        extra.extend(flags);
        let out = containerd.run(BERTH, &extra, "once", &["sh", "-c", "echo started; exit 3"]);
        assert_eq!(text(&out.stdout).trim(), "started", "{}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(3));
        let create = calls()
            .into_iter()
            .find(|call| call.iter().any(|a| a == "create"))
            .expect("runc create ran through the wrapper");
        assert_eq!(ran("start", "once"), !through_fifo, "{:?}", calls());
        assert_eq!(ran("delete", "once"), !through_fifo, "{:?}", calls());

        let mut extra = vec!["-d"];
        extra.extend(flags);
        let out = containerd.run(BERTH, &extra, "long", &["sleep", "100000"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        containerd.wait_for_status("long", "RUNNING");
        assert_eq!(ran("start", "long"), !through_fifo, "{:?}", calls());
        let root = create
            .iter()
            .skip_while(|a| *a != "--root")
            .nth(1)
            .expect("create names runc's root")
            .clone();
        let state = std::process::Command::new(&runc)
            .args(["--root", &root, "state", "long"])
            .output()
            .unwrap();
        let state: serde_json::Value = serde_json::from_slice(&state.stdout)
            .unwrap_or_else(|_| panic!("runc state: {}", text(&state.stderr)));
        assert_eq!(state["status"], "running", "{state}");
        let out = containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "probe",
            "long",
            "echo",
            "inside",
        ]);
        assert_eq!(text(&out.stdout).trim(), "inside", "{}", text(&out.stderr));
        let runc_state = std::path::Path::new(&root).join("long");
        let cgroups: Vec<String> = serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(runc_state.join("state.json")).unwrap(),
        )
        .unwrap()["cgroup_paths"]
            .as_object()
            .expect("runc's state names the cgroups")
            .values()
            .map(|path| path.as_str().unwrap().to_string())
            .collect();
        assert!(
            cgroups
                .iter()
                .any(|path| std::path::Path::new(path).exists()),
            "{cgroups:?}"
        );
        kill_until_stopped(&containerd, &["--signal", "SIGKILL"], "long");
        assert_eq!(delete_reporting_exit_status(&containerd, "long"), 137);
        assert_eq!(ran("delete", "long"), !through_fifo, "{:?}", calls());
        let left: Vec<&String> = cgroups
            .iter()
            .filter(|path| std::path::Path::new(path).exists())
            .collect();
        assert!(left.is_empty(), "cgroups left: {left:?}");
        assert!(!runc_state.exists(), "runc's state is left");
        let out = containerd.ctr(&["container", "rm", "long"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    containerd.assert_no_shims();
}

fn run_prints_output_and_propagates_exit_code(containerd: Containerd, runtime: &str) {
    let out = containerd.run(
        runtime,
        &["--rm"],
        "out",
        &["sh", "-c", "echo hello-from-$0; exit 7"],
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "hello-from-sh",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7));
    let out = containerd.run(runtime, &["--rm"], "ok", &["true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    containerd.assert_no_shims();
}

/// Runs a ctr command under `script`, so it has a terminal, feeding `input`.
fn with_terminal(containerd: &Containerd, args: &[String], input: &str) -> (String, Option<i32>) {
    let mut line = containerd.ctr_shell_prefix();
    for arg in args {
        line.push_str(&format!(" '{arg}'"));
    }
    let mut child = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Give the shell time to start before typing, as a person would.
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (text(&out.stdout).replace('\r', ""), out.status.code())
}

/// Runs a ctr command with a pseudo-terminal as its stdin, stdout and
/// stderr, and returns all it wrote there and its exit code. The test
/// reads the terminal itself, as fast as it can: ctr closes a process's
/// fifos as soon as it has deleted the process, so what it has not yet
/// copied to a slow terminal by then is lost, whatever the shim did.
fn with_pty(containerd: &Containerd, args: &[&str]) -> (Vec<u8>, Option<i32>) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = containerd
        .ctr_command(args)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut output = Vec::new();
        let mut buf = vec![0; 1 << 16];
        // EIO once ctr, the only holder of the terminal, is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            output.extend_from_slice(&buf[..n]);
        }
        output
    });
    let status = child.wait().unwrap();
    (reader.join().unwrap(), status.code())
}

fn run_with_terminal(containerd: Containerd, runtime: &str) {
    let args = containerd.run_args(runtime, &["--rm", "-t"], "tty", &["sh"]);
    let (output, code) = with_terminal(&containerd, &args, "tty; echo tty-$((40+2)); exit 3\n");
    assert!(output.contains("/dev/pts/0"), "{output}");
    assert!(output.contains("tty-42"), "{output}");
    assert_eq!(code, Some(3), "{output}");
}

fn exec_with_and_without_terminal(containerd: Containerd, runtime: &str) {
    containerd.run_detached(runtime, "exec", &["sleep", "1000"]);
    let fifo = containerd.fifo_dir().display().to_string();
    let out = containerd.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "e1",
        "exec",
        "sh",
        "-c",
        "echo in-exec; exit 5",
    ]);
    assert_eq!(text(&out.stdout).trim(), "in-exec", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(5));

    // A duplicate exec id is refused while the first is registered.
    let out = containerd.ctr(&[
        "task",
        "exec",
        "-d",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "e2",
        "exec",
        "sleep",
        "100",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = containerd.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "e2",
        "exec",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    let args: Vec<String> = [
        "task",
        "exec",
        "-t",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "e3",
        "exec",
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (output, code) = with_terminal(&containerd, &args, "tty; exit 4\n");
    assert!(output.contains("/dev/pts/"), "{output}");
    assert_eq!(code, Some(4), "{output}");
    containerd.remove("exec");
}

/// The exit status containerd reports for the stopped task `id`, read while
/// deleting it. ctr's `task delete` (1.6 and 2.2 alike) exits 0 whatever
/// the status and only warns "task ID exit with non-zero exit code N" on
/// stderr, so that line is the status, and its absence is a clean exit.
fn delete_reporting_exit_status(containerd: &Containerd, id: &str) -> u32 {
    let out = containerd.ctr(&["task", "delete", id]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "task delete {id}: {stderr}");
    let marker = format!("task {id} exit with non-zero exit code ");
    let Some((_, rest)) = stderr.split_once(&marker) else {
        assert!(
            !stderr.contains("exit code"),
            "unexpected delete output: {stderr}"
        );
        return 0;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no exit code in: {stderr}"))
}

/// Sends `ctr task kill <args> <id>` until the task stops: a shell that is
/// pid 1 drops SIGTERM until its trap is set, so a signal sent while it is
/// starting up is lost, not fatal. A second signal after the first one
/// took is refused (the task is gone), which is fine.
fn kill_until_stopped(containerd: &Containerd, args: &[&str], id: &str) {
    let mut cmd = vec!["task", "kill"];
    cmd.extend_from_slice(args);
    cmd.push(id);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = false;
    loop {
        let out = containerd.ctr(&cmd);
        sent |= out.status.success();
        // The trap runs once the shell's `sleep 1` ends.
        let wait = Instant::now() + Duration::from_secs(2);
        while Instant::now() < wait {
            if containerd.task_status(id).as_deref() == Some("STOPPED") {
                assert!(sent, "no kill of {id} succeeded");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not stop: {:?}, last kill: {}",
            containerd.task_status(id),
            text(&out.stderr)
        );
    }
}

/// A foreground `ctr task exec` of a shell that exits `code` on SIGTERM,
/// killed with `kill_args` once its trap is set; returns ctr's exit code,
/// which is the exec's exit status.
fn exec_killed(containerd: &Containerd, id: &str, exec_id: &str, kill_args: &[&str]) -> i32 {
    use std::io::BufRead;
    let fifo = containerd.fifo_dir().display().to_string();
    let mut child = containerd
        .ctr_command(&[
            "task",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            exec_id,
            id,
            "sh",
            "-c",
            "trap 'exit 43' TERM; echo ready; while true; do sleep 1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read on a thread, so an exec that never starts fails the test
    // rather than hanging it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("exec {exec_id} printed nothing in a minute");
        }
    };
    assert_eq!(line.trim(), "ready", "exec {exec_id} did not start");
    let mut cmd = vec!["task", "kill", "--exec-id", exec_id];
    cmd.extend_from_slice(kill_args);
    cmd.push(id);
    let out = containerd.ctr(&cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("ctr exited by a signal");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("exec {exec_id} survived `ctr task kill {kill_args:?}`");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A shell that exits 42 on SIGTERM; as pid 1 it would otherwise ignore it.
const TRAPS_TERM: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 42' TERM; while true; do sleep 1; done",
];

fn kill_with_sigterm_and_sigkill(containerd: Containerd, runtime: &str) {
    // `ctr task kill` sends SIGTERM by default (the image names no stop
    // signal): the trap runs and the task's status is its exit code. A
    // shim that sent SIGKILL instead would report 137.
    containerd.run_detached(runtime, "term", TRAPS_TERM);
    containerd.wait_for_status("term", "RUNNING");
    kill_until_stopped(&containerd, &[], "term");
    assert_eq!(delete_reporting_exit_status(&containerd, "term"), 42);

    // SIGKILL is not trapped: the status is 128 + 9, as containerd's own
    // shim reports a death by signal. A shim that sent SIGTERM would get 42.
    containerd.run_detached(runtime, "kill9", TRAPS_TERM);
    containerd.wait_for_status("kill9", "RUNNING");
    let out = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "kill9"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    containerd.wait_for_status("kill9", "STOPPED");
    // Signalling a finished task is an error (NotFound from the shim).
    let out = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "kill9"]);
    assert!(!out.status.success());
    assert_eq!(delete_reporting_exit_status(&containerd, "kill9"), 137);

    // Deleting a running task is refused; a stopped one goes.
    containerd.run_detached(runtime, "busy", &["sleep", "1000"]);
    let out = containerd.ctr(&["task", "delete", "busy"]);
    assert!(!out.status.success());
    // An exec is signalled the same way: SIGTERM by default, SIGKILL when
    // asked (a foreground `ctr task exec` exits with the exec's status).
    assert_eq!(exec_killed(&containerd, "busy", "term", &[]), 43);
    assert_eq!(
        exec_killed(&containerd, "busy", "kill9", &["-s", "SIGKILL"]),
        137
    );
    for id in ["term", "kill9", "busy"] {
        containerd.remove(id);
    }
    containerd.assert_no_shims();
}

fn pause_resume_ps_and_metrics(containerd: Containerd, runtime: &str) {
    containerd.run_detached(runtime, "pr", &["sleep", "1000"]);
    containerd.wait_for_status("pr", "RUNNING");
    assert!(containerd.ctr(&["task", "pause", "pr"]).status.success());
    assert_eq!(containerd.task_status("pr").as_deref(), Some("PAUSED"));
    assert!(containerd.ctr(&["task", "resume", "pr"]).status.success());
    assert_eq!(containerd.task_status("pr").as_deref(), Some("RUNNING"));

    let pid_line = text(&containerd.ctr(&["task", "ls"]).stdout);
    let pid = pid_line
        .lines()
        .find(|l| l.starts_with("pr "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let ps = text(&containerd.ctr(&["task", "ps", "pr"]).stdout);
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().next() == Some(pid.as_str())),
        "{ps}"
    );

    let metrics = containerd.ctr(&["task", "metrics", "pr"]);
    let metrics_text = text(&metrics.stdout);
    assert!(metrics.status.success(), "{}", text(&metrics.stderr));
    assert!(
        metrics_text.contains("memory") && metrics_text.contains("pids"),
        "{metrics_text}"
    );
    containerd.remove("pr");
}

fn containerd_restart_keeps_the_task(mut containerd: Containerd, runtime: &str) {
    containerd.run_detached(runtime, "survivor", &["sleep", "1000"]);
    containerd.wait_for_status("survivor", "RUNNING");
    let shims = containerd.shim_pids();
    containerd.restart();
    assert_eq!(
        containerd.task_status("survivor").as_deref(),
        Some("RUNNING")
    );
    assert_eq!(containerd.shim_pids(), shims);
    assert!(containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "survivor"])
        .status
        .success());
    containerd.wait_for_status("survivor", "STOPPED");
    assert!(containerd
        .ctr(&["task", "delete", "survivor"])
        .status
        .success());
    assert!(containerd
        .ctr(&["container", "rm", "survivor"])
        .status
        .success());
    containerd.assert_no_shims();
}

fn fifty_containers_leave_nothing_behind(containerd: Containerd, runtime: &str) {
    let ids: Vec<String> = (0..50).map(|n| format!("many-{n}")).collect();
    for id in &ids {
        containerd.run_detached(runtime, id, &["sleep", "1000"]);
    }
    let listed = text(&containerd.ctr(&["task", "ls"]).stdout);
    assert_eq!(
        listed.lines().filter(|l| l.contains("RUNNING")).count(),
        50,
        "{listed}"
    );
    for id in &ids {
        assert!(containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", id])
            .status
            .success());
    }
    for id in &ids {
        containerd.wait_for_status(id, "STOPPED");
        assert!(containerd.ctr(&["task", "delete", id]).status.success());
        assert!(containerd.ctr(&["container", "rm", id]).status.success());
    }
    containerd.assert_no_shims();
    assert!(
        containerd.mounts().is_empty(),
        "mounts left: {:?}",
        containerd.mounts()
    );
    let fifos = std::fs::read_dir(containerd.fifo_dir()).unwrap().count();
    assert_eq!(fifos, 0, "fifo dirs left behind");
    let left = std::fs::read_dir(containerd.bundles_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "bundles left behind");
}

/// 1 MiB through an exec's terminal: all of it reaches ctr before the
/// exec's exit status does (ctr exits as soon as it has the status).
///
/// ctr 1.6 deletes the exec and then reads the stdout fifo to its end,
/// which comes when the shim closes it, so every byte must get through.
/// ctr 2.2 closes the fifo right after the delete (its cio `Cancel` closes
/// the pipes), dropping whatever is still in it, with any shim (the Go
/// shim too loses up to a few tens of KiB when the machine is busy); there
/// the loss can only be bounded by one fifo's capacity, 64 KiB.
fn tty_exec_delivers_a_large_output_before_its_status(containerd: Containerd, runtime: &str) {
    const SIZE: usize = 1 << 20;
    let may_lose = match containerd.version {
        Version::V16 => 0,
        Version::V22 => 64 << 10,
    };
    containerd.run_detached(runtime, "big", &["sleep", "1000"]);
    let fifo = containerd.fifo_dir().display().to_string();
    let script = format!("head -c {SIZE} /dev/zero | tr \"\\000\" \"#\"; exit 3");
    for round in 0..2 {
        let exec_id = format!("big-{round}");
        let (output, code) = with_pty(
            &containerd,
            &[
                "task",
                "exec",
                "-t",
                "--fifo-dir",
                &fifo,
                "--exec-id",
                &exec_id,
                "big",
                "sh",
                "-c",
                &script,
            ],
        );
        let hashes = output.iter().filter(|b| **b == b'#').count();
        let other: Vec<u8> = output.into_iter().filter(|b| *b != b'#').collect();
        let other = text(&other);
        assert!(
            hashes <= SIZE && hashes + may_lose >= SIZE,
            "round {round}: {hashes} of {SIZE} bytes, besides: {other:?}"
        );
        assert_eq!(code, Some(3), "round {round}, besides: {other:?}");
    }
    containerd.remove("big");
    containerd.assert_no_shims();
}

/// A task that outgrows its memory limit is killed by the kernel: the shim
/// reports `/tasks/oom` (cgroup v1 here: memory.oom_control) and the task's
/// status is 137.
fn oom_is_reported_and_the_task_exits_137(containerd: Containerd, runtime: &str) {
    let events = containerd.events();
    let out = containerd.run(
        runtime,
        &["--rm", "--memory-limit", "33554432"],
        "oom",
        // The string doubles until the cgroup's 32 MiB are used up.
        &[
            "sh",
            "-c",
            "x=0123456789abcdef; while true; do x=$x$x; done",
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    let container = "\"container_id\":\"oom\"";
    let oom = events.wait_for(&["/tasks/oom", container], Duration::from_secs(10));
    assert!(oom.is_some(), "no /tasks/oom event:\n{}", events.all());
    let exit = events
        .wait_for(&["/tasks/exit", container], Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no /tasks/exit event:\n{}", events.all()));
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
    containerd.assert_no_shims();
}

/// The memory limit of the task `id`'s cgroup, read on the host (ctr's
/// default spec mounts no cgroupfs in the container).
fn memory_limit(containerd: &Containerd, id: &str) -> u64 {
    let file = containerd
        .cgroup_dir("memory", id)
        .join("memory.limit_in_bytes");
    let limit =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    limit
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a limit: {limit:?}"))
}

/// containerd's Tasks.Update with a new memory limit (what `nerdctl update`
/// or the CRI's UpdateContainerResources send) takes effect on the running
/// task.
fn update_changes_the_memory_limit(containerd: Containerd, runtime: &str) {
    const BEFORE: u64 = 64 << 20;
    const AFTER: u64 = 96 << 20;
    let before = BEFORE.to_string();
    let out = containerd.run(
        runtime,
        &["-d", "--memory-limit", &before],
        "upd",
        &["sleep", "1000"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    containerd.wait_for_status("upd", "RUNNING");
    assert_eq!(memory_limit(&containerd, "upd"), BEFORE);
    containerd.update_memory_limit("upd", AFTER).unwrap();
    assert_eq!(memory_limit(&containerd, "upd"), AFTER);
    assert_eq!(containerd.task_status("upd").as_deref(), Some("RUNNING"));
    // A stopped task has no cgroup to update: an error, whatever its code.
    let out = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "upd"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    containerd.wait_for_status("upd", "STOPPED");
    let err = containerd.update_memory_limit("upd", BEFORE);
    assert!(err.is_err(), "updating a stopped task succeeded");
    containerd.remove("upd");
    containerd.assert_no_shims();
}

/// A logging binary in containerd's convention: the container's stdout on
/// fd 3, stderr on fd 4, ready once fd 5 is closed; the query's key and
/// value as arguments. It copies both streams into the directory named by
/// its `dir` argument, then writes `done` with what it was told.
const LOGGER: &str = r#"#!/bin/sh
trap '' TERM
dir=$2
/bin/cat <&3 >"$dir/stdout" 5>&- &
/bin/cat <&4 >"$dir/stderr" 5>&- &
exec 5>&-
wait
echo "$CONTAINER_NAMESPACE $CONTAINER_ID $*" >"$dir/done"
"#;

/// `ctr run --log-uri`: a `file://` URI gets stdout and stderr appended to
/// the file (its directories made), a `binary://` one goes to a logging
/// binary the shim starts.
fn log_uri_file_and_binary(containerd: Containerd, runtime: &str) {
    use std::os::unix::fs::PermissionsExt;
    // The pause before the exit is for containerd's Go shim: with a file
    // it closes the file once stdout ends, so stderr not yet copied by
    // then is lost (its copyPipes hands the stdout copier the file itself,
    // not the shared counting closer).
    let prints = [
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; sleep 2; exit 2",
    ];
    let logs = containerd.dir.path().join("logs");
    let file = logs.join("file/sub/out.log");
    let uri = format!("file://{}", file.display());
    let out = containerd.run(runtime, &["--rm", "--log-uri", &uri], "logfile", &prints);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    let logged =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut lines: Vec<&str> = logged.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["to-stderr", "to-stdout"], "{logged:?}");

    let logger = logs.join("logger.sh");
    std::fs::write(&logger, LOGGER).unwrap();
    std::fs::set_permissions(&logger, std::fs::Permissions::from_mode(0o755)).unwrap();
    let seen = logs.join("seen");
    std::fs::create_dir_all(&seen).unwrap();
    let uri = format!("binary://{}?dir={}", logger.display(), seen.display());
    let out = containerd.run(runtime, &["--rm", "--log-uri", &uri], "logbin", &prints);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    let done = seen.join("done");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done.exists() {
        assert!(
            Instant::now() < deadline,
            "the logging binary never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = |name: &str| std::fs::read_to_string(seen.join(name)).unwrap();
    assert_eq!(read("stdout"), "to-stdout\n");
    assert_eq!(read("stderr"), "to-stderr\n");
    assert_eq!(
        read("done").trim(),
        format!("{} logbin dir {}", containerd.namespace, seen.display())
    );

    // A logging binary that cannot be started, or a scheme nobody knows,
    // fails the task's creation, and nothing is left of it.
    let missing = format!("binary://{}", logs.join("missing").display());
    for uri in [missing.as_str(), "nope:///x"] {
        let out = containerd.run(runtime, &["--rm", "--log-uri", uri], "logbad", &prints);
        assert_eq!(out.status.code(), Some(1), "{uri}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("failed to create shim task"),
            "{uri}: {}",
            text(&out.stderr)
        );
        assert_eq!(containerd.task_status("logbad"), None);
        containerd.assert_no_shims();
    }
    let out = containerd.ctr(&["container", "ls", "-q"]);
    assert_eq!(text(&out.stdout).trim(), "", "containers left");
}

/// The pids `ctr task ps` lists for `id`.
fn task_pids(containerd: &Containerd, id: &str) -> Vec<i32> {
    let out = containerd.ctr(&["task", "ps", id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `ctr task delete` of a running task or exec is refused; with `--force`
/// it kills the processes (an exec's, or the whole container's) first.
/// `ctr task delete --force ID`: the task killed and deleted; ctr exits 0
/// and warns about the status, 137.
fn force_delete_reports_137(containerd: &Containerd, id: &str) {
    let out = containerd.ctr(&["task", "delete", "--force", id]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("task {id} exit with non-zero exit code 137")),
        "{stderr}"
    );
    assert_eq!(containerd.task_status(id), None);
}

fn delete_of_a_running_task(containerd: Containerd, runtime: &str) {
    let fifo = containerd.fifo_dir().display().to_string();
    containerd.run_detached(runtime, "del", &["sleep", "1000"]);
    containerd.wait_for_status("del", "RUNNING");
    for (exec_id, seconds) in [("ex1", "1001"), ("ex2", "1002")] {
        let out = containerd.ctr(&[
            "task",
            "exec",
            "-d",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            exec_id,
            "del",
            "sleep",
            seconds,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let pids = task_pids(&containerd, "del");
    assert_eq!(pids.len(), 3, "{pids:?}");
    let all_running = |pids: &[i32]| pids.iter().all(|&pid| running(pid, "sleep"));
    assert!(all_running(&pids));

    // Without --force: refused, nothing touched.
    let out = containerd.ctr(&["task", "delete", "del"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("task must be stopped before deletion: running"),
        "{}",
        text(&out.stderr)
    );
    let out = containerd.ctr(&["task", "delete", "--exec-id", "ex1", "del"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("must be stopped before deletion"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(containerd.task_status("del").as_deref(), Some("RUNNING"));
    assert_eq!(task_pids(&containerd, "del"), pids);
    assert!(all_running(&pids));

    // --force on an exec: ctr 1.6 SIGKILLs and deletes it and exits with
    // its status; the task and its other processes go on. ctr 2.2 skips the
    // kill for a process whose pid it does not know, which is any process
    // `task delete --exec-id` loads, so it refuses as without --force.
    let out = containerd.ctr(&["task", "delete", "--force", "--exec-id", "ex1", "del"]);
    let left = task_pids(&containerd, "del");
    assert_eq!(containerd.task_status("del").as_deref(), Some("RUNNING"));
    match containerd.version {
        Version::V16 => {
            assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
            assert_eq!(left.len(), 2, "{left:?}");
            let gone: Vec<i32> = pids.iter().copied().filter(|p| !left.contains(p)).collect();
            assert_eq!(gone.len(), 1, "{pids:?} -> {left:?}");
            assert!(
                !running(gone[0], "sleep"),
                "exec ex1 ({}) still runs",
                gone[0]
            );
        }
        Version::V22 => {
            assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains("must be stopped before deletion"),
                "{}",
                text(&out.stderr)
            );
            assert_eq!(left, pids);
        }
    }
    assert!(all_running(&left), "{left:?}");

    // --force on the task: every process killed, the task deleted; ctr
    // exits 0 and warns about the status.
    force_delete_reports_137(&containerd, "del");
    let still: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| running(p, "sleep"))
        .collect();
    assert!(still.is_empty(), "still running: {still:?}");
    let out = containerd.ctr(&["container", "rm", "del"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A paused task the same: refused, then killed (thawed) with --force.
    containerd.run_detached(runtime, "paused", &["sleep", "1000"]);
    containerd.wait_for_status("paused", "RUNNING");
    let pids = task_pids(&containerd, "paused");
    let out = containerd.ctr(&["task", "pause", "paused"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = containerd.ctr(&["task", "delete", "paused"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("task must be stopped before deletion: paused"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(containerd.task_status("paused").as_deref(), Some("PAUSED"));
    force_delete_reports_137(&containerd, "paused");
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert!(!running(pids[0], "sleep"), "{pids:?} still runs");
    let out = containerd.ctr(&["container", "rm", "paused"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    containerd.assert_no_shims();
}

/// `ctr plugins inspect-runtime` (containerd 2.x runs `<shim> -info`): the
/// shim's name, and the OCI runtime's features, which list `rro` (the CRI
/// plugin offers recursive read-only mounts when they do).
fn inspect_runtime_reports_the_runtimes_features(containerd: Containerd, runtime: &str) {
    let out = containerd.ctr(&["plugins", "inspect-runtime", "--runtime", runtime]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Name"], runtime, "{info}");
    assert!(
        info["Features"]["mountOptions"]
            .as_array()
            .is_some_and(|options| options.iter().any(|o| o == "rro")),
        "{info}"
    );
}

/// A container whose root is another user on the host (ctr's `--uidmap`
/// sets the io owner: containerd.linux.runc.CreateOptions from ctr 1.6
/// for a runtime not named io.containerd.runc.*, runc options otherwise)
/// can reopen its stdout through /proc/self/fd, as `/dev/stdout` users do.
fn user_namespaced_stdio_can_be_reopened(containerd: Containerd, runtime: &str) {
    let out = containerd.run(
        runtime,
        &[
            "--rm",
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:100000:65536",
        ],
        "userns",
        &["sh", "-c", "echo reopened-$(id -u) > /proc/self/fd/1"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "reopened-0",
        "{}",
        text(&out.stderr)
    );
    containerd.assert_no_shims();
}

/// containerd issue 10589: an exec whose Start is under way when the init
/// is killed, and a second exec created after the kill. Through a runc
/// wrapper that holds `runc exec` of marked processes until told to go:
/// the init's exit is not published while the first exec starts, neither
/// exec runs, the task ends stopped with 137, and nothing is left. Looped:
/// it must hold every time.
fn an_exec_racing_an_init_kill_never_outlives_it(containerd: Containerd, runtime: &str) {
    let gates = containerd.dir.path().join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    let runc = support::which("runc").expect("runc is on PATH");
    let wrapper = containerd.dir.path().join("runc-delayed-exec");
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
# runc, except that `runc exec` of a process whose args include a number
# with a gate file waits: it touches <n>.ready, then waits for <n>.go.
process=""
previous=""
for arg in "$@"; do
    [ "$previous" = "--process" ] && process="$arg"
    previous="$arg"
done
if [ -n "$process" ]; then
    for n in 301 302; do
        if grep -q ""$n"" "$process"; then
            touch "{gates}/$n.ready"
            while [ ! -e "{gates}/$n.go" ]; do sleep 0.05; done
        fi
    done
fi
exec {runc} "$@"
"#,
            gates = gates.display(),
            runc = runc.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // How each shim is told to use the wrapper: runc options for the Go
    // shim, a runtime config file (runtimeoptions.v1 ConfigPath) for ours.
    let config = containerd.dir.path().join("berth-runtime.toml");
    std::fs::write(&config, format!("BinaryName = \"{}\"\n", wrapper.display())).unwrap();
    let wrapper_arg = wrapper.display().to_string();
    let config_arg = config.display().to_string();
    let runtime_flags: Vec<&str> = if runtime == RUNC {
        vec!["--runc-binary", &wrapper_arg]
    } else {
        vec!["--runtime-config-path", &config_arg]
    };

    for round in 0..3 {
        for n in [301, 302] {
            let _ = std::fs::remove_file(gates.join(format!("{n}.ready")));
            let _ = std::fs::remove_file(gates.join(format!("{n}.go")));
        }
        let id = format!("race{round}");
        let mut extra = vec!["-d"];
        extra.extend(&runtime_flags);
        let out = containerd.run(runtime, &extra, &id, &["sleep", "100000"]);
        assert!(out.status.success(), "run {id}: {}", text(&out.stderr));
        containerd.wait_for_status(&id, "RUNNING");
        let events = containerd.events();
        let exec = |exec_id: &str, n: &str| {
            containerd
                .ctr_command(&["task", "exec", "--exec-id", exec_id, &id, "sleep", n])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let exec1 = exec("exec1", "301");
        wait_for_file(&gates.join("301.ready"), Duration::from_secs(30));

        let init: i32 = text(&containerd.ctr(&["task", "ls"]).stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id.as_str()))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|pid| pid.parse().ok())
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut exec2 = exec("exec2", "302");
        // exec2 either reaches runc (and waits at its gate) or is refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gates.join("302.ready").exists()
            && exec2.try_wait().unwrap().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let held = events.matching(&["/tasks/exit", &id]);

        std::fs::write(gates.join("301.go"), "").unwrap();
        let exec1 = exec1.wait_with_output().unwrap();
        std::fs::write(gates.join("302.go"), "").unwrap();
        let exec2 = exec2.wait_with_output().unwrap();
        assert!(
            held.is_empty(),
            "round {round}: the init's exit was published while exec1 was starting: {held:?}"
        );
        assert!(!exec1.status.success(), "round {round}: exec1 ran");
        assert!(!exec2.status.success(), "round {round}: exec2 ran");
        containerd.wait_for_status(&id, "STOPPED");
        assert!(
            events
                .wait_for(&["/tasks/exit", &id], Duration::from_secs(10))
                .is_some(),
            "round {round}: no exit event: {}",
            events.all()
        );
        assert_eq!(delete_reporting_exit_status(&containerd, &id), 137);
        let out = containerd.ctr(&["container", "rm", &id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    containerd.assert_no_shims();
}

fn wait_for_file(path: &std::path::Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The containers of a pod (one `io.kubernetes.cri.sandbox-id`
/// annotation, as the CRI plugin sets it) run in one shim: each is
/// exec'd into, killed and deleted on its own, and the shim goes with
/// the last.
fn containers_of_one_pod_share_a_shim(containerd: Containerd, runtime: &str) {
    let pod = "--annotation=io.kubernetes.cri.sandbox-id=pod1";
    for id in ["sandbox", "app"] {
        let out = containerd.run(runtime, &["-d", pod], id, &["sleep", "100000"]);
        assert!(out.status.success(), "run {id}: {}", text(&out.stderr));
        containerd.wait_for_status(id, "RUNNING");
    }
    assert_eq!(containerd.shim_pids().len(), 1, "one shim for the pod");
    let out = containerd.run(runtime, &["-d"], "alone", &["sleep", "100000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        containerd.shim_pids().len(),
        2,
        "a container outside the pod gets its own"
    );
    containerd.remove("alone");
    let deadline = Instant::now() + Duration::from_secs(30);
    while containerd.shim_pids().len() != 1 {
        assert!(Instant::now() < deadline, "the lone container's shim stays");
        std::thread::sleep(Duration::from_millis(50));
    }

    for id in ["sandbox", "app"] {
        let out = containerd.ctr(&["task", "exec", "--exec-id", "e", id, "echo", id]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), id);
    }
    kill_until_stopped(&containerd, &["-s", "SIGKILL"], "app");
    assert_eq!(delete_reporting_exit_status(&containerd, "app"), 137);
    assert!(containerd.ctr(&["container", "rm", "app"]).status.success());
    assert_eq!(
        containerd.task_status("sandbox").as_deref(),
        Some("RUNNING")
    );
    let out = containerd.ctr(&["task", "exec", "--exec-id", "e2", "sandbox", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(containerd.shim_pids().len(), 1);
    containerd.remove("sandbox");
    containerd.assert_no_shims();
}
