//! The event exchange: every daemon's events (metad's own record changes,
//! taskd's and the shims' task events) fan out from here to subscribers, as
//! containerd's events service does.
//!
//! Publishers never wait for subscribers. Each subscriber has a bounded
//! queue (events and bytes, [`ExchangeLimits`]); one that falls behind is
//! ended with ResourceExhausted and its queue freed. Each subscriber sees
//! events in publish order.
//!
//! Served as `berth.events.v1.Events` (Publish, Forward, Subscribe) and as
//! containerd's `containerd.services.events.ttrpc.v1.Events` (Forward), which
//! shims call; see [`ttrpc_services`].

mod exchange;
mod fields;
mod service;
mod validate;

pub use exchange::{close_on_termination, Exchange, ExchangeLimits, ExchangeStats, Subscription};
pub use service::ttrpc_services;
pub use validate::{validate_envelope, validate_topic, MAX_TOPIC_LEN};
