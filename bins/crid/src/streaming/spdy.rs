//! The server side of SPDY/3.1 as Kubernetes' streaming clients speak it
//! (client-go's remotecommand and port-forward over moby/spdystream): the
//! client opens streams (SYN_STREAM, with a `streamtype` header), the
//! server accepts each (SYN_REPLY) and both send DATA frames, FIN ending a
//! direction. Header blocks are zlib-compressed with SPDY/3's dictionary,
//! one compression context per direction for the whole connection.
//!
//! Flow control is not enforced on what crid sends (spdystream does not
//! enforce it either); what crid receives is acknowledged with
//! WINDOW_UPDATE so a client that does count never stalls.

use std::collections::HashMap;

use berth_errdefs::{Error, Result};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;
/// The largest frame accepted (SPDY's length field allows 16 MiB).
const MAX_FRAME: usize = 1 << 24;
/// The largest header block after inflation.
const MAX_HEADERS: usize = 1 << 20;

/// SPDY/3's header-compression dictionary (draft-mbelshe-httpbis-spdy-00,
/// 2.6.10.1): header names, each with a 4-byte length, then a run of
/// common values.
fn dictionary() -> Vec<u8> {
    const NAMES: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const VALUES: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505",
        "203 Non-Authoritative Information",
        "204 No Content",
        "301 Moved Permanently",
        "400 Bad Request",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "500 Internal Server Error",
        "501 Not Implemented",
        "503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
        "application/xhtml+xml,text/plain,text/javascript,public",
        "privatemax-age=gzip,deflate,sdch",
        "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut out = Vec::with_capacity(1423);
    for name in NAMES {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(VALUES.as_bytes());
    out
}

/// Headers, lower-case names, each with its values.
pub type Headers = HashMap<String, Vec<String>>;

/// What the client sent.
#[derive(Debug)]
pub enum Incoming {
    /// A new stream and its headers (already accepted).
    Stream {
        id: u32,
        headers: Headers,
    },
    Data {
        id: u32,
        data: Vec<u8>,
        fin: bool,
    },
    Reset {
        id: u32,
    },
}

/// What crid sends.
#[derive(Debug)]
pub enum Outgoing {
    Data { id: u32, data: Vec<u8>, fin: bool },
    Reset { id: u32 },
    GoAway,
}

/// A SPDY session over an upgraded connection: frames the client sends
/// arrive on `incoming`; `outgoing` sends. Ends when either side closes.
pub struct Session {
    pub incoming: mpsc::Receiver<Incoming>,
    pub outgoing: mpsc::Sender<Outgoing>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

/// Frames for the writer: what handlers send plus the session's own
/// replies (SYN_REPLY, PING, WINDOW_UPDATE).
enum Frame {
    Out(Outgoing),
    SynReply(u32),
    Ping(u32),
    WindowUpdate(u32, u32),
}

impl Session {
    /// Starts reading and writing frames on `io`.
    pub fn start<T>(io: T) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        let (incoming_tx, incoming) = mpsc::channel(64);
        let (frames_tx, frames_rx) = mpsc::channel::<Frame>(64);
        let (outgoing, mut outgoing_rx) = mpsc::channel::<Outgoing>(64);
        let to_writer = frames_tx.clone();
        tokio::spawn(async move {
            while let Some(out) = outgoing_rx.recv().await {
                if to_writer.send(Frame::Out(out)).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(write_frames(writer, frames_rx));
        tokio::spawn(async move {
            if let Err(e) = read_frames(reader, incoming_tx, frames_tx).await {
                tracing::debug!("SPDY session: {e}");
            }
        });
        Session { incoming, outgoing }
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    incoming: mpsc::Sender<Incoming>,
    frames: mpsc::Sender<Frame>,
) -> Result<()> {
    let mut inflate = Decompress::new(true);
    let dictionary = dictionary();
    let io = |e: std::io::Error| Error::io("reading a SPDY frame", &e);
    loop {
        let mut head = [0u8; 8];
        match reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io(e)),
        }
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if length > MAX_FRAME {
            return Err(Error::invalid_argument("SPDY frame too large"));
        }
        let mut payload = vec![0u8; length];
        reader.read_exact(&mut payload).await.map_err(io)?;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            let received = payload.len() as u32;
            if received > 0 {
                let _ = frames.send(Frame::WindowUpdate(id, received)).await;
            }
            let data = Incoming::Data {
                id,
                data: payload,
                fin: flags & FLAG_FIN != 0,
            };
            if incoming.send(data).await.is_err() {
                return Ok(());
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(Error::invalid_argument(format!("SPDY version {version}")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let word = |at: usize| -> Result<u32> {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| Error::invalid_argument("short SPDY control frame"))
        };
        match kind {
            SYN_STREAM => {
                let id = word(0)? & 0x7fff_ffff;
                let block = payload
                    .get(10..)
                    .ok_or_else(|| Error::invalid_argument("short SYN_STREAM"))?;
                let headers = decode_headers(&mut inflate, &dictionary, block)?;
                let _ = frames.send(Frame::SynReply(id)).await;
                if incoming
                    .send(Incoming::Stream { id, headers })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                if flags & FLAG_FIN != 0 {
                    let fin = Incoming::Data {
                        id,
                        data: Vec::new(),
                        fin: true,
                    };
                    let _ = incoming.send(fin).await;
                }
            }
            HEADERS | SYN_REPLY => {
                // Keep the inflate context in step; the headers say nothing
                // crid needs.
                if let Some(block) = payload.get(4..) {
                    decode_headers(&mut inflate, &dictionary, block)?;
                }
            }
            RST_STREAM => {
                let id = word(0)? & 0x7fff_ffff;
                let _ = incoming.send(Incoming::Reset { id }).await;
            }
            PING => {
                let _ = frames.send(Frame::Ping(word(0)?)).await;
            }
            GOAWAY => return Ok(()),
            SETTINGS | WINDOW_UPDATE => {}
            _ => {}
        }
    }
}

fn decode_headers(inflate: &mut Decompress, dictionary: &[u8], block: &[u8]) -> Result<Headers> {
    let bad = |why: &str| Error::invalid_argument(format!("SPDY headers: {why}"));
    let mut out = Vec::with_capacity(block.len() * 4);
    let mut input = block;
    loop {
        out.reserve(4096);
        let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
        let result = inflate.decompress_vec(input, &mut out, FlushDecompress::Sync);
        let used = (inflate.total_in() - before_in) as usize;
        let produced = inflate.total_out() - before_out;
        input = &input[used..];
        match result {
            Ok(_) => {}
            // The first block asks for SPDY's dictionary.
            Err(e) if e.needs_dictionary().is_some() => {
                inflate
                    .set_dictionary(dictionary)
                    .map_err(|_| bad("the dictionary was refused"))?;
                continue;
            }
            Err(e) => return Err(bad(&e.to_string())),
        }
        if out.len() > MAX_HEADERS {
            return Err(bad("too large"));
        }
        // Done once the input is used up with room to spare in the output
        // (nothing held back), or when nothing moves.
        if (input.is_empty() && out.len() < out.capacity()) || (used == 0 && produced == 0) {
            break;
        }
    }
    parse_header_block(&out)
}

/// Reads a header block: a count, then length-prefixed names and values
/// (a value may hold several, separated by NUL).
fn parse_header_block(block: &[u8]) -> Result<Headers> {
    let bad = || Error::invalid_argument("SPDY headers: malformed block");
    let mut at = 0usize;
    let mut next = |len: usize| -> Result<&[u8]> {
        let bytes = block.get(at..at + len).ok_or_else(bad)?;
        at += len;
        Ok(bytes)
    };
    let word = |bytes: &[u8]| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let count = word(next(4)?);
    let mut headers = Headers::new();
    for _ in 0..count.min(1024) {
        let name_len = word(next(4)?);
        let name = String::from_utf8_lossy(next(name_len)?).to_ascii_lowercase();
        let value_len = word(next(4)?);
        let values = next(value_len)?
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>();
        headers.entry(name).or_default().extend(values);
    }
    Ok(headers)
}

fn encode_header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn compress_headers(deflate: &mut Compress, block: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 64);
    let mut input = block;
    loop {
        out.reserve(256);
        let before = deflate.total_in();
        deflate
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .map_err(|e| Error::internal(format!("compressing SPDY headers: {e}")))?;
        let used = (deflate.total_in() - before) as usize;
        input = &input[used..];
        // Done when everything is in and the flush fit.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(payload);
    frame
}

async fn write_frames<W: AsyncWrite + Unpin>(mut writer: W, mut frames: mpsc::Receiver<Frame>) {
    let mut deflate = Compress::new(Compression::default(), true);
    if deflate.set_dictionary(&dictionary()).is_err() {
        return;
    }
    while let Some(frame) = frames.recv().await {
        let bytes = match frame {
            Frame::SynReply(id) => {
                let block = match compress_headers(&mut deflate, &encode_header_block(&[])) {
                    Ok(block) => block,
                    Err(_) => return,
                };
                let mut payload = id.to_be_bytes().to_vec();
                payload.extend_from_slice(&block);
                control(SYN_REPLY, 0, &payload)
            }
            Frame::Ping(id) => control(PING, 0, &id.to_be_bytes()),
            Frame::WindowUpdate(id, delta) => {
                let mut payload = id.to_be_bytes().to_vec();
                payload.extend_from_slice(&delta.to_be_bytes());
                let mut frames = control(WINDOW_UPDATE, 0, &payload);
                // The session's window too (stream 0).
                let mut session = 0u32.to_be_bytes().to_vec();
                session.extend_from_slice(&delta.to_be_bytes());
                frames.extend_from_slice(&control(WINDOW_UPDATE, 0, &session));
                frames
            }
            Frame::Out(Outgoing::Data { id, data, fin }) => {
                let mut frame = Vec::with_capacity(8 + data.len());
                frame.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                frame.push(if fin { FLAG_FIN } else { 0 });
                frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                frame.extend_from_slice(&data);
                frame
            }
            Frame::Out(Outgoing::Reset { id }) => {
                let mut payload = id.to_be_bytes().to_vec();
                // CANCEL
                payload.extend_from_slice(&5u32.to_be_bytes());
                control(RST_STREAM, 0, &payload)
            }
            Frame::Out(Outgoing::GoAway) => {
                let _ = writer.write_all(&control(GOAWAY, 0, &[0; 8])).await;
                let _ = writer.flush().await;
                let _ = writer.shutdown().await;
                return;
            }
        };
        if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_has_the_specs_length_and_ends() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn headers_survive_compression_across_blocks() {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dictionary())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut inflate = Decompress::new(true);
        let d = dictionary();
        for (name, value) in [
            ("streamtype", "stdout"),
            ("port", "80"),
            ("streamtype", "error"),
        ] {
            let block = encode_header_block(&[(name, value), ("x", "a\0b")]);
            let compressed =
                compress_headers(&mut deflate, &block).unwrap_or_else(|e| panic!("{e}"));
            let headers =
                decode_headers(&mut inflate, &d, &compressed).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(headers[name], vec![value.to_string()]);
            assert_eq!(headers["x"], vec!["a".to_string(), "b".to_string()]);
        }
    }

    #[test]
    fn a_malformed_header_block_is_refused() {
        assert!(parse_header_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(parse_header_block(&[0, 0]).is_err());
    }
}
