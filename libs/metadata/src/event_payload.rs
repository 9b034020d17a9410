//! containerd's event payloads (`containerd.events.TaskExit` and the rest, as
//! containerd-shim-protos generates them): recognised by type URL, decoded,
//! read by field path the way containerd's event filters read them, and
//! rendered as JSON.

use std::time::{Duration, UNIX_EPOCH};

use containerd_shim_protos::events::{
    container, content, image, namespace, sandbox, snapshot, task,
};
use containerd_shim_protos::protobuf::reflect::{
    FileDescriptor, MessageDescriptor, ReflectFieldRef, ReflectValueRef, RuntimeType,
};
use containerd_shim_protos::protobuf::MessageDyn;
use serde_json::{Map, Value};

fn event_files() -> [&'static FileDescriptor; 7] {
    [
        container::file_descriptor(),
        content::file_descriptor(),
        image::file_descriptor(),
        namespace::file_descriptor(),
        sandbox::file_descriptor(),
        snapshot::file_descriptor(),
        task::file_descriptor(),
    ]
}

/// The message a type URL names. containerd writes bare names
/// (`containerd.events.TaskExit`); others prefix a host
/// (`types.googleapis.com/containerd.events.TaskExit`).
fn message_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// The event a type URL names, by the full name of its message. Most are in
/// `containerd.events`; image events are in `containerd.services.images.v1`.
fn event_descriptor(type_url: &str) -> Option<MessageDescriptor> {
    let name = message_name(type_url);
    event_files().into_iter().find_map(|file| {
        let relative = name.strip_prefix(file.package())?.strip_prefix('.')?;
        // Only top-level messages are events (not ContainerCreate.Runtime).
        if relative.contains('.') {
            return None;
        }
        file.message_by_package_relative_name(relative)
    })
}

/// A containerd event payload, decoded.
pub struct KnownEvent {
    message: Box<dyn MessageDyn>,
}

impl std::fmt::Debug for KnownEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownEvent")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl KnownEvent {
    /// The payload decoded, when `type_url` names a containerd event and
    /// `value` parses as one.
    pub fn decode(type_url: &str, value: &[u8]) -> Option<KnownEvent> {
        let descriptor = event_descriptor(type_url)?;
        let message = descriptor.parse_from_bytes(value).ok()?;
        Some(KnownEvent { message })
    }

    /// The message's full name, e.g. `containerd.events.TaskExit`.
    pub fn name(&self) -> String {
        self.message.descriptor_dyn().full_name().to_string()
    }

    /// The value at a field path, as containerd's generated `Field` methods
    /// give it: string fields when non-empty, bools always, `labels.KEY` in
    /// string maps, and containerd messages nested in the event; numbers,
    /// times, lists and `Any`s are not filterable.
    pub fn field(&self, path: &[String]) -> Option<String> {
        message_field(&*self.message, path)
    }

    /// The event as a JSON object keyed by the proto field names. Times are
    /// RFC 3339 strings, bytes base64, unset messages left out.
    pub fn to_json(&self) -> Value {
        message_json(&*self.message)
    }
}

fn message_field(message: &dyn MessageDyn, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let field = message.descriptor_dyn().field_by_name(first)?;
    match field.get_reflect(message) {
        ReflectFieldRef::Map(map) => {
            if rest.is_empty()
                || map.key_type() != RuntimeType::String
                || map.value_type() != RuntimeType::String
            {
                return None;
            }
            let key = rest.join(".");
            match map.get(ReflectValueRef::String(&key))? {
                ReflectValueRef::String(value) => Some(value.to_string()),
                _ => None,
            }
        }
        ReflectFieldRef::Repeated(_) => None,
        ReflectFieldRef::Optional(_) => match field.get_singular_field_or_default(message) {
            ReflectValueRef::String(value) if rest.is_empty() => {
                (!value.is_empty()).then(|| value.to_string())
            }
            ReflectValueRef::Bool(value) if rest.is_empty() => Some(value.to_string()),
            ReflectValueRef::Message(nested)
                if field.has_field(message)
                    && nested
                        .descriptor_dyn()
                        .full_name()
                        .starts_with("containerd.") =>
            {
                message_field(&*nested, rest)
            }
            _ => None,
        },
    }
}

