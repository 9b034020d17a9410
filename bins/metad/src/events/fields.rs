//! An envelope's fields as subscription filters see them (containerd's
//! envelope adaptor): `topic`, `namespace`, and `event.KEY` for containerd's
//! own event types.

use std::cell::OnceCell;

use berth_api::events as pb;
use berth_filters::Adaptor;
use berth_metadata::KnownEvent;

pub struct EnvelopeFields<'a> {
    envelope: &'a pb::Envelope,
    /// Decoded on the first `event.` lookup, at most once per publish.
    event: OnceCell<Option<KnownEvent>>,
}

impl<'a> EnvelopeFields<'a> {
    pub fn new(envelope: &'a pb::Envelope) -> EnvelopeFields<'a> {
        EnvelopeFields {
            envelope,
            event: OnceCell::new(),
        }
    }

    fn event(&self) -> Option<&KnownEvent> {
        self.event
            .get_or_init(|| {
                let any = self.envelope.event.as_ref()?;
                KnownEvent::decode(&any.type_url, &any.value)
            })
            .as_ref()
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

impl Adaptor for EnvelopeFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let (first, rest) = path.split_first()?;
        match (first.as_str(), rest) {
            ("topic", []) => non_empty(&self.envelope.topic),
            ("namespace", []) => non_empty(&self.envelope.namespace),
            ("event", [_, ..]) => self.event()?.field(rest),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_api::protobuf::well_known_types::any::Any;
    use berth_api::protobuf::{Message, MessageField};
    use berth_filters::Filter;
    use containerd_shim_protos::events::task::TaskExit;

    use super::*;

    fn envelope(namespace: &str, topic: &str, type_url: &str, value: Vec<u8>) -> pb::Envelope {
        pb::Envelope {
            namespace: namespace.into(),
            topic: topic.into(),
            event: MessageField::some(Any {
                type_url: type_url.into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn filters_select_by_topic_namespace_and_event_fields() {
        let exit = TaskExit {
            container_id: "web".into(),
            id: "web".into(),
            pid: 7,
            ..Default::default()
        };
        let exit = envelope(
            "k8s.io",
            "/tasks/exit",
            "containerd.events.TaskExit",
            exit.write_to_bytes().unwrap(),
        );
        let opaque = envelope("default", "/custom/thing", "example.Thing", vec![1, 2]);
        let cases: &[(&str, bool, bool)] = &[
            ("", true, true),
            ("topic==\"/tasks/exit\"", true, false),
            ("topic~=\"^/tasks/\"", true, false),
            ("topic!=\"/tasks/exit\"", false, true),
            ("namespace==k8s.io", true, false),
            ("namespace==default", false, true),
            ("namespace==k8s.io,topic==\"/tasks/exit\"", true, false),
            ("namespace==default,topic==\"/tasks/exit\"", false, false),
            ("event.container_id==web", true, false),
            ("event.container_id==db", false, false),
            ("event.container_id", true, false),
            ("event.pid==7", false, false),
            ("event", false, false),
            ("timestamp", false, false),
            ("topic.x", false, false),
            ("namespace==default|event.id==web", true, true),
        ];
        for (filter, on_exit, on_opaque) in cases {
            let parsed = Filter::parse(filter).unwrap();
            assert_eq!(
                parsed.matches(&EnvelopeFields::new(&exit)),
                *on_exit,
                "{filter} on the exit"
            );
            assert_eq!(
                parsed.matches(&EnvelopeFields::new(&opaque)),
                *on_opaque,
                "{filter} on the opaque event"
            );
        }
    }
}
