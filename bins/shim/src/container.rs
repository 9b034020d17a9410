//! The state of the containers a shim runs: each one's init and exec'd
//! processes, the runtime that runs them, and what Create set up for it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::AbortHandle;

use crate::cgroups::Cgroup;
use crate::error::{Result, ShimError};
use crate::exits::UnmatchedExits;
use crate::process::Process;
use crate::reaper::Exit;
use crate::runtime::Runtime;
use crate::stdio::IoOwner;

#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: Arc<dyn Runtime>,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    pub rootfs_mounted: bool,
    pub shares_host_pid_ns: bool,
    pub cgroup: Option<Cgroup>,
    pub oom_watch: Option<AbortHandle>,
    /// Who owns the stdio fifos of its processes (execs included).
    pub io_owner: IoOwner,
    /// The init's exit has been reaped: no exec may start any more (it
    /// may still be created until the init's exit is published).
    pub init_reaped: bool,
    /// Execs whose Start has begun and whose exit is not yet published.
    /// The init's exit is published only once this is 0, so it comes
    /// after every exec's.
    pub running_execs: usize,
    /// The init's exit, ready to publish, held while execs still run.
    pub held_init_exit: Option<Exit>,
    /// A Delete of the container is in progress (a second one is told the
    /// container is gone, and runc's delete runs once).
    pub deleting: bool,
}

impl Container {
    /// The process named by a request's exec id: "" is init.
    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} not found")))
    }

    /// The exec id ("" for init) of the live process whose exit `pid` is.
    pub fn claimant(&self, pid: i32) -> Option<String> {
        if self.init.claims(pid) {
            return Some(String::new());
        }
        self.execs
            .iter()
            .find(|(_, p)| p.claims(pid))
            .map(|(k, _)| k.clone())
    }
}

/// Everything behind the shim's one lock.
#[derive(Debug, Default)]
pub struct State {
    /// The containers this shim runs, by id: one, or every container of a
    /// pod when containerd groups them (`start` with the pod's sandbox id
    /// in the annotations gives them all one shim).
    pub containers: HashMap<String, Container>,
    /// Ids whose Create is in progress, so a second Create of one fails.
    pub creating: HashSet<String>,
    /// Exits of pids not (yet) known: an exec that exited before its pid
    /// file was read, or orphans re-parented to us.
    pub unmatched: UnmatchedExits,
    /// Shutdown was asked for while containers still existed (a Delete
    /// still running, say): exit once the last is gone.
    pub shutdown_requested: bool,
    /// The shim is on its way out (told to exit with nothing left): a
    /// Create from now on is refused as Unavailable, never half-done by
    /// the exit, so the caller starts a shim again.
    pub exiting: bool,
}

impl State {
    /// The container named `id`.
    pub fn container(&mut self, id: &str) -> Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))
    }

    /// The container and exec id ("" for init) of the live process whose
    /// exit `pid` is.
    pub fn claimant(&mut self, pid: i32) -> Option<(&mut Container, String)> {
        self.containers
            .values_mut()
            .find_map(|c| c.claimant(pid).map(|exec_id| (c, exec_id)))
    }
}

/// What the shim acts on in a container's OCI spec, read once at Create;
/// the rest (mounts, env...) is skipped unparsed, which keeps an idle
/// shim's heap small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecFacts {
    /// No pid namespace of its own: its processes do not die with init
    /// and must be killed explicitly.
    pub shares_host_pid_ns: bool,
    /// Hooks runc runs around `start` and `delete`.
    pub poststart_hooks: bool,
    pub poststop_hooks: bool,
}

impl SpecFacts {
    /// The facts of the spec (`config.json`) in `bundle`; None if it
    /// cannot be read.
    pub fn read(bundle: &Path) -> Option<SpecFacts> {
        #[derive(serde::Deserialize)]
        struct Spec {
            #[serde(default)]
            linux: Option<Linux>,
            #[serde(default)]
            hooks: Option<Hooks>,
        }
        #[derive(serde::Deserialize)]
        struct Linux {
            #[serde(default)]
            namespaces: Option<Vec<Namespace>>,
        }
        #[derive(serde::Deserialize)]
        struct Namespace {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            path: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Hooks {
            #[serde(default)]
            poststart: Option<Vec<serde::de::IgnoredAny>>,
            #[serde(default)]
            poststop: Option<Vec<serde::de::IgnoredAny>>,
        }
        let text = std::fs::read(bundle.join("config.json")).ok()?;
        let spec = serde_json::from_slice::<Spec>(&text).ok()?;
        let private_pid_ns = spec.linux.is_some_and(|linux| {
            linux
                .namespaces
                .unwrap_or_default()
                .iter()
                .any(|ns| ns.kind == "pid" && ns.path.as_deref().is_none_or(str::is_empty))
        });
        let any = |hooks: Option<Vec<serde::de::IgnoredAny>>| hooks.is_some_and(|h| !h.is_empty());
        let (poststart_hooks, poststop_hooks) = match spec.hooks {
            Some(hooks) => (any(hooks.poststart), any(hooks.poststop)),
            None => (false, false),
        };
        Some(SpecFacts {
            shares_host_pid_ns: !private_pid_ns,
            poststart_hooks,
            poststop_hooks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_namespace_sharing_is_read_from_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let write = |spec: &str| std::fs::write(dir.path().join("config.json"), spec).unwrap();
        let shares_host_pid_namespace =
            |bundle: &Path| SpecFacts::read(bundle).is_some_and(|s| s.shares_host_pid_ns);
        write(r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#);
        assert!(!shares_host_pid_namespace(dir.path()));
        write(r#"{"linux":{"namespaces":[{"type":"mount"}]}}"#);
        assert!(shares_host_pid_namespace(dir.path()));
        write(r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#);
        assert!(shares_host_pid_namespace(dir.path()));
        write(r#"{"linux":{"namespaces":[{"type":"pid","path":null}]},"process":{"args":["x"]}}"#);
        assert!(!shares_host_pid_namespace(dir.path()));
        write(r#"{"linux":{"namespaces":null}}"#);
        assert!(shares_host_pid_namespace(dir.path()));
        write("not json");
        assert!(SpecFacts::read(dir.path()).is_none());
    }

    #[test]
    fn hooks_are_read_from_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let write = |spec: &str| std::fs::write(dir.path().join("config.json"), spec).unwrap();
        let hooks = || {
            let facts = SpecFacts::read(dir.path()).unwrap();
            (facts.poststart_hooks, facts.poststop_hooks)
        };
        write(r#"{"hooks":{"prestart":[{"path":"/x"}]}}"#);
        assert_eq!(hooks(), (false, false));
        write(r#"{"hooks":{"poststart":[{"path":"/x"}],"poststop":[]}}"#);
        assert_eq!(hooks(), (true, false));
        write(r#"{"hooks":{"poststop":[{"path":"/x"}]}}"#);
        assert_eq!(hooks(), (false, true));
    }
}
