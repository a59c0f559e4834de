//! Real servers for tests and examples: [`NatsServer`] and [`RedisServer`],
//! each started on a free port of 127.0.0.1 and stopped when dropped, or
//! when the process that started it ends in any way (a server kept in a
//! `static` is never dropped): each runs under a shell that kills it when
//! its standard input, held by us, closes.
//!
//! Where the server program is not installed, `start_or_skip` says so on
//! the real standard error (visible in `cargo test`'s output: its capture
//! takes only the print macros) and returns `None`, except under `CI`,
//! where a missing program is a failure: CI installs it (`.ci/run`).

use std::{
    io::Write,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where program `name` is: the `PATH`, or Debian's `/usr/sbin` and
/// `/usr/bin` (root's tools may not be on a user's `PATH`).
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Reports `test` skipped because `what` is missing, where `cargo test`
/// shows it; under `CI`, fails instead.
pub fn skip(test: &str, what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have {what} (see .ci/run)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {what} is not installed (CI installs it)"
    );
}

/// A free port of 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A server program running on a port of 127.0.0.1.
#[derive(Debug)]
struct Process {
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl Process {
    /// Starts `program` with the arguments `args(port)`, trying a few free
    /// ports, until it accepts TCP connections.
    fn start(program: PathBuf, args: impl Fn(u16) -> Vec<String>) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut p = Self {
                program: program.clone(),
                args: args(port),
                port,
                child: None,
            };
            match p.spawn() {
                Ok(()) => return p,
                Err(e) => last = e,
            }
        }
        panic!("{} did not start: {last}", program.display());
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$@" & pid=$!; cat >/dev/null; kill -9 $pid; wait $pid"#)
            .arg(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                drop(child.stdin.take());
                let _ = child.wait();
                return Err("not listening after 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: nothing is flushed) and waits until it is gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("{} did not restart: {e}", self.program.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fresh_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("drs-{tag}-{}-{}", std::process::id(), free_port()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// A running `nats-server`.
#[derive(Debug)]
pub struct NatsServer {
    process: Process,
    store: Option<PathBuf>,
}

impl NatsServer {
    /// Where `nats-server` is (`DRS_NATS_SERVER`, else [`find`]).
    pub fn binary() -> Option<PathBuf> {
        std::env::var_os("DRS_NATS_SERVER")
            .map(PathBuf::from)
            .or_else(|| find("nats-server"))
    }

    /// Starts a server, or reports `test` skipped (see the crate docs).
    pub fn start_or_skip(test: &str) -> Option<Self> {
        Self::or_skip(test, false)
    }

    /// [`start_or_skip`](Self::start_or_skip) with JetStream on, its store
    /// in a fresh directory.
    pub fn start_jetstream_or_skip(test: &str) -> Option<Self> {
        Self::or_skip(test, true)
    }

    fn or_skip(test: &str, jetstream: bool) -> Option<Self> {
        if Self::binary().is_none() {
            skip(test, "nats-server");
            return None;
        }
        Some(Self::start(jetstream))
    }

    /// Starts a server (JetStream on if asked). Panics if it is not
    /// installed or does not come up within 10 s.
    pub fn start(jetstream: bool) -> Self {
        let program = Self::binary().expect("nats-server is not installed");
        let store = jetstream.then(|| fresh_dir("nats-js"));
        let dir = store.clone();
        let process = Process::start(program, move |port| {
            let mut args = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ];
            if let Some(dir) = &dir {
                args.extend(["-js".into(), "-sd".into(), dir.display().to_string()]);
            }
            args
        });
        Self { process, store }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.process.port)
    }

    /// The JetStream store directory, if JetStream is on.
    pub fn store(&self) -> Option<&Path> {
        self.store.as_deref()
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Kills the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.process.restart();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.process.stop();
        if let Some(dir) = &self.store {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A running `redis-server`, persisting nothing.
#[derive(Debug)]
pub struct RedisServer {
    process: Process,
}

impl RedisServer {
    /// Where `redis-server` is (`DRS_REDIS_SERVER`, else [`find`]).
    pub fn binary() -> Option<PathBuf> {
        std::env::var_os("DRS_REDIS_SERVER")
            .map(PathBuf::from)
            .or_else(|| find("redis-server"))
    }

    /// Starts a server, or reports `test` skipped (see the crate docs).
    pub fn start_or_skip(test: &str) -> Option<Self> {
        if Self::binary().is_none() {
            skip(test, "redis-server");
            return None;
        }
        Some(Self::start())
    }

    /// Starts a server. Panics if it is not installed or does not come up
    /// within 10 s.
    pub fn start() -> Self {
        let program = Self::binary().expect("redis-server is not installed");
        let process = Process::start(program, |port| {
            [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ]
            .map(String::from)
            .to_vec()
        });
        Self { process }
    }

    /// `redis://127.0.0.1:PORT/DB`.
    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.process.port)
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// A test of this test binary, run again as a process of its own (a
/// worker to kill, a server to restart): its standard output comes line by
/// line through [`wait_for`](Self::wait_for); it is killed when dropped.
#[derive(Debug)]
pub struct TestProcess {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl TestProcess {
    /// Runs test `test` (exactly that one) with the environment `env`.
    pub fn spawn(test: &str, env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = tokio::process::Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the test process");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line containing `text` and returns what follows it on
    /// that line, trimmed (the test harness may write on the same line).
    /// Panics if the process ends first.
    pub async fn wait_for(&mut self, text: &str) -> String {
        while let Some(line) = self.lines.recv().await {
            if let Some((_, rest)) = line.split_once(text) {
                return rest.trim().to_string();
            }
        }
        panic!("the test process ended before it said {text:?}");
    }

    /// Its process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Any JSON value, nested up to 8 levels: what the protocols' property
/// tests round-trip. Decimals are short, so that `serde_json` parses them
/// exactly without its `float_roundtrip` feature.
pub fn json_values() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000_000i64..1_000_000_000).prop_map(|n| Value::from(n as f64 / 1000.0)),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
