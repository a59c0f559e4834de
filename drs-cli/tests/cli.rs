//! The `drs` binary against `drs serve`, both run as processes: every
//! subcommand, every exit code, bodies from arguments, files and stdin, a
//! config file with two listeners and a token, and the `--help` texts
//! (snapshots in `tests/help/`; `DRS_UPDATE_HELP=1` rewrites them).

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const DRS: &str = env!("CARGO_BIN_EXE_drs");
/// No process of a test may run longer.
const LIMIT: Duration = Duration::from_secs(60);

/// `drs serve …` running until dropped, with the URLs it printed.
struct Served {
    child: Child,
    urls: Vec<String>,
}

impl Served {
    /// Starts `drs ARGS` and waits for `listeners` `listening URL` lines.
    fn start(args: &[&str], listeners: usize) -> Self {
        let mut child = Command::new(DRS)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("drs serve starts");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut urls = Vec::new();
        while urls.len() < listeners {
            let line = rx
                .recv_timeout(LIMIT)
                .expect("drs serve prints its listeners");
            if let Some(url) = line.strip_prefix("listening ") {
                urls.push(url.to_string());
            }
        }
        Self { child, urls }
    }

    fn demo() -> Self {
        Self::start(&["serve", "--demo", "--listen", "tcp://127.0.0.1:0"], 1)
    }

