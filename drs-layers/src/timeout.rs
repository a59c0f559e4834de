//! [`Timeout`]: a deadline on the handlers it wraps.

use std::time::Duration;

use drs_core::{Layer, Msg, Next, Outcome, ReplyFuture, DEADLINE_EXCEEDED};

/// Stops a handler still running after `limit`: its future is dropped, its
/// [`cancel_token`](drs_core::Msg::cancel_token) fires, and the caller gets
/// `drs.exception` "handler deadline exceeded" — the same answer as the
/// connection's own handler deadline (`ConnConfig::handler_timeout`,
/// `Server::timeout`), for use where a layer fits better: on one
/// connection, or around other layers (a pool's wait counts towards it
/// when the pool is inside).
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
