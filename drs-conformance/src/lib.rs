//! The behaviour suite of docs/PROTOCOL.md §3, written once against the transport and
//! protocol traits and run for every transport × protocol pair.
//!
//! A pair is a [`Pair`]; [`conformance_suite!`] expands to one `#[tokio::test]`
//! per behaviour, each under a timeout.
//!
//! Any transport with a [`Scheme`] runs the suite from
//! its own crate, with no edit here: register the scheme and write one
//! line, `conformance_suite!(mine_json, Pair::new(Net::registered(&REGISTRY,
//! "mine://suite-{n}", "mine"), Proto::Json))` ([`Net::registered`]). The
//! built-in transports have variants of their own, set up with the run's
//! servers and certificates. A protocol is a [`Proto`] variant: the suite
//! writes malformed frames in it by hand.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use drs_core::{
    memory::{self, MemoryDialer},
    Body, Client, Command, Conn, ConnConfig, FrameSpec, FramedIo, HandlerError, HandlerResult,
    Inbound, Msg, Outgoing, Protocol, Registry, Scheme, Server, Transport, Url,
};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;
use drs_testkit::{NatsServer, RedisServer};
use drs_transport_ipc::{IpcDialer, IpcListener};
use drs_transport_nats::{async_nats, NatsDialer, NatsListener};
use drs_transport_redis::{RedisDialer, RedisListener};
use drs_transport_tcp::{TcpDialer, TcpListener};
use drs_transport_ws::{WsConfig, WsDialer, WsListener};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

mod behaviours;
mod pubsub;
mod security;
mod streams;
pub use behaviours::*;
pub use pubsub::*;
pub use security::*;
pub use streams::*;

/// How long any one behaviour may take before it counts as hung.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A transport under test.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Net {
    /// The in-memory transport.
    Memory,
    /// TCP on 127.0.0.1, port 0.
    Tcp,
    /// WebSocket on 127.0.0.1, port 0.
    Ws,
    /// A Unix domain socket (a named pipe on Windows) in the temp directory.
    Ipc,
    /// TLS over TCP on 127.0.0.1 (drs-tls), with a CA and a certificate
    /// for `localhost` made for the run.
    Tls,
    /// WebSocket over TLS (`wss://localhost:port`), with the same
    /// certificates.
    Wss,
    /// A service on a nats-server of the run (127.0.0.1, a free port),
    /// reached through a drs connection over NATS.
    Nats,
    /// A service on a redis-server of the run (127.0.0.1, a free port),
    /// reached through a drs connection over Redis lists.
    Redis,
    /// Any transport a registry knows, by URL: see [`Net::registered`].
    Registered {
        /// Where its scheme is registered.
        registry: &'static Registry,
        /// The URL each test listens at; `{n}` becomes a number unique in
        /// the process.
        listen: &'static str,
        /// Its name in [`ConnInfo`](drs_core::ConnInfo).
        transport: &'static str,
    },
}

impl PartialEq for Net {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Net::Registered {
                    registry: a,
                    listen: la,
                    transport: ta,
                },
                Net::Registered {
                    registry: b,
                    listen: lb,
                    transport: tb,
                },
            ) => std::ptr::eq(*a, *b) && la == lb && ta == tb,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl Eq for Net {}

impl Net {
    /// A transport found in `registry` by the scheme of `listen`: each test
    /// listens at `listen` (`{n}` replaced by a number unique in the
    /// process; port 0 where it has ports), dials the URL the scheme
    /// answers, and opens raw peers there with
    /// [`Scheme::open`]. `transport` is its name in
    /// [`ConnInfo`](drs_core::ConnInfo).
    pub const fn registered(
        registry: &'static Registry,
        listen: &'static str,
        transport: &'static str,
    ) -> Self {
        Net::Registered {
            registry,
            listen,
            transport,
        }
    }

