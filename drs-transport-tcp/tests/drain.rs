//! A draining connection keeps reading (replies to its own calls must
//! still arrive); when its peer then half-closes, it must stop reading
//! rather than poll the ended stream again and again. On one thread such
//! a spin starves everything else: the shutdown below would never finish.

use std::time::Duration;

use drs_core::{HandlerResult, Server};
use drs_protocol_json::Json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[test]
fn a_draining_connection_whose_peer_half_closes_stops_reading() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let server = Server::new();
            let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
            let r = release.clone();
            server.on("block", move || {
                let r = r.clone();
                async move {
                    r.acquire().await.expect("open").forget();
                    HandlerResult::Ok("finished")
                }
            });
            let listener = drs_transport_tcp::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = server.listen(listener, Json).expect("listen");
            let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (rd, mut wr) = s.into_split();
            let mut lines = BufReader::new(rd).lines();
            wr.write_all(
                b"{\"key\":\"1\",\"action\":\"block\"}\n{\"key\":\"p\",\"action\":\"drs.ping\"}\n",
            )
            .await
            .expect("write");
            let pong = lines.next_line().await.expect("read").expect("a line");
            assert!(pong.contains("\"p\""), "{pong}");
            let mut shutdown = Box::pin(server.shutdown(Duration::from_secs(60)));
            assert!(futures::poll!(&mut shutdown).is_pending());
            // The drain has reached the connection: new commands are refused.
            wr.write_all(b"{\"key\":\"2\",\"action\":\"drs.ping\"}\n")
                .await
                .expect("write");
            let refused = lines.next_line().await.expect("read").expect("a line");
            assert!(refused.contains("drs.error"), "{refused}");
            // Half-close: we send nothing more but still read.
            wr.shutdown().await.expect("half-close");
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
            release.add_permits(1);
            let last = lines.next_line().await.expect("read").expect("a line");
            assert!(last.contains("finished"), "{last}");
            shutdown.await;
        });
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the shutdown finished (the driver did not spin on a closed peer)");
}
