//! berth-metad's event exchange, across its socket: publish, forward,
//! subscribe; and containerd's event payloads, decoded (see [`KnownEvent`]).

use std::path::{Path, PathBuf};

use berth_api::events as pb;
use berth_api::protobuf::MessageField;
use berth_errdefs::Result;
use berth_metadata::wire::{any_from_pb, any_to_pb};
use berth_metadata::{Any, Envelope};
use ttrpc::r#async::ClientStreamReceiver;

/// containerd's event payloads, decoded: the model is berth-metadata's.
pub use berth_metadata::KnownEvent;

use crate::connection::{connect, request_context};

/// berth-metad's `Events` service.
#[derive(Clone)]
pub struct RemoteEvents {
    socket: PathBuf,
    client: pb::EventsClient,
}

impl std::fmt::Debug for RemoteEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEvents")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl RemoteEvents {
    pub async fn connect(socket: &Path) -> Result<RemoteEvents> {
        Ok(RemoteEvents {
            socket: socket.to_path_buf(),
            client: pb::EventsClient::new(connect(socket).await?),
        })
    }

    /// Publishes an event in `namespace`; metad stamps the time.
    pub async fn publish(&self, namespace: &str, topic: &str, event: Any) -> Result<()> {
        let request = pb::PublishRequest {
            topic: topic.to_string(),
            event: MessageField::some(any_to_pb(&event)),
            ..Default::default()
        };
        self.client
            .publish(request_context(namespace), &request)
            .await?;
        Ok(())
    }

    /// Relays an envelope as it is, with its own time and namespace.
    pub async fn forward(&self, envelope: Envelope) -> Result<()> {
        let namespace = envelope.namespace.clone();
        let request = pb::ForwardRequest {
            envelope: MessageField::some(envelope_to_pb(envelope)),
            ..Default::default()
        };
        self.client
            .forward(request_context(&namespace), &request)
            .await?;
        Ok(())
    }

    /// Every event published from now on that matches any of `filters`
    /// (containerd's syntax over `topic`, `namespace` and `event.KEY`; none
    /// matches all), from every namespace.
    ///
    /// The subscription has a connection of its own, so dropping it ends
    /// the subscription in metad too.
    pub async fn subscribe(&self, filters: &[String]) -> Result<Subscription> {
        let client = pb::EventsClient::new(connect(&self.socket).await?);
        let request = pb::SubscribeRequest {
            filters: filters.to_vec(),
            ..Default::default()
        };
        let ctx = ttrpc::context::with_timeout(0);
        let stream = client.subscribe(ctx, &request).await?;
        Ok(Subscription { stream })
    }
}

/// Events as metad sends them, in the order they were published.
pub struct Subscription {
    stream: ClientStreamReceiver<pb::Envelope>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event; `None` once metad has closed the stream. A
    /// subscriber that fell too far behind gets a ResourceExhausted error,
    /// after which the subscription is over.
    pub async fn next(&mut self) -> Result<Option<Envelope>> {
        Ok(self.stream.recv().await?.map(envelope_from_pb))
    }
}

/// An envelope as it crosses the wire.
pub fn envelope_to_pb(envelope: Envelope) -> pb::Envelope {
    pb::Envelope {
        timestamp: berth_api::time::timestamp(envelope.timestamp),
        namespace: envelope.namespace,
        topic: envelope.topic,
        event: MessageField::some(any_to_pb(&envelope.event)),
        ..Default::default()
    }
}

/// An envelope from the wire; a missing time is the epoch and a missing
/// event an empty `Any`.
pub fn envelope_from_pb(envelope: pb::Envelope) -> Envelope {
    let timestamp = berth_api::time::system_time(&envelope.timestamp);
    let event = envelope.event.as_ref().map(any_from_pb).unwrap_or_default();
    Envelope {
        timestamp,
        namespace: envelope.namespace,
        topic: envelope.topic,
        event,
    }
}

pub use berth_metadata::format_rfc3339_nanos as rfc3339;

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn times_have_nanoseconds() {
        let at = |secs: u64, nanos: u32| rfc3339(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_868_799, 7), "2000-02-29T23:59:59.000000007Z");
        assert_eq!(
            at(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
    }

    #[test]
    fn envelopes_survive_the_wire() {
        let envelope = Envelope {
            timestamp: UNIX_EPOCH + Duration::new(1_700_000_000, 9),
            namespace: "default".into(),
            topic: "/tasks/exit".into(),
            event: Any {
                type_url: "containerd.events.TaskExit".into(),
                value: vec![1, 2, 3],
            },
        };
        assert_eq!(envelope_from_pb(envelope_to_pb(envelope.clone())), envelope);
        let empty = envelope_from_pb(pb::Envelope::default());
        assert_eq!(empty.timestamp, UNIX_EPOCH);
        assert_eq!(empty.event, Any::default());
    }
}
