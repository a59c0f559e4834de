//! Connection behaviours that need a controlled peer or clock: a raw
//! in-memory peer plays the other side frame by frame.

use std::{future::IntoFuture, time::Duration};

use bytes::{Bytes, BytesMut};
use drs_core::{
    memory, Body, Client, Command, ConnInfo, Error, HandlerError, HandlerResult, Inbound, Msg,
    OutBody, Outgoing, Protocol, Server,
};
use drs_protocol_json::Json;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

fn frame(key: Option<&str>, action: &str, body: Value) -> Bytes {
    let mut buf = BytesMut::new();
    Json.encode(
        &Outgoing::new(action).key(key).body(OutBody::Value(&body)),
        &mut buf,
    )
    .unwrap();
    buf.freeze()
}

async fn next(raw: &mut memory::MemoryTransport) -> Command {
    Json.decode(
        raw.next()
            .await
            .expect("open")
            .expect("no error")
            .frame()
            .expect("a frame"),
    )
    .unwrap()
}

fn client_over_memory(client: Client) -> (drs_core::Conn, memory::MemoryTransport) {
    let (ours, raw) = memory::pair();
    let conn = client.connect_transport(ours, ConnInfo::new("memory"), std::sync::Arc::new(Json));
    (conn, raw)
}

#[tokio::test(start_paused = true)]
async fn default_call_timeout_is_five_seconds() {
    let (conn, mut raw) = client_over_memory(Client::new());
    let start = tokio::time::Instant::now();
    let call = tokio::spawn(conn.call::<Value>("never", ()).into_future());
    let sent = next(&mut raw).await;
    assert_eq!(sent.action, "never");
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_secs(5)),
        "{err:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(conn.pending_calls(), 0);
}

