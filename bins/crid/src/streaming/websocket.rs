//! The streaming server's WebSocket transports, as client-go speaks them
//! (`crictl --transport websocket`, and kubectl through an API server that
//! passes WebSocket on):
//!
//! - remotecommand (exec, attach) over `v5.channel.k8s.io`,
//!   `v4.channel.k8s.io` or the older `channel.k8s.io`: every binary
//!   message is one byte naming the channel (0 stdin, 1 stdout, 2 stderr,
//!   3 error, 4 resize) and the data; v5 adds the client's half-close, the
//!   message `[255, channel]`. The base64 variants (`v4.base64.channel.k8s.io`,
//!   `base64.channel.k8s.io`, for clients such as browsers that send text)
//!   carry the same in text messages: the channel as an ASCII digit, then
//!   the data in base64;
//! - port-forward as SPDY/3.1 tunnelled through binary messages
//!   (`SPDY/3.1+portforward.k8s.io`): the bytes of the messages, in order,
//!   are the SPDY connection.
//!
//! Both end in the [`Session`] that SPDY gives the handlers, so exec,
//! attach and port-forward are the same code whatever the transport.

use std::collections::HashMap;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::spdy::{Incoming, Outgoing, Session};

/// The remotecommand subprotocols over WebSocket, most preferred first.
pub const CHANNEL_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// How a channel protocol's messages carry data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary messages: the channel byte, then the data.
    Binary,
    /// Text messages: the channel as an ASCII digit, then base64.
    Base64,
}

impl Encoding {
    /// The encoding of channel protocol `protocol`.
    pub fn of(protocol: &str) -> Encoding {
        if protocol.contains("base64.") {
            Encoding::Base64
        } else {
            Encoding::Binary
        }
    }

    fn frame(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Encoding::Binary => {
                let mut framed = Vec::with_capacity(data.len() + 1);
                framed.push(channel);
                framed.extend_from_slice(data);
                Message::Binary(framed.into())
            }
            Encoding::Base64 => {
                use base64::Engine;
                let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
                text.push(char::from(b'0' + channel));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Message::Text(text.into())
            }
        }
    }

    /// A client message's channel and data; None for one that carries
    /// nothing this encoding reads (the wrong kind, or not base64).
    fn unframe(self, message: &Message) -> Option<(u8, Vec<u8>)> {
        match (self, message) {
            (Encoding::Binary, Message::Binary(data)) => {
                let (channel, rest) = data.split_first()?;
                Some((*channel, rest.to_vec()))
            }
            (Encoding::Base64, Message::Text(text)) => {
                use base64::Engine;
                let (digit, rest) = text.as_bytes().split_first()?;
                let channel = digit.checked_sub(b'0').filter(|c| *c <= 9)?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                Some((channel, data))
            }
            _ => None,
        }
    }
}
/// Port-forward: SPDY tunnelled through WebSocket.
pub const TUNNELED_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
/// v5's half-close: this byte, then the channel the client closed.
const CLOSE_SIGNAL: u8 = 255;
/// The most a tunnelled message carries.
const TUNNEL_CHUNK: usize = 32 * 1024;

