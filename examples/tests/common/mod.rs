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
    /// The `listening KIND ADDR` lines, one per listener, as (kind, addr).
    pub listening: Vec<(String, String)>,
}

impl DemoServer {
    /// Starts `demo_server` with `args`, waiting for one `listening` line per listener.
    pub fn start(args: &[&str]) -> Self {
        let expected = args
            .iter()
            .filter(|a| ["--tcp", "--ws", "--ipc"].contains(a))
            .count()
            .max(1);
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
        let listening = (0..expected)
            .map(|_| {
                let line = rx
                    .recv_timeout(READ_TIMEOUT)
                    .expect("demo_server announced a listener");
                let rest = line
                    .trim()
                    .strip_prefix("listening ")
                    .unwrap_or_else(|| panic!("unexpected line {line:?}"));
                let (kind, addr) = rest.split_once(' ').expect("listening KIND ADDR");
                (kind.to_string(), addr.to_string())
            })
            .collect();
        DemoServer { child, listening }
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
    }
}
