//! The admission gate: until the server's connect hooks (authentication
//! among them) let a connection in, its commands wait; past the admission
//! deadline, or on a refusal, it is told why and closed.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Sleep;

/// Decides, at an admission gate, whether a connection may proceed.
pub(crate) type Gate = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// How the gate decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Admitted,
    /// The deadline passed first.
    Late,
    Refused(String),
}

#[derive(Default)]
pub(super) struct Admission {
    gate: Option<Gate>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Admission {
    /// Holds the connection at `gate` for at most `deadline`.
    pub(super) fn set(&mut self, gate: Gate, deadline: Duration) {
        self.gate = Some(gate);
        self.deadline = Some(Box::pin(tokio::time::sleep(deadline)));
    }

    /// Whether the connection waits at the gate.
    pub(super) fn is_pending(&self) -> bool {
        self.gate.is_some()
    }

    /// Stops waiting (the connection is ending); true if it was.
    pub(super) fn cancel(&mut self) -> bool {
        self.deadline = None;
        self.gate.take().is_some()
    }

    /// The verdict, once there is one (the gate is then gone).
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Option<Verdict> {
        let gate = self.gate.as_mut()?;
        let verdict = match gate.as_mut().poll(cx) {
            Poll::Ready(Ok(())) => Verdict::Admitted,
            Poll::Ready(Err(reason)) => Verdict::Refused(reason),
            Poll::Pending => {
                let late = self
                    .deadline
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if !late {
                    return None;
                }
                Verdict::Late
            }
        };
        self.cancel();
        Some(verdict)
    }
}

#[cfg(test)]
mod tests {
    use std::future::{pending, poll_fn};

    use super::*;

    async fn verdict(a: &mut Admission) -> Option<Verdict> {
        poll_fn(|cx| Poll::Ready(a.poll(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_admits_refuses_or_runs_out_of_time() {
        let second = Duration::from_secs(1);
        let mut a = Admission::default();
        assert_eq!(verdict(&mut a).await, None, "no gate, nothing to decide");
        a.set(Box::pin(async { Ok(()) }), second);
        assert_eq!(verdict(&mut a).await, Some(Verdict::Admitted));
        assert!(!a.is_pending());

        a.set(Box::pin(async { Err("no token".to_string()) }), second);
        assert_eq!(
            verdict(&mut a).await,
            Some(Verdict::Refused("no token".into()))
        );

        a.set(Box::pin(pending()), second);
        assert_eq!(verdict(&mut a).await, None);
        assert!(a.is_pending());
        tokio::time::advance(second).await;
        assert_eq!(verdict(&mut a).await, Some(Verdict::Late));
        assert!(!a.is_pending());

        a.set(Box::pin(pending()), second);
        assert!(a.cancel());
        assert!(!a.cancel());
        tokio::time::advance(second).await;
        assert_eq!(verdict(&mut a).await, None, "cancelled: no verdict");
    }
}
