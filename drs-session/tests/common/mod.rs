//! Servers and helpers shared by the session tests.

#![allow(dead_code, unreachable_pub)]

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use drs_core::{Body, Conn, HandlerResult, Server};
use drs_names::{ConnName, Names};
use drs_protocol_json::Json;
use drs_session::{ReconnectPolicy, Session, SessionBuilder, SessionEvent};
use drs_transport_tcp::TcpDialer;
use futures::{Stream, StreamExt};

/// Every test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Runs `f` under [`LIMIT`].
pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the test finished within its time limit")
}

/// Reconnects quickly: 10 ms doubling to 50 ms.
pub fn fast() -> ReconnectPolicy {
    ReconnectPolicy::default()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50))
}

/// A session over TCP + JSON to `addr` that reconnects [`fast`].
pub fn tcp_session(addr: &str) -> SessionBuilder<TcpDialer> {
    Session::builder(TcpDialer::new(addr), Json).policy(fast())
}

/// Counts executions per action of the test app.
#[derive(Default, Clone)]
pub struct Counts {
    pub hang: Arc<AtomicU64>,
    pub flaky: Arc<AtomicU64>,
}

impl Counts {
    pub fn hang(&self) -> u64 {
        self.hang.load(Ordering::SeqCst)
    }
    pub fn flaky(&self) -> u64 {
        self.flaky.load(Ordering::SeqCst)
    }
}

/// A server with the test actions:
/// - `echo` → its body;
/// - `hang` → counts, then never answers;
/// - `flaky` → counts; the first execution never answers, later ones
///   answer with the count;
/// - `whoami` → the caller's name (from `drs.identify`) and connection id.
pub fn app(counts: &Counts) -> Server {
    let server = Server::new();
    // Sessions name themselves (drs.identify).
    Names::install(&server);
    server.on("echo", |body: Body| async move { HandlerResult::Ok(body) });
    let hang = counts.hang.clone();
    server.on("hang", move || {
        hang.fetch_add(1, Ordering::SeqCst);
        async {
            std::future::pending::<()>().await;
            HandlerResult::Ok(())
        }
    });
    let flaky = counts.flaky.clone();
    server.on("flaky", move || {
        let n = flaky.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                std::future::pending::<()>().await;
            }
            HandlerResult::Ok(n)
        }
    });
    server.on("whoami", |conn: Conn| async move {
        HandlerResult::Ok(serde_json::json!({
            "name": conn.name().map(|n| n.to_string()),
            "conn": conn.id(),
        }))
    });
    server
}

/// Serves `server` over TCP + JSON on `addr` ("127.0.0.1:0" for a free
/// port); returns the address.
pub async fn listen_tcp(server: &Server, addr: &str) -> String {
    // The port of a server just shut down may take a moment to be free.
    let mut tries = 0;
    let listener = loop {
        match drs_transport_tcp::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    };
    server
        .listen(listener, drs_protocol_json::Json)
        .expect("listen")
}

/// The next event, within 10 s.
pub async fn next_event<S: Stream<Item = SessionEvent> + Unpin>(events: &mut S) -> SessionEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("the event stream is open")
}

/// Events until one matches `pred` (returned); the others are returned too.
pub async fn until_event<S, F>(events: &mut S, pred: F) -> (SessionEvent, Vec<SessionEvent>)
where
    S: Stream<Item = SessionEvent> + Unpin,
    F: Fn(&SessionEvent) -> bool,
{
    let mut seen = Vec::new();
    loop {
        let e = next_event(events).await;
        if pred(&e) {
            return (e, seen);
        }
        seen.push(e);
    }
}

/// Waits until `cond` holds, checking after every yield (no sleeps for
/// ordering: the condition is what is waited for), within 10 s.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}
