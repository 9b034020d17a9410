#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Many subscribers and one that stops reading: the ones that keep up get
//! every event in order, the stuck one is ended with ResourceExhausted, the
//! publisher never waits for it, and the exchange's memory stays within
//! what its limits allow, by its own count and, in a real berth-metad, by
//! the process's resident memory.

mod events_support;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_api::events as pb;
use berth_api::protobuf::Message;
use berth_client::events::RemoteEvents;
use berth_e2e::Daemon;
use berth_metad::events::ExchangeLimits;
use events_support::{sequence_event, sequence_of, EventsServer};
use tokio::net::UnixStream;
use tokio::sync::watch;
use ttrpc::proto::{
    Codec, GenMessage, MessageHeader, Response, FLAG_REMOTE_CLOSED, MESSAGE_TYPE_DATA,
    MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE,
};
use ttrpc::Code;

const SUBSCRIBERS: usize = 100;
const EVENTS: u64 = 1000;
/// The publisher runs ahead of the slowest live subscriber by at most this
/// many events, so a live subscriber never has more queued than this.
const WINDOW: u64 = 32;
const PADDING: usize = 64;
/// Large events only the stuck subscriber asks for, so that it falls behind
/// whatever the socket buffers, without making everyone else's work larger.
const FILLER_PADDING: usize = 3000;
const SEQUENCE: &str = "/test/sequence";
const FILLER: &str = "/test/filler";

/// How many fillers overflow the stuck subscriber for certain: twice what
/// its socket (the kernel's default send buffer) and its queue can hold.
fn fillers() -> u64 {
    let socket_buffer: u64 = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4 * 1024 * 1024);
    2 * (socket_buffer + limits().max_queued_bytes as u64) / FILLER_PADDING as u64
}

fn limits() -> ExchangeLimits {
    ExchangeLimits {
        max_queued_events: 64,
        max_queued_bytes: 64 * 1024,
        max_event_bytes: 4096,
        max_subscribers: SUBSCRIBERS + 1,
    }
}