fn message_json(message: &dyn MessageDyn) -> Value {
    let descriptor = message.descriptor_dyn();
    if descriptor.full_name() == "google.protobuf.Timestamp" {
        return timestamp_json(message);
    }
    let mut object = Map::new();
    for field in descriptor.fields() {
        let value = match field.get_reflect(message) {
            ReflectFieldRef::Optional(_) => {
                if matches!(
                    field.get_singular_field_or_default(message),
                    ReflectValueRef::Message(_)
                ) && !field.has_field(message)
                {
                    continue;
                }
                value_json(field.get_singular_field_or_default(message))
            }
            ReflectFieldRef::Repeated(list) => {
                Value::Array(list.into_iter().map(value_json).collect())
            }
            ReflectFieldRef::Map(map) => {
                let mut entries = Map::new();
                for (key, value) in &map {
                    let key = match key {
                        ReflectValueRef::String(s) => s.to_string(),
                        other => other.to_string(),
                    };
                    entries.insert(key, value_json(value));
                }
                Value::Object(entries)
            }
        };
        object.insert(field.name().to_string(), value);
    }
    Value::Object(object)
}

fn value_json(value: ReflectValueRef<'_>) -> Value {
    use base64::Engine as _;
    match value {
        ReflectValueRef::U32(n) => n.into(),
        ReflectValueRef::U64(n) => n.into(),
        ReflectValueRef::I32(n) => n.into(),
        ReflectValueRef::I64(n) => n.into(),
        ReflectValueRef::F32(n) => f64::from(n).into(),
        ReflectValueRef::F64(n) => n.into(),
        ReflectValueRef::Bool(b) => b.into(),
        ReflectValueRef::String(s) => s.into(),
        ReflectValueRef::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b).into(),
        ReflectValueRef::Enum(descriptor, number) => match descriptor.value_by_number(number) {
            Some(value) => value.name().into(),
            None => number.into(),
        },
        ReflectValueRef::Message(message) => message_json(&*message),
    }
}

