#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a panic is a failed test.

//! Support for berth's end-to-end tests: find the built binaries, start
//! daemons on temp dirs and sockets, kill them by pid, and decide when a
//! missing prerequisite may skip a test (never under `CI=true`).

pub mod cri;
pub mod fake_registry;
pub mod grpc;
pub mod guest;
pub mod hang;
pub mod images;
pub mod registry;
pub mod rng;
pub mod stack;
pub mod tree;
pub mod wire;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, built next to the test executable. The
/// README's test command builds them first (`cargo build --workspace --bins`).
/// With `BERTH_E2E_BUILD=1` the first call builds them itself, from the tree
/// the tests were built from: bench/mutants.sh sets it, so that a mutant of
/// a daemon's code reaches the daemon these tests start.
pub fn binary(name: &str) -> PathBuf {
    if std::env::var_os("BERTH_E2E_BUILD").is_some_and(|v| v == "1") {
        static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        BUILT.get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--workspace", "--bins", "--quiet"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running cargo build");
            assert!(status.success(), "cargo build --workspace --bins failed");
        });
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is under target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Whether we run under CI, where a missing prerequisite fails a test.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Returns false (skip) when `why` is missing outside CI; panics under CI.
pub fn require(available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    assert!(!in_ci(), "prerequisite missing under CI: {why}");
    eprintln!("skipping: {why}");
    false
}

/// Where `tool` is on PATH, if it is.
pub fn which(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join(tool))
        .find(|p| p.exists())
}

/// Whether `tool` is an executable name found on PATH.
pub fn on_path(tool: &str) -> bool {
    which(tool).is_some()
}

/// Processes whose working directory is under `dir`, with it (shims run in
/// their bundles): what a test left running.
pub fn processes_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
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

/// Unmounts (lazily, deepest first) whatever is mounted under `dir`.
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in ours {
        let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Whether `pid` is a live process (an exited, unreaped one is not).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !state.starts_with('Z')
}