    fn url(&self) -> &str {
        &self.urls[0]
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `drs ARGS` with `stdin` (none: an empty stdin) to its end, within
/// [`LIMIT`].
fn drs(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = spawn(args, stdin);
    wait(&mut child)
}

/// [`drs`] with `env` set.
fn drs_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = spawn_env(args, None, env);
    wait(&mut child)
}

fn spawn(args: &[&str], stdin: Option<&str>) -> Child {
    spawn_env(args, stdin, &[])
}

/// Runs drs with no server configured around it (no DRS_URL, contexts in a
/// file that does not exist) but what `env` sets.
fn spawn_env(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Child {
    let no_contexts = std::env::temp_dir().join(format!("drs-no-contexts-{}", std::process::id()));
    let mut child = Command::new(DRS)
        .args(args)
        .env("COLUMNS", "100")
        .env_remove("DRS_TOKEN")
        .env_remove("DRS_URL")
        .env("DRS_CONTEXTS", &no_contexts)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("drs runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("stdin written");
    }
    drop(input);
    child
}

fn wait(child: &mut Child) -> Output {
    let deadline = Instant::now() + LIMIT;
    // Read both pipes while waiting, so a full pipe cannot stall the child.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = out.read_to_end(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = err.read_to_end(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("drs ran past {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: reader.join().expect("stdout read"),
        stderr: err_reader.join().expect("stderr read"),
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("an exit code")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drs-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("temp file");
    path
}

#[test]
fn call_prints_only_the_body_and_exits_by_outcome() {
    let s = Served::demo();
    let o = drs(&["call", s.url(), "add", r#"{"a": 1, "b": 2}"#], None);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "3\n"),
        "{}",
        stderr(&o)
    );
    // A bare HOST:PORT is tcp://HOST:PORT.
    let bare = s.url().trim_start_matches("tcp://");
    let o = drs(&["call", bare, "add", r#"{"a": 2, "b": 2}"#], None);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "4\n"),
        "{}",
        stderr(&o)
    );

    let o = drs(
        &["call", s.url(), "echo", r#"{"x": [1, 2]}"#, "--raw"],
        None,
    );
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "{\"x\":[1,2]}\n"));

    let o = drs(&["call", s.url(), "fail", r#"{"message": "nope"}"#], None);
    assert_eq!((code(&o), stdout(&o).as_str()), (1, ""));
    assert!(stderr(&o).contains("drs.error: nope"), "{}", stderr(&o));

    let o = drs(&["call", s.url(), "nothing.here"], None);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("No handlers for nothing.here"));

    let started = Instant::now();
    let o = drs(&["call", s.url(), "echo", "7", "--delay", "0.3"], None);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "7\n"),
        "{}",
        stderr(&o)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "held by the server"
    );

    let o = drs(&["call", s.url(), "kaboom"], None);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("drs.exception: handler panicked: kaboom"));

    let o = drs(
        &[
            "call",
            s.url(),
            "sleep",
            r#"{"ms": 5000}"#,
            "--timeout",
            "0.2",
        ],
        None,
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("timed out after 200ms"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn connection_failures_exit_4_and_usage_errors_64() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let o = drs(&["call", &url, "echo", "1"], None);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot connect to"), "{}", stderr(&o));

    let s = Served::demo();
    for (args, says) in [
        (vec!["call", s.url(), "echo", "not json"], "not JSON"),
        (
            vec!["call", s.url(), "echo", "@/nonexistent/x.json"],
            "/nonexistent/x.json",
        ),
        (
            vec!["call", "localhost", "echo", "1"],
            "`localhost` is not a server",
        ),
        (
            vec!["call", "tcp://h:1?protocol=xml", "echo"],
            "unknown protocol",
        ),
        (vec!["call", s.url()], "ACTION"),
        (
            vec!["call", s.url(), "echo", "--timeout", "soon"],
            "not a number of seconds",
        ),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["publish", s.url(), "bad..topic", "1"], "topic"),
    ] {
        let o = drs(&args, None);
        assert_eq!(code(&o), 64, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn bodies_come_from_arguments_files_and_stdin() {
    let s = Served::demo();
    let file = tmp("body.json", r#"{"from": "file"}"#);
    let at = format!("@{}", file.display());
    let o = drs(&["call", s.url(), "echo", &at, "--raw"], None);
    assert_eq!(stdout(&o), "{\"from\":\"file\"}\n", "{}", stderr(&o));

    let o = drs(
        &["call", s.url(), "echo", "-", "--raw"],
        Some("[1, 2, 3]\n"),
    );
    assert_eq!(stdout(&o), "[1,2,3]\n", "{}", stderr(&o));

    // No BODY, stdin not a terminal: stdin is the body.
    let o = drs(&["call", s.url(), "echo", "--raw"], Some("\"piped\""));
    assert_eq!(stdout(&o), "\"piped\"\n", "{}", stderr(&o));

    // An empty stdin is no body.
    let o = drs(&["call", s.url(), "echo", "--raw"], None);
    assert_eq!(stdout(&o), "null\n", "{}", stderr(&o));

    let o = drs(&["call", s.url(), "echo", "-"], Some("{oops"));
    assert_eq!(code(&o), 64);
    assert!(stderr(&o).contains("stdin is not JSON"), "{}", stderr(&o));
}

#[test]
fn msgpack_and_websocket_urls_work_the_same() {
    let s = Served::start(
        &[
            "serve",
            "--demo",
            "--listen",
            "ws://127.0.0.1:0",
            "--listen",
            "tcp://127.0.0.1:0?protocol=msgpack",
        ],
        2,
    );
    let ws = format!("{}/socket", s.urls[0]);
    let o = drs(&["call", &ws, "add", r#"{"a": 1.5, "b": 2}"#], None);
    assert_eq!(stdout(&o), "3.5\n", "{}", stderr(&o));
    assert!(s.urls[1].ends_with("?protocol=msgpack"), "{:?}", s.urls);
    let o = drs(
        &[
            "call",
            &s.urls[1],
            "echo",
            r#"{"k": [true, null, "v"]}"#,
            "--raw",
        ],
        None,
    );
    assert_eq!(stdout(&o), "{\"k\":[true,null,\"v\"]}\n", "{}", stderr(&o));
}

#[test]
fn stream_prints_items_as_they_come_then_the_final_value() {
    let s = Served::demo();
    let o = drs(
        &["stream", s.url(), "count", r#"{"n": 3}"#, "--window", "1"],
        None,
    );
    // Into a pipe, the final value is marked apart from the items.
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "0\n1\n2\n{\"final\":3}\n"),
        "{}",
        stderr(&o)
    );
    for (choice, out, err) in [
        ("line", "0\n1\n2\n3\n", ""),
        ("stderr", "0\n1\n2\n", "3\n"),
        ("none", "0\n1\n2\n", ""),
    ] {
        let o = drs(
            &["stream", s.url(), "count", r#"{"n": 3}"#, "--final", choice],
            None,
        );
        assert_eq!(
            (code(&o), stdout(&o).as_str(), stderr(&o).as_str()),
            (0, out, err),
            "--final {choice}"
        );
    }

    let o = drs(&["stream", s.url(), "count", r#"{"n": 2000000}"#], None);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("n is at most"), "{}", stderr(&o));
}

#[test]
fn ctrl_c_cancels_a_stream() {
    let s = Served::demo();
    let mut child = spawn(
        &["stream", s.url(), "count", r#"{"n": 100000, "ms": 20}"#],
        None,
    );
    // Wait for the first item, then interrupt.
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("an item");
    assert_eq!(first, "0\n");
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-INT", &pid]).status();
    assert!(killed.expect("kill runs").success());
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "drs stream ignored SIGINT");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(130));
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("the rest");
    assert!(rest.lines().count() < 1000, "the stream ran on");
    // The server is fine and free: the cancelled handler holds nothing.
    let o = drs(&["call", s.url(), "echo", "1"], None);
    assert_eq!(stdout(&o), "1\n");
}

/// Waits for `drs listen` to have subscribed: its subscriptions are
/// confirmed before it prints, so a publication reaching one more
/// subscriber than before proves it.
fn publish_until_heard(url: &str, topic: &str, body: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let o = drs(&["publish", url, topic, body], None);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        if stdout(&o).trim() != "0" {
            return;
        }
        assert!(Instant::now() < deadline, "drs listen never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn listen_prints_topic_deliveries_and_broadcasts_as_json_lines() {
    let s = Served::demo();
    let mut listener = spawn(
        &["listen", s.url(), "--topic", "sensors.*", "--count", "2"],
        None,
    );
    publish_until_heard(s.url(), "sensors.t1", "21.5");
    // A broadcast reaches every client, the listener among them.
    let o = drs(&["call", s.url(), "shout", r#""hello""#], None);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = wait(&mut listener);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"action": "sensors.t1", "body": 21.5}),
            serde_json::json!({"action": "shout", "body": "hello"}),
        ]
    );
}

#[test]
fn a_named_retroactive_listener_gets_what_was_published_while_away() {
    let s = Served::demo();
    let args = [
        "listen",
        s.url(),
        "--name",
        "auditor",
        "--topic",
        "orders.>",
        "--retroactive",
        "--count",
        "1",
    ];
    let mut first = spawn(&args, None);
    publish_until_heard(s.url(), "orders.new", "1");
    assert_eq!(code(&wait(&mut first)), 0);
    // Away: these are kept for the name.
    for n in 2..=3 {
        let o = drs(&["publish", s.url(), "orders.new", &n.to_string()], None);
        assert_eq!(stdout(&o), "1\n", "stored for the name: {}", stderr(&o));
    }
    let deadline = Instant::now() + LIMIT;
    let o = loop {
        // The server may not have released the name yet.
        let mut back = args.to_vec();
        back[8] = "2";
        let o = drs(&back, None);
        if !stderr(&o).contains("name taken") {
            break o;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let bodies: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["body"].clone())
        .collect();
    assert_eq!(bodies, [2, 3]);
}

#[test]
fn fire_publish_no_confirm_and_ping() {
    let s = Served::demo();
    let mut listener = spawn(&["listen", s.url(), "--topic", "t", "--count", "2"], None);
    publish_until_heard(s.url(), "t", "0");
    let o = drs(&["publish", s.url(), "t", "1", "--no-confirm"], None);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, ""), "{}", stderr(&o));
    let o = wait(&mut listener);
    assert!(
        stdout(&o).ends_with("{\"action\":\"t\",\"body\":1}\n"),
        "{}",
        stdout(&o)
    );

    let mut listener = spawn(
        &["listen", s.url(), "--topic", "ready", "--count", "2"],
        None,
    );
    publish_until_heard(s.url(), "ready", "0");
    let o = drs(&["fire", s.url(), "shout", r#"{"fired": true}"#], None);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, ""), "{}", stderr(&o));
    let o = wait(&mut listener);
    assert!(
        stdout(&o).ends_with("{\"action\":\"shout\",\"body\":{\"fired\":true}}\n"),
        "{}",
        stdout(&o)
    );

    let o = drs(
        &["ping", s.url(), "--count", "2", "--interval", "0.01"],
        None,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let pings: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(pings.len(), 2);
    assert_eq!(pings[1]["seq"], 2);
    assert!(pings[0]["rtt_ms"].as_f64().is_some() && pings[0]["server_time_ms"].as_u64().is_some());
}

#[test]
fn serve_reads_a_config_with_two_listeners_a_token_and_a_jail() {
    let config = tmp(
        "two.toml",
        r#"
name = "configured"
demo = true
jail = ["echo", "add", "session", "fail"]

[limits]
max_connections = 100
handler_timeout = 10

[broker]
publish = ["news.*"]

[[listener]]
url = "tcp://127.0.0.1:0"
public = true

[[listener]]
url = "ws://127.0.0.1:0"
token = "s3cret"
"#,
    );
    let s = Served::start(&["serve", config.to_str().expect("utf-8 path")], 2);
    let (open, guarded) = (s.urls[0].clone(), format!("{}/socket", s.urls[1]));
    let o = drs(&["call", &open, "session", "--raw"], None);
    let session: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(session["server"], "configured", "{}", stderr(&o));

    let o = drs(&["call", &guarded, "echo", "1"], None);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("unauthenticated"), "{}", stderr(&o));
    let o = drs(&["call", &guarded, "echo", "1", "--token", "wrong"], None);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("authentication failed"),
        "{}",
        stderr(&o)
    );
    let o = drs(&["call", &guarded, "echo", "1", "--token", "s3cret"], None);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "1\n"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(DRS)
        .args(["call", &guarded, "echo", "2"])
        .env("DRS_TOKEN", "s3cret")
        .stdin(Stdio::null())
        .output()
        .expect("drs runs");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "2\n");

    let o = drs(&["call", &open, "sleep", r#"{"ms": 1}"#], None);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("action not allowed: sleep"),
        "{}",
        stderr(&o)
    );
    let o = drs(&["publish", &open, "other.topic", "1"], None);
    assert_eq!(code(&o), 1, "the publish jail: {}", stderr(&o));
}

/// TLS listeners go through the registry like the others: from a
/// `tls = {…}` section, or with the certificates in a `--listen` URL; a
/// client dials the printed URL trusting the CA with `?ca=`.
#[test]
fn serve_listens_with_tls_from_a_section_or_the_url() {
    use drs_tls::test_pki::{TestCa, Usage};
    let ca = TestCa::new("drs cli test CA");
    let (cert, key) = ca.issue("localhost", &["127.0.0.1"], Usage::Server, false);
    let cert = tmp("tls-server.pem", &cert);
    let key = tmp("tls-server.key", &key);
    let ca_file = tmp("tls-ca.pem", &ca.pem());
    let (cert, key, ca_file) = (
        cert.to_str().expect("utf-8"),
        key.to_str().expect("utf-8"),
        ca_file.to_str().expect("utf-8"),
    );
    let config = tmp(
        "tls-serve.toml",
        &format!(
            "demo = true\n[[listener]]\nurl = \"wss://127.0.0.1:0\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n"
        ),
    );
    let from_url = format!("tls://127.0.0.1:0?cert={cert}&key={key}&protocol=msgpack");
    let served = Served::start(
        &[
            "serve",
            config.to_str().expect("utf-8"),
            "--listen",
            &from_url,
        ],
        2,
    );
    for url in &served.urls {
        assert!(!url.contains("cert=") && !url.contains("key="), "{url}");
        let sep = if url.contains('?') { '&' } else { '?' };
        let o = drs(
            &["call", &format!("{url}{sep}ca={ca_file}"), "echo", "7"],
            None,
        );
        assert_eq!(
            (code(&o), stdout(&o).as_str()),
            (0, "7\n"),
            "{url}: {}",
            stderr(&o)
        );
    }
    assert!(served.urls.iter().any(|u| u.starts_with("wss://")));
    assert!(served
        .urls
        .iter()
        .any(|u| u.starts_with("tls://") && u.ends_with("?protocol=msgpack")));
}

#[test]
fn serve_refuses_bad_configs_with_usage_errors() {
    for (name, text, says) in [
        (
            "typo.toml",
            "nmae = \"x\"\n[[listener]]\nurl = \"tcp://127.0.0.1:0\"\n",
            "unknown field `nmae`",
        ),
        ("empty.toml", "name = \"x\"\n", "no [[listener]]"),
        (
            "tls.toml",
            "[[listener]]\nurl = \"tls://127.0.0.1:0\"\n",
            "needs tls",
        ),
        (
            "missing-cert.toml",
            "[[listener]]\nurl = \"tls://127.0.0.1:0\"\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\n",
            "/nonexistent/c.pem",
        ),
        (
            "twice.toml",
            "[[listener]]\nurl = \"tls://127.0.0.1:0?cert=a.pem&key=b.pem\"\ntls = { cert = \"c.pem\", key = \"k.pem\" }\n",
            "give the certificates once",
        ),
        (
            "scheme.toml",
            "[[listener]]\nurl = \"udp://127.0.0.1:0\"\n",
            "unknown scheme",
        ),
        (
            "jail.toml",
            "jail = [\"\"]\n[[listener]]\nurl = \"tcp://127.0.0.1:0\"\n",
            "jail",
        ),
        (
            "token.toml",
            "[[listener]]\nurl = \"tcp://127.0.0.1:0\"\ntoken = \"\"\n",
            "token is empty",
        ),
        (
            "open.toml",
            "[[listener]]\nurl = \"tcp://127.0.0.1:0\"\n[[listener]]\nurl = \"ws://127.0.0.1:0\"\ntoken = \"t\"\n",
            "no token while other listeners require one",
        ),
        (
            "public-token.toml",
            "[[listener]]\nurl = \"tcp://127.0.0.1:0\"\npublic = true\ntoken = \"t\"\n",
            "contradict",
        ),
        (
            "time.toml",
            "[limits]\nidle_timeout = -1\n[[listener]]\nurl = \"tcp://127.0.0.1:0\"\n",
            "idle_timeout",
        ),
    ] {
        let path = tmp(name, text);
        let o = drs(&["serve", path.to_str().expect("utf-8")], None);
        assert_eq!(code(&o), 64, "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{name}: {}", stderr(&o));
    }
    let o = drs(&["serve"], None);
    assert_eq!(code(&o), 64);
    assert!(stderr(&o).contains("nothing to serve"));
}

#[test]
fn the_example_config_serves() {
    // On free ports instead of 12000 and 12001.
    let example = include_str!("../drs.example.toml");
    assert!(example.contains(":12000\"") && example.contains(":12001\""));
    let config = tmp(
        "example.toml",
        &example
            .replace(":12000\"", ":0\"")
            .replace(":12001\"", ":0\""),
    );
    let s = Served::start(&["serve", config.to_str().expect("utf-8")], 2);
    let o = drs(&["call", s.url(), "add", r#"{"a": 2, "b": 2}"#], None);
    assert_eq!(stdout(&o), "4\n", "{}", stderr(&o));
    let ws = format!("{}/socket", s.urls[1]);
    let o = drs(&["call", &ws, "echo", "1", "--token", "change-me"], None);
    assert_eq!(stdout(&o), "1\n", "{}", stderr(&o));
    let o = drs(&["call", s.url(), "kaboom"], None);
    assert!(stderr(&o).contains("action not allowed"), "{}", stderr(&o));
}

#[test]
fn bench_measures_and_reports() {
    let s = Served::demo();
    let o = drs(
        &[
            "bench",
            s.url(),
            "--calls",
            "300",
            "--connections",
            "2",
            "--concurrency",
            "4",
            "--raw",
        ],
        None,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON line");
    assert_eq!(
        (r["calls"].as_u64(), r["errors"].as_u64()),
        (Some(300), Some(0)),
        "{r}"
    );
    assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
    assert!(r["calls_per_sec"].as_f64().unwrap() > 0.0);

    let o = drs(
        &[
            "bench",
            s.url(),
            "add",
            "--calls",
            "10",
            "--connections",
            "1",
        ],
        Some("{\"a\": 1, \"b\": 1}"),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("calls/s"), "{}", stdout(&o));

    let o = drs(
        &[
            "bench",
            s.url(),
            "fail",
            r#"{"message": "x"}"#,
            "--calls",
            "10",
        ],
        None,
    );
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("the first call failed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn completions_are_scripts_for_each_shell() {
    for (shell, says) in [
        ("bash", "_drs()"),
        ("zsh", "#compdef drs"),
        ("fish", "complete -c drs"),
    ] {
        let o = drs(&["completions", shell], None);
        assert_eq!(code(&o), 0);
        assert!(stdout(&o).contains(says), "{shell}");
        assert!(stdout(&o).contains("listen"), "{shell}");
    }
}

#[test]
fn help_texts_match_their_snapshots() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/help"));
    let update = std::env::var_os("DRS_UPDATE_HELP").is_some();
    let mut stale = Vec::new();
    for sub in [
        "",
        "call",
        "fire",
        "stream",
        "listen",
        "publish",
        "ping",
        "serve",
        "bench",
        "completions",
    ] {
        let args: Vec<&str> = [sub, "--help"]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let o = drs(&args, None);
        assert_eq!(code(&o), 0, "{args:?}");
        let text = stdout(&o);
        assert!(text.contains("Examples:"), "{args:?} shows examples");
        let file = dir.join(format!("{}.txt", if sub.is_empty() { "drs" } else { sub }));
        if update {
            std::fs::create_dir_all(&dir).expect("help dir");
            std::fs::write(&file, &text).expect("snapshot written");
        } else if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
            stale.push(file.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "help changed: {stale:?} (DRS_UPDATE_HELP=1 cargo test -p drsrpc-cli --test cli help rewrites them; review the diff)"
    );
    // `drs help [COMMAND]` says the same as `--help`.
    for sub in ["", "call", "serve"] {
        let help: Vec<&str> = ["help", sub]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let flag: Vec<&str> = [sub, "--help"]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let (a, b) = (drs(&help, None), drs(&flag, None));
        assert_eq!(code(&a), 0, "{help:?}: {}", stderr(&a));
        assert_eq!(stdout(&a), stdout(&b), "{help:?}");
    }
}

#[test]
fn serve_joins_the_workers_of_a_service_through_nats() {
    let Some(nats) = drs_testkit::NatsServer::start_jetstream_or_skip(
        "serve_joins_the_workers_of_a_service_through_nats",
    ) else {
        return;
    };
    let service = format!("{}/cli{}", nats.url(), std::process::id());
    let config = tmp(
        "nats.toml",
        &format!(
            "demo = true\n[[listener]]\nurl = \"tcp://127.0.0.1:0\"\n[[listener]]\nurl = \"{service}\"\n"
        ),
    );
    let path = config.to_str().expect("utf-8");
    let (one, two) = (
        Served::start(&["serve", path], 2),
        Served::start(&["serve", path], 2),
    );
    assert_eq!(one.urls[1], service);
    // A call to the service reaches a worker.
    let o = drs(&["call", &service, "add", r#"{"a": 2, "b": 3}"#], None);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "5\n"),
        "{}",
        stderr(&o)
    );
    // A subscriber on one worker hears a publication made on the other.
    let mut listener = spawn(
        &["listen", one.url(), "--topic", "news", "--count", "1"],
        None,
    );
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        let o = drs(
            &["publish", two.url(), "news", "\"hello\"", "--no-confirm"],
            None,
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        if let Some(status) = listener.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the publication never crossed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let o = wait(&mut listener);
    assert_eq!(stdout(&o), "{\"action\":\"news\",\"body\":\"hello\"}\n");
}

/// Release binaries carry line tables, not full debug info (the `drs`
/// binary was 114 MB with it): profiles and backtraces still name files
/// and lines.
#[test]
fn release_builds_keep_line_tables_only() {
    let workspace = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .expect("the workspace manifest");
    let release = workspace
        .split("[profile.release]")
        .nth(1)
        .expect("a release profile");
    let debug = release
        .lines()
        .find(|l| l.trim_start().starts_with("debug"))
        .expect("a debug setting");
    assert_eq!(
        debug.split('=').nth(1).map(str::trim),
        Some("\"line-tables-only\"")
    );
}

/// The server comes from the first argument, -s/--server, DRS_URL or the
/// selected context, in that order; given twice, or not at all, it is a
/// usage error that says where it can come from.
#[test]
fn the_server_comes_from_an_argument_a_flag_the_environment_or_a_context() {
    let s = Served::demo();
    let url = s.url().to_string();
    let add = r#"{"a": 1, "b": 2}"#;
    let ok = |o: &Output, what: &str| {
        assert_eq!(
            (code(o), stdout(o).as_str()),
            (0, "3\n"),
            "{what}: {}",
            stderr(o)
        );
    };
    ok(&drs(&["call", "-s", &url, "add", add], None), "-s");
    ok(
        &drs(&["call", &format!("--server={url}"), "add", add], None),
        "--server=",
    );
    ok(
        &drs(&["call", "add", add, "--server", &url, "-t", "5"], None),
        "--server after",
    );
    ok(
        &drs_env(&["call", "add", add], &[("DRS_URL", &url)]),
        "DRS_URL",
    );
    let o = drs_env(&["ping"], &[("DRS_URL", &url)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The first argument wins over DRS_URL; both it and -s is an error.
    ok(
        &drs_env(&["call", &url, "add", add], &[("DRS_URL", "127.0.0.1:1")]),
        "argument",
    );
    let o = drs(&["call", &url, "add", add, "-s", &url], None);
    assert_eq!(code(&o), 64);
    assert!(stderr(&o).contains("given twice"), "{}", stderr(&o));
    let o = drs(&["call", "add", add], None);
    assert_eq!(code(&o), 64);
    assert!(
        stderr(&o).contains("`add` is not a server"),
        "{}",
        stderr(&o)
    );

    // Contexts, in a file of the test's own.
    let file = tmp("contexts.json", "");
    std::fs::remove_file(&file).expect("no file yet");
    let file = file.to_str().expect("utf-8").to_string();
    let env = [("DRS_CONTEXTS", file.as_str())];
    let o = drs_env(&["context", "add", "local", &url, "--select"], &env);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = drs_env(&["context", "add", "other", "127.0.0.1:1"], &env);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = drs_env(&["context", "ls"], &env);
    assert_eq!(
        stdout(&o),
        format!("* local\t{url}\n  other\t127.0.0.1:1\n")
    );
    ok(&drs_env(&["call", "add", add], &env), "context");
    // DRS_URL comes before the context.
    let o = drs_env(
        &["call", "add", add, "-t", "1"],
        &[env[0], ("DRS_URL", "127.0.0.1:1")],
    );
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let o = drs_env(&["context", "select", "nope"], &env);
    assert_eq!(code(&o), 64);
    assert!(
        stderr(&o).contains("no context named `nope`"),
        "{}",
        stderr(&o)
    );
    let o = drs_env(&["context", "add", "bad", "not a url"], &env);
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    let o = drs_env(&["context", "rm", "local"], &env);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = drs_env(&["call", "add", add], &env);
    assert_eq!(code(&o), 64, "no context selected any more: {}", stderr(&o));
}

/// A damaged contexts file is named, with what to do, wherever it is read
/// (a command without a server, `drs context …`), and is not overwritten;
/// a command that names its server does not read it.
#[test]
fn a_damaged_contexts_file_is_named_and_left_alone() {
    let s = Served::demo();
    let url = s.url().to_string();
    let file = tmp(
        "damaged-contexts.json",
        "{\"selected\": \"local\", \"contexts\": [1, ",
    );
    let env = [("DRS_CONTEXTS", file.to_str().unwrap())];
    let want = format!("{} is not a drs contexts file (", file.display());
    for args in [
        vec!["call", "add", r#"{"a": 1, "b": 2}"#],
        vec!["context", "ls"],
        vec!["context", "add", "local", url.as_str()],
    ] {
        let o = drs_env(&args, &env);
        assert_eq!(code(&o), 64, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(&want), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("remove it to start again"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "{\"selected\": \"local\", \"contexts\": [1, ",
        "left as it was"
    );
    let o = drs_env(&["call", &url, "add", r#"{"a": 1, "b": 2}"#], &env);
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "3\n"),
        "{}",
        stderr(&o)
    );
}

/// The README's command-line session, line by line as written (through
/// `sh`, with the demo address replaced by a free port), against `drs
/// serve` with `drs.example.toml` as shipped (its ports made free): every
/// line succeeds and prints what its comment says.
#[test]
fn the_readme_session_runs_against_the_example_config() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```sh\ndrs serve --demo")
        .expect("the README's session");
    let block = &readme[start + "```sh\n".len()..];
    let block = &block[..block.find("```").expect("the block ends")];
    let example = include_str!("../drs.example.toml");
    let config = tmp(
        "readme-example.toml",
        &example
            .replace(":12000\"", ":0\"")
            .replace(":12001\"", ":0\""),
    );
    let s = Served::start(&["serve", config.to_str().expect("utf-8")], 2);
    let here = s.url().trim_start_matches("tcp://").to_string();
    let contexts = tmp("readme-contexts.json", "");
    std::fs::remove_file(&contexts).expect("no contexts yet");
    let bin = std::path::Path::new(DRS)
        .parent()
        .expect("the binary's folder");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = |line: &str| {
        let mut child = Command::new("sh")
            .args(["-c", line])
            .env("PATH", &path)
            .env("DRS_CONTEXTS", &contexts)
            .env_remove("DRS_URL")
            .env_remove("DRS_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        wait(&mut child)
    };
    let mut listening = None;
    let mut ran = 0;
    for line in block.lines() {
        let (command, says) = match line.split_once("  # ") {
            Some((c, s)) => (c.trim(), s.trim()),
            None => (line.trim(), ""),
        };
        let command = command.replace("127.0.0.1:12000", &here);
        if command.starts_with("drs serve") {
            continue; // served above, from the example file
        }
        if command.starts_with("drs listen") {
            // Runs until it has heard the README's publication.
            let child = Command::new("sh")
                .args(["-c", &format!("{command} --count 2")])
                .env("PATH", &path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sh runs");
            publish_until_heard(s.url(), "sensors.ready", "0");
            listening = Some(std::thread::spawn(move || {
                let mut child = child;
                stdout(&wait(&mut child))
            }));
            continue;
        }
        let command = command.replace("--calls 100000", "--calls 2000");
        let o = sh(&command);
        ran += 1;
        assert_eq!(code(&o), 0, "{command}: {}", stderr(&o));
        let out = stdout(&o);
        if command.starts_with("drs call") && says.starts_with('3') {
            assert_eq!(out, "3\n", "{command}");
        } else if command.contains("echo '\"hi\"'") {
            assert_eq!(out, "\"hi\"\n", "{command}");
        } else if command.starts_with("drs stream") {
            assert_eq!(out, "0\n1\n2\n{\"final\":3}\n", "{command}");
        } else if command.starts_with("drs publish") {
            assert_eq!(out, "1\n", "reached the listener: {command}");
        }
    }
    assert_eq!(ran, 7, "every line but serve and listen ran");
    let heard = listening
        .expect("the README listens")
        .join()
        .expect("the listener's output");
    assert!(
        heard.ends_with("{\"action\":\"sensors.t1\",\"body\":21.5}\n"),
        "{heard}"
    );
}

/// `drs reply` running until dropped, once it said it serves.
struct Replying {
    child: Child,
    said: String,
}

impl Replying {
    fn start(args: &[&str]) -> Self {
        let mut child = spawn(args, None);
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let mut reader = BufReader::new(stderr);
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining, so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let said = rx.recv_timeout(LIMIT).expect("drs reply says it serves");
        Self { child, said }
    }

    /// Waits for the process to exit by itself, within [`LIMIT`].
    fn exit_code(mut self) -> Option<i32> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "drs reply did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replying {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `drs reply` serves an action from a shell command through the broker:
/// the body on the command's stdin, its stdout the reply (JSON or text),
/// its failure a `drs.error` with its stderr; it exits 0 after --count.
#[test]
fn reply_serves_an_action_from_a_shell_command() {
    let s = Served::demo();
    let url = s.url();
    let r = Replying::start(&[
        "reply",
        url,
        "upper",
        "--command",
        "tr a-z A-Z",
        "--count",
        "3",
    ]);
    assert!(r.said.contains("serving upper (exposed"), "{}", r.said);
    let out = drs(&["call", url, "upper", r#""hello""#], None);
    assert_eq!(stdout(&out).trim(), r#""HELLO""#, "{}", stderr(&out));
    let out = drs(&["call", url, "upper", r#"{"a":"b"}"#], None);
    assert_eq!(stdout(&out).trim(), r#"{"A":"B"}"#);
    let out = drs(&["call", url, "upper", "[1]"], None);
    assert_eq!(stdout(&out).trim(), "[1]");
    assert_eq!(r.exit_code(), Some(0), "exits after --count replies");

    let r = Replying::start(&["reply", url, "words", "--command", "cat; echo two words"]);
    let out = drs(&["call", url, "words", "1"], None);
    assert_eq!(stdout(&out).trim(), r#""1\ntwo words""#, "text, not JSON");
    drop(r);

    let r = Replying::start(&[
        "reply",
        url,
        "boom",
        "--command",
        "echo broken >&2; exit 3",
        "--count",
        "1",
    ]);
    let out = drs(&["call", url, "boom", "1"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("drs.error: `echo broken >&2; exit 3` exited with 3: broken"),
        "{}",
        stderr(&out)
    );
    assert_eq!(r.exit_code(), Some(0));

    let r = Replying::start(&["reply", url, "back", "--echo", "--count", "1"]);
    let out = drs(&["call", url, "back", r#"{"x":[1,2]}"#], None);
    assert_eq!(stdout(&out).trim(), r#"{"x":[1,2]}"#);
    assert_eq!(r.exit_code(), Some(0));
}

/// Without a broker, `drs reply` says only the server can call it; with
/// neither --command nor --echo it is a usage error.
#[test]
fn reply_without_a_broker_or_a_command() {
    let config = tmp(
        "no-broker.toml",
        "demo = true\n[broker]\nenabled = false\n[[listener]]\nurl = \"tcp://127.0.0.1:0\"\n",
    );
    let s = Served::start(&["serve", config.to_str().expect("utf-8")], 1);
    let r = Replying::start(&["reply", s.url(), "upper", "--echo"]);
    assert!(
        r.said
            .contains("serving upper (the server has no broker: only the server calls it)"),
        "{}",
        r.said
    );
    drop(r);
    let out = drs(&["reply", s.url(), "upper"], None);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--command"), "{}", stderr(&out));
}

/// The wrong protocol is told at once, with what to change in the URL.
#[test]
fn the_wrong_protocol_is_told_at_once() {
    let s = Served::start(
        &[
            "serve",
            "--demo",
            "--listen",
            "tcp://127.0.0.1:0",
            "--listen",
            "tcp://127.0.0.1:0?protocol=msgpack",
        ],
        2,
    );
    let msgpack_port = s.urls[1].trim_end_matches("?protocol=msgpack");
    let started = Instant::now();
    let out = drs(&["call", msgpack_port, "add", r#"{"a":1,"b":2}"#], None);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "drs: this port speaks MessagePack, not drs JSON (add ?protocol=msgpack to the URL)"
    );
    let json_port = format!("{}?protocol=msgpack", s.url());
    let out = drs(&["call", &json_port, "add", r#"{"a":1,"b":2}"#], None);
    assert_eq!(
        stderr(&out).trim(),
        "drs: this port speaks JSON, not drs MessagePack (drop ?protocol=msgpack from the URL)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not at the timeout"
    );
}
