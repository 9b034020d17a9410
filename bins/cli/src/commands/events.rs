//! `berth events`: berth-metad's events as they happen, one per line, in
//! the manner of `ctr events`: time, namespace, topic, and the event as JSON
//! where it is one of containerd's (else its type URL and size).

use anyhow::Context as _;
use berth_client::events::{rfc3339, KnownEvent, RemoteEvents};
use berth_metadata::Envelope;

use crate::global::Global;
use crate::output::Format;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only events matching a filter, in containerd's syntax over `topic`,
    /// `namespace` and `event.KEY` (e.g. 'topic=="/tasks/exit"' — quote
    /// topics, '/' starts a regular expression); repeat for any of several.
    /// Events from every namespace are shown unless a filter says otherwise.
    #[arg(long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// More filters, as `ctr events` takes them.
    #[arg(value_name = "FILTER")]
    pub more_filters: Vec<String>,
}

pub async fn run(global: &Global, args: EventsArgs) -> anyhow::Result<()> {
    let socket = global.metad_socket();
    let events = RemoteEvents::connect(socket)
        .await
        .with_context(|| format!("connecting to berth-metad at {}", socket.display()))?;
    let filters: Vec<String> = args.filters.into_iter().chain(args.more_filters).collect();
    let mut subscription = events.subscribe(&filters).await.context("subscribing")?;
    while let Some(envelope) = subscription.next().await.context("receiving events")? {
        let line = match global.format {
            Format::Table => table_line(&envelope),
            Format::Json => serde_json::to_string(&json_object(&envelope))?,
        };
        // stdout is line-buffered: each event shows as it arrives.
        println!("{line}");
    }
    Ok(())
}

/// The event as JSON when it is one of containerd's.
fn decode(envelope: &Envelope) -> Option<serde_json::Value> {
    KnownEvent::decode(&envelope.event.type_url, &envelope.event.value).map(|e| e.to_json())
}

fn table_line(envelope: &Envelope) -> String {
    let event = match decode(envelope) {
        Some(event) => event.to_string(),
        None => format!(
            "{} ({} bytes)",
            envelope.event.type_url,
            envelope.event.value.len()
        ),
    };
    format!(
        "{} {} {} {event}",
        rfc3339(envelope.timestamp),
        envelope.namespace,
        envelope.topic
    )
}

fn json_object(envelope: &Envelope) -> serde_json::Value {
    let mut object = serde_json::json!({
        "timestamp": rfc3339(envelope.timestamp),
        "namespace": envelope.namespace,
        "topic": envelope.topic,
        "type_url": envelope.event.type_url,
        "size": envelope.event.value.len(),
    });
    if let Some(event) = decode(envelope) {
        object["event"] = event;
    }
    object
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use berth_metadata::Any;

    use super::*;

    fn envelope(event: Any) -> Envelope {
        Envelope {
            timestamp: UNIX_EPOCH + Duration::new(1_700_000_000, 1),
            namespace: "default".into(),
            topic: "/custom/thing".into(),
            event,
        }
    }

    #[test]
    fn unknown_events_show_their_type_and_size() {
        let opaque = envelope(Any {
            type_url: "example.Thing".into(),
            value: vec![0; 12],
        });
        assert_eq!(
            table_line(&opaque),
            "2023-11-14T22:13:20.000000001Z default /custom/thing example.Thing (12 bytes)"
        );
        let json = json_object(&opaque);
        assert_eq!(json["type_url"], "example.Thing");
        assert_eq!(json["size"], 12);
        assert!(json.get("event").is_none());
    }

    #[test]
    fn containerd_events_show_as_json() {
        // containerd.events.TaskOOM { container_id: "web" }
        let oom = envelope(Any {
            type_url: "containerd.events.TaskOOM".into(),
            value: [vec![0x0a, 3], b"web".to_vec()].concat(),
        });
        assert_eq!(
            table_line(&oom),
            "2023-11-14T22:13:20.000000001Z default /custom/thing {\"container_id\":\"web\"}"
        );
        assert_eq!(json_object(&oom)["event"]["container_id"], "web");
    }
}
