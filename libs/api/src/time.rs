//! Times on the wire: `google.protobuf.Timestamp` to and from `SystemTime`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::MessageField;

pub fn timestamp(time: SystemTime) -> MessageField<Timestamp> {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    })
}

/// A timestamp from the wire; a missing or malformed one is the epoch.
pub fn system_time(ts: &MessageField<Timestamp>) -> SystemTime {
    match ts.as_ref() {
        Some(ts) if ts.seconds >= 0 && (0..1_000_000_000).contains(&ts.nanos) => {
            UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32)
        }
        _ => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_garbage() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(system_time(&timestamp(t)), t);
        assert_eq!(system_time(&MessageField::none()), UNIX_EPOCH);
        let bad = MessageField::some(Timestamp {
            seconds: -5,
            nanos: 0,
            ..Default::default()
        });
        assert_eq!(system_time(&bad), UNIX_EPOCH);
    }
}
