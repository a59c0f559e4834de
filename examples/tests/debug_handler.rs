//! `#[drs::debug_handler]` and the `Handler` diagnostics: a handler that
//! fits compiles and serves; one that does not is reported at the
//! argument or return type at fault, in drs's words. The failing cases
//! are compiled by `cargo check` in a crate of their own (the compiler's
//! output is read for our messages, not matched whole: its layout changes
//! between Rust releases).

use std::{path::Path, process::Command, time::Duration};

use drs::prelude::*;

#[derive(serde::Deserialize)]
struct Add {
    a: f64,
    b: f64,
}

#[drs::debug_handler]
async fn add(args: Add) -> HandlerResult<f64> {
    Ok(args.a + args.b)
}

#[drs::debug_handler]
async fn who(conn: Conn, msg: Msg) -> String {
    format!("{} from {}", msg.action(), conn.info().transport)
}

#[tokio::test]
async fn a_checked_handler_serves_as_any_other() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let server = Server::new();
        server.on("add", add).on("who", who);
        let (listener, dialer) = drs::memory::listener();
        server.listen(listener, Json).unwrap();
        let conn = Client::new().connect(dialer, Json).await.unwrap();
        let sum: f64 = conn
            .call("add", serde_json::json!({"a": 1, "b": 2}))
            .await
            .unwrap();
        assert_eq!(sum, 3.0);
        let said: String = conn.call("who", ()).await.unwrap();
        assert_eq!(said, "who from memory");
    })
    .await
    .unwrap();
}

const BAD: &str = r#"
use drs::{HandlerResult, Msg, Server};

pub struct NotABody;

#[drs::debug_handler]
pub async fn bad_argument(_x: NotABody) -> HandlerResult<()> {
    Ok(())
}

pub struct NotSerialize;

#[drs::debug_handler]
pub async fn bad_return() -> NotSerialize {
    NotSerialize
}

#[drs::debug_handler]
pub async fn not_send(_m: Msg) -> HandlerResult<()> {
    let held = std::rc::Rc::new(1);
    std::future::ready(()).await;
    drop(held);
    Ok(())
}

pub async fn unchecked(_x: NotABody) -> HandlerResult<()> {
    Ok(())
}

pub fn register(server: &Server) {
    server.on("unchecked", unchecked);
}
"#;

#[test]
fn handlers_that_do_not_fit_are_reported_at_the_fault() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let dir = root.join("target").join("debug-handler-check");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let facade = root.join("drs");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"debug-handler-check\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\ndrs = {{ package = \"drsrpc\", path = {:?} }}\n\n[workspace]\n",
            facade.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), BAD).unwrap();
    // The workspace's versions, not newer ones: nothing is fetched.
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["check", "--offline", "--quiet", "--color", "never"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo check runs");
    assert!(!out.status.success(), "the bad handlers must not compile");
    let said = String::from_utf8_lossy(&out.stderr);
    for (wanted, at) in [
        ("`NotABody` cannot be a handler argument", "_x: NotABody"),
        (
            "`NotSerialize` cannot be what a handler returns",
            "-> NotSerialize",
        ),
        (
            "this is not a drs handler",
            "server.on(\"unchecked\", unchecked)",
        ),
    ] {
        let found = said
            .find(wanted)
            .unwrap_or_else(|| panic!("{wanted:?} not said:\n{said}"));
        // The source line the error points at follows its message.
        let next = &said[found..];
        let next = &next[..next.find("\nerror").unwrap_or(next.len())];
        assert!(
            next.contains(at),
            "{wanted:?} does not point at {at:?}:\n{next}"
        );
    }
    assert!(
        said.contains("#[drs::debug_handler]` on the function"),
        "{said}"
    );
    assert!(
        said.contains("future cannot be sent between threads safely"),
        "{said}"
    );
    assert!(said.contains("not_send"), "{said}");
}
