//! The exchange over ttrpc: `berth.events.v1.Events` for berth's daemons
//! and CLI, and containerd's `containerd.services.events.ttrpc.v1.Events`
//! (Forward only) for shims.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use berth_api::events as pb;
use berth_api::protobuf::well_known_types::empty::Empty;
use berth_client::events::envelope_from_pb;
use berth_daemon::{peer_hung_up, reply, request_namespace};
use berth_errdefs::{Error, Result};
use berth_metadata::wire::any_from_pb;
use berth_metadata::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest as ContainerdForwardRequest;
use containerd_shim_protos::shim_async as containerd;
use ttrpc::r#async::{ServerStreamSender, Service, TtrpcContext};

use super::exchange::Exchange;

/// Both event services over one exchange, for the daemon to serve.
pub fn ttrpc_services(exchange: Arc<Exchange>) -> HashMap<String, Service> {
    let mut services = pb::create_events(Arc::new(EventsService {
        exchange: exchange.clone(),
    }));
    services.extend(containerd::create_events(Arc::new(ContainerdEvents {
        exchange,
    })));
    services
}

#[derive(Debug)]
struct EventsService {
    exchange: Arc<Exchange>,
}

impl EventsService {
    /// Relays the subscription until the subscriber hangs up or the
    /// exchange ends it. Never returns Ok: a subscription has no natural end.
    async fn relay(
        &self,
        ctx: &TtrpcContext,
        filters: &[String],
        sink: &ServerStreamSender<pb::Envelope>,
    ) -> Result<()> {
        let subscription = self.exchange.subscribe(filters)?;
        loop {
            let envelope = tokio::select! {
                next = subscription.next() => next?,
                () = peer_hung_up(ctx) => return Err(Error::unavailable("the subscriber hung up")),
            };
            // A subscriber that stops reading blocks this send once its
            // socket is full; the exchange then ends it, which must not
            // wait for the socket.
            tokio::select! {
                sent = sink.send(&envelope) => sent?,
                error = subscription.ended() => return Err(error),
                () = peer_hung_up(ctx) => return Err(Error::unavailable("the subscriber hung up")),
            }
        }
    }
}

#[async_trait]
impl pb::Events for EventsService {
    async fn publish(&self, ctx: &TtrpcContext, req: pb::PublishRequest) -> ttrpc::Result<Empty> {
        let result = request_namespace(ctx).and_then(|namespace| {
            self.exchange.try_forward(Envelope {
                timestamp: SystemTime::now(),
                namespace,
                topic: req.topic,
                event: req.event.as_ref().map(any_from_pb).unwrap_or_default(),
            })
        });
        reply("publish", result.map(|()| Empty::new()))
    }

    async fn forward(&self, _ctx: &TtrpcContext, req: pb::ForwardRequest) -> ttrpc::Result<Empty> {
        let result = match req.envelope.into_option() {
            Some(envelope) => self.exchange.try_forward(envelope_from_pb(envelope)),
            None => Err(Error::invalid_argument("forward without an envelope")),
        };
        reply("forward", result.map(|()| Empty::new()))
    }

    async fn subscribe(
        &self,
        ctx: &TtrpcContext,
        req: pb::SubscribeRequest,
        sink: ServerStreamSender<pb::Envelope>,
    ) -> ttrpc::Result<()> {
        reply("subscribe", self.relay(ctx, &req.filters, &sink).await)
    }
}

/// containerd's shim-facing events service: shims forward their task
/// events here as they would to containerd.
#[derive(Debug)]
struct ContainerdEvents {
    exchange: Arc<Exchange>,
}

#[async_trait]
impl containerd::Events for ContainerdEvents {
    async fn forward(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerdForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let result = match req.envelope.into_option() {
            Some(envelope) => self.exchange.try_forward(Envelope {
                timestamp: berth_api::time::system_time(&envelope.timestamp),
                event: envelope.event.as_ref().map(any_from_pb).unwrap_or_default(),
                namespace: envelope.namespace,
                topic: envelope.topic,
            }),
            None => Err(Error::invalid_argument("forward without an envelope")),
        };
        reply("forward", result.map(|()| Empty::new()))
    }
}
