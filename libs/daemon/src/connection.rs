//! Every accepted connection, guarded: back-pressure on what a caller may
//! make the daemon hold.
//!
//! ttrpc-rust reads a connection's frames as fast as they arrive and spawns
//! a task for each one, whether or not the caller reads its replies and
//! whether or not the stream a frame belongs to takes it. A caller that
//! floods requests without reading, or sends data to a stream nobody
//! receives on, makes the daemon hold every frame until it runs out of
//! memory. A [`GuardedConnection`] sits between the socket and ttrpc, reads
//! the frame headers going both ways, and stops reading from a caller while
//! that caller has more frames (or bytes) the daemon has not answered than
//! [`Limits`] allows. The kernel's socket buffer then fills and the caller's
//! writes block: the caller waits, not the daemon's memory.
//!
//! A frame counts as answered when the daemon sends a frame on the same
//! stream (a reply to a request, a reply to each chunk of a write stream,
//! a stream's data); a stream's last frame (a response, or data marked
//! remote-closed) answers everything the caller sent on it. ttrpc clients
//! (Go's and Rust's) always read their replies, so a well-behaved caller
//! only waits here when it has more than [`Limits::frames`] calls in flight
//! on one connection.
//!
//! The guard also tells handlers which connection a request came on (see
//! [`crate::peer_hung_up`]): ttrpc only passes connection data to handlers
//! from an accept hook, and an accept hook only runs on ttrpc's own socket
//! types. Each request frame gets one more metadata entry,
//! [`CONNECTION_KEY`], appended to its payload (protobuf merges a repeated
//! field appended at the end with the ones before it).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use ttrpc::r#async::transport::Listener;

use crate::liveness::{ConnectionWatch, Registration};
use crate::passed::{control_buffer, poll_receive};
use crate::{DaemonError, PeerPolicy};

/// The metadata key whose (last) value names the connection a request came
/// on.
pub(crate) const CONNECTION_KEY: &str = "berth-connection";

/// ttrpc's frame header: length (u32), stream id (u32), type, flags.
const HEADER_LENGTH: usize = 10;
/// A frame that opens a call.
pub const FRAME_TYPE_REQUEST: u8 = 1;
const TYPE_REQUEST: u8 = FRAME_TYPE_REQUEST;
const TYPE_RESPONSE: u8 = 2;
const TYPE_DATA: u8 = 3;
const FLAG_REMOTE_CLOSED: u8 = 0x1;
/// The largest payload ttrpc accepts (it discards larger frames unread).
const MESSAGE_LENGTH_MAX: u32 = 4 << 20;

/// How much one caller may have sent that the daemon has not answered
/// before the daemon stops reading from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Frames: each one a task in ttrpc, whatever its size.
    pub(crate) frames: usize,
    /// Payload bytes.
    pub(crate) bytes: u64,
}

impl Limits {
    /// Room for a deep pipeline of writes (berth's client keeps 8 chunks of
    /// at most 1 MiB in flight) and for many concurrent long calls (Wait,
    /// Subscribe) on one connection; at most a few tens of MiB per caller.
    pub(crate) const DEFAULT: Limits = Limits {
        frames: 1024,
        bytes: 32 << 20,
    };
}

/// The daemon's listener: accepts connections on `listener`, refuses the
/// callers `policy` does not admit, and hands ttrpc each admitted one
/// guarded by `limits`.
pub(crate) fn guarded_listener(
    listener: std::os::unix::net::UnixListener,
    policy: PeerPolicy,
    limits: Limits,
) -> Result<Listener, DaemonError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| DaemonError::Server(format!("listening: {e}")))?;
    let listener = UnixListener::from_std(listener)
        .map_err(|e| DaemonError::Server(format!("listening: {e}")))?;
    let accepted = futures::stream::unfold(listener, move |listener| {
        let policy = policy.clone();
        async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => return Some((Err(e), listener)),
                };
                match policy.admits(stream.as_fd()) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read a caller's credentials: refused");
                        continue;
                    }
                }
                return Some((Ok(GuardedConnection::new(stream, limits)), listener));
            }
        }
    });
    Ok(Listener::new(accepted))
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// One accepted connection with back-pressure (see the module docs).
#[derive(Debug)]
pub(crate) struct GuardedConnection {
    stream: UnixStream,
    limits: Limits,
    ledger: Ledger,
    inbound: Inbound,
    /// Bytes for ttrpc to read before anything more from the socket: a
    /// frame header (its length rewritten) or a request's metadata suffix.
    pending: Vec<u8>,
    pending_at: usize,
    /// The metadata entry appended to each request.
    suffix: Vec<u8>,
    outbound: FrameReader,
    /// ttrpc's reader, waiting for the caller's frames to be answered.
    reader_waiting: Option<Waker>,
    /// Where handlers find this connection, by id (see [`CONNECTION_KEY`]).
    registration: Option<Registration>,
    /// Room for the descriptors a caller passes (see
    /// [`crate::take_passed_file`]).
    control: Vec<u8>,
}

