//! Commands with a `delay`, held until due (docs/PROTOCOL.md, delayed
//! commands): ordered by due time and then arrival, so that two commands
//! due at once run in the order they came; the keys of held calls, for
//! `drs.cancel`; one timer, pointed at the earliest. Their bytes count
//! against the memory budget while held.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    task::Context,
    time::Duration,
};

use std::future::Future;

use tokio::time::{Instant, Sleep};

use crate::{budget::ReadMeter, command::Command, text::Text};

type Slot = (Instant, u64);

pub(super) struct Held {
    by_due: BTreeMap<Slot, (Command, usize)>,
    keys: HashMap<Text, Slot>,
    seq: u64,
    timer: Option<Pin<Box<Sleep>>>,
    meter: ReadMeter,
}

impl Held {
    pub(super) fn new(meter: ReadMeter) -> Self {
        Self {
            by_due: BTreeMap::new(),
            keys: HashMap::new(),
            seq: 0,
            timer: None,
            meter,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_due.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_due.is_empty()
    }

    /// Whether a call with `key` is held.
    pub(super) fn contains_key(&self, key: &str) -> bool {
        !self.keys.is_empty() && self.keys.contains_key(key)
    }

    /// Holds `cmd` (a frame of `size` bytes) for `delay`. The caller has
    /// checked the bounds and that its key is not in use.
    pub(super) fn insert(&mut self, cmd: Command, size: usize, delay: Duration) {
        self.seq += 1;
        let slot = (Instant::now() + delay, self.seq);
        if let Some(key) = &cmd.key {
            self.keys.insert(key.clone(), slot);
        }
        self.meter.add_waiting(size);
        self.by_due.insert(slot, (cmd, size));
        self.arm();
    }

    /// The commands due now, earliest first (empty until the timer fires).
    pub(super) fn poll_due(&mut self, cx: &mut Context<'_>) -> Vec<(Command, usize)> {
        let Some(timer) = &mut self.timer else {
            return Vec::new();
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Vec::new();
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = self.by_due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (cmd, size) = entry.remove();
            self.meter.sub_waiting(size);
            if let Some(key) = &cmd.key {
                self.keys.remove(key);
            }
            due.push((cmd, size));
        }
        self.arm();
        due
    }

    /// Takes back the call with `key` (`drs.cancel`); true if it was held.
    pub(super) fn remove_key(&mut self, key: &str) -> bool {
        let Some(slot) = self.keys.remove(key) else {
            return false;
        };
        if let Some((_, size)) = self.by_due.remove(&slot) {
            self.meter.sub_waiting(size);
        }
        self.arm();
        true
    }

    /// Takes every held command (the connection is ending or draining).
    pub(super) fn take_all(&mut self) -> Vec<Command> {
        self.keys.clear();
        self.timer = None;
        std::mem::take(&mut self.by_due)
            .into_values()
            .map(|(cmd, size)| {
                self.meter.sub_waiting(size);
                cmd
            })
            .collect()
    }

    /// Points the timer at the earliest due command.
    fn arm(&mut self) {
        match self.by_due.keys().next() {
            Some((at, _)) => match &mut self.timer {
                Some(timer) => timer.as_mut().reset(*at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(*at))),
            },
            None => self.timer = None,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.take_all();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    fn cmd(action: &str, key: Option<&str>) -> Command {
        let mut cmd = Command::new(action);
        cmd.key = key.map(Into::into);
        cmd
    }

    async fn due(held: &mut Held) -> Vec<String> {
        poll_fn(|cx| std::task::Poll::Ready(held.poll_due(cx)))
            .await
            .into_iter()
            .map(|(c, _)| c.action.to_string())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn commands_come_due_in_time_then_arrival_order() {
        let meter = ReadMeter::default();
        let mut held = Held::new(meter.clone());
        held.insert(cmd("late", None), 5, Duration::from_secs(2));
        held.insert(cmd("first", Some("1")), 7, Duration::from_secs(1));
        held.insert(cmd("second", None), 11, Duration::from_secs(1));
        assert_eq!((held.len(), meter.waiting()), (3, 23));
        assert!(held.contains_key("1"));
        assert!(due(&mut held).await.is_empty(), "nothing is due yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(due(&mut held).await, ["first", "second"]);
        assert!(!held.contains_key("1"));
        assert_eq!(meter.waiting(), 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(due(&mut held).await, ["late"]);
        assert!(held.is_empty() && meter.waiting() == 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_call_is_taken_back_by_key_and_all_are_released_at_the_end() {
        let meter = ReadMeter::default();
        let mut held = Held::new(meter.clone());
        held.insert(cmd("a", Some("k")), 3, Duration::from_secs(1));
        held.insert(cmd("b", None), 4, Duration::from_secs(5));
        assert!(held.remove_key("k"));
        assert!(!held.remove_key("k"));
        assert_eq!(meter.waiting(), 4);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            due(&mut held).await.is_empty(),
            "the cancelled call never runs"
        );
        let rest: Vec<_> = held.take_all().into_iter().map(|c| c.action).collect();
        assert_eq!(rest, ["b"]);
        assert_eq!(meter.waiting(), 0);
        held.insert(cmd("c", None), 9, Duration::from_secs(1));
        drop(held);
        assert_eq!(meter.waiting(), 0, "dropping releases the budget");
    }
}
