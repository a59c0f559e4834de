//! Programs in another language talk to `demo_server`: Python with the
//! `websockets` package over WebSocket, the standard library over a Unix
//! socket, and the `msgpack` package over TCP next to a JSON client.
//!
//! CI installs the Python packages (`.ci/run`); where they are missing and
//! `CI` is not set, these tests say so and pass without running.

mod common;

use std::process::Command;

use common::{python_has, DemoServer};

fn run_python(script: &str, args: &[&str]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = Command::new("python3")
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

fn socket_path(tag: &str) -> String {
    std::env::temp_dir()
        .join(format!("drs-polyglot-{tag}-{}.sock", std::process::id()))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn python_websockets_client() {
    if !python_has(&["websockets"]) {
        return;
    }
    let server = DemoServer::start(&["--ws", "127.0.0.1:0"]);
    assert_eq!(server.listening[0].0, "ws");
    run_python(
        "ws_client.py",
        &[&format!("ws://{}/socket", server.addr(0))],
    );
}

#[test]
fn python_unix_socket_client() {
    if !python_has(&["socket"]) {
        return;
    }
    let path = socket_path("unix");
    let server = DemoServer::start(&["--ipc", &path]);
    assert_eq!(server.listening[0], ("ipc".to_string(), path.clone()));
    run_python("unix_client.py", &[&path]);
}

#[test]
fn python_streams_credit_and_cancel_over_a_raw_socket() {
    if !python_has(&["socket"]) {
        return;
    }
    let server = DemoServer::start(&["--tcp", "127.0.0.1:0"]);
    run_python("stream_client.py", &[server.addr(0)]);
}

/// Python's `ssl` over TLS TCP, and `websockets` over `wss://`, with a
/// token: a CA and a certificate for `localhost` are made here (no key is
/// committed) and given to `demo_server --tls-cert --tls-key --token`.
#[test]
fn python_tls_and_wss_clients_with_a_token() {
    if !python_has(&["ssl", "websockets"]) {
        return;
    }
    use drs_tls::test_pki::{TestCa, Usage};
    let ca = TestCa::new("drs test CA");
    let (cert_pem, key_pem) = ca.issue("localhost", &["localhost"], Usage::Server, false);
    let dir = std::env::temp_dir().join(format!("drs-polyglot-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (ca_pem, cert_pem, key_pem) = (
        file("ca.pem", ca.pem()),
        file("server.pem", cert_pem),
        file("server.key", key_pem),
    );
    let server = DemoServer::start(&[
        "--tls-cert",
        &cert_pem,
        "--tls-key",
        &key_pem,
        "--token",
        "opensesame",
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "127.0.0.1:0",
    ]);
    assert_eq!(server.listening[0].0, "tls");
    assert_eq!(server.listening[1].0, "wss");
    let port = server.addr(1).rsplit_once(':').unwrap().1;
    let wss = format!("wss://localhost:{port}/socket");
    run_python(
        "tls_client.py",
        &[server.addr(0), &ca_pem, "opensesame", &wss],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn python_msgpack_and_json_clients_share_a_server() {
    if !python_has(&["msgpack"]) {
        return;
    }
    let server = DemoServer::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--protocol",
        "msgpack",
        "--tcp",
        "127.0.0.1:0",
    ]);
    run_python("msgpack_client.py", &[server.addr(1), server.addr(0)]);
}

#[test]
fn every_transport_at_once() {
    let path = socket_path("all");
    let server = DemoServer::start(&[
        "--tcp",
        "127.0.0.1:0",
        "--ws",
        "127.0.0.1:0",
        "--ipc",
        &path,
    ]);
    let kinds: Vec<&str> = server.listening.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["tcp", "ws", "ipc"]);
    assert!(server.addr(1).starts_with("127.0.0.1:"));
    // The WebSocket port serves the browser page to plain HTTP, and the
    // JavaScript client it imports.
    let page = http_get(server.addr(1), "/");
    assert!(
        page.starts_with("HTTP/1.1 200 OK") && page.contains("from \"/drs-client.js\""),
        "{page}"
    );
    let client = http_get(server.addr(1), "/drs-client.js");
    assert!(
        client.starts_with("HTTP/1.1 200 OK")
            && client.contains("Content-Type: text/javascript")
            && client.contains("export async function connect"),
        "{client}"
    );
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn demo_server_refuses_bad_flags() {
    let out = Command::new(common::example_path("demo_server"))
        .args(["--protocol", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown protocol `xml`"));
    let out = Command::new(common::example_path("demo_server"))
        .arg("--ws")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ws needs a value"));
}

/// The real Rembus client (PyPI `rembus`, unmodified) against the demo's
/// Rembus endpoint, beside a drs JSON client (pytest:
/// examples/python/test_rembus.py).
#[test]
fn python_rembus_components() {
    if !python_has(&["rembus", "pytest"]) {
        return;
    }
    let server = DemoServer::start(&["--tcp", "127.0.0.1:0", "--rembus", "127.0.0.1:0"]);
    assert_eq!(server.listening[1].0, "rembus");
    run_pytest(
        "test_rembus.py",
        &[("DRS_TCP", server.addr(0)), ("DRS_REMBUS", server.addr(1))],
    );
}

/// A Cerbas client in Python (PyPI `redis` and `u-msgpack-python`, as
/// Cerbas's driver uses), step by step, against `demo_server --cerbas` on a
/// real redis-server started here (pytest: examples/python/test_cerbas.py).
#[test]
fn python_cerbas_client() {
    if !python_has(&["redis", "umsgpack", "pytest"]) {
        return;
    }
    let Some(redis) = drs_testkit::RedisServer::start_or_skip("python_cerbas_client") else {
        return;
    };
    let url = redis.url(1);
    let server = DemoServer::start(&["--cerbas", &url]);
    let cerbas = url.trim_start_matches("redis://").to_string();
    assert_eq!(server.listening[0], ("cerbas".to_string(), cerbas));
    run_pytest("test_cerbas.py", &[("CERBAS_REDIS_URL", &url)]);
}

/// Runs a pytest file of examples/python with `env`; every test passes.
fn run_pytest(script: &str, env: &[(&str, &str)]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", script])
        .envs(env.iter().copied())
        .current_dir(&dir)
        .output()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed"), "{stdout}");
}
