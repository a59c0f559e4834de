//! A connection's deadlines (docs/PROTOCOL.md §2): a frame that has begun
//! must end within `frame_timeout`; output the peer takes none of must go
//! within `write_stall_timeout`; a connection with nothing in flight either
//! way ends after `idle_timeout` without input.
//!
//! One timer serves the three. It is never dropped and only moved when it
//! must fire earlier: per wake-up the hot path sets flags and, when a
//! deadline starts, reads the clock once.

use std::{future::Future, pin::Pin, task::Context, time::Duration};

use tokio::time::{Instant, Sleep};

/// The limits, from the connection's settings.
#[derive(Clone, Copy, Default)]
pub(super) struct Limits {
    pub(super) frame: Option<Duration>,
    pub(super) stall: Option<Duration>,
    pub(super) idle: Option<Duration>,
}

/// What the connection is doing, as the deadlines need it.
#[derive(Clone, Copy)]
pub(super) struct Activity {
    /// A frame has started and not finished, while we are reading.
    pub(super) partial_frame: bool,
    /// Output waits to be written or flushed.
    pub(super) output_waiting: bool,
    /// Nothing in flight either way, nothing waiting, nothing to write.
    pub(super) idle: bool,
}

/// The deadline that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    Frame,
    Stall,
    Idle,
}

pub(super) struct Deadlines {
    last_rx: Instant,
    frame_since: Option<Instant>,
    /// Frames finished since `frame_since`: the frame under way is a new
    /// one, whose deadline restarts when the timer next fires.
    frames_seen: bool,
    stall_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadlines {
    pub(super) fn new() -> Self {
        Self {
            last_rx: Instant::now(),
            frame_since: None,
            frames_seen: false,
            stall_since: None,
            timer: None,
        }
    }

    /// A whole frame was read.
    pub(super) fn frame_read(&mut self) {
        self.frames_seen = true;
    }

    /// Input arrived (for the idle timeout).
    pub(super) fn received(&mut self) {
        self.last_rx = Instant::now();
    }

    /// The transport took output.
    pub(super) fn wrote(&mut self) {
        self.stall_since = None;
    }

    /// Checks the deadlines, arming the timer for the next one.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        limits: Limits,
        now_doing: Activity,
    ) -> Option<Expired> {
        match limits.frame {
            Some(_) if now_doing.partial_frame => {
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
        if limits.stall.is_some() && now_doing.output_waiting {
            self.stall_since.get_or_insert_with(Instant::now);
        } else {
            self.stall_since = None;
        }
        loop {
            let frame = self.frame_since.zip(limits.frame).map(|(s, d)| s + d);
            let stall = self.stall_since.zip(limits.stall).map(|(s, d)| s + d);
            let idle = limits
                .idle
                .filter(|_| now_doing.idle)
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
                    self.frame_since = Some(now);
                    continue;
                }
                return Some(Expired::Frame);
            }
            if stall.is_some_and(|d| d <= now) {
                return Some(Expired::Stall);
            }
            if idle.is_some_and(|d| d <= now) {
                return Some(Expired::Idle);
            }
            // Fired for a deadline that moved: set it again.
            timer.as_mut().reset(next.max(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, task::Poll};

    use super::*;

    const LIMITS: Limits = Limits {
        frame: Some(Duration::from_secs(1)),
        stall: Some(Duration::from_secs(2)),
        idle: Some(Duration::from_secs(3)),
    };

    const QUIET: Activity = Activity {
        partial_frame: false,
        output_waiting: false,
        idle: false,
    };

    async fn check(d: &mut Deadlines, limits: Limits, now_doing: Activity) -> Option<Expired> {
        poll_fn(|cx| Poll::Ready(d.poll(cx, limits, now_doing))).await
    }

    async fn after(secs: u64) {
        tokio::time::advance(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_must_end_in_time_unless_frames_keep_ending() {
        let mut d = Deadlines::new();
        let reading = Activity {
            partial_frame: true,
            ..QUIET
        };
        assert_eq!(check(&mut d, LIMITS, reading).await, None);
        d.frame_read();
        after(1).await;
        // Frames ended meanwhile: the one under way starts its own second.
        assert_eq!(check(&mut d, LIMITS, reading).await, None);
        after(1).await;
        assert_eq!(check(&mut d, LIMITS, reading).await, Some(Expired::Frame));
        // Without a frame under way, no frame deadline.
        let mut d = Deadlines::new();
        check(&mut d, LIMITS, reading).await;
        check(&mut d, LIMITS, QUIET).await;
        after(5).await;
        assert_eq!(check(&mut d, LIMITS, QUIET).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn output_the_peer_never_takes_and_idleness_expire() {
        let mut d = Deadlines::new();
        let stuck = Activity {
            output_waiting: true,
            ..QUIET
        };
        check(&mut d, LIMITS, stuck).await;
        after(1).await;
        d.wrote();
        assert_eq!(check(&mut d, LIMITS, stuck).await, None, "it took some");
        after(2).await;
        assert_eq!(check(&mut d, LIMITS, stuck).await, Some(Expired::Stall));

        let mut d = Deadlines::new();
        let idle = Activity {
            idle: true,
            ..QUIET
        };
        after(2).await;
        d.received();
        assert_eq!(check(&mut d, LIMITS, idle).await, None);
        after(2).await;
        assert_eq!(check(&mut d, LIMITS, idle).await, None, "input 2 s ago");
        after(1).await;
        assert_eq!(check(&mut d, LIMITS, idle).await, Some(Expired::Idle));
        assert_eq!(
            check(&mut Deadlines::new(), Limits::default(), idle).await,
            None,
            "no limits, no deadlines"
        );
    }
}
