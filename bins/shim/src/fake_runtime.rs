//! A [`Runtime`] for unit tests, and a harness that drives [`Tasks`] with
//! it: no root, no runc, no real processes. Pids are above any pid_max
//! (2^22), so nothing real is ever read or signalled for them; exits are
//! handed to [`Tasks::handle_exit`] as the reaper would.
//!
//! Calls can be held at their start (a "gate"), so a test can deliver
//! exits while a Start is in progress, as the reaper can in real life.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim as api;
use containerd_shim_protos::types::task::Status;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::{Result, ShimError};
use crate::events::{self, Publisher, Queued};
use crate::reaper::{Exit, Reaper};
use crate::runtime::{CreateOptions, ProcessStdio, Runtime, RuntimeConfig};
use crate::tasks::Tasks;

/// The container every harness creates.
pub const ID: &str = "c";
/// Pids no process can have (Linux's pid_max is at most 2^22).
pub const INIT_PID: u32 = 2_000_000_001;
pub const EXEC_PID: u32 = 2_000_000_011;
pub const OTHER_EXEC_PID: u32 = 2_000_000_012;
pub const STRANGER_PID: u32 = 2_000_000_099;

#[derive(Debug, Default)]
struct Script {
    init_pid: u32,
    exec_pids: HashMap<String, u32>,
    /// Calls ("start", "exec e1"...) that wait, when they come, until the
    /// sender is used or dropped.
    gates: HashMap<String, oneshot::Receiver<()>>,
    kill_error: Option<String>,
}

/// Records each call (on `calls`, as it begins) and does what the script says.
#[derive(Debug)]
pub struct FakeRuntime {
    config: RuntimeConfig,
    script: Mutex<Script>,
    calls: mpsc::UnboundedSender<String>,
}

impl FakeRuntime {
    fn new(init_pid: u32) -> (Arc<FakeRuntime>, mpsc::UnboundedReceiver<String>) {
        let (calls, rx) = mpsc::unbounded_channel();
        let runtime = FakeRuntime {
            config: RuntimeConfig {
                binary: "fake".into(),
                root: "/nonexistent".into(),
                systemd_cgroup: false,
                criu: None,
            },
            script: Mutex::new(Script {
                init_pid,
                ..Script::default()
            }),
            calls,
        };
        (Arc::new(runtime), rx)
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap()
    }

    pub fn set_init_pid(&self, pid: u32) {
        self.script().init_pid = pid;
    }

    pub fn set_exec_pid(&self, exec_id: &str, pid: u32) {
        self.script().exec_pids.insert(exec_id.into(), pid);
    }

    /// `exec` of `exec_id` fails (no pid is scripted for it any more).
    pub fn fail_exec(&self, exec_id: &str) {
        self.script().exec_pids.remove(exec_id);
    }

    /// The next `call` waits until the returned sender fires (or is dropped).
    pub fn gate(&self, call: &str) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        self.script().gates.insert(call.into(), rx);
        tx
    }

    /// `kill` fails with this runtime message from now on.
    pub fn fail_kill(&self, message: &str) {
        self.script().kill_error = Some(message.into());
    }

    async fn call(&self, call: String) {
        let gate = self.script().gates.remove(&call);
        let _ = self.calls.send(call);
        if let Some(gate) = gate {
            let _ = gate.await;
        }
    }
}

fn write_pid(pid_file: &Path, pid: u32) -> Result<()> {
    std::fs::write(pid_file, pid.to_string()).map_err(|e| ShimError::io("pid file", e))
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    async fn create(
        &self,
        _: &str,
        _: &Path,
        pid_file: &Path,
        _: &CreateOptions<'_>,
        _: Option<ProcessStdio>,
    ) -> Result<()> {
        self.call("create".into()).await;
        let pid = self.script().init_pid;
        write_pid(pid_file, pid)
    }

    async fn start(&self, _: &str, _: u32) -> Result<()> {
        self.call("start".into()).await;
        Ok(())
    }

    async fn exec(
        &self,
        _: &str,
        _: &Path,
        pid_file: &Path,
        _: Option<&Path>,
        _: Option<ProcessStdio>,
    ) -> Result<()> {
        // The shim names the pid file `<exec id>.pid`.
        let exec_id = pid_file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.call(format!("exec {exec_id}")).await;
        let pid = self.script().exec_pids.get(&exec_id).copied();
        match pid {
            Some(pid) => write_pid(pid_file, pid),
            None => Err(ShimError::Runtime {
                command: "fake exec".into(),
                message: format!("no pid scripted for {exec_id}"),
            }),
        }
    }

    async fn kill(&self, _: &str, signal: u32, all: bool) -> Result<()> {
        let all = if all { " all" } else { "" };
        self.call(format!("kill {signal}{all}")).await;
        match self.script().kill_error.clone() {
            Some(message) => Err(ShimError::Runtime {
                command: "fake kill".into(),
                message,
            }),
            None => Ok(()),
        }
    }

    async fn delete(&self, _: &str, force: bool) -> Result<()> {
        self.call(if force { "delete force" } else { "delete" }.into())
            .await;
        Ok(())
    }

    async fn pause(&self, _: &str) -> Result<()> {
        self.call("pause".into()).await;
        Ok(())
    }

    async fn resume(&self, _: &str) -> Result<()> {
        self.call("resume".into()).await;
        Ok(())
    }

    async fn ps(&self, _: &str) -> Result<Vec<u32>> {
        self.call("ps".into()).await;
        Ok(Vec::new())
    }

    async fn update(&self, _: &str, _: &[u8]) -> Result<()> {
        self.call("update".into()).await;
        Ok(())
    }

    async fn checkpoint(&self, _: &str, _: &Path, _: Option<&Path>, _: bool) -> Result<()> {
        self.call("checkpoint".into()).await;
        Ok(())
    }
}

