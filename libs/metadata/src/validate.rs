//! What a record may hold. Implementations check every record from a
//! request with these before storing it; a failure is InvalidArgument.

use std::time::SystemTime;

use berth_errdefs::{Error, Result};
use berth_ids::{validate_id, validate_labels, validate_ref, Digest};

use crate::rfc3339::parse_rfc3339;
use crate::{Any, Container, Descriptor, Image, Labels, Resource, LABEL_GC_EXPIRE};

/// Longest image name (a reference: domain, path, tag and digest).
pub const MAX_IMAGE_NAME_LEN: usize = 512;
/// Longest media type, runtime name, extension key or `Any` type URL.
pub const MAX_NAME_LEN: usize = 1024;
/// Largest opaque payload of one container, all of its spec, runtime
/// options and extensions together: a container must fit in one ttrpc
/// frame (4 MiB) with room to spare.
pub const MAX_CONTAINER_PAYLOAD: usize = 2 * 1024 * 1024;
/// The snapshotters berth-snapd serves, by the names records use.
pub const SNAPSHOTTERS: &[&str] = &["overlayfs", "native"];

/// Lease resource kind: a blob, by digest.
pub const RESOURCE_CONTENT: &str = "content";
/// Lease resource kind: an ingest in progress, by ref.
pub const RESOURCE_INGESTS: &str = "ingests";
/// Lease resource kind prefix: `snapshots/<snapshotter>`, by key.
pub const RESOURCE_SNAPSHOTS: &str = "snapshots";

fn invalid(message: String) -> Error {
    Error::invalid_argument(message)
}

/// An image name is a reference (`docker.io/library/busybox:1.36`,
/// `registry:5000/team/app@sha256:...`): letters, digits and `. _ - : / @
/// + =`, starting with a letter or digit, with no empty path component and
/// no `..`.
pub fn validate_image_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid("image name must not be empty".into()));
    }
    let shown: String = name.chars().take(80).collect();
    if name.len() > MAX_IMAGE_NAME_LEN {
        return Err(invalid(format!(
            "image name {shown:?} is longer than {MAX_IMAGE_NAME_LEN} bytes"
        )));
    }
    if let Some(bad) = name.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@' | '+' | '='))
    }) {
        return Err(invalid(format!(
            "image name {shown:?} is not valid: {bad:?} is not allowed"
        )));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid(format!(
            "image name {shown:?} is not valid: it must start with a letter or digit"
        )));
    }
    if name.ends_with('/') || name.contains("//") || name.contains("..") {
        return Err(invalid(format!(
            "image name {shown:?} is not valid: empty path component or '..'"
        )));
    }
    Ok(())
}

/// A short free-form name (media type, runtime name, extension key, type
/// URL): not empty unless `may_be_empty`, bounded, and without spaces or
/// control characters.
fn validate_name(what: &str, value: &str, may_be_empty: bool) -> Result<()> {
    if value.is_empty() {
        return if may_be_empty {
            Ok(())
        } else {
            Err(invalid(format!("{what} must not be empty")))
        };
    }
    let shown: String = value.chars().take(80).collect();
    if value.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "{what} {shown:?} is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(format!(
            "{what} {shown:?} must not contain spaces or control characters"
        )));
    }
    Ok(())
}

/// A target descriptor, as containerd checks one: a media type, a size
/// above zero; the digest is well formed by its type.
pub fn validate_descriptor(target: &Descriptor) -> Result<()> {
    validate_name("target media type", &target.media_type, false)?;
    if target.size == 0 || target.size > i64::MAX as u64 {
        return Err(invalid(format!(
            "target size must be greater than zero, not {}",
            target.size
        )));
    }
    validate_labels(&target.annotations)
        .map_err(|e| invalid(format!("target annotations: {e}")))?;
    Ok(())
}

pub fn validate_image(image: &Image) -> Result<()> {
    validate_image_name(&image.name)?;
    validate_labels(&image.labels)?;
    validate_descriptor(&image.target)
}

