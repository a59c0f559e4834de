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

use std::{
    collections::{HashMap, VecDeque},
    future::{poll_fn, Future},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use tokio::{
    sync::mpsc,
    task::{AbortHandle, JoinSet},
    time::{Instant, Sleep},
};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Instrument;

use super::{encode_frame, ItemFate, Reply, ReplyKind, Shared};
use crate::{
    budget::ReadMeter,
    close::CloseReason,
    codec::{BadFrame, FrameTooLarge},
    command::{
        is_reply_action, Command, MessageBody, CANCEL, CANCELLED, ERROR, EXCEPTION, RESPONSE,
        SHUTTING_DOWN,
    },
    error::Error,
    handler::{Msg, Outcome},
    protocol::{encode_into, DecodeError, OutBody, Outgoing},
    router::Snapshot,
    sync::lock,
    text::Text,
    transport::Transport,
};

/// Frames read per turn of the loop before writing again.
const READ_BUDGET: usize = 64;
/// Commands wait (rather than run) while this many frames wait to be written.
const OUTQ_HIGH: usize = 256;
/// Undecodable frames within [`BAD_WINDOW`] after which the peer is disconnected.
const MAX_BAD_FRAMES: u32 = 32;
/// The window in which bad frames are counted.
const BAD_WINDOW: Duration = Duration::from_secs(10);
/// Error messages sent back for bad input are cut to this many bytes.
const MAX_NOTICE: usize = 160;
/// The message of a handler stopped by its deadline.
pub(crate) const DEADLINE_EXCEEDED: &str = "handler deadline exceeded";

/// Decides, at an admission gate, whether a connection may proceed.
pub(crate) type Gate = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

type Token = Pin<Box<WaitForCancellationFutureOwned>>;

/// One inbound call being served in a task of its own: what refuses a
/// duplicate key, stops the handler on `drs.cancel`, and takes the
/// caller's stream credit (`drs.more`).
struct InFlight {
    abort: AbortHandle,
    /// The command, for its cancellation token and stream credit.
    msg: Msg,
    /// Which task serves it: a task cancelled meanwhile may still finish,
    /// and its key be reused by a new call.
    seq: u64,
}

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
    /// Inbound calls served in tasks, by key: the one home of per-key state.
    in_flight: HashMap<Text, InFlight>,
    /// Numbers the tasks of keyed commands.
    next_seq: u64,
    /// Tasks stopped by `drs.cancel` and not yet reaped: they no longer
    /// count against the in-flight limit.
    cancelled: usize,
    outq: VecDeque<Bytes>,
    /// Bytes in `outq`, and as last published to the shared count.
    outq_bytes: usize,
    published: usize,
    /// Replies produced in the loop are encoded here, then split off.
    wbuf: BytesMut,
    /// Written to the transport since the last flush.
    dirty: bool,
    /// False once the connection is ending.
    reading: bool,
    accept_commands: bool,
    /// The server's shutdown has begun (a forced close is then `Shutdown`).
    draining: bool,
    bad_frames: u32,
    bad_since: Option<Instant>,
    gate: Option<Gate>,
    admission: Option<Pin<Box<Sleep>>>,
    /// Commands read and not yet served, with their frame sizes.
    waiting: VecDeque<(Command, usize)>,
    waiting_bytes: usize,
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
    /// Deadlines, checked lazily by one timer.
    last_rx: Instant,
    frame_since: Option<Instant>,
    frames_seen: bool,
    stall_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
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
    /// Commands with a `delay`, held until due: by due time (and arrival,
    /// to keep their order), with their frame sizes; and the keys of the
    /// held calls, for `drs.cancel`.
    held: std::collections::BTreeMap<(Instant, u64), (Command, usize)>,
    held_keys: HashMap<Text, (Instant, u64)>,
    held_seq: u64,
    held_timer: Option<Pin<Box<Sleep>>>,
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
            in_flight: HashMap::new(),
            next_seq: 0,
            cancelled: 0,
            outq: VecDeque::new(),
            outq_bytes: 0,
            published: 0,
            wbuf: BytesMut::new(),
            dirty: false,
            reading: true,
            accept_commands: true,
            draining: false,
            bad_frames: 0,
            bad_since: None,
            gate: None,
            admission: None,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            evicted: Box::pin(meter.evicted().cancelled_owned()),
            meter,
            drain: None,
            close,
            ending: None,
            linger: None,
            last_rx: Instant::now(),
            frame_since: None,
            frames_seen: false,
            stall_since: None,
            timer: None,
            observer: None,
            probes: HashMap::default(),
            io_totals: Default::default(),
            io_published: true,
            held: Default::default(),
            held_keys: HashMap::new(),
            held_seq: 0,
            held_timer: None,
        }
    }

    /// Holds a command with a `delay` until it is due, within the
    /// connection's bounds; a call past them is answered at once.
    fn hold(&mut self, cmd: Command, size: usize, delay_ms: u32) {
        let config = &self.shared.config;
        let delay = Duration::from_millis(u64::from(delay_ms));
        let duplicate = cmd
            .key
            .as_ref()
            .filter(|k| self.held_keys.contains_key(*k) || self.in_flight.contains_key(*k));
        let refusal = if delay > config.max_delay {
            Some(format!("delay exceeds {} ms", config.max_delay.as_millis()))
        } else if let Some(key) = duplicate {
            Some(format!("duplicate key in flight: {key}"))
        } else if self.held.len() >= config.max_delayed {
            Some(format!(
                "too many delayed commands (at most {})",
                config.max_delayed
            ))
        } else {
            None
        };
        if let Some(mut message) = refusal {
            truncate(&mut message, MAX_NOTICE);
            if let Some(key) = &cmd.key {
                self.push_reply(key, &Outcome::Error(message));
            } else {
                tracing::debug!(action = %cmd.action, "delayed fire dropped: {message}");
            }
            return;
        }
        self.held_seq += 1;
        let slot = (Instant::now() + delay, self.held_seq);
        if let Some(key) = &cmd.key {
            self.held_keys.insert(key.clone(), slot);
        }
        self.meter.add_waiting(size);
        self.held.insert(slot, (cmd, size));
        self.arm_held_timer();
    }

    /// Points the held-command timer at the earliest due one.
    fn arm_held_timer(&mut self) {
        match self.held.keys().next() {
            Some((at, _)) => match &mut self.held_timer {
                Some(timer) => timer.as_mut().reset(*at),
                None => self.held_timer = Some(Box::pin(tokio::time::sleep_until(*at))),
            },
            None => self.held_timer = None,
        }
    }

    /// Serves the held commands that are due, in order.
    fn release_held(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timer) = &mut self.held_timer else {
            return false;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let now = Instant::now();
        let mut released = false;
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (cmd, size) = entry.remove();
            released = true;
            self.meter.sub_waiting(size);
            if let Some(key) = &cmd.key {
                self.held_keys.remove(key);
            }
            self.admit(cmd, size, cx);
        }
        self.arm_held_timer();
        released
    }

    /// Drops every held command (the connection is ending), or refuses
    /// them (a shutdown).
    fn drop_held(&mut self, refuse: bool) {
        for (_, (cmd, size)) in std::mem::take(&mut self.held) {
            self.meter.sub_waiting(size);
            if refuse {
                self.refuse_draining(&cmd);
            }
        }
        self.held_keys.clear();
        self.held_timer = None;
    }

    /// Reports the commands this connection serves to `observer`.
    pub(crate) fn set_observer(&mut self, observer: Arc<dyn crate::Observer>) {
        self.observer = Some(observer);
    }

    /// The probe of `action`, if the server is observed; kept for routed
    /// actions (at most `MAX_PROBES`: a peer cannot grow the table).
    fn probe(&mut self, action: &str) -> Option<Arc<dyn crate::ActionObserver>> {
        const MAX_PROBES: usize = 1024;
        let observer = self.observer.as_ref()?;
        if let Some(probe) = self.probes.get(action) {
            return Some(probe.clone());
        }
        let routed = self.routes.has_route(action);
        let probe = observer.action(action, routed);
        if routed && self.probes.len() < MAX_PROBES {
            self.probes.insert(action.into(), probe.clone());
        }
        Some(probe)
    }

    /// Holds commands until `gate` resolves, for at most the admission
    /// deadline; on `Err(reason)` the peer gets a keyless `drs.error` with
    /// the reason and is disconnected.
    pub(crate) fn set_gate(&mut self, gate: Gate) {
        self.gate = Some(gate);
        let deadline = self.shared.config.admission_timeout;
        self.admission = Some(Box::pin(tokio::time::sleep(deadline)));
    }

    /// When `token` is cancelled the connection stops taking new commands
    /// (answering them with `drs.error`), lets running handlers finish, then closes.
    pub(crate) fn set_drain(&mut self, token: tokio_util::sync::CancellationToken) {
        self.drain = Some(Box::pin(token.cancelled_owned()));
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

    /// Starts ending the connection for `reason`: stop reading, fail pending
    /// calls, stop handlers now (or, if they may finish, when the close
    /// linger ends), and close once what is queued is written.
    fn begin_end(&mut self, reason: CloseReason, stop_handlers: bool) {
        if self.ending.is_some() {
            return;
        }
        self.reading = false;
        self.gate = None;
        self.admission = None;
        self.release_waiting();
        self.shared.pending.close();
        if stop_handlers {
            self.stop_handlers();
        }
        // Whatever is left after the linger is cut off: nothing waits on a
        // peer that is gone, or on a handler that never ends.
        let linger = self.shared.config.close_linger;
        self.linger = Some(Box::pin(tokio::time::sleep(linger)));
        self.ending = Some(reason);
    }

    /// Stops every running handler, cancelling the tokens of those that
    /// answer calls.
    fn stop_handlers(&mut self) {
        self.tasks.abort_all();
        for (_, call) in self.in_flight.drain() {
            call.msg.cancel();
        }
        self.cancelled = 0;
    }

    /// The memory budget chose this connection: say so, and end it.
    fn evict(&mut self) {
        if self.ending.is_none() {
            self.notice("the server's memory budget is exceeded; disconnecting");
            self.begin_end(CloseReason::BudgetExceeded, true);
        }
    }

    fn release_waiting(&mut self) {
        self.drop_held(false);
        if self.waiting_bytes > 0 {
            self.meter.sub_waiting(self.waiting_bytes);
        }
        self.waiting.clear();
        self.waiting_bytes = 0;
    }

    /// Requests to close or drain, the memory budget, and the admission
    /// gate: they change rarely, so they are looked at once per wake-up,
    /// not on every turn.
    fn poll_control(&mut self, cx: &mut Context<'_>) {
        if self
            .close
            .as_mut()
            .is_some_and(|c| c.as_mut().poll(cx).is_ready())
        {
            self.close = None;
            // Frames queued before close() was called still go out.
            self.drain_handles();
            let requested = lock(&self.shared.close_reason).take();
            let reason = requested.unwrap_or(if self.draining {
                CloseReason::Shutdown
            } else {
                CloseReason::Closed
            });
            // A close request overrides a gentler ending already under way.
            self.ending = None;
            self.begin_end(reason, true);
        }
        if self.evicted.as_mut().poll(cx).is_ready() {
            self.evict();
        }
        if let Some(drain) = &mut self.drain {
            if drain.as_mut().poll(cx).is_ready() {
                self.drain = None;
                self.accept_commands = false;
                self.draining = true;
                if self.gate.take().is_some() {
                    self.begin_end(CloseReason::Shutdown, true);
                } else {
                    // Commands not yet started are refused, like new ones.
                    self.drop_held(true);
                    while let Some((cmd, n)) = self.waiting.pop_front() {
                        self.meter.sub_waiting(n);
                        self.waiting_bytes -= n;
                        self.refuse_draining(&cmd);
                    }
                    // Keep reading (replies to our own calls must still
                    // arrive) but refuse new commands; close once handlers
                    // are done.
                    if self.ending.is_none() {
                        self.ending = Some(CloseReason::Shutdown);
                    }
                }
            }
        }
        if let Some(gate) = &mut self.gate {
            let verdict = match gate.as_mut().poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => {
                    let late = self
                        .admission
                        .as_mut()
                        .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                    late.then(|| Err(String::new()))
                }
            };
            match verdict {
                Some(Ok(())) => {
                    self.gate = None;
                    self.admission = None;
                }
                Some(Err(reason)) if reason.is_empty() => {
                    self.gate = None;
                    tracing::info!("admission deadline exceeded");
                    self.notice("connection rejected: admission deadline exceeded");
                    self.begin_end(CloseReason::AdmissionTimeout, true);
                }
                Some(Err(reason)) => {
                    self.gate = None;
                    tracing::info!(%reason, "connection rejected");
                    self.notice(&format!("connection rejected: {reason}"));
                    self.begin_end(CloseReason::Rejected(reason), true);
                }
                None => {}
            }
        }
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        self.poll_control(cx);
        loop {
            let mut progress = self.pull_outbound(cx);
            progress |= self.release_held(cx);
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

    /// Egress in: frames from handles and from finished handler tasks.
    fn pull_outbound(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.rx_open && self.outq.len() < OUTQ_HIGH {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    self.take_handle_frame(frame);
                    progress = true;
                }
                Poll::Ready(None) => {
                    self.rx_open = false;
                    self.begin_end(CloseReason::Dropped, true);
                    progress = true;
                }
                Poll::Pending => break,
            }
        }
        while !self.tasks.is_empty() {
            let Poll::Ready(Some(done)) = self.tasks.poll_join_next(cx) else {
                break;
            };
            progress = true;
            match done {
                Ok((call, frame)) => {
                    if let Some((key, seq)) = call {
                        if self.in_flight.get(&key).is_some_and(|c| c.seq == seq) {
                            self.in_flight.remove(&key);
                        } else {
                            // Cancelled, and answered so, as it finished.
                            self.cancelled = self.cancelled.saturating_sub(1);
                            continue;
                        }
                    }
                    if let Some(frame) = frame {
                        // Frames the handler queued before it returned go first.
                        self.drain_handles();
                        self.queue(frame);
                    }
                }
                Err(e) if e.is_cancelled() => {
                    self.cancelled = self.cancelled.saturating_sub(1);
                }
                Err(_) => {}
            }
        }
        progress
    }

    /// Moves every frame queued by handles to the outbound queue.
    fn drain_handles(&mut self) {
        while self.rx_open {
            match self.rx.try_recv() {
                Ok(frame) => self.take_handle_frame(frame),
                Err(_) => break,
            }
        }
    }

    /// A frame from a handle leaves the shared count for the driver's own.
    fn take_handle_frame(&mut self, frame: Bytes) {
        self.shared.outbound.sub(frame.len());
        self.queue(frame);
    }

    /// Appends a frame to the outbound queue, counting its bytes.
    fn queue(&mut self, frame: Bytes) {
        self.outq_bytes += frame.len();
        self.outq.push_back(frame);
    }

    /// In flight: serves the commands that waited, while there is room.
    fn pump_waiting(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.waiting.is_empty() && self.can_dispatch() {
            let Some((cmd, n)) = self.waiting.pop_front() else {
                break;
            };
            self.meter.sub_waiting(n);
            self.waiting_bytes -= n;
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
                    let frame = self.outq.pop_front().expect("queue is not empty");
                    let len = frame.len();
                    if let Err(e) = Pin::new(&mut self.io).start_send(frame) {
                        return Err(CloseReason::from_io(e));
                    }
                    self.outq_bytes -= len;
                    self.io_totals.bytes_out += len as u64;
                    self.io_totals.frames_out += 1;
                    self.io_published = false;
                    self.dirty = true;
                    self.stall_since = None;
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
                Poll::Ready(Some(Ok(frame))) => {
                    progress = true;
                    self.frames_seen = true;
                    self.on_frame(frame, cx);
                }
                Poll::Ready(Some(Err(e))) => {
                    progress = true;
                    if let Some(bad) = BadFrame::find(&e) {
                        let reason = bad.reason.clone();
                        self.on_bad_frame(DecodeError::new(reason));
                    } else if let Some(too_large) = FrameTooLarge::find(&e) {
                        tracing::warn!(limit = too_large.limit, "peer sent an oversize frame");
                        let message = too_large.to_string();
                        self.notice(&message);
                        self.begin_end(CloseReason::BadPeer(message), true);
                    } else {
                        match CloseReason::from_io(e) {
                            CloseReason::BudgetExceeded => self.evict(),
                            reason => return Err(reason),
                        }
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
            self.last_rx = Instant::now();
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
        if self.outq_bytes != self.published {
            self.published = self.outq_bytes;
            self.shared.outbound.publish(self.published);
        }
        if self.dirty {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.dirty = false;
                    self.stall_since = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(CloseReason::from_io(e)),
                Poll::Pending => {}
            }
        }
        if self.outq.is_empty() && self.wbuf.capacity() > 0 {
            // Idle: hold no reply buffer until there is a reply to write
            // (one allocation per batch of replies, not per reply).
            self.wbuf = BytesMut::new();
        }
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

    /// The idle timeout, the frame deadline and the write-stall deadline,
    /// with one timer that is never dropped and only moved when it must
    /// fire earlier: per wake-up the hot path sets flags and, when a
    /// deadline starts, reads the clock once.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Option<CloseReason> {
        let config = &self.shared.config;
        // A frame has started and not finished, while we are reading. When
        // frames completed meanwhile, the one under way is a new frame: its
        // deadline restarts when the timer next fires.
        match config.frame_timeout {
            Some(_) if self.can_read() && self.meter.partial() > 0 => {
                if self.frame_since.is_none() {
                    self.frame_since = Some(Instant::now());
                    self.frames_seen = false;
                }
            }
            _ => {
                self.frame_since = None;
                self.frames_seen = false;
            }
        }
        // Output waits and the transport takes none of it.
        if config.write_stall_timeout.is_some() && (self.dirty || !self.outq.is_empty()) {
            self.stall_since.get_or_insert_with(Instant::now);
        } else {
            self.stall_since = None;
        }
        loop {
            let frame = self
                .frame_since
                .zip(config.frame_timeout)
                .map(|(s, d)| s + d);
            let stall = self
                .stall_since
                .zip(config.write_stall_timeout)
                .map(|(s, d)| s + d);
            let idle = config
                .idle_timeout
                .filter(|_| self.is_idle())
                .map(|d| self.last_rx + d);
            // No deadline: the timer, if any, is left as it is (it wakes us
            // at most once more, for nothing).
            let next = [frame, stall, idle].into_iter().flatten().min()?;
            match &mut self.timer {
                Some(t) if t.deadline() <= next => {}
                Some(t) => t.as_mut().reset(next),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(next))),
            }
            let timer = self.timer.as_mut().expect("timer is set");
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if frame.is_some_and(|d| d <= now) {
                if std::mem::take(&mut self.frames_seen) {
                    // Frames finished since this deadline started.
                    self.frame_since = Some(now);
                    continue;
                }
                tracing::info!("frame deadline exceeded");
                self.notice("frame deadline exceeded; disconnecting");
                return Some(CloseReason::FrameTimeout);
            }
            if stall.is_some_and(|d| d <= now) {
                tracing::info!("the peer takes nothing we write; disconnecting");
                return Some(CloseReason::TooSlow);
            }
            if idle.is_some_and(|d| d <= now) {
                tracing::debug!("idle timeout");
                return Some(CloseReason::Idle);
            }
            // Fired for a deadline that moved: set it again.
            timer.as_mut().reset(next.max(now));
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
            && self.gate.is_none()
    }

    fn can_read(&self) -> bool {
        self.reading
            && self.waiting.len() < self.shared.config.max_in_flight
            && self.waiting_bytes < self.shared.config.max_buffered
    }

    /// Whether a command may be served now (or must wait).
    fn can_dispatch(&self) -> bool {
        self.gate.is_none()
            && self.tasks.len() - self.cancelled < self.shared.config.max_in_flight
            && self.outq.len() < OUTQ_HIGH
            && self.outq_bytes + self.shared.outbound.queued() < self.shared.outbound.limit()
    }

    fn on_frame(&mut self, frame: Bytes, cx: &mut Context<'_>) {
        let size = frame.len();
        self.io_totals.bytes_in += size as u64;
        self.io_totals.frames_in += 1;
        self.io_published = false;
        let cmd = match self.shared.protocol.decode(frame) {
            Ok(cmd) => cmd,
            Err(e) => return self.on_bad_frame(e),
        };
        if let Some(control) = Control::of(&cmd.action) {
            return match control {
                Control::Reply => self.on_reply(cmd),
                Control::Next => self.on_item(cmd),
                Control::More => self.on_more(cmd),
                Control::Cancel => self.on_cancel(cmd),
            };
        }
        match cmd.delay.filter(|ms| *ms > 0) {
            Some(ms) if self.accept_commands => self.hold(cmd, size, ms),
            _ => self.admit(cmd, size, cx),
        }
    }

    /// A command to serve now: refused while draining, served if there is
    /// room, else queued behind the others.
    fn admit(&mut self, cmd: Command, size: usize, cx: &mut Context<'_>) {
        if !self.accept_commands {
            self.refuse_draining(&cmd);
        } else if self.waiting.is_empty() && self.can_dispatch() {
            self.dispatch(cmd, cx);
        } else {
            self.meter.add_waiting(size);
            self.waiting_bytes += size;
            self.waiting.push_back((cmd, size));
        }
    }

    fn refuse_draining(&mut self, cmd: &Command) {
        if let Some(key) = &cmd.key {
            self.push_reply(key, &Outcome::Error(SHUTTING_DOWN.to_owned()));
        }
    }

    /// A frame that did not decode. A broken call (its key and a non-reply
    /// action could be read) gets a keyed `drs.error`; a broken reply to
    /// one of our calls fails that call; anything else gets a keyless
    /// `drs.error`. The peer is disconnected past [`MAX_BAD_FRAMES`] within
    /// [`BAD_WINDOW`].
    fn on_bad_frame(&mut self, e: DecodeError) {
        let now = Instant::now();
        match self.bad_since {
            Some(since) if now.duration_since(since) < BAD_WINDOW => self.bad_frames += 1,
            _ => {
                self.bad_since = Some(now);
                self.bad_frames = 1;
            }
        }
        tracing::warn!(error = %e, "invalid frame");
        let mut message = format!("invalid command: {}", e.message());
        truncate(&mut message, MAX_NOTICE);
        match (e.key(), e.action()) {
            (Some(key), Some(action)) if is_reply_action(action) => {
                let failed =
                    Error::Decode(DecodeError::new(format!("invalid reply: {}", e.message())));
                if !self.shared.pending.fail(key, failed) {
                    tracing::debug!(key, "invalid reply for no pending call dropped");
                }
            }
            (Some(key), Some(_)) => self.push_reply(key, &Outcome::Error(message)),
            (Some(key), None) if e.is_whole() => self.push_reply(key, &Outcome::Error(message)),
            _ => self.notice(&message),
        }
        if self.bad_frames >= MAX_BAD_FRAMES {
            let why = format!("{MAX_BAD_FRAMES} invalid commands within {BAD_WINDOW:?}");
            self.notice(&format!("too many invalid commands ({why}); disconnecting"));
            self.begin_end(CloseReason::BadPeer(why), true);
        }
    }

    fn on_reply(&mut self, cmd: Command) {
        let kind = ReplyKind::of(&cmd.action);
        match cmd.key {
            Some(key) => {
                let reply = Reply {
                    kind,
                    body: cmd.body,
                };
                if !self.shared.pending.complete(&key, reply) {
                    tracing::debug!(%key, "reply for no pending call dropped");
                }
            }
            None if kind != ReplyKind::Response => {
                let err = super::remote_error(&cmd.body);
                tracing::warn!(action = %cmd.action, message = %err, "peer reported an error");
            }
            None => tracing::debug!("reply without key dropped"),
        }
    }

    /// `drs.next`: an item of a stream we called for.
    fn on_item(&mut self, cmd: Command) {
        let Some(key) = cmd.key else {
            return tracing::debug!("stream item without key dropped");
        };
        match self.shared.pending.push_item(&key, cmd.body) {
            ItemFate::Taken => {}
            ItemFate::NoCall => tracing::debug!(%key, "stream item for no pending call dropped"),
            ItemFate::NotStream => {
                tracing::debug!(%key, "stream item for a call that asked for none dropped");
            }
            ItemFate::OverCredit => {
                tracing::warn!(%key, "the peer sent stream items beyond its credit");
                self.control(&key, CANCEL, OutBody::Absent);
            }
        }
    }

    /// `drs.more`: credit for a stream we serve. Credit for a call that is
    /// not running is ignored; a body that is not a positive integer is bad
    /// input (answered without a key: the call goes on).
    fn on_more(&mut self, cmd: Command) {
        let Some(key) = &cmd.key else {
            return tracing::debug!("credit without key dropped");
        };
        match cmd.body.deserialize::<u64>() {
            Ok(n) if n > 0 => {
                if let Some(call) = self.in_flight.get(key) {
                    call.msg.grant(n);
                }
            }
            _ => self.on_bad_frame(DecodeError::new(
                "`drs.more` needs a positive integer body (items granted)",
            )),
        }
    }

    /// `drs.cancel`: stops the handler serving the key (or drops the
    /// command if it has not started) and ends the call with `drs.error`
    /// "cancelled". A cancel for a key that is not running is ignored.
    fn on_cancel(&mut self, cmd: Command) {
        let Some(key) = &cmd.key else {
            return tracing::debug!("cancel without key dropped");
        };
        if let Some(call) = self.in_flight.remove(key) {
            call.abort.abort();
            call.msg.cancel();
            self.cancelled += 1;
        } else if let Some(slot) = self.held_keys.remove(key) {
            if let Some((_, size)) = self.held.remove(&slot) {
                self.meter.sub_waiting(size);
            }
            self.arm_held_timer();
        } else if let Some(at) = self
            .waiting
            .iter()
            .position(|(c, _)| c.key.as_ref() == Some(key))
        {
            let (_, n) = self.waiting.remove(at).expect("position is in the queue");
            self.meter.sub_waiting(n);
            self.waiting_bytes -= n;
        } else {
            return tracing::debug!(%key, "cancel for no running call ignored");
        }
        tracing::debug!(%key, "call cancelled");
        self.push_reply(key, &Outcome::Error(CANCELLED.to_owned()));
    }

    /// Queues a frame of the call machinery for `key`.
    fn control(&mut self, key: &str, action: &str, body: OutBody<'_>) {
        match encode_frame(
            &*self.shared.protocol,
            self.shared.config.max_frame_len,
            &Outgoing::new(action).key(Some(key)).body(body),
        ) {
            Ok(frame) => self.queue(frame),
            Err(e) => tracing::error!(error = %e, "could not encode {action}"),
        }
    }

    fn dispatch(&mut self, cmd: Command, cx: &mut Context<'_>) {
        if let Some(key) = &cmd.key {
            if !self.in_flight.is_empty() && self.in_flight.contains_key(key) {
                let mut message = format!("duplicate key in flight: {key}");
                truncate(&mut message, MAX_NOTICE);
                return self.push_reply(key, &Outcome::Error(message));
            }
        }
        if !self.shared.router.is_current(&self.routes) {
            self.routes = self.shared.router.snapshot();
        }
        let msg = Msg::new(self.shared.clone(), cmd);
        let counters = self.probe(msg.action());
        let started = counters.as_ref().map(|_| std::time::Instant::now());
        // Only when someone listens: building a span costs even when it is
        // discarded (e.g. with tracing's `log` feature on).
        let span = if tracing::span_enabled!(tracing::Level::DEBUG) {
            tracing::debug_span!("command", action = msg.action(), key = msg.key())
        } else {
            tracing::Span::none()
        };
        let mut fut = None;
        let first = {
            let _enter = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                fut.insert(self.routes.serve(msg.clone())).as_mut().poll(cx)
            }))
        };
        match first {
            Ok(Poll::Ready(outcome)) => {
                log_outcome(&msg, &outcome);
                if let (Some(counters), Some(start)) = (&counters, started) {
                    crate::observe::Probe::at_once(&**counters, start, &outcome);
                }
                if let Some(key) = msg.key() {
                    self.push_reply(key, &outcome);
                }
            }
            Ok(Poll::Pending) => {
                let probe = counters
                    .zip(started)
                    .map(|(c, start)| crate::observe::Probe::in_flight(c, start));
                let fut = fut.expect("the handler was polled");
                let limit = self
                    .routes
                    .timeout(msg.action())
                    .or(self.shared.config.handler_timeout);
                let shared = self.shared.clone();
                let key = msg.command().key.clone();
                self.next_seq += 1;
                let seq = self.next_seq;
                let task_key = key.clone().map(|k| (k, seq));
                let in_flight_msg = key.is_some().then(|| msg.clone());
                let task = async move {
                    let run = AssertUnwindSafe(fut).catch_unwind();
                    let outcome = match limit {
                        None => run.await.unwrap_or_else(Outcome::from_panic),
                        Some(limit) => match tokio::time::timeout(limit, run).await {
                            Ok(done) => done.unwrap_or_else(Outcome::from_panic),
                            Err(_) => {
                                msg.cancel();
                                Outcome::Exception(DEADLINE_EXCEEDED.to_owned())
                            }
                        },
                    };
                    log_outcome(&msg, &outcome);
                    if let Some(probe) = probe {
                        probe.finish(&outcome);
                    }
                    let frame = msg.key().map(|key| {
                        let mut buf = BytesMut::with_capacity(128);
                        encode_reply(&shared, key, &outcome, &mut buf);
                        buf.freeze()
                    });
                    (task_key, frame)
                };
                let abort = self.tasks.spawn(task.instrument(span));
                if let (Some(key), Some(msg)) = (key, in_flight_msg) {
                    self.in_flight.insert(key, InFlight { abort, msg, seq });
                }
            }
            Err(panic) => {
                let outcome = Outcome::from_panic(panic);
                log_outcome(&msg, &outcome);
                if let (Some(counters), Some(start)) = (&counters, started) {
                    crate::observe::Probe::at_once(&**counters, start, &outcome);
                }
                if let Some(key) = msg.key() {
                    self.push_reply(key, &outcome);
                }
            }
        }
    }

    fn push_reply(&mut self, key: &str, outcome: &Outcome) {
        // Frames the handler queued before it returned go out before its reply.
        self.drain_handles();
        if self.wbuf.capacity() - self.wbuf.len() < 512 {
            // Replies are carved out of 4 KiB chunks (a split buffer would
            // otherwise reallocate at the size of each reply).
            self.wbuf = BytesMut::with_capacity(4096);
        }
        encode_reply(&self.shared, key, outcome, &mut self.wbuf);
        let frame = self.wbuf.split().freeze();
        self.queue(frame);
    }

    /// A keyless `drs.error` telling the peer what went wrong.
    fn notice(&mut self, message: &str) {
        let body = MessageBody(message);
        match encode_frame(
            &*self.shared.protocol,
            self.shared.config.max_frame_len,
            &Outgoing::new(ERROR).body(OutBody::Value(&body)),
        ) {
            Ok(frame) => self.queue(frame),
            Err(e) => tracing::error!(error = %e, "could not encode a notice"),
        }
    }
}

