//! The event exchange. (Interface fixed; the implementation is being written.)

use std::sync::Arc;

use berth_metadata::{Any, Envelope};

/// Fans published envelopes out to subscribers without ever blocking a
/// publisher.
#[derive(Debug, Default)]
pub struct Exchange {}

impl Exchange {
    pub fn new() -> Arc<Exchange> {
        Arc::new(Exchange::default())
    }

    /// An event from metad itself or a Publish call: stamped now.
    pub fn publish(&self, namespace: &str, topic: &str, event: Any) {
        let _ = (namespace, topic, event);
    }

    /// An envelope relayed as it is.
    pub fn forward(&self, envelope: Envelope) {
        let _ = envelope;
    }
}