impl GuardedConnection {
    fn new(stream: UnixStream, limits: Limits) -> GuardedConnection {
        let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let registration = match ConnectionWatch::start(stream.as_fd()) {
            Ok(watch) => Some(Registration::new(id, watch)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch connection for hang-ups");
                None
            }
        };
        GuardedConnection {
            stream,
            limits,
            ledger: Ledger::default(),
            inbound: Inbound::FrameHeader(HeaderBytes::default()),
            pending: Vec::new(),
            pending_at: 0,
            suffix: connection_metadata(id),
            outbound: FrameReader::default(),
            reader_waiting: None,
            registration,
            control: control_buffer(),
        }
    }
}

/// The encoded `metadata` field (5) of ttrpc's `Request` holding one
/// `KeyValue { key: CONNECTION_KEY, value: id }`.
fn connection_metadata(id: u64) -> Vec<u8> {
    let value = id.to_string();
    let mut entry = vec![0x0a, CONNECTION_KEY.len() as u8];
    entry.extend_from_slice(CONNECTION_KEY.as_bytes());
    entry.extend_from_slice(&[0x12, value.len() as u8]);
    entry.extend_from_slice(value.as_bytes());
    let mut field = vec![0x2a, entry.len() as u8];
    field.extend_from_slice(&entry);
    field
}

/// One ttrpc frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub stream_id: u32,
    /// [`FRAME_TYPE_REQUEST`], response (2) or data (3).
    pub kind: u8,
    pub flags: u8,
}

impl FrameHeader {
    fn parse(bytes: &[u8; HEADER_LENGTH]) -> FrameHeader {
        FrameHeader {
            length: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            stream_id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            kind: bytes[8],
            flags: bytes[9],
        }
    }

    /// The last frame the daemon sends on a stream.
    fn ends_stream(&self) -> bool {
        self.kind == TYPE_RESPONSE
            || (self.kind == TYPE_DATA && self.flags & FLAG_REMOTE_CLOSED != 0)
    }
}

/// A frame header being collected.
#[derive(Debug, Default)]
struct HeaderBytes {
    bytes: [u8; HEADER_LENGTH],
    have: usize,
}

/// Frames followed byte by byte as they are written (the daemon's here; a
/// client's writes to a server elsewhere): a header being collected, then
/// a payload being skipped.
#[derive(Debug, Default)]
pub struct FrameReader {
    header: HeaderBytes,
    payload_left: u64,
}

impl FrameReader {
    /// Follows `bytes`; calls `on_header` for each header completed.
    pub fn follow(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(FrameHeader)) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = (self.payload_left.min(bytes.len() as u64)) as usize;
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let at = self.header.have;
            let take = (HEADER_LENGTH - at).min(bytes.len());
            self.header.bytes[at..at + take].copy_from_slice(&bytes[..take]);
            self.header.have += take;
            bytes = &bytes[take..];
            if self.header.have == HEADER_LENGTH {
                let header = FrameHeader::parse(&self.header.bytes);
                self.header.have = 0;
                self.payload_left = u64::from(header.length);
                on_header(header);
            }
        }
    }
}

/// Where the caller's side of the connection is.
#[derive(Debug)]
enum Inbound {
    /// Collecting a frame header (from the socket, never more than the
    /// header, so that the payload goes straight into ttrpc's buffer).
    FrameHeader(HeaderBytes),
    /// Passing `left` payload bytes through; then the suffix, if this is a
    /// request.
    Payload { left: u64, suffix: bool },
}

/// What the caller has sent that the daemon has not answered.
#[derive(Debug, Default)]
struct Ledger {
    /// Per stream, the payload lengths of the caller's unanswered frames,
    /// oldest first.
    streams: HashMap<u32, VecDeque<u32>>,
    frames: usize,
    bytes: u64,
}

impl Ledger {
    fn caller_sent(&mut self, header: FrameHeader) {
        let length = header.length.min(MESSAGE_LENGTH_MAX);
        self.streams
            .entry(header.stream_id)
            .or_default()
            .push_back(length);
        self.frames += 1;
        self.bytes += u64::from(length);
    }

