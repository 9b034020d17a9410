//! Test images, built here from Debian's busybox-static and plain files,
//! written as OCI image layouts that skopeo can push to a registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_ids::Digest;
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A blob written into a layout.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Blob {
    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest.to_string(), "size": self.size})
    }
}

/// An OCI image layout directory under construction.
#[derive(Debug)]
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<(String, Blob)>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layout = Layout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        };
        layout.write_index();
        layout
    }

    pub fn add_blob(&self, media_type: &str, data: &[u8]) -> Blob {
        let digest = Digest::of(data);
        std::fs::write(self.dir.join("blobs/sha256").join(digest.hex()), data).unwrap();
        Blob {
            media_type: media_type.to_string(),
            digest,
            size: data.len() as u64,
        }
    }

    /// A gzip layer of the files under `rootfs`; returns it and its diff ID.
    pub fn add_layer(&self, rootfs: &Path) -> (Blob, Digest) {
        let tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args([
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mtime=@0",
                "-cf",
                "-",
                ".",
            ])
            .output()
            .unwrap();
        assert!(tar.status.success(), "tar failed");
        let diff_id = Digest::of(&tar.stdout);
        let mut gzip = Command::new("gzip")
            .args(["-n", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = gzip.stdin.take().unwrap();
        let data = tar.stdout;
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&data).unwrap();
        });
        let out = gzip.wait_with_output().unwrap();
        writer.join().unwrap();
        (
            self.add_blob("application/vnd.oci.image.layer.v1.tar+gzip", &out.stdout),
            diff_id,
        )
    }

    /// An image manifest (OCI, or Docker schema 2 if `docker`) for `layers`.
    pub fn add_image(&self, layers: &[(Blob, Digest)], arch: &str, docker: bool) -> Blob {
        self.add_image_of(
            layers,
            arch,
            docker,
            json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}),
        )
    }

    /// An OCI image manifest for `layers` whose config's `config` is
    /// `process` (Entrypoint, Cmd, Env, User...).
    pub fn add_image_with_config(
        &self,
        layers: &[(Blob, Digest)],
        arch: &str,
        process: serde_json::Value,
    ) -> Blob {
        self.add_image_of(layers, arch, false, process)
    }

    fn add_image_of(
        &self,
        layers: &[(Blob, Digest)],
        arch: &str,
        docker: bool,
        process: serde_json::Value,
    ) -> Blob {
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": process,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, d)| d.to_string()).collect::<Vec<_>>()},
        });
        let (config_type, manifest_type, layer_type) = if docker {
            (
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                "application/vnd.oci.image.config.v1+json",
                OCI_MANIFEST,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let config = self.add_blob(config_type, config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor(),
            "layers": layers.iter().map(|(l, _)| {
                json!({"mediaType": layer_type, "digest": l.digest.to_string(), "size": l.size})
            }).collect::<Vec<_>>(),
        });
        self.add_blob(manifest_type, manifest.to_string().as_bytes())
    }

    /// An index over `manifests`, each with its architecture.
    pub fn add_index(&self, manifests: &[(Blob, &str)]) -> Blob {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests.iter().map(|(m, arch)| {
                let mut d = m.descriptor();
                d["platform"] = json!({"architecture": arch, "os": "linux"});
                d
            }).collect::<Vec<_>>(),
        });
        self.add_blob(OCI_INDEX, index.to_string().as_bytes())
    }

    /// Names `blob` (a manifest or index) `tag` in the layout's index.json.
    pub fn tag(&mut self, tag: &str, blob: &Blob) {
        self.refs.push((tag.to_string(), blob.clone()));
        self.write_index();
    }

    fn write_index(&self) {
        let index = json!({
            "schemaVersion": 2,
            "manifests": self.refs.iter().map(|(tag, blob)| {
                let mut d = blob.descriptor();
                d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
                d
            }).collect::<Vec<_>>(),
        });
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }

    /// The layout tarred into an archive at `path` (as `berth import`
    /// takes it); returns `path`.
    pub fn archive(&self, path: &Path) -> PathBuf {
        let status = Command::new("tar")
            .arg("-C")
            .arg(&self.dir)
            .arg("-cf")
            .arg(path)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success(), "tar of the layout failed");
        path.to_path_buf()
    }

    /// Pushes `tag` to `target` (`host:port/repo:tag`) with skopeo.
    pub fn push(&self, tag: &str, target: &str, credentials: Option<&str>, docker_format: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if docker_format {
            cmd.args(["--format", "v2s2"]);
        } else {
            cmd.args(["--format", "oci"]);
        }
        if let Some(creds) = credentials {
            cmd.args(["--dest-creds", creds]);
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", self.dir.display()))
            .arg(format!("docker://{target}"))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A root filesystem with Debian's static busybox as /bin/busybox and
/// /bin/sh, plus `extra` files.
pub fn busybox_rootfs(dir: &Path, extra: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.to_path_buf();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    for (name, data) in extra {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    root
}

/// A root filesystem of plain files only.
pub fn files_rootfs(dir: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (name, data) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    dir.to_path_buf()
}

/// The name [`run_image_archive`]'s image is imported under.
pub const RUN_IMAGE: &str = "berth.test/busybox:run";

/// The architecture name of this machine, as images say it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// An OCI image archive (a tarred layout) for running containers: Debian's
/// static busybox with the applets the tests use, a user `berth` (1234)
/// and groups, `Cmd` /bin/sh; tagged [`RUN_IMAGE`]. Returns its path.
pub fn run_image_archive(dir: &Path) -> PathBuf {
    let rootfs = dir.join("run-rootfs");
    busybox_rootfs(
        &rootfs,
        &[
            (
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nberth:x:1234:1234:berth:/home/berth:/bin/sh\n",
            ),
            (
                "etc/group",
                b"root:x:0:\nberth:x:1234:\nextra:x:2000:berth\n",
            ),
        ],
    );
    for applet in [
        "cat", "echo", "grep", "head", "hostname", "id", "ls", "sleep", "stat", "true", "wc",
        "readlink", "touch", "mount", "unshare", "env", "pwd", "stty", "tty",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for dir in ["proc", "sys", "dev", "tmp", "root", "home/berth"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    let mut layout = Layout::new(&dir.join("run-layout"));
    let layer = layout.add_layer(&rootfs);
    let manifest = layout.add_image(&[layer], host_architecture(), false);
    layout.tag(RUN_IMAGE, &manifest);
    layout.archive(&dir.join("run-image.tar"))
}
