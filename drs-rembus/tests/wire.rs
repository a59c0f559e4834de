//! The Rembus protocol on plain buffers: every message type in, every
//! reply out, and bad frames.

use bytes::{Bytes, BytesMut};
use ciborium::Value;
use drs_core::{Body, Command, OutBody, Outgoing, Protocol};
use drs_names::NAME_TAKEN;
use drs_rembus::{status, topic_in, topic_out, Rembus, UNKNOWN_ADMIN};
use serde_json::{json, Value as Json};

fn cbor(v: &Value) -> Bytes {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    Bytes::from(out)
}

fn arr(items: Vec<Value>) -> Value {
    Value::Array(items)
}

fn t(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn n(i: u64) -> Value {
    Value::Integer(i.into())
}

const ID: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn id() -> Value {
    Value::Bytes(ID.to_vec())
}

fn decode(v: Value) -> Command {
    Rembus.decode(cbor(&v)).expect("decodes")
}

fn body(cmd: &Command) -> Json {
    cmd.body.deserialize().expect("a body")
}

fn encode(out: Outgoing<'_>) -> Value {
    let mut buf = BytesMut::new();
    Rembus.encode(&out, &mut buf).expect("encodes");
    ciborium::from_reader(&buf[..]).expect("CBOR")
}

#[test]
fn identity_is_identify() {
    let cmd = decode(arr(vec![n(0), id(), t("alpha"), Value::Map(vec![])]));
    assert_eq!(cmd.action.as_str(), "drs.identify");
    assert_eq!(cmd.key.as_deref(), Some("i0102030405060708"));
    assert_eq!(body(&cmd), json!({"name": "alpha"}));
    // Answered with null data, or "already connected".
    let ok = encode(
        Outgoing::new("drs.response")
            .key(Some("i0102030405060708"))
            .body(OutBody::Value(&json!({"resumed": true}))),
    );
    assert_eq!(ok, arr(vec![n(4), id(), n(0), Value::Null]));
    let taken = encode(
        Outgoing::new("drs.error")
            .key(Some("i0102030405060708"))
            .body(OutBody::Value(&json!({"message": NAME_TAKEN}))),
    );
    assert_eq!(
        taken,
        arr(vec![
            n(4),
            id(),
            n(status::GENERIC_ERROR),
            t("already connected")
        ])
    );
}

#[test]
fn publish_qos0_and_qos1() {
    let cmd = decode(arr(vec![
        n(1),
        t("sensors/t1"),
        arr(vec![Value::Float(21.5)]),
    ]));
    assert_eq!(cmd.action.as_str(), "drs.publish");
    assert!(cmd.key.is_none());
    assert_eq!(body(&cmd), json!({"topic": "sensors.t1", "body": 21.5}));
    let cmd = decode(arr(vec![
        n(0x11),
        id(),
        t("alarm"),
        arr(vec![t("low"), t("HIGH")]),
    ]));
    assert_eq!(cmd.key.as_deref(), Some("q0102030405060708"));
    assert_eq!(
        body(&cmd),
        json!({"topic": "alarm", "body": ["low", "HIGH"]})
    );
    // QoS 2 with the slot flag and its extra element.
    let cmd = decode(arr(vec![n(0x71), id(), t("a"), arr(vec![]), n(99)]));
    assert_eq!(body(&cmd), json!({"topic": "a", "body": []}));
    assert_eq!(cmd.key.as_deref(), Some("w0102030405060708"));
    let ack = encode(
        Outgoing::new("drs.response")
            .key(Some("w0102030405060708"))
            .body(OutBody::Value(&1)),
    );
    assert_eq!(ack, arr(vec![n(5), id()]));
    let ack = encode(
        Outgoing::new("drs.response")
            .key(Some("q0102030405060708"))
            .body(OutBody::Value(&1)),
    );
    assert_eq!(ack, arr(vec![n(5), id()]));
    // Acks from the peer are a fire of their own.
    let ack2 = decode(arr(vec![n(6), id()]));
    assert_eq!(ack2.action.as_str(), "rembus.ack");
    assert_eq!(body(&ack2), json!({"kind": 6, "id": "0102030405060708"}));
}

#[test]
fn rpc_in_and_out() {
    let cmd = decode(arr(vec![
        n(2),
        id(),
        t("add"),
        Value::Null,
        arr(vec![n(1), n(2)]),
    ]));
    assert_eq!(
        (cmd.action.as_str(), cmd.key.as_deref()),
        ("add", Some("r0102030405060708"))
    );
    assert_eq!(body(&cmd), json!([1, 2]));
    let cmd = decode(arr(vec![
        n(2),
        id(),
        t("echo"),
        Value::Null,
        arr(vec![t("hi")]),
    ]));
    assert_eq!(body(&cmd), json!("hi"), "one argument is the body");
    let cmd = decode(arr(vec![n(2), id(), t("add"), t("calc"), arr(vec![n(1)])]));
    assert_eq!(cmd.action.as_str(), "rembus.direct");
    assert_eq!(
        body(&cmd),
        json!({"target": "calc", "action": "add", "body": 1})
    );
    let key = Some("r0102030405060708");
    assert_eq!(
        encode(
            Outgoing::new("drs.response")
                .key(key)
                .body(OutBody::Value(&3))
        ),
        arr(vec![n(4), id(), n(0), n(3)])
    );
    assert_eq!(
        encode(
            Outgoing::new("drs.error")
                .key(key)
                .body(OutBody::Value(&json!({"message": "No handlers for add"})))
        ),
        arr(vec![n(4), id(), n(status::METHOD_NOT_FOUND), t("add")])
    );
    assert_eq!(
        encode(
            Outgoing::new("drs.exception")
                .key(key)
                .body(OutBody::Value(&json!({"message": "boom"})))
        ),
        arr(vec![n(4), id(), n(status::METHOD_EXCEPTION), t("boom")])
    );
    assert_eq!(
        encode(
            Outgoing::new("drs.error")
                .key(key)
                .body(OutBody::Value(&json!({"message": "closed"})))
        ),
        arr(vec![n(4), id(), n(status::TARGET_DOWN), t("closed")])
    );
    // Our own calls go out as RPCs; their answers come back to our key.
    let call = encode(
        Outgoing::new("triple")
            .key(Some("7"))
            .body(OutBody::Value(&14)),
    );
    let seven = Value::Bytes(7u64.to_le_bytes().to_vec());
    assert_eq!(
        call,
        arr(vec![
            n(2),
            seven.clone(),
            t("triple"),
            Value::Null,
            arr(vec![n(14)])
        ])
    );
    let call = encode(
        Outgoing::new("sum")
            .key(Some("7"))
            .body(OutBody::Value(&json!([1, 2]))),
    );
    assert_eq!(
        call,
        arr(vec![
            n(2),
            seven.clone(),
            t("sum"),
            Value::Null,
            arr(vec![n(1), n(2)])
        ])
    );
    let reply = decode(arr(vec![n(4), seven.clone(), n(0), n(42)]));
    assert_eq!(
        (reply.action.as_str(), reply.key.as_deref()),
        ("drs.response", Some("7"))
    );
    assert_eq!(body(&reply), json!(42));
    let reply = decode(arr(vec![
        n(4),
        seven.clone(),
        n(40),
        t("ZeroDivisionError"),
    ]));
    assert_eq!(reply.action.as_str(), "drs.exception");
    assert_eq!(body(&reply), json!({"message": "ZeroDivisionError"}));
    let reply = decode(arr(vec![n(4), seven, n(42), Value::Null]));
    assert_eq!(reply.action.as_str(), "drs.error");
    assert_eq!(body(&reply), json!({"message": "Rembus status 42"}));
}

#[test]
fn admin_commands() {
    let admin = |spec: Vec<(Value, Value)>, topic: &str| {
        decode(arr(vec![n(3), id(), t(topic), Value::Map(spec)]))
    };
    let cmd = admin(vec![(t("cmd"), t("expose"))], "add");
    assert_eq!(
        (cmd.action.as_str(), body(&cmd)),
        ("drs.expose", json!({"action": "add"}))
    );
    let cmd = admin(vec![(t("cmd"), t("unexpose"))], "add");
    assert_eq!(cmd.action.as_str(), "drs.unexpose");
    // msg_from comes as a half float: +inf (f9 7c00) is LastReceived.
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0x84, 0x03, 0x48]);
    frame.extend_from_slice(&ID);
    frame.extend_from_slice(&[0x64, b't', b'/', b'x', b'y']);
    frame.extend_from_slice(&[0xa2, 0x63, b'c', b'm', b'd', 0x69]);
    frame.extend_from_slice(b"subscribe");
    frame.extend_from_slice(&[0x68]);
    frame.extend_from_slice(b"msg_from");
    frame.extend_from_slice(&[0xf9, 0x7c, 0x00]);
    let cmd = Rembus.decode(Bytes::from(frame)).expect("f16 decodes");
    assert_eq!(cmd.action.as_str(), "drs.subscribe");
    assert_eq!(body(&cmd), json!({"topic": "t.xy", "retroactive": true}));
    let cmd = admin(
        vec![
            (t("cmd"), t("subscribe")),
            (t("msg_from"), Value::Float(0.0)),
        ],
        "t",
    );
    assert_eq!(body(&cmd), json!({"topic": "t"}), "Now is live only");
    let cmd = admin(
        vec![(t("cmd"), t("reactive")), (t("status"), Value::Bool(true))],
        "__config__",
    );
    assert_eq!(
        (cmd.action.as_str(), body(&cmd)),
        (
            "rembus.reactive",
            json!({"cmd": "reactive", "status": true})
        )
    );
    let cmd = admin(vec![(t("cmd"), t("setup"))], "__config__");
    assert_eq!(cmd.action.as_str(), "rembus.setup");
    let cmd = admin(vec![(t("cmd"), t("bogus"))], "t");
    assert_eq!(cmd.action.as_str(), "rembus.admin");
    let key = Some("a0102030405060708");
    assert_eq!(
        encode(Outgoing::new("drs.response").key(key).body(OutBody::Absent)),
        arr(vec![n(4), id(), n(0), Value::Null])
    );
    assert_eq!(
        encode(
            Outgoing::new("drs.error")
                .key(key)
                .body(OutBody::Value(&json!({"message": UNKNOWN_ADMIN})))
        ),
        arr(vec![n(4), id(), n(status::UNKNOWN_ADMIN), Value::Null])
    );
}