    /// The transport's name in [`ConnInfo`](drs_core::ConnInfo).
    pub fn name(&self) -> &'static str {
        match self {
            Net::Registered { transport, .. } => transport,
            Net::Memory => "memory",
            Net::Tcp => "tcp",
            Net::Ws => "ws",
            Net::Ipc => "ipc",
            Net::Tls => "tls",
            Net::Wss => "wss",
            Net::Nats => "nats",
            Net::Redis => "redis",
        }
    }
}

/// A protocol under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Proto {
    /// DRS v1 JSON.
    Json,
    /// MessagePack.
    MsgPack,
}

impl Proto {
    /// A whole frame with a key and an action whose `version` has the wrong
    /// type: it does not decode, yet its key and action can be read.
    pub fn frame_with_bad_version(&self, key: &str, action: &str) -> Bytes {
        let v = json!({ "key": key, "action": action, "version": "x" });
        match self {
            Proto::Json => Bytes::from(v.to_string()),
            Proto::MsgPack => Bytes::from(rmp_serde::to_vec_named(&v).expect("encode")),
        }
    }

    /// A body whose bytes a re-encoding would change: digits past `f64`'s
    /// precision, a trailing zero, an escape (JSON); a float32 (MessagePack).
    pub fn exact_body(&self) -> Bytes {
        match self {
            Proto::Json => {
                Bytes::from_static(br#"{"n":123456789012345678901234567890,"f":1.50,"s":"\u00e9"}"#)
            }
            // {"f": 1.5 as float32}: serde would widen it to a float64.
            Proto::MsgPack => Bytes::from_static(b"\x81\xa1f\xca\x3f\xc0\x00\x00"),
        }
    }

    /// `value` written as one frame of this protocol, whatever its fields.
    pub fn frame(&self, value: &Value) -> Bytes {
        match self {
            Proto::Json => Bytes::from(value.to_string()),
            Proto::MsgPack => Bytes::from(rmp_serde::to_vec_named(value).expect("encode")),
        }
    }

    /// A frame with a key and no action, as this protocol writes it.
    pub fn frame_without_action(&self, key: &str) -> Bytes {
        match self {
            Proto::Json => Bytes::from(json!({ "key": key }).to_string()),
            Proto::MsgPack => {
                Bytes::from(rmp_serde::to_vec_named(&json!({ "key": key })).expect("encode"))
            }
        }
    }
}

/// One transport × protocol pair.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    /// The transport.
    pub net: Net,
    /// The protocol.
    pub proto: Proto,
}

impl Pair {
    /// The pair `net` × `proto`.
    pub const fn new(net: Net, proto: Proto) -> Self {
        Self { net, proto }
    }

    /// The protocol object.
    pub fn protocol(&self) -> Arc<dyn Protocol> {
        match self.proto {
            Proto::Json => Arc::new(Json),
            Proto::MsgPack => Arc::new(MsgPack),
        }
    }

