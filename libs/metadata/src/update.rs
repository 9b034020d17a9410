//! Field-path updates, with containerd's rules: with paths, only the named
//! fields change (`labels.KEY` sets one label, or removes it when the new
//! record does not have it); without, every updatable field is replaced.
//! An unknown or immutable path is InvalidArgument. As containerd stores
//! them, labels never keep an empty value: setting one removes the label.
//!
//! These functions compute the updated record; the store keeps names,
//! ids and creation times, sets the update time, and validates the result.

use std::collections::{BTreeMap, HashMap};

use berth_errdefs::{Error, Result};

use crate::{Container, Image, Lease, Namespace};

/// Drops labels (or annotations) whose value is empty, as containerd does
/// on every write.
pub fn drop_empty_values(labels: &mut HashMap<String, String>) {
    labels.retain(|_, value| !value.is_empty());
}

/// `prefix.KEY` of a path, if it has that form; InvalidArgument for an
/// empty key.
fn keyed<'p>(path: &'p str, prefix: &str) -> Result<Option<&'p str>> {
    match path
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
    {
        Some("") => Err(Error::invalid_argument(format!(
            "update path {path:?} names an empty key"
        ))),
        other => Ok(other),
    }
}

fn set_or_remove<V: Clone>(current: &mut HashMap<String, V>, new: &HashMap<String, V>, key: &str) {
    match new.get(key) {
        Some(value) => {
            current.insert(key.to_string(), value.clone());
        }
        None => {
            current.remove(key);
        }
    }
}

fn set_or_remove_sorted<V: Clone>(
    current: &mut BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    key: &str,
) {
    match new.get(key) {
        Some(value) => {
            current.insert(key.to_string(), value.clone());
        }
        None => {
            current.remove(key);
        }
    }
}

fn cannot(path: &str, what: &str, allowed: &str) -> Error {
    Error::invalid_argument(format!(
        "cannot update {path:?} of {what}: the update paths are {allowed}"
    ))
}

/// Paths: `labels`, `labels.KEY`; none replaces the labels.
pub fn apply_namespace_update(
    current: &Namespace,
    new: Namespace,
    paths: &[String],
) -> Result<Namespace> {
    let mut updated = current.clone();
    updated.labels = updated_labels(
        &current.labels,
        &new.labels,
        paths,
        &format!("namespace {}", current.name),
    )?;
    Ok(updated)
}

/// Paths: `labels`, `labels.KEY`; none replaces the labels. id and
/// creation time never change.
pub fn apply_lease_update(current: &Lease, new: Lease, paths: &[String]) -> Result<Lease> {
    let mut updated = current.clone();
    updated.labels = updated_labels(
        &current.labels,
        &new.labels,
        paths,
        &format!("lease {}", current.id),
    )?;
    Ok(updated)
}

/// The labels of a record whose labels are all that may change.
fn updated_labels(
    current: &HashMap<String, String>,
    new: &HashMap<String, String>,
    paths: &[String],
    what: &str,
) -> Result<HashMap<String, String>> {
    let mut updated = current.clone();
    if paths.is_empty() {
        updated = new.clone();
    }
    for path in paths {
        if let Some(key) = keyed(path, "labels")? {
            set_or_remove(&mut updated, new, key);
        } else if path == "labels" {
            updated = new.clone();
        } else {
            return Err(cannot(path, what, "labels and labels.KEY"));
        }
    }
    drop_empty_values(&mut updated);
    Ok(updated)
}

