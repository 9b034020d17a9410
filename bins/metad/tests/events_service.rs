#![allow(clippy::unwrap_used, clippy::expect_used)]
//! berth-metad's event services over a real socket, in-process: Publish,
//! Forward and Subscribe with filters through berth's client, and
//! containerd's Forward through containerd-shim-protos' client.

mod events_support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_api::protobuf::Message;
use berth_client::events::{RemoteEvents, Subscription};
use berth_errdefs::ErrorKind;
use berth_metad::events::ExchangeLimits;
use berth_metadata::{Any, Envelope};
use containerd_shim_protos::events::image::ImageCreate;
use containerd_shim_protos::events::task::{TaskExit, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::any::Any as ShimAny;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim::event::Envelope as ShimEnvelope;
use containerd_shim_protos::shim::events::ForwardRequest as ShimForwardRequest;
use containerd_shim_protos::shim_async::EventsClient as ShimEventsClient;
use events_support::{eventually, sequence_event, EventsServer};

fn any<M: Message>(type_url: &str, message: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: message.write_to_bytes().unwrap(),
    }
}

fn task_exit(container: &str) -> Any {
    let exit = TaskExit {
        container_id: container.into(),
        id: container.into(),
        pid: 99,
        exit_status: 3,
        ..Default::default()
    };
    any("containerd.events.TaskExit", &exit)
}

/// Reads up to and including the fence (the last event the first test
/// publishes, which every filter there matches); returns what came before.
async fn until_fence(subscription: &mut Subscription) -> Vec<Envelope> {
    let mut seen = Vec::new();
    loop {
        let envelope = subscription.next().await.unwrap().expect("stream open");
        if envelope.namespace == "other" && envelope.topic == "/tasks/exit" {
            return seen;
        }
        seen.push(envelope);
    }
}

fn topics(envelopes: &[Envelope]) -> Vec<(&str, &str)> {
    envelopes
        .iter()
        .map(|e| (e.namespace.as_str(), e.topic.as_str()))
        .collect()
}

#[tokio::test]
async fn published_events_reach_the_subscribers_whose_filters_match() {
    let server = EventsServer::start(ExchangeLimits::default()).await;
    let events = RemoteEvents::connect(&server.socket).await.unwrap();
    let filters = |fs: &[&str]| fs.iter().map(|f| f.to_string()).collect::<Vec<_>>();
    let mut everything = events.subscribe(&[]).await.unwrap();
    let mut exits = events
        .subscribe(&filters(&["topic==\"/tasks/exit\""]))
        .await
        .unwrap();
    let mut in_other = events
        .subscribe(&filters(&["namespace==other"]))
        .await
        .unwrap();
    let mut images_or_other = events
        .subscribe(&filters(&["topic==\"/images/create\"", "namespace==other"]))
        .await
        .unwrap();
    let mut web_task = events
        .subscribe(&filters(&["event.container_id==web,topic~=\"^/tasks/\""]))
        .await
        .unwrap();
    server.wait_for_subscribers(5).await;

    let before = SystemTime::now();
    events
        .publish("default", "/tasks/exit", task_exit("web"))
        .await
        .unwrap();
    let start = TaskStart {
        container_id: "db".into(),
        pid: 7,
        ..Default::default()
    };
    events
        .publish(
            "other",
            "/tasks/start",
            any("containerd.events.TaskStart", &start),
        )
        .await
        .unwrap();
    let image = ImageCreate {
        name: "docker.io/library/busybox:1.36".into(),
        ..Default::default()
    };
    events
        .publish(
            "default",
            "/images/create",
            any("containerd.services.images.v1.ImageCreate", &image),
        )
        .await
        .unwrap();
    events
        .publish("default", "/custom/thing", sequence_event(1, 0))
        .await
        .unwrap();
    events
        .publish("default", "/tasks/exit", task_exit("db"))
        .await
        .unwrap();
    // Matches every filter above: the end of what each should see.
    events
        .publish("other", "/tasks/exit", task_exit("web"))
        .await
        .unwrap();
    let after = SystemTime::now();

    let all = until_fence(&mut everything).await;
    assert_eq!(
        topics(&all),
        [
            ("default", "/tasks/exit"),
            ("other", "/tasks/start"),
            ("default", "/images/create"),
            ("default", "/custom/thing"),
            ("default", "/tasks/exit"),
        ]
    );
    for envelope in &all {
        assert!(before <= envelope.timestamp && envelope.timestamp <= after);
    }
    assert_eq!(
        ImageCreate::parse_from_bytes(&all[2].event.value)
            .unwrap()
            .name,
        "docker.io/library/busybox:1.36"
    );

    let exits = until_fence(&mut exits).await;
    let containers: Vec<String> = exits
        .iter()
        .map(|e| {
            TaskExit::parse_from_bytes(&e.event.value)
                .unwrap()
                .container_id
        })
        .collect();
    assert_eq!(containers, ["web", "db"]);
    assert_eq!(
        topics(&until_fence(&mut in_other).await),
        [("other", "/tasks/start")]
    );
    assert_eq!(
        topics(&until_fence(&mut images_or_other).await),
        [("other", "/tasks/start"), ("default", "/images/create")]
    );
    let web = until_fence(&mut web_task).await;
    assert_eq!(topics(&web), [("default", "/tasks/exit")]);
    assert_eq!(
        TaskExit::parse_from_bytes(&web[0].event.value)
            .unwrap()
            .container_id,
        "web"
    );
}

