//! The MessagePack command format on plain buffers.

use bytes::{Bytes, BytesMut};
use drs_core::{Body, Command, OutBody, Outgoing, Protocol, RemoteError};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

fn encode(p: &dyn Protocol, out: Outgoing<'_>) -> Bytes {
    let mut buf = BytesMut::new();
    p.encode(&out, &mut buf).unwrap();
    buf.freeze()
}

fn decode(bytes: &[u8]) -> Result<Command, drs_core::DecodeError> {
    MsgPack.decode(Bytes::copy_from_slice(bytes))
}

#[test]
fn exact_bytes_of_a_reply() {
    let err = RemoteError::new("no");
    let frame = encode(
        &MsgPack,
        Outgoing::new("drs.error")
            .key(Some("7"))
            .body(OutBody::Value(&err)),
    );
    let mut expected = vec![0x83, 0xa3];
    expected.extend_from_slice(b"key");
    expected.extend_from_slice(&[0xa1, b'7', 0xa6]);
    expected.extend_from_slice(b"action");
    expected.push(0xa9);
    expected.extend_from_slice(b"drs.error");
    expected.push(0xa4);
    expected.extend_from_slice(b"body");
    expected.extend_from_slice(&[0x81, 0xa7]);
    expected.extend_from_slice(b"message");
    expected.extend_from_slice(&[0xa2, b'n', b'o']);
    assert_eq!(&frame[..], &expected[..]);
}

#[test]
fn absent_fields_are_omitted_and_version_round_trips() {
    let frame = encode(&MsgPack, Outgoing::new("tick"));
    assert_eq!(&frame[..], b"\x81\xa6action\xa4tick");
    let frame = encode(&MsgPack, Outgoing::new("a").version(Some(-3)));
    let cmd = decode(&frame).unwrap();
    assert_eq!(cmd.version, Some(-3));
    assert!(cmd.body.is_absent());
    assert_eq!(cmd.body.deserialize::<Option<u8>>().unwrap(), None);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    label: String,
    tags: Vec<String>,
}

#[test]
fn structs_travel_as_maps_with_field_names() {
    let p = Point {
        x: -4,
        label: "here".into(),
        tags: vec!["a".into()],
    };
    let frame = encode(&MsgPack, Outgoing::new("at").body(OutBody::Value(&p)));
    let cmd = decode(&frame).unwrap();
    let (raw, format) = cmd.body.raw().unwrap();
    assert_eq!(format.name(), "msgpack");
    assert_eq!(raw[0], 0x83, "a map of three fields, not an array");
    assert_eq!(cmd.body.deserialize::<Point>().unwrap(), p);
    assert_eq!(
        cmd.body.deserialize::<Value>().unwrap(),
        json!({"x": -4, "label": "here", "tags": ["a"]})
    );
}

#[test]
fn bodies_cross_between_json_and_msgpack() {
    let value = json!({"n": [1, -2, 3.5, null, true], "s": "ünï", "o": {"deep": {"er": []}}});
    // JSON in, MessagePack out, JSON again: the same value.
    let json_cmd = Json
        .decode(encode(
            &Json,
            Outgoing::new("x").body(OutBody::Value(&value)),
        ))
        .unwrap();
    let mp_frame = encode(
        &MsgPack,
        Outgoing::new("x").body(OutBody::Raw(&json_cmd.body)),
    );
    let mp_cmd = decode(&mp_frame).unwrap();
    assert_eq!(mp_cmd.body.deserialize::<Value>().unwrap(), value);
    let back = Json
        .decode(encode(
            &Json,
            Outgoing::new("x").body(OutBody::Raw(&mp_cmd.body)),
        ))
        .unwrap();
    assert_eq!(back.body.deserialize::<Value>().unwrap(), value);
    // The same format copies the bytes.
    let again = encode(
        &MsgPack,
        Outgoing::new("x").body(OutBody::Raw(&mp_cmd.body)),
    );
    assert_eq!(again, mp_frame);
    // An absent body passed through is nil.
    let absent = Body::absent();
    let frame = encode(&MsgPack, Outgoing::new("x").body(OutBody::Raw(&absent)));
    assert!(decode(&frame).unwrap().body.is_absent());
}

#[test]
fn unknown_fields_are_ignored_and_field_order_does_not_matter() {
    let mut frame = vec![0x85];
    for (k, v) in [
        (&b"extra"[..], &b"\x92\x01\xc0"[..]),
        (b"body", b"\x2a"),
        (b"version", b"\xcd\x01\x00"),
        (b"action", b"\xa2go"),
        (b"key", b"\xa1k"),
    ] {
        frame.push(0xa0 | k.len() as u8);
        frame.extend_from_slice(k);
        frame.extend_from_slice(v);
    }
    let cmd = decode(&frame).unwrap();
    assert_eq!(
        (cmd.action.as_str(), cmd.key.as_deref(), cmd.version),
        ("go", Some("k"), Some(256))
    );
    assert_eq!(cmd.body.deserialize::<u8>().unwrap(), 42);
}