    fn daemon_sent(&mut self, header: FrameHeader) {
        if header.ends_stream() {
            if let Some(unanswered) = self.streams.remove(&header.stream_id) {
                self.frames -= unanswered.len();
                self.bytes -= unanswered.iter().map(|l| u64::from(*l)).sum::<u64>();
            }
            return;
        }
        if let Some(unanswered) = self.streams.get_mut(&header.stream_id) {
            if let Some(length) = unanswered.pop_front() {
                self.frames -= 1;
                self.bytes -= u64::from(length);
            }
        }
    }

    fn over(&self, limits: Limits) -> bool {
        self.frames >= limits.frames || self.bytes >= limits.bytes
    }
}

impl GuardedConnection {
    fn receive(&mut self, cx: &mut Context<'_>, into: &mut [u8]) -> Poll<io::Result<usize>> {
        receive(
            &self.stream,
            self.registration.as_ref(),
            &mut self.control,
            cx,
            into,
        )
    }
}

/// Reads the caller's bytes; a file it passed with them is held for the
/// handler of its request (see [`crate::take_passed_file`]), or closed on a
/// connection without a registration, where no handler could find it.
fn receive(
    stream: &UnixStream,
    registration: Option<&Registration>,
    control: &mut Vec<u8>,
    cx: &mut Context<'_>,
    into: &mut [u8],
) -> Poll<io::Result<usize>> {
    poll_receive(stream, cx, into, control, |fd| {
        if let Some(registration) = registration {
            registration.passed().hold(fd);
        }
    })
}