    /// Starts `server` listening on this pair's transport.
    pub async fn listen(&self, server: &Server) -> Endpoint {
        let protocol = self.protocol();
        let place = match self.net {
            Net::Memory => {
                let (listener, dialer) = memory::listener();
                server
                    .listen_arc(listener, protocol.clone())
                    .expect("listen");
                Place::Memory(dialer)
            }
            Net::Tcp => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                Place::Tcp(
                    server
                        .listen_arc(listener, protocol.clone())
                        .expect("listen"),
                )
            }
            Net::Ws => {
                let listener = WsListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = server
                    .listen_arc(listener, protocol.clone())
                    .expect("listen");
                Place::Ws(format!("ws://{addr}/socket?suite=1"))
            }
            Net::Tls => {
                let listener = drs_tls::TlsListener::bind("127.0.0.1:0", test_pki().0.clone())
                    .await
                    .expect("bind");
                Place::Tls(
                    server
                        .listen_arc(listener, protocol.clone())
                        .expect("listen"),
                )
            }
            Net::Wss => {
                let listener = WsListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind")
                    .tls(test_pki().0.clone());
                let addr = server
                    .listen_arc(listener, protocol.clone())
                    .expect("listen");
                let port = addr.rsplit_once(':').expect("host:port").1;
                Place::Wss(format!("wss://localhost:{port}/socket?suite=1"))
            }
            Net::Ipc => {
                let path = temp_socket_path();
                let listener = IpcListener::bind(path.clone()).expect("bind");
                server
                    .listen_arc(listener, protocol.clone())
                    .expect("listen");
                Place::Ipc(path)
            }
            Net::Nats => {
                let url = nats_server().expect("nats-server (checked by run)").url();
                // A client per test: each test has a runtime of its own.
                let nats = async_nats::connect(url).await.expect("connect to NATS");
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let service = format!("suite-{}", NEXT.fetch_add(1, Ordering::Relaxed));
                let listener = NatsListener::bind(&nats, &service).await.expect("bind");
                server
                    .listen_arc(listener, protocol.clone())
                    .expect("listen");
                Place::Nats(nats, service)
            }
            Net::Redis => {
                let url = redis_server()
                    .expect("redis-server (checked by run)")
                    .url(0);
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let service = format!("suite-{}", NEXT.fetch_add(1, Ordering::Relaxed));
                let listener =
                    RedisListener::bind_with(&url, &service, protocol.clone(), Default::default())
                        .await
                        .expect("bind");
                server
                    .listen_arc(listener, protocol.clone())
                    .expect("listen");
                Place::Redis(url, service)
            }
            Net::Registered {
                registry, listen, ..
            } => {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed).to_string();
                let url = Url::parse(&listen.replace("{n}", &n)).expect("a listening URL");
                let at = scheme_of(registry, &url)
                    .listen(server, &url, protocol.clone())
                    .await
                    .expect("listen");
                Place::Url(Url::parse(&at).expect("the URL answered"), registry)
            }
        };
        Endpoint { place, protocol }
    }
}

#[derive(Debug)]
pub(crate) enum Place {
    Memory(MemoryDialer),
    Tcp(String),
    Ws(String),
    Ipc(String),
    Tls(String),
    Wss(String),
    Nats(async_nats::Client, String),
    Redis(String, String),
    Url(Url, &'static Registry),
}

/// The scheme of `url` in `registry`.
fn scheme_of(registry: &Registry, url: &Url) -> Arc<dyn Scheme> {
    registry
        .find_scheme(&url.scheme)
        .unwrap_or_else(|| panic!("no scheme {} in the registry", url.scheme))
}

/// The redis-server of the run, started on first use (`None`: not
/// installed). It goes with the process.
fn redis_server() -> Option<&'static RedisServer> {
    static SERVER: std::sync::OnceLock<Option<RedisServer>> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| RedisServer::binary().map(|_| RedisServer::start()))
        .as_ref()
}

/// The nats-server of the run, started on first use (`None`: not
/// installed). It goes with the process.
fn nats_server() -> Option<&'static NatsServer> {
    static SERVER: std::sync::OnceLock<Option<NatsServer>> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| NatsServer::binary().map(|_| NatsServer::start(false)))
        .as_ref()
}

/// The TLS settings of the run: a server certificate for `localhost`
/// from a CA made at start, and a client trusting that CA.
fn test_pki() -> &'static (drs_tls::ServerTls, drs_tls::ClientTls) {
    static PKI: std::sync::OnceLock<(drs_tls::ServerTls, drs_tls::ClientTls)> =
        std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let ca = drs_tls::test_pki::TestCa::new("drs suite CA");
        let server = ca.server_tls(&["localhost"]).build().expect("server TLS");
        let client = ca.trusting().build().expect("client TLS");
        (server, client)
    })
}

fn tls_dialer(addr: &str) -> drs_tls::TlsDialer {
    drs_tls::TlsDialer::new(addr, test_pki().1.clone()).server_name("localhost")
}

/// A fresh socket path for this process.
fn temp_socket_path() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("drs-suite-{}-{n}.sock", std::process::id()));
    path.to_string_lossy().into_owned()
}

