//! An in-process berth-metad event exchange on a temp socket, for the
//! events tests.

#![allow(dead_code)] // Each test binary uses part of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_daemon::{start_server, PeerPolicy};
use berth_metad::events::{ttrpc_services, Exchange, ExchangeLimits};
use berth_metadata::Any;
use ttrpc::r#async::Server;

/// The exchange served with both event services on a socket in a temp dir,
/// guarded and checked as the daemons' connections are (which also notices
/// callers hanging up).
pub struct EventsServer {
    pub exchange: Arc<Exchange>,
    pub socket: PathBuf,
    _server: Server,
    _dir: tempfile::TempDir,
}

impl EventsServer {
    pub async fn start(limits: ExchangeLimits) -> EventsServer {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("metad.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let exchange = Exchange::with_limits(limits);
        let server = start_server(
            listener,
            PeerPolicy::new(None).unwrap(),
            ttrpc_services(exchange.clone()),
        )
        .await
        .unwrap();
        EventsServer {
            exchange,
            socket,
            _server: server,
            _dir: dir,
        }
    }

    /// Waits until `count` subscribers are registered, so that what is
    /// published next reaches them.
    pub async fn wait_for_subscribers(&self, count: usize) {
        eventually("subscribers to register", || {
            self.exchange.stats().subscribers == count
        })
        .await;
    }
}

/// Polls `condition` until it holds. The ceiling only turns a hang into a
/// failure; nothing depends on how soon the condition holds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(120);
    while !condition() {
        assert!(Instant::now() < give_up, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An opaque event carrying a sequence number and `padding` bytes.
pub fn sequence_event(n: u64, padding: usize) -> Any {
    let mut value = n.to_be_bytes().to_vec();
    value.resize(8 + padding, 0x5a);
    Any {
        type_url: "test.berth.Sequence".into(),
        value,
    }
}

pub fn sequence_of(event: &[u8]) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&event[..8]);
    u64::from_be_bytes(bytes)
}
