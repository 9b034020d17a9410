//! The streaming server: Exec, Attach and PortForward answer with a URL on
//! this HTTP server (`http://127.0.0.1:PORT/<kind>/<token>`, a token good
//! once, for a minute); the client upgrades that connection to SPDY/3.1
//! and runs Kubernetes' remotecommand (v2–v4) or port-forward protocol on
//! it, as the kubelet's own streaming server does, or to a WebSocket
//! (remotecommand v5/v4 channels, port-forward as tunnelled SPDY; see
//! [`websocket`]).

pub mod spdy;
pub mod websocket;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_errdefs::{Error, Result};
use berth_tasks::{ExecProcess, KillProcess, Stdio, Tasks};
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

use crate::images::NAMESPACE;
use crate::logs;
use crate::runtime::{new_id, Crid};
use crate::state::ContainerPhase;
use spdy::{Incoming, Outgoing, Session};

/// How long a URL stays good (the kubelet's own).
const TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// How long the client has to open its streams after the upgrade.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
/// The remotecommand protocols, most preferred first.
const REMOTECOMMAND: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const PORT_FORWARD: &str = "portforward.k8s.io";

/// A streaming request the gRPC side accepted.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl StreamRequest {
    fn path(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) => "exec",
            StreamRequest::Attach(_) => "attach",
            StreamRequest::PortForward(_) => "portforward",
        }
    }
}

/// The requests waiting for their client, by token.
#[derive(Debug)]
pub struct Streams {
    base: String,
    pending: Mutex<HashMap<String, (Instant, StreamRequest)>>,
}

impl Streams {
    /// Binds the server (`127.0.0.1:0`: a free port on loopback, as
    /// containerd's default).
    pub async fn bind(address: &str) -> Result<(Arc<Streams>, tokio::net::TcpListener)> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| Error::io(format!("binding the streaming server on {address}"), &e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("the streaming server's address", &e))?;
        let streams = Streams {
            base: format!("http://{local}"),
            pending: Mutex::new(HashMap::new()),
        };
        Ok((Arc::new(streams), listener))
    }

    /// A one-time URL for `request`.
    pub fn url(&self, request: StreamRequest) -> Result<String> {
        let token = new_id()?[..32].to_string();
        let path = request.path();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, (at, _)| at.elapsed() < TOKEN_LIFETIME);
        pending.insert(token.clone(), (Instant::now(), request));
        Ok(format!("{}/{path}/{token}", self.base))
    }

    fn take(&self, path: &str, token: &str) -> Option<StreamRequest> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let (at, request) = pending.remove(token)?;
        (at.elapsed() < TOKEN_LIFETIME && request.path() == path).then_some(request)
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

fn plain(status: hyper::StatusCode, text: &str) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Body::from(text.to_string()));
    *response.status_mut() = status;
    response
}

