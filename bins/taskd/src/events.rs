//! Task events: what shims forward to taskd (containerd's
//! `containerd.services.events.ttrpc.v1.Events/Forward`, their
//! `TTRPC_ADDRESS`) and what taskd says itself, relayed in order to
//! metad's exchange. metad may be restarting: events wait in the queue and
//! the relay retries until metad takes them.
//!
//! The init process's exit is reported exactly once per task: the relay
//! marks it in the bundle once metad has it, drops a repeat (a shim
//! retrying after taskd restarted), and a restarted taskd reports an exit
//! that no one relayed (see `TaskManager::recover`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_client::events::RemoteEvents;
use berth_daemon::reply;
use berth_errdefs::{Error, ErrorKind, Result};
use berth_metadata::{Any, Envelope};
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Events};
use tokio::sync::mpsc;
use ttrpc::r#async::TtrpcContext;

use crate::bundle::Bundle;

/// Events waiting for metad; past this a shim's Forward is refused
/// (ResourceExhausted) and the shim retries.
const QUEUE_LIMIT: usize = 16 * 1024;
const EVENTS_PACKAGE: &str = "containerd.events";

/// Where relayed events go: metad's exchange (a trait so the relay's
/// ordering and exactly-once rules are tested without metad).
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn forward(&self, envelope: Envelope) -> Result<()>;
}

/// metad's exchange across its socket, reconnected after metad restarts.
#[derive(Debug)]
pub struct MetadSink {
    socket: PathBuf,
    connection: tokio::sync::Mutex<Option<RemoteEvents>>,
}

impl MetadSink {
    pub fn new(socket: &Path) -> MetadSink {
        MetadSink {
            socket: socket.to_path_buf(),
            connection: tokio::sync::Mutex::new(None),
        }
    }
}

#[async_trait]
impl EventSink for MetadSink {
    async fn forward(&self, envelope: Envelope) -> Result<()> {
        let mut connection = self.connection.lock().await;
        if connection.is_none() {
            *connection = Some(RemoteEvents::connect(&self.socket).await?);
        }
        let Some(events) = connection.as_ref() else {
            return Err(Error::unavailable("not connected to metad"));
        };
        let sent = tokio::time::timeout(Duration::from_secs(10), events.forward(envelope)).await;
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if !matches!(e.kind(), ErrorKind::InvalidArgument) {
                    *connection = None;
                }
                Err(e)
            }
            Err(_) => {
                *connection = None;
                Err(Error::unavailable("forwarding to metad timed out"))
            }
        }
    }
}

struct Queued {
    envelope: Envelope,
    /// Set for an init process's exit: the bundle to mark once relayed.
    exit_of: Option<(Bundle, u32)>,
}

/// The ordered queue from shims and taskd to metad.
#[derive(Clone)]
pub struct Relay {
    queue: mpsc::Sender<Queued>,
    state: PathBuf,
    /// Init exits queued but not yet relayed, by bundle path and pid.
    pending_exits: Arc<Mutex<HashSet<(PathBuf, u32)>>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts the relay to `sink` on the current runtime; `state` is taskd's
    /// bundle root, where exits are marked.
    pub fn start(sink: Arc<dyn EventSink>, state: &Path) -> Relay {
        let (queue, receiver) = mpsc::channel(QUEUE_LIMIT);
        let pending_exits = Arc::new(Mutex::new(HashSet::new()));
        tokio::spawn(relay_loop(receiver, sink, pending_exits.clone()));
        Relay {
            queue,
            state: state.to_path_buf(),
            pending_exits,
        }
    }

    /// Queues an event from a shim. An init exit already reported (or
    /// queued) is dropped.
    pub fn forward(&self, envelope: Envelope) -> Result<()> {
        berth_ids::validate_namespace(&envelope.namespace)
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        if !envelope.topic.starts_with('/') {
            return Err(Error::invalid_argument(format!(
                "topic {:?} must start with /",
                envelope.topic
            )));
        }
        let exit_of = self.init_exit(&envelope);
        self.enqueue(envelope, exit_of)
    }

