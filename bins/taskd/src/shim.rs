//! The caller side of containerd's shim v2 protocol: which binary a runtime
//! name means, the `start` and `delete` actions, and the task API over
//! ttrpc in the version the shim announced (see shim-v2.md in the design
//! notes: sections 1 and 2).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use berth_errdefs::{Error, Result};
use berth_metadata::Any;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any as PbAny;
use containerd_shim_protos::protobuf::Message;
use serde::{Deserialize, Serialize};
use ttrpc::proto::RequestInit;
use ttrpc::r#async::transport::Socket;

/// The task service a plain-address (version 2) shim serves.
pub const TASK_V2: &str = "containerd.task.v2.Task";
/// The same service under the name containerd 2.x shims announce with
/// version 3.
pub const TASK_V3: &str = "containerd.task.v3.Task";
/// The metadata key containerd sends the namespace in, on every shim call.
const NAMESPACE_TTRPC_KEY: &str = "containerd-namespace-ttrpc";
/// How long a shim gets to answer `start` or `delete` (containerd gives
/// `delete` 5 s; `start` includes the shim forking its server).
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to a shim may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a `start` or `delete` action may print.
const ACTION_OUTPUT_LIMIT: u64 = 64 * 1024;

/// `io.containerd.X.vN` → `containerd-shim-X-vN` (the last two components).
pub fn binary_name(runtime: &str) -> Result<String> {
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts.iter().rev().take(2).any(|p| p.is_empty()) {
        return Err(Error::invalid_argument(format!(
            "runtime {runtime:?}: a runtime is named io.containerd.NAME.VERSION or by an absolute path"
        )));
    }
    let name = parts[parts.len() - 2];
    let version = parts[parts.len() - 1];
    let valid = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !valid(name) || !valid(version) {
        return Err(Error::invalid_argument(format!(
            "runtime {runtime:?}: invalid characters in its name"
        )));
    }
    Ok(format!("containerd-shim-{name}-{version}"))
}

/// The shim binary of `runtime`, resolved as containerd resolves it: an
/// absolute path as it is, else `containerd-shim-X-vN` on `search_path`,
/// else beside taskd's own executable (`beside`). NotFound when nothing is
/// installed under that name.
pub fn resolve(
    runtime: &str,
    search_path: Option<&OsStr>,
    beside: Option<&Path>,
) -> Result<PathBuf> {
    if runtime.starts_with('/') {
        let path = PathBuf::from(runtime);
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Error::invalid_argument(format!(
                "runtime {runtime:?}: a runtime path may not contain `..`"
            )));
        }
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::not_found(format!(
                "runtime {runtime:?}: no executable at that path"
            )))
        };
    }
    if runtime.contains('/') {
        return Err(Error::invalid_argument(format!(
            "runtime {runtime:?}: a runtime path must be absolute"
        )));
    }
    let binary = binary_name(runtime)?;
    let mut candidates: Vec<PathBuf> = search_path
        .map(|paths| {
            std::env::split_paths(paths)
                .map(|dir| dir.join(&binary))
                .collect()
        })
        .unwrap_or_default();
    if let Some(dir) = beside {
        candidates.push(dir.join(&binary));
    }
    candidates
        .into_iter()
        .find(|path| path.is_absolute() && is_executable(path))
        .ok_or_else(|| {
            Error::not_found(format!(
                "runtime {runtime:?}: shim binary {binary} is not installed (not on PATH)"
            ))
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a shim answered to `start`: where it serves and which task API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// 2: `containerd.task.v2.Task`; 3: `containerd.task.v3.Task`.
    pub version: u32,
    /// `unix:///path` (a plain string names an abstract socket, as
    /// containerd 1.6 reads it).
    pub address: String,
    pub protocol: String,
}

impl Bootstrap {
    /// Parses a shim's `start` output: a plain address (1.x shims) or the
    /// JSON `{"version":2|3,"address":...,"protocol":"ttrpc"}` of 2.x shims.
    pub fn parse(output: &str) -> Result<Bootstrap> {
        let text = output.trim();
        if text.is_empty() {
            return Err(Error::internal("the shim printed no address"));
        }
        if text.starts_with('{') {
            #[derive(Deserialize)]
            struct Reply {
                version: u32,
                address: String,
                #[serde(default)]
                protocol: String,
            }
            let reply: Reply = serde_json::from_str(text)
                .map_err(|e| Error::internal(format!("the shim's start reply {text:?}: {e}")))?;
            if !(2..=3).contains(&reply.version) {
                return Err(Error::failed_precondition(format!(
                    "the shim speaks task API version {}; taskd speaks 2 and 3",
                    reply.version
                )));
            }
            let protocol = if reply.protocol.is_empty() {
                "ttrpc".to_string()
            } else {
                reply.protocol
            };
            if protocol != "ttrpc" {
                return Err(Error::failed_precondition(format!(
                    "the shim serves {protocol}; taskd speaks ttrpc"
                )));
            }
            return Ok(Bootstrap {
                version: reply.version,
                address: reply.address,
                protocol,
            });
        }
        if text.contains('\n') || text.len() > 4096 {
            return Err(Error::internal(format!(
                "the shim's start output is not an address: {text:?}"
            )));
        }
        Ok(Bootstrap {
            version: 2,
            address: text.to_string(),
            protocol: "ttrpc".to_string(),
        })
    }

    fn service(&self) -> &'static str {
        if self.version >= 3 {
            TASK_V3
        } else {
            TASK_V2
        }
    }
}

