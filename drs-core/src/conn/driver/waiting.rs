//! Commands read and not yet served (the connection is not admitted yet,
//! or has no room: `max_in_flight` handlers, a full outbound queue), in
//! arrival order. Their bytes count against the memory budget through the
//! connection's [`ReadMeter`] for as long as they wait.

use std::collections::VecDeque;

use crate::{budget::ReadMeter, command::Command};

pub(super) struct Waiting {
    queue: VecDeque<(Command, usize)>,
    bytes: usize,
    meter: ReadMeter,
}

impl Waiting {
    pub(super) fn new(meter: ReadMeter) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            meter,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes of the frames waiting.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `cmd`, whose frame had `size` bytes, behind the others.
    pub(super) fn push(&mut self, cmd: Command, size: usize) {
        self.meter.add_waiting(size);
        self.bytes += size;
        self.queue.push_back((cmd, size));
    }

    /// The command that has waited longest.
    pub(super) fn pop(&mut self) -> Option<Command> {
        let (cmd, size) = self.queue.pop_front()?;
        self.release(size);
        Some(cmd)
    }

    /// Drops the call with `key` (`drs.cancel` before it started); true if
    /// it was waiting.
    pub(super) fn remove_key(&mut self, key: &str) -> bool {
        let Some(at) = self
            .queue
            .iter()
            .position(|(c, _)| c.key.as_deref() == Some(key))
        else {
            return false;
        };
        if let Some((_, size)) = self.queue.remove(at) {
            self.release(size);
        }
        true
    }

    /// Drops every command (the connection is ending).
    pub(super) fn clear(&mut self) {
        if self.bytes > 0 {
            self.meter.sub_waiting(self.bytes);
        }
        self.queue.clear();
        self.bytes = 0;
    }

    fn release(&mut self, size: usize) {
        self.meter.sub_waiting(size);
        self.bytes -= size;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(key: &str) -> Command {
        let mut cmd = Command::new("work");
        cmd.key = Some(key.into());
        cmd
    }

    #[test]
    fn commands_leave_in_order_and_their_bytes_with_them() {
        let meter = ReadMeter::default();
        let mut waiting = Waiting::new(meter.clone());
        waiting.push(call("a"), 10);
        waiting.push(call("b"), 20);
        waiting.push(call("c"), 30);
        assert_eq!(
            (waiting.len(), waiting.bytes(), meter.waiting()),
            (3, 60, 60)
        );
        assert!(waiting.remove_key("b"));
        assert!(!waiting.remove_key("b"), "removed once");
        assert_eq!((waiting.bytes(), meter.waiting()), (40, 40));
        assert_eq!(waiting.pop().unwrap().key.as_deref(), Some("a"));
        assert_eq!(meter.waiting(), 30);
        assert_eq!(waiting.pop().unwrap().key.as_deref(), Some("c"));
        assert!(waiting.pop().is_none() && waiting.is_empty());
        assert_eq!((waiting.bytes(), meter.waiting()), (0, 0));
    }

    #[test]
    fn clearing_or_dropping_releases_the_budget() {
        let meter = ReadMeter::default();
        let mut waiting = Waiting::new(meter.clone());
        waiting.push(call("a"), 10);
        waiting.clear();
        assert_eq!((waiting.len(), meter.waiting()), (0, 0));
        waiting.push(call("b"), 7);
        drop(waiting);
        assert_eq!(meter.waiting(), 0);
    }
}
