//! Fan-out of envelopes to subscribers' bounded queues.
//!
//! One lock over the subscriber list serialises publishing, which gives
//! every subscriber the same order; pushing onto a queue never waits. A
//! push that would take a queue past its limits ends that subscriber
//! instead: its queue is freed at once and its stream told why.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use berth_api::events as pb;
use berth_api::protobuf::Message;
use berth_client::events::envelope_to_pb;
use berth_errdefs::{Error, Result};
use berth_filters::Filter;
use berth_metadata::{Any, Envelope};
use tokio::sync::Notify;

use super::fields::EnvelopeFields;
use super::validate::validate_envelope;

/// How much the exchange holds for its subscribers.
///
/// The exchange buffers at most `max_subscribers * max_queued_bytes` bytes
/// of envelopes; one more envelope per subscriber is in flight to its
/// socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeLimits {
    /// Most envelopes waiting for one subscriber.
    pub max_queued_events: usize,
    /// Most bytes (encoded envelopes) waiting for one subscriber.
    pub max_queued_bytes: usize,
    /// Largest envelope accepted, encoded; at most `max_queued_bytes`.
    pub max_event_bytes: usize,
    /// Most subscribers at once.
    pub max_subscribers: usize,
}

impl Default for ExchangeLimits {
    fn default() -> ExchangeLimits {
        ExchangeLimits {
            max_queued_events: 1024,
            max_queued_bytes: 1024 * 1024,
            max_event_bytes: 256 * 1024,
            max_subscribers: 512,
        }
    }
}

/// What the exchange holds now, and has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeStats {
    pub subscribers: usize,
    /// Bytes of envelopes waiting in subscribers' queues.
    pub buffered_bytes: usize,
    /// The most `buffered_bytes` has been.
    pub peak_buffered_bytes: usize,
    /// Subscribers ended because they fell behind.
    pub dropped_subscribers: u64,
    /// Envelopes fanned out.
    pub published: u64,
}

/// Fans published envelopes out to subscribers without ever blocking a
/// publisher.
#[derive(Debug)]
pub struct Exchange {
    limits: ExchangeLimits,
    subscribers: Mutex<Subscribers>,
    buffered_bytes: AtomicUsize,
    peak_buffered_bytes: AtomicUsize,
    dropped_subscribers: AtomicU64,
    published: AtomicU64,
}

#[derive(Debug, Default)]
struct Subscribers {
    next_id: u64,
    active: Vec<Arc<Subscriber>>,
    /// Set by [`Exchange::close`]: no one may subscribe any more.
    closed: bool,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    filter: Filter,
    queue: Mutex<Queue>,
    /// Woken on every push and when the subscriber is ended; it has one
    /// waiter, so a permit is never lost.
    wake: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    envelopes: VecDeque<Queued>,
    bytes: usize,
    /// Why the exchange ended this subscriber, once it has.
    ended: Option<Error>,
}

#[derive(Debug)]
struct Queued {
    envelope: Arc<pb::Envelope>,
    size: usize,
}

