//! TLS over TCP with certificates made at test time (rcgen; no private key
//! is committed): calls, the peer certificate's identity, every rejection.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use drs_auth::{CredentialSource, Credentials, Identity, MsgAuth, ServerAuth};
use drs_core::{Client, Conn, ConnConfig, Error, HandlerResult, Msg, Server};
use drs_protocol_json::Json;
use drs_tls::test_pki::{TestCa, Usage};
use drs_tls::{ClientTls, ServerTls, TlsDialer, TlsListener};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("the test finished in time")
}

/// A CA made for one test, with the helpers these tests use.
struct Ca(TestCa);

impl Ca {
    fn new(name: &str) -> Self {
        Self(TestCa::new(name))
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn issue(&self, cn: &str, names: &[&str], client: bool, expired: bool) -> (String, String) {
        let usage = if client { Usage::Client } else { Usage::Server };
        self.0.issue(cn, names, usage, expired)
    }

    fn server_tls(&self, names: &[&str], expired: bool) -> drs_tls::ServerTlsBuilder {
        let (cert, key) = self.issue("test server", names, false, expired);
        ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()
    }

    fn trusting(&self) -> drs_tls::ClientTlsBuilder {
        self.0.trusting()
    }
}

/// A server over TLS with `whoami` → what the connection knows of its
/// peer's certificate and identity; counts `whoami` runs.
async fn serve(tls: ServerTls) -> (Server, String, Arc<AtomicUsize>) {
    let server =
        Server::with_config(ConnConfig::default().handshake_timeout(Duration::from_secs(2)));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    server.on("whoami", move |msg: Msg| {
        r.fetch_add(1, Ordering::SeqCst);
        let cert = msg.conn().info().peer_certificate.clone();
        let identity = msg.identity().map(|i| i.name.clone());
        async move {
            HandlerResult::Ok(json!({
                "transport": "tls",
                "cn": cert.as_ref().and_then(|c| c.common_name.clone()),
                "sans": cert.as_ref().map(|c| c.sans.clone()),
                "identity": identity,
            }))
        }
    });
    let listener = TlsListener::bind("127.0.0.1:0", tls).await.unwrap();
    let addr = server.listen(listener, Json).unwrap();
    (server, addr, ran)
}

fn short_handshake() -> Client {
    Client::new().config(ConnConfig::default().handshake_timeout(Duration::from_secs(2)))
}

async fn dial(addr: &str, tls: ClientTls, name: &str) -> Result<Conn, Error> {
    short_handshake()
        .connect(TlsDialer::new(addr, tls).server_name(name), Json)
        .await
}

#[tokio::test]
async fn calls_go_over_tls_and_each_side_sees_the_others_certificate() {
    within(async {
        let ca = Ca::new("test CA");
        let tls = ca
            .server_tls(&["localhost", "127.0.0.1"], false)
            .require_client_cert(ca.pem().as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let (server, addr, ran) = serve(tls).await;
        let hooked = Arc::new(std::sync::Mutex::new(None));
        let h = hooked.clone();
        server.on_connect(move |conn: Conn| {
            *h.lock().unwrap() = conn
                .info()
                .peer_certificate
                .as_ref()
                .map(|c| c.subject.clone());
            async { Ok::<(), String>(()) }
        });
        let (cert, key) = ca.issue("alice", &["alice.example"], true, false);
        let client_tls = ca
            .trusting()
            .client_cert_pem(cert.as_bytes(), key.as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let conn = dial(&addr, client_tls.clone(), "localhost")
            .await
            .expect("connect");
        let me: Value = conn.call("whoami", ()).await.expect("whoami");
        assert_eq!(me["cn"], "alice");
        assert_eq!(me["sans"], json!(["alice.example"]));
        assert!(hooked
            .lock()
            .unwrap()
            .as_deref()
            .unwrap_or("")
            .contains("CN=alice"));
        let theirs = conn
            .info()
            .peer_certificate
            .clone()
            .expect("the server's certificate");
        assert_eq!(theirs.sans, ["localhost", "127.0.0.1"]);
        assert_eq!(conn.info().transport, "tls");
        assert_eq!(ran.load(Ordering::SeqCst), 1);

        // By IP address too, and `tls://` addresses.
        let by_ip = short_handshake()
            .connect(TlsDialer::new(format!("tls://{addr}"), client_tls), Json)
            .await
            .expect("the certificate names 127.0.0.1");
        let _: Value = by_ip.call("whoami", ()).await.expect("whoami");
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_can_authenticate() {
    within(async {
        let ca = Ca::new("test CA");
        let tls = ca
            .server_tls(&["localhost"], false)
            .require_client_cert(ca.pem().as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let (server, addr, _) = serve(tls).await;
        server.authenticate(|creds: Credentials| async move {
            match (creds.source, creds.info.peer_certificate) {
                (CredentialSource::Certificate, Some(cert)) => {
                    Ok(Identity::new(cert.common_name.clone().unwrap_or_default()))
                }
                _ => Err("a client certificate is required".to_string()),
            }
        });
        let (cert, key) = ca.issue("bob", &[], true, false);
        let tls = ca
            .trusting()
            .client_cert_pem(cert.as_bytes(), key.as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let conn = dial(&addr, tls, "localhost").await.expect("connect");
        let me: Value = conn.call("whoami", ()).await.expect("no drs.auth needed");
        assert_eq!(me["identity"], "bob");
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

/// The client refuses the server: each case fails the dial with the
/// reason, and the server admits nothing and runs no handler.
#[tokio::test]
async fn the_client_rejects_a_wrong_ca_an_expired_certificate_and_a_wrong_name() {
    within(async {
        let ca = Ca::new("test CA");
        let other = Ca::new("another CA");
        let cases = [
            (
                "wrong CA",
                ca.server_tls(&["localhost"], false),
                other.trusting(),
                "localhost",
                "UnknownIssuer",
            ),
            (
                "expired",
                ca.server_tls(&["localhost"], true),
                ca.trusting(),
                "localhost",
                "certificate expired",
            ),
            (
                "wrong name",
                ca.server_tls(&["other.example"], false),
                ca.trusting(),
                "localhost",
                "not valid for name",
            ),
        ];
        for (case, server_tls, client_tls, name, says) in cases {
            let (server, addr, ran) = serve(server_tls.build().unwrap()).await;
            let err = dial(&addr, client_tls.build().unwrap(), name)
                .await
                .unwrap_err();
            assert!(err.to_string().contains(says), "{case}: {err}");
            assert_eq!(server.connection_count(), 0, "{case}");
            assert_eq!(ran.load(Ordering::SeqCst), 0, "{case}");
            server.shutdown(Duration::ZERO).await;
        }
    })
    .await;
}

/// Mutual TLS: a client without a certificate, or with one from another
/// CA, is refused: its dial or its first call fails, and it is never
/// admitted.
#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    within(async {
        let ca = Ca::new("test CA");
        let other = Ca::new("another CA");
        let tls = ca
            .server_tls(&["localhost"], false)
            .require_client_cert(ca.pem().as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let (server, addr, ran) = serve(tls).await;
        let (cert, key) = other.issue("mallory", &[], true, false);
        let clients = [
            ca.trusting().build().unwrap(),
            ca.trusting()
                .client_cert_pem(cert.as_bytes(), key.as_bytes())
                .unwrap()
                .build()
                .unwrap(),
        ];
        for tls in clients {
            // With TLS 1.3 the client may finish its side of the handshake
            // before the server refuses: then the first call fails.
            if let Ok(conn) = dial(&addr, tls, "localhost").await {
                let err = conn.call::<Value>("whoami", ()).await.unwrap_err();
                assert!(err.is_closed(), "{err:?}");
            }
        }
        assert_eq!(server.connection_count(), 0);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

/// Plaintext to a TLS listener, and TLS to a plaintext one: a clean,
/// bounded failure on both sides.
#[tokio::test]
async fn plaintext_and_tls_do_not_mix() {
    within(async {
        let ca = Ca::new("test CA");
        let (server, addr, ran) =
            serve(ca.server_tls(&["localhost"], false).build().unwrap()).await;
        // A drs client speaking plain JSON lines: the server's handshake
        // fails on its first bytes and it closes; the call fails.
        let plain = short_handshake()
            .connect(drs_transport_tcp::TcpDialer::new(&addr), Json)
            .await
            .expect("TCP connects");
        let err = plain.call::<Value>("whoami", ()).await.unwrap_err();
        assert!(err.is_closed(), "{err:?}");
        // A peer that sends nothing is dropped at the handshake timeout.
        let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut buf = Vec::new();
        use tokio::io::AsyncReadExt;
        let n = silent.read_to_end(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(server.connection_count(), 0);
        assert_eq!(ran.load(Ordering::SeqCst), 0);

        // TLS to a plaintext server: the dial fails within its handshake
        // timeout.
        let plain_server = Server::new();
        let plain_addr = plain_server
            .listen(
                drs_transport_tcp::TcpListener::bind("127.0.0.1:0")
                    .await
                    .unwrap(),
                Json,
            )
            .unwrap();
        let err = dial(&plain_addr, ca.trusting().build().unwrap(), "localhost")
            .await
            .unwrap_err();
        assert!(err.is_timeout() || matches!(err, Error::Io(_)), "{err:?}");
        server.shutdown(Duration::ZERO).await;
        plain_server.shutdown(Duration::ZERO).await;
    })
    .await;
}
