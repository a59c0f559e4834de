//! The kernel's one statistics hook: an [`Observer`] a server tells about
//! its connections and the commands they serve, and the byte and frame
//! totals every connection keeps ([`Io`], [`Conn::io`]).
//!
//! The kernel aggregates nothing. A crate beside it (`drs-stats`, behind
//! `drs.stats`, the dashboard and `/metrics`) implements [`Observer`] and
//! installs it with [`Server::observe`](crate::Server::observe).
//!
//! The cost per command, with an observer installed: one `Instant::now()`
//! and one call through [`ActionObserver`] when the command ends; the
//! driver keeps each routed action's [`ActionObserver`] for the life of
//! the connection, so [`Observer::action`] runs once per action per
//! connection (every time for actions without a handler, which share one
//! probe in a sensible observer). Without one: one branch.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{handler::Outcome, Conn};

/// What a server reports: connections that came and went, and the
/// commands they served. Installed with
/// [`Server::observe`](crate::Server::observe); called from the
/// connections' tasks, so every method must be quick and must not block.
pub trait Observer: Send + Sync + 'static {
    /// The probe that counts the commands of `action`; `routed` says
    /// whether the server has a handler for it (a peer can invent
    /// unrouted actions without end: count those together).
    fn action(&self, action: &str, routed: bool) -> Arc<dyn ActionObserver>;

    /// `conn` was admitted: it holds a connection slot.
    fn connected(&self, conn: &Conn) {
        let _ = conn;
    }

    /// `conn` ended (its [`close_reason`](Conn::close_reason) is set, its
    /// [`io`](Conn::io) final); `admitted` says whether it had been
    /// [`connected`](Observer::connected).
    fn disconnected(&self, conn: &Conn, admitted: bool) {
        let _ = (conn, admitted);
    }
}

/// The counters of one action, as an [`Observer`] hands them out.
pub trait ActionObserver: Send + Sync + 'static {
    /// A command's handler did not finish at its first poll: it runs on
    /// in a task ("in flight") until [`ended`](ActionObserver::ended).
    fn started(&self) {}

    /// A command ended after `elapsed` (from dispatch), with its outcome,
    /// or with `None` when it was abandoned unfinished (cancelled, or its
    /// connection ended). `in_flight` says whether
    /// [`started`](ActionObserver::started) was called for it.
    fn ended(&self, elapsed: Duration, outcome: Option<&Outcome>, in_flight: bool);
}

/// One command being observed: counted with its outcome when it ends, or
/// as abandoned when dropped unfinished (its task was aborted).
pub(crate) struct Probe {
    action: Arc<dyn ActionObserver>,
    start: Instant,
    done: bool,
}

impl Probe {
    /// Counts a command answered at its first poll (never in flight).
    pub(crate) fn at_once(action: &dyn ActionObserver, start: Instant, outcome: &Outcome) {
        action.ended(start.elapsed(), Some(outcome), false);
    }

    /// A command whose handler goes on in a task.
    pub(crate) fn in_flight(action: Arc<dyn ActionObserver>, start: Instant) -> Self {
        action.started();
        Self {
            action,
            start,
            done: false,
        }
    }

    pub(crate) fn finish(mut self, outcome: &Outcome) {
        self.done = true;
        self.action.ended(self.start.elapsed(), Some(outcome), true);
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.done {
            self.action.ended(self.start.elapsed(), None, true);
        }
    }
}

/// Bytes and frames, in and out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Io {
    /// Bytes of frames received.
    pub bytes_in: u64,
    /// Bytes of frames sent.
    pub bytes_out: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
}

impl std::ops::AddAssign for Io {
    fn add_assign(&mut self, other: Io) {
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.frames_in += other.frames_in;
        self.frames_out += other.frames_out;
    }
}

/// A connection's [`Io`], counted by its driver in plain integers and
/// published here once per batch of frames.
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
}

impl IoCounters {
    /// Publishes the driver's running totals.
    pub(crate) fn publish(&self, io: &Io) {
        self.bytes_in.store(io.bytes_in, Relaxed);
        self.bytes_out.store(io.bytes_out, Relaxed);
        self.frames_in.store(io.frames_in, Relaxed);
        self.frames_out.store(io.frames_out, Relaxed);
    }

    pub(crate) fn load(&self) -> Io {
        Io {
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl ActionObserver for Log {
        fn started(&self) {
            self.0.lock().unwrap().push("started".into());
        }

        fn ended(&self, _: Duration, outcome: Option<&Outcome>, in_flight: bool) {
            let what = outcome.map_or("abandoned", |o| o.reply_action());
            self.0
                .lock()
                .unwrap()
                .push(format!("{what} in_flight={in_flight}"));
        }
    }

    #[test]
    fn a_probe_ends_once_finished_or_dropped() {
        let log = Arc::new(Log::default());
        let start = Instant::now();
        Probe::at_once(&*log, start, &Outcome::error("no"));
        Probe::in_flight(log.clone(), start).finish(&Outcome::value(1));
        drop(Probe::in_flight(log.clone(), start));
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "drs.error in_flight=false",
                "started",
                "drs.response in_flight=true",
                "started",
                "abandoned in_flight=true",
            ]
        );
    }

    #[test]
    fn io_counters_publish_and_add() {
        let counters = IoCounters::default();
        let io = Io {
            bytes_in: 10,
            bytes_out: 20,
            frames_in: 1,
            frames_out: 2,
        };
        counters.publish(&io);
        let mut sum = counters.load();
        sum += io;
        assert_eq!(
            sum,
            Io {
                bytes_in: 20,
                bytes_out: 40,
                frames_in: 2,
                frames_out: 4
            }
        );
    }
}
