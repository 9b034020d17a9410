#![allow(clippy::unwrap_used, clippy::expect_used)]

//! `berth up` and `berth down` end to end: the four daemons started in the
//! background on a temp root, found again by a second `up`, a killed one
//! restarted over its stale socket, stopped with containers left running
//! (and found again), then stopped with `--all`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_client::local::{running_pid, Daemon, Layout};
use berth_e2e::images::{run_image_archive, RUN_IMAGE};
use berth_e2e::{alive, binary, processes_under, run_prerequisites, unmount_under};

/// The root, and whatever runs under it, killed (by pid) and unmounted if
/// a test stops half way.
struct Root {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    container_pids: Vec<u32>,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("berth-up-")
            .tempdir_in("/tmp")
            .unwrap();
        Root {
            dir,
            env: HashMap::new(),
            container_pids: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn layout(&self) -> Layout {
        Layout::new(Some(self.path().to_path_buf()))
    }

    /// `berth ARGS` with only the environment `berth up` printed.
    fn berth(&self, args: &[&str]) -> Output {
        let mut command = Command::new(binary("berth"));
        for (key, _) in std::env::vars() {
            if key.starts_with("BERTH_") {
                command.env_remove(key);
            }
        }
        command.envs(&self.env).args(args).output().unwrap()
    }

    fn up(&mut self) -> String {
        self.up_with(&[])
    }

    fn up_with(&mut self, extra: &[&str]) -> String {
        let root = self.path().to_str().unwrap().to_string();
        let mut args = vec!["up", "--root", &root, "--timeout", "60"];
        args.extend(extra);
        let out = self.berth(&args);
        let err = text(&out.stderr);
        assert!(out.status.success(), "berth up: {err}");
        // `BERTH_RUN_DIR='...'; export BERTH_RUN_DIR;` lines.
        for line in text(&out.stdout).lines() {
            let (key, rest) = line.split_once('=').expect("KEY=VALUE");
            let value = rest
                .split("'; export")
                .next()
                .unwrap()
                .trim_start_matches('\'');
            self.env.insert(key.to_string(), value.to_string());
        }
        err
    }

    fn pids(&self) -> Vec<Option<u32>> {
        Daemon::ALL
            .iter()
            .map(|d| running_pid(&self.layout(), *d))
            .collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let layout = self.layout();
        let mut pids: Vec<u32> = Daemon::WITH_CRI
            .iter()
            .filter_map(|d| running_pid(&layout, *d))
            .collect();
        pids.extend(&self.container_pids);
        pids.extend(processes_under(self.path()).into_iter().map(|(pid, _)| pid));
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        unmount_under(self.path());
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The pid column of `berth tasks ls` for `id`, and its status.
fn task(root: &Root, id: &str) -> Option<(u32, String)> {
    let out = root.berth(&["tasks", "ls"]);
    assert!(out.status.success(), "tasks ls: {}", text(&out.stderr));
    text(&out.stdout).lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.first() == Some(&id)).then(|| (fields[1].parse().unwrap(), fields[2].to_string()))
    })
}

