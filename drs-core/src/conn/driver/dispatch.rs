//! Serving a command: held if it has a `delay`, refused while draining,
//! queued while there is no room, else dispatched: its handler polled once
//! in place (a ready reply encoded straight into the outbound queue), or
//! moved to a task of its own and into the in-flight table.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::BytesMut;
use futures::FutureExt;
use tokio::task::AbortHandle;
use tracing::Instrument;

use super::{encode_reply, in_flight::Running, Driver, MAX_NOTICE};
use crate::{
    command::{Command, MessageBody, DEADLINE_EXCEEDED, ERROR, SHUTTING_DOWN},
    handler::{Msg, Outcome},
    observe::Probe,
    protocol::{OutBody, Outgoing},
    transport::Transport,
};

use super::super::encode_frame;

/// Probes kept per connection, at most: a peer cannot grow the table.
const MAX_PROBES: usize = 1024;

/// A call served in a task: stopped by aborting the task and cancelling
/// its token.
pub(super) struct Task {
    pub(super) abort: AbortHandle,
    pub(super) msg: Msg,
}

impl Running for Task {
    fn stop(&self) {
        self.abort.abort();
        self.msg.cancel();
    }

    fn grant(&self, n: u64) {
        self.msg.grant(n);
    }
}

impl<T: Transport> Driver<T> {
    /// Holds a command with a `delay` until it is due, within the
    /// connection's bounds; a call past them is answered at once.
    pub(super) fn hold(&mut self, cmd: Command, size: usize, delay_ms: u32) {
        let config = &self.shared.config;
        let delay = Duration::from_millis(u64::from(delay_ms));
        let duplicate = cmd
            .key
            .as_ref()
            .filter(|k| self.held.contains_key(k) || self.in_flight.contains(k));
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
        match refusal {
            None => self.held.insert(cmd, size, delay),
            Some(mut message) => {
                truncate(&mut message, MAX_NOTICE);
                match &cmd.key {
                    Some(key) => self.push_reply(key, &Outcome::Error(message)),
                    None => {
                        tracing::debug!(action = %cmd.action, "delayed fire dropped: {message}")
                    }
                }
            }
        }
    }

    /// A command to serve now: refused while draining, served if there is
    /// room, else queued behind the others.
    pub(super) fn admit(&mut self, cmd: Command, size: usize, cx: &mut Context<'_>) {
        if !self.accept_commands {
            self.refuse_draining(&cmd);
        } else if self.waiting.is_empty() && self.can_dispatch() {
            self.dispatch(cmd, cx);
        } else {
            self.waiting.push(cmd, size);
        }
    }

    pub(super) fn refuse_draining(&mut self, cmd: &Command) {
        if let Some(key) = &cmd.key {
            self.push_reply(key, &Outcome::Error(SHUTTING_DOWN.to_owned()));
        }
    }

    /// The probe of `action`, if the server is observed; kept for routed
    /// actions.
    fn probe(&mut self, action: &str) -> Option<Arc<dyn crate::ActionObserver>> {
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

    pub(super) fn dispatch(&mut self, cmd: Command, cx: &mut Context<'_>) {
        if let Some(key) = &cmd.key {
            if self.in_flight.contains(key) {
                let mut message = format!("duplicate key in flight: {key}");
                truncate(&mut message, MAX_NOTICE);
                return self.push_reply(key, &Outcome::Error(message));
            }
        }
        if !self.shared.router.is_current(&self.routes) {
            self.routes = self.shared.router.snapshot();
        }
        let msg = Msg::new(self.shared.clone(), cmd);
        let probe = self.probe(msg.action());
        let started = probe.as_ref().map(|_| std::time::Instant::now());
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
        let outcome = match first {
            Ok(Poll::Ready(outcome)) => outcome,
            Err(panic) => Outcome::from_panic(panic),
            Ok(Poll::Pending) => {
                let probe = probe
                    .zip(started)
                    .map(|(p, start)| Probe::in_flight(p, start));
                let fut = fut.expect("the handler was polled");
                let limit = msg.deadline().or(self.shared.config.handler_timeout);
                let shared = self.shared.clone();
                let key = msg.command().key.clone();
                let seq = self.in_flight.next_seq();
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
                    self.in_flight.insert(key, Task { abort, msg }, seq);
                }
                return;
            }
        };
        log_outcome(&msg, &outcome);
        if let (Some(probe), Some(start)) = (&probe, started) {
            Probe::at_once(&**probe, start, &outcome);
        }
        if let Some(key) = msg.key() {
            self.push_reply(key, &outcome);
        }
    }

    pub(super) fn push_reply(&mut self, key: &str, outcome: &Outcome) {
        // Frames the handler queued before it returned go out before its reply.
        self.drain_handles();
        let shared = &self.shared;
        self.outq
            .encode(|buf| encode_reply(shared, key, outcome, buf));
    }

    /// A keyless `drs.error` telling the peer what went wrong.
    pub(super) fn notice(&mut self, message: &str) {
        let body = MessageBody(message);
        self.queue_frame(&Outgoing::new(ERROR).body(OutBody::Value(&body)));
    }

    /// Queues a frame of the call machinery for `key`.
    pub(super) fn control(&mut self, key: &str, action: &str, body: OutBody<'_>) {
        self.queue_frame(&Outgoing::new(action).key(Some(key)).body(body));
    }

    fn queue_frame(&mut self, out: &Outgoing<'_>) {
        match encode_frame(
            &*self.shared.protocol,
            self.shared.config.max_frame_len,
            out,
        ) {
            Ok(frame) => self.outq.push(frame),
            Err(e) => tracing::error!(error = %e, "could not encode {}", out.action),
        }
    }
}

fn log_outcome(msg: &Msg, outcome: &Outcome) {
    match outcome {
        Outcome::Exception(m) => tracing::error!(action = msg.action(), key = msg.key(), "{m}"),
        Outcome::Error(m) => tracing::debug!(action = msg.action(), key = msg.key(), "error: {m}"),
        _ => {}
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary, marking the cut.
pub(super) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
}
