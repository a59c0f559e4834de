//! `wss://`: WebSocket over TLS, with certificates made at test time.

use std::time::Duration;

use drs_core::{Client, ConnConfig, HandlerResult, Msg, Server};
use drs_protocol_json::Json;
use drs_tls::test_pki::{TestCa, Usage};
use drs_tls::ServerTls;
use drs_transport_ws::{WsDialer, WsListener};
use serde_json::{json, Value};

struct Ca(TestCa);

impl Ca {
    fn new(name: &str) -> Self {
        Self(TestCa::new(name))
    }

    fn issue(&self, cn: &str, names: &[&str], client: bool) -> (String, String) {
        self.issue_valid(cn, names, client, true)
    }

    fn issue_valid(&self, cn: &str, names: &[&str], client: bool, valid: bool) -> (String, String) {
        let usage = if client { Usage::Client } else { Usage::Server };
        self.0.issue(cn, names, usage, !valid)
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn trusting(&self) -> drs_tls::ClientTlsBuilder {
        self.0.trusting()
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("within 20 s")
}

fn quick() -> Client {
    Client::new().config(ConnConfig::default().handshake_timeout(Duration::from_secs(2)))
}

async fn serve(ca: &Ca, mutual: bool) -> (Server, u16) {
    serve_as(ca, mutual, &["localhost"], true).await
}

async fn serve_as(ca: &Ca, mutual: bool, names: &[&str], valid: bool) -> (Server, u16) {
    let (cert, key) = ca.issue_valid("localhost", names, false, valid);
    let mut tls = ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    if mutual {
        tls = tls.require_client_cert(ca.pem().as_bytes()).unwrap();
    }
    let server =
        Server::with_config(ConnConfig::default().handshake_timeout(Duration::from_secs(2)));
    server.on("whoami", |msg: Msg| async move {
        let info = msg.conn().info().clone();
        HandlerResult::Ok(json!({
            "transport": info.transport,
            "cn": info.peer_certificate.and_then(|c| c.common_name.clone()),
        }))
    });
    let listener = WsListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .tls(tls.build().unwrap());
    let addr = server.listen(listener, Json).unwrap();
    let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    (server, port)
}

#[tokio::test]
async fn wss_with_a_client_certificate() {
    within(async {
        let ca = Ca::new("wss CA");
        let (server, port) = serve(&ca, true).await;
        let (cert, key) = ca.issue("carol", &[], true);
        let tls = ca
            .trusting()
            .client_cert_pem(cert.as_bytes(), key.as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let conn = quick()
            .connect(
                WsDialer::new(format!("wss://localhost:{port}/socket")).tls(tls),
                Json,
            )
            .await
            .expect("connect");
        let me: Value = conn.call("whoami", ()).await.expect("whoami");
        assert_eq!(me, json!({"transport": "wss", "cn": "carol"}));
        assert_eq!(conn.info().transport, "wss");
        assert!(conn.info().peer_certificate.is_some());
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test]
async fn wss_failures_are_clear_and_bounded() {
    within(async {
        let ca = Ca::new("wss CA");
        let other = Ca::new("other CA");
        let (server, port) = serve(&ca, false).await;
        let url = format!("wss://localhost:{port}/socket");

        let err = quick()
            .connect(
                WsDialer::new(&url).tls(other.trusting().build().unwrap()),
                Json,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");

        let err = quick()
            .connect(WsDialer::new(&url), Json)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("wss:// needs TLS settings"),
            "{err}"
        );

        // Plain ws:// to a wss:// listener: the server's TLS handshake
        // fails on the HTTP request; the client's upgrade fails.
        let err = quick()
            .connect(WsDialer::new(format!("ws://localhost:{port}/socket")), Json)
            .await
            .unwrap_err();
        assert!(!err.to_string().is_empty());

        let err = quick()
            .connect(WsDialer::new("http://localhost/"), Json)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not a ws:// or wss:// URL"),
            "{err}"
        );
        assert_eq!(server.connection_count(), 0);
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}

#[tokio::test]
async fn wss_rejects_an_expired_certificate_a_wrong_name_and_a_missing_client_certificate() {
    within(async {
        let ca = Ca::new("wss CA");
        for (case, names, valid, says) in [
            ("expired", &["localhost"][..], false, "certificate expired"),
            (
                "wrong name",
                &["other.example"][..],
                true,
                "not valid for name",
            ),
        ] {
            let (server, port) = serve_as(&ca, false, names, valid).await;
            let err = quick()
                .connect(
                    WsDialer::new(format!("wss://localhost:{port}/socket"))
                        .tls(ca.trusting().build().unwrap()),
                    Json,
                )
                .await
                .unwrap_err();
            assert!(err.to_string().contains(says), "{case}: {err}");
            assert_eq!(server.connection_count(), 0, "{case}");
            server.shutdown(Duration::ZERO).await;
        }

        // Mutual TLS without a client certificate: never admitted.
        let (server, port) = serve(&ca, true).await;
        let result = quick()
            .connect(
                WsDialer::new(format!("wss://localhost:{port}/socket"))
                    .tls(ca.trusting().build().unwrap()),
                Json,
            )
            .await;
        if let Ok(conn) = result {
            let err = conn.call::<Value>("whoami", ()).await.unwrap_err();
            assert!(err.is_closed(), "{err:?}");
        }
        assert_eq!(server.connection_count(), 0);
        server.shutdown(Duration::ZERO).await;
    })
    .await;
}
