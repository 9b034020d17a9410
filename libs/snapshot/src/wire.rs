//! Conversions between the snapshot types and `berth.snapshots.v1`
//! messages, shared by the service edge and the client.

use berth_api::protobuf::EnumOrUnknown;
use berth_api::snapshots as pb;
use berth_errdefs::{Error, Result};

use crate::{Descriptor, Info, Kind, Mount};

pub use berth_api::time::{system_time, timestamp};

pub fn kind_to_pb(kind: Kind) -> pb::Kind {
    match kind {
        Kind::View => pb::Kind::VIEW,
        Kind::Active => pb::Kind::ACTIVE,
        Kind::Committed => pb::Kind::COMMITTED,
    }
}

pub fn kind_from_pb(kind: EnumOrUnknown<pb::Kind>) -> Result<Kind> {
    match kind.enum_value() {
        Ok(pb::Kind::VIEW) => Ok(Kind::View),
        Ok(pb::Kind::ACTIVE) => Ok(Kind::Active),
        Ok(pb::Kind::COMMITTED) => Ok(Kind::Committed),
        _ => Err(Error::invalid_argument(format!(
            "unknown snapshot kind {}",
            kind.value()
        ))),
    }
}

pub fn info_to_pb(info: &Info) -> pb::Info {
    pb::Info {
        name: info.name.clone(),
        parent: info.parent.clone().unwrap_or_default(),
        kind: kind_to_pb(info.kind).into(),
        created_at: timestamp(info.created_at),
        updated_at: timestamp(info.updated_at),
        labels: info.labels.clone(),
        ..Default::default()
    }
}

/// An info from the wire. The kind may be unknown in update requests, where
/// only name and labels matter.
pub fn info_from_pb(info: &pb::Info) -> Result<Info> {
    Ok(Info {
        kind: kind_from_pb(info.kind).unwrap_or(Kind::Active),
        name: info.name.clone(),
        parent: optional(&info.parent),
        labels: info.labels.clone(),
        created_at: system_time(&info.created_at),
        updated_at: system_time(&info.updated_at),
    })
}

pub fn mount_to_pb(mount: &Mount) -> pb::Mount {
    pb::Mount {
        type_: mount.kind.clone(),
        source: mount.source.clone(),
        options: mount.options.clone(),
        ..Default::default()
    }
}

pub fn mount_from_pb(mount: &pb::Mount) -> Mount {
    Mount {
        kind: mount.type_.clone(),
        source: mount.source.clone(),
        options: mount.options.clone(),
    }
}

pub fn descriptor_to_pb(desc: &Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.to_string(),
        size: i64::try_from(desc.size).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

pub fn descriptor_from_pb(desc: &pb::Descriptor) -> Result<Descriptor> {
    let size = u64::try_from(desc.size)
        .map_err(|_| Error::invalid_argument(format!("size {} is negative", desc.size)))?;
    Ok(Descriptor::new(
        desc.media_type.clone(),
        berth_ids::Digest::parse(&desc.digest)?,
        size,
    ))
}

/// An optional string: empty means none.
pub fn optional(value: &str) -> Option<String> {
    if value.is_empty() {
        None
    } else {
        Some(value.to_string())
    }
}