/// A subscriber at the socket level that sends Subscribe and then reads
/// nothing until told to: ttrpc's own client would drain the socket into
/// memory on its side and never look slow to metad.
async fn stuck_subscriber(socket: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    let request = ttrpc::Request {
        service: "berth.events.v1.Events".into(),
        method: "Subscribe".into(),
        payload: pb::SubscribeRequest::default().write_to_bytes().unwrap(),
        ..Default::default()
    };
    let payload = Codec::encode(&request).unwrap();
    let mut header = MessageHeader::new_request(1, payload.len() as u32);
    header.add_flags(FLAG_REMOTE_CLOSED);
    assert_eq!(header.type_, MESSAGE_TYPE_REQUEST);
    GenMessage { header, payload }
        .write_to(&mut stream)
        .await
        .unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscribers_get_everything_in_order_and_a_stuck_one_is_cut_off() {
    let server = EventsServer::start(limits()).await;
    let events = RemoteEvents::connect(&server.socket).await.unwrap();

    let mut progress = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut subscription = events
            .subscribe(&[format!("topic==\"{SEQUENCE}\"")])
            .await
            .unwrap();
        let (received, watch) = watch::channel(0u64);
        progress.push(watch);
        readers.push(tokio::spawn(async move {
            for expected in 0..EVENTS {
                let envelope = subscription.next().await.unwrap().expect("stream open");
                assert_eq!(sequence_of(&envelope.event.value), expected);
                received.send_replace(expected + 1);
            }
            // Kept until the end, so the count of subscribers below is
            // theirs.
            subscription
        }));
    }
    let mut stuck = stuck_subscriber(&server.socket).await;
    server.wait_for_subscribers(SUBSCRIBERS + 1).await;

    // Full speed within a window; the window follows the live subscribers
    // only, never the stuck one.
    let windows = EVENTS.div_ceil(WINDOW);
    let fillers_per_window = fillers().div_ceil(windows);
    let mut filler = 0;
    for start in (0..EVENTS).step_by(WINDOW as usize) {
        let end = (start + WINDOW).min(EVENTS);
        for n in start..end {
            events
                .publish("default", SEQUENCE, sequence_event(n, PADDING))
                .await
                .unwrap();
        }
        for _ in 0..fillers_per_window {
            events
                .publish("default", FILLER, sequence_event(filler, FILLER_PADDING))
                .await
                .unwrap();
            filler += 1;
        }
        for watch in &mut progress {
            watch
                .wait_for(|received| *received >= end)
                .await
                .expect("a live subscriber failed");
        }
    }
    let mut live = Vec::new();
    for reader in readers {
        live.push(reader.await.unwrap());
    }

    let stats = server.exchange.stats();
    assert_eq!(stats.published, EVENTS + filler);
    assert_eq!(
        stats.dropped_subscribers, 1,
        "only the stuck one is cut off"
    );
    assert_eq!(stats.subscribers, SUBSCRIBERS);
    assert_eq!(stats.buffered_bytes, 0, "the stuck one's queue was freed");
    // Live subscribers hold at most a window each, the stuck one at most
    // its queue's limit.
    let envelope_size = berth_client::events::envelope_to_pb(berth_metadata::Envelope {
        timestamp: std::time::SystemTime::now(),
        namespace: "default".into(),
        topic: SEQUENCE.into(),
        event: sequence_event(0, PADDING),
    })
    .compute_size() as usize;
    let bound = SUBSCRIBERS * WINDOW as usize * envelope_size + limits().max_queued_bytes;
    assert!(
        stats.peak_buffered_bytes <= bound,
        "peak {} bytes buffered, bound {bound}",
        stats.peak_buffered_bytes
    );

    // What the stuck subscriber gets once it reads: a gap-free prefix of
    // the events, then the stream's end with ResourceExhausted.
    let (mut next_sequence, mut next_filler) = (0u64, 0u64);
    let status = read_to_the_end(&mut stuck, Some(1), |message| {
        let envelope = pb::Envelope::parse_from_bytes(&message.payload).unwrap();
        let next = match envelope.topic.as_str() {
            SEQUENCE => &mut next_sequence,
            _ => &mut next_filler,
        };
        assert_eq!(
            sequence_of(&envelope.event.value),
            *next,
            "{}",
            envelope.topic
        );
        *next += 1;
    })
    .await;
    assert_eq!(
        status.code(),
        Code::RESOURCE_EXHAUSTED,
        "{}",
        status.message
    );
    assert!(
        next_sequence + next_filler < EVENTS + filler,
        "the stuck subscriber got everything"
    );
    drop(live);
}

const KIB: u64 = 1024;
/// Events as large as the default limits let them be, near enough: few of
/// them fill a queue's bytes, and a queue held to its count alone (1024)
/// would be 200 MiB.
const LARGE_PADDING: usize = 200 * 1024;
const LARGE: &str = "/test/large";
const HELLO: &str = "/test/hello";

/// Publishes small events on HELLO until `received` (a subscriber's read)
/// completes: then that subscriber is registered, and everything published
/// after reaches it. The ceiling only turns a hang into a failure.
/// Reads a raw subscriber's stream to its end: each data message goes to
/// `on_data`, and the final response's status is returned. With `stream`,
/// every message must belong to that stream.
async fn read_to_the_end(
    subscriber: &mut UnixStream,
    stream: Option<u32>,
    mut on_data: impl FnMut(&GenMessage),
) -> ttrpc::proto::Status {
    loop {
        let message = GenMessage::read_from(&mut *subscriber).await.unwrap();
        if let Some(stream) = stream {
            assert_eq!(message.header.stream_id, stream);
        }
        match message.header.type_ {
            MESSAGE_TYPE_DATA => on_data(&message),
            MESSAGE_TYPE_RESPONSE => {
                let response: Response = Codec::decode(&message.payload).unwrap();
                return response.status.into_option().expect("a status");
            }
            other => panic!("unexpected message type {other}"),
        }
    }
}

