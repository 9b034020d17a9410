//! A private containerd per test (Debian's 1.6 or the 2.2.7 peer), a
//! busybox image built from Debian's busybox-static, and the matching
//! `ctr` pointed at both.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "berth.test/busybox:latest";
pub const BERTH: &str = "io.containerd.berth.v2";
pub const RUNC: &str = "io.containerd.runc.v2";
const BUSYBOX: &str = "/bin/busybox";
const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-berth-v2");
/// Runs the tests against another build of the shim, e.g. the shipped one
/// from `scripts/build-shim.sh`, instead of the one cargo just built.
const SHIM_OVERRIDE: &str = "BERTH_SHIM_BINARY";

/// The shim binary containerd finds on its PATH.
fn shim() -> PathBuf {
    let Some(path) = std::env::var_os(SHIM_OVERRIDE) else {
        return PathBuf::from(SHIM);
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file()
            && path
                .file_name()
                .is_some_and(|n| n == "containerd-shim-berth-v2"),
        "{SHIM_OVERRIDE}={} is not a containerd-shim-berth-v2 binary",
        path.display()
    );
    path
}

pub use berth_e2e::{on_path, require, which};

/// Which upstream containerd drives the shims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Debian's containerd 1.6.20, with its Go runc shim, all on PATH.
    V16,
    /// containerd 2.2.7 and its Go runc shim from ../shared/peers/bin.
    V22,
}

/// containerd 2.2.7, its `ctr` and its Go runc shim (see
/// ../shared/peers/README.md).
fn peers_bin() -> PathBuf {
    berth_e2e::cri::shared().join("peers/bin")
}

impl Version {
    fn containerd(self) -> PathBuf {
        match self {
            Version::V16 => PathBuf::from("containerd"),
            Version::V22 => peers_bin().join("containerd"),
        }
    }

    fn ctr(self) -> PathBuf {
        match self {
            Version::V16 => PathBuf::from("ctr"),
            Version::V22 => peers_bin().join("ctr"),
        }
    }

    /// The config for a containerd whose root, state and sockets are under
    /// `base`, with the CRI (and, for 2.x, NRI, whose socket is global)
    /// left out.
    fn config(self, base: &Path) -> String {
        let (version, disabled) = match self {
            Version::V16 => (2, "\"io.containerd.grpc.v1.cri\""),
            Version::V22 => (
                3,
                "\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \
                 \"io.containerd.cri.v1.runtime\", \
                 \"io.containerd.podsandbox.controller.v1.podsandbox\", \
                 \"io.containerd.nri.v1.nri\"",
            ),
        };
        format!(
            "version = {version}\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [{disabled}]\n\
             [grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n",
            base.display()
        )
    }

    /// The directory containerd's PATH starts with, after the berth shim's,
    /// so that `io.containerd.runc.v2` is this version's Go shim.
    fn path_prefix(self) -> Option<PathBuf> {
        match self {
            Version::V16 => None,
            Version::V22 => Some(peers_bin()),
        }
    }
}

/// Whether this machine can run the end-to-end tests with `version`.
pub fn prerequisites(version: Version) -> bool {
    let common = require(nix::unistd::Uid::effective().is_root(), "tests need root")
        && require(on_path("runc"), "runc is not installed")
        && require(
            Path::new(BUSYBOX).exists(),
            "busybox-static is not installed",
        );
    common
        && match version {
            Version::V16 => {
                require(
                    on_path("containerd") && on_path("ctr"),
                    "containerd and ctr are not installed",
                ) && require(
                    on_path("containerd-shim-runc-v2"),
                    "containerd-shim-runc-v2 is not installed",
                )
            }
            Version::V22 => require(
                ["containerd", "ctr", "containerd-shim-runc-v2"]
                    .iter()
                    .all(|name| peers_bin().join(name).is_file()),
                "containerd 2.2.7 is missing from ../shared/peers/bin",
            ),
        }
}

/// A containerd with its own root, state and sockets under a temp dir.
///
/// Its containers live in a namespace of their own, named after the temp
/// dir: ctr puts a container's cgroup at `/<namespace>/<id>`, so tests that
/// run at the same time with the same container ids do not share cgroups.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub version: Version,
    pub namespace: String,
}

