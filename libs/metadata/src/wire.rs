//! Conversions between the metadata types and the `berth.namespaces.v1`,
//! `berth.images.v1`, `berth.containers.v1` and `berth.leases.v1`
//! messages, shared by berth-metad's service edge and berth-client so both
//! read the wire alike. What comes from a request is parsed here
//! (InvalidArgument when malformed) and validated by the store.

use berth_api::containers as containers_pb;
use berth_api::images as images_pb;
use berth_api::leases as leases_pb;
use berth_api::namespaces as namespaces_pb;
use berth_api::protobuf::well_known_types::any::Any as PbAny;
use berth_api::protobuf::MessageField;
use berth_errdefs::{Error, Result};
use berth_ids::Digest;

pub use berth_api::time::{system_time, timestamp};

use crate::{Any, Container, Descriptor, Image, Lease, Namespace, Resource, Runtime};

pub fn any_to_pb(any: &Any) -> PbAny {
    PbAny {
        type_url: any.type_url.clone(),
        value: any.value.clone(),
        ..Default::default()
    }
}

pub fn any_from_pb(any: &PbAny) -> Any {
    Any {
        type_url: any.type_url.clone(),
        value: any.value.clone(),
    }
}

fn optional_any(any: &MessageField<PbAny>) -> Option<Any> {
    any.as_ref().map(any_from_pb)
}

pub fn namespace_to_pb(namespace: &Namespace) -> namespaces_pb::Namespace {
    namespaces_pb::Namespace {
        name: namespace.name.clone(),
        labels: namespace.labels.clone(),
        ..Default::default()
    }
}

pub fn namespace_from_pb(namespace: &namespaces_pb::Namespace) -> Namespace {
    Namespace {
        name: namespace.name.clone(),
        labels: namespace.labels.clone(),
    }
}

pub fn descriptor_to_pb(target: &Descriptor) -> images_pb::Descriptor {
    images_pb::Descriptor {
        media_type: target.media_type.clone(),
        digest: target.digest.to_string(),
        size: i64::try_from(target.size).unwrap_or(i64::MAX),
        annotations: target.annotations.clone(),
        ..Default::default()
    }
}

pub fn descriptor_from_pb(target: &images_pb::Descriptor) -> Result<Descriptor> {
    let digest = Digest::parse(&target.digest)
        .map_err(|e| Error::invalid_argument(format!("image target: {e}")))?;
    let size = u64::try_from(target.size).map_err(|_| {
        Error::invalid_argument(format!(
            "target size must be greater than zero, not {}",
            target.size
        ))
    })?;
    let mut descriptor = Descriptor::new(target.media_type.clone(), digest, size);
    descriptor.annotations = target.annotations.clone();
    Ok(descriptor)
}

pub fn image_to_pb(image: &Image) -> images_pb::Image {
    images_pb::Image {
        name: image.name.clone(),
        labels: image.labels.clone(),
        target: MessageField::some(descriptor_to_pb(&image.target)),
        created_at: timestamp(image.created_at),
        updated_at: timestamp(image.updated_at),
        ..Default::default()
    }
}

/// An image from the wire; InvalidArgument without a well-formed target.
pub fn image_from_pb(image: &images_pb::Image) -> Result<Image> {
    let target = image
        .target
        .as_ref()
        .ok_or_else(|| Error::invalid_argument(format!("image {:?} has no target", image.name)))?;
    Ok(Image {
        name: image.name.clone(),
        labels: image.labels.clone(),
        target: descriptor_from_pb(target)?,
        created_at: system_time(&image.created_at),
        updated_at: system_time(&image.updated_at),
    })
}

pub fn container_to_pb(container: &Container) -> containers_pb::Container {
    containers_pb::Container {
        id: container.id.clone(),
        labels: container.labels.clone(),
        image: container.image.clone(),
        runtime: MessageField::some(containers_pb::Runtime {
            name: container.runtime.name.clone(),
            options: container.runtime.options.as_ref().map(any_to_pb).into(),
            ..Default::default()
        }),
        spec: container.spec.as_ref().map(any_to_pb).into(),
        snapshotter: container.snapshotter.clone(),
        snapshot_key: container.snapshot_key.clone(),
        created_at: timestamp(container.created_at),
        updated_at: timestamp(container.updated_at),
        extensions: container
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), any_to_pb(v)))
            .collect(),
        sandbox: container.sandbox.clone(),
        ..Default::default()
    }
}