/// One shim binary run for one task: the flags every action takes.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub binary: PathBuf,
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    /// taskd's socket: the shims' `-address`, `TTRPC_ADDRESS` (where they
    /// forward events) and `GRPC_ADDRESS`.
    pub address: PathBuf,
    /// taskd's executable, for shims that publish by running it.
    pub publish_binary: PathBuf,
    pub debug: bool,
}

impl Invocation {
    fn command(&self, action: &str) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("-namespace")
            .arg(&self.namespace)
            .arg("-address")
            .arg(&self.address)
            .arg("-publish-binary")
            .arg(&self.publish_binary)
            .arg("-id")
            .arg(&self.id);
        if action == "delete" {
            command.arg("-bundle").arg(&self.bundle);
        }
        if self.debug {
            command.arg("-debug");
        }
        command
            .arg(action)
            .current_dir(&self.bundle)
            .env("TTRPC_ADDRESS", &self.address)
            .env("GRPC_ADDRESS", &self.address)
            .env("NAMESPACE", &self.namespace)
            .env("MAX_SHIM_VERSION", "3")
            .env("GOMAXPROCS", "2")
            // berth's shim then forks its server rather than executing
            // itself again: a task made sooner, for a little more memory
            // per shim (containerd-shim-berth-v2's `FORK_SERVER_ENV`;
            // other shims ignore it).
            .env("BERTH_SHIM_FORK_SERVER", "1")
            // systemd's hand-over to taskd (its notify socket, watchdog and
            // sockets) is taskd's alone: runc, given NOTIFY_SOCKET, would
            // make `runc start` wait for the container itself to say
            // READY=1, that is, until it exits.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            // Its own process group: a signal to taskd's group never
            // reaches a shim.
            .process_group(0);
        // SAFETY: umask is async-signal-safe and touches no memory; the
        // closure runs in the forked child before exec. Shims and runc
        // create files for containers: they get containerd's usual 022,
        // not the 077 taskd keeps for itself.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        command
    }

    /// Runs `start`: the shim forks its server and prints where it serves.
    /// `options` (the runtime's task options) go to its stdin as an
    /// encoded `google.protobuf.Any`.
    pub async fn start(&self, options: Option<&Any>) -> Result<Bootstrap> {
        let invocation = self.clone();
        let stdin = options.map(|any| {
            PbAny {
                type_url: any.type_url.clone(),
                value: any.value.clone(),
                ..Default::default()
            }
            .write_to_bytes()
            .unwrap_or_default()
        });
        let output = run_action(invocation.command("start"), stdin, true).await?;
        if !output.success {
            return Err(Error::internal(format!(
                "starting shim {}: {}",
                self.binary.display(),
                output.describe()
            )));
        }
        Bootstrap::parse(&output.stdout)
    }

    /// Runs `delete`: the shim cleans up after a dead or finished task and
    /// reports its last exit (containerd reports 137 for a killed task).
    pub async fn delete(&self) -> Result<(u32, berth_tasks::Exit)> {
        let output = run_action(self.command("delete"), None, false).await?;
        if !output.success {
            return Err(Error::internal(format!(
                "shim {} delete: {}",
                self.binary.display(),
                output.describe()
            )));
        }
        if !output.stderr.trim().is_empty() {
            tracing::warn!(id = %self.id, warnings = %output.stderr.trim(), "shim cleanup warnings");
        }
        let response = api::DeleteResponse::parse_from_bytes(output.stdout_bytes.as_slice())
            .map_err(|e| Error::internal(format!("the shim's delete reply: {e}")))?;
        Ok((
            response.pid,
            berth_tasks::Exit {
                status: response.exit_status,
                at: berth_api::time::system_time(&response.exited_at),
            },
        ))
    }
}

