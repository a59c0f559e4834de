//! Sessions: reconnects, events, calls between connections, no duplicate
//! execution, names, giving up, closing; over every transport.

mod common;

use std::{future::IntoFuture, time::Duration};

use common::{app, bounded, fast, listen_tcp, next_event, tcp_session, until, until_event, Counts};
use drs_core::{CloseReason, ConnConfig, Error, HandlerResult, Server};
use drs_names::ServerNames;
use drs_protocol_json::Json;
use drs_session::{Session, SessionEvent, WhenDisconnected};
use drs_transport_tcp::TcpDialer;
use serde_json::{json, Value};

/// Closes every connection of `server` from its side.
fn drop_all(server: &Server) {
    for conn in server.connections() {
        conn.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reconnects_keeps_its_handlers_and_reports_events() {
    bounded(async {
        let counts = Counts::default();
        let server = app(&counts);
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let session = Session::builder(TcpDialer::new(addr.clone()), Json)
            .name("alpha")
            .policy(fast())
            .on("shout", |text: String| async move {
                HandlerResult::Ok(text.to_uppercase())
            })
            .connect()
            .await
            .expect("connect");
        let mut events = session.events();
        let first = session.current().expect("connected").id();
        let back: String = session.call("echo", "hi").await.expect("echo");
        assert_eq!(back, "hi");

        // The server restarts on the same address.
        server.shutdown(Duration::ZERO).await;
        let SessionEvent::Disconnected { conn, reason } = next_event(&mut events).await else {
            panic!("expected Disconnected first");
        };
        assert_eq!(conn, first);
        assert!(
            matches!(reason, Some(CloseReason::PeerClosed)),
            "{reason:?}"
        );
        let server = app(&counts);
        listen_tcp(&server, &addr).await;
        let (connected, _dials) =
            until_event(&mut events, |e| matches!(e, SessionEvent::Connected { .. })).await;
        let SessionEvent::Connected { conn, resumed } = connected else {
            unreachable!()
        };
        assert_ne!(conn, first);
        assert!(!resumed);

        // The name was given again, and the handler serves the new connection.
        let shouted: String = server
            .call_named("alpha", "shout", "again")
            .expect("alpha is connected")
            .await
            .expect("the session's handler answers");
        assert_eq!(shouted, "AGAIN");
        let me: Value = session.call("whoami", ()).await.expect("whoami");
        assert_eq!(me["name"], "alpha");
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_on_a_lost_connection_fails_at_once_and_is_never_sent_again() {
    bounded(async {
        let counts = Counts::default();
        let server = app(&counts);
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let session = tcp_session(&addr)
            .config(ConnConfig::default().call_timeout(Duration::from_secs(30)))
            .connect()
            .await
            .expect("connect");
        let mut events = session.events();
        let call = {
            let session = session.clone();
            tokio::spawn(async move { session.call::<Value, _>("hang", ()).await })
        };
        until("the call runs on the server", || counts.hang() == 1).await;
        drop_all(&server);
        let result = call.await.expect("join");
        assert!(matches!(result, Err(Error::Closed)), "{result:?}");
        until_event(&mut events, |e| matches!(e, SessionEvent::Connected { .. })).await;
        // A later call is served; the lost one was not sent again.
        let _: Value = session.call("echo", 1).await.expect("echo");
        assert_eq!(counts.hang(), 1);
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_call_is_sent_again_on_the_next_connection() {
    bounded(async {
        let counts = Counts::default();
        let server = app(&counts);
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let session = tcp_session(&addr)
            .idempotent(["flaky"])
            .config(ConnConfig::default().call_timeout(Duration::from_secs(30)))
            .connect()
            .await
            .expect("connect");
        let call = {
            let session = session.clone();
            tokio::spawn(async move { session.call::<u64, _>("flaky", ()).await })
        };
        until("the first execution runs", || counts.flaky() == 1).await;
        drop_all(&server);
        let n = call
            .await
            .expect("join")
            .expect("answered on the next connection");
        assert_eq!(n, 2);
        assert_eq!(counts.flaky(), 2);

        // At most `max_resends` times: then the loss is the caller's.
        let limited = tcp_session(&addr)
            .idempotent(["hang"])
            .max_resends(1)
            .config(ConnConfig::default().call_timeout(Duration::from_secs(30)))
            .connect()
            .await
            .expect("connect");
        let call = {
            let limited = limited.clone();
            tokio::spawn(async move { limited.call::<Value, _>("hang", ()).await })
        };
        until("the first send runs", || counts.hang() == 1).await;
        drop_all(&server);
        until("the second send runs", || counts.hang() == 2).await;
        drop_all(&server);
        let result = call.await.expect("join");
        assert!(matches!(result, Err(Error::Closed)), "{result:?}");
        assert_eq!(counts.hang(), 2);
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_connections_wait_or_fail_by_configuration() {
    bounded(async {
        let counts = Counts::default();
        let server = app(&counts);
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let waiting = tcp_session(&addr).connect().await.expect("connect");
        let failing = tcp_session(&addr)
            .when_disconnected(WhenDisconnected::Fail)
            .connect()
            .await
            .expect("connect");
        let mut waiting_events = waiting.events();
        let mut failing_events = failing.events();
        server.shutdown(Duration::ZERO).await;
        until_event(&mut waiting_events, |e| {
            matches!(e, SessionEvent::Reconnecting { .. })
        })
        .await;
        until_event(&mut failing_events, |e| {
            matches!(e, SessionEvent::Reconnecting { .. })
        })
        .await;

        // Fail: at once, nothing sent.
        let err = failing.call::<Value, _>("echo", 1).await.unwrap_err();
        assert!(matches!(err, Error::NotConnected), "{err:?}");
        assert!(err.is_unsent());
        assert!(matches!(
            failing.fire("echo", 1).await,
            Err(Error::NotConnected)
        ));

        // Wait: within the call's timeout...
        let err = waiting
            .call::<Value, _>("echo", 1)
            .timeout(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Timeout(d) if d == Duration::from_millis(50)),
            "{err:?}"
        );
        // ... and a waiting call goes out on the next connection.
        let call = {
            let waiting = waiting.clone();
            tokio::spawn(async move {
                waiting
                    .call::<String, _>("echo", "later")
                    .timeout(Duration::from_secs(20))
                    .await
            })
        };
        let server = app(&counts);
        listen_tcp(&server, &addr).await;
        assert_eq!(call.await.expect("join").expect("answered"), "later");
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gives_up_by_attempts_or_deadline() {
    bounded(async {
        // A port nothing listens on.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let first = Session::builder(TcpDialer::new(addr.clone()), Json)
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(first, Error::Io(_)), "{first:?}");

        let session = Session::builder(TcpDialer::new(addr.clone()), Json)
            .policy(fast().max_attempts(Some(3)))
            .start();
        let mut events = session.events();
        let (gave_up, before) =
            until_event(&mut events, |e| matches!(e, SessionEvent::GaveUp { .. })).await;
        let SessionEvent::GaveUp { attempts, error } = gave_up else {
            unreachable!()
        };
        assert_eq!(attempts, 3);
        assert!(!error.is_empty());
        let retries: Vec<u32> = before
            .iter()
            .filter_map(|e| match e {
                SessionEvent::Reconnecting { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .collect();
        // Events sent before the stream was made may be missed.
        assert!(retries.iter().all(|a| *a < 3), "{retries:?}");
        session.stopped().await;
        let err = session.call::<Value, _>("echo", 1).await.unwrap_err();
        assert!(matches!(err, Error::NotConnected), "{err:?}");

        let timed = Session::builder(TcpDialer::new(addr), Json)
            .policy(fast().deadline(Some(Duration::from_millis(200))))
            .start();
        timed.stopped().await;
        assert!(matches!(
            timed.call::<Value, _>("echo", 1).await,
            Err(Error::NotConnected)
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_fails_its_calls_and_stops_dialing() {
    bounded(async {
        let counts = Counts::default();
        let server = app(&counts);
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let session = Session::builder(TcpDialer::new(addr), Json)
            .connect()
            .await
            .expect("connect");
        let mut events = session.events();
        let call = {
            let session = session.clone();
            tokio::spawn(async move { session.call::<Value, _>("hang", ()).await })
        };
        until("the call runs", || counts.hang() == 1).await;
        session.close();
        assert!(matches!(call.await.expect("join"), Err(Error::Closed)));
        until_event(&mut events, |e| matches!(e, SessionEvent::Closed)).await;
        session.stopped().await;
        assert!(matches!(
            session.call::<Value, _>("echo", 1).await,
            Err(Error::Closed)
        ));
        until("the server saw the connection go", || {
            server.connection_count() == 0
        })
        .await;

        // Dropping every handle closes it too.
        let dropped = Session::builder(
            TcpDialer::new(listen_tcp(&server, "127.0.0.1:0").await),
            Json,
        )
        .connect()
        .await
        .expect("connect");
        until("connected", || server.connection_count() == 1).await;
        drop(dropped);
        until("the dropped session's connection closed", || {
            server.connection_count() == 0
        })
        .await;
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_unique_listed_and_reachable() {
    bounded(async {
        let counts = Counts::default();
        let server = app(&counts);
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let alpha = Session::builder(TcpDialer::new(addr.clone()), Json)
            .name("alpha")
            .on("ping.me", || async { HandlerResult::Ok("pong") })
            .connect()
            .await
            .expect("connect");
        assert_eq!(alpha.name(), Some("alpha"));
        let err = Session::builder(TcpDialer::new(addr.clone()), Json)
            .name("alpha")
            .connect()
            .await
            .unwrap_err();
        assert_eq!(
            err.remote().map(|r| r.message.as_str()),
            Some(drs_names::NAME_TAKEN),
            "{err:?}"
        );
        let err = Session::builder(TcpDialer::new(addr.clone()), Json)
            .name("")
            .connect()
            .await
            .unwrap_err();
        assert!(err.is_remote(), "{err:?}");
        let bravo = Session::builder(TcpDialer::new(addr.clone()), Json)
            .name("bravo")
            .connect()
            .await
            .expect("connect");
        let anonymous = Session::builder(TcpDialer::new(addr.clone()), Json)
            .connect()
            .await
            .expect("connect");

        until("three peers", || server.connection_count() == 3).await;
        let mut names: Vec<Option<String>> = server
            .peers()
            .into_iter()
            .map(|p| p.name.map(|n| n.to_string()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![None, Some("alpha".to_string()), Some("bravo".to_string())]
        );
        let pong: String = server
            .call_named("alpha", "ping.me", ())
            .expect("alpha")
            .await
            .expect("answer");
        assert_eq!(pong, "pong");
        server
            .fire_named("bravo", "anything", 1)
            .await
            .expect("fire to bravo");
        assert!(matches!(
            server.call_named::<Value>("charlie", "x", ()),
            Err(Error::NoPeer(n)) if n == "charlie"
        ));
        assert!(matches!(
            server.fire_named("charlie", "x", ()).await,
            Err(Error::NoPeer(_))
        ));

        // A name is freed when its connection goes.
        alpha.close();
        until("alpha's name is free", || server.named("alpha").is_none()).await;
        let again = Session::builder(TcpDialer::new(addr), Json)
            .name("alpha")
            .connect()
            .await
            .expect("the name is free again");
        let me: Value = again.call("whoami", ()).await.expect("whoami");
        assert_eq!(me["name"], "alpha");
        drop((bravo, anonymous));
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

/// `drs.identify` on the wire, as a program in another language sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_over_a_raw_socket() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    bounded(async {
        let server = app(&Counts::default());
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let mut lines = Vec::new();
        for _ in 0..2 {
            let s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            lines.push(BufReader::new(s));
        }
        async fn ask(conn: &mut BufReader<tokio::net::TcpStream>, line: &str) -> Value {
            conn.get_mut()
                .write_all(line.as_bytes())
                .await
                .expect("write");
            let mut reply = String::new();
            conn.read_line(&mut reply).await.expect("read");
            serde_json::from_str::<Value>(&reply).expect("json")
        }
        let ok = ask(
            &mut lines[0],
            "{\"key\":\"1\",\"action\":\"drs.identify\",\"body\":{\"name\":\"edge\"}}\n",
        )
        .await;
        assert_eq!(
            ok,
            json!({"key":"1","action":"drs.response","body":{"resumed":false}})
        );
        let taken = ask(
            &mut lines[1],
            "{\"key\":\"2\",\"action\":\"drs.identify\",\"body\":{\"name\":\"edge\"}}\n",
        )
        .await;
        assert_eq!(taken["action"], "drs.error");
        assert_eq!(taken["body"]["message"], "name taken");
        let bad = ask(
            &mut lines[1],
            "{\"key\":\"3\",\"action\":\"drs.identify\",\"body\":{\"nom\":1}}\n",
        )
        .await;
        assert_eq!(bad["action"], "drs.error");
        // Renaming frees the old name.
        let renamed = ask(
            &mut lines[0],
            "{\"key\":\"4\",\"action\":\"drs.identify\",\"body\":{\"name\":\"edge2\"}}\n",
        )
        .await;
        assert_eq!(renamed["action"], "drs.response");
        let freed = ask(
            &mut lines[1],
            "{\"key\":\"5\",\"action\":\"drs.identify\",\"body\":{\"name\":\"edge\"}}\n",
        )
        .await;
        assert_eq!(freed["action"], "drs.response");
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

/// A session over every transport and protocol: call, lose the
/// connection, call again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_work_over_every_transport_and_protocol() {
    bounded(async {
        let counts = Counts::default();
        let server = app(&counts);
        let tcp = drs_transport_tcp::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let ws = drs_transport_ws::WsListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tcp_mp = drs_transport_tcp::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let path = std::env::temp_dir()
            .join(format!("drs-session-{}.sock", std::process::id()))
            .to_string_lossy()
            .into_owned();
        let ipc = drs_transport_ipc::IpcListener::bind(path.clone()).expect("bind");
        let tcp = server.listen(tcp, Json).expect("listen");
        let ws = server.listen(ws, Json).expect("listen");
        let tcp_mp = server
            .listen(tcp_mp, drs_protocol_msgpack::MsgPack)
            .expect("listen");
        server
            .listen(ipc, drs_protocol_msgpack::MsgPack)
            .expect("listen");

        async fn ride<D: drs_core::Dialer, P: drs_core::Protocol>(
            server: &Server,
            dialer: D,
            protocol: P,
            label: &str,
        ) {
            let session = Session::builder(dialer, protocol)
                .name(label)
                .policy(fast())
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let mut events = session.events();
            let back: String = session.call("echo", label).await.expect(label);
            assert_eq!(back, label);
            server.named(label).expect("named").close();
            until_event(&mut events, |e| matches!(e, SessionEvent::Connected { .. })).await;
            let back: String = session.call("echo", label).await.expect(label);
            assert_eq!(back, label);
            session.close();
        }
        ride(&server, TcpDialer::new(tcp), Json, "tcp+json").await;
        ride(
            &server,
            drs_transport_ws::WsDialer::new(format!("ws://{ws}/")),
            Json,
            "ws+json",
        )
        .await;
        ride(
            &server,
            TcpDialer::new(tcp_mp),
            drs_protocol_msgpack::MsgPack,
            "tcp+msgpack",
        )
        .await;
        ride(
            &server,
            drs_transport_ipc::IpcDialer::new(path),
            drs_protocol_msgpack::MsgPack,
            "ipc+msgpack",
        )
        .await;
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

/// A draining server refuses new calls (they did not run): a session's
/// call waits for the next connection and goes out there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_by_a_server_shutting_down_goes_to_the_next_one() {
    bounded(async {
        let tagged = |tag: &'static str| {
            let server = Server::new();
            server.on("tag", move || async move { HandlerResult::Ok(tag) });
            let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
            let blocked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (r, b) = (release.clone(), blocked.clone());
            server.on("block", move || {
                let r = r.clone();
                b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    r.acquire().await.expect("open").forget();
                    HandlerResult::Ok(())
                }
            });
            (server, release, blocked)
        };
        let (first, release, running) = tagged("first");
        let addr = listen_tcp(&first, "127.0.0.1:0").await;
        let session = tcp_session(&addr)
            .config(ConnConfig::default().call_timeout(Duration::from_secs(30)))
            .connect()
            .await
            .expect("connect");
        let failing = Session::builder(TcpDialer::new(addr.clone()), Json)
            .when_disconnected(WhenDisconnected::Fail)
            .connect()
            .await
            .expect("connect");
        // A running call keeps each connection open through the drain.
        let blocked = tokio::spawn(session.call::<Value, _>("block", ()).into_future());
        let blocked_too = tokio::spawn(failing.call::<Value, _>("block", ()).into_future());
        until("both block", || {
            running.load(std::sync::atomic::Ordering::SeqCst) == 2
        })
        .await;
        let tag: String = session.call("tag", ()).await.expect("tag");
        assert_eq!(tag, "first");
        let shutdown = {
            let first = first.clone();
            tokio::spawn(async move { first.shutdown(Duration::from_secs(30)).await })
        };
        until("the server is draining", || first.is_shutting_down()).await;
        // Refused: with Fail the caller sees it ...
        let refused = loop {
            match failing.call::<String, _>("tag", ()).await {
                Ok(_) => tokio::task::yield_now().await, // not draining yet
                Err(e) => break e,
            }
        };
        assert_eq!(
            refused.remote().map(|r| r.message.as_str()),
            Some(drs_core::SHUTTING_DOWN)
        );
        // ... with Wait the call waits for the next server. Once this
        // connection refuses too (each connection sees the drain on its
        // own), the call's first poll sends it, and a reply to a later
        // frame shows the server has read (and refused) it.
        let conn = session.current().expect("connected");
        while conn.call::<Value>("drs.ping", ()).await.is_ok() {
            tokio::task::yield_now().await;
        }
        let mut waiting = Box::pin(session.call::<String, _>("tag", ()).into_future());
        assert!(futures::poll!(&mut waiting).is_pending());
        let later = conn.call::<Value>("drs.ping", ()).await.unwrap_err();
        assert!(later.is_remote(), "{later:?}");
        let waiting = tokio::spawn(waiting);
        release.add_permits(2);
        blocked
            .await
            .expect("join")
            .expect("the running call finished");
        blocked_too
            .await
            .expect("join")
            .expect("the running call finished");
        shutdown.await.expect("shutdown");
        let (second, _release, _) = tagged("second");
        listen_tcp(&second, &addr).await;
        assert_eq!(waiting.await.expect("join").expect("answered"), "second");
        second.shutdown(Duration::ZERO).await;
    })
    .await;
}
