//! Publishing task events to containerd: over ttrpc to `TTRPC_ADDRESS`
//! (`containerd.services.events.ttrpc.v1.Events/Forward`), or, without that
//! address, by running `<publish-binary> --address A publish --topic T
//! --namespace N` with the event on stdin. One task sends them in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use tokio::sync::{mpsc, Notify};

use crate::reaper::Reaper;

pub const TASK_CREATE: &str = "/tasks/create";
pub const TASK_START: &str = "/tasks/start";
pub const TASK_EXIT: &str = "/tasks/exit";
pub const TASK_DELETE: &str = "/tasks/delete";
pub const TASK_EXEC_ADDED: &str = "/tasks/exec-added";
pub const TASK_EXEC_STARTED: &str = "/tasks/exec-started";
pub const TASK_PAUSED: &str = "/tasks/paused";
pub const TASK_RESUMED: &str = "/tasks/resumed";
pub const TASK_OOM: &str = "/tasks/oom";
pub const TASK_CHECKPOINTED: &str = "/tasks/checkpointed";

const ATTEMPTS: u32 = 5;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where events go.
#[derive(Debug, Clone)]
pub enum Destination {
    Ttrpc(String),
    Binary { binary: String, address: String },
    Nowhere,
}

#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) topic: &'static str,
    pub(crate) event: Any,
    at: SystemTime,
}

/// A handle to the event queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Queued>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

/// The protobuf package of every task event (`events/task.proto`).
const EVENTS_PACKAGE: &str = "containerd.events";

/// Wraps an event in an Any whose type URL is the bare message name, as
/// containerd 1.6's typeurl registry expects (no `type.googleapis.com/`).
///
/// The name is built from `Message::NAME`, not from the reflection
/// descriptor: `descriptor()` parses and indexes the whole
/// `descriptor.proto` tree on first use, about 0.5 MB of heap that a shim
/// would then keep for its lifetime.
pub fn to_any<M: Message>(message: &M) -> Any {
    let mut any = Any::new();
    any.type_url = format!("{EVENTS_PACKAGE}.{}", M::NAME);
    any.value = message.write_to_bytes().unwrap_or_default();
    any
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = since.as_secs() as i64;
    ts.nanos = since.subsec_nanos() as i32;
    ts
}

impl Publisher {
    /// Starts the sending task on the current runtime.
    pub fn start(destination: Destination, namespace: String, reaper: Arc<Reaper>) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        tokio::spawn(send_loop(
            rx,
            destination,
            namespace,
            reaper,
            pending.clone(),
            drained.clone(),
        ));
        Publisher {
            tx,
            pending,
            drained,
        }
    }

    /// A publisher that sends nothing: its events queue up on the returned
    /// receiver, in order, for a test to read.
    #[cfg(test)]
    pub(crate) fn capture() -> (Publisher, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let publisher = Publisher {
            tx,
            pending: Arc::new(AtomicUsize::new(0)),
            drained: Arc::new(Notify::new()),
        };
        (publisher, rx)
    }

    pub fn publish<M: Message>(&self, topic: &'static str, message: &M) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let queued = Queued {
            topic,
            event: to_any(message),
            at: SystemTime::now(),
        };
        if self.tx.send(queued).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits until every queued event was sent (or given up on), at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let wait = async {
            while self.pending.load(Ordering::SeqCst) > 0 {
                let notified = self.drained.notified();
                if self.pending.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

async fn send_loop(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    destination: Destination,
    namespace: String,
    reaper: Arc<Reaper>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    let mut client: Option<EventsClient> = None;
    while let Some(queued) = rx.recv().await {
        for attempt in 1..=ATTEMPTS {
            let sent = match &destination {
                Destination::Ttrpc(address) => {
                    forward(&mut client, address, &namespace, &queued).await
                }
                Destination::Binary { binary, address } => {
                    publish_binary(binary, address, &namespace, &queued, &reaper).await
                }
                Destination::Nowhere => Ok(()),
            };
            match sent {
                Ok(()) => break,
                Err(e) => {
                    client = None;
                    crate::log_warn!(
                        "publishing {} (attempt {attempt}/{ATTEMPTS}): {e}",
                        queued.topic
                    );
                    // A first failure is usually a connection containerd
                    // closed when it restarted: retry at once, then back off.
                    if attempt > 1 && attempt < ATTEMPTS {
                        tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
                    }
                }
            }
        }
        if pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            drained.notify_waiters();
        }
    }
}

async fn forward(
    client: &mut Option<EventsClient>,
    address: &str,
    namespace: &str,
    queued: &Queued,
) -> Result<(), String> {
    if client.is_none() {
        let address = if address.starts_with("unix://") {
            address.to_string()
        } else {
            format!("unix://{address}")
        };
        let connection =
            tokio::time::timeout(CALL_TIMEOUT, ttrpc::asynchronous::Client::connect(&address))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
        *client = Some(EventsClient::new(connection));
    }
    let Some(events) = client.as_ref() else {
        return Err("not connected".into());
    };
    let mut envelope = Envelope::new();
    envelope.timestamp = Some(timestamp(queued.at)).into();
    envelope.namespace = namespace.to_string();
    envelope.topic = queued.topic.to_string();
    envelope.event = Some(queued.event.clone()).into();
    let mut request = ForwardRequest::new();
    request.envelope = Some(envelope).into();
    let ctx = ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64);
    events
        .forward(ctx, &request)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn publish_binary(
    binary: &str,
    address: &str,
    namespace: &str,
    queued: &Queued,
    reaper: &Reaper,
) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(binary)
        .args(["--address", address, "publish", "--topic", queued.topic])
        .args(["--namespace", namespace])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let exited = reaper.watch_command(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        let bytes = queued.event.write_to_bytes().map_err(|e| e.to_string())?;
        stdin.write_all(&bytes).map_err(|e| e.to_string())?;
    }
    match tokio::time::timeout(CALL_TIMEOUT, exited).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(status)) => Err(format!("{binary} publish exited with {status}")),
        _ => Err(format!("{binary} publish did not finish")),
    }
}

pub fn task_exit(
    container_id: &str,
    id: &str,
    pid: u32,
    status: u32,
    at: SystemTime,
) -> ev::TaskExit {
    let mut e = ev::TaskExit::new();
    e.container_id = container_id.to_string();
    e.id = id.to_string();
    e.pid = pid;
    e.exit_status = status;
    e.exited_at = Some(timestamp(at)).into();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_urls_are_bare_message_names() {
        let any = to_any(&task_exit("c", "c", 1, 7, SystemTime::UNIX_EPOCH));
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = ev::TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.exit_status, 7);
        assert_eq!(
            to_any(&ev::TaskOOM::new()).type_url,
            "containerd.events.TaskOOM"
        );
    }

    /// The names built without reflection are the descriptors' full names.
    #[test]
    fn event_type_urls_match_the_descriptors() {
        use containerd_shim_protos::protobuf::MessageFull;
        fn check<M: MessageFull>() {
            assert_eq!(
                to_any(&M::new()).type_url,
                M::descriptor().full_name(),
                "{}",
                M::NAME
            );
        }
        check::<ev::TaskCreate>();
        check::<ev::TaskStart>();
        check::<ev::TaskDelete>();
        check::<ev::TaskExit>();
        check::<ev::TaskOOM>();
        check::<ev::TaskExecAdded>();
        check::<ev::TaskExecStarted>();
        check::<ev::TaskPaused>();
        check::<ev::TaskResumed>();
        check::<ev::TaskCheckpointed>();
    }
}
