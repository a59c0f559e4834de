//! Requests from outside the loop (close, drain, the memory budget's
//! eviction, the admission gate's verdict) and the deadlines, looked at
//! once per wake-up; and how a connection ends.

use std::{future::Future, sync::Arc, task::Context};

use super::{deadlines::Activity, deadlines::Expired, deadlines::Limits, Driver, Gate};
use crate::{close::CloseReason, error::Error, sync::lock, transport::Transport};

/// What the peer last said or showed, for the calls that fail when the
/// connection ends.
pub(super) enum LastWord {
    /// A keyless `drs.error` (or exception): the reason, if the peer then
    /// closes.
    Notice(String),
    /// Its first bytes were another protocol's or HTTP: what to tell.
    Foreign(String),
}

use super::admission::Verdict;

impl<T: Transport> Driver<T> {
    /// Reports the commands this connection serves to `observer`.
    pub(crate) fn set_observer(&mut self, observer: Arc<dyn crate::Observer>) {
        self.observer = Some(observer);
    }

    /// Holds commands until `gate` resolves, for at most the admission
    /// deadline; on `Err(reason)` the peer gets a keyless `drs.error` with
    /// the reason and is disconnected.
    pub(crate) fn set_gate(&mut self, gate: Gate) {
        let deadline = self.shared.config.admission_timeout;
        self.admission.set(gate, deadline);
    }

    /// Whether this side accepted the connection (a server's connections
    /// drain with it; a client's do not).
    pub(super) fn accepted(&self) -> bool {
        self.drain.is_some()
    }

    /// When `token` is cancelled the connection stops taking new commands
    /// (answering them with `drs.error`), lets running handlers finish, then closes.
    pub(crate) fn set_drain(&mut self, token: tokio_util::sync::CancellationToken) {
        self.drain = Some(Box::pin(token.cancelled_owned()));
    }

    /// Starts ending the connection for `reason`: stop reading, fail pending
    /// calls, stop handlers now (or, if they may finish, when the close
    /// linger ends), and close once what is queued is written.
    pub(super) fn begin_end(&mut self, reason: CloseReason, stop_handlers: bool) {
        if self.ending.is_some() {
            return;
        }
        self.reading = false;
        self.admission.cancel();
        self.release_waiting();
        match (&self.last_word, &reason) {
            (Some(LastWord::Foreign(m)), _) => self
                .shared
                .pending
                .close_with(|| Error::WrongProtocol(m.clone())),
            (Some(LastWord::Notice(m)), CloseReason::PeerClosed) => self
                .shared
                .pending
                .close_with(|| Error::ClosedByPeer(m.clone())),
            _ => self.shared.pending.close(),
        }
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
    pub(super) fn stop_handlers(&mut self) {
        self.tasks.abort_all();
        self.in_flight.stop_all();
    }

    /// The memory budget chose this connection: say so, and end it.
    pub(super) fn evict(&mut self) {
        if self.ending.is_none() {
            self.notice("the server's memory budget is exceeded; disconnecting");
            self.begin_end(CloseReason::BudgetExceeded, true);
        }
    }

    pub(super) fn release_waiting(&mut self) {
        self.held.take_all();
        self.waiting.clear();
    }

    /// Requests to close or drain, the memory budget, and the admission
    /// gate: they change rarely, so they are looked at once per wake-up,
    /// not on every turn.
    pub(super) fn poll_control(&mut self, cx: &mut Context<'_>) {
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
                if self.admission.cancel() {
                    self.begin_end(CloseReason::Shutdown, true);
                } else {
                    // Commands not yet started are refused, like new ones.
                    for cmd in self.held.take_all() {
                        self.refuse_draining(&cmd);
                    }
                    while let Some(cmd) = self.waiting.pop() {
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
        match self.admission.poll(cx) {
            None | Some(Verdict::Admitted) => {}
            Some(Verdict::Late) => {
                tracing::info!("admission deadline exceeded");
                self.notice("connection rejected: admission deadline exceeded");
                self.begin_end(CloseReason::AdmissionTimeout, true);
            }
            Some(Verdict::Refused(reason)) => {
                tracing::info!(%reason, "connection rejected");
                self.notice(&format!("connection rejected: {reason}"));
                self.begin_end(CloseReason::Rejected(reason), true);
            }
        }
    }

    /// The idle timeout, the frame deadline and the write-stall deadline.
    pub(super) fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Option<CloseReason> {
        let config = &self.shared.config;
        let limits = Limits {
            frame: config.frame_timeout,
            stall: config.write_stall_timeout,
            idle: config.idle_timeout,
        };
        let now_doing = Activity {
            partial_frame: limits.frame.is_some() && self.can_read() && self.meter.partial() > 0,
            output_waiting: self.dirty || !self.outq.is_empty(),
            idle: limits.idle.is_some() && self.is_idle(),
        };
        match self.deadlines.poll(cx, limits, now_doing)? {
            Expired::Frame => {
                tracing::info!("frame deadline exceeded");
                self.notice("frame deadline exceeded; disconnecting");
                Some(CloseReason::FrameTimeout)
            }
            Expired::Stall => {
                tracing::info!("the peer takes nothing we write; disconnecting");
                Some(CloseReason::TooSlow)
            }
            Expired::Idle => {
                tracing::debug!("idle timeout");
                Some(CloseReason::Idle)
            }
        }
    }
}