/// A snapshotter name: one of [`SNAPSHOTTERS`].
pub fn validate_snapshotter(name: &str) -> Result<()> {
    if SNAPSHOTTERS.contains(&name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "unknown snapshotter {name:?} (known: {})",
            SNAPSHOTTERS.join(", ")
        )))
    }
}

fn any_size(any: &Any) -> usize {
    any.type_url.len() + any.value.len()
}

fn validate_any(what: &str, any: &Any) -> Result<()> {
    validate_name(&format!("{what} type URL"), &any.type_url, false)
}

/// A container record, as containerd checks one (an id, a runtime name, a
/// spec; a snapshot key only with a snapshotter), and berth's names: ids
/// and keys by `berth-ids`, snapshotters by name, the image as an image
/// name, and the opaque payloads bounded.
pub fn validate_container(container: &Container) -> Result<()> {
    validate_id(&container.id)?;
    validate_labels(&container.labels)?;
    if !container.image.is_empty() {
        validate_image_name(&container.image)?;
    }
    validate_name("runtime name", &container.runtime.name, false)?;
    let spec = container
        .spec
        .as_ref()
        .ok_or_else(|| invalid(format!("container {} needs a spec", container.id)))?;
    validate_any("spec", spec)?;
    if let Some(options) = &container.runtime.options {
        validate_any("runtime options", options)?;
    }
    if !container.snapshotter.is_empty() {
        validate_snapshotter(&container.snapshotter)?;
    }
    if !container.snapshot_key.is_empty() {
        if container.snapshotter.is_empty() {
            return Err(invalid(format!(
                "container {} has a snapshot key but no snapshotter",
                container.id
            )));
        }
        validate_ref(&container.snapshot_key).map_err(|e| invalid(format!("snapshot key: {e}")))?;
    }
    if !container.sandbox.is_empty() {
        validate_id(&container.sandbox).map_err(|e| invalid(format!("sandbox: {e}")))?;
    }
    let mut payload = any_size(spec) + container.runtime.options.as_ref().map_or(0, any_size);
    for (key, extension) in &container.extensions {
        validate_name("extension key", key, false)?;
        validate_any(&format!("extension {key}"), extension)?;
        payload += key.len() + any_size(extension);
    }
    if payload > MAX_CONTAINER_PAYLOAD {
        return Err(invalid(format!(
            "container {}: spec, runtime options and extensions are {payload} bytes, more than the {MAX_CONTAINER_PAYLOAD} allowed",
            container.id
        )));
    }
    Ok(())
}

/// A lease's labels: valid labels, and an expiry that is an RFC 3339 time.
pub fn validate_lease_labels(labels: &Labels) -> Result<()> {
    validate_labels(labels)?;
    lease_expiry(labels)?;
    Ok(())
}

/// When a lease with these labels expires, from `containerd.io/gc.expire`.
pub fn lease_expiry(labels: &Labels) -> Result<Option<SystemTime>> {
    labels
        .get(LABEL_GC_EXPIRE)
        .map(|value| {
            parse_rfc3339(value).map_err(|e| invalid(format!("label {LABEL_GC_EXPIRE}: {e}")))
        })
        .transpose()
}

