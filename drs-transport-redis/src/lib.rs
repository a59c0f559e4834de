//! Redis for drs, through the [`redis`] crate (its tokio connection
//! manager: reconnects by itself, one multiplexed connection for commands
//! and one for the blocking pop, so a pop never holds up a reply).
//!
//! - [`cerbas`]: a worker that serves unmodified Cerbas clients with drs
//!   handlers (Cerbas's request keys, queue, response channels in JSON and
//!   MessagePack, timeouts, cache, cron, halt).
//!
//! Why `redis` and not `fred`: it is the crate most Redis users in Rust
//! already have, its `ConnectionManager` gives the reconnecting
//! multiplexed connection drs needs, and its pub/sub and blocking commands
//! are plain async calls; fred's extra machinery (pools, its own
//! reconnection policy, its own runtime hooks) would duplicate what drs's
//! sessions already do.

pub mod cerbas;
mod cron;
mod msgpack;

pub use redis;