/// [`Tasks`] over a [`FakeRuntime`], with its events and runtime calls
/// readable in order.
#[derive(Debug)]
pub struct Harness {
    pub tasks: Arc<Tasks>,
    /// Notified when the shim would exit.
    pub shutdown: Arc<Notify>,
    pub runtime: Arc<FakeRuntime>,
    calls: mpsc::UnboundedReceiver<String>,
    events: mpsc::UnboundedReceiver<Queued>,
    pub bundle: tempfile::TempDir,
}

/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(5);

impl Harness {
    /// No container yet. With `own_pid_ns` the spec gives the container a
    /// pid namespace of its own; without, it shares the host's.
    pub fn new(own_pid_ns: bool) -> Harness {
        let bundle = tempfile::tempdir().unwrap();
        let namespaces = if own_pid_ns {
            r#"[{"type":"pid"},{"type":"mount"}]"#
        } else {
            r#"[{"type":"mount"}]"#
        };
        std::fs::write(
            bundle.path().join("config.json"),
            format!(r#"{{"linux":{{"namespaces":{namespaces}}}}}"#),
        )
        .unwrap();
        let (runtime, calls) = FakeRuntime::new(INIT_PID);
        let (publisher, events) = Publisher::capture();
        let (reaper, _exits) = Reaper::new();
        let made = runtime.clone();
        let shutdown = Arc::new(Notify::new());
        let tasks = Tasks::with_runtimes(
            "testing".into(),
            Arc::new(reaper),
            publisher,
            shutdown.clone(),
            Arc::new(move |_, _, _, _| made.clone() as Arc<dyn Runtime>),
        );
        Harness {
            tasks,
            shutdown,
            runtime,
            calls,
            events,
            bundle,
        }
    }

    /// Creates the container with its init dying (exit `status`) while
    /// `runc create` runs, before Create has recorded it.
    pub async fn create_with_init_dying(&mut self, status: u32) {
        let release = self.runtime.gate("create");
        let tasks = self.tasks.clone();
        let bundle = self.bundle.path().display().to_string();
        let create = tokio::spawn(async move {
            let mut req = api::CreateTaskRequest::new();
            req.id = ID.into();
            req.bundle = bundle;
            tasks.create(req).await
        });
        assert_eq!(self.next_call().await, "create");
        self.reap(INIT_PID, status);
        self.assert_no_event("no container yet").await;
        release.send(()).unwrap();
        assert_eq!(create.await.unwrap().unwrap(), INIT_PID);
        assert_eq!(self.next_event().await, format!("create {ID} {INIT_PID}"));
    }

    /// Creates the container (init in the created state); returns its pid.
    pub async fn create(&mut self) -> u32 {
        self.create_named(ID).await
    }

    /// Creates container `id` in this shim (the runtime gives its init the
    /// scripted init pid); returns that pid.
    pub async fn create_named(&mut self, id: &str) -> u32 {
        let mut req = api::CreateTaskRequest::new();
        req.id = id.into();
        req.bundle = self.bundle.path().display().to_string();
        let pid = self.tasks.create(req).await.unwrap();
        assert_eq!(self.next_call().await, "create");
        assert_eq!(self.next_event().await, format!("create {id} {pid}"));
        pid
    }

    /// A container whose init runs, with its own pid namespace.
    pub async fn running() -> Harness {
        let mut harness = Harness::new(true);
        harness.create().await;
        assert_eq!(harness.tasks.start(ID, "").await.unwrap(), INIT_PID);
        assert_eq!(harness.next_call().await, "start");
        assert_eq!(harness.next_event().await, format!("start {ID} {INIT_PID}"));
        harness
    }

    /// Registers exec `exec_id`, whose `runc exec` will report `pid`.
    pub async fn add_exec(&mut self, exec_id: &str, pid: u32) {
        let mut req = api::ExecProcessRequest::new();
        req.id = ID.into();
        req.exec_id = exec_id.into();
        let mut spec = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        spec.value = br#"{"args":["true"]}"#.to_vec();
        req.spec = Some(spec).into();
        self.tasks.add_exec(&req).unwrap();
        self.runtime.set_exec_pid(exec_id, pid);
        assert_eq!(
            self.next_event().await,
            format!("exec-added {ID} {exec_id}")
        );
    }

    /// Registers and starts exec `exec_id`, whose `runc exec` reports
    /// `pid`, through to its exec-started event.
    pub async fn run_exec(&mut self, exec_id: &str, pid: u32) {
        self.add_exec(exec_id, pid).await;
        assert_eq!(self.tasks.start(ID, exec_id).await.unwrap(), pid);
        assert_eq!(self.next_call().await, format!("exec {exec_id}"));
        assert_eq!(
            self.next_event().await,
            format!("exec-started {ID} {exec_id} {pid}")
        );
    }

    /// Starts `exec_id` in the background; returns once `runc exec` has
    /// been called, with the start still in progress if it was gated.
    pub async fn start_in_background(
        &mut self,
        exec_id: &str,
    ) -> tokio::task::JoinHandle<Result<u32>> {
        let tasks = self.tasks.clone();
        let exec_id = exec_id.to_string();
        let call = format!("exec {exec_id}");
        let handle = tokio::spawn(async move { tasks.start(ID, &exec_id).await });
        assert_eq!(self.next_call().await, call);
        handle
    }

    /// The reaper reaps `pid`; returns the exit handed to the shim.
    pub fn reap(&self, pid: u32, status: u32) -> Exit {
        let exit = Exit {
            pid: pid as i32,
            status,
            at: SystemTime::now(),
        };
        self.tasks.handle_exit(exit);
        exit
    }

    /// Lets every task that can run do so.
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// The next event, as "topic-name container [id] [pid] [status]".
    pub async fn next_event(&mut self) -> String {
        let queued = tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("no event came")
            .expect("the publisher is gone");
        describe(&queued)
    }

    /// Asserts that no event is pending once everything has settled.
    pub async fn assert_no_event(&mut self, what: &str) {
        self.settle().await;
        if let Ok(queued) = self.events.try_recv() {
            panic!("{what}: unexpected event {}", describe(&queued));
        }
    }

    /// The next runtime call.
    pub async fn next_call(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.calls.recv())
            .await
            .expect("no runtime call came")
            .expect("the runtime is gone")
    }

