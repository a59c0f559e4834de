//! An in-memory transport: frames over channels. Tests use it, and so does
//! anything that runs a server's actions in-process through its router and
//! layers, as a peer's commands run (e.g. the Cerbas worker of
//! drs-transport-redis).

use std::{
    future::{ready, Ready},
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::{
    frame::{FrameSpec, FrameTooLarge, Inbound, DEFAULT_MAX_FRAME_LEN},
    transport::{ConnInfo, Dialer, Listener},
};

/// Frames that may be in flight one way before the sender waits.
const CAPACITY: usize = 64;

/// One end of an in-memory connection. Dropping it is the peer vanishing.
#[derive(Debug)]
pub struct MemoryTransport {
    rx: mpsc::Receiver<Bytes>,
    tx: PollSender<Bytes>,
    max_frame_len: usize,
    failed: bool,
}

/// Two connected ends.
pub fn pair() -> (MemoryTransport, MemoryTransport) {
    let (atx, arx) = mpsc::channel(CAPACITY);
    let (btx, brx) = mpsc::channel(CAPACITY);
    let end = |rx, tx| MemoryTransport {
        rx,
        tx: PollSender::new(tx),
        max_frame_len: DEFAULT_MAX_FRAME_LEN,
        failed: false,
    };
    (end(arx, btx), end(brx, atx))
}

impl MemoryTransport {
    /// Sets the largest inbound frame accepted.
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max;
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the other end is gone")
}

impl Stream for MemoryTransport {
    type Item = io::Result<Inbound>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) if frame.len() > self.max_frame_len => {
                self.failed = true;
                Poll::Ready(Some(Ok(Inbound::TooLarge(FrameTooLarge {
                    limit: self.max_frame_len,
                }))))
            }
            other => other.map(|f| f.map(|frame| Ok(Inbound::Frame(frame)))),
        }
    }
}

impl Sink<Bytes> for MemoryTransport {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.poll_reserve(cx).map_err(|_| broken())
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        self.tx.send_item(frame).map_err(|_| broken())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// Accepts in-memory connections made by its [`MemoryDialer`]s.
#[derive(Debug)]
pub struct MemoryListener {
    rx: mpsc::Receiver<MemoryTransport>,
}

/// Opens in-memory connections to a [`MemoryListener`]. Clone it freely.
#[derive(Debug, Clone)]
pub struct MemoryDialer {
    tx: mpsc::Sender<MemoryTransport>,
}

/// A listener and a dialer that connects to it.
pub fn listener() -> (MemoryListener, MemoryDialer) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    (MemoryListener { rx }, MemoryDialer { tx })
}

static NEXT_PEER: AtomicU64 = AtomicU64::new(1);

impl Listener for MemoryListener {
    type Io = MemoryTransport;
    type Handshake = Ready<io::Result<(MemoryTransport, ConnInfo)>>;

    async fn accept(&mut self, spec: FrameSpec) -> io::Result<Self::Handshake> {
        let Some(mut io) = self.rx.recv().await else {
            // No dialer is left: no connection will ever come.
            return std::future::pending().await;
        };
        io.set_max_frame_len(spec.max_frame_len);
        let peer = format!("memory-{}", NEXT_PEER.fetch_add(1, Ordering::Relaxed));
        let info = ConnInfo::new("memory")
            .with_peer_addr(peer)
            .with_local_addr("memory");
        Ok(ready(Ok((io, info))))
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok("memory".to_string())
    }
}

impl Dialer for MemoryDialer {
    type Io = MemoryTransport;

    async fn dial(&self, spec: FrameSpec) -> io::Result<(MemoryTransport, ConnInfo)> {
        let (mut ours, theirs) = pair();
        ours.set_max_frame_len(spec.max_frame_len);
        self.tx.send(theirs).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the memory listener is gone",
            )
        })?;
        Ok((ours, ConnInfo::new("memory").with_peer_addr("memory")))
    }
}
