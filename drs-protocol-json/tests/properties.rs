//! Property tests of the JSON decoder: round trips, garbage, and agreement
//! with serde_json on what is a valid command.

use bytes::{Bytes, BytesMut};
use drs_core::{OutBody, Outgoing, Protocol};
use drs_protocol_json::Json;
use proptest::prelude::*;
use serde_json::Value;

fn value() -> impl Strategy<Value = Value> {
    drs_testkit::json_values()
}

fn encode(key: Option<&str>, action: &str, body: Option<&Value>, version: Option<i64>) -> Bytes {
    let mut buf = BytesMut::new();
    let body = body.map_or(OutBody::Absent, |b| OutBody::Value(b));
    Json.encode(
        &Outgoing::new(action).key(key).body(body).version(version),
        &mut buf,
    )
    .unwrap();
    buf.freeze()
}

proptest! {
    #[test]
    fn commands_round_trip(
        key in proptest::option::of("\\PC{0,10}"),
        action in "\\PC{1,10}",
        body in proptest::option::of(value()),
        version in proptest::option::of(any::<i64>()),
    ) {
        let frame = encode(key.as_deref(), &action, body.as_ref(), version);
        let cmd = Json.decode(frame).unwrap();
        prop_assert_eq!(cmd.key.as_deref(), key.as_deref());
        prop_assert_eq!(cmd.action.as_str(), action.as_str());
        prop_assert_eq!(cmd.version, version);
        let got: Value = cmd.body.deserialize().unwrap();
        prop_assert_eq!(got, body.unwrap_or(Value::Null));
    }

    /// Bytes of any kind never panic; whatever decodes re-encodes to a
    /// frame that decodes to the same command.
    #[test]
    fn garbage_never_panics_and_what_decodes_round_trips(data in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(cmd) = Json.decode(Bytes::from(data)) {
            let mut out = BytesMut::new();
            let body = if cmd.body.is_absent() { OutBody::Absent } else { OutBody::Raw(&cmd.body) };
            Json.encode(&Outgoing::new(&cmd.action).key(cmd.key.as_deref()).body(body).version(cmd.version), &mut out).unwrap();
            let again = Json.decode(out.freeze()).unwrap();
            prop_assert_eq!(again.action, cmd.action);
            prop_assert_eq!(again.key, cmd.key);
            prop_assert_eq!(again.version, cmd.version);
        }
    }

    /// Near-JSON text: wherever serde_json reads a command object (not too
    /// deep, every number in range), so do we, with the same body.
    #[test]
    fn agrees_with_serde_json(text in r#"\{("(key|action|body|x)":([\[\]{},:" 0-9a-z.eE+-]|"action"|null|true){0,12},?){0,4}\}"#) {
        let serde = serde_json::from_str::<Value>(&text).ok();
        let ours = Json.decode(Bytes::from(text.clone()));
        let valid = serde.as_ref().is_some_and(|v| {
            v.get("action").is_some_and(Value::is_string)
                && v.get("key").map_or(true, |k| k.is_string() || k.is_null())
        });
        // serde_json's object keeps the last of duplicate keys; we refuse them.
        let duplicates = ["\"key\"", "\"action\"", "\"body\""].iter().any(|k| text.matches(k).count() > 1);
        if valid && !duplicates {
            let cmd = ours.as_ref().unwrap_or_else(|e| panic!("{text}: {e}"));
            let body: Value = cmd.body.deserialize().unwrap();
            let expected = serde.as_ref().and_then(|v| v.get("body")).cloned().unwrap_or(Value::Null);
            prop_assert_eq!(body, expected);
        }
        if serde.is_none() {
            // What serde_json cannot read we refuse too (our numbers are
            // read as text, so out-of-range ones are the only exception).
            prop_assert!(ours.is_err() || text.contains('e') || text.contains('E'), "{}", text);
        }
    }
}
