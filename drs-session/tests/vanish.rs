//! A client vanishes with 100 calls in flight: the server stops their
//! handlers within the close linger, forgets the connection, and gives
//! the memory back. Alone in its binary, so the RSS it reads is its own.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{bounded, listen_tcp, until};
use drs_core::{ConnConfig, HandlerResult, Server};
use tokio::io::AsyncWriteExt;

/// Counts running handlers; a handler's guard leaves the count when its
/// future is dropped (stopped) or ends.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

const HELD: usize = 512 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_leaves_no_handler_no_state_and_no_memory() {
    bounded(async {
        let linger = Duration::from_millis(500);
        let server = Server::with_config(ConnConfig::default().close_linger(linger));
        let running = Arc::new(AtomicUsize::new(0));
        let r = running.clone();
        // Each call holds half a MiB (touched, so it is resident) and
        // waits forever.
        server.on("hold", move || {
            r.fetch_add(1, Ordering::SeqCst);
            let guard = Running(r.clone());
            async move {
                let held = vec![7u8; HELD];
                std::future::pending::<()>().await;
                drop((guard, held));
                HandlerResult::Ok(())
            }
        });
        let addr = listen_tcp(&server, "127.0.0.1:0").await;
        let baseline = rss_bytes();

        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let mut batch = String::new();
        for key in 0..100 {
            batch.push_str(&format!("{{\"key\":\"{key}\",\"action\":\"hold\"}}\n"));
        }
        s.write_all(batch.as_bytes()).await.expect("write");
        until("100 handlers run", || running.load(Ordering::SeqCst) == 100).await;
        let peak = rss_bytes();
        let conn = server.connections().pop().expect("the connection");
        assert_eq!(conn.pending_calls(), 0);

        drop(s);
        let gone = Instant::now();
        until("every handler stopped", || {
            running.load(Ordering::SeqCst) == 0
        })
        .await;
        let stopped_in = gone.elapsed();
        until("the connection is forgotten", || {
            server.connection_count() == 0
        })
        .await;
        assert!(conn.is_closed());
        assert!(
            stopped_in < linger + Duration::from_secs(2),
            "handlers ran {stopped_in:?} after the client left"
        );

        if let (Some(base), Some(peak)) = (baseline, peak) {
            let after = rss_bytes().expect("rss");
            let held = 100 * HELD;
            eprintln!(
                "RSS: baseline {} KiB, with 100 calls {} KiB, after {} KiB",
                base / 1024,
                peak / 1024,
                after / 1024
            );
            assert!(
                peak >= base + held / 2,
                "the handlers' memory was not measured"
            );
            assert!(
                after < base + held / 5,
                "RSS stayed {} KiB above the baseline",
                (after - base) / 1024
            );
        } else {
            eprintln!("SKIP RSS check: /proc/self/status is not readable here");
        }
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}
