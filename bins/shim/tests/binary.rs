//! The shim binary on its own, as containerd invokes it outside a task's
//! life: `-info` (runtime introspection) and a shim nobody ever sends a
//! Create to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::{on_path, require};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use containerd_shim_protos::types::introspection::RuntimeInfo;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-berth-v2");

/// `-info` with runc options on stdin: the shim's name and version, the
/// options echoed, and runc's `features` document (which lists `rro`,
/// the recursive read-only mounts containerd's CRI plugin looks for).
#[test]
fn info_reports_the_runtime_and_runc_features() {
    if !require(on_path("runc"), "runc is not installed") {
        return;
    }
    let mut runc = RuncOptions::new();
    runc.binary_name = "runc".into();
    let mut options = Any::new();
    options.type_url = "containerd.runc.v1.Options".into();
    options.value = runc.write_to_bytes().unwrap();
    let mut child = Command::new(SHIM)
        .arg("-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&options.write_to_bytes().unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(info.name, "io.containerd.berth.v2");
    assert!(!info.version.version.is_empty());
    assert_eq!(info.options.as_ref(), Some(&options));
    let features = info.features.as_ref().expect("runc has features");
    assert_eq!(
        features.type_url,
        "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
    );
    let document: serde_json::Value = serde_json::from_slice(&features.value).unwrap();
    let mount_options = document["mountOptions"].as_array().unwrap();
    assert!(mount_options.iter().any(|o| o == "rro"), "{document}");

    // containerd 2.x runs `-info` with nothing on stdin when the runtime
    // has no options.
    let out = Command::new(SHIM)
        .arg("-info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).unwrap();
    assert!(info.options.is_none());
    assert!(info.features.is_some());
}

/// A shim whose caller never sends a Create (it died between `start` and
/// Create) exits on its own and removes its socket, instead of living on
/// with nobody to stop it.
#[test]
fn a_shim_that_never_gets_a_create_exits() {
    if !require(
        nix::unistd::Uid::effective().is_root(),
        "the shim's start needs root",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // containerd's layout: <state>/io.containerd.runtime.v2.task/<ns>/<id>.
    let bundle = dir
        .path()
        .join("state/io.containerd.runtime.v2.task/ns/idle");
    std::fs::create_dir_all(&bundle).unwrap();
    let address = dir.path().join("c.sock");
    let out = Command::new(SHIM)
        .args(["-namespace", "ns", "-id", "idle", "-address"])
        .arg(&address)
        .arg("start")
        .current_dir(&bundle)
        // Long enough that the socket is still there when `start` has
        // returned, on a slow machine too.
        .env("BERTH_SHIM_IDLE_EXIT_SECONDS", "5")
        .env_remove("TTRPC_ADDRESS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let socket = Path::new(printed.trim().trim_start_matches("unix://")).to_path_buf();
    assert!(socket.exists(), "{printed}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the idle shim is still serving {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());
}

/// The options on `start`'s stdin in each form containerd sends them.
fn start_stdin_forms(cgroup: &str) -> Vec<(&'static str, Vec<u8>)> {
    use containerd_shim_protos::bootstrap_api::{BootstrapParams, Extension};
    let mut runc = RuncOptions::new();
    runc.shim_cgroup = cgroup.into();
    let mut runc_any = Any::new();
    runc_any.type_url = "containerd.runc.v1.Options".into();
    runc_any.value = runc.write_to_bytes().unwrap();

    // containerd.linux.runc.CreateOptions { shim_cgroup = 9 }: what the
    // Go client sends for runtimes not named io.containerd.runc.*.
    let mut create_options = vec![0x4a, cgroup.len() as u8];
    create_options.extend_from_slice(cgroup.as_bytes());
    let mut create_any = Any::new();
    create_any.type_url = "containerd.linux.runc.CreateOptions".into();
    create_any.value = create_options;

    let mut params = BootstrapParams::new();
    params.instance_id = "cg".into();
    params.namespace = "ns".into();
    params.containerd_version = "v2.3.0".into();
    let mut extension = Extension::new();
    extension.value = Some(runc_any.clone()).into();
    params.extensions.push(extension);

    vec![
        (
            "containerd.runc.v1.Options",
            runc_any.write_to_bytes().unwrap(),
        ),
        (
            "containerd.linux.runc.CreateOptions",
            create_any.write_to_bytes().unwrap(),
        ),
        ("2.3 BootstrapParams", params.write_to_bytes().unwrap()),
    ]
}

/// Runs `start` for a container "cg" in `bundle` with `stdin`.
fn start_shim(bundle: &Path, address: &Path, stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(SHIM)
        .args(["-namespace", "ns", "-id", "cg", "-address"])
        .arg(address)
        .arg("start")
        .current_dir(bundle)
        .env("BERTH_SHIM_IDLE_EXIT_SECONDS", "60")
        .env_remove("TTRPC_ADDRESS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// The pid of the shim server this test started: the one process whose
/// command line names the test's own temporary `-address`.
fn server_of(address: &Path) -> i32 {
    let wanted = address.as_os_str().as_encoded_bytes();
    let found: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == wanted))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "shim servers for {}: {found:?}",
        address.display()
    );
    found[0]
}

/// The server `start` leaves running: the server's command line (no
/// `start`), a process group of its own, the bundle as its directory
/// (given by `-bundle` here, not by the directory `start` ran in), and
/// /dev/null for stdio, so that `start`'s output ends when `start` does.
#[test]
fn the_started_server_is_a_process_of_its_own() {
    if !require(
        nix::unistd::Uid::effective().is_root(),
        "the shim's start needs root",
    ) {
        return;
    }
    // Executed (as under containerd) and forked (as berth-taskd asks):
    // the same server either way.
    for fork in [false, true] {
        let temp = tempfile::tempdir().unwrap();
        let bundle = temp
            .path()
            .join("state/io.containerd.runtime.v2.task/ns/own");
        std::fs::create_dir_all(&bundle).unwrap();
        let address = temp.path().join("c.sock");
        let mut start = Command::new(SHIM);
        start
            .args(["-namespace", "ns", "-id", "own", "-address"])
            .arg(&address)
            .arg("-bundle")
            .arg(&bundle)
            .arg("start")
            .current_dir(temp.path())
            .env("BERTH_SHIM_IDLE_EXIT_SECONDS", "60")
            .env_remove("TTRPC_ADDRESS")
            .stdin(Stdio::null());
        if fork {
            start.env("BERTH_SHIM_FORK_SERVER", "1");
        } else {
            start.env_remove("BERTH_SHIM_FORK_SERVER");
        }
        let out = start.output().unwrap();
        assert!(
            out.status.success(),
            "fork {fork}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = server_of(&address);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        let stdio: Vec<PathBuf> = (0..3)
            .map(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap())
            .collect();
        let group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
        // It listens where start said (a plain address: no
        // MAX_SHIM_VERSION asked for another form).
        let socket = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("unix://")
            .to_string();
        let served = std::os::unix::net::UnixStream::connect(&socket).is_ok();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(
            args,
            [
                SHIM,
                "-namespace",
                "ns",
                "-id",
                "own",
                "-address",
                address.to_str().unwrap()
            ],
            "fork {fork}: {cmdline:?}"
        );
        assert_eq!(cwd, bundle, "fork {fork}");
        assert_eq!(stdio, vec![PathBuf::from("/dev/null"); 3], "fork {fork}");
        assert_eq!(group.as_raw(), pid, "fork {fork}");
        assert!(served, "fork {fork}: nothing serves at {socket:?}");
    }
}

/// `ShimCgroup` moves the shim's server into that cgroup whichever option
/// type carries it; a cgroup that does not exist fails `start` and
/// leaves no server behind.
#[test]
fn start_moves_the_shim_into_its_cgroup_from_every_option_type() {
    if !require(
        nix::unistd::Uid::effective().is_root(),
        "moving a process between cgroups needs root",
    ) {
        return;
    }
    // A cgroup of our own in the memory hierarchy (v1 on this host, the
    // unified one on a v2 host).
    let name = format!("berth-shim-test-{}", std::process::id());
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dir = if unified {
        Path::new("/sys/fs/cgroup").join(&name)
    } else {
        Path::new("/sys/fs/cgroup/memory").join(&name)
    };
    std::fs::create_dir(&dir).unwrap();
    let _remove = RemoveDirOnDrop(dir.clone());
    let cgroup = format!("/{name}");

    let temp = tempfile::tempdir().unwrap();
    let bundle = temp
        .path()
        .join("state/io.containerd.runtime.v2.task/ns/cg");
    std::fs::create_dir_all(&bundle).unwrap();
    let address = temp.path().join("c.sock");
    for (form, stdin) in start_stdin_forms(&cgroup) {
        let out = start_shim(&bundle, &address, &stdin);
        assert!(
            out.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        let printed = printed.trim();
        let pid = server_of(&address);
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        let member = procs.lines().any(|l| l == pid.to_string());
        // Stop the server we started before asserting, so nothing is left.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "the shim server did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
        let socket = match serde_json::from_str::<serde_json::Value>(printed) {
            Ok(reply) => {
                assert!(form.contains("Bootstrap"), "{form}: {printed}");
                // containerd 2.3 takes the version 3 bootstrap.
                assert_eq!(reply["version"], 3, "{printed}");
                reply["address"].as_str().unwrap().to_string()
            }
            Err(_) => printed.to_string(),
        };
        let _ = std::fs::remove_file(socket.trim_start_matches("unix://"));
        let _ = std::fs::remove_file(bundle.join("address"));
        assert!(member, "{form}: the shim is not in {cgroup}: {procs:?}");
    }

    let (_, stdin) = start_stdin_forms("/berth-shim-test-no-such-cgroup")
        .into_iter()
        .next()
        .unwrap();
    let out = start_shim(&bundle, &address, &stdin);
    assert!(
        !out.status.success(),
        "start into a missing cgroup succeeded"
    );
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("does not exist"), "{message}");
    let leftover = std::fs::read_to_string(bundle.join("address")).unwrap_or_default();
    let socket = leftover.trim_start_matches("unix://");
    assert!(
        socket.is_empty() || std::os::unix::net::UnixStream::connect(socket).is_err(),
        "a server is left serving {socket}"
    );
}

/// Removes the test's cgroup however the test ends (empty by then: its
/// one member, the shim server, is killed before any assertion).
struct RemoveDirOnDrop(std::path::PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