/// Checks a lease resource and returns it as stored: a content id in its
/// canonical digest form.
pub fn validate_resource(resource: &Resource) -> Result<Resource> {
    let id = match resource.kind.split_once('/') {
        None if resource.kind == RESOURCE_CONTENT => Digest::parse(&resource.id)?.to_string(),
        None if resource.kind == RESOURCE_INGESTS => {
            validate_ref(&resource.id)?;
            resource.id.clone()
        }
        Some((RESOURCE_SNAPSHOTS, snapshotter)) => {
            validate_snapshotter(snapshotter)?;
            validate_ref(&resource.id).map_err(|e| invalid(format!("snapshot key: {e}")))?;
            resource.id.clone()
        }
        _ => {
            return Err(invalid(format!(
                "unknown lease resource type {:?} (known: {RESOURCE_CONTENT}, {RESOURCE_INGESTS}, {RESOURCE_SNAPSHOTS}/<snapshotter>)",
                resource.kind.chars().take(80).collect::<String>()
            )))
        }
    };
    Ok(Resource {
        id,
        kind: resource.kind.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Runtime;
    use std::collections::BTreeMap;

    #[test]
    fn image_names_are_references() {
        for good in [
            "docker.io/library/busybox:1.36",
            "busybox",
            "localhost:5000/team/app@sha256:0123abcd",
            "registry.example.com/a_b/c-d:v1.2+build=3",
        ] {
            assert!(validate_image_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "with space",
            "tab\there",
            "ünicode",
            "-leading",
            "semi;colon",
        ] {
            assert_eq!(
                validate_image_name(bad).unwrap_err().kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
        assert!(validate_image_name(&"a".repeat(MAX_IMAGE_NAME_LEN)).is_ok());
        assert!(validate_image_name(&"a".repeat(MAX_IMAGE_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn resources_are_checked_by_kind() {
        let r = |kind: &str, id: &str| Resource {
            kind: kind.into(),
            id: id.into(),
        };
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            validate_resource(&r("content", &digest)).unwrap().id,
            digest
        );
        assert!(validate_resource(&r("ingests", "layer-sha256:ab")).is_ok());
        assert!(validate_resource(&r("snapshots/overlayfs", "k")).is_ok());
        assert!(validate_resource(&r("snapshots/native", "sha256:abc")).is_ok());
        for (kind, id) in [
            ("content", "sha256:nothex"),
            ("ingests", "../x"),
            ("snapshots/zfs", "k"),
            ("snapshots", "k"),
            ("snapshots/overlayfs/x", "k"),
            ("snapshots/overlayfs", "a/b"),
            ("images", "busybox"),
            ("", "x"),
        ] {
            assert_eq!(
                validate_resource(&r(kind, id)).unwrap_err().kind(),
                berth_errdefs::ErrorKind::InvalidArgument,
                "{kind} {id}"
            );
        }
    }

    #[test]
    fn lease_expiry_must_be_rfc3339() {
        let mut labels = Labels::new();
        assert_eq!(lease_expiry(&labels).unwrap(), None);
        labels.insert(LABEL_GC_EXPIRE.into(), "2030-01-01T00:00:00Z".into());
        assert!(lease_expiry(&labels).unwrap().is_some());
        labels.insert(LABEL_GC_EXPIRE.into(), "in an hour".into());
        assert!(validate_lease_labels(&labels).is_err());
    }

    fn container(spec_bytes: usize) -> Container {
        Container {
            id: "c".into(),
            labels: Labels::new(),
            image: String::new(),
            runtime: Runtime {
                name: "io.containerd.berth.v2".into(),
                options: None,
            },
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: vec![b'{'; spec_bytes],
            }),
            snapshotter: String::new(),
            snapshot_key: String::new(),
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
            extensions: BTreeMap::new(),
            sandbox: String::new(),
        }
    }

    #[test]
    fn container_payloads_are_bounded_at_two_mebibytes_in_all() {
        let type_url = container(0).spec.unwrap().type_url.len();
        let largest = container(MAX_CONTAINER_PAYLOAD - type_url);
        assert!(validate_container(&largest).is_ok());
        let over = container(MAX_CONTAINER_PAYLOAD - type_url + 1);
        let err = validate_container(&over).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "{} bytes, more than the 2097152 allowed",
                MAX_CONTAINER_PAYLOAD + 1
            )),
            "{err}"
        );
        // Extensions count, keys included.
        let mut with_extension = container(MAX_CONTAINER_PAYLOAD - type_url - 10);
        with_extension.extensions.insert(
            "ext".into(),
            Any {
                type_url: "t".into(),
                value: vec![0; 6],
            },
        );
        assert!(validate_container(&with_extension).is_ok());
        with_extension
            .extensions
            .get_mut("ext")
            .unwrap()
            .value
            .push(0);
        assert!(validate_container(&with_extension).is_err());
    }

    #[test]
    fn names_are_bounded_and_have_no_spaces_or_control_characters() {
        let descriptor = |media_type: &str| Descriptor {
            urls: Vec::new(),
            platform: None,
            media_type: media_type.into(),
            digest: berth_ids::Digest::of(b"x"),
            size: 1,
            annotations: Labels::new(),
        };
        assert!(
            validate_descriptor(&descriptor("application/vnd.oci.image.manifest.v1+json")).is_ok()
        );
        assert!(validate_descriptor(&descriptor(&"m".repeat(MAX_NAME_LEN))).is_ok());
        for (bad, why) in [
            ("", "must not be empty"),
            (
                "with space",
                "must not contain spaces or control characters",
            ),
            ("tab\there", "must not contain spaces or control characters"),
            ("nul\0", "must not contain spaces or control characters"),
        ] {
            let err = validate_descriptor(&descriptor(bad)).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
        let long = "m".repeat(MAX_NAME_LEN + 1);
        let err = validate_descriptor(&descriptor(&long)).unwrap_err();
        assert!(
            err.to_string().contains("is longer than 1024 bytes"),
            "{err}"
        );
        // The runtime name and type URLs are names too.
        let mut spaced = container(1);
        spaced.runtime.name = "io.containerd runc".into();
        assert!(validate_container(&spaced).is_err());
        let mut untyped = container(1);
        untyped.spec.as_mut().unwrap().type_url = String::new();
        assert!(validate_container(&untyped).is_err());
    }

    #[test]
    fn container_fields_are_checked_only_when_set() {
        assert!(validate_container(&container(1)).is_ok());
        let with = |change: &dyn Fn(&mut Container)| {
            let mut c = container(1);
            change(&mut c);
            validate_container(&c)
        };
        // Optional fields: empty is fine, a good value is fine, a bad one
        // is refused.
        assert!(with(&|c| c.image = "busybox:1.36".into()).is_ok());
        assert!(with(&|c| c.image = "../x".into()).is_err());
        assert!(with(&|c| c.snapshotter = "overlayfs".into()).is_ok());
        assert!(with(&|c| c.snapshotter = "zfs".into()).is_err());
        assert!(with(&|c| {
            c.snapshotter = "native".into();
            c.snapshot_key = "key-1".into();
        })
        .is_ok());
        assert!(with(&|c| {
            c.snapshotter = "native".into();
            c.snapshot_key = "a/b".into();
        })
        .is_err());
        let err = with(&|c| c.snapshot_key = "key-1".into()).unwrap_err();
        assert!(err.to_string().contains("no snapshotter"), "{err}");
        assert!(with(&|c| c.sandbox = "pod-1".into()).is_ok());
        assert!(with(&|c| c.sandbox = "../pod".into()).is_err());
        // Required: a spec with a type URL; runtime options, when given,
        // typed too.
        assert!(with(&|c| c.spec = None).is_err());
        assert!(with(&|c| {
            c.runtime.options = Some(Any {
                type_url: String::new(),
                value: vec![1],
            })
        })
        .is_err());
        // Runtime options count towards the payload.
        let type_url = container(0).spec.unwrap().type_url.len();
        let mut full = container(MAX_CONTAINER_PAYLOAD - type_url - 2);
        full.runtime.options = Some(Any {
            type_url: "t".into(),
            value: vec![1],
        });
        assert!(validate_container(&full).is_ok());
        full.runtime.options.as_mut().unwrap().value.push(2);
        assert!(validate_container(&full).is_err());
    }

    #[test]
    fn images_need_a_name_labels_and_a_target_of_some_size() {
        let image = |size: u64| Image {
            name: "busybox".into(),
            labels: Labels::new(),
            target: Descriptor {
                urls: Vec::new(),
                platform: None,
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: berth_ids::Digest::of(b"x"),
                size,
                annotations: Labels::new(),
            },
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
        };
        assert!(validate_image(&image(1)).is_ok());
        let err = validate_image(&image(0)).unwrap_err();
        assert!(err.to_string().contains("greater than zero"), "{err}");
        // Beyond int64: the wire could not carry it.
        assert!(validate_image(&image(1 << 63)).is_err());
        let mut bad_name = image(1);
        bad_name.name = "a//b".into();
        assert!(validate_image(&bad_name).is_err());
        let mut bad_label = image(1);
        bad_label.labels.insert(String::new(), "v".into());
        assert!(validate_image(&bad_label).is_err());
    }
}
