//! The task that owns a connection's transport.
//!
//! One loop does everything for a connection, so a command costs no channel
//! hop and, when its handler finishes on first poll, no task spawn. Each
//! turn has four parts, each a method of its own:
//!
//! 1. **egress in** ([`pull_outbound`](Driver::pull_outbound)): frames queued
//!    by [`Conn`](super::Conn) handles, and replies of handlers that finished
//!    in their own tasks, join the outbound queue (a task's reply after every
//!    frame its handler queued before it);
//! 2. **in flight** ([`pump_waiting`](Driver::pump_waiting)): commands that
//!    waited (for admission, a free slot, or outbound room) are served;
//! 3. **egress out** ([`write`](Driver::write)): the outbound queue goes into
//!    the transport while it takes it;
//! 4. **ingress** ([`read`](Driver::read)): frames are read, up to a budget.
//!    Replies complete pending calls; a command is served at once when it
//!    can be (its handler polled once right here, its reply, if ready,
//!    encoded straight into the outbound queue; a handler that is not ready
//!    moves to its own task and into the in-flight table), or waits.
//!    Reading goes on while commands wait — so the end of the stream and
//!    replies to our own calls are still seen — until the waiting commands
//!    reach `max_buffered` bytes or `max_in_flight` commands.
//!
//! When nothing more can be done, the transport is flushed (one write for
//! every reply produced since the last flush) and the deadlines are checked
//! ([`poll_deadlines`](Driver::poll_deadlines)): idle, frame, write stall.
//!
//! This file is the loop. Each piece of per-connection state is a module
//! of its own, with its unit tests: [`in_flight`] (calls served in tasks,
//! by key), [`held`] (delayed commands), [`waiting`] (commands not yet
//! served), [`outbound`] (the outbound queue and reply encoding),
//! [`deadlines`], and [`admission`] (the gate). What the loop does with
//! them is in [`ingress`] (frames from the peer), [`dispatch`] (serving a
//! command), [`egress`] (frames from handles and tasks) and [`control`]
//! (close, drain, eviction, the gate's verdict, and ending).

