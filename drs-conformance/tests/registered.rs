//! The suite over transports found by URL in a registry, as a transport
//! crate of someone else's would run it: nothing in drs-conformance names
//! them.
//!
//! - `toy://NAME`: a transport defined here, on the in-memory transport;
//!   registering it is the one line in [`registry`].
//! - `tcp://`: the TCP transport, through its scheme rather than the
//!   suite's own set-up, so that the two paths agree.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex, OnceLock},
};

use drs_conformance::{conformance_suite, Net, Pair, Proto};
use drs_core::{
    memory::{self, MemoryDialer},
    Client, Conn, ConnInfo, Error, FrameSpec, Protocol, Registry, Scheme, SchemeFuture, Server,
    Transport, Url,
};

/// `toy://NAME`: in-memory listeners, found by name.
#[derive(Default)]
struct Toy {
    listeners: Mutex<HashMap<String, MemoryDialer>>,
}

impl Toy {
    fn dialer(&self, url: &Url) -> Result<MemoryDialer, Error> {
        let listeners = self.listeners.lock().unwrap();
        listeners.get(&url.target).cloned().ok_or_else(|| {
            Error::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("no toy listener {}", url.target),
            ))
        })
    }
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
        Box::pin(async move { client.connect(self.dialer(url)?, protocol).await })
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
            self.listeners
                .lock()
                .unwrap()
                .insert(url.target.clone(), dialer);
            Ok(format!("toy://{}", url.target))
        })
    }

    fn open<'a>(
        &'a self,
        url: &'a Url,
        spec: FrameSpec,
    ) -> SchemeFuture<'a, (Box<dyn Transport>, ConnInfo)> {
        match self.dialer(url) {
            Ok(dialer) => drs_core::open_dialed(dialer, spec),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Registry::new();
        registry.scheme(Toy::default());
        registry.scheme(drs_transport_tcp::TcpScheme);
        registry
    })
}

const TOY: fn() -> Net = || Net::registered(registry(), "toy://suite-{n}", "memory");
const TCP: fn() -> Net = || Net::registered(registry(), "tcp://127.0.0.1:0", "tcp");

conformance_suite!(toy_json, Pair::new(TOY(), Proto::Json));
conformance_suite!(toy_msgpack, Pair::new(TOY(), Proto::MsgPack));
conformance_suite!(tcp_by_url_json, Pair::new(TCP(), Proto::Json));

/// A scheme that cannot open raw I/O says so.
#[tokio::test]
async fn a_scheme_without_raw_io_says_so() {
    struct Plain;
    impl Scheme for Plain {
        fn names(&self) -> &'static [&'static str] {
            &["plain"]
        }
        fn dial<'a>(
            &'a self,
            _: Client,
            _: &'a Url,
            _: Arc<dyn Protocol>,
        ) -> SchemeFuture<'a, Conn> {
            Box::pin(async { Err(Error::NotConnected) })
        }
        fn listen<'a>(
            &'a self,
            _: &'a Server,
            _: &'a Url,
            _: Arc<dyn Protocol>,
        ) -> SchemeFuture<'a, String> {
            Box::pin(async { Err(Error::NotConnected) })
        }
    }
    let url = Url::parse("plain://x").unwrap();
    let spec = FrameSpec::new(drs_core::Framing::Lines);
    let err = Plain.open(&url, spec).await.err().expect("no raw I/O");
    assert!(
        err.to_string()
            .contains("plain:// does not open raw framed I/O"),
        "{err}"
    );
}
