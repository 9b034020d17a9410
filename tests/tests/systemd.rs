#![allow(clippy::unwrap_used, clippy::expect_used)]

//! berth under systemd, as far as this machine can show it without systemd
//! as PID 1: every unit in packaging/systemd passes `systemd-analyze
//! verify`, the sandboxing of each service is scored by `systemd-analyze
//! security`, and every daemon, started by the first connection to the
//! socket systemd hands it, answers that connection and tells systemd when
//! it is ready and when it stops.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_client::local::{probe, Daemon};
use berth_e2e::{binary, is_root, on_path, require};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd")
}

/// The units, each ExecStart pointed at the binaries this test run built,
/// written to `dir`.
fn units_in(dir: &Path) -> Vec<PathBuf> {
    let built = binary("berth-contentd");
    let built_dir = built.parent().unwrap().to_str().unwrap().to_string();
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(units_dir()).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let text = text.replace("/usr/local/bin", &built_dir);
        let path = dir.join(entry.file_name());
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    paths.sort();
    paths
}

#[test]
fn every_unit_verifies_and_contentd_and_metad_are_well_sandboxed() {
    if !require(
        on_path("systemd-analyze"),
        "systemd-analyze is not installed",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = units_in(dir.path());
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for daemon in Daemon::ALL {
        for kind in ["socket", "service"] {
            let name = format!("{}.{kind}", daemon.binary());
            assert!(names.contains(&name), "no {name} in packaging/systemd");
        }
    }
    assert!(names.contains(&"berth.target".to_string()));

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let complaints: Vec<_> = stderr.lines().filter(|l| l.contains("berth")).collect();
    assert!(complaints.is_empty(), "{stderr}");

    // Exposure scores (0 best, 10 worst); docs/operating.md records them.
    let mut scores = HashMap::new();
    for daemon in Daemon::ALL {
        let unit = dir.path().join(format!("{}.service", daemon.binary()));
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let score: f64 = stdout
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score for {daemon:?}: {stdout}"));
        eprintln!("{}: exposure {score}", daemon.binary());
        scores.insert(daemon.name(), score);
    }
    assert!(scores["contentd"] < 3.0, "{scores:?}");
    assert!(scores["metad"] < 3.0, "{scores:?}");
}

/// systemd's notify socket, as a datagram socket the test reads.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Notify { socket, path }
    }

    /// Waits for a notification containing `what`.
    fn wait_for(&self, what: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {what}: {e}; seen {seen:?}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.contains(what);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }
}

/// The daemon's process, killed (by pid) if the test stops half way.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_daemon_serves_the_socket_systemd_hands_it_and_notifies() {
    if !require(is_root(), "berth-snapd needs root")
        || !require(
            on_path("systemd-socket-activate"),
            "systemd-socket-activate is not installed",
        )
    {
        return;
    }
    for daemon in Daemon::ALL {
        let dir = tempfile::Builder::new()
            .prefix("berth-activate-")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("activated.sock");
        let unused = dir.path().join("not-bound.sock");
        let notify = Notify::new(dir.path());
        // It listens, and starts the daemon on the first connection, with
        // only the environment it is told to pass.
        let mut command = Command::new("systemd-socket-activate");
        command
            .arg("-l")
            .arg(&socket)
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", notify.path.display()))
            .arg(binary(&daemon.binary()))
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&unused);
        // Peers nobody serves: a daemon starts and answers without them.
        for peer in daemon.peers() {
            command
                .arg(format!("--{}", peer.name()))
                .arg(dir.path().join(format!("{}.sock", peer.name())));
        }
        let started = Started(
            command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );

        // The first request starts it and is answered; it says it is ready.
        // It serves the inherited socket and bound nothing of its own.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match probe(daemon, &socket).await {
                Ok(()) => break,
                Err(e) => assert!(Instant::now() < deadline, "{daemon:?}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        notify.wait_for("READY=1");
        assert!(!unused.exists(), "{daemon:?} bound its own socket");

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(started.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        notify.wait_for("STOPPING=1");
        let mut started = started;
        let status = started.0.wait().unwrap();
        assert!(status.success(), "{daemon:?} exited with {status}");
    }
}