/// Paths: `labels`, `labels.KEY`, `target` (as a whole), `annotations`,
/// `annotations.KEY` (the target's); none replaces labels and target.
pub fn apply_image_update(current: &Image, new: Image, paths: &[String]) -> Result<Image> {
    let mut updated = current.clone();
    if paths.is_empty() {
        updated.labels = new.labels;
        updated.target = new.target;
    } else {
        for path in paths {
            if let Some(key) = keyed(path, "labels")? {
                set_or_remove(&mut updated.labels, &new.labels, key);
            } else if let Some(key) = keyed(path, "annotations")? {
                set_or_remove(
                    &mut updated.target.annotations,
                    &new.target.annotations,
                    key,
                );
            } else {
                match path.as_str() {
                    "labels" => updated.labels = new.labels.clone(),
                    // The target changes as a unit: a digest without its
                    // size and media type means nothing.
                    "target" => updated.target = new.target.clone(),
                    "annotations" => updated.target.annotations = new.target.annotations.clone(),
                    _ => {
                        return Err(cannot(
                            path,
                            &format!("image {}", current.name),
                            "labels, labels.KEY, target, annotations and annotations.KEY",
                        ))
                    }
                }
            }
        }
    }
    drop_empty_values(&mut updated.labels);
    drop_empty_values(&mut updated.target.annotations);
    Ok(updated)
}

const CONTAINER_PATHS: &str =
    "labels, labels.KEY, image, spec, snapshot_key (or snapshotkey), runtime, extensions and extensions.KEY";