/// The remotecommand channels, numbered as the protocol numbers them.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// Whether `request` asks for a WebSocket (`Upgrade: websocket`).
pub fn is_websocket_request<B>(request: &hyper::Request<B>) -> bool {
    request
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The subprotocols the client offers (`Sec-WebSocket-Protocol`).
pub fn offered_protocols<B>(request: &hyper::Request<B>) -> Vec<String> {
    request
        .headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect()
}

/// The `Sec-WebSocket-Accept` answering the client's key; None without a
/// key (not a WebSocket handshake).
pub fn accept_key<B>(request: &hyper::Request<B>) -> Option<String> {
    let key = request.headers().get(hyper::header::SEC_WEBSOCKET_KEY)?;
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The server side of an upgraded connection.
pub async fn server<T>(io: T) -> WebSocketStream<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(io, Role::Server, None).await
}

/// The session of a channel protocol connection. `streams` are the
/// channels the request implies, by their SPDY `streamtype`; they are
/// announced to the handler as streams the client opened (SPDY clients
/// open them; WebSocket ones just use them), each with its channel number
/// as its id.
pub fn channel_session<T>(
    ws: WebSocketStream<T>,
    streams: &[(&str, u8)],
    encoding: Encoding,
) -> Session
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (incoming_tx, incoming) = mpsc::channel(64 + streams.len());
    let (outgoing, mut outgoing_rx) = mpsc::channel::<Outgoing>(64);
    for (kind, channel) in streams {
        let headers = HashMap::from([("streamtype".to_string(), vec![kind.to_string()])]);
        // Room for every announcement was made above.
        let _ = incoming_tx.try_send(Incoming::Stream {
            id: u32::from(*channel),
            headers,
        });
    }
    // The kubelet's own first message: an empty one on the lowest channel
    // the server writes, which tells the client the streams are ready.
    let ready = [STDOUT, STDERR, ERROR]
        .into_iter()
        .find(|c| streams.iter().any(|(_, s)| s == c))
        .unwrap_or(ERROR);
    let (mut sink, mut source) = ws.split();
    let (closed_tx, closed) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if sink.send(encoding.frame(ready, &[])).await.is_err() {
            return;
        }
        while let Some(out) = outgoing_rx.recv().await {
            let message = match out {
                // The protocol has no server half-close: the streams end
                // with the connection.
                Outgoing::Data { data, .. } if data.is_empty() => continue,
                Outgoing::Data { id, data, .. } => {
                    let Ok(channel) = u8::try_from(id) else {
                        continue;
                    };
                    encoding.frame(channel, &data)
                }
                Outgoing::Reset { .. } => continue,
                Outgoing::GoAway => {
                    let _ = sink.send(normal_close()).await;
                    break;
                }
            };
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
        let _ = closed_tx.send(true);
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = next_until_closed(&mut source, closed.clone()).await {
            if let Message::Close(_) = message {
                break;
            }
            // Pings are answered by the library; a message of the other
            // kind than the protocol's, or empty, carries nothing.
            let Some((channel, data)) = encoding.unframe(&message) else {
                continue;
            };
            let incoming = match (channel, data.as_slice()) {
                // v5's half-close (binary only).
                (CLOSE_SIGNAL, [closed]) if encoding == Encoding::Binary => Incoming::Data {
                    id: u32::from(*closed),
                    data: Vec::new(),
                    fin: true,
                },
                (CLOSE_SIGNAL, _) => break,
                (channel, _) => Incoming::Data {
                    id: u32::from(channel),
                    data,
                    fin: false,
                },
            };
            if incoming_tx.send(incoming).await.is_err() {
                break;
            }
        }
        // The handler sees the client gone when this sender drops.
    });
    Session { incoming, outgoing }
}

/// The byte stream tunnelled through `ws`'s binary messages (SPDY over
/// WebSocket): what the client's messages carry is read from it, and what
/// is written to it goes out in messages.
pub fn tunnel<T>(ws: WebSocketStream<T>) -> tokio::io::DuplexStream
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(4 * TUNNEL_CHUNK);
    let (mut from_tunnel, mut into_tunnel) = tokio::io::split(theirs);
    let (mut sink, mut source) = ws.split();
    let (closed_tx, closed) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Some(Ok(message)) = next_until_closed(&mut source, closed.clone()).await {
            match message {
                Message::Binary(data) => {
                    if into_tunnel.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => continue,
            }
        }
        let _ = into_tunnel.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buffer = vec![0u8; TUNNEL_CHUNK];
        loop {
            match from_tunnel.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buffer[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
        let _ = closed_tx.send(true);
    });
    ours
}