/// Serves the streaming URLs until crid stops.
pub async fn serve(streams: Arc<Streams>, listener: tokio::net::TcpListener, crid: Arc<Crid>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (streams, crid) = (streams.clone(), crid.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (streams, crid) = (streams.clone(), crid.clone());
                async move { Ok::<_, std::convert::Infallible>(answer(request, &streams, crid)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn offered_protocols(request: &hyper::Request<hyper::body::Incoming>) -> Vec<String> {
    request
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect()
}

fn answer(
    mut request: hyper::Request<hyper::body::Incoming>,
    streams: &Streams,
    crid: Arc<Crid>,
) -> hyper::Response<Body> {
    let parts: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    let [kind, token] = parts.as_slice() else {
        return plain(hyper::StatusCode::NOT_FOUND, "no such stream");
    };
    let Some(stream_request) = streams.take(kind, token) else {
        return plain(
            hyper::StatusCode::NOT_FOUND,
            "unknown or expired stream token",
        );
    };
    if websocket::is_websocket_request(&request) {
        return answer_websocket(request, stream_request, crid);
    }
    let upgrade = request
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !upgrade.contains("spdy/3.1") {
        return plain(
            hyper::StatusCode::BAD_REQUEST,
            "berth-crid streams over SPDY/3.1 (Upgrade: SPDY/3.1) or WebSocket (Upgrade: websocket)",
        );
    }
    let offered = offered_protocols(&request);
    let supported: &[&str] = match stream_request {
        StreamRequest::PortForward(_) => &[PORT_FORWARD],
        _ => REMOTECOMMAND,
    };
    let protocol = match choose_protocol(supported, &offered) {
        Ok(protocol) => protocol,
        Err(refused) => return refused,
    };
    let chosen = protocol.clone();
    let headers = vec![(
        hyper::header::HeaderName::from_static("x-stream-protocol-version"),
        protocol,
    )];
    switch_protocols(&mut request, "SPDY/3.1", headers, |io| async move {
        let session = Session::start(io);
        match stream_request {
            StreamRequest::Exec(r) => exec(&crid, r, session, &chosen).await,
            StreamRequest::Attach(r) => attach(&crid, r, session, &chosen).await,
            StreamRequest::PortForward(r) => port_forward(&crid, r, session).await,
        }
    })
}

/// The first of `supported` (the server's order of preference) that the
/// client offers; else the refusal naming both.
fn choose_protocol(
    supported: &[&str],
    offered: &[String],
) -> std::result::Result<String, hyper::Response<Body>> {
    supported
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .map(|p| p.to_string())
        .ok_or_else(|| {
            plain(
                hyper::StatusCode::FORBIDDEN,
                &format!("no common stream protocol: offered {offered:?}, supported {supported:?}"),
            )
        })
}

/// Answers 101 Switching Protocols to `upgrade` with `headers`; once
/// hyper hands over the connection, `serve` runs on it in a task of its
/// own.
fn switch_protocols<F, Fut>(
    request: &mut hyper::Request<hyper::body::Incoming>,
    upgrade: &'static str,
    headers: Vec<(hyper::header::HeaderName, String)>,
    serve: F,
) -> hyper::Response<Body>
where
    F: FnOnce(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let upgraded = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let io = match upgraded.await {
            Ok(io) => hyper_util::rt::TokioIo::new(io),
            Err(e) => {
                tracing::debug!("stream upgrade: {e}");
                return;
            }
        };
        if let Err(e) = serve(io).await {
            tracing::debug!("stream: {e}");
        }
    });
    let mut response = plain(hyper::StatusCode::SWITCHING_PROTOCOLS, "");
    let fields = response.headers_mut();
    fields.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    fields.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static(upgrade),
    );
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            fields.insert(name, value);
        }
    }
    response
}

/// A WebSocket upgrade: remotecommand over the channel protocols, or
/// port-forward as tunnelled SPDY; the handlers are SPDY's.
fn answer_websocket(
    mut request: hyper::Request<hyper::body::Incoming>,
    stream_request: StreamRequest,
    crid: Arc<Crid>,
) -> hyper::Response<Body> {
    let offered = websocket::offered_protocols(&request);
    let supported: &[&str] = match stream_request {
        StreamRequest::PortForward(_) => &[websocket::TUNNELED_PORT_FORWARD],
        _ => websocket::CHANNEL_PROTOCOLS,
    };
    let protocol = match choose_protocol(supported, &offered) {
        Ok(protocol) => protocol,
        Err(refused) => return refused,
    };
    let Some(accept) = websocket::accept_key(&request) else {
        return plain(
            hyper::StatusCode::BAD_REQUEST,
            "a WebSocket upgrade without Sec-WebSocket-Key",
        );
    };
    let headers = vec![
        (hyper::header::SEC_WEBSOCKET_ACCEPT, accept),
        (hyper::header::SEC_WEBSOCKET_PROTOCOL, protocol.clone()),
    ];
    switch_protocols(&mut request, "websocket", headers, |io| async move {
        let ws = websocket::server(io).await;
        // v5 differs from v4 only in the client's half-close, which the
        // channel session turns into a stream's end: the handlers speak
        // v4 for both (and for v4's base64 variant), and v3 (resize, and
        // errors as plain text) for the older protocols, as the kubelet.
        let encoding = websocket::Encoding::of(&protocol);
        let channel_protocol = if protocol.starts_with("v5.") || protocol.starts_with("v4.") {
            "v4.channel.k8s.io"
        } else {
            "v3.channel.k8s.io"
        };
        match stream_request {
            StreamRequest::Exec(r) => {
                let streams = remotecommand_streams(r.stdin, r.stdout, r.stderr, r.tty);
                let session = websocket::channel_session(ws, &streams, encoding);
                exec(&crid, r, session, channel_protocol).await
            }
            StreamRequest::Attach(r) => {
                let streams = remotecommand_streams(r.stdin, r.stdout, r.stderr, r.tty);
                let session = websocket::channel_session(ws, &streams, encoding);
                attach(&crid, r, session, channel_protocol).await
            }
            StreamRequest::PortForward(r) => {
                port_forward(&crid, r, Session::start(websocket::tunnel(ws))).await
            }
        }
    })
}