struct ActionOutput {
    success: bool,
    code: Option<i32>,
    stdout_bytes: Vec<u8>,
    stdout: String,
    stderr: String,
}

impl ActionOutput {
    fn describe(&self) -> String {
        let said = format!("{} {}", self.stdout.trim(), self.stderr.trim());
        let said = said.trim();
        match self.code {
            Some(code) if said.is_empty() => format!("exit status {code}"),
            Some(code) => format!("exit status {code}: {said}"),
            None if said.is_empty() => "killed by a signal".to_string(),
            None => format!("killed by a signal: {said}"),
        }
    }
}

/// Runs a shim action to completion. With `combined`, stdout and stderr
/// share one pipe read to its end, as containerd reads `start`: a shim
/// whose server kept either open would hold us here, so the read is
/// bounded by [`ACTION_TIMEOUT`].
async fn run_action(
    mut command: Command,
    stdin: Option<Vec<u8>>,
    combined: bool,
) -> Result<ActionOutput> {
    let job = tokio::task::spawn_blocking(move || -> Result<ActionOutput> {
        // Close-on-exec: only the dup'ed stdout and stderr reach the shim,
        // or its long-lived server would inherit a write end and the
        // read below would never see EOF.
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| Error::internal(format!("pipe: {e}")))
        };
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = if combined {
            (None, None)
        } else {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        };
        let stderr_target = match err_write {
            Some(w) => Stdio::from(w),
            None => Stdio::from(
                out_write
                    .try_clone()
                    .map_err(|e| Error::io("duplicating a pipe", &e))?,
            ),
        };
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::from(out_write))
            .stderr(stderr_target);
        let mut child = command
            .spawn()
            .map_err(|e| Error::io(format!("running {:?}", command.get_program()), &e))?;
        // Our copies of the pipes' write ends must go, or EOF never comes.
        drop(command);
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(&bytes);
        }
        let mut stdout_bytes = Vec::new();
        std::fs::File::from(out_read)
            .take(ACTION_OUTPUT_LIMIT)
            .read_to_end(&mut stdout_bytes)
            .map_err(|e| Error::io("reading the shim's output", &e))?;
        let mut stderr = String::new();
        if let Some(r) = err_read {
            let mut bytes = Vec::new();
            let _ = std::fs::File::from(r)
                .take(ACTION_OUTPUT_LIMIT)
                .read_to_end(&mut bytes);
            stderr = String::from_utf8_lossy(&bytes).into_owned();
        }
        let status = child
            .wait()
            .map_err(|e| Error::io("waiting for the shim action", &e))?;
        Ok(ActionOutput {
            success: status.success(),
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
            stdout_bytes,
            stderr,
        })
    });
    match tokio::time::timeout(ACTION_TIMEOUT, job).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(Error::internal(format!("shim action: {e}"))),
        Err(_) => Err(Error::unavailable(format!(
            "the shim action did not finish within {ACTION_TIMEOUT:?}"
        ))),
    }
}

