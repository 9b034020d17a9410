//! berth-contentd: the content store daemon.
//!
//! [`store::LocalStore`] keeps blobs under `<root>/blobs/sha256/` and their
//! per-namespace records and ingest state in LMDB (`<root>/meta`);
//! [`service::ContentService`] serves it over ttrpc as `berth.content.v1`.

pub mod ingest;
pub mod metrics;
pub mod records;
pub mod reorder;
pub mod service;
pub mod store;
pub mod transfer;