#[test]
fn garbage_is_a_clear_error_with_the_key_when_readable() {
    let key_no_action = b"\x81\xa3key\xa2k1";
    let action_not_string = b"\x82\xa3key\xa2k2\xa6action\x05";
    let truncated = b"\x82\xa3key\xa2k3\xa6action\xa9drs";
    let trailing = b"\x81\xa6action\xa1a\xff";
    let bad_marker = b"\x81\xa6action\xc1";
    let duplicate = b"\x82\xa6action\xa1a\xa6action\xa1b";
    for (input, key, fragment) in [
        (&b"\x00"[..], None, "must be a MessagePack map"),
        (b"", None, "must be a MessagePack map"),
        (b"\x92\x01\x02", None, "must be a MessagePack map"),
        (key_no_action, Some("k1"), "missing field `action`"),
        (action_not_string, Some("k2"), "must be a string"),
        (truncated, Some("k3"), "truncated"),
        (trailing, None, "after the command map"),
        (bad_marker, None, "0xc1"),
        (duplicate, None, "duplicate field"),
        (b"\xdf\xff\xff\xff\xff", None, "truncated"),
        (b"\x81\xa6action\xdd\xff\xff\xff\xff", None, "truncated"),
    ] {
        let err = decode(input).unwrap_err();
        assert_eq!(err.key(), key, "{input:x?}");
        assert!(
            err.message().contains(fragment),
            "{input:x?}: {}",
            err.message()
        );
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let mut frame = b"\x82\xa6action\xa1a\xa4body".to_vec();
    frame.extend(std::iter::repeat_n(0x91u8, 100_000));
    frame.push(0xc0);
    let err = decode(&frame).unwrap_err();
    assert!(err.message().contains("nested deeper than 128"), "{err}");
    // 128 levels are fine.
    let mut frame = b"\x82\xa6action\xa1a\xa4body".to_vec();
    frame.extend(std::iter::repeat_n(0x91u8, 127));
    frame.push(0xc0);
    let cmd = decode(&frame).unwrap();
    assert!(cmd.body.deserialize::<Value>().is_ok());
    // A raw body handed in from elsewhere is checked before deserializing too.
    let deep = Body::from_raw(Bytes::from(vec![0x91u8; 100_000]), MsgPack.body_format());
    assert!(deep.deserialize::<Value>().is_err());
}

#[test]
fn body_type_errors_are_reported() {
    let frame = encode(
        &MsgPack,
        Outgoing::new("a").body(OutBody::Value(&json!({"x": "not a number"}))),
    );
    let cmd = decode(&frame).unwrap();
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct X {
        x: i32,
    }
    assert!(cmd.body.deserialize::<X>().is_err());
    assert!(cmd.body.deserialize::<String>().is_err());
}

/// A value `n` levels deep whose containers hold containers at every level,
/// with siblings before and after the deeper one (so levels are entered
/// and left many times, not once down a chain).
fn mixed(n: usize) -> Value {
    let mut v = json!(0);
    for i in 0..n {
        v = match i {
            0 => json!([1, v, "x"]),
            _ if i % 2 == 1 => json!({"k": [], "v": v, "z": null}),
            _ => json!([1, {"a": []}, v, [2], "x"]),
        };
    }
    v
}

fn frame_with_body(body: &Value) -> Vec<u8> {
    let mut frame = b"\x82\xa6action\xa1a\xa4body".to_vec();
    frame.extend(rmp_serde::to_vec(body).unwrap());
    frame
}

#[test]
fn depth_is_counted_across_sibling_containers() {
    for n in [1, 16, 17, 100, 128] {
        let body = mixed(n);
        let cmd = decode(&frame_with_body(&body)).unwrap_or_else(|e| panic!("{n}: {e}"));
        // The body's end, as the decoder found it, is where a real parser
        // finds it: the value reads back whole.
        assert_eq!(cmd.body.deserialize::<Value>().unwrap(), body, "{n}");
    }
    let err = decode(&frame_with_body(&mixed(129))).unwrap_err();
    assert_eq!(err.message(), "body nested deeper than 128 levels");
    // 2000 levels of [<deeper>, 1]: every level is left after its deeper
    // item, the bookkeeping the old skipper got wrong past level 16.
    let mut frame = b"\x82\xa6action\xa1a\xa4body".to_vec();
    frame.extend(std::iter::repeat_n(0x92u8, 2000));
    frame.push(0xc0);
    frame.extend(std::iter::repeat_n(0x01u8, 2000));
    let err = decode(&frame).unwrap_err();
    assert_eq!(err.message(), "body nested deeper than 128 levels");
    // Empty containers count as a level too, as in JSON.
    let mut frame = b"\x82\xa6action\xa1a\xa4body".to_vec();
    frame.extend(std::iter::repeat_n(0x91u8, 128));
    frame.push(0x90);
    assert!(decode(&frame).is_err());
    frame.truncate(frame.len() - 2);
    frame.push(0x90);
    assert!(decode(&frame).is_ok());
}

#[test]
fn broken_frames_report_key_and_action_when_read() {
    // {"key":"3","action":"drs.response","body":<truncated>}
    let mut frame = b"\x83\xa3key\xa13\xa6action\xacdrs.response\xa4body".to_vec();
    frame.extend([0x92, 0x01]);
    let err = decode(&frame).unwrap_err();
    assert_eq!((err.key(), err.action()), (Some("3"), Some("drs.response")));
}

#[test]
fn a_field_of_a_body_keeps_its_bytes() {
    let body =
        rmp_serde::to_vec_named(&json!({"n": 5, "topic": "a.b", "body": {"x": [1, 2]}})).unwrap();
    let body = Body::from_raw(Bytes::from(body), MsgPack.body_format());
    let inner = body.field("body").unwrap().unwrap();
    assert_eq!(inner.deserialize::<Value>().unwrap(), json!({"x": [1, 2]}));
    assert_eq!(
        body.field("topic")
            .unwrap()
            .unwrap()
            .deserialize::<String>()
            .unwrap(),
        "a.b"
    );
    assert!(body.field("nope").unwrap().is_none());
    let array = Body::from_raw(
        Bytes::from(rmp_serde::to_vec(&[1, 2]).unwrap()),
        MsgPack.body_format(),
    );
    assert!(array.field("body").is_err());
}
