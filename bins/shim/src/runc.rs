//! The [`Runtime`] the shim really uses: a typed wrapper over the runc
//! command line (and crun, runsc, or any runtime with the same CLI). Every
//! command is waited for through the reaper, never with `Child::wait`,
//! which would race the global reaper.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Result, ShimError};
use crate::reaper::Reaper;
use crate::runtime::Runtime;
pub use crate::runtime::{CreateOptions, ProcessStdio, RuntimeConfig};

#[derive(Debug, Clone)]
pub struct Runc {
    config: RuntimeConfig,
    log: PathBuf,
    reaper: Arc<Reaper>,
}

impl Runc {
    /// A runtime whose JSON log goes to `<bundle>/log.json`.
    pub fn new(config: RuntimeConfig, bundle: &Path, reaper: Arc<Reaper>) -> Runc {
        Runc {
            config,
            log: bundle.join("log.json"),
            reaper,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.config.binary);
        // A shim started by a Type=notify service (containerd's, taskd's)
        // may inherit its NOTIFY_SOCKET; runc would pass it into the
        // container and make `runc start` wait for the container's own
        // READY=1, that is, block until it exits.
        cmd.env_remove("NOTIFY_SOCKET");
        cmd.arg("--root")
            .arg(&self.config.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        if self.config.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        if let Some(criu) = &self.config.criu {
            cmd.arg("--criu").arg(criu);
        }
        cmd.args(args);
        cmd
    }

    /// Runs `cmd` to completion; returns its stdout. With `stdio` the child
    /// gets those descriptors (and its errors come from the JSON log).
    async fn run(
        &self,
        mut cmd: Command,
        stdio: Option<ProcessStdio>,
        stdin_data: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        let name = format!(
            "{} {}",
            self.config.binary,
            cmd.get_args()
                .map(|a| a.to_string_lossy())
                .find(|a| !(a.starts_with('-') || a.contains('/') || a == "json"))
                .unwrap_or_default()
        );
        let capture = stdio.is_none();
        match stdio {
            Some(stdio) => {
                cmd.stdin(Stdio::from(stdio.stdin))
                    .stdout(Stdio::from(stdio.stdout))
                    .stderr(Stdio::from(stdio.stderr));
            }
            None => {
                cmd.stdin(if stdin_data.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            }
        }
        let log_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut child = cmd.spawn().map_err(|e| ShimError::Runtime {
            command: name.clone(),
            message: format!("cannot start {}: {e}", self.config.binary),
        })?;
        let exited = self.reaper.watch_command(child.id());
        if let (Some(data), Some(mut stdin)) = (stdin_data, child.stdin.take()) {
            use std::io::Write;
            let _ = stdin.write_all(data);
        }
        let (stdout, stderr) = if capture {
            let out = child.stdout.take().map(OwnedFd::from);
            let err = child.stderr.take().map(OwnedFd::from);
            tokio::join!(read_all(out), read_all(err))
        } else {
            (Vec::new(), Vec::new())
        };
        let status = exited.await.map_err(|_| ShimError::Runtime {
            command: name.clone(),
            message: "exit status lost".into(),
        })?;
        if status != 0 {
            let mut message = last_log_error(&self.log, log_start).unwrap_or_default();
            if message.is_empty() {
                message = String::from_utf8_lossy(&stderr).trim().to_string();
            }
            if message.is_empty() {
                message = format!("exit status {status}");
            }
            return Err(ShimError::Runtime {
                command: name,
                message,
            });
        }
        Ok(stdout)
    }
}

#[async_trait]
impl Runtime for Runc {
    fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        options: &CreateOptions<'_>,
        stdio: Option<ProcessStdio>,
    ) -> Result<()> {
        let mut cmd = self.command(&["create", "--bundle"]);
        cmd.arg(bundle).arg("--pid-file").arg(pid_file);
        if let Some(socket) = options.console_socket {
            cmd.arg("--console-socket").arg(socket);
        }
        if options.no_pivot {
            cmd.arg("--no-pivot");
        }
        if options.no_new_keyring {
            cmd.arg("--no-new-keyring");
        }
        cmd.arg(id);
        let stdio = match stdio {
            Some(stdio) => stdio,
            None => null_stdio()?,
        };
        self.run(cmd, Some(stdio), None).await.map(drop)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.run(self.command(&["start", id]), None, None)
            .await
            .map(drop)
    }

    async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: Option<ProcessStdio>,
    ) -> Result<()> {
        let mut cmd = self.command(&["exec", "--process"]);
        cmd.arg(process_json)
            .arg("--detach")
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(socket) = console_socket {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.arg(id);
        let stdio = match stdio {
            Some(stdio) => stdio,
            None => null_stdio()?,
        };
        self.run(cmd, Some(stdio), None).await.map(drop)
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let signal = signal.to_string();
        let args: Vec<&str> = if all {
            vec!["kill", "--all", id, &signal]
        } else {
            vec!["kill", id, &signal]
        };
        self.run(self.command(&args), None, None).await.map(drop)
    }

    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let args: Vec<&str> = if force {
            vec!["delete", "--force", id]
        } else {
            vec!["delete", id]
        };
        match self.run(self.command(&args), None, None).await {
            Err(ShimError::Runtime { message, .. }) if message.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.run(self.command(&["pause", id]), None, None)
            .await
            .map(drop)
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.run(self.command(&["resume", id]), None, None)
            .await
            .map(drop)
    }

    async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let out = self
            .run(self.command(&["ps", "--format", "json", id]), None, None)
            .await?;
        let pids: Option<Vec<u32>> =
            serde_json::from_slice(&out).map_err(|e| ShimError::json("runc ps output", e))?;
        Ok(pids.unwrap_or_default())
    }

