//! A whole berth stack on temp dirs: berth-contentd, berth-snapd (root
//! only), berth-metad and berth-taskd wired to each other, and the `berth`
//! CLI pointed at all four.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::hang::output_bounded;
use crate::{binary, Daemon};

#[derive(Debug)]
pub struct Stack {
    pub dir: PathBuf,
    pub contentd: Daemon,
    pub snapd: Daemon,
    pub metad: Daemon,
    pub taskd: Daemon,
}

impl Stack {
    /// Starts the four daemons under `dir`. Needs root (snapd mounts).
    pub fn start(dir: &Path) -> Stack {
        let contentd = Daemon::contentd(&dir.join("contentd"));
        let snapd = Daemon::snapd(&dir.join("snapd"), &contentd);
        let metad = Daemon::metad(&dir.join("metad"), &contentd, &snapd);
        let taskd = Daemon::taskd(&dir.join("taskd"), &metad, &snapd);
        Stack {
            dir: dir.to_path_buf(),
            contentd,
            snapd,
            metad,
            taskd,
        }
    }

    /// A stack on a new directory under /tmp named `prefix…` (kept until
    /// the returned directory drops), with the run image
    /// ([`crate::images::run_image_archive`]) imported: recorded and
    /// unpacked.
    pub fn with_run_image(prefix: &str) -> (tempfile::TempDir, Stack) {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("a temporary directory");
        let archive = crate::images::run_image_archive(dir.path());
        let stack = Stack::start(&dir.path().join("stack"));
        let (ok, _, err) = stack.berth(&["import", &archive.display().to_string()]);
        assert!(ok, "import: {err}");
        (dir, stack)
    }

    /// Where `berth run` puts its fifos and detached logs for this stack.
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `berth` with every daemon's socket in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("berth"));
        command
            .env("BERTH_CONTENTD_ADDRESS", &self.contentd.socket)
            .env("BERTH_SNAPD_ADDRESS", &self.snapd.socket)
            .env("BERTH_METAD_ADDRESS", &self.metad.socket)
            .env("BERTH_TASKD_ADDRESS", &self.taskd.socket)
            .env("BERTH_FIFO_DIR", self.fifo_dir())
            .env("BERTH_LOG_DIR", self.log_dir())
            .env_remove("BERTH_NAMESPACE")
            .env_remove("BERTH_SNAPSHOTTER")
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs `berth`; returns (exit ok, stdout, stderr).
    pub fn berth(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.berth_output(args, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `berth` with `stdin` as its input (or none), to its end; a
    /// command that hangs fails the test with what it and the daemons were
    /// doing (see [`crate::hang`]).
    pub fn berth_output(&self, args: &[&str], stdin: Option<Vec<u8>>) -> Output {
        let daemons: Vec<u32> = [&self.contentd, &self.snapd, &self.metad, &self.taskd]
            .iter()
            .filter_map(|daemon| daemon.running_pid())
            .collect();
        output_bounded(&mut self.command(args), stdin, &daemons)
    }

    /// Runs `berth` and parses its stdout as JSON (`--format json` is
    /// added); panics with stderr if it fails.
    pub fn berth_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.berth(&all);
        assert!(ok, "berth {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("berth {args:?}: {e}: {out}"))
    }

    /// Starts `berth` in the background with piped stdout and stderr.
    pub fn spawn_berth(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting berth")
    }
}

/// A test that fails half-way must not leave containers running: every
/// task of the default namespace goes (killed), with its container.
impl Drop for Stack {
    fn drop(&mut self) {
        let out = self.berth_output(&["tasks", "ls", "-q"], None);
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            self.berth_output(&["rm", "--force", id], None);
        }
    }
}