use std::{
    collections::HashMap,
    future::{poll_fn, Future},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::{sync::mpsc, task::JoinSet, time::Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Instrument;

use super::Shared;
use crate::{
    body::DecodeError, budget::ReadMeter, close::CloseReason, frame::Inbound, router::Snapshot,
    sync::lock, text::Text, transport::Transport,
};

mod admission;
mod control;
mod deadlines;
mod dispatch;
mod egress;
mod held;
mod in_flight;
mod ingress;
mod outbound;
mod waiting;

pub(crate) use admission::Gate;
pub(crate) use outbound::encode_reply;

use admission::Admission;
use deadlines::Deadlines;
use held::Held;
use in_flight::InFlight;
use outbound::Outbound;
use waiting::Waiting;

/// Frames read per turn of the loop before writing again.
const READ_BUDGET: usize = 64;
/// Commands wait (rather than run) while this many frames wait to be written.
const OUTQ_HIGH: usize = 256;
/// Error messages sent back for bad input are cut to this many bytes.
const MAX_NOTICE: usize = 160;

type Token = Pin<Box<WaitForCancellationFutureOwned>>;

/// What a handler task gives back: its key and task number (to leave the
/// in-flight table) and its encoded reply.
type Done = (Option<(Text, u64)>, Option<Bytes>);

pub(crate) struct Driver<T> {
    io: T,
    shared: Arc<Shared>,
    routes: Snapshot,
    rx: mpsc::Receiver<Bytes>,
    rx_open: bool,
    tasks: JoinSet<Done>,
    in_flight: InFlight<dispatch::Task>,
    held: Held,
    waiting: Waiting,
    outq: Outbound,
    admission: Admission,
    deadlines: Deadlines,
    /// Written to the transport since the last flush.
    dirty: bool,
    /// False once the connection is ending.
    reading: bool,
    accept_commands: bool,
    /// The server's shutdown has begun (a forced close is then `Shutdown`).
    draining: bool,
    bad_frames: u32,
    bad_since: Option<tokio::time::Instant>,
    meter: ReadMeter,
    evicted: Token,
    drain: Option<Token>,
    /// Resolves when `close()` is called; `None` once it has.
    close: Option<Token>,
    /// Set once the connection is ending: the reason, reported when the
    /// outbound queue is written and the transport closed (or the linger ends).
    ending: Option<CloseReason>,
    /// Set when closing: stop waiting for the peer to take our last frames.
    linger: Option<Pin<Box<Sleep>>>,
    /// The server's observer, and this connection's handles to the
    /// probes of the routed actions it served.
    observer: Option<Arc<dyn crate::Observer>>,
    probes: HashMap<
        Box<str>,
        Arc<dyn crate::ActionObserver>,
        std::hash::BuildHasherDefault<crate::router::NameHasher>,
    >,
    /// Bytes and frames so far, published to `shared.io` per batch.
    io_totals: crate::Io,
    io_published: bool,
    /// What the peer last said before it may close, or showed it speaks.
    last_word: Option<control::LastWord>,
}

impl<T: Transport> Driver<T> {
    pub(super) fn new(
        io: T,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Bytes>,
        meter: ReadMeter,
    ) -> Self {
        let close = Some(Box::pin(shared.close.clone().cancelled_owned()));
        Self {
            io,
            routes: shared.router.snapshot(),
            shared,
            rx,
            rx_open: true,
            tasks: JoinSet::new(),
            in_flight: InFlight::new(),
            held: Held::new(meter.clone()),
            waiting: Waiting::new(meter.clone()),
            outq: Outbound::default(),
            admission: Admission::default(),
            deadlines: Deadlines::new(),
            dirty: false,
            reading: true,
            accept_commands: true,
            draining: false,
            bad_frames: 0,
            bad_since: None,
            evicted: Box::pin(meter.evicted().cancelled_owned()),
            meter,
            drain: None,
            close,
            ending: None,
            linger: None,
            observer: None,
            probes: HashMap::default(),
            io_totals: Default::default(),
            io_published: true,
            last_word: None,
        }
    }

    /// Runs the connection to its end.
    pub(crate) async fn run(mut self) -> CloseReason {
        let span = tracing::info_span!(
            "conn",
            id = self.shared.id,
            transport = self.shared.info.transport,
            peer = self.shared.info.peer_addr.as_deref().unwrap_or("-"),
        );
        let end = poll_fn(|cx| self.poll_run(cx))
            .instrument(span.clone())
            .await;
        // Closed (with its reason) before its pending calls fail: whoever
        // learns of the end from a failed call sees the connection closed.
        *lock(&self.shared.close_reason) = Some(end.clone());
        self.shared.io.publish(&self.io_totals);
        self.shared.closed.cancel();
        self.shared.pending.close();
        self.stop_handlers();
        self.release_waiting();
        // Handlers registered on this connection may hold handles to it
        // (a cycle through the router): let them go.
        self.shared.router.clear();
        let _enter = span.enter();
        tracing::debug!(reason = %end, "connection closed");
        end
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        self.poll_control(cx);
        loop {
            let mut progress = self.pull_outbound(cx);
            for (cmd, size) in self.held.poll_due(cx) {
                self.admit(cmd, size, cx);
                progress = true;
            }
            progress |= self.pump_waiting(cx);
            match self.write(cx) {
                Ok(p) => progress |= p,
                Err(end) => return Poll::Ready(end),
            }
            match self.read(cx) {
                Ok(p) => progress |= p,
                Err(end) => return Poll::Ready(end),
            }
            if progress {
                continue;
            }
            return self.settle(cx);
        }
    }

    /// In flight: serves the commands that waited, while there is room.
    fn pump_waiting(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.waiting.is_empty() && self.can_dispatch() {
            let Some(cmd) = self.waiting.pop() else {
                break;
            };
            self.dispatch(cmd, cx);
            progress = true;
        }
        progress
    }

    /// Egress out: writes what is queued while the transport takes it.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        let mut progress = false;
        while !self.outq.is_empty() {
            match Pin::new(&mut self.io).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let frame = self.outq.pop().expect("queue is not empty");
                    let len = frame.len();
                    if let Err(e) = Pin::new(&mut self.io).start_send(frame) {
                        return Err(CloseReason::from_io(e));
                    }
                    self.io_totals.bytes_out += len as u64;
                    self.io_totals.frames_out += 1;
                    self.io_published = false;
                    self.dirty = true;
                    self.deadlines.wrote();
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(CloseReason::from_io(e)),
                Poll::Pending => break,
            }
        }
        Ok(progress)
    }

    /// Ingress: reads and serves, up to a budget.
    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        let mut progress = false;
        let mut budget = READ_BUDGET;
        while budget > 0 && self.can_read() {
            budget -= 1;
            match Pin::new(&mut self.io).poll_next(cx) {
                Poll::Ready(Some(Ok(Inbound::Frame(frame)))) => {
                    progress = true;
                    self.deadlines.frame_read();
                    self.on_frame(frame, cx);
                }
                Poll::Ready(Some(Ok(Inbound::Bad(bad)))) => {
                    progress = true;
                    self.on_bad_frame(DecodeError::new(bad.reason));
                }
                Poll::Ready(Some(Ok(Inbound::Foreign(foreign)))) => {
                    progress = true;
                    self.on_foreign(foreign);
                }
                Poll::Ready(Some(Ok(Inbound::TooLarge(too_large)))) => {
                    progress = true;
                    tracing::warn!(limit = too_large.limit, "peer sent an oversize frame");
                    let message = too_large.to_string();
                    self.notice(&message);
                    self.begin_end(CloseReason::BadPeer(message), true);
                }
                Poll::Ready(Some(Err(e))) => {
                    progress = true;
                    match CloseReason::from_io(e) {
                        CloseReason::BudgetExceeded => self.evict(),
                        reason => return Err(reason),
                    }
                }
                Poll::Ready(None) => {
                    progress = true;
                    // The peer will send nothing more: stop reading (even
                    // when the connection is already ending, e.g. draining
                    // for a shutdown, which keeps reading; polling an
                    // ended stream again would spin) and fail our calls.
                    // It may still read (a half-close): its handlers get
                    // the close linger to finish and send their replies.
                    self.reading = false;
                    self.begin_end(CloseReason::PeerClosed, false);
                }
                Poll::Pending => break,
            }
        }
        if progress && self.shared.config.idle_timeout.is_some() {
            self.deadlines.received();
        }
        Ok(progress)
    }

    /// Nothing more to do right now: flush, release idle buffers, finish an
    /// ending connection, and watch the deadlines.
    fn settle(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if !self.io_published {
            self.io_published = true;
            self.shared.io.publish(&self.io_totals);
        }
        if let Some(bytes) = self.outq.changed() {
            self.shared.outbound.publish(bytes);
        }
        if self.dirty {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.dirty = false;
                    self.deadlines.wrote();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(CloseReason::from_io(e)),
                Poll::Pending => {}
            }
        }
        self.outq.release_idle();
        if self.ending.is_some() {
            if let Some(linger) = &mut self.linger {
                if linger.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(self.ending.take().expect("ending is set"));
                }
            }
            if self.tasks.is_empty() && self.outq.is_empty() && !self.dirty {
                return match Pin::new(&mut self.io).poll_close(cx) {
                    Poll::Ready(_) => Poll::Ready(self.ending.take().expect("ending is set")),
                    Poll::Pending => Poll::Pending,
                };
            }
            if self.linger.is_some() {
                return Poll::Pending;
            }
        }
        match self.poll_deadlines(cx) {
            Some(reason) => {
                self.begin_end(reason, true);
                // Let the notice (if any) go out within the linger.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Pending,
        }
    }

    /// Nothing in flight either way, nothing waiting, nothing to write.
    fn is_idle(&self) -> bool {
        self.tasks.is_empty()
            && self.waiting.is_empty()
            && self.held.is_empty()
            && self.outq.is_empty()
            && !self.dirty
            && self.shared.pending.len() == 0
            && !self.admission.is_pending()
    }

    fn can_read(&self) -> bool {
        self.reading
            && self.waiting.len() < self.shared.config.max_in_flight
            && self.waiting.bytes() < self.shared.config.max_buffered
    }

    /// Whether a command may be served now (or must wait).
    fn can_dispatch(&self) -> bool {
        !self.admission.is_pending()
            && self.tasks.len() - self.in_flight.stopped() < self.shared.config.max_in_flight
            && self.outq.len() < OUTQ_HIGH
            && self.outq.bytes() + self.shared.outbound.queued() < self.shared.outbound.limit()
    }
}