/// A char device node (mode 0666) made at `path`: with a number no
/// driver has (major 240 is for local, experimental use), an open that the
/// device cgroup lets through fails with ENXIO, one it stops with EPERM.
pub fn make_char_device(path: &Path, major: u64, minor: u64) {
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// What a pull from a registry of the test's own needs: root (snapd
/// mounts), Debian's docker-registry, skopeo (to push the test's image) and
/// busybox-static (to build it). False (skip) outside CI when missing.
pub fn pull_prerequisites() -> bool {
    require(is_root(), "berth-snapd needs root")
        && require(
            ["docker-registry", "skopeo"].iter().all(|t| on_path(t))
                && std::path::Path::new("/bin/busybox").exists(),
            "docker-registry, skopeo and busybox-static are needed",
        )
}

/// What running containers needs: root, runc, and busybox-static (the
/// tests' images are built from it). False (skip) outside CI when missing.
pub fn run_prerequisites() -> bool {
    require(is_root(), "running containers needs root")
        && require(on_path("runc"), "runc is not installed")
        && require(
            std::path::Path::new("/bin/busybox").exists(),
            "busybox-static is not installed",
        )
}

/// A daemon process started by a test, on its own temp directory. Killed
/// (by pid) when dropped.
#[derive(Debug)]
pub struct Daemon {
    binary: String,
    child: Option<Child>,
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    extra_args: Vec<String>,
}

impl Daemon {
    /// Starts `binary` with `--root`, `--state` and `--address` under `dir`.
    pub fn start(binary_name: &str, dir: &Path) -> Daemon {
        Daemon::start_with_args(binary_name, dir, &[])
    }

    pub fn start_with_args(binary_name: &str, dir: &Path, extra_args: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).expect("daemon directory");
        let mut daemon = Daemon {
            binary: binary_name.to_string(),
            child: None,
            dir: dir.to_path_buf(),
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("run").join("daemon.sock"),
            log: dir.join("daemon.log"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        daemon.spawn();
        daemon
    }

    pub fn contentd(dir: &Path) -> Daemon {
        Daemon::start("berth-contentd", dir)
    }

    /// berth-snapd under `dir`, with its blobs in `contentd`.
    pub fn snapd(dir: &Path, contentd: &Daemon) -> Daemon {
        let contentd = contentd.socket.display().to_string();
        Daemon::start_with_args("berth-snapd", dir, &["--contentd", &contentd])
    }

    /// berth-snapd under `dir` whose own write-back of commits waits an
    /// hour: within a test, only `--sync-fs` (or the kernel's writeback)
    /// puts a committed layer's files on disk, so what the flag writes
    /// can be told from what snapd would write half a second later.
    pub fn snapd_without_prompt_write_back(dir: &Path, contentd: &Daemon) -> Daemon {
        let contentd = contentd.socket.display().to_string();
        Daemon::start_with_args(
            "berth-snapd",
            dir,
            &["--contentd", &contentd, "--write-back-delay", "3600000"],
        )
    }

    /// berth-metad under `dir`, asking `contentd` and `snapd`.
    pub fn metad(dir: &Path, contentd: &Daemon, snapd: &Daemon) -> Daemon {
        let contentd = contentd.socket.display().to_string();
        let snapd = snapd.socket.display().to_string();
        // No collection at start: a test's unreferenced blobs would be
        // garbage to it, and whether it ran before or after the test wrote
        // them would depend on the machine's load. Collections that
        // deletions call for, and `berth gc`, still run.
        Daemon::start_with_args(
            "berth-metad",
            dir,
            &[
                "--contentd",
                &contentd,
                "--snapd",
                &snapd,
                "--gc-startup-delay",
                "0",
            ],
        )
    }

    /// berth-metad under `dir` with no peers: the contentd and snapd it is
    /// given are sockets under `dir` that nothing serves, so its
    /// collections find nothing to sweep and never reach the daemons of a
    /// berth this machine runs (at the default sockets).
    pub fn metad_alone(dir: &Path) -> Daemon {
        let contentd = dir.join("no-contentd.sock").display().to_string();
        let snapd = dir.join("no-snapd.sock").display().to_string();
        Daemon::start_with_args(
            "berth-metad",
            dir,
            &["--contentd", &contentd, "--snapd", &snapd],
        )
    }

    /// berth-taskd under `dir`, asking `metad` and `snapd`. It finds
    /// containerd-shim-berth-v2 beside itself and other shims on PATH.
    pub fn taskd(dir: &Path, metad: &Daemon, snapd: &Daemon) -> Daemon {
        let metad = metad.socket.display().to_string();
        let snapd = snapd.socket.display().to_string();
        Daemon::start_with_args("berth-taskd", dir, &["--metad", &metad, "--snapd", &snapd])
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        // The socket a killed daemon left: its listener can outlive it for
        // a moment in a child between fork and exec, and a connect to it
        // would succeed with no daemon behind it.
        let stale = socket_identity(&self.socket);
        let child = Command::new(binary(&self.binary))
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.socket)
            .arg("--log-level")
            .arg("debug")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting daemon");
        self.child = Some(child);
        self.wait_ready(stale);
    }

    /// Waits until the daemon serves on a socket of its own (not the
    /// `stale` one left by a killed predecessor).
    fn wait_ready(&mut self, stale: Option<(u64, i64, i64)>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let current = socket_identity(&self.socket);
            let fresh = current.is_some() && current != stale;
            if fresh && std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} exited with {status} before serving:\n{}",
                        self.binary,
                        self.log_text()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "{} did not start serving:\n{}",
            self.binary,
            self.log_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("daemon is running")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's pid while it runs.
    pub fn running_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        child.wait().expect("waiting for daemon")
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill or terminate");
        self.spawn();
    }

    /// Peak resident memory (VmHWM) of the daemon, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_field_kib(self.pid(), "VmHWM:")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A socket file's inode and change time: a new socket at the same path
/// differs in one of them even when the inode number is reused.
fn socket_identity(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

/// A `kB` field of /proc/<pid>/status.
pub fn status_field_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("status field")
}

/// Runs the `berth` CLI against a socket; returns (exit ok, stdout, stderr).
pub fn berth(socket: &Path, args: &[&str], stdin: Option<&[u8]>) -> (bool, Vec<u8>, String) {
    let out = hang::output_bounded(
        Command::new(binary("berth"))
            .env("BERTH_CONTENTD_ADDRESS", socket)
            .env_remove("BERTH_NAMESPACE")
            .args(args),
        stdin.map(<[u8]>::to_vec),
        &[],
    );
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fast, non-repeating test data of any size: one pseudo-random block,
/// copied, with every 4 KiB stamped with its position.
#[derive(Debug)]
pub struct BlockSource {
    base: Vec<u8>,
}

impl BlockSource {
    pub fn new(block_size: usize) -> BlockSource {
        BlockSource {
            base: berth_content::testsuite::test_data(block_size, 0x5eed),
        }
    }

    pub fn block(&self, index: u64) -> Vec<u8> {
        let mut data = self.base.clone();
        for (i, chunk) in data.chunks_mut(4096).enumerate() {
            let stamp = (index * 1_000_003 + i as u64).to_le_bytes();
            let n = chunk.len().min(8);
            chunk[..n].copy_from_slice(&stamp[..n]);
        }
        data
    }
}