/// A Debian root booted by systemd-nspawn with berth installed: its
/// systemd, the container's leader process, entered with nsenter.
struct Booted {
    nspawn: std::process::Child,
    leader: u32,
    dir: tempfile::TempDir,
}

impl Booted {
    /// Runs `args` inside, with a clean environment; returns (success,
    /// stdout, stderr). A ceiling turns a hang into a failure.
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("timeout")
            .arg("60")
            .arg("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args([
                "-a",
                "--",
                "env",
                "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "{args:?}: {err}{out}");
        out
    }

    /// `berth tasks ls` as (id, pid, status).
    fn tasks(&self) -> Vec<(String, String, String)> {
        self.ok(&["berth", "tasks", "ls"])
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect()
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.run(&["berth", "rm", "--force", "keeper"]);
        let _ = self.run(&["berth", "rm", "--force", "scoped"]);
        // SIGTERM asks nspawn to shut the container down cleanly.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.nspawn.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        berth_e2e::unmount_under(self.dir.path());
    }
}

/// Builds a Debian root with mmdebstrap, puts berth's package (built from
/// this test run's binaries by scripts/build-deb.sh) and the test image in
/// /root, and boots it. The container gets a cgroup v2 hierarchy of its
/// own, every capability and no seccomp filter of nspawn's: what a
/// container runtime needs from the machine it runs on.
fn boot_debian_with_berths_package() -> Booted {
    let dir = tempfile::Builder::new()
        .prefix("berth-nspawn-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("root");
    let out = Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,runc",
            "--quiet",
            "bookworm",
        ])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mmdebstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = binary("berth");
    let out = Command::new(units_dir().join("../../scripts/build-deb.sh"))
        .arg("--bin")
        .arg(built.parent().unwrap())
        .arg(dir.path().join("deb"))
        .env("DEB_COMPRESSION", "gzip")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = PathBuf::from(stdout.lines().last().unwrap().trim());
    std::fs::copy(&deb, root.join("root/berth.deb")).unwrap();
    let archive = berth_e2e::images::run_image_archive(dir.path());
    std::fs::copy(&archive, root.join("root/image.tar")).unwrap();
    // crictl, for the CRI under the systemd cgroup driver.
    let crictl = berth_e2e::cri::crictl_path();
    if crictl.exists() {
        std::fs::copy(&crictl, root.join("usr/local/bin/crictl")).unwrap();
    }

    let nspawn = Command::new("systemd-nspawn")
        .arg("-b")
        .arg("-D")
        .arg(&root)
        .args(["--register=no", "--keep-unit", "--console=passive"])
        .arg(format!("--machine=berth-test-{}", std::process::id()))
        .arg("--capability=all")
        .env("SYSTEMD_SECCOMP", "0")
        .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nspawn_pid = nspawn.id();
    let mut booted = Booted {
        nspawn,
        leader: 0,
        dir,
    };
    // The container's init: nspawn's child running systemd.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the container never booted");
        if let Ok(Some(status)) = booted.nspawn.try_wait() {
            panic!("systemd-nspawn exited: {status}");
        }
        if booted.leader == 0 {
            let children =
                std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
                    .unwrap_or_default();
            booted.leader = children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                })
                .unwrap_or(0);
        } else {
            let (_, state, _) = booted.run(&["systemctl", "is-system-running"]);
            if matches!(state.trim(), "running" | "degraded") {
                return booted;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod and its container through crictl, crid with the systemd cgroup
/// driver (host network: no CNI plugins in this root).
fn pods_as_systemd_scopes(booted: &Booted) {
    let (has_crictl, _, _) = booted.run(&["test", "-x", "/usr/local/bin/crictl"]);
    if !require(has_crictl, "crictl from ../shared/peers is needed") {
        return;
    }
    booted.ok(&[
        "sed",
        "-i",
        "s/^systemd_cgroup = false$/systemd_cgroup = true/",
        "/etc/berth/crid.toml",
    ]);
    booted.ok(&[
        "grep",
        "-qx",
        "systemd_cgroup = true",
        "/etc/berth/crid.toml",
    ]);
    booted.ok(&["systemctl", "restart", "berth-crid.service"]);
    booted.ok(&["berth", "-n", "k8s.io", "import", "/root/image.tar"]);
    let pod = serde_json::json!({
        "metadata": {"name": "scoped", "namespace": "test", "uid": "scoped-1", "attempt": 0},
        "linux": {
            "cgroup_parent": "berthtest.slice",
            "security_context": {"namespace_options": {"network": 2}},
        },
    });
    let container = serde_json::json!({
        "metadata": {"name": "sleeper"},
        "image": {"image": berth_e2e::images::RUN_IMAGE},
        "command": ["sleep", "600"],
    });
    let root = PathBuf::from(format!("/proc/{}/root/root", booted.leader));
    std::fs::write(root.join("pod.json"), pod.to_string()).unwrap();
    std::fs::write(root.join("container.json"), container.to_string()).unwrap();
    let crictl = |args: &[&str]| {
        let mut command = vec!["crictl", "-r", "unix:///run/berth/cri.sock"];
        command.extend_from_slice(args);
        booted.ok(&command).trim().to_string()
    };
    let pod = crictl(&["runp", "/root/pod.json"]);
    let container = crictl(&["create", &pod, "/root/container.json", "/root/pod.json"]);
    crictl(&["start", &container]);
    for id in [&pod, &container] {
        let scope = format!("cri-berth-{id}.scope");
        assert_eq!(
            booted.ok(&["systemctl", "is-active", &scope]).trim(),
            "active",
            "{scope}"
        );
        assert_eq!(
            booted
                .ok(&["systemctl", "show", "-p", "Slice", "--value", &scope])
                .trim(),
            "berthtest.slice",
            "{scope}"
        );
    }
    crictl(&["stopp", &pod]);
    crictl(&["rmp", &pod]);
    for id in [&pod, &container] {
        let scope = format!("cri-berth-{id}.scope");
        let (still, state, _) = booted.run(&["systemctl", "is-active", &scope]);
        assert!(!still, "{scope} is still {state} after the pod went");
    }
}

#[test]
fn berths_package_under_a_real_systemd_runs_containers_through_restarts_and_upgrades() {
    if !require(is_root(), "booting a container needs root")
        || !require(
            on_path("systemd-nspawn") && on_path("mmdebstrap") && on_path("nsenter"),
            "systemd-container (systemd-nspawn) and mmdebstrap are needed",
        )
        || !require(
            Path::new("/bin/busybox").exists(),
            "busybox-static is not installed",
        )
    {
        return;
    }
    let booted = boot_debian_with_berths_package();
    // The package enables and starts the sockets and berth.target.
    booted.ok(&["dpkg", "-i", "/root/berth.deb"]);
    for daemon in Daemon::ALL {
        let unit = format!("{}.socket", daemon.binary());
        assert_eq!(
            booted.ok(&["systemctl", "is-active", &unit]).trim(),
            "active"
        );
    }
    assert_eq!(
        booted
            .ok(&["systemctl", "is-enabled", "berth.target"])
            .trim(),
        "enabled"
    );
    booted.ok(&["test", "-f", "/usr/share/man/man1/berth-run.1.gz"]);
    booted.ok(&["test", "-f", "/etc/berth/metad.toml"]);
    booted.ok(&["test", "-f", "/usr/share/bash-completion/completions/berth"]);

    // The first call activates the daemons it needs.
    booted.ok(&["berth", "import", "/root/image.tar"]);
    let said = booted.ok(&[
        "berth",
        "run",
        "--rm",
        berth_e2e::images::RUN_IMAGE,
        "echo",
        "hello from systemd",
    ]);
    assert_eq!(said, "hello from systemd\n");
    for daemon in Daemon::ALL {
        let unit = format!("{}.service", daemon.binary());
        assert_eq!(
            booted.ok(&["systemctl", "is-active", &unit]).trim(),
            "active"
        );
        // contentd and metad run as unprivileged users of their own.
        let pid = booted.ok(&["systemctl", "show", "-p", "MainPID", "--value", &unit]);
        let user = booted.ok(&["stat", "-c", "%U", &format!("/proc/{}", pid.trim())]);
        let expected = match daemon {
            Daemon::Contentd => "berth-content",
            Daemon::Metad => "berth",
            Daemon::Snapd | Daemon::Taskd | Daemon::Crid => "root",
        };
        assert_eq!(user.trim(), expected, "{unit} runs as {user}");
    }
    // A file on standard input is handed to contentd, which reads it itself
    // as the unprivileged user it runs as, through the caller's open file
    // (/root is not even in its view): its read count grows by the file's
    // size. Bytes sent over its socket would not count there (recvmsg is
    // not a read).
    booted.ok(&[
        "sh",
        "-c",
        "head -c 16777216 /dev/urandom > /root/passed.blob && chmod 600 /root/passed.blob",
    ]);
    let contentd_pid = booted
        .ok(&[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "berth-contentd.service",
        ])
        .trim()
        .to_string();
    let read_count = || -> u64 {
        let io = booted.ok(&["cat", &format!("/proc/{contentd_pid}/io")]);
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no rchar in {io}"))
    };
    let before = read_count();
    booted.ok(&[
        "sh",
        "-c",
        "berth content ingest passed-file < /root/passed.blob",
    ]);
    let read = read_count() - before;
    assert!(
        read >= 16 << 20,
        "contentd read {read} bytes for a 16 MiB file passed to it"
    );

    // What each unprivileged user reaches: contentd's user no other
    // daemon; metad's user contentd (which it collects from) but not
    // taskd, which only root may ask to run anything.
    let as_user = |user: &str, args: &[&str]| {
        let mut command = vec![
            "setpriv",
            "--reuid",
            user,
            "--regid",
            user,
            "--init-groups",
            "berth",
        ];
        command.extend_from_slice(args);
        booted.run(&command)
    };
    for (user, args, allowed) in [
        ("berth-content", &["images", "ls"][..], false),
        ("berth-content", &["snapshots", "ls"][..], false),
        ("berth-content", &["tasks", "ls"][..], false),
        ("berth", &["content", "ls"][..], true),
        ("berth", &["tasks", "ls"][..], false),
    ] {
        let (ok, out, err) = as_user(user, args);
        assert_eq!(ok, allowed, "{user}: berth {args:?}: {out}{err}");
    }

    // Detached: `run -d` returns while the container runs (runc must not
    // inherit taskd's NOTIFY_SOCKET, or `runc start` waits for the
    // container to exit).
    let started = Instant::now();
    booted.ok(&[
        "berth",
        "run",
        "-d",
        "--name",
        "keeper",
        berth_e2e::images::RUN_IMAGE,
        "sleep",
        "600",
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "run -d waited for the container"
    );
    let before = booted.tasks();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].2, "RUNNING", "{before:?}");

    // Each daemon restarted in turn: the container is untouched, and the
    // new taskd finds it again.
    for daemon in Daemon::ALL {
        let unit = format!("{}.service", daemon.binary());
        booted.ok(&["systemctl", "restart", &unit]);
        assert_eq!(
            booted.ok(&["systemctl", "is-active", &unit]).trim(),
            "active"
        );
        assert_eq!(booted.tasks(), before, "after restarting {unit}");
    }
    let said = booted.ok(&["berth", "tasks", "exec", "keeper", "echo", "still here"]);
    assert_eq!(said, "still here\n");

    // Metrics, switched on in the packaged config files: taskd on
    // localhost, metad (no network in its sandbox) on a unix socket in its
    // state directory, scraped from outside through the container's root.
    let metad_socket = "/run/berth/meta/metrics.sock";
    booted.ok(&[
        "sh",
        "-c",
        &format!(
            "echo 'metrics_address = \"127.0.0.1:9473\"' >>/etc/berth/taskd.toml && \
             echo 'metrics_address = \"{metad_socket}\"' >>/etc/berth/metad.toml"
        ),
    ]);
    booted.ok(&[
        "systemctl",
        "restart",
        "berth-taskd.service",
        "berth-metad.service",
    ]);
    let scrape_taskd = || {
        booted.ok(&[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9473 && \
             printf 'GET /metrics HTTP/1.0\r\nHost: taskd\r\n\r\n' >&3 && cat <&3",
        ])
    };
    let scrape_metad = || {
        use std::io::{Read, Write};
        let path = format!("/proc/{}/root{metad_socket}", booted.leader);
        let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: metad\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    };
    let tasks = scrape_taskd();
    assert!(
        tasks.contains("berth_tasks{namespace=\"default\",status=\"running\"} 1"),
        "{tasks}"
    );
    assert!(
        tasks.contains("container_pids_current{container_id=\"keeper\",namespace=\"default\"}"),
        "{tasks}"
    );
    let meta = scrape_metad();
    assert!(
        meta.contains("berth_metadata_records{kind=\"container\",namespace=\"default\"} 1"),
        "{meta}"
    );

    // An upgrade (the package installed over itself) restarts the daemons
    // and leaves the container running; the edited configs are kept.
    booted.ok(&["dpkg", "-i", "/root/berth.deb"]);
    assert_eq!(booted.tasks(), before, "after the upgrade");
    assert!(scrape_taskd().contains("container_pids_current{container_id=\"keeper\""));
    assert!(scrape_metad().contains("berth_build_info{daemon=\"metad\""));
    let said = booted.ok(&["berth", "tasks", "exec", "keeper", "echo", "upgraded"]);
    assert_eq!(said, "upgraded\n");
    booted.ok(&["berth", "rm", "--force", "keeper"]);
    assert!(booted.tasks().is_empty());

    // The systemd cgroup driver: runc, told to use it, asks systemd for a
    // transient scope `PREFIX-NAME.scope` in the slice of the cgroups path
    // `berth.slice:berth-default:scoped` (runc's cgroupfs driver would
    // make a directory of that name instead), and the scope goes with the
    // container.
    booted.ok(&[
        "berth",
        "run",
        "-d",
        "--name",
        "scoped",
        "--cgroup-manager",
        "systemd",
        berth_e2e::images::RUN_IMAGE,
        "sleep",
        "600",
    ]);
    let scope = "berth-default-scoped.scope";
    assert_eq!(
        booted.ok(&["systemctl", "is-active", scope]).trim(),
        "active"
    );
    assert_eq!(
        booted
            .ok(&["systemctl", "show", "-p", "Slice", "--value", scope])
            .trim(),
        "berth.slice"
    );
    let tasks = booted.tasks();
    let pid = &tasks
        .iter()
        .find(|(id, _, _)| id == "scoped")
        .unwrap_or_else(|| panic!("no task scoped: {tasks:?}"))
        .1;
    let cgroup = booted.ok(&["cat", &format!("/proc/{pid}/cgroup")]);
    assert!(
        cgroup.contains(&format!("/berth.slice/{scope}")),
        "the container's process is not in its scope: {cgroup}"
    );
    booted.ok(&["berth", "rm", "--force", "scoped"]);
    let (still, state, _) = booted.run(&["systemctl", "is-active", scope]);
    assert!(!still, "{scope} is still {state} after the container went");

    // The CRI with `systemd_cgroup = true`, as a kubelet with the systemd
    // cgroup driver asks: the pause process and the container are scopes
    // `cri-berth-ID.scope` in the pod's cgroup parent, a slice, and go
    // with the pod.
    pods_as_systemd_scopes(&booted);

    // Removal stops and removes everything but the data.
    booted.ok(&["dpkg", "-r", "berth"]);
    let (found, _, _) = booted.run(&["test", "-e", "/usr/bin/berth-taskd"]);
    assert!(!found, "berth-taskd left after dpkg -r");
    let (active, _, _) = booted.run(&["systemctl", "is-active", "berth-taskd.socket"]);
    assert!(!active, "taskd's socket still active after dpkg -r");
    booted.ok(&["test", "-d", "/var/lib/berth/content"]);
}