#[tokio::test]
async fn late_reply_after_timeout_is_dropped() {
    within(async {
        let (conn, mut raw) = client_over_memory(Client::new());
        let err = conn
            .call::<u32>("slow", ())
            .timeout(Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        let sent = next(&mut raw).await;
        let key = sent.key.expect("a call has a key");
        // A call that timed out is cancelled: the peer may stop working on it.
        let cancel = next(&mut raw).await;
        assert_eq!(
            (cancel.action.as_str(), cancel.key.as_deref()),
            ("drs.cancel", Some(key.as_str()))
        );
        // The late reply, then a call to the client: the client reads in
        // order, so its answer proves the late reply was read (and dropped).
        raw.send(frame(Some(&key), "drs.response", json!(1)))
            .await
            .unwrap();
        raw.send(frame(Some("p"), "drs.ping", Value::Null))
            .await
            .unwrap();
        let pong = next(&mut raw).await;
        assert_eq!(
            (pong.action.as_str(), pong.key.as_deref()),
            ("drs.response", Some("p"))
        );
        assert_eq!(conn.pending_calls(), 0);
        // Keys are never reused: the next call has a fresh one.
        let call = tokio::spawn(conn.call::<u32>("again", ()).into_future());
        let again = next(&mut raw).await;
        assert_ne!(again.key.as_deref(), Some(key.as_str()));
        raw.send(frame(again.key.as_deref(), "drs.response", json!(9)))
            .await
            .unwrap();
        assert_eq!(call.await.unwrap().unwrap(), 9);
    })
    .await
}

#[tokio::test]
async fn replies_of_every_kind_reach_the_caller() {
    within(async {
        let (conn, mut raw) = client_over_memory(Client::new());
        for (action, body) in [
            ("drs.response", json!({"ok": true})),
            ("drs.error", json!({"message": "nope"})),
            ("drs.exception", json!({"message": "boom"})),
            ("drs.error", json!("bare string")),
            ("drs.error", json!(42)),
        ] {
            let call = tokio::spawn(conn.call::<Value>("x", ()).into_future());
            let sent = next(&mut raw).await;
            raw.send(frame(sent.key.as_deref(), action, body.clone()))
                .await
                .unwrap();
            let got = call.await.unwrap();
            match action {
                "drs.response" => assert_eq!(got.unwrap(), body),
                "drs.error" => {
                    let err = got.unwrap_err();
                    assert!(err.is_remote());
                    let expected = match &body {
                        Value::Object(m) => m["message"].as_str().unwrap().to_string(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    assert_eq!(err.remote().unwrap().message, expected);
                }
                _ => assert!(got.unwrap_err().is_exception()),
            }
        }
    })
    .await
}

#[tokio::test]
async fn frames_queued_by_a_handler_precede_its_reply() {
    within(async {
        let client = Client::new().on("work", |msg: Msg| async move {
            msg.conn().fire("progress", 50).await?;
            HandlerResult::Ok("done")
        });
        let (_conn, mut raw) = client_over_memory(client);
        raw.send(frame(Some("1"), "work", Value::Null))
            .await
            .unwrap();
        assert_eq!(next(&mut raw).await.action, "progress");
        assert_eq!(next(&mut raw).await.action, "drs.response");
    })
    .await
}

/// Bad input is counted as a rate: 32 bad frames within 10 s disconnect,
/// good frames in between or not; past the window the count restarts.
/// Each answer to garbage is short.
#[tokio::test(start_paused = true)]
async fn too_many_bad_frames_within_a_window_disconnect() {
    within(async {
        let (conn, mut raw) = client_over_memory(Client::new());
        let junk = Bytes::from(format!("junk{}", "x".repeat(10_000)));
        for _ in 0..31 {
            raw.send(junk.clone()).await.unwrap();
            let f = raw.next().await.unwrap().unwrap().frame().unwrap();
            assert!(f.len() < 200, "a long answer to garbage: {} bytes", f.len());
        }
        // Past the window, the count starts again.
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..31 {
            raw.send(junk.clone()).await.unwrap();
            assert_eq!(next(&mut raw).await.action, "drs.error");
            // A good frame does not wipe the slate.
            raw.send(frame(Some("p"), "drs.ping", Value::Null))
                .await
                .unwrap();
            assert_eq!(next(&mut raw).await.action, "drs.response");
        }
        raw.send(junk.clone()).await.unwrap();
        let mut notices = Vec::new();
        while let Some(Ok(Inbound::Frame(f))) = raw.next().await {
            notices.push(Json.decode(f).unwrap());
        }
        assert_eq!(
            notices.len(),
            2,
            "the 32nd notice and the reason: {notices:?}"
        );
        let last: Value = notices.last().unwrap().body.deserialize().unwrap();
        assert!(last["message"]
            .as_str()
            .unwrap()
            .contains("too many invalid"));
        conn.closed().await;
        assert_eq!(conn.close_reason().unwrap().name(), "bad_peer");
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn draining_server_refuses_new_commands_but_finishes_running_ones() {
    within(async {
        let server = Server::new();
        let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let r = release.clone();
        server.on("block", move || {
            let r = r.clone();
            async move {
                r.acquire().await.unwrap().forget();
                HandlerResult::Ok("finished")
            }
        });
        let (listener, dialer) = memory::listener();
        server.listen(listener, Json).unwrap();
        let mut raw = {
            let (io, _) = drs_core::Dialer::dial(&dialer, drs_core::FrameSpec::new(Json.framing()))
                .await
                .unwrap();
            io
        };
        raw.send(frame(Some("1"), "block", Value::Null))
            .await
            .unwrap();
        raw.send(frame(Some("p"), "drs.ping", Value::Null))
            .await
            .unwrap();
        assert_eq!(next(&mut raw).await.key.as_deref(), Some("p")); // block is running
        let mut shutdown = Box::pin(server.shutdown(Duration::from_secs(60)));
        assert!(futures::poll!(&mut shutdown).is_pending());
        raw.send(frame(Some("2"), "drs.ping", Value::Null))
            .await
            .unwrap();
        let refused = next(&mut raw).await;
        assert_eq!(
            (refused.action.as_str(), refused.key.as_deref()),
            ("drs.error", Some("2"))
        );
        let body: Value = refused.body.deserialize().unwrap();
        assert_eq!(body, json!({"message": "the server is shutting down"}));
        release.add_permits(1);
        let done = next(&mut raw).await;
        assert_eq!(done.key.as_deref(), Some("1"));
        assert_eq!(done.body.deserialize::<String>().unwrap(), "finished");
        shutdown.await;
        assert!(raw.next().await.is_none(), "closed after the drain");
    })
    .await
}

#[tokio::test]
async fn handler_errors_keep_their_meaning() {
    within(async {
        let server = Server::new();
        server.on("remote_error", |msg: Msg| async move {
            let v: Value = msg.conn().call("fail", ()).await?;
            HandlerResult::Ok(v)
        });
        server.on("remote_timeout", |msg: Msg| async move {
            let v: Value = msg
                .conn()
                .call("hang", ())
                .timeout(Duration::from_millis(20))
                .await?;
            HandlerResult::Ok(v)
        });
        server.on("explicit", || async {
            Err::<(), _>(HandlerError::exception("broken invariant"))
        });
        server.on("display", || async { Err::<(), _>("plain text error") });
        server.on("io", || async {
            Err::<(), _>(std::io::Error::other("disk on fire"))
        });
        let (listener, dialer) = memory::listener();
        server.listen(listener, Json).unwrap();
        let client = Client::new()
            .on("fail", || async {
                Err::<(), _>(HandlerError::new("client refuses"))
            })
            .on("hang", || async {
                std::future::pending::<()>().await;
                HandlerResult::Ok(())
            });
        let conn = client.connect(dialer, Json).await.unwrap();
        let e = conn.call::<Value>("remote_error", ()).await.unwrap_err();
        assert!(
            e.is_remote() && e.remote().unwrap().message == "client refuses",
            "{e:?}"
        );
        let e = conn.call::<Value>("remote_timeout", ()).await.unwrap_err();
        assert!(
            e.is_exception() && e.remote().unwrap().message.contains("timed out"),
            "{e:?}"
        );
        let e = conn.call::<Value>("explicit", ()).await.unwrap_err();
        assert!(e.is_exception() && e.remote().unwrap().message == "broken invariant");
        let e = conn.call::<Value>("display", ()).await.unwrap_err();
        assert!(e.is_remote() && e.remote().unwrap().message == "plain text error");
        let e = conn.call::<Value>("io", ()).await.unwrap_err();
        assert!(e.is_remote() && e.remote().unwrap().message == "disk on fire");
    })
    .await
}

#[tokio::test]
async fn per_connection_handlers_take_precedence_on_a_server() {
    within(async {
        let server = Server::new();
        server.on("who", || async { HandlerResult::Ok("everyone") });
        let nth = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        server.on_connect(move |conn: drs_core::Conn| {
            let odd = nth.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 1;
            async move {
                if odd {
                    conn.on("who", || async { HandlerResult::Ok("just me") });
                }
                HandlerResult::Ok(())
            }
        });
        let (listener, dialer) = memory::listener();
        server.listen(listener, Json).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let conn = Client::new().connect(dialer.clone(), Json).await.unwrap();
            let who: String = conn.call("who", ()).await.unwrap();
            seen.insert(who);
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["everyone", "just me"]
        );
    })
    .await
}

#[tokio::test]
async fn body_passes_between_handlers_untouched() {
    within(async {
        let server = Server::new();
        server.on("relay", |body: Body| async move { HandlerResult::Ok(body) });
        let (listener, dialer) = memory::listener();
        server.listen(listener, Json).unwrap();
        let conn = Client::new().connect(dialer, Json).await.unwrap();
        let sent =
            serde_json::value::RawValue::from_string(r#"{ "b" : [1,2], "a":"x" }"#.into()).unwrap();
        let body: Body = conn.call("relay", &sent).await.unwrap();
        let (raw, _) = body.raw().unwrap();
        assert_eq!(&raw[..], br#"{ "b" : [1,2], "a":"x" }"#);
    })
    .await
}

#[test]
#[should_panic(expected = "reserved")]
fn reply_actions_cannot_have_handlers() {
    Server::new().on("drs.response", || async { HandlerResult::Ok(()) });
}

/// A body that cannot be transcoded for some peers (JSON's `1e400` has no
/// MessagePack form) is skipped for those peers, without a panic, and the
/// broadcast says how many it reached; peers of the body's own protocol get
/// its bytes exactly.
#[tokio::test]
async fn broadcast_skips_peers_it_cannot_encode_for() {
    within(async {
        let server = Server::new();
        let (json_listener, json_dialer) = memory::listener();
        let (mp_listener, mp_dialer) = memory::listener();
        server.listen(json_listener, Json).unwrap();
        server
            .listen(mp_listener, drs_protocol_msgpack::MsgPack)
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let json_peer = Client::new()
            .on("news", move |body: Body| {
                let tx = tx.clone();
                async move {
                    tx.send(body.raw().unwrap().0.clone()).await.ok();
                    HandlerResult::Ok(())
                }
            })
            .connect(json_dialer, Json)
            .await
            .unwrap();
        let mp_peer = Client::new()
            .connect(mp_dialer, drs_protocol_msgpack::MsgPack)
            .await
            .unwrap();
        for conn in [&json_peer, &mp_peer] {
            let _: u64 = conn.call("drs.ping", ()).await.unwrap();
        }
        let huge = Json
            .decode(Bytes::from_static(
                br#"{"action":"x","body":[1e400, 1.50]}"#,
            ))
            .unwrap()
            .body;
        assert_eq!(server.broadcast_body("news", &huge), 1);
        assert_eq!(rx.recv().await.unwrap(), &b"[1e400, 1.50]"[..]);
        // Through `broadcast` the body is a value, serialized through serde
        // for every protocol, and serde_json cannot read `1e400`: nobody is
        // reached, and nothing panics (erased-serde's serializer errors
        // cannot be displayed; the transcoder never formats them).
        assert_eq!(server.broadcast("news", &huge).unwrap(), 0);
        assert_eq!(server.broadcast("news", [1.5]).unwrap(), 2);
        assert_eq!(rx.recv().await.unwrap(), &b"[1.5]"[..]);
        // And a reply that cannot be encoded is an exception saying why.
        server.on("huge", move || {
            let huge = huge.clone();
            async move { HandlerResult::Ok(huge) }
        });
        let err = mp_peer.call::<Value>("huge", ()).await.unwrap_err();
        assert!(err.is_exception(), "{err:?}");
        assert!(
            err.to_string().contains("failed to encode the reply"),
            "{err}"
        );
    })
    .await
}

/// A server and a client over the in-memory transport.
async fn served(server: &Server) -> drs_core::Conn {
    let (listener, dialer) = memory::listener();
    server.listen(listener, Json).unwrap();
    Client::new().connect(dialer, Json).await.unwrap()
}

#[tokio::test]
async fn handlers_that_cannot_fail_return_plain_values() {
    #[derive(serde::Serialize)]
    struct Point {
        x: i64,
        y: i64,
    }
    let server = Server::new();
    server.on("double", |x: i64| async move { x * 2 });
    server.on(
        "greet",
        |name: String| async move { format!("hello {name}") },
    );
    server.on("static", || async { "fixed" });
    server.on("nothing", || async {});
    server.on("maybe", |x: i64| async move { (x > 0).then_some(x) });
    server.on("pair", |x: i64| async move { (x, vec![x; 2]) });
    server.on("point", |x: i64| async move {
        drs_core::Reply(Point { x, y: -x })
    });
    server.on("json", || async { json!({"k": [1, 2]}) });
    server.on("echo", |body: Body| async move { body });
    server.on("fallible", |x: i64| async move {
        if x < 0 {
            Err(HandlerError::new("negative"))
        } else {
            Ok(x)
        }
    });
    let conn = within(served(&server)).await;
    let call = |action: &'static str, body: Value| {
        let conn = conn.clone();
        async move { within(conn.call::<Value>(action, body).into_future()).await }
    };
    assert_eq!(call("double", json!(21)).await.unwrap(), json!(42));
    assert_eq!(
        call("greet", json!("ada")).await.unwrap(),
        json!("hello ada")
    );
    assert_eq!(call("static", Value::Null).await.unwrap(), json!("fixed"));
    assert_eq!(call("nothing", Value::Null).await.unwrap(), Value::Null);
    assert_eq!(call("maybe", json!(-1)).await.unwrap(), Value::Null);
    assert_eq!(call("maybe", json!(3)).await.unwrap(), json!(3));
    assert_eq!(call("pair", json!(2)).await.unwrap(), json!([2, [2, 2]]));
    assert_eq!(
        call("point", json!(5)).await.unwrap(),
        json!({"x": 5, "y": -5})
    );
    assert_eq!(
        call("json", Value::Null).await.unwrap(),
        json!({"k": [1, 2]})
    );
    assert_eq!(call("echo", json!([true])).await.unwrap(), json!([true]));
    assert_eq!(call("fallible", json!(1)).await.unwrap(), json!(1));
    let e = call("fallible", json!(-1)).await.unwrap_err();
    assert_eq!(e.remote().unwrap().message, "negative");
    // A body that does not fit is still a drs.error naming the action.
    let e = call("double", json!("x")).await.unwrap_err();
    assert!(e.is_remote() && e.to_string().contains("double"), "{e}");
}

#[tokio::test]
async fn a_call_for_its_side_effect_accepts_any_reply() {
    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Ack;
    let server = Server::new();
    server.on("double", |x: i64| async move { x * 2 });
    server.on("fail", || async { Err::<(), _>(HandlerError::new("no")) });
    let conn = within(served(&server)).await;
    within(conn.call::<()>("double", 21).into_future())
        .await
        .unwrap();
    assert_eq!(
        within(conn.call::<Ack>("double", 21).into_future())
            .await
            .unwrap(),
        Ack
    );
    // Errors are still errors, and data-holding types still checked.
    assert!(within(conn.call::<()>("fail", ()).into_future())
        .await
        .unwrap_err()
        .is_remote());
    let e = within(conn.call::<String>("double", 21).into_future())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Decode(_)), "{e}");
}

#[tokio::test]
async fn an_error_reply_without_a_body_says_so() {
    let (conn, mut raw) = client_over_memory(Client::new());
    let call = tokio::spawn(conn.call::<Value>("x", ()).into_future());
    let sent = within(next(&mut raw)).await;
    let key = sent.key.clone().unwrap();
    let mut reply = BytesMut::new();
    Json.encode(
        &Outgoing::new("drs.error")
            .key(Some(&key))
            .body(OutBody::Absent),
        &mut reply,
    )
    .unwrap();
    raw.send(reply.freeze()).await.unwrap();
    let e = within(call).await.unwrap().unwrap_err();
    assert_eq!(e.remote().unwrap().message, "(no message)");
    assert_eq!(e.to_string(), "remote error: (no message)");
    // A body that is neither {"message"} nor a string is shown as JSON.
    let call = tokio::spawn(conn.call::<Value>("y", ()).into_future());
    let key = within(next(&mut raw)).await.key.unwrap();
    raw.send(frame(Some(&key), "drs.exception", json!({"code": 7})))
        .await
        .unwrap();
    let e = within(call).await.unwrap().unwrap_err();
    assert_eq!(e.remote().unwrap().message, r#"{"code":7}"#);
}

/// What a connect hook attached to the connection, a handler reads
/// through its command (`Msg::with_conn_extensions`) as through the
/// connection's handle; what it changes there, the handle sees.
#[tokio::test]
async fn commands_read_and_write_their_connections_extensions() {
    #[derive(Clone, Debug, PartialEq)]
    struct Tenant(&'static str);
    #[derive(Clone, Debug, PartialEq)]
    struct Seen(u32);
    within(async {
        let server = Server::new();
        server.on_connect(|conn: drs_core::Conn| async move {
            conn.insert(Tenant("acme"));
            Ok::<(), String>(())
        });
        server.on("whose", |msg: Msg| async move {
            let tenant = msg.with_conn_extensions(|ext| {
                let seen = ext.get::<Seen>().map_or(0, |s| s.0) + 1;
                ext.insert(Seen(seen));
                ext.get::<Tenant>().cloned()
            });
            let via_handle = msg.conn().get::<Tenant>();
            assert_eq!(tenant, via_handle);
            HandlerResult::Ok(tenant.map(|t| t.0))
        });
        let (listener, dialer) = memory::listener();
        server.listen(listener, Json).unwrap();
        let conn = Client::new().connect(dialer, Json).await.unwrap();
        for _ in 0..2 {
            let tenant: Option<String> = conn.call("whose", ()).await.unwrap();
            assert_eq!(tenant.as_deref(), Some("acme"));
        }
        let server_side = server.connections().pop().unwrap();
        assert_eq!(server_side.get::<Seen>(), Some(Seen(2)));
    })
    .await;
}
