//! One `Routes` value, built once, served by a server, a client, a
//! session, a pool and one connection alike.

mod common;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use common::{bounded, listen_tcp, until};
use drs_core::{layer_fn, Client, HandlerResult, Msg, Next, Routes, Server};
use drs_protocol_json::Json;
use drs_session::{Pool, Session};
use drs_transport_tcp::TcpDialer;

/// `double`, with a layer on it that counts what it wraps.
fn doubling(wrapped: &Arc<AtomicUsize>) -> Routes {
    let count = wrapped.clone();
    Routes::new()
        .on("double", |n: i64| async move { HandlerResult::Ok(2 * n) })
        .layer_for(
            "double",
            layer_fn(move |msg: Msg, next: Next| {
                count.fetch_add(1, Ordering::SeqCst);
                next.run(msg)
            }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_routes_value_serves_every_kind_of_endpoint() {
    bounded(async {
        let wrapped = Arc::new(AtomicUsize::new(0));
        let routes = doubling(&wrapped);
        let server = Server::new();
        server.routes(routes.clone());
        let addr = listen_tcp(&server, "127.0.0.1:0").await;

        let session = Session::builder(TcpDialer::new(addr.clone()), Json)
            .routes(routes.clone())
            .connect()
            .await
            .expect("session");
        let pool = Pool::builder(TcpDialer::new(addr.clone()), Json)
            .size(2)
            .routes(routes.clone())
            .connect()
            .await
            .expect("pool");
        let client = Client::new()
            .routes(routes.clone())
            .connect(TcpDialer::new(addr.clone()), Json)
            .await
            .expect("client");
        let bare = Client::new()
            .connect(TcpDialer::new(addr.clone()), Json)
            .await
            .expect("bare client");
        bare.routes(routes.clone());

        // The server serves them...
        let v: i64 = session.call("double", 21).await.unwrap();
        assert_eq!(v, 42);
        let v: i64 = pool.call("double", 5).await.unwrap();
        assert_eq!(v, 10);
        assert_eq!(wrapped.load(Ordering::SeqCst), 2);

        // ...and every connection it has serves them back: the session's,
        // the pool's two, the client's and the bare one's own.
        until("five connections", || server.connection_count() == 5).await;
        for conn in server.connections() {
            let v: i64 = conn.call("double", 3).await.unwrap();
            assert_eq!(v, 6);
        }
        assert_eq!(wrapped.load(Ordering::SeqCst), 7);
        assert!(routes.handles("double"));
        assert_eq!(routes.actions(), ["double"]);
        drop(client);
    })
    .await;
}