impl Containerd {
    pub fn start(version: Version) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("berth-shim-")
            .tempdir_in("/tmp")
            .unwrap();
        let base = dir.path();
        std::fs::write(base.join("config.toml"), version.config(base)).unwrap();
        std::fs::create_dir_all(base.join("fifo")).unwrap();
        let namespace = base.file_name().unwrap().to_string_lossy().into_owned();
        let mut containerd = Containerd {
            dir,
            child: None,
            version,
            namespace,
        };
        containerd.spawn();
        containerd.import_image();
        containerd
    }

    fn spawn(&mut self) {
        let base = self.dir.path();
        let shim = shim();
        let mut dirs = vec![shim.parent().unwrap().to_path_buf()];
        dirs.extend(self.version.path_prefix());
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(dirs).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(base.join("containerd.log"))
            .unwrap();
        let child = Command::new(self.version.containerd())
            .arg("--config")
            .arg(base.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd (SIGTERM, like a service restart) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    pub fn address(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.path().join("fifo")
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().unwrap()
    }

    /// The start of a shell command line running this containerd's `ctr`.
    pub fn ctr_shell_prefix(&self) -> String {
        format!(
            "'{}' --address '{}' --namespace '{}'",
            self.version.ctr().display(),
            self.address().display(),
            self.namespace
        )
    }

    /// Where containerd keeps this namespace's task bundles.
    pub fn bundles_dir(&self) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
    }

    /// The cgroup v1 directory of container `id` under `controller`.
    pub fn cgroup_dir(&self, controller: &str, id: &str) -> PathBuf {
        Path::new(CGROUPS)
            .join(controller)
            .join(&self.namespace)
            .join(id)
    }

    /// `ctr events`, running until the returned value is dropped, already
    /// subscribed when this returns.
    pub fn events(&self) -> Events {
        let mut child = self
            .ctr_command(&["events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let events = Events { child, lines };
        // Nothing tells when the subscription is in place: label the
        // namespace (an event of its own) until the event shows up.
        for n in 0..50 {
            let label = format!("berth.test/sync={n}");
            let out = self.ctr(&["namespaces", "label", &self.namespace, &label]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline {
                if !events.matching(&["/namespaces/update"]).is_empty() {
                    return events;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("ctr events saw no event");
    }

    /// Sets the memory limit of the running task `id` through containerd's
    /// Tasks.Update (ctr has no command for it), as containerd's Go client
    /// does: a JSON `LinuxResources` under the OCI spec's type URL.
    pub fn update_memory_limit(&self, id: &str, limit: u64) -> Result<(), String> {
        let resources = serde_json::json!({ "memory": { "limit": limit } });
        let request = grpc::UpdateTaskRequest {
            container_id: id.to_string(),
            resources: Some(grpc::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                    .to_string(),
                value: serde_json::to_vec(&resources).unwrap(),
            }),
        };
        grpc::unary::<_, grpc::Empty>(
            &self.address(),
            &self.namespace,
            "/containerd.services.tasks.v1.Tasks/Update",
            request,
        )
        .map(drop)
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.version.ctr());
        cmd.arg("--address")
            .arg(self.address())
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// `ctr run` with the runtime's flags; `extra` goes before the image.
    pub fn run_args(&self, runtime: &str, extra: &[&str], id: &str, cmd: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["run".into(), "--runtime".into(), runtime.into()];
        args.push("--fifo-dir".into());
        args.push(self.fifo_dir().display().to_string());
        if runtime == RUNC {
            args.push("--runc-root".into());
            args.push(self.dir.path().join("runc").display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(IMAGE.into());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        args
    }

    pub fn run(&self, runtime: &str, extra: &[&str], id: &str, cmd: &[&str]) -> Output {
        let args = self.run_args(runtime, extra, id, cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr(&args)
    }

    pub fn run_detached(&self, runtime: &str, id: &str, cmd: &[&str]) {
        let out = self.run(runtime, &["-d"], id, cmd);
        assert!(out.status.success(), "run -d {id}: {}", text(&out.stderr));
    }

    /// The task's status column from `ctr task ls`.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout).lines().find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.get(2).unwrap_or(&"").to_string())
        })
    }

    pub fn wait_for_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.task_status(id).as_deref() != Some(status) {
            assert!(
                Instant::now() < deadline,
                "{id} never reached {status}: {:?}",
                self.task_status(id)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills, deletes the task and removes the container.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = self.ctr(&["task", "delete", "--force", id]);
        let _ = self.ctr(&["container", "rm", id]);
    }

    /// Pids of shims started for this containerd (their argv names its socket).
    pub fn shim_pids(&self) -> Vec<i32> {
        let address = self.address().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.contains("containerd-shim"))
                && args.contains(&address)
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// Waits until every shim of this containerd has exited.
    pub fn assert_no_shims(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.shim_pids().is_empty() {
            assert!(
                Instant::now() < deadline,
                "shims left: {:?}",
                self.shim_pids()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Mount points under this containerd's directory.
    pub fn mounts(&self) -> Vec<String> {
        let base = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&base))
            .collect()
    }

    fn import_image(&self) {
        let archive = self.dir.path().join("busybox.tar");
        build_busybox_archive(&self.dir.path().join("image"), &archive);
        let out = self.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(out.status.success(), "import: {}", text(&out.stderr));
    }
}

/// Where the cgroup hierarchies are mounted: hybrid on the test machines,
/// the controllers on v1 hierarchies, and a v2 one (`unified`) without any.
const CGROUPS: &str = "/sys/fs/cgroup";

/// Removes the cgroup `dir` and the (empty) cgroups below it.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A running `ctr events`; what it printed so far.
pub struct Events {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Events {
    /// The events printed so far whose line contains every one of `parts`.
    pub fn matching(&self, parts: &[&str]) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .cloned()
            .collect()
    }

    /// Waits up to `timeout` for an event whose line contains all `parts`.
    pub fn wait_for(&self, parts: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.matching(parts).into_iter().next() {
                return Some(line);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything printed so far, for failure messages.
    pub fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is a live (not zombie) process whose command line starts
/// with `command`.
pub fn running(pid: i32, command: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.starts_with(command.as_bytes()))
}

/// Just enough gRPC to call containerd's API where ctr has no command.
mod grpc {
    use std::path::Path;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    /// containerd.services.tasks.v1.UpdateTaskRequest, without annotations.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UpdateTaskRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(message, optional, tag = "2")]
        pub resources: Option<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    /// One unary call of `method` ("/package.Service/Method") in
    /// containerd namespace `namespace`; the error is the gRPC status.
    pub fn unary<Req, Resp>(
        socket: &Path,
        namespace: &str,
        method: &'static str,
        request: Req,
    ) -> Result<Resp, String>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let channel = berth_e2e::grpc::unix_channel(socket)
                .await
                .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
            let mut client = tonic::client::Grpc::new(channel);
            client.ready().await.map_err(|e| e.to_string())?;
            let mut request = tonic::Request::new(request);
            request
                .metadata_mut()
                .insert("containerd-namespace", namespace.parse().unwrap());
            let codec = tonic::codec::ProstCodec::<Req, Resp>::default();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
            client
                .unary(request, path, codec)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Leave nothing behind even when a test failed half-way.
        let out = self.ctr(&["task", "ls", "-q"]);
        for id in text(&out.stdout).lines() {
            self.remove(id.trim());
        }
        let out = self.ctr(&["container", "ls", "-q"]);
        for id in text(&out.stdout).lines() {
            let _ = self.ctr(&["container", "rm", id.trim()]);
        }
        self.stop();
        for mount in self.mounts().into_iter().rev() {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // runc removes a container's cgroup, not the namespace's above it.
        if let Ok(hierarchies) = std::fs::read_dir(CGROUPS) {
            for hierarchy in hierarchies.flatten() {
                remove_cgroup_tree(&hierarchy.path().join(&self.namespace));
            }
        }
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn tar(dir: &Path, archive: &Path, entries: &[&str]) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(archive)
        .args(entries)
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
}

/// A docker-archive tarball: one layer with busybox and its applet links.
pub fn build_busybox_archive(work: &Path, archive: &Path) {
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "id", "ps", "ls", "tty", "kill", "trap", "head", "tr",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for dir in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    let out = work.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let layer_tmp = work.join("layer.tar");
    tar(&rootfs, &layer_tmp, &["."]);
    let layer = sha256_file(&layer_tmp);
    std::fs::create_dir_all(out.join(&layer)).unwrap();
    std::fs::rename(&layer_tmp, out.join(&layer).join("layer.tar")).unwrap();
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Env\":[\"PATH=/bin\"],\"Cmd\":[\"/bin/sh\"]}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{layer}\"]}}}}"
    );
    let config_path = out.join("config.json");
    std::fs::write(&config_path, &config).unwrap();
    let config_digest = sha256_file(&config_path);
    std::fs::rename(&config_path, out.join(format!("{config_digest}.json"))).unwrap();
    let manifest = format!(
        "[{{\"Config\":\"{config_digest}.json\",\"RepoTags\":[\"{IMAGE}\"],\"Layers\":[\"{layer}/layer.tar\"]}}]"
    );
    let mut file = std::fs::File::create(out.join("manifest.json")).unwrap();
    file.write_all(manifest.as_bytes()).unwrap();
    let config_name = format!("{config_digest}.json");
    tar(&out, archive, &["manifest.json", &config_name, &layer]);
}
