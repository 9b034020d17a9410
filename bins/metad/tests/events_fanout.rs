#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Many subscribers and one that stops reading: the ones that keep up get
//! every event in order, the stuck one is ended with ResourceExhausted, the
//! publisher never waits for it, and the exchange's memory stays within
//! what its limits allow.

mod events_support;

use berth_api::events as pb;
use berth_api::protobuf::Message;
use berth_client::events::RemoteEvents;
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
async fn stuck_subscriber(server: &EventsServer) -> UnixStream {
    let mut stream = UnixStream::connect(&server.socket).await.unwrap();
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
    let mut stuck = stuck_subscriber(&server).await;
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
    let status = loop {
        let message = GenMessage::read_from(&mut stuck).await.unwrap();
        assert_eq!(message.header.stream_id, 1);
        match message.header.type_ {
            MESSAGE_TYPE_DATA => {
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
            }
            MESSAGE_TYPE_RESPONSE => {
                let response: Response = Codec::decode(&message.payload).unwrap();
                break response.status.into_option().expect("a status");
            }
            other => panic!("unexpected message type {other}"),
        }
    };
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