#[test]
fn deliveries_are_publishes() {
    let raw = Body::from_raw(
        Bytes::from_static(br#"{"c":21.5}"#),
        drs_protocol_json::Json.body_format(),
    );
    assert_eq!(
        encode(Outgoing::new("sensors.t1").body(OutBody::Raw(&raw))),
        arr(vec![
            n(1),
            t("sensors/t1"),
            arr(vec![Value::Map(vec![(t("c"), Value::Float(21.5))])])
        ])
    );
    assert_eq!(
        encode(Outgoing::new("tick").body(OutBody::Absent)),
        arr(vec![n(1), t("tick"), arr(vec![])])
    );
    // A notice with no request: a response to id 0, which clients ignore.
    let notice = encode(
        Outgoing::new("drs.error").body(OutBody::Value(&json!({"message": "too many bad frames"}))),
    );
    assert_eq!(
        notice,
        arr(vec![
            n(4),
            Value::Bytes(vec![0; 8]),
            n(10),
            t("too many bad frames")
        ])
    );
}

#[test]
fn what_cannot_be_sent_is_an_encode_error_that_writes_nothing() {
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert!(Rembus
        .encode(&Outgoing::new("drs.cancel").key(Some("7")), &mut buf)
        .is_err());
    assert!(Rembus
        .encode(&Outgoing::new("drs.response").key(Some("zz")), &mut buf)
        .is_err());
    assert_eq!(&buf[..], b"kept");
}

#[test]
fn bad_frames_are_refused_with_a_reason() {
    let cases: Vec<(Bytes, &str)> = vec![
        (Bytes::from_static(b"\xff\x00"), "invalid CBOR"),
        (cbor(&t("hello")), "CBOR array"),
        (cbor(&arr(vec![])), "starts with its type"),
        (cbor(&arr(vec![t("x")])), "starts with its type"),
        (
            cbor(&arr(vec![
                n(0),
                Value::Bytes(vec![1, 2]),
                t("a"),
                Value::Null,
            ])),
            "8 bytes",
        ),
        (cbor(&arr(vec![n(2), id(), t("add")])), "at least 5"),
        (
            cbor(&arr(vec![n(1), n(5), arr(vec![])])),
            "topic must be a string",
        ),
        (cbor(&arr(vec![n(9), id()])), "not supported"),
    ];
    for (frame, says) in cases {
        let err = Rembus.decode(frame.clone()).unwrap_err();
        assert!(err.message().contains(says), "{frame:?}: {err}");
    }
    // Where the id could be read, the error carries the key to answer.
    let err = Rembus
        .decode(cbor(&arr(vec![n(0), id(), n(5), Value::Null])))
        .unwrap_err();
    assert_eq!(err.key(), Some("i0102030405060708"));
    // Deep nesting is refused, not a stack overflow.
    let mut deep = vec![0x81u8; 100_000];
    deep.push(0x00);
    assert!(Rembus.decode(Bytes::from(deep)).is_err());
    // [1, "t", [0 × 8M]]: 8 MB whose values would take hundreds of MiB
    // while decoded, refused before; an array its bytes cannot carry too.
    let mut wide = vec![0x83, 0x01, 0x61, b't', 0x9a];
    wide.extend(8_000_000u32.to_be_bytes());
    wide.extend(std::iter::repeat_n(0u8, 8_000_000));
    let err = Rembus.decode(Bytes::from(wide)).unwrap_err();
    assert!(
        err.message().contains("decodes to more than 32 MiB"),
        "{err}"
    );
    let lie = Bytes::from_static(&[0x83, 0x01, 0x61, b't', 0x9b, 0, 0, 0, 1, 0, 0, 0, 0]);
    let err = Rembus.decode(lie).unwrap_err();
    assert!(err.message().contains("cannot carry"), "{err}");
}

#[test]
fn topics_map_between_slashes_and_dots() {
    assert_eq!(topic_in("a/b/c"), "a.b.c");
    assert_eq!(topic_in("a/**"), "a.>");
    assert_eq!(topic_in("*/telemetry"), "*.telemetry");
    assert_eq!(topic_out("a.b.c"), "a/b/c");
}
