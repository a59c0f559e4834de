//! The DRS v1 JSON wire format, byte for byte, on plain buffers.

use bytes::{Bytes, BytesMut};
use drs_core::{
    Body, Command, FrameCodec, FrameSpec, Framing, OutBody, Outgoing, Protocol, RemoteError,
};
use drs_protocol_json::Json;
use serde_json::{json, Value};
use tokio_util::codec::Decoder;

fn encode(out: Outgoing<'_>) -> String {
    let mut buf = BytesMut::new();
    Json.encode(&out, &mut buf).unwrap();
    String::from_utf8(buf.to_vec()).unwrap()
}

fn decode(text: &str) -> Command {
    Json.decode(Bytes::copy_from_slice(text.as_bytes()))
        .unwrap()
}

#[test]
fn reply_kinds_have_exact_bytes() {
    let v = json!({"sum": 3});
    assert_eq!(
        encode(
            Outgoing::new("drs.response")
                .key(Some("K1"))
                .body(OutBody::Value(&v))
        ),
        r#"{"key":"K1","action":"drs.response","body":{"sum":3}}"#
    );
    let e = RemoteError::new("bad input");
    assert_eq!(
        encode(
            Outgoing::new("drs.error")
                .key(Some("K2"))
                .body(OutBody::Value(&e))
        ),
        r#"{"key":"K2","action":"drs.error","body":{"message":"bad input"}}"#
    );
    let x = RemoteError::new("handler panicked: boom");
    assert_eq!(
        encode(
            Outgoing::new("drs.exception")
                .key(Some("K3"))
                .body(OutBody::Value(&x))
        ),
        r#"{"key":"K3","action":"drs.exception","body":{"message":"handler panicked: boom"}}"#
    );
}

