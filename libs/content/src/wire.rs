//! Conversions between the content types and `berth.content.v1` messages,
//! shared by the service edge and the client so both read the wire alike.

use berth_api::content as pb;
use berth_errdefs::{Error, Result};
use berth_ids::Digest;

use crate::{Info, Status};

pub use berth_api::time::{system_time, timestamp};

/// A digest from a request: InvalidArgument unless well formed.
pub fn parse_digest(value: &str) -> Result<Digest> {
    Ok(Digest::parse(value)?)
}

/// An optional digest: empty means none.
pub fn parse_optional_digest(value: &str) -> Result<Option<Digest>> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse_digest(value).map(Some)
    }
}

/// A size or offset from the wire, where negative numbers are nonsense.
pub fn unsigned(what: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::invalid_argument(format!("{what} {value} is negative")))
}

pub fn info_to_pb(info: &Info) -> pb::Info {
    pb::Info {
        digest: info.digest.to_string(),
        size: info.size as i64,
        created_at: timestamp(info.created_at),
        updated_at: timestamp(info.updated_at),
        labels: info.labels.clone(),
        ..Default::default()
    }
}

pub fn info_from_pb(info: &pb::Info) -> Result<Info> {
    Ok(Info {
        digest: parse_digest(&info.digest)?,
        size: unsigned("size", info.size)?,
        created_at: system_time(&info.created_at),
        updated_at: system_time(&info.updated_at),
        labels: info.labels.clone(),
    })
}

pub fn status_to_pb(status: &Status) -> pb::Status {
    pb::Status {
        ref_: status.reference.clone(),
        offset: status.offset as i64,
        total: status.total as i64,
        expected: status
            .expected
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default(),
        started_at: timestamp(status.started_at),
        updated_at: timestamp(status.updated_at),
        ..Default::default()
    }
}

pub fn status_from_pb(status: &pb::Status) -> Result<Status> {
    Ok(Status {
        reference: status.ref_.clone(),
        offset: unsigned("offset", status.offset)?,
        total: unsigned("total", status.total)?,
        expected: parse_optional_digest(&status.expected)?,
        started_at: system_time(&status.started_at),
        updated_at: system_time(&status.updated_at),
    })
}