/// A frame of the call machinery rather than a command for a handler.
enum Control {
    Reply,
    Next,
    More,
    Cancel,
}

impl Control {
    fn of(action: &str) -> Option<Control> {
        // One comparison for every command that is not one.
        let rest = action.strip_prefix("drs.")?;
        match rest {
            "response" | "error" | "exception" => Some(Control::Reply),
            "next" => Some(Control::Next),
            "more" => Some(Control::More),
            "cancel" => Some(Control::Cancel),
            _ => None,
        }
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary, marking the cut.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
}

fn log_outcome(msg: &Msg, outcome: &Outcome) {
    match outcome {
        Outcome::Exception(m) => tracing::error!(action = msg.action(), key = msg.key(), "{m}"),
        Outcome::Error(m) => tracing::debug!(action = msg.action(), key = msg.key(), "error: {m}"),
        _ => {}
    }
}

/// Encodes the reply for `outcome` into `dst`. A value that cannot be
/// encoded, or a reply over the maximum frame size, becomes a `drs.exception`
/// saying so.
pub(crate) fn encode_reply(shared: &Shared, key: &str, outcome: &Outcome, dst: &mut BytesMut) {
    let protocol = &*shared.protocol;
    let max = shared.config.max_frame_len;
    let (action, body) = match outcome {
        Outcome::Value(v) => (RESPONSE, OutBody::Value(&**v)),
        Outcome::Body(b) => (RESPONSE, OutBody::Raw(b)),
        Outcome::Error(m) => (
            ERROR,
            OutBody::Value(&MessageBody(m) as &dyn erased_serde::Serialize),
        ),
        Outcome::Exception(m) => (
            EXCEPTION,
            OutBody::Value(&MessageBody(m) as &dyn erased_serde::Serialize),
        ),
    };
    let start = dst.len();
    let problem = match encode_into(
        protocol,
        &Outgoing::new(action).key(Some(key)).body(body),
        dst,
    ) {
        Err(e) => Some(format!("failed to encode the reply: {e}")),
        Ok(()) if dst.len() - start > max => Some(format!(
            "reply of {} bytes exceeds the maximum frame size of {max} bytes",
            dst.len() - start
        )),
        Ok(()) => None,
    };
    if let Some(message) = problem {
        dst.truncate(start);
        tracing::error!(key, "{message}");
        let body = MessageBody(&message);
        let out = Outgoing::new(EXCEPTION)
            .key(Some(key))
            .body(OutBody::Value(&body));
        if let Err(e) = encode_into(protocol, &out, dst) {
            tracing::error!(error = %e, "could not encode an exception reply");
        }
    }
}
