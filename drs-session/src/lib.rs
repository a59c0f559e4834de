//! Clients that stay connected.
//!
//! - [`Session`]: one client connection that dials again when it is lost,
//!   with exponential backoff and jitter ([`ReconnectPolicy`]), keeps its
//!   handlers and layers, names itself on every connection
//!   (`drs.identify`), and reports [`SessionEvent`]s.
//! - [`Pool`]: N sessions to one peer; calls go to the least busy
//!   connected member, [`Pool::cast`] fires through one.
//!
//! The rule both keep: **a call in flight on a connection that is lost
//! fails with [`Error::Closed`](drs_core::Error::Closed) and is never sent
//! again**, so nothing runs twice behind the caller's back. Actions the
//! caller declares idempotent ([`SessionBuilder::idempotent`]) are the
//! exception it opts in to. Calls made between connections wait for the
//! next one within their timeout, or fail at once with
//! [`Error::NotConnected`](drs_core::Error::NotConnected)
//! ([`WhenDisconnected`]); nothing was sent then.

mod policy;
mod pool;
mod session;

pub use policy::ReconnectPolicy;
pub use pool::{Pool, PoolBuilder, DEFAULT_POOL_SIZE};
pub use session::{Session, SessionBuilder, SessionCall, SessionEvent, WhenDisconnected};
