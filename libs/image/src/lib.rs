//! berth-image: the one model of an image, and the image work every client
//! shares.
//!
//! - [`media`]: media types, OCI's and Docker schema 2's, as kinds.
//! - [`document`]: indexes, manifests and configs parsed with `oci-spec`
//!   under berth's bounds, their children and containerd's gc labels.
//! - [`platform`]: `os/arch[/variant]` and which manifests run here.
//! - [`progress`]: what a transfer reports, typed on both sides of the
//!   socket.
//! - [`services`]: the transfer and unpack seams (berth-client implements
//!   them over the daemons' sockets); [`store`]: reading an image back.
//! - [`pull`], [`unpack`] and [`archive`] (import, export): the orchestrations, as library calls any
//!   client makes (the CLI keeps only flags and display).
//!
//! Everything here takes image bytes as hostile: sizes are bounded before
//! parsing and every digest is checked before it names a blob.

pub mod archive;
pub mod document;
pub mod import;
pub mod media;
pub mod platform;
pub mod progress;
pub mod pull;
pub mod services;
pub mod store;
pub mod unpack;

pub use document::{
    parse_config, parse_index, parse_manifest, sniff_media_type, Config, Descriptor, DescriptorExt,
    Document, Index, Manifest, MAX_DOCUMENT_SIZE,
};
pub use import::{ImportEvent, ImportOptions, Importer};
pub use media::{Compression, Kind};
pub use oci_spec::image as spec;
pub use platform::{Matcher, Platform, PlatformExt};
pub use progress::{BlobState, Progress};
pub use pull::{PullEvent, PullOptions, Pulled, Puller};
pub use services::{Transfer, UnpackOptions, Unpacked, Unpacker};
pub use unpack::{unpack, unpack_held, UnpackedImage};