/// How long the client has to answer the server's close.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The client's next message; None once the server has closed its side
/// and the client has not closed its own within [`CLOSE_GRACE`], so a
/// client that never answers the close cannot hold the connection open.
async fn next_until_closed<S>(
    source: &mut S,
    mut closed: tokio::sync::watch::Receiver<bool>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let server_closed = async {
        let _ = closed.wait_for(|closed| *closed).await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        next = source.next() => next,
        () = server_closed => None,
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (server, client)
    }

    #[tokio::test]
    async fn base64_text_messages_carry_the_same_channels() {
        assert_eq!(Encoding::of("v4.base64.channel.k8s.io"), Encoding::Base64);
        assert_eq!(Encoding::of("base64.channel.k8s.io"), Encoding::Base64);
        assert_eq!(Encoding::of("v5.channel.k8s.io"), Encoding::Binary);
        let (server, mut client) = pair().await;
        let mut session = channel_session(
            server,
            &[("error", ERROR), ("stdin", STDIN), ("stdout", STDOUT)],
            Encoding::Base64,
        );
        for _ in 0..3 {
            assert!(matches!(
                session.incoming.recv().await.unwrap(),
                Incoming::Stream { .. }
            ));
        }
        // Ready: stdout's digit and nothing after it.
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Text("1".into())
        );
        // "0" + base64("hi\n"); a binary message and bad base64 carry
        // nothing and are passed over.
        client
            .send(Message::Binary(vec![STDIN, b'x'].into()))
            .await
            .unwrap();
        client.send(Message::Text("0!!!".into())).await.unwrap();
        client.send(Message::Text("0aGkK".into())).await.unwrap();
        match session.incoming.recv().await.unwrap() {
            Incoming::Data { id, data, fin } => {
                assert_eq!((id, data, fin), (0, b"hi\n".to_vec(), false))
            }
            _ => panic!("data"),
        }
        session
            .outgoing
            .send(Outgoing::Data {
                id: u32::from(STDOUT),
                data: vec![0, 255, b'o'],
                fin: false,
            })
            .await
            .unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Text("1AP9v".into())
        );
        session.outgoing.send(Outgoing::GoAway).await.unwrap();
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
    }

    #[tokio::test]
    async fn channel_messages_become_stream_data_and_v5_close_a_half_close() {
        let (server, mut client) = pair().await;
        let mut session = channel_session(
            server,
            &[("error", ERROR), ("stdin", STDIN), ("stdout", STDOUT)],
            Encoding::Binary,
        );
        let mut opened = Vec::new();
        for _ in 0..3 {
            match session.incoming.recv().await.unwrap() {
                Incoming::Stream { id, headers } => {
                    opened.push((id, headers["streamtype"][0].clone()))
                }
                _ => panic!("streams are announced first"),
            }
        }
        assert_eq!(
            opened,
            [
                (3, "error".to_string()),
                (0, "stdin".into()),
                (1, "stdout".into())
            ]
        );
        // The readiness message: empty, on stdout.
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(vec![STDOUT].into())
        );

        client
            .send(Message::Binary(vec![STDIN, b'h', b'i'].into()))
            .await
            .unwrap();
        client
            .send(Message::Binary(vec![CLOSE_SIGNAL, STDIN].into()))
            .await
            .unwrap();
        match session.incoming.recv().await.unwrap() {
            Incoming::Data { id, data, fin } => {
                assert_eq!((id, data, fin), (0, b"hi".to_vec(), false))
            }
            _ => panic!("data"),
        }
        match session.incoming.recv().await.unwrap() {
            Incoming::Data { id, data, fin } => assert_eq!((id, data.len(), fin), (0, 0, true)),
            _ => panic!("half-close"),
        }

        session
            .outgoing
            .send(Outgoing::Data {
                id: 1,
                data: b"out".to_vec(),
                fin: false,
            })
            .await
            .unwrap();
        session.outgoing.send(Outgoing::GoAway).await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(vec![STDOUT, b'o', b'u', b't'].into())
        );
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
        client.close(None).await.ok();
        assert!(
            session.incoming.recv().await.is_none(),
            "the client is gone"
        );
    }

    #[tokio::test]
    async fn a_tunnel_carries_bytes_both_ways_across_message_boundaries() {
        let (server, mut client) = pair().await;
        let mut stream = tunnel(server);
        client
            .send(Message::Binary(b"hel".to_vec().into()))
            .await
            .unwrap();
        client
            .send(Message::Binary(b"lo".to_vec().into()))
            .await
            .unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        stream.write_all(b"back").await.unwrap();
        let message = client.next().await.unwrap().unwrap();
        assert_eq!(message, Message::Binary(b"back".to_vec().into()));
        drop(stream);
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
    }
}
