//! One demo, two names: `demo_server` and `drs serve --demo` take the same
//! `--listen URL`s and print the same `listening URL` lines.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
};

use common::{example_path, READ_TIMEOUT};

/// The `drs` binary, built if a filtered test run did not.
fn drs_path() -> PathBuf {
    let examples = example_path("demo_server");
    let path = examples
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(format!("drs{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "drsrpc-cli"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building drs failed");
    }
    path
}

/// Kills the process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args`, and returns its first `n` `listening` lines with
/// every port replaced by `PORT`.
fn listening(program: PathBuf, args: &[&str], n: usize) -> (Killed, Vec<String>) {
    let mut child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let stdout = child.stdout.take().expect("stdout");
    let child = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("listening ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    let lines = (0..n)
        .map(|_| {
            let line = rx.recv_timeout(READ_TIMEOUT).expect("a listening line");
            let (head, port) = line.rsplit_once(':').expect("HOST:PORT");
            let (digits, rest) = port.split_at(port.find('?').unwrap_or(port.len()));
            assert!(digits.parse::<u16>().is_ok(), "{line}");
            format!("{head}:PORT{rest}")
        })
        .collect();
    (child, lines)
}

#[test]
fn demo_server_and_drs_serve_demo_take_and_print_the_same_urls() {
    let args = [
        "--listen",
        "tcp://127.0.0.1:0",
        "--listen",
        "ws://127.0.0.1:0?protocol=msgpack",
    ];
    let (_demo, from_demo) = listening(example_path("demo_server"), &args, 2);
    let mut serve_args = vec!["serve", "--demo"];
    serve_args.extend(args);
    let (_serve, from_serve) = listening(drs_path(), &serve_args, 2);
    assert_eq!(
        from_demo,
        [
            "listening tcp://127.0.0.1:PORT",
            "listening ws://127.0.0.1:PORT?protocol=msgpack"
        ]
    );
    assert_eq!(from_demo, from_serve);
}

/// A `--listen` URL demo_server cannot serve says why, and names what it
/// can.
#[test]
fn a_bad_listen_url_is_refused_with_what_is_known() {
    for (url, wanted) in [
        (
            "gopher://127.0.0.1:0",
            "unknown scheme `gopher` (tcp, ws, tls, wss, ipc, nats, redis)",
        ),
        (
            "tcp://127.0.0.1:0?protocol=xml",
            "unknown protocol `xml` (json or msgpack)",
        ),
        (
            "tls://127.0.0.1:0",
            "needs --tls-cert and --tls-key before it",
        ),
        ("nats://127.0.0.1:4222", "nats://HOST:PORT/SERVICE"),
    ] {
        let out = Command::new(example_path("demo_server"))
            .args(["--listen", url])
            .output()
            .expect("run demo_server");
        assert!(!out.status.success(), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(wanted), "{url}: {err}");
    }
}