    /// Queues an event taskd itself reports about a task in `namespace`.
    pub fn publish<M: Message>(&self, namespace: &str, topic: &str, message: &M) -> Result<()> {
        let envelope = Envelope {
            timestamp: SystemTime::now(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: to_any(message),
        };
        let exit_of = self.init_exit(&envelope);
        self.enqueue(envelope, exit_of)
    }

    /// Reports the exit of a task's init process unless it was reported.
    pub fn report_exit(&self, bundle: &Bundle, pid: u32, exit: berth_tasks::Exit) -> Result<()> {
        let message = task_exit(&bundle.id, &bundle.id, pid, exit);
        self.publish(&bundle.namespace, "/tasks/exit", &message)
    }

    fn init_exit(&self, envelope: &Envelope) -> Option<(Bundle, u32)> {
        if envelope.topic != "/tasks/exit" || !envelope.event.type_url.ends_with("TaskExit") {
            return None;
        }
        let exit = ev::TaskExit::parse_from_bytes(&envelope.event.value).ok()?;
        if exit.id != exit.container_id {
            return None;
        }
        let bundle = Bundle::locate(&self.state, &envelope.namespace, &exit.container_id).ok()?;
        Some((bundle, exit.pid))
    }

    fn enqueue(&self, envelope: Envelope, exit_of: Option<(Bundle, u32)>) -> Result<()> {
        if let Some((bundle, pid)) = &exit_of {
            if bundle.exit_reported() == Some(*pid) {
                tracing::debug!(id = %bundle.id, pid, "exit already reported");
                return Ok(());
            }
            let mut pending = self
                .pending_exits
                .lock()
                .map_err(|_| Error::internal("the relay's state is poisoned"))?;
            if !pending.insert((bundle.path.clone(), *pid)) {
                return Ok(());
            }
        }
        self.queue
            .try_send(Queued { envelope, exit_of })
            .map_err(|_| Error::resource_exhausted("taskd's event queue is full"))
    }
}

async fn relay_loop(
    mut receiver: mpsc::Receiver<Queued>,
    sink: Arc<dyn EventSink>,
    pending_exits: Arc<Mutex<HashSet<(PathBuf, u32)>>>,
) {
    while let Some(queued) = receiver.recv().await {
        let mut backoff = Duration::from_millis(50);
        loop {
            match sink.forward(queued.envelope.clone()).await {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::InvalidArgument => {
                    tracing::warn!(topic = %queued.envelope.topic, error = %e, "metad refused an event; dropped");
                    break;
                }
                Err(e) => {
                    tracing::debug!(topic = %queued.envelope.topic, error = %e, "metad unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        if let Some((bundle, pid)) = queued.exit_of {
            if bundle.exists() {
                // A bundle removed meanwhile (its task deleted) has nothing
                // left to mark.
                if let Err(e) = bundle.mark_exit_reported(pid).or_else(|e| {
                    if bundle.exists() {
                        Err(e)
                    } else {
                        Ok(())
                    }
                }) {
                    tracing::warn!(id = %bundle.id, error = %e, "marking the exit reported");
                }
            }
            if let Ok(mut pending) = pending_exits.lock() {
                pending.remove(&(bundle.path.clone(), pid));
            }
        }
    }
}

/// An event as containerd 1.6 reads it: the bare message name as type URL.
pub fn to_any<M: Message>(message: &M) -> Any {
    Any {
        type_url: format!("{EVENTS_PACKAGE}.{}", M::NAME),
        value: message.write_to_bytes().unwrap_or_default(),
    }
}

pub fn task_exit(container_id: &str, id: &str, pid: u32, exit: berth_tasks::Exit) -> ev::TaskExit {
    ev::TaskExit {
        container_id: container_id.to_string(),
        id: id.to_string(),
        pid,
        exit_status: exit.status,
        exited_at: berth_api::time::timestamp(exit.at),
        ..Default::default()
    }
}

pub fn task_delete(container_id: &str, pid: u32, exit: berth_tasks::Exit) -> ev::TaskDelete {
    ev::TaskDelete {
        container_id: container_id.to_string(),
        pid,
        exit_status: exit.status,
        exited_at: berth_api::time::timestamp(exit.at),
        ..Default::default()
    }
}

/// containerd's events service for shims, on taskd's socket.
#[derive(Debug)]
struct ShimEvents {
    relay: Relay,
}

#[async_trait]
impl Events for ShimEvents {
    async fn forward(
        &self,
        _ctx: &TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::api::Empty> {
        let result = match req.envelope.into_option() {
            Some(envelope) if envelope.timestamp.is_some() => self.relay.forward(Envelope {
                timestamp: berth_api::time::system_time(&envelope.timestamp),
                event: envelope
                    .event
                    .as_ref()
                    .map(|any| Any {
                        type_url: any.type_url.clone(),
                        value: any.value.clone(),
                    })
                    .unwrap_or_default(),
                namespace: envelope.namespace,
                topic: envelope.topic,
            }),
            Some(_) => Err(Error::invalid_argument("an event without a timestamp")),
            None => Err(Error::invalid_argument("forward without an envelope")),
        };
        reply("events.forward", result.map(|()| Default::default()))
    }
}

pub fn ttrpc_service(relay: Relay) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
    create_events(Arc::new(ShimEvents { relay }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records what reaches "metad"; refuses the first `fail` forwards as
    /// if metad were down, and any topic `/bad` as invalid.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<Envelope>>,
        fail: AtomicUsize,
    }

    #[async_trait]
    impl EventSink for Recorder {
        async fn forward(&self, envelope: Envelope) -> Result<()> {
            if envelope.topic == "/bad" {
                return Err(Error::invalid_argument("bad topic"));
            }
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(Error::unavailable("metad is down"));
            }
            self.seen.lock().unwrap().push(envelope);
            Ok(())
        }
    }

    fn exit_envelope(container: &str, id: &str, pid: u32) -> Envelope {
        let exit = task_exit(
            container,
            id,
            pid,
            berth_tasks::Exit {
                status: 1,
                at: SystemTime::now(),
            },
        );
        Envelope {
            timestamp: SystemTime::now(),
            namespace: "default".into(),
            topic: "/tasks/exit".into(),
            event: to_any(&exit),
        }
    }

    fn other(topic: &str) -> Envelope {
        Envelope {
            timestamp: SystemTime::now(),
            namespace: "default".into(),
            topic: topic.into(),
            event: Any::default(),
        }
    }

    async fn settle(recorder: &Recorder, count: usize) -> Vec<String> {
        for _ in 0..400 {
            if recorder.seen.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Anything extra would show up now.
        tokio::time::sleep(Duration::from_millis(100)).await;
        recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.topic.clone())
            .collect()
    }

    #[tokio::test]
    async fn events_reach_metad_in_order_through_its_downtime() {
        let state = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::default());
        recorder.fail.store(3, Ordering::SeqCst);
        let relay = Relay::start(recorder.clone(), state.path());
        for topic in ["/tasks/create", "/bad", "/tasks/start", "/tasks/oom"] {
            relay.forward(other(topic)).unwrap();
        }
        assert_eq!(
            settle(&recorder, 3).await,
            vec!["/tasks/create", "/tasks/start", "/tasks/oom"]
        );
    }

    #[tokio::test]
    async fn an_init_exit_is_relayed_once_and_marked_in_its_bundle() {
        let state = tempfile::tempdir().unwrap();
        let bundle = Bundle::locate(state.path(), "default", "c1").unwrap();
        bundle.create(b"{}").unwrap();
        let recorder = Arc::new(Recorder::default());
        recorder.fail.store(1, Ordering::SeqCst);
        let relay = Relay::start(recorder.clone(), state.path());
        // The shim's own event and taskd's report of the same exit, while
        // the first is still queued.
        relay.forward(exit_envelope("c1", "c1", 42)).unwrap();
        relay
            .report_exit(
                &bundle,
                42,
                berth_tasks::Exit {
                    status: 1,
                    at: SystemTime::now(),
                },
            )
            .unwrap();
        // An exec's exit is not the task's: always relayed.
        relay.forward(exit_envelope("c1", "exec-1", 43)).unwrap();
        relay.forward(exit_envelope("c1", "exec-1", 43)).unwrap();
        assert_eq!(settle(&recorder, 3).await.len(), 3);
        assert_eq!(bundle.exit_reported(), Some(42));
        // After the mark (a shim retrying once taskd is back): dropped.
        relay.forward(exit_envelope("c1", "c1", 42)).unwrap();
        assert_eq!(settle(&recorder, 4).await.len(), 3);
        // Another pid (the task was recreated): relayed.
        relay.forward(exit_envelope("c1", "c1", 99)).unwrap();
        assert_eq!(settle(&recorder, 4).await.len(), 4);
        assert_eq!(bundle.exit_reported(), Some(99));
    }

    #[tokio::test]
    async fn malformed_envelopes_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let relay = Relay::start(Arc::new(Recorder::default()), state.path());
        let mut bad_namespace = other("/tasks/start");
        bad_namespace.namespace = "../x".into();
        assert_eq!(
            relay.forward(bad_namespace).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            relay.forward(other("tasks/start")).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
