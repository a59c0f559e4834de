//! A `nats-server` of its own for a test or an example: started on a free
//! port of 127.0.0.1, stopped when dropped (feature `test-server`).
//!
//! Where `nats-server` is not installed, [`NatsServer::start_or_skip`] says
//! so on the real standard error (visible in `cargo test`'s output) and
//! returns `None`, except under `CI`, where a missing server is a failure:
//! CI installs it (`apt-get install nats-server`).

use std::{
    io::Write,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running `nats-server`. It stops when dropped, and with the process
/// that started it, however that ends.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: Option<PathBuf>,
}

/// Where `nats-server` is: `DRS_NATS_SERVER`, the `PATH`, or Debian's
/// `/usr/sbin`.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DRS_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Reports a skipped test where `cargo test` shows it (its capture takes
/// only the print macros), or fails it under `CI`.
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl NatsServer {
    /// Starts a server, or reports `test` skipped (see the module docs).
    pub fn start_or_skip(test: &str) -> Option<Self> {
        match binary() {
            Some(_) => Some(Self::start(None)),
            None => {
                skip(test, "nats-server");
                None
            }
        }
    }

    /// [`start_or_skip`](Self::start_or_skip) with JetStream on, its store
    /// in a fresh directory.
    pub fn start_jetstream_or_skip(test: &str) -> Option<Self> {
        match binary() {
            Some(_) => {
                let dir = std::env::temp_dir().join(format!(
                    "drs-nats-js-{}-{}",
                    std::process::id(),
                    free_port()
                ));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("a JetStream directory");
                Some(Self::start(Some(dir)))
            }
            None => {
                skip(test, "nats-server");
                None
            }
        }
    }

    /// Starts a server (JetStream on when `store` is given). Panics if it
    /// is not installed or does not come up within 10 s.
    pub fn start(store: Option<PathBuf>) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                child: None,
                port,
                store: store.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("nats-server did not start: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = binary().ok_or("nats-server is not installed")?;
        // Run under a shell that kills the server (SIGKILL) when its
        // standard input closes: when we stop it, and when this process
        // ends in any way (a server in a static is never dropped).
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#""$0" "$@" & pid=$!; cat >/dev/null; kill -9 $pid; wait $pid"#)
            .arg(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(dir) = &self.store {
            cmd.arg("-js").arg("-sd").arg(dir);
        }
        let mut child = cmd
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

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory, if JetStream is on.
    pub fn store(&self) -> Option<&Path> {
        self.store.as_deref()
    }

    /// Stops the server (SIGKILL: nothing is flushed on the way out) and
    /// waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("nats-server did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.store {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
