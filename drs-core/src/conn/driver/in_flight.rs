//! Inbound calls served in tasks of their own, by key: the one home of
//! per-key state. It refuses a duplicate key, stops a handler on
//! `drs.cancel`, passes the caller's stream credit (`drs.more`) on, and
//! counts the tasks stopped but not yet reaped, which no longer count
//! against `max_in_flight`.
//!
//! Every task has a number: a task cancelled meanwhile may still finish,
//! and its key be reused by a new call, so a finished task leaves the
//! table only if the entry is still its own.

use std::collections::HashMap;

use crate::text::Text;

/// What the table can do to a running call.
pub(super) trait Running {
    /// Stops the handler and cancels its token.
    fn stop(&self);
    /// Grants the caller's stream `n` more items.
    fn grant(&self, n: u64);
}

pub(super) struct InFlight<R> {
    calls: HashMap<Text, (R, u64)>,
    next_seq: u64,
    /// Stopped and not yet reaped.
    stopped: usize,
}

impl<R: Running> InFlight<R> {
    pub(super) fn new() -> Self {
        Self {
            calls: HashMap::new(),
            next_seq: 0,
            stopped: 0,
        }
    }

    /// Whether a call with `key` is running.
    pub(super) fn contains(&self, key: &str) -> bool {
        !self.calls.is_empty() && self.calls.contains_key(key)
    }

    /// A number for a new task.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Tasks stopped and not yet reaped.
    pub(super) fn stopped(&self) -> usize {
        self.stopped
    }

    pub(super) fn insert(&mut self, key: Text, call: R, seq: u64) {
        self.calls.insert(key, (call, seq));
    }

    /// Task `seq`, serving `key`, finished: true if its reply is still
    /// wanted (it leaves the table), false if it was stopped meanwhile
    /// (and answered so).
    pub(super) fn finished(&mut self, key: &str, seq: u64) -> bool {
        if self.calls.get(key).is_some_and(|(_, s)| *s == seq) {
            self.calls.remove(key);
            true
        } else {
            self.reaped();
            false
        }
    }

    /// A stopped task was reaped.
    pub(super) fn reaped(&mut self) {
        self.stopped = self.stopped.saturating_sub(1);
    }

    /// Stops the call with `key` (`drs.cancel`); true if it was running.
    pub(super) fn cancel(&mut self, key: &str) -> bool {
        let Some((call, _)) = self.calls.remove(key) else {
            return false;
        };
        call.stop();
        self.stopped += 1;
        true
    }

    /// Grants the stream of `key` `n` more items, if it is running.
    pub(super) fn grant(&self, key: &str, n: u64) {
        if let Some((call, _)) = self.calls.get(key) {
            call.grant(n);
        }
    }

    /// Stops every call (the connection is ending; its tasks are aborted
    /// together).
    pub(super) fn stop_all(&mut self) {
        for (_, (call, _)) in self.calls.drain() {
            call.stop();
        }
        self.stopped = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    #[derive(Clone, Default)]
    struct Log(Rc<RefCell<Vec<String>>>);

    struct Call(&'static str, Log);

    impl Running for Call {
        fn stop(&self) {
            self.1 .0.borrow_mut().push(format!("stop {}", self.0));
        }

        fn grant(&self, n: u64) {
            self.1 .0.borrow_mut().push(format!("grant {} {n}", self.0));
        }
    }

    #[test]
    fn a_finished_task_leaves_only_its_own_entry() {
        let log = Log::default();
        let mut table = InFlight::new();
        let first = table.next_seq();
        table.insert("k".into(), Call("first", log.clone()), first);
        assert!(table.contains("k"));
        // Cancelled; the key is reused before the first task is reaped.
        assert!(table.cancel("k"));
        assert_eq!(table.stopped(), 1);
        let second = table.next_seq();
        table.insert("k".into(), Call("second", log.clone()), second);
        assert!(
            !table.finished("k", first),
            "the old task's reply is not wanted"
        );
        assert_eq!(table.stopped(), 0);
        assert!(table.contains("k"), "the new call is untouched");
        assert!(table.finished("k", second));
        assert!(!table.contains("k"));
        assert_eq!(*log.0.borrow(), ["stop first"]);
    }

    #[test]
    fn credit_reaches_running_calls_and_stop_all_stops_them() {
        let log = Log::default();
        let mut table = InFlight::new();
        for key in ["a", "b"] {
            let seq = table.next_seq();
            table.insert(key.into(), Call(key, log.clone()), seq);
        }
        table.grant("a", 3);
        table.grant("zz", 1);
        assert!(!table.cancel("zz"), "nothing to cancel");
        table.stop_all();
        assert!(!table.contains("a") && !table.contains("b"));
        assert_eq!(table.stopped(), 0);
        let mut seen = log.0.borrow().clone();
        seen.sort();
        assert_eq!(seen, ["grant a 3", "stop a", "stop b"]);
    }

    #[test]
    fn reaping_never_goes_below_zero() {
        let mut table: InFlight<Call> = InFlight::new();
        table.reaped();
        assert_eq!(table.stopped(), 0);
    }
}
