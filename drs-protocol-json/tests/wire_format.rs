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

/// What is not a command says what it seems to be and what the port
/// speaks (the README's transcript shows the first).
#[test]
fn what_is_not_json_is_named() {
    use drs_core::Protocol;
    let speaks = "this port speaks drs JSON, one command object per line";
    for (input, said) in [
        (&b"this is not json"[..], format!("not JSON: {speaks}")),
        (b"GET / HTTP/1.1\r", format!("an HTTP request, not a command: {speaks} (HTTP and WebSocket clients go to a ws:// port)")),
        (b"\x00\x00\x00\x1a\x82\xa6action", format!("binary data, as MessagePack sends it: {speaks}")),
        (b"\x82\xa3key", format!("binary data, as MessagePack sends it: {speaks}")),
        (b"true", "expected a command object, found another JSON value".to_string()),
        (b"tru", format!("not JSON: {speaks}")),
    ] {
        let err = Json.decode(bytes::Bytes::copy_from_slice(input)).unwrap_err();
        assert_eq!(err.message(), said, "{input:?}");
    }
}

#[test]
fn garbage_is_a_clear_error() {
    for (input, key, fragment) in [
        ("not json", None, "not JSON"),
        ("{\"action\":", None, "end of the frame"),
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
            Some("k4"),
            "expected a value at column 33",
        ),
        (r#"{"key":"k5","body":[1,}"#, Some("k5"), "expected a value"),
        (r#"{"action":"a","body":01}"#, None, "expected `,` or `}`"),
        (r#"{"action":"a","body":"\q"}"#, None, "invalid escape"),
        (
            r#"{"action":"a","body":"\u12"}"#,
            None,
            "invalid \\u escape",
        ),
        (
            "{\"action\":\"a\",\"body\":\"\t\"}",
            None,
            "control character",
        ),
        (r#"{"action":"a","body":1.}"#, None, "invalid number"),
        (r#"{"action":"a","body":[1}"#, None, "expected `,` or `]`"),
        (r#"{"action":"a","body":{"x" 1}}"#, None, "expected `:`"),
        (r#"{"action":"a","body":tru}"#, None, "expected a value"),
        (r#"{"action":"a","version":1.5}"#, None, "64-bit integer"),
        (r#"{"action":"a",}"#, None, "expected a string"),
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
    assert!(matches!(err, drs_core::FrameError::TooLarge(_)));
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
fn nesting_is_limited_to_128_levels_in_one_pass() {
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    // 128 levels (the command object is not one) pass and deserialize…
    let cmd = decode(&format!(r#"{{"action":"a","body":{}}}"#, nested(128)));
    assert!(cmd.body.deserialize::<Value>().is_ok());
    // …129 are refused, with the key, and a message naming the limit.
    for n in [129, 3_000_000] {
        let frame = format!(r#"{{"key":"d","action":"a","body":{}}}"#, nested(n));
        let err = Json.decode(Bytes::from(frame)).unwrap_err();
        assert_eq!(err.message(), "body nested deeper than 128 levels");
        assert_eq!(err.key(), Some("d"));
    }
    // Containers inside containers at many levels, not one chain: objects
    // in arrays in objects, with siblings before and after at every level.
    let mixed = |n: usize| {
        let mut v = String::from("0");
        for i in 0..n {
            // Sibling containers add a level below their parent, so the
            // innermost level has scalar siblings only.
            v = if i == 0 {
                format!(r#"[1,{v},"x"]"#)
            } else if i % 2 == 0 {
                format!(r#"[1,{{"a":[]}},{v},"x"]"#)
            } else {
                format!(r#"{{"k":[],"v":{v},"z":null}}"#)
            };
        }
        v
    };
    let ok = decode(&format!(r#"{{"action":"a","body":{}}}"#, mixed(128)));
    let value: Value = ok.body.deserialize().unwrap();
    assert!(serde_json::to_string(&value).unwrap().matches('[').count() > 128);
    let err = Json
        .decode(Bytes::from(format!(
            r#"{{"action":"a","body":{}}}"#,
            mixed(129)
        )))
        .unwrap_err();
    assert!(err.message().contains("deeper than 128"), "{err}");
    // An unknown field is held to the same limit, and named.
    let err = Json
        .decode(Bytes::from(format!(
            r#"{{"action":"a","x":{}}}"#,
            nested(200)
        )))
        .unwrap_err();
    assert_eq!(err.message(), "x nested deeper than 128 levels");
    // Bodies made from bytes elsewhere are checked before serde_json recurses.
    let body = drs_core::Body::from_raw(Bytes::from(nested(1_000_000)), Json.body_format());
    let err = body.deserialize::<Value>().unwrap_err();
    assert!(err.message().contains("deeper than 128"), "{err}");
}

#[test]
fn broken_frames_report_key_and_action_when_read() {
    let err = Json
        .decode(Bytes::from_static(
            br#"{"key":"3","action":"drs.response","body":[}"#,
        ))
        .unwrap_err();
    assert_eq!((err.key(), err.action()), (Some("3"), Some("drs.response")));
    let err = Json
        .decode(Bytes::from_static(br#"{"key":"3","body":[}"#))
        .unwrap_err();
    assert_eq!((err.key(), err.action()), (Some("3"), None));
}

#[test]
fn escaped_names_keys_and_actions_decode() {
    let cmd = decode(r#"{"k\u0065y":"a\"b","\u0061ction":"\u00e9t\u00e9","body":"\ud83d\ude00"}"#);
    assert_eq!(cmd.key.as_deref(), Some("a\"b"));
    assert_eq!(cmd.action, "été");
    assert_eq!(cmd.body.deserialize::<String>().unwrap(), "😀");
}

#[test]
fn a_field_of_a_body_keeps_its_bytes() {
    let cmd = decode(
        r#"{"action":"drs.publish","body":{"topic":"a.b","body":{"x": 1.50, "s":"\u00e9"},"z":[1]}}"#,
    );
    let inner = cmd.body.field("body").unwrap().unwrap();
    assert_eq!(
        inner.raw().unwrap().0.as_ref(),
        br#"{"x": 1.50, "s":"\u00e9"}"#
    );
    assert_eq!(
        cmd.body
            .field("topic")
            .unwrap()
            .unwrap()
            .deserialize::<String>()
            .unwrap(),
        "a.b"
    );
    assert!(cmd.body.field("missing").unwrap().is_none());
    let not_a_map = decode(r#"{"action":"a","body":[1,2]}"#);
    assert!(not_a_map.body.field("body").is_err());
    assert!(Body::absent().field("body").unwrap().is_none());
}