#[test]
fn up_down_and_containers_that_outlive_the_daemons() {
    if !run_prerequisites() {
        return;
    }
    let mut root = Root::new();
    let layout = root.layout();

    // First up: every daemon started, each with a pid file of its own.
    let said = root.up();
    assert_eq!(said.matches("started (pid").count(), 4, "{said}");
    let first = root.pids();
    assert!(first.iter().all(Option::is_some), "{first:?}: {said}");
    assert_eq!(
        root.env.get("BERTH_RUN_DIR").map(PathBuf::from),
        Some(layout.run_dir())
    );
    for daemon in Daemon::ALL {
        assert!(layout.log_file(daemon).exists(), "{daemon:?} has no log");
    }
    let private = |dir: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777 == 0o700
    };
    assert!(
        private(&layout.log_dir()),
        "the daemons' logs are readable by others"
    );

    // berth check sees all four answer (and this host has what the tests
    // need: runc, overlayfs, cgroups).
    let out = root.berth(&["check"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "check: {said}{}", text(&out.stderr));
    for daemon in Daemon::ALL {
        assert!(
            said.contains(&format!("ok    {:<16} answers", daemon.binary())),
            "{said}"
        );
    }
    assert!(said.contains("ok    runc"), "{said}");

    // The CLI finds them through the printed environment alone.
    let archive = run_image_archive(root.path());
    let out = root.berth(&["import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let out = root.berth(&["run", "--rm", RUN_IMAGE, "/bin/sh", "-c", "echo up; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "up\n");

    // Up again: nothing started, the same processes.
    let said = root.up();
    assert_eq!(said.matches("already running").count(), 4, "{said}");
    assert_eq!(root.pids(), first);

    // A container that must outlive the daemons.
    let out = root.berth(&["run", "-d", "--name", "keeper", RUN_IMAGE, "sleep", "600"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let (container_pid, status) = task(&root, "keeper").expect("keeper is listed");
    root.container_pids.push(container_pid);
    assert_eq!(status, "RUNNING");
    let logs = root.berth(&["logs", "keeper"]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    let container_logs: Vec<PathBuf> = walk_files(&layout.log_dir())
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("keeper"))
        .collect();
    assert!(
        !container_logs.is_empty(),
        "no log of keeper under the root"
    );
    for log in &container_logs {
        assert!(
            private(log.parent().unwrap()),
            "{} is readable by others",
            log.parent().unwrap().display()
        );
    }

    // metad SIGKILLed: its socket and pid file stay behind; up starts a
    // new one over them and leaves the others alone.
    let metad = first[2].unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(metad as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(metad) {
        assert!(
            std::time::Instant::now() < deadline,
            "metad survived SIGKILL"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(layout.socket(Daemon::Metad).exists());
    let said = root.up();
    assert_eq!(said.matches("already running").count(), 3, "{said}");
    assert!(said.contains("berth-metad     started"), "{said}");
    let second = root.pids();
    assert_ne!(second[2], first[2]);
    assert_eq!(
        (second[0], second[1], second[3]),
        (first[0], first[1], first[3])
    );
    assert!(root.berth(&["namespaces", "ls"]).status.success());

    // Down: every daemon stopped, pid files and sockets gone; the
    // container still runs.
    let root_arg = root.path().to_str().unwrap().to_string();
    let out = root.berth(&["down", "--root", &root_arg]);
    let said = text(&out.stderr);
    assert!(out.status.success(), "down: {said}");
    assert_eq!(said.matches("stopped (pid").count(), 4, "{said}");
    for (daemon, pid) in Daemon::ALL.iter().zip(&second) {
        assert!(!alive(pid.unwrap()), "{daemon:?} still runs");
        assert!(!layout.pid_file(*daemon).exists());
        assert!(!layout.socket(*daemon).exists());
    }
    assert!(alive(container_pid), "the container died with the daemons");
    let out = root.berth(&["namespaces", "ls"]);
    assert!(!out.status.success(), "a daemon still answers after down");
    let out = root.berth(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("FAIL  berth-metad"),
        "{}",
        text(&out.stdout)
    );

    // Down again: nothing to do, and says so.
    let out = root.berth(&["down", "--root", &root_arg]);
    assert!(out.status.success());
    assert_eq!(text(&out.stderr).matches("not running").count(), 4);

    // Up: the container is found again, the same process.
    root.up();
    assert_eq!(
        task(&root, "keeper"),
        Some((container_pid, "RUNNING".to_string()))
    );

    // Down --all: the container is stopped too.
    let out = root.berth(&["down", "--all", "--root", &root_arg]);
    let said = text(&out.stderr);
    assert!(out.status.success(), "down --all: {said}");
    assert!(said.contains("stopped 1 container(s)"), "{said}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(container_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the container outlived down --all"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(root.pids().iter().all(Option::is_none));
    // A shim exits a moment after its last task is deleted.
    while !processes_under(root.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(20),
            "a shim was left: {:?}",
            processes_under(root.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(root.path().to_str().unwrap()),
        "a mount was left"
    );
}

/// `berth up --cri`: berth-crid after the four, serving crictl a pod on
/// berth's own pause image (no registry); `berth down` stops it first.
#[test]
fn up_with_cri_serves_crictl_and_down_stops_it() {
    let crictl = berth_e2e::cri::crictl_path();
    if !berth_e2e::require(berth_e2e::is_root(), "needs root")
        || !run_prerequisites()
        || !berth_e2e::require(crictl.exists(), "../shared/peers/bin/crictl")
    {
        return;
    }
    let mut root = Root::new();
    let layout = root.layout();
    let said = root.up_with(&["--cri"]);
    assert_eq!(said.matches("started (pid").count(), 5, "{said}");
    let crid = running_pid(&layout, Daemon::Crid).expect("berth-crid runs");
    let endpoint = root
        .env
        .get("CONTAINER_RUNTIME_ENDPOINT")
        .cloned()
        .expect("up printed CONTAINER_RUNTIME_ENDPOINT");
    assert_eq!(
        endpoint,
        format!("unix://{}", layout.socket(Daemon::Crid).display())
    );
    let crictl_run = |args: &[&str]| {
        let out = Command::new(&crictl)
            .args(["-r", &endpoint, "-i", &endpoint, "--timeout", "60s"])
            .args(args)
            .env("HOME", root.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crictl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
    };
    assert!(crictl_run(&["version"]).contains("berth"));
    let pod = root.path().join("pod.json");
    std::fs::write(
        &pod,
        r#"{"metadata": {"name": "up", "namespace": "test", "uid": "up-1", "attempt": 0},
            "linux": {"security_context": {"namespace_options": {"network": 2}}}}"#,
    )
    .unwrap();
    let pod_id = crictl_run(&["runp", pod.to_str().unwrap()]);
    assert!(crictl_run(&["pods", "-q"]).contains(&pod_id));
    crictl_run(&["rmp", "-f", &pod_id]);

    let root_arg = root.path().to_str().unwrap().to_string();
    let out = root.berth(&["down", "--root", &root_arg]);
    let said = text(&out.stderr);
    assert!(out.status.success(), "down: {said}");
    assert!(
        said.lines()
            .next()
            .is_some_and(|l| l.starts_with("berth-crid") && l.contains("stopped (pid")),
        "crid is stopped first: {said}"
    );
    assert!(!alive(crid), "berth-crid outlived down");
    assert!(root.pids().iter().all(Option::is_none));
}

#[test]
fn up_reports_a_daemon_that_cannot_start_with_its_log() {
    let root = Root::new();
    // contentd's store cannot be made: a file is in the way.
    std::fs::write(root.path().join("content"), b"").unwrap();
    let out = root.berth(&["up", "--root", root.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("berth-contentd did not come up"), "{err}");
    assert!(err.contains("contentd.log"), "{err}");
    // Nothing half-started: no pid file, and no later daemon tried.
    let layout = root.layout();
    for daemon in Daemon::ALL {
        assert!(!layout.pid_file(daemon).exists(), "{daemon:?} pid file");
    }
    assert!(!layout.log_file(Daemon::Snapd).exists());
}

#[test]
fn up_refuses_a_log_level_the_daemons_do_not_know() {
    let root = Root::new();
    let out = root.berth(&[
        "up",
        "--root",
        root.path().to_str().unwrap(),
        "--log-level",
        "loud",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--log-level"));
    assert!(
        !root.path().join("run").exists(),
        "up made its layout anyway"
    );
}

/// `berth config default DAEMON` prints a file its daemon accepts as it
/// is (every key known to it) and that says what `--help` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_daemon_accepts_the_default_config_berth_prints_for_it() {
    if !berth_e2e::require(berth_e2e::is_root(), "berth-snapd needs root") {
        return;
    }
    let root = Root::new();
    let all = root.berth(&["config", "default"]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    let all = text(&all.stdout);
    for daemon in Daemon::ALL {
        let out = root.berth(&["config", "default", daemon.name()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let config = text(&out.stdout);
        assert!(
            all.contains(&config),
            "{daemon:?} is not in the full output"
        );
        for key in ["root", "state", "address", "log_level", "log_format"] {
            assert!(
                config.contains(&format!("\n{key} = ")),
                "{daemon:?}: {config}"
            );
        }
        for peer in daemon.peers() {
            assert!(
                config.contains(&format!("\n{} = ", peer.name())),
                "{daemon:?} lacks its peer {peer:?}: {config}"
            );
        }
        let file = root.path().join(format!("{}.toml", daemon.name()));
        std::fs::write(&file, &config).unwrap();
        // Flags win over the file: the daemon keeps to the test's dirs.
        let started = berth_e2e::Daemon::start_with_args(
            &daemon.binary(),
            &root.path().join(daemon.name()),
            &["--config", file.to_str().unwrap()],
        );
        berth_client::local::probe(daemon, &started.socket)
            .await
            .unwrap_or_else(|e| panic!("{daemon:?} with its default config: {e}"));
    }
    // The CRI server's, too: its own keys, and a file it starts with.
    let out = root.berth(&["config", "default", "crid"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = text(&out.stdout);
    assert!(all.contains(&config), "crid is not in the full output");
    for key in [
        "contentd",
        "snapd",
        "metad",
        "taskd",
        "sandbox_image",
        "pause_process",
        "cni_conf_dir",
        "cni_bin_dirs",
        "runtime",
        "systemd_cgroup",
    ] {
        assert!(
            config.contains(&format!("\n{key} = ")),
            "crid lacks {key}: {config}"
        );
    }
    let file = root.path().join("crid.toml");
    std::fs::write(&file, &config).unwrap();
    let crid = berth_e2e::Daemon::start_with_args(
        "berth-crid",
        &root.path().join("crid"),
        &["--config", file.to_str().unwrap()],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        berth_e2e::alive(crid.pid()),
        "crid with its default config: {}",
        crid.log_text()
    );
    assert!(crid.socket.exists());

    let out = root.berth(&["config", "default", "nosuchd"]);
    assert!(!out.status.success());
}

/// Every file under `dir`.
fn walk_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
