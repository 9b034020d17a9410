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
