//! What a topic and an envelope must look like before the exchange carries
//! them (containerd's rules).

use std::time::UNIX_EPOCH;

use berth_errdefs::{Error, Result};
use berth_ids::{validate_id, validate_namespace};
use berth_metadata::Envelope;

/// Longest topic accepted (containerd has none; each component is at most
/// an identifier's 76 bytes).
pub const MAX_TOPIC_LEN: usize = 1024;

/// A topic is `/` followed by one or more identifiers joined by `/`, e.g.
/// `/tasks/exit` or `/images/create`.
pub fn validate_topic(topic: &str) -> Result<()> {
    let invalid = |why: String| Error::invalid_argument(format!("topic {topic:?}: {why}"));
    if topic.is_empty() {
        return Err(Error::invalid_argument("topic must not be empty"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Error::invalid_argument(format!(
            "topic is longer than {MAX_TOPIC_LEN} bytes"
        )));
    }
    let Some(path) = topic.strip_prefix('/') else {
        return Err(invalid("must start with '/'".into()));
    };
    if path.is_empty() {
        return Err(invalid("must have at least one component".into()));
    }
    for component in path.split('/') {
        validate_id(component).map_err(|e| invalid(format!("component {component:?}: {e}")))?;
    }
    Ok(())
}

/// A forwarded envelope: a valid namespace and topic, a time, and an event.
pub fn validate_envelope(envelope: &Envelope) -> Result<()> {
    validate_namespace(&envelope.namespace)?;
    validate_topic(&envelope.topic)?;
    if envelope.timestamp <= UNIX_EPOCH {
        return Err(Error::invalid_argument(
            "envelope has no timestamp (forwarded events keep their own)",
        ));
    }
    if envelope.event.type_url.is_empty() {
        return Err(Error::invalid_argument(format!(
            "event on {} has no type URL",
            envelope.topic
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use berth_errdefs::ErrorKind;
    use berth_metadata::Any;

    use super::*;

    #[test]
    fn topics_follow_containerds_rules() {
        for good in [
            "/tasks/exit",
            "/tasks/exec-added",
            "/images/create",
            "/a",
            "/a.b_c-d/e1",
        ] {
            assert!(validate_topic(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/",
            "tasks/exit",
            "/tasks/",
            "//tasks",
            "/tasks//exit",
            "/tasks/?",
            "/tasks/exit ",
            "/-x",
            "/x-",
            "/tasks/ünicode",
        ] {
            let err = validate_topic(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
        }
        let long = format!("/{}", ["a"; 600].join("/"));
        assert!(validate_topic(&long).is_err());
        let too_long_component = format!("/{}", "a".repeat(77));
        assert!(validate_topic(&too_long_component).is_err());
    }

    #[test]
    fn envelopes_need_namespace_topic_time_and_event() {
        let good = Envelope {
            timestamp: SystemTime::now(),
            namespace: "default".into(),
            topic: "/tasks/exit".into(),
            event: Any {
                type_url: "containerd.events.TaskExit".into(),
                value: Vec::new(),
            },
        };
        assert!(validate_envelope(&good).is_ok());
        let broken: [fn(&mut Envelope); 5] = [
            |e| e.namespace = String::new(),
            |e| e.namespace = "../x".into(),
            |e| e.topic = "tasks".into(),
            |e| e.timestamp = UNIX_EPOCH,
            |e| e.event.type_url = String::new(),
        ];
        for (i, breaks) in broken.iter().enumerate() {
            let mut envelope = good.clone();
            breaks(&mut envelope);
            let err = validate_envelope(&envelope).expect_err(&format!("case {i}"));
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "case {i}");
        }
        let mut recent = good;
        recent.timestamp = UNIX_EPOCH + Duration::from_secs(1);
        assert!(validate_envelope(&recent).is_ok());
    }
}