pub fn container_from_pb(container: &containers_pb::Container) -> Container {
    let runtime = container.runtime.get_or_default();
    Container {
        id: container.id.clone(),
        labels: container.labels.clone(),
        image: container.image.clone(),
        runtime: Runtime {
            name: runtime.name.clone(),
            options: optional_any(&runtime.options),
        },
        spec: optional_any(&container.spec),
        snapshotter: container.snapshotter.clone(),
        snapshot_key: container.snapshot_key.clone(),
        created_at: system_time(&container.created_at),
        updated_at: system_time(&container.updated_at),
        extensions: container
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), any_from_pb(v)))
            .collect(),
        sandbox: container.sandbox.clone(),
    }
}

pub fn lease_to_pb(lease: &Lease) -> leases_pb::Lease {
    leases_pb::Lease {
        id: lease.id.clone(),
        created_at: timestamp(lease.created_at),
        labels: lease.labels.clone(),
        ..Default::default()
    }
}

pub fn lease_from_pb(lease: &leases_pb::Lease) -> Lease {
    Lease {
        id: lease.id.clone(),
        created_at: system_time(&lease.created_at),
        labels: lease.labels.clone(),
    }
}

pub fn resource_to_pb(resource: &Resource) -> leases_pb::Resource {
    leases_pb::Resource {
        id: resource.id.clone(),
        type_: resource.kind.clone(),
        ..Default::default()
    }
}

/// A resource from the wire; InvalidArgument when the request has none.
pub fn resource_from_pb(resource: &MessageField<leases_pb::Resource>) -> Result<Resource> {
    let resource = resource
        .as_ref()
        .ok_or_else(|| Error::invalid_argument("the request names no resource"))?;
    Ok(Resource {
        id: resource.id.clone(),
        kind: resource.type_.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn a_negative_target_size_on_the_wire_is_refused() {
        let mut pb = descriptor_to_pb(&Descriptor::new(
            "application/vnd.oci.image.index.v1+json",
            berth_ids::Digest::of(b"x"),
            7,
        ));
        assert_eq!(descriptor_from_pb(&pb).unwrap().size, 7);
        pb.size = -1;
        let err = descriptor_from_pb(&pb).unwrap_err();
        assert_eq!(err.kind(), berth_errdefs::ErrorKind::InvalidArgument);
    }

    #[test]
    fn records_survive_the_wire() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let image = Image {
            name: "busybox:1".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            target: Descriptor {
                urls: Vec::new(),
                platform: None,
                media_type: "m".into(),
                digest: Digest::of(b"x"),
                size: 3,
                annotations: [("k".to_string(), "v".to_string())].into(),
            },
            created_at: at,
            updated_at: at,
        };
        assert_eq!(image_from_pb(&image_to_pb(&image)).unwrap(), image);
        let container = Container {
            id: "c".into(),
            labels: Default::default(),
            image: "busybox:1".into(),
            runtime: Runtime {
                name: "r".into(),
                options: Some(Any {
                    type_url: "o".into(),
                    value: vec![1, 2],
                }),
            },
            spec: Some(Any {
                type_url: "s".into(),
                value: vec![0, 255],
            }),
            snapshotter: "native".into(),
            snapshot_key: "k".into(),
            created_at: at,
            updated_at: at,
            extensions: BTreeMap::from([(
                "e".to_string(),
                Any {
                    type_url: "t".into(),
                    value: vec![],
                },
            )]),
            sandbox: "s1".into(),
        };
        assert_eq!(container_from_pb(&container_to_pb(&container)), container);
        let mut no_target = image_to_pb(&image);
        no_target.target = MessageField::none();
        assert_eq!(
            image_from_pb(&no_target).unwrap_err().kind(),
            berth_errdefs::ErrorKind::InvalidArgument
        );
    }
}
