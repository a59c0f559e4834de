//! Local sockets for drs: [`IpcListener`] for servers, [`IpcDialer`] (and
//! [`connect`]) for clients, framed like TCP (lines for text protocols,
//! length prefixes for binary ones).
//!
//! # Names
//!
//! A name is a string:
//!
//! - On Unix it is the **filesystem path** of a Unix domain socket, e.g.
//!   `/tmp/drs-demo.sock` (at most about 100 bytes, the limit of
//!   `sockaddr_un`). The socket file is removed when the listener is
//!   dropped. Access is governed by the file's permissions and those of its
//!   directory.
//! - On Windows it is a **named pipe**: either a full pipe path
//!   (`\\.\pipe\drs-demo`) or a bare name (`drs-demo`), which is placed in
//!   the pipe namespace.
//!
//! # Liveness
//!
//! Local sockets need no keepalive: when a process dies, the kernel closes
//! its sockets and the peer reads the end of the stream at once (its
//! pending calls fail with `Error::Closed`). A peer that is alive but stuck
//! is found by the connection's own deadlines (write stall, frame, idle).
//!
//! # Stale socket files
//!
//! A server that crashed leaves its socket file behind, and binding the same
//! path then fails with "address in use". [`IpcListener::bind`] checks: if
//! nothing answers on the old socket, the file is stale and is replaced; if a
//! server answers, binding fails with an error saying another server is
//! listening there; if the path is not a socket at all, binding fails and
//! nothing is deleted.
//!
//! ```no_run
//! # async fn f() -> Result<(), drs_core::Error> {
//! use drs_core::{HandlerResult, Server};
//! use drs_protocol_json::Json;
//! use drs_transport_ipc::IpcListener;
//!
//! let server = Server::new();
//! server.on("echo", |body: drs_core::Body| async move { HandlerResult::Ok(body) });
//! server.listen(IpcListener::bind("/tmp/drs-demo.sock")?, Json)?;
//!
//! let conn = drs_transport_ipc::connect("/tmp/drs-demo.sock", Json).await?;
//! let back: String = conn.call("echo", "hi").await?;
//! # Ok(()) }
//! ```

use std::{
    future::{ready, Ready},
    io,
    sync::atomic::{AtomicU64, Ordering},
};

use drs_core::{Client, Conn, ConnInfo, Dialer, Error, FrameSpec, FramedIo, Listener, Protocol};
use interprocess::local_socket::{
    tokio::{prelude::*, Stream},
    GenericFilePath, ListenerOptions, Name,
};

/// A local-socket connection framed for drs.
pub type IpcTransport = FramedIo<Stream>;

fn name_of(path: &str) -> io::Result<Name<'_>> {
    #[cfg(windows)]
    if !path.starts_with(r"\\.\pipe\") {
        use interprocess::local_socket::GenericNamespaced;
        return path.to_ns_name::<GenericNamespaced>();
    }
    path.to_fs_name::<GenericFilePath>()
}

/// Accepts local-socket connections for a [`drs_core::Server`].
#[derive(Debug)]
pub struct IpcListener {
    inner: interprocess::local_socket::tokio::Listener,
    path: String,
}

impl IpcListener {
    /// Listens on `path` (see the [crate docs](crate) for names and stale
    /// socket files). Must be called within a Tokio runtime.
    pub fn bind(path: impl Into<String>) -> io::Result<Self> {
        let path = path.into();
        #[cfg(unix)]
        reclaim_if_stale(&path)?;
        let inner = ListenerOptions::new()
            .name(name_of(&path)?)
            .reclaim_name(true)
            .create_tokio()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {path}: {e}")))?;
        Ok(Self { inner, path })
    }

    /// The path (or pipe name) listened on.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Removes a socket file that no server answers on; refuses to touch a live
/// socket or anything that is not a socket.
#[cfg(unix)]
fn reclaim_if_stale(path: &str) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{path} exists and is not a socket; remove it or choose another path"),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another server is listening on {path}"),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(
                path,
                "removing a stale socket file left by a server that is gone"
            );
            std::fs::remove_file(path)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot check the socket {path}: {e}"),
        )),
    }
}