/// Paths: `labels`, `labels.KEY`, `image`, `spec`, `snapshot_key` (or
/// containerd's `snapshotkey`), `runtime`, `extensions`, `extensions.KEY`.
/// None replaces all of those, and then (as in containerd) the new record
/// must have the same snapshotter and runtime name: a full replace never
/// changes what a container's filesystem or runtime is. The id,
/// snapshotter, sandbox and creation time never change.
pub fn apply_container_update(
    current: &Container,
    new: Container,
    paths: &[String],
) -> Result<Container> {
    let mut updated = current.clone();
    if paths.is_empty() {
        if new.snapshotter != current.snapshotter {
            return Err(Error::invalid_argument(format!(
                "container {}: the snapshotter cannot change ({:?} to {:?})",
                current.id, current.snapshotter, new.snapshotter
            )));
        }
        if new.runtime.name != current.runtime.name {
            return Err(Error::invalid_argument(format!(
                "container {}: a full update cannot change the runtime name ({:?} to {:?}); name the runtime path",
                current.id, current.runtime.name, new.runtime.name
            )));
        }
        updated.labels = new.labels;
        updated.image = new.image;
        updated.spec = new.spec;
        updated.snapshot_key = new.snapshot_key;
        updated.runtime = new.runtime;
        updated.extensions = new.extensions;
    } else {
        for path in paths {
            if let Some(key) = keyed(path, "labels")? {
                set_or_remove(&mut updated.labels, &new.labels, key);
            } else if let Some(key) = keyed(path, "extensions")? {
                set_or_remove_sorted(&mut updated.extensions, &new.extensions, key);
            } else {
                match path.as_str() {
                    "labels" => updated.labels = new.labels.clone(),
                    "image" => updated.image = new.image.clone(),
                    "spec" => updated.spec = new.spec.clone(),
                    "snapshot_key" | "snapshotkey" => {
                        updated.snapshot_key = new.snapshot_key.clone()
                    }
                    "runtime" => updated.runtime = new.runtime.clone(),
                    "extensions" => updated.extensions = new.extensions.clone(),
                    "id" | "snapshotter" | "sandbox" | "created_at" | "createdat" => {
                        return Err(Error::invalid_argument(format!(
                            "container {}: {path} cannot change",
                            current.id
                        )))
                    }
                    _ => {
                        return Err(cannot(
                            path,
                            &format!("container {}", current.id),
                            CONTAINER_PATHS,
                        ))
                    }
                }
            }
        }
    }
    drop_empty_values(&mut updated.labels);
    Ok(updated)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, UNIX_EPOCH};

    use berth_ids::Digest;

    use super::*;
    use crate::{Any, Descriptor, Labels, Runtime};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    fn image(digest: &[u8], l: &[(&str, &str)]) -> Image {
        Image {
            name: "busybox".into(),
            labels: labels(l),
            target: Descriptor {
                urls: Vec::new(),
                platform: None,
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: Digest::of(digest),
                size: 10,
                annotations: labels(&[("a", "1")]),
            },
            created_at: UNIX_EPOCH + Duration::from_secs(5),
            updated_at: UNIX_EPOCH + Duration::from_secs(5),
        }
    }

    #[test]
    fn image_paths_touch_only_what_they_name() {
        let current = image(b"old", &[("keep", "1"), ("change", "1"), ("drop", "1")]);
        let new = image(b"new", &[("change", "2"), ("other", "x")]);
        let updated = apply_image_update(
            &current,
            new.clone(),
            &paths(&["labels.change", "labels.drop"]),
        )
        .unwrap();
        assert_eq!(updated.labels, labels(&[("keep", "1"), ("change", "2")]));
        assert_eq!(updated.target, current.target);
        assert_eq!(updated.created_at, current.created_at);

        let updated = apply_image_update(&current, new.clone(), &paths(&["target"])).unwrap();
        assert_eq!(updated.target, new.target);
        assert_eq!(updated.labels, current.labels);

        let updated = apply_image_update(&current, new.clone(), &[]).unwrap();
        assert_eq!(updated.target, new.target);
        assert_eq!(updated.labels, new.labels);
        assert_eq!(updated.name, current.name);

        let err = apply_image_update(&current, new, &paths(&["labels.x", "name"])).unwrap_err();
        assert_eq!(err.kind(), berth_errdefs::ErrorKind::InvalidArgument);
    }

    #[test]
    fn empty_label_values_remove_the_label() {
        let current = image(b"x", &[("a", "1"), ("b", "2")]);
        let new = image(b"x", &[("a", ""), ("c", "")]);
        let updated = apply_image_update(&current, new, &paths(&["labels.a", "labels.c"])).unwrap();
        assert_eq!(updated.labels, labels(&[("b", "2")]));
    }

    fn container() -> Container {
        Container {
            id: "c1".into(),
            labels: labels(&[("a", "1")]),
            image: "busybox".into(),
            runtime: Runtime {
                name: "io.containerd.berth.v2".into(),
                options: None,
            },
            spec: Some(Any {
                type_url: "spec".into(),
                value: b"{}".to_vec(),
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: "c1".into(),
            created_at: UNIX_EPOCH,
            updated_at: UNIX_EPOCH,
            extensions: BTreeMap::new(),
            sandbox: String::new(),
        }
    }

    #[test]
    fn container_immutables_stay() {
        let current = container();
        let mut new = container();
        new.snapshotter = "native".into();
        for p in [&[][..], &paths(&["snapshotter"])[..], &paths(&["id"])[..]] {
            let err = apply_container_update(&current, new.clone(), p).unwrap_err();
            assert_eq!(
                err.kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{p:?}"
            );
        }
        // A named path changes only itself even when others differ.
        new.image = "alpine".into();
        let updated = apply_container_update(&current, new.clone(), &paths(&["image"])).unwrap();
        assert_eq!(updated.image, "alpine");
        assert_eq!(updated.snapshotter, "overlayfs");
        // containerd's spelling of the snapshot key path.
        new.snapshot_key = "other".into();
        let updated = apply_container_update(&current, new, &paths(&["snapshotkey"])).unwrap();
        assert_eq!(updated.snapshot_key, "other");
        assert_eq!(updated.image, "busybox");
    }

    #[test]
    fn namespace_labels() {
        let current = Namespace {
            name: "ns".into(),
            labels: labels(&[("a", "1"), ("b", "2")]),
        };
        let new = Namespace {
            name: "ns".into(),
            labels: labels(&[("b", "3")]),
        };
        let updated = apply_namespace_update(&current, new.clone(), &paths(&["labels.b"])).unwrap();
        assert_eq!(updated.labels, labels(&[("a", "1"), ("b", "3")]));
        let updated = apply_namespace_update(&current, new.clone(), &[]).unwrap();
        assert_eq!(updated.labels, labels(&[("b", "3")]));
        assert!(apply_namespace_update(&current, new.clone(), &paths(&["labels."])).is_err());
        assert!(apply_namespace_update(&current, new, &paths(&["name"])).is_err());
    }
}
