//! A server that lets no one in where they don't belong: TLS, token
//! authentication with roles, and jails.
//!
//! ```text
//! cargo run --example secure_server            # serves, runs a client tour against itself, exits
//! cargo run --example secure_server -- --serve # keeps serving (Ctrl-C stops it)
//! ```
//!
//! For the demo it makes its own CA and a certificate for `localhost` at
//! start (written to a temporary directory, so `openssl s_client` or a
//! Python client can trust it); a real server loads PEM files instead:
//! `ServerTls::from_pem_files("server.pem", "server.key")`.
//!
//! Tokens: `reader-token` (role `reader`: `report.*` and `whoami`) and
//! `admin-token` (role `admin`: also `admin.*`). Everything else is
//! outside the server's jail.

use std::{process::ExitCode, time::Duration};

use drs_auth::{Credentials, Identity, Jail, MsgAuth, ServerAuth};
use drs_core::{Client, Error, HandlerResult, Msg, Server};
use drs_protocol_json::Json;
use drs_tls::test_pki::{TestCa, Usage};
use drs_tls::{ClientTls, ServerTls, TlsDialer, TlsListener};
use examples::init_tracing;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> ExitCode {
    // The tour's wrong token is logged as a warning on purpose: keep it quiet.
    init_tracing("error");
    let serve = std::env::args().any(|a| a == "--serve");
    match run(serve).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("secure_server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(serve: bool) -> Result<(), Box<dyn std::error::Error>> {
    // Made on the spot for the demo; a real server loads its PEM files.
    let pki = TestCa::new("secure_server demo CA");
    let ca = pki.pem();
    let (cert, key) = pki.issue("localhost", &["localhost"], Usage::Server, false);
    let dir = std::env::temp_dir().join(format!("drs-secure-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ca.pem"), &ca)?;

    let server = Server::new();
    server.authenticate(|creds: Credentials| async move {
        match creds.token.as_deref() {
            Some("reader-token") => Ok(Identity::new("rita").role("reader")),
            Some("admin-token") => Ok(Identity::new("ada").role("reader").role("admin")),
            Some(_) => Err("unknown token".to_string()),
            None => Err("send drs.auth {\"token\": …}".to_string()),
        }
    });
    server.jail(Jail::parse("whoami, report.*, admin.*")?);
    server.jail_role("reader", Jail::parse("whoami, report.*")?);
    server.jail_role("admin", Jail::parse("admin.*")?);
    server.on("whoami", |msg: Msg| async move {
        let who = msg.identity().expect("authenticated");
        HandlerResult::Ok(json!({"name": who.name, "roles": who.roles}))
    });
    server.on("report.read", || async { HandlerResult::Ok("42 widgets") });
    server.on("admin.reset", |msg: Msg| async move {
        let who = msg.identity().expect("authenticated");
        HandlerResult::Ok(format!("reset by {}", who.name))
    });
    server.on("debug.dump", || async {
        HandlerResult::Ok("should never run")
    });

    let tls = ServerTls::from_pem(cert.as_bytes(), key.as_bytes())?.build()?;
    let addr = server.listen(TlsListener::bind("127.0.0.1:0", tls).await?, Json)?;
    println!(
        "listening tls://{addr} (trust {})",
        dir.join("ca.pem").display()
    );

    if serve {
        tokio::signal::ctrl_c().await?;
    } else {
        tour(&addr, &ca).await?;
    }
    server.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What a client sees: TLS, nothing before drs.auth, roles and jails.
async fn tour(addr: &str, ca: &str) -> Result<(), Box<dyn std::error::Error>> {
    let trust = ClientTls::builder().trust_pem(ca.as_bytes())?.build()?;
    let dial = || TlsDialer::new(addr, trust.clone()).server_name("localhost");

    let reader = Client::new().connect(dial(), Json).await?;
    let theirs = reader.info().peer_certificate.clone();
    println!(
        "connected over TLS; the server's certificate names {:?}",
        theirs.map(|c| c.sans.clone()).unwrap_or_default()
    );
    show(
        "report.read before drs.auth",
        reader.call::<Value>("report.read", ()).await,
        "unauthenticated",
    )?;
    show(
        "drs.auth with a wrong token",
        reader
            .call::<Value>("drs.auth", json!({"token": "guess"}))
            .await,
        "authentication failed: unknown token",
    )?;
    show(
        "drs.auth as a reader",
        reader
            .call::<Value>("drs.auth", json!({"token": "reader-token"}))
            .await,
        "rita",
    )?;
    show(
        "report.read",
        reader.call::<Value>("report.read", ()).await,
        "42 widgets",
    )?;
    show(
        "admin.reset (a reader)",
        reader.call::<Value>("admin.reset", ()).await,
        "action not allowed: admin.reset",
    )?;
    show(
        "debug.dump (outside every jail)",
        reader.call::<Value>("debug.dump", ()).await,
        "action not allowed: debug.dump",
    )?;

    let admin = Client::new().connect(dial(), Json).await?;
    show(
        "drs.auth as an admin",
        admin
            .call::<Value>("drs.auth", json!({"token": "admin-token"}))
            .await,
        "ada",
    )?;
    show(
        "admin.reset (an admin)",
        admin.call::<Value>("admin.reset", ()).await,
        "reset by ada",
    )?;
    show("whoami", admin.call::<Value>("whoami", ()).await, "admin")?;
    Ok(())
}

/// Prints an outcome; fails unless it says `expected`.
fn show(what: &str, result: Result<Value, Error>, expected: &str) -> Result<(), String> {
    let text = match result {
        Ok(v) => v.to_string(),
        Err(e) => e.to_string(),
    };
    println!("{what:34} -> {text}");
    if text.contains(expected) {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected:?}, got {text}"))
    }
}