fn timestamp_json(message: &dyn MessageDyn) -> Value {
    let descriptor = message.descriptor_dyn();
    let number = |name: &str| {
        descriptor
            .field_by_name(name)
            .map(|f| f.get_singular_field_or_default(message))
    };
    let seconds = match number("seconds") {
        Some(ReflectValueRef::I64(s)) => s,
        _ => 0,
    };
    let nanos = match number("nanos") {
        Some(ReflectValueRef::I32(n)) => n,
        _ => 0,
    };
    match (u64::try_from(seconds), u32::try_from(nanos)) {
        (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => {
            crate::format_rfc3339_nanos(UNIX_EPOCH + Duration::new(seconds, nanos)).into()
        }
        // Before 1970 or malformed: say what it is rather than guess.
        _ => serde_json::json!({ "seconds": seconds, "nanos": nanos }),
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::events::container::{container_create, ContainerCreate};
    use containerd_shim_protos::events::image::ImageCreate;
    use containerd_shim_protos::events::task::{TaskExit, TaskIO};
    use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
    use containerd_shim_protos::protobuf::{Message, MessageField};

    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_string).collect()
    }

    fn task_exit() -> TaskExit {
        TaskExit {
            container_id: "web".into(),
            id: "web".into(),
            pid: 4242,
            exit_status: 0,
            exited_at: MessageField::some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn events_are_known_by_their_full_names() {
        for name in [
            "containerd.events.TaskExit",
            "containerd.events.TaskOOM",
            "containerd.events.ContainerCreate",
            "containerd.events.NamespaceDelete",
            "containerd.events.SnapshotCommit",
            "containerd.events.ContentDelete",
            "containerd.events.SandboxExit",
            "containerd.services.images.v1.ImageCreate",
        ] {
            let event = KnownEvent::decode(name, &[]).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(event.name(), name);
        }
        assert!(KnownEvent::decode("containerd.events.ImageCreate", &[]).is_none());
    }

    #[test]
    fn type_urls_with_and_without_a_host_name_the_same_event() {
        let bytes = task_exit().write_to_bytes().unwrap();
        for url in [
            "containerd.events.TaskExit",
            "types.googleapis.com/containerd.events.TaskExit",
        ] {
            let event = KnownEvent::decode(url, &bytes).unwrap();
            assert_eq!(event.name(), "containerd.events.TaskExit");
        }
        assert!(KnownEvent::decode("containerd.events.NoSuchEvent", &bytes).is_none());
        assert!(KnownEvent::decode("other.TaskExit", &bytes).is_none());
        assert!(KnownEvent::decode("containerd.events.ContainerCreate.Runtime", &[]).is_none());
        assert!(KnownEvent::decode("containerd.events.TaskExit", &[0xff, 0xff]).is_none());
    }

    #[test]
    fn fields_read_as_containerds_generated_adaptors_read_them() {
        let exit = KnownEvent::decode(
            "containerd.events.TaskExit",
            &task_exit().write_to_bytes().unwrap(),
        )
        .unwrap();
        assert_eq!(exit.field(&path("container_id")).as_deref(), Some("web"));
        assert_eq!(exit.field(&path("id")).as_deref(), Some("web"));
        // Numbers and times are not filterable in containerd either.
        assert_eq!(exit.field(&path("pid")), None);
        assert_eq!(exit.field(&path("exited_at")), None);
        assert_eq!(exit.field(&path("exited_at.seconds")), None);
        assert_eq!(exit.field(&path("nope")), None);
        assert_eq!(exit.field(&[]), None);

        let mut create = ContainerCreate {
            id: "c1".into(),
            image: String::new(),
            ..Default::default()
        };
        create.runtime = MessageField::some(container_create::Runtime {
            name: "io.containerd.runc.v2".into(),
            ..Default::default()
        });
        let create = KnownEvent::decode(
            "containerd.events.ContainerCreate",
            &create.write_to_bytes().unwrap(),
        )
        .unwrap();
        assert_eq!(
            create.field(&path("runtime.name")).as_deref(),
            Some("io.containerd.runc.v2")
        );
        // An empty string is an absent field.
        assert_eq!(create.field(&path("image")), None);
        assert_eq!(create.field(&path("runtime")), None);

        let image = ImageCreate {
            name: "docker.io/library/busybox:latest".into(),
            labels: [("a.b".to_string(), "c".to_string())].into(),
            ..Default::default()
        };
        let image = KnownEvent::decode(
            "containerd.services.images.v1.ImageCreate",
            &image.write_to_bytes().unwrap(),
        )
        .unwrap();
        assert_eq!(image.field(&path("labels.a.b")).as_deref(), Some("c"));
        assert_eq!(image.field(&path("labels.missing")), None);
        assert_eq!(image.field(&path("labels")), None);

        let io = TaskIO {
            terminal: false,
            ..Default::default()
        };
        let io = io.write_to_bytes().unwrap();
        let descriptor = task::file_descriptor()
            .message_by_package_relative_name("TaskIO")
            .unwrap();
        let io = descriptor.parse_from_bytes(&io).unwrap();
        assert_eq!(
            message_field(&*io, &path("terminal")).as_deref(),
            Some("false")
        );
    }

    #[test]
    fn json_has_every_field_and_readable_times() {
        let exit = KnownEvent::decode(
            "containerd.events.TaskExit",
            &task_exit().write_to_bytes().unwrap(),
        )
        .unwrap();
        assert_eq!(
            exit.to_json(),
            serde_json::json!({
                "container_id": "web",
                "id": "web",
                "pid": 4242,
                "exit_status": 0,
                "exited_at": "2023-11-14T22:13:20.000000005Z",
            })
        );
        let unset = KnownEvent::decode(
            "containerd.events.TaskExit",
            &TaskExit::default().write_to_bytes().unwrap(),
        )
        .unwrap();
        assert!(unset.to_json().get("exited_at").is_none());
    }
}
