//! Running `demo_server` (and other examples) as separate processes.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Bounds every read, so a bug fails the test instead of hanging it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// The path of a built example, building it if a filtered test run did not.
pub fn example_path(name: &str) -> PathBuf {
    // Integration tests live in target/<profile>/deps; examples beside it.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "examples", "--example", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building example {name} failed");
    }
    path
}

/// A `demo_server` process, killed when dropped.
pub struct DemoServer {
    pub child: Child,
    /// The `listening KIND://ADDR` lines, one per listener, as (kind, addr).
    pub listening: Vec<(String, String)>,
    /// The broker's store directory (`store PATH`).
    pub store: String,
    /// Whether the store is the default one, removed when dropped.
    own_store: bool,
}

impl DemoServer {
    /// Starts `demo_server` with `args`, waiting for one `listening` line per listener.
    pub fn start(args: &[&str]) -> Self {
        let expected = args
            .iter()
            .filter(|a| {
                [
                    "--listen", "--tcp", "--ws", "--ipc", "--rembus", "--nats", "--redis",
                    "--cerbas", "--stats",
                ]
                .contains(a)
            })
            .count()
            .max(1);
        // The store line comes first, then one line per listener.
        let expected = expected + 1;
        let mut child = Command::new(example_path("demo_server"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo_server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            for _ in 0..expected {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let _ = tx.send(line);
            }
        });
        let mut store = String::new();
        let mut listening = Vec::new();
        for _ in 0..expected {
            let line = rx
                .recv_timeout(READ_TIMEOUT)
                .expect("demo_server announced its store and listeners");
            let line = line.trim();
            if let Some(path) = line.strip_prefix("store ") {
                store = path.to_string();
                continue;
            }
            let rest = line
                .strip_prefix("listening ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            let (kind, addr) = split_listening(rest);
            listening.push((kind.to_string(), addr.to_string()));
        }
        let own_store = !args.contains(&"--store");
        DemoServer {
            child,
            listening,
            store,
            own_store,
        }
    }

    /// The address of the `n`th listener.
    pub fn addr(&self, n: usize) -> &str {
        &self.listening[n].1
    }

    /// Sends SIGINT, as Ctrl-C would.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.own_store && !self.store.is_empty() {
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }
}

/// Whether `python3` can import `modules`; if not, the test says so where
/// `cargo test` shows it (`SKIPPED …`) and is skipped, except under `CI`,
/// where it fails (CI installs them: `.ci/run`).
pub fn python_has(modules: &[&str]) -> bool {
    let mut probe = Command::new("python3");
    probe.args(["-c", &format!("import {}", modules.join(", "))]);
    let packages: Vec<&str> = modules.iter().map(|m| pip_package(m)).collect();
    ready(
        probe,
        &format!(
            "python3 with {} (pip install {})",
            modules.join(", "),
            packages.join(" ")
        ),
    )
}

/// The package on PyPI that gives Python module `module` (most have its
/// name; these do not).
pub fn pip_package(module: &str) -> &str {
    match module {
        "umsgpack" => "u-msgpack-python",
        "drs_client" => "drsrpc",
        other => other,
    }
}

/// Whether `probe` runs and succeeds (quietly); if not, the running test
/// reports `what` missing through [`drs_testkit::skip`] (visible in
/// `cargo test`'s output; a failure under `CI`).
pub fn ready(mut probe: Command, what: &str) -> bool {
    let ok = probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        drs_testkit::skip(&test, what);
    }
    ok
}

/// The Chromium on this machine; if none, the test says so where `cargo
/// test` shows it (`SKIPPED …`) and is skipped, except under `CI`, where
/// it fails (CI installs it: `.ci/run`).
pub fn chromium(test: &str) -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|bin| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if found.is_none() {
        drs_testkit::skip(test, "chromium (apt-get install chromium)");
    }
    found
}

/// `KIND://ADDR[?QUERY]` (a `listening` line's URL) → `(KIND, ADDR)`.
pub fn split_listening(url: &str) -> (&str, &str) {
    let (kind, rest) = url.split_once("://").expect("listening KIND://ADDR");
    (kind, rest.split('?').next().unwrap_or(rest))
}