async fn until_received<T>(events: &RemoteEvents, received: impl Future<Output = T>) -> T {
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut received = std::pin::pin!(received);
    for n in 0.. {
        events
            .publish("default", HELLO, sequence_event(n, 0))
            .await
            .unwrap();
        if let Ok(value) = tokio::time::timeout(Duration::from_millis(50), &mut received).await {
            return value;
        }
        assert!(Instant::now() < give_up, "a subscriber never registered");
    }
    unreachable!()
}

/// The exchange's own counters could be wrong: this measures a real
/// berth-metad process. A subscriber that never reads may cost it at most
/// what the limits allow one subscriber (its queue, plus the envelope on
/// its way to the socket), however much is published; past that it is cut
/// off and its queue freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_costs_the_metad_process_no_more_than_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing in this test asks contentd or snapd.
    let absent = dir.path().join("absent.sock");
    let absent = absent.to_str().unwrap();
    let daemon = Daemon::start_with_args(
        "berth-metad",
        &dir.path().join("metad"),
        &["--contentd", absent, "--snapd", absent],
    );
    let limits = ExchangeLimits::default();
    let events = RemoteEvents::connect(&daemon.socket).await.unwrap();
    let envelope_size = berth_client::events::envelope_to_pb(berth_metadata::Envelope {
        timestamp: std::time::SystemTime::now(),
        namespace: "default".into(),
        topic: LARGE.into(),
        event: sequence_event(0, LARGE_PADDING),
    })
    .compute_size() as usize;
    assert!(envelope_size <= limits.max_event_bytes);
    // Enough to end a subscriber held to either limit alone.
    let published = limits
        .max_queued_events
        .max(limits.max_queued_bytes / envelope_size)
        + 64;

    // Warm up: the same large events through a subscriber that reads them,
    // so that publishing, fanning out and sending have all run; what the
    // process peaked at then is the baseline.
    let mut live = events.subscribe(&[]).await.unwrap();
    until_received(&events, live.next()).await.unwrap();
    let reader = tokio::spawn(async move {
        loop {
            let envelope = live.next().await.unwrap().expect("stream open");
            if envelope.topic == LARGE && sequence_of(&envelope.event.value) == 63 {
                return live;
            }
        }
    });
    for n in 0..64 {
        events
            .publish("default", LARGE, sequence_event(n, LARGE_PADDING))
            .await
            .unwrap();
    }
    drop(reader.await.unwrap());
    let baseline = daemon.peak_rss_kib();

    // A subscriber that reads one event, to know it is registered, and then
    // nothing while far more than its queue may hold is published.
    let mut stuck = stuck_subscriber(&daemon.socket).await;
    let first = until_received(&events, GenMessage::read_from(&mut stuck)).await;
    assert_eq!(first.unwrap().header.type_, MESSAGE_TYPE_DATA);
    for n in 0..published {
        events
            .publish("default", LARGE, sequence_event(n as u64, LARGE_PADDING))
            .await
            .unwrap();
    }
    let peak = daemon.peak_rss_kib();
    // The queue's bytes, the envelope being written to the socket and the
    // one being fanned out: what one subscriber may cost, by the limits;
    // and 16 MiB for the allocator (freed buffers it keeps, per-thread
    // arenas), far below the 200 MiB a queue bounded by count alone holds.
    let allowed = (limits.max_queued_bytes + 2 * limits.max_event_bytes) as u64 / KIB;
    let slack = 16 * KIB;
    let bound = baseline + allowed + slack;
    eprintln!(
        "metad VmHWM: baseline {baseline} KiB, with a stuck subscriber {peak} KiB, bound {bound} KiB"
    );
    assert!(
        peak <= bound,
        "berth-metad peaked at {peak} KiB with a stuck subscriber ({published} events of \
         {envelope_size} bytes published), {baseline} KiB before it; at most {bound} KiB allowed"
    );

    // And it was cut off: what it reads is a prefix, then ResourceExhausted.
    let status = read_to_the_end(&mut stuck, None, |_| {}).await;
    assert_eq!(
        status.code(),
        Code::RESOURCE_EXHAUSTED,
        "{}",
        status.message
    );
}
