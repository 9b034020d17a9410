//! The fields filters see on each record, as containerd's adaptors show
//! them: a field is present only when it is not empty, and `labels.KEY`
//! only when the record has that label.

use berth_filters::Adaptor;

use crate::{Container, Image, Labels, Lease, Namespace};

/// `labels.KEY`: the rest of the path, joined with `.`, is the key (so
/// `labels."a.b"` and `labels.a.b` both name the label `a.b`).
fn label(labels: &Labels, key: &[String]) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    labels.get(&key.join(".")).cloned()
}

fn present(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// `name` and `labels.KEY` of a namespace.
#[derive(Debug)]
pub struct NamespaceFields<'a>(pub &'a Namespace);

impl Adaptor for NamespaceFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => present(&self.0.name),
            [f, key @ ..] if f == "labels" => label(&self.0.labels, key),
            _ => None,
        }
    }
}

/// `name`, `target.digest`, `target.mediatype`, `labels.KEY` and
/// `annotations.KEY` (the target's) of an image.
#[derive(Debug)]
pub struct ImageFields<'a>(pub &'a Image);

impl Adaptor for ImageFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let image = self.0;
        match path {
            [f] if f == "name" => present(&image.name),
            [f, g] if f == "target" && g == "digest" => Some(image.target.digest.to_string()),
            [f, g] if f == "target" && g == "mediatype" => present(&image.target.media_type),
            [f, key @ ..] if f == "labels" => label(&image.labels, key),
            [f, key @ ..] if f == "annotations" => label(&image.target.annotations, key),
            _ => None,
        }
    }
}

/// `id`, `image`, `runtime.name`, `snapshotter`, `snapshot_key` (also
/// `snapshotkey`, containerd's spelling in update paths), `sandbox` and
/// `labels.KEY` of a container.
#[derive(Debug)]
pub struct ContainerFields<'a>(pub &'a Container);

impl Adaptor for ContainerFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let container = self.0;
        match path {
            [f] if f == "id" => present(&container.id),
            [f] if f == "image" => present(&container.image),
            [f, g] if f == "runtime" && g == "name" => present(&container.runtime.name),
            [f] if f == "snapshotter" => present(&container.snapshotter),
            [f] if f == "snapshot_key" || f == "snapshotkey" => present(&container.snapshot_key),
            [f] if f == "sandbox" => present(&container.sandbox),
            [f, key @ ..] if f == "labels" => label(&container.labels, key),
            _ => None,
        }
    }
}

/// `id` and `labels.KEY` of a lease.
#[derive(Debug)]
pub struct LeaseFields<'a>(pub &'a Lease);

impl Adaptor for LeaseFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "id" => present(&self.0.id),
            [f, key @ ..] if f == "labels" => label(&self.0.labels, key),
            _ => None,
        }
    }
}
