//! Authentication and jails (docs/PROTOCOL.md §2 `auth`, `not allowed`), for every
//! pair: each refusal reaches the peer as a clear error and no handler.

use drs_auth::{
    ClientAuth, ConfigAuth, ConnAuth, Credentials, Identity, Jail, MsgAuth, ServerAuth,
    NOT_ALLOWED, UNAUTHENTICATED,
};
use drs_core::Error;

use super::{behaviours::record_close_reasons, *};

/// What the test handlers ran, counted.
#[derive(Debug, Default)]
pub struct Ran {
    /// `secret` handlers run.
    pub secret: Counter,
}

/// A server whose authenticator takes the token `good` (identity `ada`,
/// role `admin`) and `reader` (identity `rita`, role `reader`), with a
/// counted `secret` action and `whoami` → the caller's identity.
fn guarded_server(config: ConnConfig) -> (Server, Arc<Ran>) {
    let server = test_server(config);
    let ran = Arc::new(Ran::default());
    server.authenticate(|creds: Credentials| async move {
        match creds.token.as_deref() {
            Some("good") => Ok(Identity::new("ada")
                .role("admin")
                .attribute("tenant", "acme")),
            Some("reader") => Ok(Identity::new("rita").role("reader")),
            Some(_) => Err("bad token".to_string()),
            None => Err("no token".to_string()),
        }
    });
    let r = ran.clone();
    server.on("secret", move || {
        r.secret.incr();
        async { HandlerResult::Ok("the secret") }
    });
    server.on("whoami", |msg: Msg| async move {
        let who = msg.identity().expect("authenticated");
        HandlerResult::Ok(json!({
            "name": who.name,
            "roles": who.roles,
            "tenant": who.attributes.get("tenant"),
        }))
    });
    (server, ran)
}

fn message(cmd: &Command) -> String {
    let body: Value = cmd.body.deserialize().expect("a body");
    body["message"].as_str().unwrap_or_default().to_owned()
}

/// Sends a call on `raw` and returns its reply.
async fn ask(raw: &mut RawPeer, key: &str, action: &str, body: Value) -> Command {
    raw.send(Some(key), action, body).await;
    let reply = raw.recv().await.expect("a reply");
    assert_eq!(reply.key.as_deref(), Some(key), "{reply:?}");
    reply
}

/// Until a connection authenticates only `drs.auth` and `drs.ping` are
/// served; a bad token is refused with its reason; the identity then
/// reaches every handler; a second `drs.auth` is refused.
pub async fn auth_gates_every_command_until_authenticated(pair: Pair) {
    let (server, ran) = guarded_server(ConnConfig::default());
    let mut raw = pair.listen(&server).await.raw().await;
    for (key, action) in [("1", "secret"), ("2", "no.such.action"), ("3", "whoami")] {
        let refused = ask(&mut raw, key, action, Value::Null).await;
        assert_eq!(refused.action, "drs.error");
        assert_eq!(message(&refused), UNAUTHENTICATED);
    }
    let pong = ask(&mut raw, "4", "drs.ping", Value::Null).await;
    assert_eq!(pong.action, "drs.response");
    let bad = ask(&mut raw, "5", "drs.auth", json!({"token": "wrong"})).await;
    assert_eq!(
        (bad.action.as_str(), message(&bad).as_str()),
        ("drs.error", "authentication failed: bad token")
    );
    let none = ask(&mut raw, "6", "drs.auth", json!("not a map")).await;
    assert_eq!(message(&none), "authentication failed: no token");
    assert_eq!(ran.secret.get(), 0, "no handler ran before authentication");

    let ok = ask(&mut raw, "7", "drs.auth", json!({"token": "good"})).await;
    assert_eq!(ok.action, "drs.response", "{ok:?}");
    let body: Value = ok.body.deserialize().unwrap();
    assert_eq!(body, json!({"name": "ada", "roles": ["admin"]}));
    let me = ask(&mut raw, "8", "whoami", Value::Null).await;
    let body: Value = me.body.deserialize().unwrap();
    assert_eq!(
        body,
        json!({"name": "ada", "roles": ["admin"], "tenant": "acme"})
    );
    let secret = ask(&mut raw, "9", "secret", Value::Null).await;
    assert_eq!(secret.action, "drs.response");
    assert_eq!(ran.secret.get(), 1);
    let again = ask(&mut raw, "10", "drs.auth", json!({"token": "reader"})).await;
    assert_eq!(message(&again), "already authenticated");
    let conn = server.connections().pop().expect("the connection");
    assert_eq!(
        conn.identity().map(|i| i.name.clone()).as_deref(),
        Some("ada")
    );
}

/// A connection that does not authenticate within the admission deadline
/// is told so and closed.
pub async fn auth_deadline_closes_an_unauthenticated_connection(pair: Pair) {
    let (server, ran) =
        guarded_server(ConnConfig::default().admission_timeout(Duration::from_millis(100)));
    let (reasons, gone) = record_close_reasons(&server);
    let mut raw = pair.listen(&server).await.raw().await;
    let refused = ask(&mut raw, "1", "secret", Value::Null).await;
    assert_eq!(message(&refused), UNAUTHENTICATED);
    let rest = raw.until_closed().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].key, None);
    assert_eq!(message(&rest[0]), "authentication deadline exceeded");
    gone.reach(1).await;
    assert_eq!(*reasons.lock().unwrap(), [Some("unauthenticated")]);
    assert_eq!(ran.secret.get(), 0);
}

