//! What a transfer reports as it goes: one typed model, carried across
//! contentd's socket as `berth.transfer.v1.Progress` with proto enums.

use berth_api::transfer as pb;
use berth_errdefs::{Error, Result};
use berth_ids::Digest;

use crate::document::Descriptor;

/// One step of a fetch or push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The root the reference resolved to.
    Resolved(Descriptor),
    /// An image manifest the fetch will bring in (before its blobs), so a
    /// caller can start unpacking layers as they arrive; `platform` as the
    /// index that named it says, if one did.
    Manifest {
        descriptor: Descriptor,
        platform: Option<String>,
        data: Vec<u8>,
    },
    Blob {
        descriptor: Descriptor,
        state: BlobState,
        offset: u64,
    },
    /// The transfer is complete: the image's root.
    Done(Descriptor),
}

/// Where one blob of a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    Waiting,
    Downloading,
    Uploading,
    /// Already in the store (fetch) or the registry (push).
    Exists,
    /// Mounted from another repository of the same registry.
    Mounted,
    Done,
    /// A foreign layer that was not fetched.
    Skipped,
}

impl BlobState {
    /// The word the CLI shows.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobState::Waiting => "waiting",
            BlobState::Downloading => "downloading",
            BlobState::Uploading => "uploading",
            BlobState::Exists => "exists",
            BlobState::Mounted => "mounted",
            BlobState::Done => "done",
            BlobState::Skipped => "skipped",
        }
    }

    /// Whether the blob is now where the transfer was taking it.
    pub fn is_stored(self) -> bool {
        matches!(
            self,
            BlobState::Exists | BlobState::Done | BlobState::Mounted
        )
    }

    /// Whether nothing more happens to the blob.
    pub fn is_final(self) -> bool {
        self.is_stored() || self == BlobState::Skipped
    }

    fn to_pb(self) -> pb::BlobState {
        match self {
            BlobState::Waiting => pb::BlobState::BLOB_WAITING,
            BlobState::Downloading => pb::BlobState::BLOB_DOWNLOADING,
            BlobState::Uploading => pb::BlobState::BLOB_UPLOADING,
            BlobState::Exists => pb::BlobState::BLOB_EXISTS,
            BlobState::Mounted => pb::BlobState::BLOB_MOUNTED,
            BlobState::Done => pb::BlobState::BLOB_DONE,
            BlobState::Skipped => pb::BlobState::BLOB_SKIPPED,
        }
    }

    fn from_pb(state: pb::BlobState) -> Result<BlobState> {
        Ok(match state {
            pb::BlobState::BLOB_WAITING => BlobState::Waiting,
            pb::BlobState::BLOB_DOWNLOADING => BlobState::Downloading,
            pb::BlobState::BLOB_UPLOADING => BlobState::Uploading,
            pb::BlobState::BLOB_EXISTS => BlobState::Exists,
            pb::BlobState::BLOB_MOUNTED => BlobState::Mounted,
            pb::BlobState::BLOB_DONE => BlobState::Done,
            pb::BlobState::BLOB_SKIPPED => BlobState::Skipped,
            pb::BlobState::BLOB_STATE_UNSPECIFIED => {
                return Err(Error::invalid_argument("a blob progress without a state"))
            }
        })
    }
}