/// The channels a remotecommand request implies, by `streamtype` and
/// channel number: the error channel always; stdin, stdout as asked;
/// stderr only without a terminal (a terminal has one output); resize
/// with a terminal.
fn remotecommand_streams(
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Vec<(&'static str, u8)> {
    let mut streams = vec![("error", websocket::ERROR)];
    if stdin {
        streams.push(("stdin", websocket::STDIN));
    }
    if stdout {
        streams.push(("stdout", websocket::STDOUT));
    }
    if stderr && !tty {
        streams.push(("stderr", websocket::STDERR));
    }
    if tty {
        streams.push(("resize", websocket::RESIZE));
    }
    streams
}

/// The streams a remotecommand client opens, by their `streamtype`.
#[derive(Debug, Default)]
struct Channels {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

/// Accepts the client's streams until every one a request implies is
/// open (stderr only without a terminal; resize with a terminal from v3
/// on); data that arrives meanwhile is kept for later.
async fn open_channels(
    session: &mut Session,
    protocol: &str,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Result<(Channels, Vec<Incoming>)> {
    let stderr = stderr && !tty;
    let resize = tty && protocol != "v2.channel.k8s.io" && protocol != "channel.k8s.io";
    let mut channels = Channels::default();
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAMS_TIMEOUT;
    let complete = |c: &Channels| {
        c.error.is_some()
            && (!stdin || c.stdin.is_some())
            && (!stdout || c.stdout.is_some())
            && (!stderr || c.stderr.is_some())
            && (!resize || c.resize.is_some())
    };
    while !complete(&channels) {
        let next = tokio::time::timeout_at(deadline, session.incoming.recv())
            .await
            .map_err(|_| Error::unavailable("the client did not open its streams in time"))?;
        match next {
            Some(Incoming::Stream { id, headers }) => {
                let kind = headers
                    .get("streamtype")
                    .and_then(|v| v.first())
                    .map(String::as_str)
                    .unwrap_or("");
                match kind {
                    "error" => channels.error = Some(id),
                    "stdin" => channels.stdin = Some(id),
                    "stdout" => channels.stdout = Some(id),
                    "stderr" => channels.stderr = Some(id),
                    "resize" => channels.resize = Some(id),
                    other => tracing::debug!(other, "an unknown stream type"),
                }
            }
            Some(other) => early.push(other),
            None => return Err(Error::unavailable("the client went away")),
        }
    }
    Ok((channels, early))
}

/// Copies a process's output to a stream until it is over.
async fn pump(mut output: logs::Follower, id: u32, out: mpsc::Sender<Outgoing>) {
    while let Some(chunk) = output.next().await {
        let data = Outgoing::Data {
            id,
            data: chunk.to_vec(),
            fin: false,
        };
        if out.send(data).await.is_err() {
            break;
        }
    }
}

/// remotecommand v4's status on the error stream (earlier versions: the
/// message alone, and nothing on success).
fn exit_status(protocol: &str, cmd: &[String], exit: Option<i32>) -> Option<Vec<u8>> {
    let v4 = protocol == "v4.channel.k8s.io";
    match exit {
        Some(0) if v4 => Some(br#"{"metadata":{},"status":"Success"}"#.to_vec()),
        Some(0) => None,
        Some(code) => {
            let message = format!(
                "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
            );
            if v4 {
                let status = serde_json::json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": message,
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
                });
                Some(status.to_string().into_bytes())
            } else {
                Some(message.into_bytes())
            }
        }
        None => {
            let message = "the process was killed: the client went away or the container stopped";
            if v4 {
                let status = serde_json::json!({
                    "metadata": {}, "status": "Failure", "message": message,
                });
                Some(status.to_string().into_bytes())
            } else {
                Some(message.as_bytes().to_vec())
            }
        }
    }
}

/// Ends a remotecommand session: the status on the error stream, then
/// every stream of crid's closed and the session with them.
async fn finish(out: &mpsc::Sender<Outgoing>, channels: &Channels, status: Option<Vec<u8>>) {
    if let (Some(id), Some(status)) = (channels.error, status) {
        let _ = out
            .send(Outgoing::Data {
                id,
                data: status,
                fin: false,
            })
            .await;
    }
    for id in [channels.stdout, channels.stderr, channels.error]
        .into_iter()
        .flatten()
    {
        let _ = out
            .send(Outgoing::Data {
                id,
                data: Vec::new(),
                fin: true,
            })
            .await;
    }
    let _ = out.send(Outgoing::GoAway).await;
}

/// A terminal size from the resize stream: JSON objects, one after another.
fn sizes(buffer: &mut Vec<u8>, data: &[u8]) -> Vec<(u32, u32)> {
    buffer.extend_from_slice(data);
    let mut found = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(buffer).into_iter::<serde_json::Value>();
    let mut consumed = 0;
    while let Some(Ok(value)) = stream.next() {
        consumed = stream.byte_offset();
        let width = value.get("Width").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let height = value.get("Height").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if width > 0 && height > 0 {
            found.push((width, height));
        }
    }
    buffer.drain(..consumed);
    found
}

async fn exec(
    crid: &Arc<Crid>,
    r: cri::ExecRequest,
    mut session: Session,
    protocol: &str,
) -> Result<()> {
    let (channels, early) =
        open_channels(&mut session, protocol, r.stdin, r.stdout, r.stderr, r.tty).await?;
    let out = session.outgoing.clone();
    let container = crid
        .store
        .find_container(&r.container_id)
        .filter(|c| c.phase == ContainerPhase::Running)
        .ok_or_else(|| {
            Error::failed_precondition(format!("container {} is not running", r.container_id))
        })?;
    let process = crid
        .exec_process_spec(&container.id, r.cmd.clone(), r.tty)
        .await?;
    let exec_id = format!("exec-{}", &new_id()?[..16]);
    let dir = container.dir.join(&exec_id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    let result = run_exec(
        crid,
        &container.id,
        &exec_id,
        &dir,
        process,
        &r,
        channels,
        early,
        session,
        protocol,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = out.send(Outgoing::GoAway).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_exec(
    crid: &Arc<Crid>,
    id: &str,
    exec_id: &str,
    dir: &std::path::Path,
    process: Vec<u8>,
    r: &cri::ExecRequest,
    channels: Channels,
    early: Vec<Incoming>,
    mut session: Session,
    protocol: &str,
) -> Result<()> {
    let out = session.outgoing.clone();
    let fifo = |name: &str, wanted: bool| -> Result<Option<PathBuf>> {
        if !wanted {
            return Ok(None);
        }
        let path = dir.join(name);
        logs::make_fifo(&path)?;
        Ok(Some(path))
    };
    let stdin_path = fifo("stdin", channels.stdin.is_some())?;
    let stdout_path = fifo("stdout", channels.stdout.is_some())?;
    let stderr_path = fifo("stderr", channels.stderr.is_some())?;
    let (exited, done) = watch::channel(false);
    let mut pumps = Vec::new();
    for (path, stream) in [
        (&stdout_path, channels.stdout),
        (&stderr_path, channels.stderr),
    ] {
        if let (Some(path), Some(stream)) = (path, stream) {
            let output = logs::Follower::new(logs::open_reader(path)?, done.clone());
            pumps.push(tokio::spawn(pump(output, stream, out.clone())));
        }
    }
    let mut stdin = match &stdin_path {
        Some(path) => Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?,
        ),
        None => None,
    };
    let path_of = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let tasks = crid.daemons.tasks().await?;
    tasks
        .exec(
            NAMESPACE,
            ExecProcess {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdio: Stdio {
                    stdin: path_of(&stdin_path),
                    stdout: path_of(&stdout_path),
                    stderr: path_of(&stderr_path),
                    terminal: r.tty,
                },
                spec: process,
            },
        )
        .await?;
    if let Err(e) = tasks.start(NAMESPACE, id, exec_id).await {
        let _ = tasks.delete_process(NAMESPACE, id, exec_id).await;
        let _ = exited.send(true);
        let status = exit_status(protocol, &r.cmd, None).map(|_| {
            serde_json::json!({"metadata": {}, "status": "Failure", "message": e.to_string()})
                .to_string()
                .into_bytes()
        });
        finish(&out, &channels, status).await;
        return Err(e);
    }
    let waiter = {
        let (crid, id, exec_id) = (crid.clone(), id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            let tasks = crid.daemons.tasks().await?;
            tasks.wait(NAMESPACE, &id, &exec_id).await
        })
    };
    tokio::pin!(waiter);
    let mut resize_buffer = Vec::new();
    let mut pending: std::collections::VecDeque<Incoming> = early.into();
    let exit = loop {
        let incoming = match pending.pop_front() {
            Some(early) => Some(early),
            None => tokio::select! {
                waited = &mut waiter => break waited.ok().and_then(|w| w.ok()).map(|e| e.status as i32),
                next = session.incoming.recv() => next,
            },
        };
        match incoming {
            Some(Incoming::Data {
                id: stream,
                data,
                fin,
            }) => {
                if Some(stream) == channels.stdin {
                    if let Some(writer) = stdin.as_mut() {
                        if !data.is_empty() && writer.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                    if fin {
                        stdin = None;
                        let _ = tasks.close_stdin(NAMESPACE, id, exec_id).await;
                    }
                } else if Some(stream) == channels.resize {
                    for (width, height) in sizes(&mut resize_buffer, &data) {
                        let _ = tasks
                            .resize_pty(NAMESPACE, id, exec_id, width, height)
                            .await;
                    }
                }
            }
            Some(Incoming::Stream { .. }) => {}
            Some(Incoming::Reset { .. }) | None => {
                // The client went away: the process goes too.
                let kill = KillProcess {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    signal: 9,
                    all: false,
                };
                let _ = tasks.kill(NAMESPACE, kill).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut waiter).await;
                break None;
            }
        }
    };
    drop(stdin);
    let _ = exited.send(true);
    for pump in pumps {
        let _ = pump.await;
    }
    let _ = tasks.delete_process(NAMESPACE, id, exec_id).await;
    finish(&out, &channels, exit_status(protocol, &r.cmd, exit)).await;
    Ok(())
}

async fn attach(
    crid: &Arc<Crid>,
    r: cri::AttachRequest,
    mut session: Session,
    protocol: &str,
) -> Result<()> {
    let (channels, early) =
        open_channels(&mut session, protocol, r.stdin, r.stdout, r.stderr, r.tty).await?;
    let out = session.outgoing.clone();
    let attached = crid.attach_to(&r.container_id)?;
    let mut output = attached.output;
    let mut exited = attached.exited;
    let stdin_once = attached.stdin_once;
    let mut stdin_open = true;
    let tasks = crid.daemons.tasks().await?;
    let mut resize_buffer = Vec::new();
    let mut pending: std::collections::VecDeque<Incoming> = early.into();
    loop {
        let incoming = match pending.pop_front() {
            Some(early) => Some(early),
            None => tokio::select! {
                chunk = output.recv() => {
                    match chunk {
                        Ok((stderr, data)) => {
                            let stream = if stderr { channels.stderr } else { channels.stdout };
                            if let Some(id) = stream {
                                let _ = out.send(Outgoing::Data { id, data, fin: false }).await;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                    continue;
                }
                _ = exited.changed() => break,
                next = session.incoming.recv() => next,
            },
        };
        match incoming {
            Some(Incoming::Data {
                id: stream,
                data,
                fin,
            }) => {
                if Some(stream) == channels.stdin && stdin_open {
                    if !data.is_empty() {
                        crid.write_stdin(&r.container_id, &data).await?;
                    }
                    if fin {
                        // As containerd: with stdin_once and no terminal,
                        // the end of the client's stdin closes the
                        // container's, and its output goes on streaming
                        // until it exits; otherwise the attach ends here.
                        if !stdin_once || r.tty {
                            break;
                        }
                        crid.close_stdin(&r.container_id).await;
                        let _ = tasks.close_stdin(NAMESPACE, &r.container_id, "").await;
                        stdin_open = false;
                    }
                } else if Some(stream) == channels.resize {
                    for (width, height) in sizes(&mut resize_buffer, &data) {
                        let _ = tasks
                            .resize_pty(NAMESPACE, &r.container_id, "", width, height)
                            .await;
                    }
                }
            }
            Some(Incoming::Stream { .. }) => {}
            Some(Incoming::Reset { .. }) | None => return Ok(()),
        }
    }
    finish(&out, &channels, exit_status(protocol, &[], Some(0))).await;
    Ok(())
}

async fn port_forward(
    crid: &Arc<Crid>,
    r: cri::PortForwardRequest,
    mut session: Session,
) -> Result<()> {
    let sandbox = crid
        .store
        .find_sandbox(&r.pod_sandbox_id)
        .ok_or_else(|| Error::not_found(format!("sandbox {} not found", r.pod_sandbox_id)))?;
    let out = session.outgoing.clone();
    // Per request id: its error stream; per data stream: where its bytes go.
    let mut errors: HashMap<String, u32> = HashMap::new();
    let mut targets: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    while let Some(incoming) = session.incoming.recv().await {
        match incoming {
            Incoming::Stream { id, headers } => {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.first())
                        .cloned()
                        .unwrap_or_default()
                };
                let request = header("requestid");
                match header("streamtype").as_str() {
                    "error" => {
                        errors.insert(request, id);
                    }
                    "data" => {
                        let port: u16 = header("port").parse().unwrap_or(0);
                        let error_stream = errors.get(&request).copied();
                        let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
                        targets.insert(id, tx);
                        tokio::spawn(forward(
                            sandbox.netns.clone(),
                            port,
                            id,
                            error_stream,
                            rx,
                            out.clone(),
                        ));
                    }
                    _ => {}
                }
            }
            Incoming::Data { id, data, fin } => {
                if let Some(target) = targets.get(&id) {
                    if !data.is_empty() {
                        let _ = target.send(data).await;
                    }
                }
                if fin {
                    targets.remove(&id);
                }
            }
            Incoming::Reset { id } => {
                targets.remove(&id);
            }
        }
    }
    Ok(())
}

/// One forwarded connection: to `port` on the pod's loopback, inside its
/// network namespace (or the host's for a host-network pod).
async fn forward(
    netns: Option<PathBuf>,
    port: u16,
    stream: u32,
    error_stream: Option<u32>,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Outgoing>,
) {
    let connected = tokio::task::spawn_blocking(move || connect_in(netns, port))
        .await
        .map_err(|e| Error::internal(e.to_string()))
        .and_then(|r| r);
    let tcp = match connected.and_then(|s| {
        s.set_nonblocking(true)
            .map_err(|e| Error::io("socket", &e))?;
        tokio::net::TcpStream::from_std(s).map_err(|e| Error::io("socket", &e))
    }) {
        Ok(tcp) => tcp,
        Err(e) => {
            if let Some(id) = error_stream {
                let message = format!("failed to connect to localhost:{port} in the pod: {e}");
                let _ = out
                    .send(Outgoing::Data {
                        id,
                        data: message.into_bytes(),
                        fin: true,
                    })
                    .await;
            }
            let _ = out
                .send(Outgoing::Data {
                    id: stream,
                    data: Vec::new(),
                    fin: true,
                })
                .await;
            return;
        }
    };
    let (mut read, mut write) = tcp.into_split();
    let to_pod = async move {
        while let Some(data) = from_client.recv().await {
            if write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    let out_clone = out.clone();
    let from_pod = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Outgoing::Data {
                        id: stream,
                        data: buf[..n].to_vec(),
                        fin: false,
                    };
                    if out_clone.send(data).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = out_clone
            .send(Outgoing::Data {
                id: stream,
                data: Vec::new(),
                fin: true,
            })
            .await;
    };
    tokio::join!(to_pod, from_pod);
    if let Some(id) = error_stream {
        let _ = out
            .send(Outgoing::Data {
                id,
                data: Vec::new(),
                fin: true,
            })
            .await;
    }
}

/// Connects to 127.0.0.1:`port` from inside `netns` (the pod's network).
fn connect_in(netns: Option<PathBuf>, port: u16) -> Result<std::net::TcpStream> {
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let connect = move || {
        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .map_err(|e| Error::io(format!("connecting to {target}"), &e))
    };
    match netns {
        Some(netns) => berth_network::in_netns(&netns, connect),
        None => connect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_good_once_and_for_their_kind() {
        let streams = Streams {
            base: "http://127.0.0.1:1".into(),
            pending: Mutex::new(HashMap::new()),
        };
        let url = streams
            .url(StreamRequest::Exec(cri::ExecRequest::default()))
            .unwrap_or_else(|e| panic!("{e}"));
        let token = url.rsplit('/').next().unwrap_or_default().to_string();
        assert!(url.starts_with("http://127.0.0.1:1/exec/"));
        assert!(streams.take("attach", &token).is_none(), "another kind");
        let url = streams
            .url(StreamRequest::Exec(cri::ExecRequest::default()))
            .unwrap_or_else(|e| panic!("{e}"));
        let token = url.rsplit('/').next().unwrap_or_default().to_string();
        assert!(streams.take("exec", &token).is_some());
        assert!(streams.take("exec", &token).is_none(), "used once");
    }

    #[test]
    fn resize_messages_are_read_across_chunks() {
        let mut buffer = Vec::new();
        assert_eq!(sizes(&mut buffer, br#"{"Width":80,"Hei"#), vec![]);
        assert_eq!(
            sizes(&mut buffer, br#"ght":24}{"Width":100,"Height":40}"#),
            vec![(80, 24), (100, 40)]
        );
        assert!(buffer.is_empty());
    }

    #[test]
    fn v4_reports_exit_codes_as_status_objects() {
        let ok = exit_status("v4.channel.k8s.io", &[], Some(0)).unwrap_or_default();
        assert_eq!(ok, br#"{"metadata":{},"status":"Success"}"#.to_vec());
        let failed =
            exit_status("v4.channel.k8s.io", &["false".into()], Some(3)).unwrap_or_default();
        let status: serde_json::Value = serde_json::from_slice(&failed).unwrap_or_default();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status("v3.channel.k8s.io", &[], Some(0)), None);
    }
}