#[tokio::test]
async fn forwarded_envelopes_keep_their_time_and_namespace() {
    let server = EventsServer::start(ExchangeLimits::default()).await;
    let events = RemoteEvents::connect(&server.socket).await.unwrap();
    let mut subscription = events.subscribe(&[]).await.unwrap();
    server.wait_for_subscribers(1).await;

    let at = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    let sent = Envelope {
        timestamp: at,
        namespace: "shims".into(),
        topic: "/tasks/exit".into(),
        event: task_exit("c1"),
    };
    events.forward(sent.clone()).await.unwrap();
    let received = subscription.next().await.unwrap().unwrap();
    assert_eq!(received, sent);
}

#[tokio::test]
async fn containerd_shims_forward_into_berth_subscribers() {
    let server = EventsServer::start(ExchangeLimits::default()).await;
    let events = RemoteEvents::connect(&server.socket).await.unwrap();
    let mut subscription = events
        .subscribe(&["namespace==k8s.io,topic==\"/tasks/exit\"".to_string()])
        .await
        .unwrap();
    server.wait_for_subscribers(1).await;

    let address = format!("unix://{}", server.socket.display());
    let shim_client =
        ShimEventsClient::new(ttrpc::r#async::Client::connect(&address).await.unwrap());
    let exit = TaskExit {
        container_id: "pod-c1".into(),
        id: "pod-c1".into(),
        pid: 4321,
        exit_status: 137,
        ..Default::default()
    };
    let envelope = ShimEnvelope {
        timestamp: MessageField::some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 42,
            ..Default::default()
        }),
        namespace: "k8s.io".into(),
        topic: "/tasks/exit".into(),
        event: MessageField::some(ShimAny {
            type_url: "containerd.events.TaskExit".into(),
            value: exit.write_to_bytes().unwrap(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = ShimForwardRequest {
        envelope: MessageField::some(envelope.clone()),
        ..Default::default()
    };
    shim_client
        .forward(ttrpc::context::with_timeout(0), &request)
        .await
        .unwrap();

    let received = subscription.next().await.unwrap().unwrap();
    assert_eq!(received.namespace, "k8s.io");
    assert_eq!(received.topic, "/tasks/exit");
    assert_eq!(
        received.timestamp,
        UNIX_EPOCH + Duration::new(1_700_000_000, 42)
    );
    assert_eq!(received.event.type_url, "containerd.events.TaskExit");
    assert_eq!(
        TaskExit::parse_from_bytes(&received.event.value).unwrap(),
        exit
    );

    // containerd's rules for forwarded envelopes hold on this service too.
    for broken in [
        ShimEnvelope {
            namespace: "not a namespace".into(),
            ..envelope.clone()
        },
        ShimEnvelope {
            topic: "tasks/exit".into(),
            ..envelope.clone()
        },
        ShimEnvelope {
            timestamp: MessageField::none(),
            ..envelope.clone()
        },
    ] {
        let request = ShimForwardRequest {
            envelope: MessageField::some(broken),
            ..Default::default()
        };
        let err = shim_client
            .forward(ttrpc::context::with_timeout(0), &request)
            .await
            .unwrap_err();
        let err = berth_errdefs::Error::from_ttrpc(err);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
    assert_eq!(server.exchange.stats().published, 1);
}

#[tokio::test]
async fn bad_topics_namespaces_envelopes_and_filters_are_invalid_arguments() {
    let server = EventsServer::start(ExchangeLimits::default()).await;
    let events = RemoteEvents::connect(&server.socket).await.unwrap();
    let mut subscription = events.subscribe(&[]).await.unwrap();
    server.wait_for_subscribers(1).await;

    for topic in [
        "",
        "/",
        "tasks/exit",
        "/tasks//exit",
        "/tasks/exit/",
        "/tasks/?",
    ] {
        let err = events
            .publish("default", topic, task_exit("web"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{topic:?}: {err}");
    }
    for namespace in ["not valid", "../etc", "-x"] {
        let err = events
            .publish(namespace, "/tasks/exit", task_exit("web"))
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "{namespace:?}: {err}"
        );
    }
    let err = events
        .publish("default", "/tasks/exit", Any::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let good = Envelope {
        timestamp: SystemTime::now(),
        namespace: "default".into(),
        topic: "/tasks/exit".into(),
        event: task_exit("web"),
    };
    for broken in [
        Envelope {
            timestamp: UNIX_EPOCH,
            ..good.clone()
        },
        Envelope {
            namespace: String::new(),
            ..good.clone()
        },
        Envelope {
            topic: "/x/".into(),
            ..good.clone()
        },
    ] {
        let err = events.forward(broken).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
    let too_big = Envelope {
        event: sequence_event(0, ExchangeLimits::default().max_event_bytes),
        ..good.clone()
    };
    let err = events.forward(too_big).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    // A malformed filter ends that subscription before it starts.
    let mut bad = events.subscribe(&["topic==".to_string()]).await.unwrap();
    let err = bad.next().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    // Nothing of that reached the exchange.
    assert_eq!(server.exchange.stats().published, 0);
    events.forward(good.clone()).await.unwrap();
    assert_eq!(subscription.next().await.unwrap().unwrap(), good);
}

#[tokio::test]
async fn subscribers_that_hang_up_are_removed() {
    let server = EventsServer::start(ExchangeLimits::default()).await;
    let events = RemoteEvents::connect(&server.socket).await.unwrap();
    let first = events.subscribe(&[]).await.unwrap();
    let mut second = events.subscribe(&[]).await.unwrap();
    server.wait_for_subscribers(2).await;

    // Idle (nothing published): only the hang-up can end its handler.
    drop(first);
    eventually("the idle subscriber to be removed", || {
        server.exchange.stats().subscribers == 1
    })
    .await;

    events
        .publish("default", "/test/one", sequence_event(1, 0))
        .await
        .unwrap();
    assert_eq!(second.next().await.unwrap().unwrap().topic, "/test/one");
    drop(second);
    eventually("the other subscriber to be removed", || {
        server.exchange.stats().subscribers == 0
    })
    .await;
    assert_eq!(server.exchange.stats().buffered_bytes, 0);
}

/// A subscription whose request says no data follows (ttrpc's NO_DATA
/// flag) leaves its handler waiting for a first message that never comes;
/// a caller that then hangs up must not leave that task behind (found by
/// the ttrpc_requests fuzz target: one task per connection, for ever).
#[tokio::test]
async fn a_stream_waiting_for_its_first_message_ends_when_the_caller_hangs_up() {
    use std::io::Write;
    let server = EventsServer::start(ExchangeLimits::default()).await;
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    // A call that ends properly gives every task of its connection back.
    let events = RemoteEvents::connect(&server.socket).await.unwrap();
    events
        .publish("default", "/test/warm-up", sequence_event(0, 0))
        .await
        .unwrap();
    drop(events);
    eventually("the first connection's tasks to end", || {
        runtime.num_alive_tasks() == before
    })
    .await;

    use berth_e2e::wire::{frame, request, FLAG_NO_DATA, FLAG_REMOTE_OPEN, TYPE_REQUEST};
    let frame = frame(
        1,
        TYPE_REQUEST,
        FLAG_REMOTE_OPEN | FLAG_NO_DATA,
        &request("berth.events.v1.Events", "Subscribe", Vec::new(), None),
    );
    let mut socket = std::os::unix::net::UnixStream::connect(&server.socket).unwrap();
    socket.write_all(&frame).unwrap();
    eventually("the stream's handler to start", || {
        runtime.num_alive_tasks() > before
    })
    .await;
    drop(socket);
    eventually("the stream's handler to end with its connection", || {
        runtime.num_alive_tasks() == before
    })
    .await;
}
