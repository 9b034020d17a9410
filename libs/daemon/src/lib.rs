//! The bootstrap every berth daemon shares.
//!
//! A daemon's `main` parses [`DaemonFlags`] (with its own flags beside them),
//! calls [`start`] (config, logging, directories, the async runtime),
//! builds its store, and hands its ttrpc services to [`serve`], which binds
//! or inherits the socket, checks every caller's credentials, tells systemd
//! it is ready, and returns after a graceful SIGTERM.

mod blocking;
mod config;
mod connection;
mod error;
mod liveness;
pub mod lmdb;
mod logging;
pub mod memory;
mod metrics;
mod passed;
mod peer;
mod request;
mod serve;
mod socket;
mod start;

pub use blocking::blocking;
pub use config::{
    default_config_toml, peer_socket, DaemonConfig, DaemonFlags, Defaults, LogFormat,
};
pub use connection::{FrameHeader, FrameReader, FRAME_TYPE_REQUEST};
pub use error::DaemonError;
pub use liveness::peer_hung_up;
pub use logging::init_logging;
pub use metrics::{serve_metrics, Metrics, MetricsAddress, Sampled, Sampler};
pub use passed::take_passed_file;
pub use peer::PeerPolicy;
/// The metrics types a daemon registers its own counters with.
pub use prometheus_client;
pub use request::{reply, request_lease, request_namespace};
pub use serve::{serve, start_server};
pub use socket::{prepare_dirs, SocketSource};
pub use start::{start, Scheduler};
/// A value in a daemon's config file (for [`default_config_toml`]).
pub use toml::Value as ConfigValue;
