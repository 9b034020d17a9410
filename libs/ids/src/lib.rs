//! Names and digests that come from requests and images, checked before
//! anything is done with them.
//!
//! Nothing a caller sends may become part of a filesystem path without first
//! passing through this crate; the rules here are the project's one place for
//! what a namespace, id, ingest ref, label or digest may look like.

mod descriptor;
mod digest;
mod validate;

pub use descriptor::{Descriptor, Platform};
pub use digest::{Digest, Sha256Checkpoint, Sha256Hasher};
pub use validate::{
    validate_id, validate_labels, validate_namespace, validate_ref, ValidationError,
    DEFAULT_NAMESPACE, MAX_ID_LEN, MAX_LABELS_SIZE, MAX_LABEL_SIZE, MAX_REF_LEN,
};
