//! [`Timeout`]: a deadline on the handlers it wraps.

use std::time::Duration;

use drs_core::{Layer, Msg, Next, Outcome, ReplyFuture, DEADLINE_EXCEEDED};

/// A deadline on the handlers it wraps: a handler still running after
/// `limit` is stopped (its future is dropped, its
/// [`cancel_token`](drs_core::Msg::cancel_token) fires) and the caller gets
/// `drs.exception` "handler deadline exceeded".
///
/// This is how one action gets a deadline of its own:
/// `server.layer_for("export", Timeout::new(Duration::from_secs(600)))`.
/// Its limit replaces the connection's
/// [`handler_timeout`](drs_core::ConnConfig::handler_timeout) for what it
/// wraps, longer or shorter ([`Msg::set_deadline`](drs_core::Msg::set_deadline));
/// nested, the shortest counts. Inside other layers it also bounds their
/// time (a pool's wait counts towards it when the pool is inside).
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// A deadline of `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl Layer for Timeout {
    fn call(&self, msg: Msg, next: Next) -> ReplyFuture {
        let limit = self.limit;
        msg.set_deadline(limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, next.run(msg.clone())).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    msg.cancel_token().cancel();
                    Outcome::exception(DEADLINE_EXCEEDED)
                }
            }
        })
    }
}
