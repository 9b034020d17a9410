//! What a label on a blob or snapshot means to the collector.
//!
//! The keys are containerd's: `containerd.io/gc.ref.content[.NAME|/NAME]`
//! (value: a digest) and `containerd.io/gc.ref.snapshot.SNAPSHOTTER[/NAME]`
//! (value: a snapshot key) point from the labelled object to another;
//! `containerd.io/gc.bref.content...` and `containerd.io/gc.bref.snapshot...`
//! point back (the labelled object lives as long as the one named);
//! `containerd.io/gc.root` makes the object a root. berth adds
//! `berth.io/lease.ID`, set by contentd and snapd on what they create for a
//! call made under lease ID.

use berth_api::labels::{
    GC_REF_CONTENT as CONTENT_REF, GC_REF_SNAPSHOT as SNAPSHOT_REF, GC_ROOT as LABEL_GC_ROOT,
    LEASE_PREFIX as LEASE_LABEL_PREFIX,
};

const CONTENT_BACK_REF: &str = "containerd.io/gc.bref.content";
const SNAPSHOT_BACK_REF: &str = "containerd.io/gc.bref.snapshot.";

/// Another object a label names, in the labelled object's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// A blob, by digest.
    Content(&'a str),
    /// A snapshot of a snapshotter, by key.
    Snapshot { snapshotter: &'a str, key: &'a str },
}

/// What one label says about the collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Meaning<'a> {
    /// The labelled object keeps this one alive.
    Ref(Target<'a>),
    /// The labelled object lives as long as this one does.
    BackRef(Target<'a>),
    /// The labelled object is a root.
    Root,
    /// The labelled object is held by this lease (if the lease is live).
    Lease(&'a str),
    /// Nothing the collector cares about.
    None,
}

/// Reads one label.
pub(crate) fn meaning<'a>(key: &'a str, value: &'a str) -> Meaning<'a> {
    if key == LABEL_GC_ROOT {
        return Meaning::Root;
    }
    if let Some(lease) = key.strip_prefix(LEASE_LABEL_PREFIX) {
        return if lease.is_empty() {
            Meaning::None
        } else {
            Meaning::Lease(lease)
        };
    }
    if value.is_empty() {
        return Meaning::None;
    }
    if let Some(target) = target(key, value, CONTENT_REF, SNAPSHOT_REF) {
        return Meaning::Ref(target);
    }
    if let Some(target) = target(key, value, CONTENT_BACK_REF, SNAPSHOT_BACK_REF) {
        return Meaning::BackRef(target);
    }
    Meaning::None
}

fn target<'a>(
    key: &'a str,
    value: &'a str,
    content_prefix: &str,
    snapshot_prefix: &str,
) -> Option<Target<'a>> {
    if let Some(rest) = key.strip_prefix(content_prefix) {
        // `...content`, `...content.config`, `...content/l.0`, but not
        // `...contents`.
        return (rest.is_empty() || rest.starts_with(['.', '/'])).then_some(Target::Content(value));
    }
    let rest = key.strip_prefix(snapshot_prefix)?;
    // `...snapshot.overlayfs` or `...snapshot.overlayfs/anything`.
    let snapshotter = rest.split('/').next().unwrap_or_default();
    (!snapshotter.is_empty()).then_some(Target::Snapshot {
        snapshotter,
        key: value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_references_by_name_or_without() {
        let d = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        for key in [
            "containerd.io/gc.ref.content",
            "containerd.io/gc.ref.content.config",
            "containerd.io/gc.ref.content.l.0",
            "containerd.io/gc.ref.content/m/1",
        ] {
            assert_eq!(meaning(key, d), Meaning::Ref(Target::Content(d)), "{key}");
        }
        assert_eq!(meaning("containerd.io/gc.ref.contents", d), Meaning::None);
        assert_eq!(
            meaning("containerd.io/gc.ref.content.config", ""),
            Meaning::None
        );
    }

    #[test]
    fn snapshot_references_name_their_snapshotter() {
        assert_eq!(
            meaning("containerd.io/gc.ref.snapshot.overlayfs", "chain"),
            Meaning::Ref(Target::Snapshot {
                snapshotter: "overlayfs",
                key: "chain"
            })
        );
        assert_eq!(
            meaning("containerd.io/gc.ref.snapshot.native/extra", "k"),
            Meaning::Ref(Target::Snapshot {
                snapshotter: "native",
                key: "k"
            })
        );
        assert_eq!(
            meaning("containerd.io/gc.ref.snapshot.", "k"),
            Meaning::None
        );
        assert_eq!(
            meaning("containerd.io/gc.ref.snapshot./x", "k"),
            Meaning::None
        );
    }

    #[test]
    fn back_references_roots_and_leases() {
        assert_eq!(
            meaning("containerd.io/gc.bref.content.parent", "sha256:x"),
            Meaning::BackRef(Target::Content("sha256:x"))
        );
        assert_eq!(
            meaning("containerd.io/gc.bref.snapshot.overlayfs", "k"),
            Meaning::BackRef(Target::Snapshot {
                snapshotter: "overlayfs",
                key: "k"
            })
        );
        assert_eq!(meaning("containerd.io/gc.root", ""), Meaning::Root);
        assert_eq!(meaning("containerd.io/gc.root", "yes"), Meaning::Root);
        assert_eq!(
            meaning(&berth_api::lease_label("pull-1"), "1700000000"),
            Meaning::Lease("pull-1")
        );
        assert_eq!(meaning(LEASE_LABEL_PREFIX, "x"), Meaning::None);
        assert_eq!(meaning("containerd.io/gc.expire", "x"), Meaning::None);
        assert_eq!(meaning("org.example", "x"), Meaning::None);
    }
}