impl Place {
    /// Dials this place with a client.
    pub(crate) async fn dial(
        &self,
        client: Client,
        protocol: Arc<dyn Protocol>,
    ) -> Result<Conn, drs_core::Error> {
        match self {
            Place::Memory(d) => client.connect(d.clone(), protocol).await,
            Place::Tcp(addr) => client.connect(TcpDialer::new(addr), protocol).await,
            Place::Ws(url) => client.connect(WsDialer::new(url), protocol).await,
            Place::Ipc(path) => client.connect(IpcDialer::new(path), protocol).await,
            Place::Tls(addr) => client.connect(tls_dialer(addr), protocol).await,
            Place::Wss(url) => {
                let dialer = WsDialer::new(url).tls(test_pki().1.clone());
                client.connect(dialer, protocol).await
            }
            Place::Nats(nats, service) => {
                client
                    .connect(NatsDialer::new(nats.clone(), service), protocol)
                    .await
            }
            Place::Redis(url, service) => {
                client
                    .connect(RedisDialer::new(url.clone(), service), protocol)
                    .await
            }
            Place::Url(url, registry) => scheme_of(registry, url).dial(client, url, protocol).await,
        }
    }
}

/// Where a test server listens.
#[derive(Debug)]
pub struct Endpoint {
    pub(crate) place: Place,
    pub(crate) protocol: Arc<dyn Protocol>,
}

impl Endpoint {
    /// Connects a client built by `client`.
    pub async fn connect_with(&self, client: Client) -> Conn {
        self.place
            .dial(client, self.protocol.clone())
            .await
            .expect("connect")
    }

    /// Connects a default client.
    pub async fn connect(&self) -> Conn {
        self.connect_with(Client::new()).await
    }

    /// Opens a raw connection: frames in and out, no drs on this side.
    pub async fn raw(&self) -> RawPeer {
        // The raw side accepts anything, so that the server's limits are what is tested.
        let spec = FrameSpec::new(self.protocol.framing()).max_frame_len(1 << 30);
        let io: Box<dyn Transport> = match &self.place {
            Place::Memory(d) => {
                let (io, _) = drs_core::Dialer::dial(d, spec).await.expect("dial");
                Box::new(io)
            }
            Place::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                Box::new(FramedIo::new(stream, spec))
            }
            Place::Ws(url) => {
                let dialer = WsDialer::new(url).config(WsConfig::default().keepalive(None));
                Box::new(drs_core::Dialer::dial(&dialer, spec).await.expect("dial").0)
            }
            Place::Ipc(path) => Box::new(
                drs_core::Dialer::dial(&IpcDialer::new(path), spec)
                    .await
                    .expect("dial")
                    .0,
            ),
            Place::Tls(addr) => Box::new(
                drs_core::Dialer::dial(&tls_dialer(addr), spec)
                    .await
                    .expect("dial")
                    .0,
            ),
            Place::Wss(url) => {
                let dialer = WsDialer::new(url)
                    .config(WsConfig::default().keepalive(None))
                    .tls(test_pki().1.clone());
                Box::new(drs_core::Dialer::dial(&dialer, spec).await.expect("dial").0)
            }
            Place::Nats(nats, service) => {
                let dialer = NatsDialer::new(nats.clone(), service);
                Box::new(drs_core::Dialer::dial(&dialer, spec).await.expect("dial").0)
            }
            Place::Redis(url, service) => {
                let dialer = RedisDialer::new(url.clone(), service);
                Box::new(drs_core::Dialer::dial(&dialer, spec).await.expect("dial").0)
            }
            Place::Url(url, registry) => {
                scheme_of(registry, url)
                    .open(url, spec)
                    .await
                    .expect("open")
                    .0
            }
        };
        RawPeer {
            io,
            protocol: self.protocol.clone(),
        }
    }
}

/// A peer that speaks frames directly, as a program in another language would.
pub struct RawPeer {
    io: Box<dyn Transport>,
    protocol: Arc<dyn Protocol>,
}

