//! [`CloseReason`]: why a connection ended.

use std::{fmt, io, sync::Arc};

/// Why a connection ended, from [`Conn::close_reason`](crate::Conn::close_reason)
/// (for example in an `on_disconnect` hook).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed the connection (and was given the close linger to
    /// read what was owed to it).
    PeerClosed,
    /// [`Conn::close`](crate::Conn::close) was called.
    Closed,
    /// Every handle to the connection was dropped.
    Dropped,
    /// The server shut down.
    Shutdown,
    /// An `on_connect` hook refused the connection, with its reason.
    Rejected(String),
    /// The `on_connect` hooks did not finish within the admission deadline.
    AdmissionTimeout,
    /// Nothing in flight and nothing received for the idle timeout.
    Idle,
    /// A frame the peer started did not finish within the frame deadline.
    FrameTimeout,
    /// The peer stopped answering keepalive probes (WebSocket pings, TCP
    /// keepalive): it vanished without closing.
    KeepaliveFailed,
    /// The peer took nothing we wrote for the write-stall deadline, or a
    /// broadcast found its outbound queue full: a slow consumer.
    TooSlow,
    /// The server's memory budget was exceeded and this connection held
    /// the most.
    BudgetExceeded,
    /// The server was at its connection limit.
    TooManyConnections,
    /// The peer sent an oversize frame or too much garbage.
    BadPeer(String),
    /// The peer did not authenticate within the admission deadline.
    Unauthenticated,
    /// The transport failed.
    Io(Arc<io::Error>),
}

impl CloseReason {
    /// A short, stable name for logs and metrics: `peer_closed`, `idle`, …
    pub fn name(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Closed => "closed",
            CloseReason::Dropped => "dropped",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Rejected(_) => "rejected",
            CloseReason::AdmissionTimeout => "admission_timeout",
            CloseReason::Idle => "idle",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::KeepaliveFailed => "keepalive_failed",
            CloseReason::TooSlow => "too_slow",
            CloseReason::BudgetExceeded => "budget_exceeded",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::BadPeer(_) => "bad_peer",
            CloseReason::Unauthenticated => "unauthenticated",
            CloseReason::Io(_) => "io",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("the peer closed the connection"),
            CloseReason::Closed => f.write_str("closed locally"),
            CloseReason::Dropped => f.write_str("every handle was dropped"),
            CloseReason::Shutdown => f.write_str("the server shut down"),
            CloseReason::Rejected(why) => write!(f, "connection rejected: {why}"),
            CloseReason::AdmissionTimeout => f.write_str("admission deadline exceeded"),
            CloseReason::Idle => f.write_str("idle timeout"),
            CloseReason::FrameTimeout => f.write_str("frame deadline exceeded"),
            CloseReason::KeepaliveFailed => f.write_str("the peer stopped answering keepalives"),
            CloseReason::TooSlow => f.write_str("the peer is too slow to read what it is sent"),
            CloseReason::BudgetExceeded => f.write_str("the server's memory budget is exceeded"),
            CloseReason::TooManyConnections => f.write_str("the server is at its connection limit"),
            CloseReason::BadPeer(why) => write!(f, "bad peer: {why}"),
            CloseReason::Unauthenticated => {
                f.write_str("the peer did not authenticate within the deadline")
            }
            CloseReason::Io(e) => write!(f, "transport error: {e}"),
        }
    }
}

impl CloseReason {
    /// The reason for a transport error: keepalive failures (`TimedOut`,
    /// what WebSocket pings and TCP keepalive report) are told apart.
    pub(crate) fn from_io(e: io::Error) -> Self {
        if crate::budget::BudgetExceeded::find(&e) {
            return CloseReason::BudgetExceeded;
        }
        match e.kind() {
            io::ErrorKind::TimedOut => CloseReason::KeepaliveFailed,
            _ => CloseReason::Io(Arc::new(e)),
        }
    }
}