impl Progress {
    /// The word the CLI shows for the event.
    pub fn event_name(&self) -> &'static str {
        match self {
            Progress::Resolved(_) => "resolved",
            Progress::Manifest { .. } => "manifest",
            Progress::Blob { .. } => "blob",
            Progress::Done(_) => "done",
        }
    }

    pub fn descriptor(&self) -> &Descriptor {
        match self {
            Progress::Resolved(d) | Progress::Done(d) => d,
            Progress::Manifest { descriptor, .. } | Progress::Blob { descriptor, .. } => descriptor,
        }
    }

    /// The blob this step says is now stored, if it says so.
    pub fn stored_blob(&self) -> Option<&Digest> {
        match self {
            Progress::Blob {
                descriptor, state, ..
            } if state.is_stored() => Some(&descriptor.digest),
            _ => None,
        }
    }

    pub fn to_pb(&self) -> pb::Progress {
        let mut out = pb::Progress {
            descriptor: Some(descriptor_to_pb(self.descriptor())).into(),
            ..Default::default()
        };
        match self {
            Progress::Resolved(_) => out.event = pb::ProgressEvent::PROGRESS_RESOLVED.into(),
            Progress::Done(_) => out.event = pb::ProgressEvent::PROGRESS_DONE.into(),
            Progress::Manifest { platform, data, .. } => {
                out.event = pb::ProgressEvent::PROGRESS_MANIFEST.into();
                out.platform = platform.clone().unwrap_or_default();
                out.data = data.clone();
            }
            Progress::Blob { state, offset, .. } => {
                out.event = pb::ProgressEvent::PROGRESS_BLOB.into();
                out.state = state.to_pb().into();
                out.offset = i64::try_from(*offset).unwrap_or(i64::MAX);
            }
        }
        out
    }

    /// Checks a progress message from the wire.
    pub fn from_pb(p: &pb::Progress) -> Result<Progress> {
        let descriptor =
            descriptor_from_pb(p.descriptor.as_ref().ok_or_else(|| {
                Error::invalid_argument("a progress message without a descriptor")
            })?)?;
        let event = p
            .event
            .enum_value()
            .map_err(|n| Error::invalid_argument(format!("unknown progress event {n}")))?;
        Ok(match event {
            pb::ProgressEvent::PROGRESS_RESOLVED => Progress::Resolved(descriptor),
            pb::ProgressEvent::PROGRESS_DONE => Progress::Done(descriptor),
            pb::ProgressEvent::PROGRESS_MANIFEST => Progress::Manifest {
                descriptor,
                platform: (!p.platform.is_empty()).then(|| p.platform.clone()),
                data: p.data.clone(),
            },
            pb::ProgressEvent::PROGRESS_BLOB => {
                Progress::Blob {
                    descriptor,
                    state: BlobState::from_pb(p.state.enum_value().map_err(|n| {
                        Error::invalid_argument(format!("unknown blob state {n}"))
                    })?)?,
                    offset: u64::try_from(p.offset).map_err(|_| {
                        Error::invalid_argument(format!("negative offset {}", p.offset))
                    })?,
                }
            }
            pb::ProgressEvent::PROGRESS_EVENT_UNSPECIFIED => {
                return Err(Error::invalid_argument(
                    "a progress message without an event",
                ))
            }
        })
    }
}

pub fn descriptor_to_pb(d: &Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

pub fn descriptor_from_pb(d: &pb::Descriptor) -> Result<Descriptor> {
    let digest = Digest::parse(&d.digest)
        .map_err(|e| Error::invalid_argument(format!("descriptor digest: {e}")))?;
    let size = u64::try_from(d.size)
        .map_err(|_| Error::invalid_argument(format!("{digest}: negative size {}", d.size)))?;
    Ok(Descriptor::new(d.media_type.clone(), digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> Descriptor {
        Descriptor::new(crate::media::OCI_MANIFEST, Digest::of(b"m"), 1)
    }

    #[test]
    fn every_step_survives_the_wire() {
        let steps = [
            Progress::Resolved(desc()),
            Progress::Manifest {
                descriptor: desc(),
                platform: Some("linux/arm/v7".into()),
                data: b"{}".to_vec(),
            },
            Progress::Manifest {
                descriptor: desc(),
                platform: None,
                data: Vec::new(),
            },
            Progress::Done(desc()),
        ]
        .into_iter()
        .chain(
            [
                BlobState::Waiting,
                BlobState::Downloading,
                BlobState::Uploading,
                BlobState::Exists,
                BlobState::Mounted,
                BlobState::Done,
                BlobState::Skipped,
            ]
            .into_iter()
            .map(|state| Progress::Blob {
                descriptor: desc(),
                state,
                offset: 7,
            }),
        );
        for step in steps {
            assert_eq!(Progress::from_pb(&step.to_pb()).unwrap(), step);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = Progress::Blob {
            descriptor: desc(),
            state: BlobState::Done,
            offset: 1,
        }
        .to_pb();
        let mut no_event = good.clone();
        no_event.event = pb::ProgressEvent::PROGRESS_EVENT_UNSPECIFIED.into();
        let mut no_state = good.clone();
        no_state.state = pb::BlobState::BLOB_STATE_UNSPECIFIED.into();
        let mut unknown_state = good.clone();
        unknown_state.state = protobuf::EnumOrUnknown::from_i32(99);
        let mut negative = good.clone();
        negative.offset = -1;
        let mut bad_digest = good.clone();
        bad_digest.descriptor.mut_or_insert_default().digest = "sha256:../x".into();
        let mut no_descriptor = good;
        no_descriptor.descriptor = Default::default();
        for bad in [
            no_event,
            no_state,
            unknown_state,
            negative,
            bad_digest,
            no_descriptor,
        ] {
            assert!(Progress::from_pb(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stored_blobs() {
        let blob = |state| Progress::Blob {
            descriptor: desc(),
            state,
            offset: 0,
        };
        assert!(blob(BlobState::Done).stored_blob().is_some());
        assert!(blob(BlobState::Exists).stored_blob().is_some());
        assert!(blob(BlobState::Downloading).stored_blob().is_none());
        assert!(blob(BlobState::Skipped).stored_blob().is_none());
        assert!(Progress::Done(desc()).stored_blob().is_none());
    }
}
