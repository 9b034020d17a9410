//! berth's label vocabulary: every label key a daemon or client writes or
//! reads to tie objects together. Most are containerd's, so images and
//! leases written by containerd's tools mean the same thing here.

/// Prefix of the label that ties a blob or snapshot to a lease (see
/// [`lease`]).
pub const LEASE_PREFIX: &str = "berth.io/lease.";

/// The label that ties a blob or snapshot to lease `lease_id`: contentd and
/// snapd put it on what they create under a lease, and metad's collector
/// reads it as "held by that lease".
pub fn lease(lease_id: &str) -> String {
    format!("{LEASE_PREFIX}{lease_id}")
}

/// The value of a lease label: when the object was tied to the lease, in
/// seconds since the epoch (for people reading labels; the collector only
/// looks at the key).
pub fn lease_value() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string()
}

/// Label on a lease: when it expires (RFC 3339); an expired lease holds
/// nothing and the collector deletes it.
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// Label on a lease: hold only what the lease names, not what that refers to.
pub const GC_FLAT: &str = "containerd.io/gc.flat";
/// Label on any object: a root of the collection.
pub const GC_ROOT: &str = "containerd.io/gc.root";

/// A reference to a blob (value: its digest): `GC_REF_CONTENT` alone, or
/// followed by `.NAME` or `/NAME`.
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// A reference to a snapshot (value: its name): followed by the
/// snapshotter's name, and optionally `/NAME`.
pub const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

/// What an image manifest says of its config blob.
pub const GC_REF_CONFIG: &str = "containerd.io/gc.ref.content.config";

/// The reference from an image manifest to its layer `index`.
pub fn gc_ref_layer(index: usize) -> String {
    format!("{GC_REF_CONTENT}.l.{index}")
}

/// The reference from an image index to its manifest `index`.
pub fn gc_ref_manifest(index: usize) -> String {
    format!("{GC_REF_CONTENT}.m.{index}")
}

/// The reference from an image's config blob to the snapshot chain it was
/// unpacked into, in `snapshotter` (its canonical name).
pub fn gc_ref_snapshot(snapshotter: &str) -> String {
    format!("{GC_REF_SNAPSHOT}{snapshotter}")
}

/// Prefix of the label that says which repository of a registry a blob came
/// from (`containerd.io/distribution.source.HOST` = `REPOSITORY`), so a
/// push to the same registry can mount it instead of uploading it.
pub const DISTRIBUTION_SOURCE_PREFIX: &str = "containerd.io/distribution.source.";

/// The distribution-source label key for registry `host`.
pub fn distribution_source(host: &str) -> String {
    format!("{DISTRIBUTION_SOURCE_PREFIX}{host}")
}

/// Label on a new active snapshot: the uid mapping (`CONTAINER:HOST:SIZE`,
/// comma-separated) of the user namespace its container runs in. The
/// snapshotter gives the snapshot's root to the mapped root and mounts
/// the parents id-mapped (`uidmap=` on the overlay), as containerd's
/// overlay snapshotter does.
pub const SNAPSHOT_UID_MAPPING: &str = "containerd.io/snapshot/uidmapping";
/// The gid mapping beside [`SNAPSHOT_UID_MAPPING`]; both or neither.
pub const SNAPSHOT_GID_MAPPING: &str = "containerd.io/snapshot/gidmapping";

/// The OCI annotation naming an image in an image layout's index.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with an image's full name in an exported index.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_containerds() {
        assert_eq!(lease("pull-1"), "berth.io/lease.pull-1");
        assert_eq!(gc_ref_layer(3), "containerd.io/gc.ref.content.l.3");
        assert_eq!(gc_ref_manifest(0), "containerd.io/gc.ref.content.m.0");
        assert!(GC_REF_CONFIG.starts_with(GC_REF_CONTENT));
        assert_eq!(
            gc_ref_snapshot("overlayfs"),
            "containerd.io/gc.ref.snapshot.overlayfs"
        );
        assert_eq!(
            distribution_source("127.0.0.1:5000"),
            "containerd.io/distribution.source.127.0.0.1:5000"
        );
    }
}
