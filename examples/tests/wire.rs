//! Drives `demo_server` as a separate process through plain TCP sockets,
//! writing and reading raw JSON lines, as a program in another language would.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpStream},
    process::{Command, Stdio},
};

use common::{example_path, DemoServer, READ_TIMEOUT};

use serde_json::{json, Value};

fn start() -> DemoServer {
    DemoServer::start(&["--tcp", "127.0.0.1:0"])
}

fn client(server: &DemoServer) -> Peer {
    connect(server.addr(0))
}

fn connect(addr: &str) -> Peer {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    Peer {
        reader: BufReader::new(stream.try_clone().unwrap()),
        stream,
    }
}

struct Peer {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Peer {
    fn send(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).unwrap();
        self.stream.write_all(b"\n").unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read a line");
        assert!(n > 0, "connection closed");
        assert!(line.ends_with('\n'), "a frame is one line: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
    }

    fn call(&mut self, line: &str) -> Value {
        self.send(line);
        self.recv()
    }

    fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to end");
        assert!(
            rest.is_empty(),
            "unexpected: {}",
            String::from_utf8_lossy(&rest)
        );
    }
}

#[test]
fn a_session_of_raw_json_lines() {
    let server = start();
    let mut c = client(&server);
    let pong = c.call(r#"{"key":"p","action":"drs.ping"}"#);
    assert_eq!(pong["key"], "p");
    assert!(pong["body"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(
        c.call(r#"{"key":"1","action":"echo","body":{"x":[1,"two",null]}}"#),
        json!({"key":"1","action":"drs.response","body":{"x":[1,"two",null]}})
    );
    assert_eq!(
        c.call(r#"{"key":"2","action":"add","body":{"a":1.5,"b":2}}"#),
        json!({"key":"2","action":"drs.response","body":3.5})
    );
    assert_eq!(
        c.call(r#"{"key":"3","action":"fail","body":{"message":"nope"}}"#),
        json!({"key":"3","action":"drs.error","body":{"message":"nope"}})
    );
    let boom = c.call(r#"{"key":"4","action":"kaboom"}"#);
    assert_eq!(boom["action"], "drs.exception");
    assert!(boom["body"]["message"].as_str().unwrap().contains("kaboom"));
    assert_eq!(
        c.call(r#"{"key":"5","action":"missing"}"#),
        json!({"key":"5","action":"drs.error","body":{"message":"No handlers for missing"}})
    );
    let bad = c.call("this is not json");
    assert_eq!(bad["action"], "drs.error");
    assert!(bad.get("key").is_none());
    let no_action = c.call(r#"{"key":"6","body":1}"#);
    assert_eq!(
        (no_action["key"].as_str(), no_action["action"].as_str()),
        (Some("6"), Some("drs.error"))
    );
    let bad_body = c.call(r#"{"key":"7","action":"add","body":{"a":1}}"#);
    assert_eq!(bad_body["action"], "drs.error");
    assert!(bad_body["body"]["message"]
        .as_str()
        .unwrap()
        .contains("add"));
    // CRLF and blank lines are tolerated; a fire gets no reply.
    c.send("\r\n{\"action\":\"echo\",\"body\":\"fired\"}\r\n\r");
    assert_eq!(
        c.call("{\"key\":\"8\",\"action\":\"echo\",\"body\":8}\r"),
        json!({"key":"8","action":"drs.response","body":8})
    );
    // Commands run concurrently: the quick echo overtakes the sleep.
    c.send(r#"{"key":"slow","action":"sleep","body":{"ms":300}}"#);
    c.send(r#"{"key":"fast","action":"echo","body":"first"}"#);
    assert_eq!(c.recv()["key"], "fast");
    assert_eq!(
        c.recv(),
        json!({"key":"slow","action":"drs.response","body":300})
    );
}

/// `--name` and the `session` action: who the server is, who we are.
#[test]
fn session_names_the_caller_and_the_server() {
    let server = DemoServer::start(&["--tcp", "127.0.0.1:0", "--name", "demo-7"]);
    let mut alpha = client(&server);
    let anonymous = alpha.call(r#"{"key":"1","action":"session"}"#);
    assert_eq!(anonymous["body"]["name"], Value::Null);
    assert_eq!(anonymous["body"]["server"], "demo-7");
    assert!(anonymous["body"]["conn"].is_u64());
    let ok = alpha.call(r#"{"key":"2","action":"drs.identify","body":{"name":"alpha"}}"#);
    assert_eq!(ok["body"], json!({"resumed": false}));
    let named = alpha.call(r#"{"key":"3","action":"session"}"#);
    assert_eq!(named["body"]["name"], "alpha");
    assert_eq!(named["body"]["conn"], anonymous["body"]["conn"]);

    let mut other = client(&server);
    let taken = other.call(r#"{"key":"1","action":"drs.identify","body":{"name":"alpha"}}"#);
    assert_eq!(taken["action"], "drs.error");
    assert_eq!(taken["body"]["message"], "name taken");

    // Without --name the server is HOSTNAME:PID.
    let unnamed = start();
    let mut c = client(&unnamed);
    let who = c.call(r#"{"key":"1","action":"session"}"#);
    let server_name = who["body"]["server"].as_str().expect("a name");
    assert!(
        server_name.ends_with(&format!(":{}", unnamed.child.id())),
        "{server_name}"
    );
}

/// `--token` guards every listener but those marked `--public`, `--jail`
/// every connection.
#[test]
fn token_and_jail_flags() {
    let server = DemoServer::start(&[
        "--jail",
        "echo,add,session",
        "--public",
        "--tcp",
        "127.0.0.1:0",
        "--token",
        "s3cret",
        "--tcp",
        "127.0.0.1:0",
        "--admission-timeout",
        "0.3",
    ]);
    let open_addr = server.addr(0).to_string();
    let guarded_addr = server.addr(1).to_string();

    // The open listener: no token needed, but the jail holds.
    let mut open = connect(&open_addr);
    let echoed = open.call(r#"{"key":"1","action":"echo","body":"hi"}"#);
    assert_eq!(echoed["body"], "hi");
    let refused = open.call(r#"{"key":"2","action":"kaboom"}"#);
    assert_eq!(refused["body"]["message"], "action not allowed: kaboom");

    // The guarded one: nothing before drs.auth, a bad token is refused.
    let mut guarded = connect(&guarded_addr);
    let refused = guarded.call(r#"{"key":"1","action":"echo","body":"hi"}"#);
    assert_eq!(refused["body"]["message"], "unauthenticated");
    let bad = guarded.call(r#"{"key":"2","action":"drs.auth","body":{"token":"nope"}}"#);
    assert_eq!(bad["body"]["message"], "authentication failed: bad token");
    let ok = guarded.call(r#"{"key":"3","action":"drs.auth","body":{"token":"s3cret"}}"#);
    assert_eq!(ok["action"], "drs.response");
    let echoed = guarded.call(r#"{"key":"4","action":"echo","body":"hi"}"#);
    assert_eq!(echoed["body"], "hi");
    let refused = guarded.call(r#"{"key":"5","action":"sleep","body":{"ms":1}}"#);
    assert_eq!(refused["body"]["message"], "action not allowed: sleep");

    // One that never authenticates is told so and closed.
    let mut idle = connect(&guarded_addr);
    let notice = idle.recv();
    assert_eq!(
        notice["body"]["message"],
        "authentication deadline exceeded"
    );
    idle.expect_eof();
}

/// A peer that never authenticated cannot name itself, so it cannot
/// resume another's name nor take its stored messages; nor can the jail
/// be passed by a built-in action. A token applies to every listener.
#[test]
fn names_are_served_behind_the_token_and_the_jail() {
    let server = DemoServer::start(&[
        "--token",
        "T",
        "--tcp",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0",
    ]);
    let auth = r#"{"key":"a","action":"drs.auth","body":{"token":"T"}}"#;
    // A holder names itself billing, subscribes retroactively, leaves.
    let mut owner = connect(server.addr(0));
    assert_eq!(owner.call(auth)["action"], "drs.response");
    owner.call(r#"{"key":"1","action":"drs.identify","body":{"name":"billing"}}"#);
    let sub = owner.call(
        r#"{"key":"2","action":"drs.subscribe","body":{"topic":"pay.>","retroactive":true}}"#,
    );
    assert_eq!(sub["action"], "drs.response", "{sub}");
    // A raw connection that never authenticated: only drs.ping and
    // drs.auth are served; the second listener requires the token too.
    for addr in [server.addr(0), server.addr(1)] {
        let mut raw = connect(addr);
        let refused = raw.call(r#"{"key":"1","action":"drs.identify","body":{"name":"billing"}}"#);
        assert_eq!(
            refused,
            json!({"key":"1","action":"drs.error","body":{"message":"unauthenticated"}})
        );
        let pong = raw.call(r#"{"key":"p","action":"drs.ping"}"#);
        assert_eq!(pong["action"], "drs.response");
    }
    // The name is still the owner's connection's.
    let session = owner.call(r#"{"key":"3","action":"session"}"#);
    assert_eq!(session["action"], "drs.response", "{session}");

    let jailed = DemoServer::start(&["--jail", "echo", "--tcp", "127.0.0.1:0"]);
    let mut peer = client(&jailed);
    for action in ["drs.identify", "drs.subscribe", "drs.expose", "drs.stats"] {
        let line = json!({"key": "1", "action": action, "body": {"name": "n", "topic": "t", "action": "a"}});
        let refused = peer.call(&line.to_string());
        assert_eq!(
            refused["body"]["message"],
            format!("action not allowed: {action}"),
            "{refused}"
        );
    }
}

#[test]
fn the_server_calls_the_raw_client_back() {
    let server = start();
    let mut c = client(&server);
    c.send(r#"{"key":"1","action":"ask_back","body":{"action":"whoami","body":{"q":1},"timeout_ms":5000}}"#);
    let asked = c.recv();
    assert_eq!(asked["action"], "whoami");
    assert_eq!(asked["body"], json!({"q":1}));
    let key = asked["key"].as_str().expect("a call has a key").to_string();
    c.send(&json!({"key": key, "action": "drs.response", "body": "a raw socket"}).to_string());
    assert_eq!(
        c.recv(),
        json!({"key":"1","action":"drs.response","body":"a raw socket"})
    );

    c.send(r#"{"key":"2","action":"ask_back","body":{"action":"whoami"}}"#);
    let asked = c.recv();
    c.send(
        &json!({"key": asked["key"], "action": "drs.error", "body": {"message": "not telling"}})
            .to_string(),
    );
    assert_eq!(
        c.recv(),
        json!({"key":"2","action":"drs.error","body":{"message":"not telling"}})
    );

    c.send(r#"{"key":"3","action":"ask_back","body":{"action":"whoami","timeout_ms":100}}"#);
    let ignored = c.recv();
    // The server's call timed out: it tells us to stop working on it.
    assert_eq!(
        c.recv(),
        json!({"key": ignored["key"], "action": "drs.cancel"})
    );
    let timed_out = c.recv();
    assert_eq!(
        (timed_out["key"].as_str(), timed_out["action"].as_str()),
        (Some("3"), Some("drs.exception"))
    );
    assert!(timed_out["body"]["message"]
        .as_str()
        .unwrap()
        .contains("timed out"));
}

#[test]
fn shout_reaches_every_raw_client() {
    let server = start();
    let mut a = client(&server);
    let mut b = client(&server);
    // Both are admitted once they have been answered.
    a.call(r#"{"key":"p","action":"drs.ping"}"#);
    b.call(r#"{"key":"p","action":"drs.ping"}"#);
    a.send(r#"{"key":"s","action":"shout","body":{"hello":"all"}}"#);
    assert_eq!(b.recv(), json!({"action":"shout","body":{"hello":"all"}}));
    assert_eq!(a.recv(), json!({"action":"shout","body":{"hello":"all"}}));
    assert_eq!(
        a.recv(),
        json!({"key":"s","action":"drs.response","body":2})
    );
}

#[test]
fn half_closed_client_still_gets_its_replies() {
    let server = start();
    let mut c = client(&server);
    c.send(r#"{"key":"1","action":"sleep","body":{"ms":100}}"#);
    c.send(r#"{"key":"2","action":"echo","body":2}"#);
    c.stream.shutdown(Shutdown::Write).unwrap();
    let mut keys = vec![c.recv()["key"].clone(), c.recv()["key"].clone()];
    keys.sort_by_key(|k| k.to_string());
    assert_eq!(keys, [json!("1"), json!("2")]);
    c.expect_eof();
}

#[test]
fn bad_peers_do_not_disturb_others() {
    let server = start();
    let mut good = client(&server);
    good.call(r#"{"key":"p","action":"drs.ping"}"#);

    // Vanishes in the middle of a call.
    let mut gone = client(&server);
    gone.send(r#"{"key":"1","action":"sleep","body":{"ms":200}}"#);
    drop(gone);

    // Sends a line over the 8 MiB limit: told why, then disconnected.
    let mut big = client(&server);
    let line = format!(
        r#"{{"key":"1","action":"echo","body":"{}"}}"#,
        "x".repeat(9 << 20)
    );
    // The server may close while we are still writing; that is fine.
    let _ = big.stream.write_all(line.as_bytes());
    let notice = big.recv();
    assert_eq!(notice["action"], "drs.error");
    assert!(notice["body"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum frame size"));

    assert_eq!(
        good.call(r#"{"key":"still","action":"echo","body":"here"}"#),
        json!({"key":"still","action":"drs.response","body":"here"})
    );
}

#[test]
fn ctrl_c_shuts_down_gracefully() {
    let mut server = start();
    let mut c = client(&server);
    c.call(r#"{"key":"p","action":"drs.ping"}"#);
    c.send(r#"{"key":"1","action":"sleep","body":{"ms":300}}"#);
    c.send(r#"{"key":"e","action":"echo","body":1}"#);
    assert_eq!(c.recv()["key"], "e"); // the sleep is now running
    server.interrupt();
    assert_eq!(
        c.recv(),
        json!({"key":"1","action":"drs.response","body":300})
    );
    c.expect_eof();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_arguments_are_refused() {
    let out = Command::new(example_path("demo_server"))
        .args(["--tcp", "not-an-address"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on tcp not-an-address"));
    let out = Command::new(example_path("demo_server"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    for (args, says) in [
        (&["--jail", "a*"][..], "--jail: bad action pattern"),
        (&["--jail", "a,,b"][..], "--jail: an empty action pattern"),
        (&["--token", ""][..], "--token: the token is empty"),
        (
            &["--token", "a", "--token", "b"][..],
            "--token: given twice",
        ),
        (
            &["--tcp", "127.0.0.1:0", "--public"][..],
            "--public: goes before the listener",
        ),
        (
            &["--tls-cert", "c.pem", "--tcp", "127.0.0.1:0"][..],
            "--tls-cert and --tls-key go together",
        ),
        (
            &[
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
                "--tcp",
                "127.0.0.1:0",
            ][..],
            "/nonexistent/c.pem",
        ),
        (
            &["--tls-client-ca", "ca.pem", "--ws", "127.0.0.1:0"][..],
            "--tls-cert and --tls-key go together",
        ),
    ] {
        let out = Command::new(example_path("demo_server"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn readme_example_is_the_hello_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let hello = std::fs::read_to_string(root.join("examples/examples/hello.rs")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{hello}```")),
        "README.md must show examples/examples/hello.rs verbatim"
    );
}

/// A fresh store directory for one test.
fn store_dir(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("drs-demo-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.to_string_lossy().into_owned()
}

#[test]
fn pubsub_and_broker_rpc_in_raw_json_lines() {
    let server = start();
    let mut sub = client(&server);
    assert_eq!(
        sub.call(r#"{"key":"s","action":"drs.subscribe","body":{"topic":"sensors.*"}}"#)["action"],
        "drs.response"
    );
    let mut publisher = client(&server);
    assert_eq!(
        publisher.call(
            r#"{"key":"p","action":"drs.publish","body":{"topic":"sensors.t1","body":{"c":21.5}}}"#
        ),
        json!({"key":"p","action":"drs.response","body":1})
    );
    assert_eq!(sub.recv(), json!({"action":"sensors.t1","body":{"c":21.5}}));
    // A raw client cannot take over the demo's own `add`...
    let mut worker = client(&server);
    assert_eq!(
        worker.call(r#"{"key":"e","action":"drs.expose","body":{"action":"add"}}"#),
        json!({"key":"e","action":"drs.error","body":{"message":"expose not allowed: add"}})
    );
    // ...but serves an action of its own.
    worker.call(r#"{"key":"e","action":"drs.expose","body":{"action":"thumbs.make"}}"#);
    publisher.send(r#"{"key":"a","action":"thumbs.make","body":{"a":1,"b":2}}"#);
    let routed = worker.recv();
    assert_eq!(routed["action"], "thumbs.make");
    assert_eq!(routed["body"], json!({"a":1,"b":2}));
    let key = routed["key"].as_str().expect("a call").to_string();
    worker.send(&format!(
        r#"{{"key":"{key}","action":"drs.response","body":"from the worker"}}"#
    ));
    assert_eq!(
        publisher.recv(),
        json!({"key":"a","action":"drs.response","body":"from the worker"})
    );
}

/// A raw connection named and subscribed retroactively to `d.*`, with the
/// deliveries that arrived before the replies (they start as soon as the
/// name is taken back).
struct Named {
    peer: Peer,
    resumed: bool,
    early: Vec<Value>,
}

/// Calls on `c` and returns the reply, keeping the deliveries (calls of
/// other actions) that come first.
fn call_among_deliveries(c: &mut Peer, key: &str, line: &str, early: &mut Vec<Value>) -> Value {
    c.send(line);
    loop {
        let frame = c.recv();
        if frame["key"] == key
            && frame["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("drs."))
        {
            return frame;
        }
        early.push(frame);
    }
}

fn named_subscriber(server: &DemoServer, name: &str) -> Named {
    let mut peer = client(server);
    let mut early = Vec::new();
    let identify = format!(r#"{{"key":"i","action":"drs.identify","body":{{"name":"{name}"}}}}"#);
    let answer = call_among_deliveries(&mut peer, "i", &identify, &mut early);
    assert_eq!(answer["action"], "drs.response", "{answer}");
    let subscribe =
        r#"{"key":"s","action":"drs.subscribe","body":{"topic":"d.*","retroactive":true}}"#;
    let answer2 = call_among_deliveries(&mut peer, "s", subscribe, &mut early);
    assert_eq!(answer2["action"], "drs.response", "{answer2}");
    Named {
        peer,
        resumed: answer["body"]["resumed"] == json!(true),
        early,
    }
}

/// Reads `n` deliveries (calls), acknowledging each; returns their bodies.
fn take_deliveries(named: &mut Named, n: usize) -> Vec<Value> {
    let mut early = std::mem::take(&mut named.early).into_iter();
    (0..n)
        .map(|_| {
            let d = early.next().unwrap_or_else(|| named.peer.recv());
            let key = d["key"]
                .as_str()
                .expect("a retroactive delivery is a call")
                .to_string();
            named
                .peer
                .send(&format!(r#"{{"key":"{key}","action":"drs.response"}}"#));
            d["body"].clone()
        })
        .collect()
}

#[test]
fn the_store_survives_sigkill_and_a_graceful_restart() {
    let dir = store_dir("restart");
    let args = ["--store", dir.as_str(), "--tcp", "127.0.0.1:0"];
    let server = DemoServer::start(&args);
    assert_eq!(server.store, dir);
    let s = named_subscriber(&server, "keeper");
    s.peer.stream.shutdown(Shutdown::Both).unwrap();
    let mut p = client(&server);
    for i in 0..3 {
        // Answered once written: the name may still be connected, or not.
        let n = p.call(&format!(
            r#"{{"key":"{i}","action":"drs.publish","body":{{"topic":"d.x","body":{i}}}}}"#
        ));
        assert_eq!(n["body"], 1, "{n}");
    }
    drop(server); // SIGKILL
    let server = DemoServer::start(&args);
    let mut s = named_subscriber(&server, "keeper");
    assert!(s.resumed);
    assert_eq!(take_deliveries(&mut s, 3), [json!(0), json!(1), json!(2)]);
    // A graceful restart keeps the acknowledgements (read before the ping).
    let c = s.peer.call(r#"{"key":"p","action":"drs.ping"}"#);
    assert_eq!(c["key"], "p");
    let mut server = server;
    server.interrupt();
    assert!(server.child.wait().unwrap().success());
    let server = DemoServer::start(&args);
    let mut s = named_subscriber(&server, "keeper");
    assert!(s.resumed);
    let mut p = client(&server);
    p.call(r#"{"key":"n","action":"drs.publish","body":{"topic":"d.new","body":"fresh"}}"#);
    assert_eq!(
        take_deliveries(&mut s, 1),
        [json!("fresh")],
        "nothing acknowledged came back"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_store_stops_the_demo_with_its_path() {
    let file = std::env::temp_dir().join(format!("drs-demo-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    let store = file.join("store");
    let out = Command::new(example_path("demo_server"))
        .args(["--store", &store.to_string_lossy(), "--tcp", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&*file.to_string_lossy()), "{stderr}");
    let _ = std::fs::remove_file(&file);
}

/// A missing or mistyped body is told what the action wanted in JSON's
/// words, never a Rust type name.
#[test]
fn a_bad_body_is_told_what_was_wanted() {
    let server = start();
    let mut c = client(&server);
    for (line, said) in [
        (
            r#"{"key":"1","action":"add"}"#,
            "add needs a body: an object",
        ),
        (
            r#"{"key":"2","action":"add","body":"x"}"#,
            r#"add's body has the string "x" where an object was wanted (line 1, column 3)"#,
        ),
        (
            r#"{"key":"3","action":"add","body":{"a":1}}"#,
            "add's body misses field `b`",
        ),
        (
            r#"{"key":"4","action":"add","body":{"a":"one","b":2}}"#,
            r#"add's body has the string "one" where a number was wanted (line 1, column 10)"#,
        ),
    ] {
        let reply = c.call(line);
        assert_eq!(reply["action"], "drs.error", "{reply}");
        assert_eq!(reply["body"]["message"], said, "{line}");
    }
}

/// The README's transcripts of a session by hand (`nc 127.0.0.1 12000`)
/// are what demo_server says, byte for byte: each `> ` line is sent, every
/// other line is the next line received.
#[test]
fn the_readme_transcripts_are_what_the_server_says() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let section = readme
        .split("## The wire protocol by hand")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the section");
    let blocks: Vec<&str> = section
        .split("```text\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or_default())
        .collect();
    assert!(blocks.len() >= 2, "two transcripts");
    let server = start();
    for block in blocks {
        let mut c = client(&server);
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            match line.strip_prefix("> ") {
                Some(sent) => c.send(sent),
                None => {
                    let mut got = String::new();
                    c.reader.read_line(&mut got).expect("a line");
                    assert_eq!(got.trim_end_matches('\n'), line, "after the lines before");
                }
            }
        }
    }
}
