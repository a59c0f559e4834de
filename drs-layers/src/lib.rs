//! Layers for drs handlers, each a [`Layer`](drs_core::Layer) that wraps a
//! whole server, one action or one connection:
//!
//! - [`Pool`]: at most P handlers of an action run at once across the
//!   server, at most Q callers wait; past Q the caller gets `drs.error`
//!   "queue full" at once (Cocaine's `pool-limit` / `queue-limit`).
//! - [`Cache`]: successful results kept for a TTL, keyed by action and the
//!   body's bytes, bounded in entries and bytes; concurrent identical calls
//!   are served by one execution (Cerbas's result cache).
//! - [`Timeout`]: a deadline on the handlers it wraps.
//! - [`before`], [`after`] and [`Chain`]: a handler run first whose error
//!   is the reply, a hook that sees every outcome, handlers run in order.
//!
//! ```
//! use std::time::Duration;
//! use drs_core::{HandlerResult, Server};
//! use drs_layers::{Cache, Pool};
//!
//! let server = Server::new();
//! server.on("render", |page: String| async move { HandlerResult::Ok(page.to_uppercase()) });
//! // The first added is the outermost: a cache hit never takes a pool slot.
//! server.layer_for("render", Cache::new(Duration::from_secs(2)));
//! server.layer_for("render", Pool::new(4, 16));
//! ```
//!
//! One layer value keeps its state (the pool's slots, the cache's entries)
//! for every command it wraps: added with `Server::layer_for`, it is
//! server-wide; a clone shares the same state.

mod cache;
mod hooks;
mod pool;
mod timeout;

pub use cache::Cache;
pub use drs_core::DEADLINE_EXCEEDED;
pub use hooks::{after, before, Chain, ChainMarker};
pub use pool::{Pool, QUEUE_FULL};
pub use timeout::Timeout;