    /// Asserts that the runtime was not called since the last look.
    pub async fn assert_no_call(&mut self, what: &str) {
        self.settle().await;
        if let Ok(call) = self.calls.try_recv() {
            panic!("{what}: unexpected runtime call {call}");
        }
    }

    /// The process's status and pid, as State reports them.
    pub fn status(&self, exec_id: &str) -> (Status, u32) {
        let mut req = api::StateRequest::new();
        req.id = ID.into();
        req.exec_id = exec_id.into();
        let state = self.tasks.state(&req).unwrap();
        (state.status.enum_value_or_default(), state.pid)
    }
}

fn describe(queued: &Queued) -> String {
    let bytes = &queued.event.value;
    match queued.topic {
        events::TASK_CREATE => {
            let e = ev::TaskCreate::parse_from_bytes(bytes).unwrap();
            format!("create {} {}", e.container_id, e.pid)
        }
        events::TASK_START => {
            let e = ev::TaskStart::parse_from_bytes(bytes).unwrap();
            format!("start {} {}", e.container_id, e.pid)
        }
        events::TASK_EXEC_ADDED => {
            let e = ev::TaskExecAdded::parse_from_bytes(bytes).unwrap();
            format!("exec-added {} {}", e.container_id, e.exec_id)
        }
        events::TASK_EXEC_STARTED => {
            let e = ev::TaskExecStarted::parse_from_bytes(bytes).unwrap();
            format!("exec-started {} {} {}", e.container_id, e.exec_id, e.pid)
        }
        events::TASK_EXIT => {
            let e = ev::TaskExit::parse_from_bytes(bytes).unwrap();
            format!(
                "exit {} {} {} {}",
                e.container_id, e.id, e.pid, e.exit_status
            )
        }
        events::TASK_DELETE => {
            let e = ev::TaskDelete::parse_from_bytes(bytes).unwrap();
            format!("delete {} {} {}", e.container_id, e.pid, e.exit_status)
        }
        other => other.to_string(),
    }
}