    // `update --resources -` with the JSON LinuxResources on stdin.
    async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        self.run(
            self.command(&["update", "--resources", "-", id]),
            None,
            Some(resources_json),
        )
        .await
        .map(drop)
    }

    async fn checkpoint(
        &self,
        id: &str,
        image_path: &Path,
        work_path: Option<&Path>,
        leave_running: bool,
    ) -> Result<()> {
        let mut cmd = self.command(&["checkpoint", "--image-path"]);
        cmd.arg(image_path);
        if let Some(work) = work_path {
            cmd.arg("--work-path").arg(work);
        }
        if leave_running {
            cmd.arg("--leave-running");
        }
        cmd.arg(id);
        self.run(cmd, None, None).await.map(drop)
    }
}

fn null_stdio() -> Result<ProcessStdio> {
    let open = || -> Result<OwnedFd> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| ShimError::io("opening /dev/null", e))
    };
    Ok(ProcessStdio {
        stdin: open()?,
        stdout: open()?,
        stderr: open()?,
    })
}

async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(fd) = fd else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(mut pipe) => {
            let _ = pipe.read_to_end(&mut buf).await;
        }
        Err(_) => buf.clear(),
    }
    buf
}

/// The message of the last error runc wrote to its JSON log.
fn last_log_error(log: &Path, from: u64) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut text = String::new();
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    file.read_to_string(&mut text).ok()?;
    #[derive(serde::Deserialize)]
    struct Entry {
        level: String,
        msg: String,
    }
    text.lines().rev().find_map(|line| {
        let entry: Entry = serde_json::from_str(line).ok()?;
        (entry.level == "error").then_some(entry.msg)
    })
}

/// Reads the pid a runtime wrote to `path`.
pub fn read_pid_file(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ShimError::io(format!("reading {}", path.display()), e))?;
    text.trim().parse().map_err(|_| ShimError::Runtime {
        command: "pid file".into(),
        message: format!("{} holds no pid: {text:?}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_error_in_a_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"container does not exist\"}\n{\"level\":\"warning\",\"msg\":\"w\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_log_error(&log, 0).as_deref(),
            Some("container does not exist")
        );
        assert_eq!(last_log_error(&log, 1000), None);
        assert_eq!(last_log_error(&dir.path().join("missing"), 0), None);
    }

    #[test]
    fn pid_files_must_hold_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.pid");
        std::fs::write(&good, "4242").unwrap();
        assert_eq!(read_pid_file(&good).unwrap(), 4242);
        let bad = dir.path().join("bad.pid");
        std::fs::write(&bad, "x").unwrap();
        assert!(read_pid_file(&bad).is_err());
    }
}
