//! The snapshotter contract.
//!
//! [`Snapshotter`] is implemented twice: by berth-snapd's local snapshotters
//! (overlayfs and native, metadata in LMDB) and by berth-client's ttrpc
//! proxy. The conformance suite in [`testsuite`] (feature `testsuite`) runs
//! against both. Semantics follow containerd's snapshotters: active
//! snapshots are writable, views read-only, committed snapshots immutable
//! and usable as parents; keys and names share one space per namespace.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use berth_errdefs::{Error, Result};

mod leased;
#[cfg(feature = "testsuite")]
pub mod loop_mount;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod wire;

/// Labels on a snapshot.
pub type Labels = HashMap<String, String>;

pub use leased::Leased;

/// The snapshotter used when a request names none.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// The canonical name of a snapshotter a request names: snapd also answers
/// to `overlay` (and to no name at all) for overlayfs, but labels and the
/// collector only ever use the canonical name.
pub fn canonical_snapshotter(name: &str) -> &str {
    match name {
        "" | "overlay" => DEFAULT_SNAPSHOTTER,
        other => other,
    }
}

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Read-only, never committed.
    View,
    /// Writable, until committed.
    Active,
    /// Immutable; may be a parent.
    Committed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot as its namespace sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub kind: Kind,
    /// The key (active, view) or name (committed).
    pub name: String,
    pub parent: Option<String>,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// Disk used by a snapshot itself (not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// One mount, for the caller to perform (with [`berth_mount::mount_all`]).
pub use berth_mount::Mount;

/// A blob descriptor, as OCI manifests have them (the one model:
/// [`berth_ids::Descriptor`]).
pub use berth_ids::Descriptor;

/// A layer a diff stored: the blob, and the digest of its uncompressed
/// tar (the image config's diff ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffLayer {
    pub descriptor: Descriptor,
    pub diff_id: berth_ids::Digest,
}

/// The snapshots of one snapshotter.
///
/// Every method takes the namespace first; implementations validate it and
/// every key and name.
#[async_trait]
pub trait Snapshotter: Send + Sync {
    async fn stat(&self, namespace: &str, key: &str) -> Result<Info>;

    /// Changes labels. With no paths, or the path `labels`, the labels are
    /// replaced; with `labels.KEY` paths only those keys change.
    async fn update(&self, namespace: &str, info: Info, paths: &[String]) -> Result<Info>;

    async fn usage(&self, namespace: &str, key: &str) -> Result<Usage>;

    async fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>>;

    /// A new active snapshot on `parent` (which must be committed).
    async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>>;

    /// A new read-only view of `parent`.
    async fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> Result<Vec<Mount>>;

    /// Makes the active snapshot `key` the committed snapshot `name`.
    async fn commit(&self, namespace: &str, name: &str, key: &str, labels: Labels) -> Result<()>;

    /// FailedPrecondition while the snapshot has children.
    async fn remove(&self, namespace: &str, key: &str) -> Result<()>;

    /// Removes the snapshot only if its `updated_at` is still `seen` (what
    /// the caller read before deciding): FailedPrecondition if it was
    /// touched since, or has children. The garbage collector removes this
    /// way, so a snapshot that gains a label meanwhile survives.
    async fn remove_if_unchanged(
        &self,
        namespace: &str,
        key: &str,
        seen: std::time::SystemTime,
    ) -> Result<()>;

    /// Snapshots matching any of the filters (containerd syntax over
    /// `name`, `parent`, `kind` and `labels.KEY`); all with none.
    async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>>;

    /// Removes directories that no snapshot owns (left by a crash).
    async fn cleanup(&self) -> Result<()>;