impl std::fmt::Debug for RawPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPeer")
            .field("protocol", &self.protocol.name())
            .finish_non_exhaustive()
    }
}

impl RawPeer {
    /// Sends one frame as is.
    pub async fn send_frame(&mut self, frame: impl Into<Bytes>) {
        self.io.send(frame.into()).await.expect("send frame");
    }

    /// Encodes and sends a command with a JSON-valued body.
    pub async fn send(&mut self, key: Option<&str>, action: &str, body: Value) {
        self.try_send(key, action, body).await.expect("send frame");
    }

    /// Sends a call that opts in to a streamed reply with `credit` items.
    pub async fn send_stream(&mut self, key: &str, action: &str, body: Value, credit: u32) {
        let mut buf = BytesMut::new();
        let out = Outgoing::new(action)
            .key(Some(key))
            .body(drs_core::OutBody::Value(&body))
            .stream(Some(credit));
        self.protocol.encode(&out, &mut buf).expect("encode");
        self.io.send(buf.freeze()).await.expect("send frame");
    }

    /// Like [`send`](Self::send), for when the server may already be gone.
    pub async fn try_send(
        &mut self,
        key: Option<&str>,
        action: &str,
        body: Value,
    ) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        let out = Outgoing::new(action)
            .key(key)
            .body(drs_core::OutBody::Value(&body));
        self.protocol.encode(&out, &mut buf).expect("encode");
        self.io.send(buf.freeze()).await
    }

    /// The next command from the server, or `None` once it closed the connection.
    pub async fn recv(&mut self) -> Option<Command> {
        match self.io.next().await? {
            Ok(Inbound::Frame(frame)) => Some(
                self.protocol
                    .decode(frame)
                    .expect("server sent a valid frame"),
            ),
            Ok(other) => panic!("the server sent no frame: {other:?}"),
            Err(_) => None,
        }
    }

    /// Reads until the server closes the connection; returns what came.
    pub async fn until_closed(&mut self) -> Vec<Command> {
        let mut got = Vec::new();
        while let Some(cmd) = self.recv().await {
            got.push(cmd);
        }
        got
    }
}

/// Runs `behaviour` for `pair` under [`TEST_TIMEOUT`].
pub async fn run<F, Fut>(pair: Pair, behaviour: F)
where
    F: FnOnce(Pair) -> Fut,
    Fut: Future<Output = ()>,
{
    if pair.net == Net::Nats && nats_server().is_none() {
        drs_testkit::skip(&format!("{pair:?}"), "nats-server");
        return;
    }
    if pair.net == Net::Redis && redis_server().is_none() {
        drs_testkit::skip(&format!("{pair:?}"), "redis-server");
        return;
    }
    if tokio::time::timeout(TEST_TIMEOUT, behaviour(pair))
        .await
        .is_err()
    {
        panic!("behaviour did not finish within {TEST_TIMEOUT:?} for {pair:?}");
    }
}

/// Waits until `cond` holds, checking whenever `notify` fires (no sleeps).
pub async fn until(notify: &tokio::sync::Notify, mut cond: impl FnMut() -> bool) {
    loop {
        let notified = notify.notified();
        if cond() {
            return;
        }
        notified.await;
    }
}

/// A server with the handlers the behaviours use.
pub fn test_server(config: ConnConfig) -> Server {
    let server = Server::with_config(config);
    server.on("echo", |body: Body| async move { HandlerResult::Ok(body) });
    server.on("add", |args: Add| async move {
        HandlerResult::Ok(args.a + args.b)
    });
    server.on("sleep", |ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        HandlerResult::Ok(ms)
    });
    server.on("fail", |message: String| async move {
        Err::<(), _>(HandlerError::new(message))
    });
    server.on("kaboom", || async move {
        if true {
            panic!("kaboom");
        }
        HandlerResult::Ok(())
    });
    server.on("peer_name", |msg: Msg| async move {
        let name: String = msg.conn().call("name", ()).await?;
        HandlerResult::Ok(name)
    });
    server
}

