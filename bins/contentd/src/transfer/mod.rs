//! Moving images between registries and the content store.
//!
//! The registry side is written over `reqwest` rather than a registry
//! client crate: berth must hash each blob as it arrives (one pass from the
//! socket through sha256 into the ingest file) and resume an interrupted
//! blob with an HTTP Range request from the ingest's stored offset, which
//! the registry clients on crates.io (oci-client among them) do not offer.

pub mod auth;
pub mod fetch;
pub mod hosts;
pub mod push;
pub mod registry;
pub mod service;
