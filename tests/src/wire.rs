//! ttrpc's wire format, written by hand: for tests that play a caller no
//! ttrpc client would be (floods, bad frames, odd flags).

use ttrpc::proto::{Codec, KeyValue, Request};

pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_DATA: u8 = 3;
pub const FLAG_REMOTE_OPEN: u8 = 0x2;
pub const FLAG_NO_DATA: u8 = 0x4;

/// One frame: length, stream id, type, flags, then the payload.
pub fn frame(stream_id: u32, kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(10 + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&stream_id.to_be_bytes());
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(payload);
    bytes
}

/// An encoded ttrpc `Request` for `service`/`method`, with `namespace` as
/// its containerd namespace when given.
pub fn request(service: &str, method: &str, payload: Vec<u8>, namespace: Option<&str>) -> Vec<u8> {
    Request {
        service: service.into(),
        method: method.into(),
        payload,
        metadata: namespace
            .map(|ns| KeyValue {
                key: berth_api::NAMESPACE_KEY.into(),
                value: ns.into(),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
    .encode()
    .expect("a request encodes")
}
