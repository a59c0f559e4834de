//! The framing layer (`FrameCodec`, `FramedIo`) through its public API:
//! lines and length prefixes, limits, the first-bytes check, the end of a
//! stream.

use std::io;

use bytes::{Bytes, BytesMut};
use drs_core::*;
use tokio_util::codec::{Decoder, Encoder};

fn codec(framing: Framing, max: usize) -> FrameCodec {
    FrameCodec::new(FrameSpec::new(framing).max_frame_len(max))
}

fn decode_all(c: &mut FrameCodec, input: &[u8]) -> Vec<Bytes> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(f) = c.decode(&mut buf).unwrap() {
        out.push(f);
    }
    if let Some(f) = c.decode_eof(&mut buf).unwrap() {
        out.push(f);
    }
    out
}

#[test]
fn lines_split_on_newline_and_tolerate_crlf_and_blanks() {
    let mut c = codec(Framing::Lines, 100);
    let frames = decode_all(&mut c, b"{\"a\":1}\n\r\n  \n{\"b\":2}\r\n\n{\"c\":3}");
    assert_eq!(frames, vec![&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"]);
}

#[test]
fn lines_arriving_in_pieces() {
    let mut c = codec(Framing::Lines, 100);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"{\"a\"");
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(b":1}\r");
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    buf.extend_from_slice(b"\n{");
    assert_eq!(c.decode(&mut buf).unwrap().unwrap(), &b"{\"a\":1}"[..]);
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    assert_eq!(&buf[..], b"{");
}

#[test]
fn line_at_the_limit_passes_and_one_byte_over_fails() {
    let mut c = codec(Framing::Lines, 4);
    assert_eq!(decode_all(&mut c, b"abcd\r\n"), vec![&b"abcd"[..]]);
    let mut c = codec(Framing::Lines, 4);
    let err = c.decode(&mut BytesMut::from(&b"abcde\n"[..])).unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge(FrameTooLarge { limit: 4 })
    ));
    // Without a newline yet: the error comes as soon as the limit is passed.
    let mut c = codec(Framing::Lines, 4);
    let err = c.decode(&mut BytesMut::from(&b"abcdef"[..])).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge(_)));
}

#[test]
fn length_prefixed_round_trip_and_limit() {
    let mut c = codec(Framing::LengthPrefixed, 5);
    let mut buf = BytesMut::new();
    c.encode(Bytes::from_static(b"hello"), &mut buf).unwrap();
    c.encode(Bytes::from_static(b""), &mut buf).unwrap();
    assert_eq!(&buf[..], b"\0\0\0\x05hello\0\0\0\0");
    assert_eq!(decode_all(&mut c, &buf), vec![&b"hello"[..], b""]);
    assert!(c.encode(Bytes::from_static(b"toolong"), &mut buf).is_err());
    let err = c
        .decode(&mut BytesMut::from(&b"\0\0\0\x06"[..]))
        .unwrap_err();
    assert!(matches!(err, FrameError::TooLarge(_)));
}

#[test]
fn length_prefixed_truncated_stream_is_an_error_at_eof() {
    let mut c = codec(Framing::LengthPrefixed, 100);
    let mut buf = BytesMut::from(&b"\0\0\0\x09abc"[..]);
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    let err = c.decode_eof(&mut buf).unwrap_err();
    assert!(matches!(err, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
}

#[test]
fn lines_encoder_appends_newline_and_rejects_embedded_newline() {
    let mut c = codec(Framing::Lines, 100);
    let mut buf = BytesMut::new();
    c.encode(Bytes::from_static(b"{}"), &mut buf).unwrap();
    assert_eq!(&buf[..], b"{}\n");
    assert!(c.encode(Bytes::from_static(b"{\n}"), &mut buf).is_err());
}

#[tokio::test]
async fn an_oversize_frame_is_an_item_and_the_stream_ends_after_it() {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let (mut a, b) = tokio::io::duplex(256);
    let b = FramedIo::new(b, FrameSpec::new(Framing::Lines).max_frame_len(4));
    a.write_all(b"ok\ntoo long\nnever\n").await.unwrap();
    drop(a);
    let items: Vec<Inbound> = b.map(|i| i.expect("no transport error")).collect().await;
    assert_eq!(
        items,
        [
            Inbound::Frame(Bytes::from_static(b"ok")),
            Inbound::TooLarge(FrameTooLarge { limit: 4 })
        ]
    );
}

#[tokio::test]
async fn framed_io_over_duplex() {
    use futures::{SinkExt, StreamExt};
    let (a, b) = tokio::io::duplex(64);
    let spec = FrameSpec::new(Framing::Lines);
    let mut a = FramedIo::new(a, spec.clone());
    let mut b = FramedIo::new(b, spec);
    let big = Bytes::from(vec![b'x'; 1000]);
    let writer = async {
        a.feed(Bytes::from_static(b"one")).await.unwrap();
        a.feed(big.clone()).await.unwrap();
        a.close().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        while let Some(f) = b.next().await {
            got.push(f.unwrap().frame().expect("a frame"));
        }
        got
    };
    let ((), got) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        tokio::join!(writer, reader)
    })
    .await
    .unwrap();
    assert_eq!(got, vec![Bytes::from_static(b"one"), big]);
}