/// A ttrpc connection to one shim, speaking the task API it announced.
#[derive(Clone)]
pub struct ShimClient {
    client: ttrpc::r#async::Client,
    /// Held by a request from taking its stream id until its frame is on
    /// the socket. The ttrpc crate numbers a request before it queues it
    /// for its writer, so two requests from two threads, or two woken from
    /// a full queue, can reach the socket out of order; Go's ttrpc server
    /// (every upstream shim) refuses a stream id lower than one it has seen
    /// ("StreamID cannot be re-used and must increment").
    send_order: Arc<tokio::sync::Mutex<()>>,
    /// How many request frames the connection has written.
    requests_written: tokio::sync::watch::Receiver<u64>,
    service: &'static str,
    namespace: String,
}

impl std::fmt::Debug for ShimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShimClient")
            .field("service", &self.service)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The shim's socket, counting the request frames written to it (see
/// [`ShimClient::request_in_order`]).
struct CountingRequests {
    stream: tokio::net::UnixStream,
    frames: berth_daemon::FrameReader,
    written: tokio::sync::watch::Sender<u64>,
}

impl tokio::io::AsyncRead for CountingRequests {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingRequests {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let n = std::task::ready!(std::pin::Pin::new(&mut this.stream).poll_write(cx, data))?;
        let mut requests = 0;
        this.frames.follow(&data[..n], |header| {
            if header.kind == berth_daemon::FRAME_TYPE_REQUEST {
                requests += 1;
            }
        });
        if requests > 0 {
            this.written.send_modify(|count| *count += requests);
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The socket an address names: `unix:///path` is a filesystem socket, a
/// bare string an abstract one (containerd 1.6's reading).
fn connect_std(address: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    match address.strip_prefix("unix://") {
        Some(path) => std::os::unix::net::UnixStream::connect(path),
        None => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(address.as_bytes())?;
            std::os::unix::net::UnixStream::connect_addr(&addr)
        }
    }
}

impl ShimClient {
    pub async fn connect(bootstrap: &Bootstrap, namespace: &str) -> Result<ShimClient> {
        let address = bootstrap.address.clone();
        let connecting = tokio::task::spawn_blocking(move || connect_std(&address));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(Ok(stream))) => stream,
            Ok(Ok(Err(e))) => {
                return Err(Error::unavailable(format!(
                    "connecting to the shim at {}: {e}",
                    bootstrap.address
                )))
            }
            Ok(Err(e)) => return Err(Error::internal(format!("connecting to the shim: {e}"))),
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "connecting to the shim at {} timed out",
                    bootstrap.address
                )))
            }
        };
        stream
            .set_nonblocking(true)
            .map_err(|e| Error::io("setting the shim socket non-blocking", &e))?;
        let stream = tokio::net::UnixStream::from_std(stream)
            .map_err(|e| Error::io("registering the shim socket", &e))?;
        let (written, requests_written) = tokio::sync::watch::channel(0);
        let stream = CountingRequests {
            stream,
            frames: berth_daemon::FrameReader::default(),
            written,
        };
        Ok(ShimClient {
            client: ttrpc::r#async::Client::new(Socket::new(stream)),
            send_order: Arc::default(),
            requests_written,
            service: bootstrap.service(),
            namespace: namespace.to_string(),
        })
    }

    async fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp> {
        let payload = request
            .write_to_bytes()
            .map_err(|e| Error::internal(format!("encoding {method}: {e}")))?;
        let metadata = vec![ttrpc::proto::KeyValue {
            key: NAMESPACE_TTRPC_KEY.to_string(),
            value: self.namespace.clone(),
            ..Default::default()
        }];
        let timeout_nano = timeout.map_or(0, |t| t.as_nanos() as i64);
        let mut wire = <ttrpc::Request as RequestInit>::init_request(
            self.service.to_string(),
            method.to_string(),
            timeout_nano,
            metadata,
        );
        RequestInit::set_payload(&mut wire, payload);
        let response = self
            .request_in_order(wire, timeout)
            .await
            .map_err(|e| shim_error(method, e))?;
        Resp::parse_from_bytes(&response.payload)
            .map_err(|e| Error::internal(format!("decoding the shim's {method} reply: {e}")))
    }

    /// Sends a request with stream ids in the order they were taken: one
    /// request at a time holds `send_order` from its first poll (where the
    /// crate numbers it) until the connection has written one more request
    /// frame, which is its own; the reply is awaited without it.
    /// A request with a `timeout` waits at most that long for its turn too.
    async fn request_in_order(
        &self,
        wire: ttrpc::Request,
        timeout: Option<Duration>,
    ) -> ttrpc::Result<ttrpc::Response> {
        let turn = self.send_order.lock();
        let in_order = match timeout {
            Some(limit) => tokio::time::timeout(limit, turn)
                .await
                .map_err(|_| ttrpc::Error::Others("Request deadline elapsed".to_string()))?,
            None => turn.await,
        };
        let mut written = self.requests_written.clone();
        let before = *written.borrow_and_update();
        let mut request = std::pin::pin!(self.client.request(wire));
        tokio::select! {
            biased;
            // Failed before it was written (the connection is gone, say).
            answered = &mut request => return answered,
            _ = written.wait_for(|n| *n > before) => {}
        }
        drop(in_order);
        request.await
    }

    pub async fn create(&self, request: &api::CreateTaskRequest) -> Result<u32> {
        let reply: api::CreateTaskResponse = self.call("Create", request, None).await?;
        Ok(reply.pid)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let request = api::StartRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let reply: api::StartResponse = self.call("Start", &request, None).await?;
        Ok(reply.pid)
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let request = api::StateRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("State", &request, Some(Duration::from_secs(10)))
            .await
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse> {
        let request = api::DeleteRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("Delete", &request, None).await
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let request = api::KillRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        let _: api::Empty = self.call("Kill", &request, None).await?;
        Ok(())
    }

    pub async fn exec(&self, request: &api::ExecProcessRequest) -> Result<()> {
        let _: api::Empty = self.call("Exec", request, None).await?;
        Ok(())
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let request = api::ResizePtyRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        let _: api::Empty = self.call("ResizePty", &request, None).await?;
        Ok(())
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let request = api::CloseIORequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: true,
            ..Default::default()
        };
        let _: api::Empty = self.call("CloseIO", &request, None).await?;
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        let request = api::PauseRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let _: api::Empty = self.call("Pause", &request, None).await?;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        let request = api::ResumeRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let _: api::Empty = self.call("Resume", &request, None).await?;
        Ok(())
    }

    pub async fn pids(&self, id: &str) -> Result<api::PidsResponse> {
        let request = api::PidsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Pids", &request, None).await
    }

    pub async fn update(&self, request: &api::UpdateTaskRequest) -> Result<()> {
        let _: api::Empty = self.call("Update", request, None).await?;
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<Option<Any>> {
        let request = api::StatsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let reply: api::StatsResponse = self.call("Stats", &request, None).await?;
        Ok(reply.stats.as_ref().map(|any| Any {
            type_url: any.type_url.clone(),
            value: any.value.clone(),
        }))
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<berth_tasks::Exit> {
        let request = api::WaitRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let reply: api::WaitResponse = self.call("Wait", &request, None).await?;
        Ok(berth_tasks::Exit {
            status: reply.exit_status,
            at: berth_api::time::system_time(&reply.exited_at),
        })
    }

    /// The liveness probe: the shim's own pid and the task's.
    pub async fn connect_rpc(&self, id: &str, timeout: Duration) -> Result<api::ConnectResponse> {
        let request = api::ConnectRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Connect", &request, Some(timeout)).await
    }

    /// Asks the shim to exit once it holds no task; a closed connection is
    /// the answer we expect.
    pub async fn shutdown(&self, id: &str) {
        let request = api::ShutdownRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let result: Result<api::Empty> = self
            .call("Shutdown", &request, Some(Duration::from_secs(3)))
            .await;
        if let Err(e) = result {
            tracing::debug!(id, error = %e, "shim shutdown");
        }
    }
}

/// A shim's error, with its kind kept; a dropped connection is
/// Unavailable.
fn shim_error(method: &str, err: ttrpc::Error) -> Error {
    match err {
        ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed => {
            Error::unavailable(format!("shim {method}: the shim closed the connection"))
        }
        other => Error::from_ttrpc(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shims_get_containerds_environment_and_none_of_systemds_hand_over() {
        let invocation = Invocation {
            binary: PathBuf::from("/usr/bin/containerd-shim-runc-v2"),
            namespace: "ns".to_string(),
            id: "c1".to_string(),
            bundle: PathBuf::from("/run/b/ns/c1"),
            address: PathBuf::from("/run/berth/taskd.sock"),
            publish_binary: PathBuf::from("/usr/bin/berth-taskd"),
            debug: false,
        };
        let command = invocation.command("start");
        let envs: std::collections::HashMap<String, Option<String>> = command
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(
            envs["TTRPC_ADDRESS"].as_deref(),
            Some("/run/berth/taskd.sock")
        );
        assert_eq!(envs["NAMESPACE"].as_deref(), Some("ns"));
        // Removed (None), whatever taskd itself was given by systemd.
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID"] {
            assert_eq!(envs.get(name), Some(&None), "{name}");
        }
    }

    #[test]
    fn runtime_names_map_to_shim_binaries_as_containerd_maps_them() {
        assert_eq!(
            binary_name("io.containerd.runc.v2").unwrap(),
            "containerd-shim-runc-v2"
        );
        assert_eq!(
            binary_name("io.containerd.berth.v2").unwrap(),
            "containerd-shim-berth-v2"
        );
        assert_eq!(binary_name("foo.v1").unwrap(), "containerd-shim-foo-v1");
        assert!(binary_name("runc").is_err());
        assert!(binary_name("io.containerd..v2").is_err());
        assert!(binary_name("io.containerd.a b.v2").is_err());
    }

    #[test]
    fn resolution_prefers_the_search_path_then_taskds_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        let beside = dir.path().join("beside");
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&beside).unwrap();
        let install = |dir: &Path| {
            let path = dir.join("containerd-shim-x-v2");
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let at_beside = install(&beside);
        let search = first.clone().into_os_string();
        assert_eq!(
            resolve("io.containerd.x.v2", Some(&search), Some(&beside)).unwrap(),
            at_beside
        );
        let at_first = install(&first);
        assert_eq!(
            resolve("io.containerd.x.v2", Some(&search), Some(&beside)).unwrap(),
            at_first
        );
        assert_eq!(
            resolve(at_first.to_str().unwrap(), None, None).unwrap(),
            at_first
        );
        let missing = resolve("io.containerd.y.v2", Some(&search), Some(&beside)).unwrap_err();
        assert_eq!(missing.kind(), berth_errdefs::ErrorKind::NotFound);
        assert!(missing.message().contains("containerd-shim-y-v2"));
        // Not executable: not a shim.
        let plain = first.join("containerd-shim-z-v2");
        std::fs::write(&plain, "").unwrap();
        assert!(resolve("io.containerd.z.v2", Some(&search), None).is_err());
        assert!(resolve("./containerd-shim-x-v2", None, None).is_err());
        assert!(resolve("/nonexistent/shim", None, None).is_err());
    }

    #[test]
    fn start_replies_in_every_form_shims_print() {
        let plain = Bootstrap::parse("unix:///run/containerd/s/abc\n").unwrap();
        assert_eq!(plain.version, 2);
        assert_eq!(plain.address, "unix:///run/containerd/s/abc");
        assert_eq!(plain.service(), TASK_V2);
        let v3 = Bootstrap::parse(r#"{"version":3,"address":"unix:///s/x","protocol":"ttrpc"}"#)
            .unwrap();
        assert_eq!(v3.version, 3);
        assert_eq!(v3.service(), TASK_V3);
        let v2 = Bootstrap::parse(r#"{"version":2,"address":"unix:///s/y"}"#).unwrap();
        assert_eq!((v2.version, v2.protocol.as_str()), (2, "ttrpc"));
        assert!(Bootstrap::parse(r#"{"version":4,"address":"unix:///s/z"}"#).is_err());
        assert!(
            Bootstrap::parse(r#"{"version":3,"address":"unix:///s/z","protocol":"grpc"}"#).is_err()
        );
        assert!(Bootstrap::parse("").is_err());
        assert!(Bootstrap::parse("panic: something\nwent wrong").is_err());
    }

    /// Go's ttrpc server, inside every upstream shim, answers a request whose
    /// stream id is not above every id it has seen with "StreamID cannot be
    /// re-used and must increment". This server records the ids in the order
    /// they arrive and answers each with an empty reply.
    fn record_stream_ids(listener: std::os::unix::net::UnixListener, slow: Duration) -> Vec<u32> {
        let Ok((mut conn, _)) = listener.accept() else {
            return Vec::new();
        };
        // A shim slow to read: requests pile up in the client's queue.
        std::thread::sleep(slow);
        let mut seen = Vec::new();
        let mut header = [0u8; 10];
        while conn.read_exact(&mut header).is_ok() {
            let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let mut payload = vec![0u8; length as usize];
            if conn.read_exact(&mut payload).is_err() {
                break;
            }
            seen.push(u32::from_be_bytes([
                header[4], header[5], header[6], header[7],
            ]));
            // A response (type 2) with an empty payload: status OK, no body.
            let mut reply = [0u8; 10];
            reply[4..8].copy_from_slice(&header[4..8]);
            reply[8] = 2;
            if conn.write_all(&reply).is_err() {
                break;
            }
        }
        seen
    }

    /// `callers` tasks on 4 threads make `calls` calls each to a shim that
    /// starts reading after `slow`; the stream ids in the order it read them.
    fn stream_ids_of_concurrent_calls(callers: usize, calls: usize, slow: Duration) -> Vec<u32> {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("shim.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || record_stream_ids(listener, slow));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let bootstrap = Bootstrap {
                version: 2,
                address: format!("unix://{}", socket.display()),
                protocol: "ttrpc".to_string(),
            };
            let client = ShimClient::connect(&bootstrap, "default").await.unwrap();
            let callers: Vec<_> = (0..callers)
                .map(|n| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for _ in 0..calls {
                            client.kill(&format!("c{n}"), "", 15, false).await.unwrap();
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.await.unwrap();
            }
        });
        drop(runtime);
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), callers * calls);
        seen
    }

    fn assert_rising(seen: &[u32]) {
        let out_of_order: Vec<_> = seen.windows(2).filter(|w| w[1] <= w[0]).collect();
        assert!(
            out_of_order.is_empty(),
            "{} of {} requests came after a higher stream id, first {:?}",
            out_of_order.len(),
            seen.len(),
            out_of_order.first()
        );
    }

    #[test]
    fn concurrent_requests_reach_the_shim_with_rising_stream_ids() {
        assert_rising(&stream_ids_of_concurrent_calls(8, 300, Duration::ZERO));
    }

    /// More requests than the client's queue holds (100), sent while the
    /// shim reads nothing: woken from the full queue, they still go in
    /// order.
    #[test]
    fn requests_to_a_shim_slow_to_read_keep_their_order() {
        assert_rising(&stream_ids_of_concurrent_calls(
            1500,
            2,
            Duration::from_millis(500),
        ));
    }
}