/// The arguments of `add`.
#[derive(Debug, Deserialize)]
pub struct Add {
    /// First term.
    pub a: f64,
    /// Second term.
    pub b: f64,
}

/// Counts something across tasks and wakes waiters on each change.
#[derive(Debug, Default)]
pub struct Counter {
    n: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Counter {
    /// Adds one; returns the new value.
    pub fn incr(&self) -> usize {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed.notify_waiters();
        n
    }

    /// Subtracts one.
    pub fn decr(&self) {
        self.n.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// The value.
    pub fn get(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    /// Waits until the value is at least `n`.
    pub async fn reach(&self, n: usize) {
        until(&self.changed, || self.get() >= n).await;
    }
}

/// Expands to one test per behaviour for `pair`, in a module named `name`.
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $pair:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@tests $pair;
                call_round_trip,
                typed_body_errors_name_the_action,
                fire_reaches_handler,
                unknown_action_is_an_error,
                remote_error_and_exception_are_distinct,
                ping_is_built_in,
                per_call_timeout,
                per_connection_timeout,
                pending_calls_fail_at_once_on_disconnect,
                dropped_call_leaves_no_pending_entry,
                late_reply_is_dropped,
                many_calls_multiplexed,
                commands_run_concurrently,
                in_flight_limit_applies_backpressure,
                panic_is_isolated,
                handler_chain_semantics,
                before_and_after_hooks,
                connect_hook_rejects,
                connect_hook_sees_connection_and_can_call,
                broadcast_reaches_every_client,
                server_calls_client,
                graceful_shutdown_lets_handlers_finish,
                shutdown_grace_expires,
                garbage_is_skipped_with_an_error,
                oversize_frame_disconnects_only_that_peer,
                oversize_outgoing_is_refused_locally,
                peer_vanishing_mid_call_harms_no_one,
                reply_for_unknown_key_is_ignored,
                dropping_every_handle_closes,
                slow_consumer_is_disconnected,
                broken_reply_fails_our_call_and_gets_no_reply,
                duplicate_key_in_flight_is_refused,
                handler_deadline_stops_the_handler,
                close_reason_is_reported,
                idle_connection_is_closed,
                admission_deadline_closes_the_connection,
                fires_before_a_reply_arrive_before_it,
                handler_holding_its_own_conn_is_freed,
                connection_limit_refuses_newcomers,
                broadcast_copies_a_received_body_exactly,
                stream_items_arrive_in_order_with_a_final_value,
                stream_credit_bounds_the_producer,
                stalled_stream_holds_its_window_and_blocks_nothing,
                stream_without_opt_in_is_one_array,
                stream_ending_in_an_error,
                streams_go_both_ways,
                over_credit_fails_the_stream_and_cancels_it,
                invalid_stream_field_is_refused,
                stream_idle_timeout_cancels,
                cancel_stops_a_call_and_frees_its_slot,
                dropping_a_call_cancels_it,
                cancel_of_an_unknown_or_finished_key_is_ignored,
                peer_vanishing_mid_stream_cleans_up,
                auth_gates_every_command_until_authenticated,
                auth_deadline_closes_an_unauthenticated_connection,
                failed_auth_is_rate_limited_per_address,
                jails_refuse_actions_outside_them,
                connection_client_and_outbound_jails,
                pubsub_wildcards_and_unsubscribe,
                slow_subscriber_is_isolated,
                retroactive_delivery_after_reconnect,
                unacknowledged_delivery_is_redelivered,
                backlog_overflow_reports_the_missed_count,
                a_name_in_use_is_refused,
                expose_routes_and_relays,
                calls_go_to_the_least_busy_exposer
            );
        }
    };
    (@tests $pair:expr; $($behaviour:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $behaviour() {
            $crate::run($pair, $crate::$behaviour).await;
        }
    )*};
}