/// What the first bytes show, per framing; later frames are not looked at.
#[test]
fn the_first_bytes_of_another_protocol_or_http_are_foreign() {
    let cut = |framing, bytes: &[u8]| {
        let mut codec = codec(framing, 1 << 20);
        let mut src = BytesMut::from(bytes);
        codec.decode(&mut src).map_err(|e| match e {
            FrameError::Foreign(f) => f,
            other => panic!("{other}"),
        })
    };
    // A JSON port: MessagePack's zero length byte at once, HTTP by line.
    assert_eq!(
        cut(Framing::Lines, b"\0\0\0\x10\x82"),
        Err(Foreign::MessagePack)
    );
    assert_eq!(
        cut(Framing::Lines, b"\0\0\x01\x10\xde\0\x02"),
        Err(Foreign::MessagePack)
    );
    // A stray zero byte is garbage for the protocol to answer, not
    // MessagePack; four bytes are not enough to tell.
    assert_eq!(
        cut(Framing::Lines, b"\0\x01 not a command {\n"),
        Ok(Some(Bytes::from_static(b"\0\x01 not a command {")))
    );
    assert_eq!(cut(Framing::Lines, b"\0\0\0\x10"), Ok(None));
    // Only the first line is looked at: a zero-byte line and a map marker
    // after its newline are two lines (what proptest found).
    assert_eq!(
        cut(Framing::Lines, b"\0\0\n\0\x80"),
        Ok(Some(Bytes::from_static(b"\0\0")))
    );
    assert_eq!(
        cut(Framing::Lines, b"GET / HTTP/1.1\r\nHost: x\r\n"),
        Err(Foreign::HttpRequest)
    );
    assert_eq!(
        cut(Framing::Lines, b"HTTP/1.1 400 Bad Request\r\n"),
        Err(Foreign::HttpResponse)
    );
    assert_eq!(
        cut(Framing::Lines, b"HTTP/1.1 400"),
        Ok(None),
        "a line is awaited"
    );
    assert_eq!(
        cut(Framing::Lines, b"{\"action\":\"x\"}\n"),
        Ok(Some(Bytes::from_static(b"{\"action\":\"x\"}")))
    );
    // A MessagePack port: a length past the maximum that reads as text.
    assert_eq!(cut(Framing::LengthPrefixed, b"{\"ac"), Err(Foreign::Json));
    assert_eq!(cut(Framing::LengthPrefixed, b"[1, "), Err(Foreign::Json));
    assert_eq!(
        cut(Framing::LengthPrefixed, b"GET /"),
        Err(Foreign::HttpRequest)
    );
    assert_eq!(
        cut(Framing::LengthPrefixed, b"HTTP/1.1"),
        Err(Foreign::HttpResponse)
    );
    assert_eq!(
        cut(Framing::LengthPrefixed, b"\0\0\0\x01\xc0"),
        Ok(Some(Bytes::from_static(b"\xc0")))
    );
    // Past the first frame, bytes are frames (or too large), not sniffed.
    let mut codec = codec(Framing::Lines, 1 << 20);
    let mut src = BytesMut::from(&b"{}\nHTTP/1.1 200 OK\n"[..]);
    assert!(codec.decode(&mut src).unwrap().is_some());
    assert_eq!(
        codec.decode(&mut src).unwrap(),
        Some(Bytes::from_static(b"HTTP/1.1 200 OK"))
    );
    let mut codec = codec_prefixed_after_one_frame();
    let mut src = BytesMut::from(&b"{\"ac"[..]);
    assert!(matches!(
        codec.decode(&mut src),
        Err(FrameError::TooLarge(_))
    ));
    assert_eq!(Foreign::HttpRequest.speaks(), "HTTP");
    assert_eq!(Foreign::HttpRequest.to_string(), "an HTTP request");
}

fn codec_prefixed_after_one_frame() -> FrameCodec {
    let mut codec = codec(Framing::LengthPrefixed, 1 << 20);
    let mut src = BytesMut::from(&b"\0\0\0\x01\xc0"[..]);
    assert!(codec.decode(&mut src).unwrap().is_some());
    codec
}
