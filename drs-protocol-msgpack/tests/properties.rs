//! Property tests of the MessagePack decoder: round trips and garbage.

use bytes::{Bytes, BytesMut};
use drs_core::{OutBody, Outgoing, Protocol};
use drs_protocol_msgpack::MsgPack;
use proptest::prelude::*;
use serde_json::Value;

fn value() -> impl Strategy<Value = Value> {
    drs_testkit::json_values()
}

proptest! {
    #[test]
    fn commands_round_trip(
        key in proptest::option::of("\\PC{0,10}"),
        action in "\\PC{1,10}",
        body in proptest::option::of(value()),
        version in proptest::option::of(any::<i64>()),
    ) {
        let mut buf = BytesMut::new();
        let out = body.as_ref().map_or(OutBody::Absent, |b| OutBody::Value(b));
        MsgPack.encode(&Outgoing::new(&action).key(key.as_deref()).body(out).version(version), &mut buf).unwrap();
        let cmd = MsgPack.decode(buf.freeze()).unwrap();
        prop_assert_eq!(cmd.key.as_deref(), key.as_deref());
        prop_assert_eq!(cmd.action.as_str(), action.as_str());
        prop_assert_eq!(cmd.version, version);
        let got: Value = cmd.body.deserialize().unwrap();
        prop_assert_eq!(got, body.unwrap_or(Value::Null));
    }

    /// Bytes of any kind never panic; whatever decodes re-encodes, body
    /// bytes and all, to a frame that decodes to the same command.
    #[test]
    fn garbage_never_panics_and_what_decodes_round_trips(
        prefix in prop::sample::select(vec![vec![], vec![0x82u8, 0xa6], vec![0x83, 0xa3, b'k', b'e', b'y']]),
        data in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let frame: Vec<u8> = prefix.into_iter().chain(data).collect();
        if let Ok(cmd) = MsgPack.decode(Bytes::from(frame)) {
            let mut out = BytesMut::new();
            let body = if cmd.body.is_absent() { OutBody::Absent } else { OutBody::Raw(&cmd.body) };
            MsgPack.encode(&Outgoing::new(&cmd.action).key(cmd.key.as_deref()).body(body).version(cmd.version), &mut out).unwrap();
            let again = MsgPack.decode(out.freeze()).unwrap();
            prop_assert_eq!(again.action, cmd.action);
            prop_assert_eq!(again.key, cmd.key);
            prop_assert_eq!(again.body, cmd.body);
        }
    }
}