impl AsyncRead for GuardedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.pending_at < this.pending.len() {
                let n = (this.pending.len() - this.pending_at).min(buf.remaining());
                buf.put_slice(&this.pending[this.pending_at..this.pending_at + n]);
                this.pending_at += n;
                if this.pending_at == this.pending.len() {
                    this.pending.clear();
                    this.pending_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.inbound {
                Inbound::Payload { left: 0, suffix } => {
                    if suffix {
                        this.pending.extend_from_slice(&this.suffix);
                    }
                    this.inbound = Inbound::FrameHeader(HeaderBytes::default());
                }
                Inbound::Payload { left, suffix } => {
                    let room = left.min(buf.remaining() as u64) as usize;
                    let mut part = buf.take(room);
                    let n = ready!(this.receive(cx, part.initialize_unfilled()))?;
                    // SAFETY: `part` is the unfilled part of `buf`, which
                    // `initialize_unfilled` initialised, and the socket's
                    // read filled its first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if n > 0 {
                        this.inbound = Inbound::Payload {
                            left: left - n as u64,
                            suffix,
                        };
                    }
                    // n == 0: the caller hung up; ttrpc sees a short frame.
                    return Poll::Ready(Ok(()));
                }
                Inbound::FrameHeader(ref mut header) => {
                    if header.have == 0 && this.ledger.over(this.limits) {
                        // Hold off until the daemon answers; unless the
                        // caller is gone, which ends the connection (and
                        // with it the tasks holding its frames).
                        if let Some(registration) = &this.registration {
                            if registration.poll_hung_up(cx).is_ready() {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        this.reader_waiting = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    let n = ready!(receive(
                        &this.stream,
                        this.registration.as_ref(),
                        &mut this.control,
                        cx,
                        &mut header.bytes[header.have..]
                    ))?;
                    if n == 0 {
                        // The caller hung up. What there is of a header
                        // goes to ttrpc, which sees a short frame.
                        this.pending.extend_from_slice(&header.bytes[..header.have]);
                        let partial = header.have;
                        *header = HeaderBytes::default();
                        if partial == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    header.have += n;
                    if header.have < HEADER_LENGTH {
                        continue;
                    }
                    let bytes = header.bytes;
                    let mut frame = FrameHeader::parse(&bytes);
                    this.ledger.caller_sent(frame);
                    let suffix_length = this.suffix.len() as u32;
                    let suffix = frame.kind == TYPE_REQUEST
                        && frame.length <= MESSAGE_LENGTH_MAX - suffix_length;
                    let payload = u64::from(frame.length);
                    if suffix {
                        frame.length += suffix_length;
                    }
                    this.pending.extend_from_slice(&frame.length.to_be_bytes());
                    this.pending.extend_from_slice(&bytes[4..]);
                    this.inbound = Inbound::Payload {
                        left: payload,
                        suffix,
                    };
                }
            }
        }
    }
}

impl AsyncWrite for GuardedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.stream).poll_write(cx, data))?;
        let was_over = this.ledger.over(this.limits);
        let ledger = &mut this.ledger;
        this.outbound
            .follow(&data[..n], |header| ledger.daemon_sent(header));
        if was_over && !this.ledger.over(this.limits) {
            if let Some(reader) = this.reader_waiting.take() {
                reader.wake();
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::registry;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use ttrpc::proto::{Codec, KeyValue, Request};

    fn frame(length: u32, stream_id: u32, kind: u8, flags: u8) -> [u8; HEADER_LENGTH] {
        let mut bytes = [0; HEADER_LENGTH];
        bytes[..4].copy_from_slice(&length.to_be_bytes());
        bytes[4..8].copy_from_slice(&stream_id.to_be_bytes());
        bytes[8] = kind;
        bytes[9] = flags;
        bytes
    }

    #[test]
    fn the_appended_entry_is_the_last_value_of_its_key_after_the_callers_own() {
        let request = Request {
            service: "containerd.services.content.v1.Content".into(),
            method: "Info".into(),
            payload: vec![1, 2, 3],
            metadata: vec![
                KeyValue {
                    key: "containerd-namespace".into(),
                    value: "team-a".into(),
                    ..Default::default()
                },
                KeyValue {
                    key: CONNECTION_KEY.into(),
                    value: "999".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut bytes = request.encode().unwrap();
        bytes.extend_from_slice(&connection_metadata(7));
        let merged = Request::decode(&bytes).unwrap();
        assert_eq!(merged.payload, vec![1, 2, 3]);
        let metadata = ttrpc::context::from_pb(&merged.metadata);
        assert_eq!(metadata[CONNECTION_KEY], vec!["999", "7"]);
        assert_eq!(metadata["containerd-namespace"], vec!["team-a"]);
    }

    #[test]
    fn a_frame_is_answered_by_the_next_frame_on_its_stream_and_a_stream_end_answers_all() {
        let limits = Limits {
            frames: 3,
            bytes: 1000,
        };
        let mut ledger = Ledger::default();
        let header = |length, stream_id, kind, flags| {
            FrameHeader::parse(&frame(length, stream_id, kind, flags))
        };
        // A write stream: its opening request and two chunks.
        ledger.caller_sent(header(10, 1, TYPE_REQUEST, 0));
        ledger.caller_sent(header(100, 1, TYPE_DATA, 0));
        assert!(!ledger.over(limits));
        ledger.caller_sent(header(100, 1, TYPE_DATA, 0));
        assert!(ledger.over(limits), "three frames unanswered");
        // A reply on another stream answers nothing here.
        ledger.daemon_sent(header(5, 3, TYPE_DATA, 0));
        assert!(ledger.over(limits));
        ledger.daemon_sent(header(5, 1, TYPE_DATA, 0));
        assert_eq!((ledger.frames, ledger.bytes), (2, 200));
        assert!(!ledger.over(limits));
        // Bytes count too; an oversized frame as the most ttrpc reads.
        ledger.caller_sent(header(u32::MAX, 5, TYPE_REQUEST, 0));
        assert!(ledger.over(limits));
        ledger.daemon_sent(header(20, 5, TYPE_RESPONSE, 0));
        assert_eq!((ledger.frames, ledger.bytes), (2, 200));
        // The stream's last frame answers everything sent on it.
        ledger.daemon_sent(header(0, 1, TYPE_DATA, FLAG_REMOTE_CLOSED));
        assert_eq!((ledger.frames, ledger.bytes), (0, 0));
        assert!(ledger.streams.is_empty());
    }

    #[test]
    fn headers_split_across_writes_are_followed() {
        let mut wire = Vec::new();
        for (stream_id, payload) in [(1u32, 3usize), (3, 0), (5, 70)] {
            wire.extend_from_slice(&frame(payload as u32, stream_id, TYPE_RESPONSE, 0));
            wire.extend(std::iter::repeat_n(0xab, payload));
        }
        for chunk in [1, 4, 9, 10, 11, 64] {
            let mut reader = FrameReader::default();
            let mut seen = Vec::new();
            for part in wire.chunks(chunk) {
                reader.follow(part, |h| seen.push((h.stream_id, h.length)));
            }
            assert_eq!(seen, vec![(1, 3), (3, 0), (5, 70)], "chunks of {chunk}");
        }
    }

    /// ttrpc's side of a guarded connection, and the caller's.
    fn pair(limits: Limits) -> (GuardedConnection, UnixStream) {
        let (daemon, caller) = UnixStream::pair().unwrap();
        (GuardedConnection::new(daemon, limits), caller)
    }

    async fn read_frame(guarded: &mut GuardedConnection) -> (FrameHeader, Vec<u8>) {
        let mut bytes = [0; HEADER_LENGTH];
        guarded.read_exact(&mut bytes).await.unwrap();
        let header = FrameHeader::parse(&bytes);
        let mut payload = vec![0; header.length as usize];
        guarded.read_exact(&mut payload).await.unwrap();
        (header, payload)
    }

    #[tokio::test]
    async fn requests_carry_the_connection_and_other_frames_pass_unchanged() {
        let (mut guarded, mut caller) = pair(Limits::DEFAULT);
        let request = Request {
            service: "s".into(),
            method: "m".into(),
            ..Default::default()
        }
        .encode()
        .unwrap();
        caller
            .write_all(&frame(request.len() as u32, 1, TYPE_REQUEST, 0))
            .await
            .unwrap();
        caller.write_all(&request).await.unwrap();
        caller.write_all(&frame(4, 1, TYPE_DATA, 0)).await.unwrap();
        caller.write_all(b"data").await.unwrap();

        let (header, payload) = read_frame(&mut guarded).await;
        assert_eq!((header.stream_id, header.kind), (1, TYPE_REQUEST));
        let decoded = Request::decode(&payload).unwrap();
        assert_eq!(
            (decoded.service.as_str(), decoded.method.as_str()),
            ("s", "m")
        );
        let metadata = ttrpc::context::from_pb(&decoded.metadata);
        let id: u64 = metadata[CONNECTION_KEY][0].parse().unwrap();
        assert!(registry().lock().unwrap().contains_key(&id));

        let (header, payload) = read_frame(&mut guarded).await;
        assert_eq!((header.length, header.kind), (4, TYPE_DATA));
        assert_eq!(payload, b"data");

        drop(guarded);
        assert!(!registry().lock().unwrap().contains_key(&id));
    }

    #[tokio::test]
    async fn reading_stops_while_too_much_is_unanswered_and_resumes_on_an_answer() {
        let limits = Limits {
            frames: 2,
            bytes: 1 << 20,
        };
        let (guarded, mut caller) = pair(limits);
        // Split as ttrpc splits it: a reader task and a writer.
        let (mut reader, mut writer) = tokio::io::split(guarded);
        for stream_id in [1, 3, 5] {
            caller
                .write_all(&frame(0, stream_id, TYPE_DATA, 0))
                .await
                .unwrap();
        }
        let read = tokio::spawn(async move {
            let mut streams = Vec::new();
            for _ in 0..3 {
                let mut bytes = [0; HEADER_LENGTH];
                reader.read_exact(&mut bytes).await.unwrap();
                streams.push(FrameHeader::parse(&bytes).stream_id);
            }
            streams
        });
        // The third frame is in the socket, but two are unanswered. (The
        // wait only gives a broken guard the time to read it.)
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !read.is_finished(),
            "read a third frame with two unanswered"
        );
        // A reply on stream 3 answers one: the third frame is read.
        writer.write_all(&frame(0, 3, TYPE_DATA, 0)).await.unwrap();
        assert_eq!(read.await.unwrap(), vec![1, 3, 5]);
        let mut answer = [0; HEADER_LENGTH];
        caller.read_exact(&mut answer).await.unwrap();
        assert_eq!(FrameHeader::parse(&answer).stream_id, 3);
    }

    #[tokio::test]
    async fn a_caller_that_hangs_up_while_held_off_ends_the_connection() {
        let limits = Limits {
            frames: 1,
            bytes: 1 << 20,
        };
        let (mut guarded, mut caller) = pair(limits);
        caller.write_all(&frame(0, 1, TYPE_DATA, 0)).await.unwrap();
        caller.write_all(&frame(0, 1, TYPE_DATA, 0)).await.unwrap();
        let mut bytes = [0; HEADER_LENGTH];
        guarded.read_exact(&mut bytes).await.unwrap();
        drop(caller);
        // Held off (one frame unanswered), then end of file: the connection
        // ends instead of waiting for an answer no one will read.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            guarded.read_to_end(&mut rest),
        );
        ended
            .await
            .expect("still held off after the hang-up")
            .unwrap();
        assert!(rest.is_empty());
    }
}
