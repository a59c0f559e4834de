//! [`ConnConfig`]: the settings of one connection.

use super::*;

/// Settings of a connection. `Default` gives the documented defaults.
///
/// ```
/// # use std::time::Duration;
/// let config = drs_core::ConnConfig::default()
///     .call_timeout(Duration::from_secs(2))
///     .max_in_flight(256);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnConfig {
    /// Timeout of a call unless the call sets its own. Default 5 s.
    pub call_timeout: Duration,
    /// Inbound commands served at once; past this the connection stops
    /// reading until one finishes. Default 1024.
    pub max_in_flight: usize,
    /// The largest frame sent or accepted. Default 8 MiB.
    pub max_frame_len: usize,
    /// Frames that may wait in the outbound queue. A `fire` or `call` waits
    /// for room; a broadcast finding the queue full disconnects the slow
    /// consumer. Default 1024.
    pub outbound_queue: usize,
    /// How long a closing connection may take to write out what is queued;
    /// also how long handlers may go on after the peer closed its side (a
    /// half-close), so that it still gets their replies. Default 1 s.
    pub close_linger: Duration,
    /// How long a server waits for a transport handshake (e.g. a WebSocket
    /// upgrade). Default 10 s.
    pub handshake_timeout: Duration,
    /// Bytes that may wait to be written to the peer (queued by handles,
    /// handlers and broadcasts). Past this a `fire` or `call` waits for
    /// room, the connection stops serving new commands, and a broadcast
    /// disconnects the connection as a slow consumer. Default 32 MiB.
    pub max_outbound: usize,
    /// Bytes of commands read but waiting to be served (behind admission
    /// hooks, or for an in-flight slot); past this the connection stops
    /// reading. Counted against the server's memory budget too.
    /// Default 16 MiB.
    pub max_buffered: usize,
    /// Closes a connection that has had nothing in flight (no call, no
    /// command, nothing to write) and received nothing for this long
    /// ([`CloseReason::Idle`]). Default: off.
    pub idle_timeout: Option<Duration>,
    /// A frame the peer has started must be finished within this
    /// ([`CloseReason::FrameTimeout`]); not counted while the connection
    /// itself has stopped reading. Default 30 s.
    pub frame_timeout: Option<Duration>,
    /// Servers: `on_connect` hooks must admit a connection within this
    /// ([`CloseReason::AdmissionTimeout`]). Default 10 s.
    pub admission_timeout: Duration,
    /// A peer that takes nothing we write for this long is disconnected
    /// ([`CloseReason::TooSlow`]). Default 30 s.
    pub write_stall_timeout: Option<Duration>,
    /// A deadline for every handler that does not finish on its first poll
    /// (per-action deadlines override it); past it the handler is stopped
    /// and the caller gets `drs.exception` "handler deadline exceeded".
    /// Default: none.
    pub handler_timeout: Option<Duration>,
    /// Items a streamed call ([`Conn::call_stream`]) lets the peer send
    /// ahead of the reader: what a stream that nobody reads holds at most.
    /// Default 64. A stream of small items moves about half a window per
    /// round trip, so the window bounds its rate: on loopback, 16 gave a
    /// third of what 64 gives (`drs-bench --only Stream`).
    pub stream_window: u32,
    /// Which actions this side may call or fire on the peer (a server's
    /// limit on what it asks of its clients, a client's of a server);
    /// others fail with [`Error::NotAllowed`] and are not sent. Default:
    /// none (all allowed). `drs-auth`'s outbound jail is one.
    pub outbound_check: Option<OutboundCheck>,
    /// Commands with a `delay` the peer may have held here at once; past
    /// it a delayed call is answered `drs.error` "too many delayed
    /// commands". Default 1024.
    pub max_delayed: usize,
    /// The longest `delay` accepted; longer is answered `drs.error`
    /// "delay exceeds N ms". Default 1 hour.
    pub max_delay: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            outbound_queue: 1024,
            close_linger: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            max_outbound: 32 * 1024 * 1024,
            max_buffered: 16 * 1024 * 1024,
            idle_timeout: None,
            frame_timeout: Some(Duration::from_secs(30)),
            admission_timeout: Duration::from_secs(10),
            write_stall_timeout: Some(Duration::from_secs(30)),
            handler_timeout: None,
            stream_window: 64,
            outbound_check: None,
            max_delayed: 1024,
            max_delay: Duration::from_secs(3600),
        }
    }
}

impl ConnConfig {
    /// Sets the default call timeout.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets the in-flight limit (at least 1).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Sets the maximum frame size.
    pub fn max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    /// Sets the outbound queue capacity (at least 1).
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.outbound_queue = frames.max(1);
        self
    }

    /// Sets how long a closing connection may take to flush.
    pub fn close_linger(mut self, linger: Duration) -> Self {
        self.close_linger = linger;
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the outbound byte bound (at least 1).
    pub fn max_outbound(mut self, bytes: usize) -> Self {
        self.max_outbound = bytes.max(1);
        self
    }

    /// Sets the bound on bytes of commands waiting to be served (at least 1).
    pub fn max_buffered(mut self, bytes: usize) -> Self {
        self.max_buffered = bytes.max(1);
        self
    }

    /// Sets the idle timeout (`None`: off).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the frame deadline (`None`: off).
    pub fn frame_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// Sets the admission deadline.
    pub fn admission_timeout(mut self, timeout: Duration) -> Self {
        self.admission_timeout = timeout;
        self
    }

    /// Sets the write-stall deadline (`None`: off).
    pub fn write_stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_stall_timeout = timeout;
        self
    }

    /// Sets the default handler deadline (`None`: none).
    pub fn handler_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// Sets the check on what this side may call or fire on the peer.
    pub fn outbound_check(mut self, check: Option<OutboundCheck>) -> Self {
        self.outbound_check = check;
        self
    }

    /// Sets how many delayed commands a peer may have held at once.
    pub fn max_delayed(mut self, commands: usize) -> Self {
        self.max_delayed = commands;
        self
    }

    /// Sets the longest `delay` a command may ask for.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the credit window of streamed calls (at least 1).
    pub fn stream_window(mut self, items: u32) -> Self {
        self.stream_window = items.max(1);
        self
    }

    pub(crate) fn frame_spec(&self, protocol: &dyn Protocol) -> FrameSpec {
        FrameSpec::new(protocol.framing()).max_frame_len(self.max_frame_len)
    }
}

/// A check on what this side sends, given the action
/// ([`ConnConfig::outbound_check`]): `false` fails the call or fire with
/// [`Error::NotAllowed`] before anything is sent.
#[derive(Clone)]
pub struct OutboundCheck(std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl OutboundCheck {
    /// A check of `allows`.
    pub fn new(allows: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(allows))
    }

    /// Whether `action` may be sent.
    pub fn allows(&self, action: &str) -> bool {
        (self.0)(action)
    }
}

impl std::fmt::Debug for OutboundCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboundCheck(..)")
    }
}