    /// Unties every snapshot of the namespace from `lease` (removes its
    /// [`berth_api::labels::lease`] label) in one call, leaving their other
    /// labels alone; returns how many snapshots it untied.
    async fn release_lease(&self, namespace: &str, lease: &str) -> Result<u64> {
        let key = berth_api::labels::lease(lease);
        let mut released = 0;
        for info in self.list(namespace, &[]).await? {
            if !info.labels.contains_key(&key) {
                continue;
            }
            let untie = Info {
                labels: Labels::new(),
                ..info
            };
            match self
                .update(namespace, untie, &[format!("labels.{key}")])
                .await
            {
                Ok(_) => released += 1,
                // Removed meanwhile: nothing left to untie.
                Err(e) if e.is(berth_errdefs::ErrorKind::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(released)
    }
}

/// Sets (or with `None`, removes) one label of snapshot `name`, leaving
/// its other labels alone; like any label change, it moves `updated_at`.
pub async fn set_label(
    snapshotter: &dyn Snapshotter,
    namespace: &str,
    name: &str,
    key: &str,
    value: Option<String>,
) -> Result<()> {
    // Update reads only the name and the labels the paths name.
    let info = Info {
        kind: Kind::Committed,
        name: name.to_string(),
        parent: None,
        labels: value.map(|v| (key.to_string(), v)).into_iter().collect(),
        created_at: SystemTime::UNIX_EPOCH,
        updated_at: SystemTime::UNIX_EPOCH,
    };
    snapshotter
        .update(namespace, info, &[format!("labels.{key}")])
        .await
        .map(|_| ())
}

/// Applies a label update the way [`Snapshotter::update`] documents.
pub fn apply_label_update(current: &mut Labels, new: &Labels, paths: &[String]) -> Result<()> {
    if paths.is_empty() || paths.iter().any(|p| p == "labels") {
        *current = new.clone();
        return Ok(());
    }
    for path in paths {
        let Some(key) = path.strip_prefix("labels.") else {
            return Err(Error::invalid_argument(format!(
                "cannot update {path:?}: only labels and labels.KEY can change"
            )));
        };
        match new.get(key) {
            Some(value) => {
                current.insert(key.to_string(), value.clone());
            }
            None => {
                current.remove(key);
            }
        }
    }
    Ok(())
}

/// Validates a snapshotter name from a request (it selects an
/// implementation; it never becomes a path).
pub fn validate_key(what: &str, key: &str) -> Result<()> {
    berth_ids::validate_ref(key).map_err(|e| Error::invalid_argument(format!("{what}: {e}")))
}

/// The chain ID of a layer stack, per the OCI image spec:
/// `chain(n) = sha256(chain(n-1) + " " + diff_id(n))`, `chain(0) = diff_id(0)`.
pub fn chain_ids(diff_ids: &[berth_ids::Digest]) -> Vec<berth_ids::Digest> {
    let mut chains: Vec<berth_ids::Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chains.last() {
            None => diff_id.clone(),
            Some(parent) => berth_ids::Digest::of(format!("{parent} {diff_id}").as_bytes()),
        };
        chains.push(next);
    }
    chains
}

/// `name`, `parent`, `kind` and `labels.KEY` of a snapshot, for filters.
#[derive(Debug)]
pub struct InfoFields<'a>(pub &'a Info);

impl berth_filters::Adaptor for InfoFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.0.name.clone()),
            [f] if f == "parent" => self.0.parent.clone(),
            [f] if f == "kind" => Some(self.0.kind.as_str().to_string()),
            [f, key @ ..] if f == "labels" && !key.is_empty() => {
                self.0.labels.get(&key.join(".")).cloned()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_ids::Digest;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        let chains = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(chains[0], a);
        let ab = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chains[1], ab);
        assert_eq!(chains[2], Digest::of(format!("{ab} {c}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn label_updates_by_field_path() {
        let mut labels: Labels = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let new: Labels = [("b".into(), "3".into())].into();
        apply_label_update(&mut labels, &new, &["labels.b".into(), "labels.a".into()]).unwrap();
        assert_eq!(labels, new);
        let err = apply_label_update(&mut labels, &new, &["name".into()]).unwrap_err();
        assert_eq!(err.kind(), berth_errdefs::ErrorKind::InvalidArgument);
        apply_label_update(&mut labels, &Labels::new(), &[]).unwrap();
        assert!(labels.is_empty());
    }

    #[test]
    fn keys_are_validated() {
        for bad in ["", "../x", "a/b", "x\0y"] {
            assert!(validate_key("key", bad).is_err(), "{bad:?}");
        }
        assert!(validate_key("key", "sha256:0123abcd").is_ok());
    }
}
