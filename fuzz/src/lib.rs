//! What every fuzz target checks, once.

use bytes::{Bytes, BytesMut};
use drs_core::{Command, FrameCodec, FrameSpec, Framing, OutBody, Outgoing, Protocol};
use tokio_util::codec::Decoder;

/// Decoding never panics; a decoded command re-encodes to a frame that
/// decodes to the same command (body bytes included: within one protocol
/// a body is copied verbatim).
pub fn round_trip(protocol: &dyn Protocol, data: &[u8]) {
    let Ok(cmd) = protocol.decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut out = BytesMut::new();
    let outgoing = Outgoing::new(&cmd.action)
        .key(cmd.key.as_deref())
        .body(if cmd.body.is_absent() {
            OutBody::Absent
        } else {
            OutBody::Raw(&cmd.body)
        })
        .version(cmd.version);
    protocol
        .encode(&outgoing, &mut out)
        .expect("a decoded command encodes");
    let again = protocol
        .decode(out.freeze())
        .expect("a re-encoded command decodes");
    same(&cmd, &again);
}

fn same(a: &Command, b: &Command) {
    assert_eq!(a.action, b.action);
    assert_eq!(a.key, b.key);
    assert_eq!(a.version, b.version);
    let raw = |c: &Command| c.body.raw().map(|(bytes, _)| bytes.clone());
    match (raw(a), raw(b)) {
        (Some(x), Some(y)) if x != y => {
            // JSON bodies with raw newlines between tokens are re-sent
            // with spaces (a frame is one line); anything else is a bug.
            let flat: Vec<u8> = x
                .iter()
                .map(|&c| if c == b'\n' || c == b'\r' { b' ' } else { c })
                .collect();
            assert_eq!(flat, &y[..], "body changed");
        }
        (x, y) => assert_eq!(x.is_some(), y.is_some()),
    }
}

/// The framer never panics and never yields a frame over its limit; every
/// frame it yields re-encodes and decodes to itself.
pub fn frames(framing: Framing, data: &[u8]) {
    const LIMIT: usize = 4096;
    let mut codec = FrameCodec::new(FrameSpec::new(framing).max_frame_len(LIMIT));
    // Fed in two pieces, as reads would.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut buf = BytesMut::from(&data[..split]);
    let mut rest = &data[split..];
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => check(&mut codec, frame, LIMIT),
            Ok(None) if !rest.is_empty() => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    if let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
        check(&mut codec, frame, LIMIT);
    }
}

fn check(codec: &mut FrameCodec, frame: Bytes, limit: usize) {
    use tokio_util::codec::Encoder;
    assert!(frame.len() <= limit, "a frame over the limit");
    // A line ending in `\r` reads back without it (`\r\n` is a newline).
    if frame.last() == Some(&b'\r') {
        return;
    }
    let mut out = BytesMut::new();
    if codec.encode(frame.clone(), &mut out).is_ok() {
        let mut fresh = codec.clone();
        let back = fresh.decode(&mut out).expect("decodes").expect("a frame");
        assert_eq!(back, frame);
    }
}

/// For protocols that map onto drs commands without being drs commands
/// (Rembus): decoding never panics, and answering a decoded call (a value,
/// an error) encodes or fails cleanly, never panics.
pub fn decode_and_answer(protocol: &dyn Protocol, data: &[u8]) {
    let Ok(cmd) = protocol.decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = cmd.body.field("body");
    let Some(key) = cmd.key.as_deref() else {
        return;
    };
    for action in ["drs.response", "drs.error", "drs.exception"] {
        let mut out = BytesMut::new();
        let body = if cmd.body.is_absent() {
            OutBody::Absent
        } else {
            OutBody::Raw(&cmd.body)
        };
        let _ = protocol.encode(&Outgoing::new(action).key(Some(key)).body(body), &mut out);
    }
}