/// Failed attempts are counted per peer address: past the limit, that
/// address's attempts are refused, even with a good token, on any of its
/// connections. (Transports without an IP address are not limited.)
pub async fn failed_auth_is_rate_limited_per_address(pair: Pair) {
    let (server, _) = guarded_server(ConnConfig::default());
    server.auth_failure_limit(2, Duration::from_secs(60));
    let endpoint = pair.listen(&server).await;
    let mut raw = endpoint.raw().await;
    for key in ["1", "2"] {
        let bad = ask(&mut raw, key, "drs.auth", json!({"token": "wrong"})).await;
        assert_eq!(message(&bad), "authentication failed: bad token");
    }
    // Limited where the server sees the peer's IP address.
    let limited = server.connections().iter().any(|c| {
        let addr = c.info().peer_addr.clone().unwrap_or_default();
        addr.parse::<std::net::SocketAddr>().is_ok() || addr.parse::<std::net::IpAddr>().is_ok()
    });
    let mut other = endpoint.raw().await;
    let third = ask(&mut other, "3", "drs.auth", json!({"token": "good"})).await;
    if limited {
        assert_eq!(
            message(&third),
            "too many failed authentication attempts; try again later"
        );
    } else {
        assert_eq!(third.action, "drs.response", "no address, no limit");
    }
}

/// A server jail refuses what is outside it, unknown actions included,
/// before any handler; role jails narrow an identity to the union of its
/// roles' jails.
pub async fn jails_refuse_actions_outside_them(pair: Pair) {
    let (server, ran) = guarded_server(ConnConfig::default());
    server.jail(Jail::new(["echo", "whoami", "secret", "billing.*"]).unwrap());
    server.jail_role("reader", Jail::new(["whoami", "echo"]).unwrap());
    server.on("billing.pay", || async { HandlerResult::Ok("paid") });
    server.on("admin.drop", || async { HandlerResult::Ok("dropped") });
    let endpoint = pair.listen(&server).await;

    let mut admin = endpoint.raw().await;
    ask(&mut admin, "0", "drs.auth", json!({"token": "good"})).await;
    for (key, action) in [("1", "admin.drop"), ("2", "no.such")] {
        let refused = ask(&mut admin, key, action, Value::Null).await;
        assert_eq!(refused.action, "drs.error");
        assert_eq!(message(&refused), format!("{NOT_ALLOWED}{action}"));
    }
    let paid = ask(&mut admin, "3", "billing.pay", Value::Null).await;
    assert_eq!(paid.action, "drs.response");
    ask(&mut admin, "4", "secret", Value::Null).await;
    assert_eq!(ran.secret.get(), 1);

    let mut reader = endpoint.raw().await;
    ask(&mut reader, "0", "drs.auth", json!({"token": "reader"})).await;
    let refused = ask(&mut reader, "1", "secret", Value::Null).await;
    assert_eq!(message(&refused), format!("{NOT_ALLOWED}secret"));
    let refused = ask(&mut reader, "2", "billing.pay", Value::Null).await;
    assert_eq!(message(&refused), format!("{NOT_ALLOWED}billing.pay"));
    let me = ask(&mut reader, "3", "whoami", Value::Null).await;
    assert_eq!(me.action, "drs.response");
    assert_eq!(
        ran.secret.get(),
        1,
        "the reader's secret reached no handler"
    );
}

/// A connection's own jail (set in a connect hook), a client's jail on
/// what the server may call on it, and an outbound jail on what a server
/// may call on its clients (refused locally, never sent).
pub async fn connection_client_and_outbound_jails(pair: Pair) {
    let server = test_server(
        ConnConfig::default().outbound_jail(Some(Jail::new(["allowed", "secret.*"]).unwrap())),
    );
    server.on_connect(|conn: Conn| async move {
        conn.jail(Jail::new(["echo"]).unwrap());
        Ok::<(), String>(())
    });
    let endpoint = pair.listen(&server).await;
    let ran = Arc::new(Ran::default());
    let r = ran.clone();
    let client = Client::new()
        .jail(Jail::new(["allowed"]).unwrap())
        .on("allowed", || async { HandlerResult::Ok("yes") })
        .on("secret.file", move || {
            r.secret.incr();
            async { HandlerResult::Ok("leaked") }
        });
    let conn = endpoint.connect_with(client).await;
    let echoed: String = conn.call("echo", "hi").await.expect("echo is in the jail");
    assert_eq!(echoed, "hi");
    let err = conn
        .call::<Value>("add", json!({"a": 1, "b": 2}))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.message.clone()),
        Some(format!("{NOT_ALLOWED}add"))
    );

    let to_client = server.connections().pop().expect("the connection");
    let yes: String = to_client.call("allowed", ()).await.expect("allowed");
    assert_eq!(yes, "yes");
    // The server may send it, the client's jail refuses it.
    let err = to_client
        .call::<Value>("secret.file", ())
        .await
        .unwrap_err();
    assert_eq!(
        err.remote().map(|r| r.message.clone()),
        Some(format!("{NOT_ALLOWED}secret.file"))
    );
    // Outside the server's outbound jail: refused here, never sent.
    let err = to_client.call::<Value>("other", ()).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotAllowed(a) if a == "other"),
        "{err:?}"
    );
    assert!(err.is_unsent());
    assert!(matches!(
        to_client.fire("other", ()).await,
        Err(Error::NotAllowed(_))
    ));
    assert_eq!(ran.secret.get(), 0);
}