static NEXT_PEER: AtomicU64 = AtomicU64::new(1);

fn info(path: &str) -> ConnInfo {
    let n = NEXT_PEER.fetch_add(1, Ordering::Relaxed);
    ConnInfo::new("ipc")
        .with_local_addr(path)
        .with_peer_addr(format!("{path}#{n}"))
}

impl Listener for IpcListener {
    type Io = IpcTransport;
    type Handshake = Ready<io::Result<(IpcTransport, ConnInfo)>>;

    async fn accept(&mut self, spec: FrameSpec) -> io::Result<Self::Handshake> {
        let stream = self.inner.accept().await?;
        Ok(ready(Ok((FramedIo::new(stream, spec), info(&self.path)))))
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.path.clone())
    }
}

/// Dials a local socket.
#[derive(Debug, Clone)]
pub struct IpcDialer {
    path: String,
}

impl IpcDialer {
    /// A dialer for `path`.
    pub fn new(path: impl Into<String>) -> Self {
        Self { path: path.into() }
    }
}

impl Dialer for IpcDialer {
    type Io = IpcTransport;

    async fn dial(&self, spec: FrameSpec) -> io::Result<(IpcTransport, ConnInfo)> {
        let stream = Stream::connect(name_of(&self.path)?).await?;
        Ok((FramedIo::new(stream, spec), info(&self.path)))
    }
}

/// Connects to a drs server on the local socket `path` with default settings.
pub async fn connect<P: Protocol>(path: impl Into<String>, protocol: P) -> Result<Conn, Error> {
    Client::new().connect(IpcDialer::new(path), protocol).await
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> String {
        let dir = std::env::temp_dir();
        format!(
            "{}/drs-ipc-{tag}-{}.sock",
            dir.display(),
            std::process::id()
        )
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_reclaimed() {
        let path = temp_path("stale");
        let _ = std::fs::remove_file(&path);
        // A socket file whose server is gone (std's listener does not unlink).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(std::fs::symlink_metadata(&path).is_ok());
        let listener = IpcListener::bind(&path).expect("the stale file is replaced");
        drop(listener);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "the listener removes its file"
        );
    }

    #[tokio::test]
    async fn a_live_server_is_not_displaced() {
        let path = temp_path("live");
        let _ = std::fs::remove_file(&path);
        let first = IpcListener::bind(&path).unwrap();
        let err = IpcListener::bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string().contains("another server is listening"),
            "{err}"
        );
        drop(first);
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let path = temp_path("file");
        std::fs::write(&path, b"precious").unwrap();
        let err = IpcListener::bind(&path).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn dialing_nothing_is_a_clear_error() {
        let err = IpcDialer::new(temp_path("nobody"))
            .dial(FrameSpec::new(drs_core::Framing::Lines))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            "{err}"
        );
    }
}

/// `ipc://PATH` (or a pipe name) for a [`Registry`](drs_core::Registry).
#[derive(Debug, Clone, Copy, Default)]
pub struct IpcScheme;

impl drs_core::Scheme for IpcScheme {
    fn names(&self) -> &'static [&'static str] {
        &["ipc"]
    }

    fn dial<'a>(
        &'a self,
        client: Client,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn Protocol>,
    ) -> drs_core::SchemeFuture<'a, Conn> {
        Box::pin(client.connect(IpcDialer::new(&url.target), protocol))
    }

    fn listen<'a>(
        &'a self,
        server: &'a drs_core::Server,
        url: &'a drs_core::Url,
        protocol: std::sync::Arc<dyn Protocol>,
    ) -> drs_core::SchemeFuture<'a, String> {
        let bound = IpcListener::bind(url.target.clone());
        drs_core::listen_bound(server, "ipc", async move { bound }, protocol)
    }

    fn open<'a>(
        &'a self,
        url: &'a drs_core::Url,
        spec: drs_core::FrameSpec,
    ) -> drs_core::SchemeFuture<'a, (Box<dyn drs_core::Transport>, drs_core::ConnInfo)> {
        drs_core::open_dialed(IpcDialer::new(&url.target), spec)
    }
}