/// A lock whose holder panicked still guards consistent data here (every
/// update is a few field writes), so carry on rather than crash metad.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Exchange {
    pub fn new() -> Arc<Exchange> {
        Exchange::with_limits(ExchangeLimits::default())
    }

    /// An exchange with other limits; `max_event_bytes` is capped at
    /// `max_queued_bytes` so that any accepted envelope fits a queue.
    pub fn with_limits(mut limits: ExchangeLimits) -> Arc<Exchange> {
        limits.max_event_bytes = limits.max_event_bytes.min(limits.max_queued_bytes);
        Arc::new(Exchange {
            limits,
            subscribers: Mutex::new(Subscribers::default()),
            buffered_bytes: AtomicUsize::new(0),
            peak_buffered_bytes: AtomicUsize::new(0),
            dropped_subscribers: AtomicU64::new(0),
            published: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> &ExchangeLimits {
        &self.limits
    }

    pub fn stats(&self) -> ExchangeStats {
        ExchangeStats {
            subscribers: lock(&self.subscribers).active.len(),
            buffered_bytes: self.buffered_bytes.load(Ordering::SeqCst),
            peak_buffered_bytes: self.peak_buffered_bytes.load(Ordering::SeqCst),
            dropped_subscribers: self.dropped_subscribers.load(Ordering::SeqCst),
            published: self.published.load(Ordering::SeqCst),
        }
    }

    /// An event from metad itself or a Publish call: stamped now. An
    /// envelope the exchange refuses is logged and dropped; callers that
    /// need to know use [`Exchange::try_forward`].
    pub fn publish(&self, namespace: &str, topic: &str, event: Any) {
        self.forward(Envelope {
            timestamp: SystemTime::now(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event,
        });
    }

    /// Publishes a protobuf event as containerd does: the message in an
    /// `Any` whose type URL is its full protobuf name
    /// (`containerd.events.ContainerCreate`, but
    /// `containerd.services.images.v1.ImageCreate`). An event that does
    /// not encode is logged and dropped.
    pub fn publish_message<M: berth_api::protobuf::MessageFull>(
        &self,
        namespace: &str,
        topic: &str,
        event: &M,
    ) {
        let value = match event.write_to_bytes() {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(topic, error = %e, "could not encode an event");
                return;
            }
        };
        let any = Any {
            type_url: M::descriptor().full_name().to_string(),
            value,
        };
        self.publish(namespace, topic, any);
    }

    /// An envelope relayed as it is.
    pub fn forward(&self, envelope: Envelope) {
        let topic = envelope.topic.clone();
        if let Err(e) = self.try_forward(envelope) {
            tracing::warn!(%topic, error = %e, "event dropped");
        }
    }

    /// Validates an envelope and hands it to every subscriber whose filter
    /// matches. InvalidArgument for a bad namespace, topic, time or an
    /// envelope over `max_event_bytes`.
    pub fn try_forward(&self, envelope: Envelope) -> Result<()> {
        validate_envelope(&envelope)?;
        let envelope = envelope_to_pb(envelope);
        let size = usize::try_from(envelope.compute_size()).unwrap_or(usize::MAX);
        if size > self.limits.max_event_bytes {
            return Err(Error::invalid_argument(format!(
                "event on {} is {size} bytes, more than the {} an event may have",
                envelope.topic, self.limits.max_event_bytes
            )));
        }
        let envelope = Arc::new(envelope);
        let fields = EnvelopeFields::new(&envelope);
        let mut subscribers = lock(&self.subscribers);
        self.published.fetch_add(1, Ordering::SeqCst);
        subscribers.active.retain(|subscriber| {
            if !subscriber.filter.matches(&fields) {
                return true;
            }
            self.push(subscriber, &envelope, size)
        });
        Ok(())
    }

    /// Queues an envelope for one subscriber; false if that ended it.
    fn push(&self, subscriber: &Subscriber, envelope: &Arc<pb::Envelope>, size: usize) -> bool {
        let mut queue = lock(&subscriber.queue);
        if queue.ended.is_some() {
            return false;
        }
        let limits = &self.limits;
        if queue.envelopes.len() >= limits.max_queued_events
            || queue.bytes + size > limits.max_queued_bytes
        {
            let error = Error::resource_exhausted(format!(
                "subscriber fell behind: {} events ({} bytes) were waiting for it, \
                 at most {} events or {} bytes may",
                queue.envelopes.len(),
                queue.bytes,
                limits.max_queued_events,
                limits.max_queued_bytes
            ));
            tracing::warn!(subscriber = subscriber.id, error = %error, "ending a slow subscriber");
            self.release(&mut queue);
            queue.ended = Some(error);
            drop(queue);
            self.dropped_subscribers.fetch_add(1, Ordering::SeqCst);
            subscriber.wake.notify_one();
            return false;
        }
        queue.envelopes.push_back(Queued {
            envelope: envelope.clone(),
            size,
        });
        queue.bytes += size;
        drop(queue);
        let now = self.buffered_bytes.fetch_add(size, Ordering::SeqCst) + size;
        self.peak_buffered_bytes.fetch_max(now, Ordering::SeqCst);
        subscriber.wake.notify_one();
        true
    }

    /// Frees everything waiting in a queue.
    fn release(&self, queue: &mut Queue) {
        self.buffered_bytes.fetch_sub(queue.bytes, Ordering::SeqCst);
        queue.envelopes = VecDeque::new();
        queue.bytes = 0;
    }

    /// Envelopes published from now on that match `filters` (any of them;
    /// none matches all). InvalidArgument for a malformed filter,
    /// ResourceExhausted when `max_subscribers` are subscribed.
    pub fn subscribe(self: &Arc<Self>, filters: &[String]) -> Result<Subscription> {
        let filter = Filter::parse_any(filters)?;
        let mut subscribers = lock(&self.subscribers);
        if subscribers.closed {
            return Err(closing());
        }
        if subscribers.active.len() >= self.limits.max_subscribers {
            return Err(Error::resource_exhausted(format!(
                "{} subscribers already; no more may subscribe",
                subscribers.active.len()
            )));
        }
        subscribers.next_id += 1;
        let subscriber = Arc::new(Subscriber {
            id: subscribers.next_id,
            filter,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        subscribers.active.push(subscriber.clone());
        Ok(Subscription {
            exchange: self.clone(),
            subscriber,
        })
    }

    /// Ends every subscription (Unavailable) and refuses new ones, for a
    /// daemon on its way out: ttrpc waits for stream handlers before it
    /// closes a connection, and a subscription never ends by itself.
    pub fn close(&self) {
        let mut subscribers = lock(&self.subscribers);
        subscribers.closed = true;
        for subscriber in subscribers.active.drain(..) {
            let mut queue = lock(&subscriber.queue);
            self.release(&mut queue);
            queue.ended = Some(closing());
            drop(queue);
            subscriber.wake.notify_one();
        }
    }
}

fn closing() -> Error {
    Error::unavailable("berth-metad is shutting down")
}

/// Closes `exchange` when the process gets SIGTERM or SIGINT (the signals
/// `berth_daemon::serve` stops on), so that subscribers do not hold up the
/// server's shutdown.
pub fn close_on_termination(exchange: Arc<Exchange>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        exchange.close();
    });
    Ok(())
}

/// One subscriber's end of the exchange; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    exchange: Arc<Exchange>,
    subscriber: Arc<Subscriber>,
}

impl Subscription {
    /// The next envelope, waiting for one if need be; the error the
    /// exchange ended this subscription with (ResourceExhausted) once it has
    /// and the queue is empty.
    pub async fn next(&self) -> Result<Arc<pb::Envelope>> {
        loop {
            {
                let mut queue = lock(&self.subscriber.queue);
                if let Some(queued) = queue.envelopes.pop_front() {
                    queue.bytes -= queued.size;
                    drop(queue);
                    self.exchange
                        .buffered_bytes
                        .fetch_sub(queued.size, Ordering::SeqCst);
                    return Ok(queued.envelope);
                }
                if let Some(error) = &queue.ended {
                    return Err(error.clone());
                }
            }
            self.subscriber.wake.notified().await;
        }
    }

    /// Resolves with the error the exchange ends this subscription with,
    /// for a sender to give up on a socket the subscriber stopped reading.
    pub async fn ended(&self) -> Error {
        loop {
            if let Some(error) = &lock(&self.subscriber.queue).ended {
                return error.clone();
            }
            self.subscriber.wake.notified().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.exchange.subscribers)
            .active
            .retain(|s| s.id != self.subscriber.id);
        let mut queue = lock(&self.subscriber.queue);
        self.exchange.release(&mut queue);
        if queue.ended.is_none() {
            queue.ended = Some(Error::unavailable("unsubscribed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_errdefs::ErrorKind;

    use super::*;

    fn event(n: u64) -> Any {
        Any {
            type_url: "test.Sequence".into(),
            value: n.to_be_bytes().to_vec(),
        }
    }

    fn sequence(envelope: &pb::Envelope) -> u64 {
        let bytes: [u8; 8] = envelope.event.value.as_slice().try_into().unwrap();
        u64::from_be_bytes(bytes)
    }

    fn small_limits() -> ExchangeLimits {
        ExchangeLimits {
            max_queued_events: 4,
            max_queued_bytes: 4096,
            max_event_bytes: 1024,
            max_subscribers: 3,
        }
    }

    #[tokio::test]
    async fn subscribers_get_matching_events_in_publish_order() {
        let exchange = Exchange::new();
        let all = exchange.subscribe(&[]).unwrap();
        let exits = exchange
            .subscribe(&["topic==\"/tasks/exit\"".to_string()])
            .unwrap();
        for n in 0..6 {
            let topic = if n % 2 == 0 {
                "/tasks/exit"
            } else {
                "/tasks/start"
            };
            exchange.publish("default", topic, event(n));
        }
        for n in 0..6 {
            assert_eq!(sequence(&all.next().await.unwrap()), n);
        }
        for n in [0, 2, 4] {
            let envelope = exits.next().await.unwrap();
            assert_eq!(sequence(&envelope), n);
            assert_eq!(envelope.topic, "/tasks/exit");
            assert_eq!(envelope.namespace, "default");
        }
        assert_eq!(exchange.stats().buffered_bytes, 0);
    }

    #[tokio::test]
    async fn a_subscriber_past_its_queue_is_ended_and_freed_without_stalling_anyone() {
        let exchange = Exchange::with_limits(small_limits());
        let slow = exchange.subscribe(&[]).unwrap();
        let fast = exchange.subscribe(&[]).unwrap();
        for n in 0..10 {
            exchange.publish("default", "/test/seq", event(n));
            assert_eq!(sequence(&fast.next().await.unwrap()), n);
        }
        // The slow one kept the first four, then was ended by the fifth.
        let stats = exchange.stats();
        assert_eq!(stats.subscribers, 1);
        assert_eq!(stats.dropped_subscribers, 1);
        assert_eq!(stats.buffered_bytes, 0);
        assert!(stats.peak_buffered_bytes <= 2 * small_limits().max_queued_bytes);
        let err = slow.ended().await;
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        let err = slow.next().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    }

    #[tokio::test]
    async fn the_byte_limit_ends_a_subscriber_too() {
        let exchange = Exchange::with_limits(ExchangeLimits {
            max_queued_events: 1000,
            ..small_limits()
        });
        let slow = exchange.subscribe(&[]).unwrap();
        let big = Any {
            type_url: "test.Big".into(),
            value: vec![7; 900],
        };
        for _ in 0..5 {
            exchange.publish("default", "/test/big", big.clone());
        }
        assert_eq!(exchange.stats().dropped_subscribers, 1);
        assert_eq!(exchange.stats().buffered_bytes, 0);
        assert_eq!(
            slow.next().await.unwrap_err().kind(),
            ErrorKind::ResourceExhausted
        );
    }

    #[tokio::test]
    async fn oversized_events_and_bad_envelopes_are_refused() {
        let exchange = Exchange::with_limits(small_limits());
        let subscription = exchange.subscribe(&[]).unwrap();
        let too_big = Envelope {
            timestamp: SystemTime::now(),
            namespace: "default".into(),
            topic: "/test/big".into(),
            event: Any {
                type_url: "test.Big".into(),
                value: vec![0; 2000],
            },
        };
        let err = exchange.try_forward(too_big).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        exchange.publish("bad namespace", "/test/x", event(1));
        exchange.publish("default", "no-slash", event(2));
        assert_eq!(exchange.stats().published, 0);
        exchange.publish("default", "/test/x", event(3));
        assert_eq!(sequence(&subscription.next().await.unwrap()), 3);
    }

    #[tokio::test]
    async fn subscribers_are_counted_and_removed_when_dropped() {
        let exchange = Exchange::with_limits(small_limits());
        let subscriptions: Vec<_> = (0..3).map(|_| exchange.subscribe(&[]).unwrap()).collect();
        let err = exchange.subscribe(&[]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        exchange.publish("default", "/test/x", event(1));
        assert!(exchange.stats().buffered_bytes > 0);
        drop(subscriptions);
        let stats = exchange.stats();
        assert_eq!((stats.subscribers, stats.buffered_bytes), (0, 0));
        assert!(exchange.subscribe(&[]).is_ok());
        let err = exchange.subscribe(&["topic==".to_string()]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[tokio::test]
    async fn closing_ends_every_subscription_and_refuses_new_ones() {
        let exchange = Exchange::new();
        let idle = exchange
            .subscribe(&["topic==\"/never\"".to_string()])
            .unwrap();
        let waiter = tokio::spawn(async move { idle.next().await.unwrap_err() });
        let behind = exchange.subscribe(&[]).unwrap();
        exchange.publish("default", "/test/x", event(1));
        exchange.close();
        assert_eq!(waiter.await.unwrap().kind(), ErrorKind::Unavailable);
        // What was queued is dropped, not delivered late.
        assert_eq!(
            behind.next().await.unwrap_err().kind(),
            ErrorKind::Unavailable
        );
        assert_eq!(behind.ended().await.kind(), ErrorKind::Unavailable);
        let stats = exchange.stats();
        assert_eq!((stats.subscribers, stats.buffered_bytes), (0, 0));
        let err = exchange.subscribe(&[]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_for_the_next_event() {
        let exchange = Exchange::new();
        let subscription = exchange.subscribe(&[]).unwrap();
        let waiting = tokio::spawn(async move { sequence(&subscription.next().await.unwrap()) });
        tokio::task::yield_now().await;
        exchange.publish("default", "/test/x", event(42));
        assert_eq!(waiting.await.unwrap(), 42);
    }
}