#[test]
fn absent_fields_are_omitted_and_version_is_carried() {
    assert_eq!(encode(Outgoing::new("tick")), r#"{"action":"tick"}"#);
    let body = json!([1]);
    assert_eq!(
        encode(
            Outgoing::new("a")
                .key(Some("k"))
                .body(OutBody::Value(&body))
                .version(Some(2))
        ),
        r#"{"key":"k","action":"a","body":[1],"version":2}"#
    );
    // A null value is written; an absent body passed through is written as null.
    assert_eq!(
        encode(Outgoing::new("a").body(OutBody::Value(&()))),
        r#"{"action":"a","body":null}"#
    );
    let absent = Body::absent();
    assert_eq!(
        encode(Outgoing::new("a").body(OutBody::Raw(&absent))),
        r#"{"action":"a","body":null}"#
    );
}

#[test]
fn strings_are_escaped() {
    let body = json!("a\"b\\c\nd\u{1}");
    let out = encode(
        Outgoing::new("say \"hi\"\n")
            .key(Some("k\""))
            .body(OutBody::Value(&body)),
    );
    assert_eq!(
        out,
        r#"{"key":"k\"","action":"say \"hi\"\n","body":"a\"b\\c\nd\u0001"}"#
    );
    assert!(!out.contains('\n'));
    let back = decode(&out);
    assert_eq!(back.action, "say \"hi\"\n");
    assert_eq!(back.key.as_deref(), Some("k\""));
    assert_eq!(
        back.body.deserialize::<String>().unwrap(),
        "a\"b\\c\nd\u{1}"
    );
}

#[test]
fn decode_reads_fields_and_ignores_unknown_ones() {
    let cmd = decode(
        r#"{"extra":{"deep":[1,2]},"action":"user.get","version":3,"body":{"id":7},"key":"01J9","more":null}"#,
    );
    assert_eq!(cmd.action, "user.get");
    assert_eq!(cmd.key.as_deref(), Some("01J9"));
    assert_eq!(cmd.version, Some(3));
    assert_eq!(cmd.body.deserialize::<Value>().unwrap(), json!({"id": 7}));

    let fire = decode(r#"{"action":"tick"}"#);
    assert_eq!((fire.key, fire.version), (None, None));
    assert!(fire.body.is_absent());
    assert_eq!(fire.body.deserialize::<Value>().unwrap(), Value::Null);
    assert_eq!(fire.body.deserialize::<Option<u8>>().unwrap(), None);
    assert!(fire.body.deserialize::<u8>().is_err());
}

#[test]
fn body_is_kept_verbatim_and_passed_through() {
    let cmd = decode(r#"{"key":"1","action":"echo","body": { "a" : [1 , 2.50, "x"] } }"#);
    let (raw, format) = cmd.body.raw().unwrap();
    assert_eq!(&raw[..], br#"{ "a" : [1 , 2.50, "x"] }"#);
    assert_eq!(format.name(), "json");
    assert_eq!(
        encode(
            Outgoing::new("drs.response")
                .key(Some("1"))
                .body(OutBody::Raw(&cmd.body))
        ),
        r#"{"key":"1","action":"drs.response","body":{ "a" : [1 , 2.50, "x"] }}"#
    );
}

#[test]
fn raw_body_with_newlines_stays_on_one_line() {
    // A body that came from a pretty-printed WebSocket message.
    let cmd = decode("{\"action\":\"a\",\"body\":{\r\n  \"x\": \"line\\nbreak\"\n}}");
    let out = encode(Outgoing::new("a").body(OutBody::Raw(&cmd.body)));
    assert!(!out.contains('\n') && !out.contains('\r'), "{out}");
    let back = decode(&out);
    assert_eq!(
        back.body.deserialize::<Value>().unwrap(),
        json!({"x": "line\nbreak"})
    );
}

#[test]
fn garbage_is_a_clear_error() {
    for (input, key, fragment) in [
        ("not json", None, "expected"),
        ("{\"action\":", None, "EOF"),
        ("[1,2]", None, "a command object"),
        (r#"["k1","echo",{"x":1}]"#, None, "a command object"),
        ("\"action\"", None, "a command object"),
        (r#"{"key":"k1"}"#, Some("k1"), "missing field `action`"),
        (r#"{"key":"k2","action":5}"#, Some("k2"), "invalid type"),
        (r#"{"key":7,"action":"a"}"#, None, "invalid type"),
        (
            r#"{"key":"k3","action":"a","version":"x"}"#,
            Some("k3"),
            "invalid type",
        ),
        (
            r#"{"key":"k4","action":"a","body":}"#,
            None,
            "expected value",
        ),
        (r#"{"action":"a"} trailing"#, None, "trailing"),
        (
            "{\"action\":\"a\",\"action\":\"b\"}",
            None,
            "duplicate field",
        ),
    ] {
        let err = Json.decode(Bytes::from(input)).unwrap_err();
        assert_eq!(err.key(), key, "{input}");
        assert!(
            err.message().contains(fragment),
            "{input}: {}",
            err.message()
        );
    }
    let bad_utf8 = Json.decode(Bytes::from_static(b"{\"action\":\"\xff\"}"));
    assert!(bad_utf8.is_err());
}

#[test]
fn body_type_errors_are_reported() {
    let cmd = decode(r#"{"action":"add","body":{"a":1}}"#);
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Add {
        a: f64,
        b: f64,
    }
    let err = cmd.body.deserialize::<Add>().unwrap_err();
    assert!(err.message().contains("missing field `b`"), "{err}");
}

#[test]
fn lines_crlf_and_blank_lines_through_the_codec() {
    let mut codec = FrameCodec::new(FrameSpec::new(Json.framing()));
    let mut buf = BytesMut::from(
        &b"{\"action\":\"a\"}\r\n\r\n   \n{\"key\":\"1\",\"action\":\"b\",\"body\":2}\n{\"action\":\"c\"}"[..],
    );
    let mut actions = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).unwrap() {
        actions.push(Json.decode(frame).unwrap().action);
    }
    if let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
        actions.push(Json.decode(frame).unwrap().action);
    }
    assert_eq!(actions, ["a", "b", "c"]);
    assert_eq!(Json.framing(), Framing::Lines);
}

#[test]
fn oversize_line_is_refused_by_the_codec() {
    let mut codec = FrameCodec::new(FrameSpec::new(Framing::Lines).max_frame_len(32));
    let line = format!("{{\"action\":\"a\",\"body\":\"{}\"}}\n", "x".repeat(64));
    let err = codec
        .decode(&mut BytesMut::from(line.as_bytes()))
        .unwrap_err();
    assert!(drs_core::FrameTooLarge::find(&err).is_some());
}

#[test]
fn go_drs_style_frames_decode() {
    // What the Go DRS writes: key, action, body; error bodies with "message".
    let cmd = decode(
        r#"{"key":"6b1f3c8e-0c9a-4f5e-9d7b-2f1e0a9c3b11","action":"drs.error","body":{"message":"No handlers for x"}}"#,
    );
    assert!(cmd.is_reply());
    assert_eq!(
        cmd.body.deserialize::<RemoteError>().unwrap().message,
        "No handlers for x"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(
        r#"{{"key":"d","action":"a","body":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    // The frame decodes (the body is only skipped over, without recursion)…
    let cmd = Json.decode(Bytes::from(deep)).unwrap();
    // …and deserializing or transcoding it stops at serde_json's limit.
    let err = cmd.body.deserialize::<Value>().unwrap_err();
    assert!(err.message().contains("recursion limit"), "{err}");
    let mut out = BytesMut::new();
    assert!(drs_protocol_msgpack::MsgPack
        .encode(&Outgoing::new("a").body(OutBody::Raw(&cmd.body)), &mut out)
        .is_err());
    let ok = format!(
        r#"{{"action":"a","body":{}{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let cmd = Json.decode(Bytes::from(ok)).unwrap();
    assert!(cmd.body.deserialize::<Value>().is_ok());
}
