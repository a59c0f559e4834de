//! A transport of one's own, by URL: everything it needs lives in this
//! file, and one line registers it (`drs::registry().scheme(Toy)`); then
//! `drs::listen` and `drs::connect` take `toy://NAME` as they take
//! `tcp://…`, with any registered protocol.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use drs::prelude::*;
use drs_core::{memory, Protocol, Scheme, SchemeFuture, Url};

const LIMIT: Duration = Duration::from_secs(20);

/// `toy://NAME`: in-memory listeners, found by name.
struct Toy;

fn dialers() -> &'static Mutex<HashMap<String, memory::MemoryDialer>> {
    static DIALERS: OnceLock<Mutex<HashMap<String, memory::MemoryDialer>>> = OnceLock::new();
    DIALERS.get_or_init(Mutex::default)
}

impl Scheme for Toy {
    fn names(&self) -> &'static [&'static str] {
        &["toy"]
    }

    fn dial<'a>(
        &'a self,
        client: Client,
        url: &'a Url,
        protocol: Arc<dyn Protocol>,
    ) -> SchemeFuture<'a, Conn> {
        Box::pin(async move {
            let dialer = dialers().lock().unwrap().get(&url.target).cloned();
            let dialer = dialer.ok_or_else(|| {
                io::Error::new(io::ErrorKind::ConnectionRefused, "no such toy listener")
            })?;
            client.connect(dialer, protocol).await
        })
    }

    fn listen<'a>(
        &'a self,
        server: &'a Server,
        url: &'a Url,
        protocol: Arc<dyn Protocol>,
    ) -> SchemeFuture<'a, String> {
        Box::pin(async move {
            let (listener, dialer) = memory::listener();
            server.listen_arc(listener, protocol)?;
            dialers().lock().unwrap().insert(url.target.clone(), dialer);
            Ok(format!("toy://{}", url.target))
        })
    }
}

#[tokio::test]
async fn a_registered_toy_transport_works_by_url_with_every_protocol() {
    tokio::time::timeout(LIMIT, async {
        // Unknown until registered; the error lists what is known.
        let before = drs::connect("toy://calc").await.unwrap_err().to_string();
        assert!(
            before.contains("unknown scheme `toy` (") && before.contains("tcp"),
            "{before}"
        );

        drs::registry().scheme(Toy);

        let server = Server::new();
        server.on("add", |(a, b): (i64, i64)| async move {
            HandlerResult::Ok(a + b)
        });
        for (name, query) in [("calc", ""), ("calc-mp", "?protocol=msgpack")] {
            let at = drs::listen(&server, &format!("toy://{name}{query}"))
                .await
                .unwrap();
            assert_eq!(at, format!("toy://{name}{query}"));
            let conn = drs::connect(&at).await.unwrap();
            let sum: i64 = conn.call("add", (40, 2)).await.unwrap();
            assert_eq!(sum, 42);
            assert_eq!(
                conn.protocol().name(),
                if query.is_empty() { "json" } else { "msgpack" }
            );
            assert_eq!(conn.info().transport, "memory");
        }
        let missing = drs::connect("toy://nobody").await.unwrap_err().to_string();
        assert!(missing.contains("no such toy listener"), "{missing}");
        assert!(drs::registry().schemes().contains(&"toy"));
    })
    .await
    .expect("within the limit");
}
