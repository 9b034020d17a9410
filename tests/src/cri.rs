//! berth-crid driven as the kubelet drives it, through crictl (cri-tools
//! 1.34 from ../shared/peers): a stack with crid on it, the image its
//! pods' containers run, and crictl calls against it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::images::{busybox_rootfs, host_architecture, Layout};
use crate::stack::Stack;
use crate::Daemon;

/// The team's shared directory (`../shared` beside the repository), or
/// `BERTH_SHARED_DIR`: a copy of the tree elsewhere (cargo-mutants
/// builds one under /tmp) has no `../shared` of its own.
pub fn shared() -> PathBuf {
    match std::env::var_os("BERTH_SHARED_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

pub fn crictl_path() -> PathBuf {
    shared().join("peers/bin/crictl")
}

/// The image containers run: busybox, with an entrypoint that sleeps and a
/// shell; imported into `k8s.io`. Pods' pause processes run berth's
/// built-in pause image, which crid makes itself (no registry here).
pub const POD_IMAGE: &str = "berth.test/cri:busybox";

pub fn pod_image_archive(dir: &Path) -> PathBuf {
    let rootfs = busybox_rootfs(&dir.join("rootfs"), &[]);
    for applet in ["sleep", "echo", "cat", "hostname", "id", "yes", "head"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let mut layout = Layout::new(&dir.join("layout"));
    let layer = layout.add_layer(&rootfs);
    let manifest = layout.add_image_with_config(
        &[layer],
        host_architecture(),
        json!({"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]}),
    );
    layout.tag(POD_IMAGE, &manifest);
    layout.archive(&dir.join("pod-image.tar"))
}

/// A stack (contentd, snapd, metad, taskd) with berth-crid on it, the pod
/// image imported into `k8s.io`.
#[derive(Debug)]
pub struct Cri {
    pub stack: Stack,
    pub crid: Daemon,
    pub dir: PathBuf,
}

impl Cri {
    pub fn start(dir: &Path) -> Cri {
        let stack = Stack::start(&dir.join("stack"));
        let archive = pod_image_archive(&dir.join("image"));
        let (ok, _, err) = stack.berth(&["-n", "k8s.io", "import", archive.to_str().unwrap()]);
        assert!(ok, "import: {err}");
        let sockets = [
            ("--contentd", &stack.contentd.socket),
            ("--snapd", &stack.snapd.socket),
            ("--metad", &stack.metad.socket),
            ("--taskd", &stack.taskd.socket),
        ];
        let mut args: Vec<String> = Vec::new();
        for (flag, socket) in sockets {
            args.push(flag.to_string());
            args.push(socket.display().to_string());
        }
        args.extend([
            "--cni-conf-dir".to_string(),
            dir.join("net.d").display().to_string(),
            "--cdi-spec-dir".to_string(),
            dir.join("cdi").display().to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let crid = Daemon::start_with_args("berth-crid", &dir.join("crid"), &args);
        Cri {
            stack,
            crid,
            dir: dir.to_path_buf(),
        }
    }

    /// A crictl command against this crid, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let endpoint = format!("unix://{}", self.crid.socket.display());
        let mut command = Command::new(crictl_path());
        command
            .args(["-r", &endpoint, "-i", &endpoint, "--timeout", "60s"])
            .args(args)
            .env("HOME", &self.dir);
        command
    }

    pub fn crictl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().expect("running crictl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn crictl_with_input(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running crictl");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `crictl events` in the background.
    pub fn spawn_events(&self) -> std::process::Child {
        const SUBSCRIBED: &str = "a client subscribed to container events";
        let subscriptions = || self.crid.log_text().matches(SUBSCRIBED).count();
        let before = subscriptions();
        let endpoint = format!("unix://{}", self.crid.socket.display());
        let child = Command::new(crictl_path())
            .args(["-r", &endpoint, "-i", &endpoint, "events", "-o", "json"])
            .env("HOME", &self.dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("running crictl events");
        // Events before crid has the subscription go unseen: wait for it.
        let give_up = Instant::now() + Duration::from_secs(60);
        while subscriptions() == before {
            assert!(Instant::now() < give_up, "crictl events did not subscribe");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// The (id, event type) pairs `crictl events` printed until `last`
    /// arrived (or 30 s passed); stops it.
    pub fn events_until(
        &self,
        mut child: std::process::Child,
        last: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let values =
                serde_json::Deserializer::from_reader(stdout).into_iter::<serde_json::Value>();
            for value in values.flatten() {
                let id = value["containerId"].as_str().unwrap_or("").to_string();
                let kind = value["containerEventType"]
                    .as_str()
                    .unwrap_or("CONTAINER_CREATED_EVENT")
                    .to_string();
                if tx.send((id, kind)).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(event) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let done = last
                .iter()
                .any(|(id, kind)| event.0 == *id && event.1 == *kind);
            seen.push(event);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        seen
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.crictl(args);
        assert!(ok, "crictl {args:?}: {err}");
        out
    }

    pub fn inspect(&self, what: &str, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&[what, "-o", "json", id])).unwrap()
    }

    pub fn write_config(&self, name: &str, value: serde_json::Value) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path.display().to_string()
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // Whatever a failed test left: every pod goes, with its containers.
        let _ = self.crictl(&["rmp", "-fa"]);
    }
}

/// A temporary directory for a crictl test, if its prerequisites are here
/// (root, runc, busybox-static, crictl from ../shared/peers).
pub fn crictl_test_dir() -> Option<tempfile::TempDir> {
    if !crate::require(crate::is_root(), "needs root")
        || !crate::require(crate::run_prerequisites(), "runc and busybox-static")
        || !crate::require(crictl_path().exists(), "../shared/peers/bin/crictl")
    {
        return None;
    }
    Some(
        tempfile::Builder::new()
            .prefix("berth-cri-")
            .tempdir_in("/tmp")
            .unwrap(),
    )
}

/// A temporary directory for a crictl test whose pods get a network of
/// their own, if its prerequisites are here: those of
/// [`crictl_test_dir`] and CNI's plugins (`containernetworking-plugins`).
pub fn crictl_cni_test_dir() -> Option<tempfile::TempDir> {
    let dir = crictl_test_dir()?;
    crate::require(
        Path::new("/usr/lib/cni/bridge").exists(),
        "containernetworking-plugins",
    )
    .then_some(dir)
}

/// Moves the calling thread into a network namespace of its own with `lo`
/// up: every daemon it starts from then on runs there, so the bridges and
/// rules CNI makes for pods never touch the host's network.
pub fn enter_private_network() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success());
}

/// Writes `<dir>/net.d/10-<name>.conflist` (where [`Cri::start`] points
/// crid): CNI's bridge on `bridge`, addresses from `subnet` by host-local
/// (its state under `<dir>/ipam`), then the `more` plugins.
pub fn write_bridge_network(
    dir: &Path,
    name: &str,
    bridge: &str,
    subnet: &str,
    more: &[serde_json::Value],
) {
    let net_d = dir.join("net.d");
    std::fs::create_dir_all(&net_d).unwrap();
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": dir.join("ipam").display().to_string(),
        },
    })];
    plugins.extend(more.iter().cloned());
    let list = json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
    std::fs::write(net_d.join(format!("10-{name}.conflist")), list.to_string()).unwrap();
}
