//! berth-snapd: the snapshot daemon.
//!
//! [`local::LocalSnapshotter`] keeps snapshots under
//! `<root>/<snapshotter>/snapshots/<id>/` with their records in LMDB
//! (`<root>/meta`, [`records`]); [`apply`] writes layer tarballs into a
//! snapshot without ever leaving it; [`unpack`] turns an image's layers
//! from berth-contentd into committed snapshots named by chain ID;
//! [`write_back`] makes sure a committed snapshot's files are on disk, or
//! discards it after a power cut; [`service`] serves it all over ttrpc as
//! `berth.snapshots.v1`.

pub mod apply;
pub mod copy;
pub mod diff;
pub mod local;
pub mod metrics;
pub(crate) mod os;
pub mod records;
pub mod service;
pub(crate) mod tree;
pub mod unpack;
pub mod write_back;
pub(crate) mod xattr;
