//! A pub/sub broker and RPC router for drs servers (docs/PROTOCOL.md §2).
//!
//! [`Broker::attach`] makes a [`Server`](drs_core::Server) serve:
//!
//! - `drs.subscribe` `{"topic": "sensors.*", "retroactive": true}` and
//!   `drs.unsubscribe`: topics are dot-separated; `*` matches one segment,
//!   `>` the rest. Subscriptions are kept in a trie, so a publication finds
//!   its subscribers without scanning them.
//! - `drs.publish` `{"topic": "sensors.t1", "body": X}`: every subscriber
//!   gets `{"action": "sensors.t1", "body": X}`, once per connection,
//!   encoded once per protocol in use; a fire, or a call answered with how
//!   many subscribers it reached or was stored for. A subscriber whose
//!   outbound queue is full is disconnected as a slow consumer, as for a
//!   broadcast: it never stalls the others.
//! - Names (`drs.identify`): a named connection's subscriptions belong to
//!   its name and outlive the connection. Publications matching a
//!   *retroactive* subscription of a name are kept for it and delivered as
//!   calls, in publish order, a window at a time; any reply acknowledges
//!   one. When the name identifies again it receives what it missed, and
//!   what it had not acknowledged, then live messages. A subscription's
//!   `"window"` (seconds) limits how far back what it missed comes back.
//! - Backlogs are bounded per name and per topic ([`Backlog`]: count,
//!   bytes, age). Past a bound the oldest messages are dropped and the
//!   subscriber is told how many, with a `drs.missed` `{"missed": n}` call
//!   before the messages that follow the gap.
//! - `drs.expose` `{"action": "triple"}` / `drs.unexpose`: calls of that
//!   action from any other connection go to one exposer (the one with the
//!   fewest relayed calls in flight, round robin among equals) and its reply
//!   is relayed; exposers come before the server's own handler; an exposer
//!   lost mid-call gives the caller `drs.error` "closed"; none at all gives
//!   "No handlers for &lt;action&gt;".
//!
//! # Durability
//!
//! With [`BrokerConfig::store`] the retroactive publications, each name's
//! subscriptions and what it still has to receive are kept in a redb
//! database in that directory. Writes are batched by one writer thread, a
//! transaction per batch, each durable (fsync) when committed. A confirmed
//! publish (a `drs.publish` call, [`Broker::publish`]) is answered only
//! after the commit that holds it: a crash after the answer loses nothing
//! acknowledged. An acknowledgement is written in a later batch: a crash
//! just after one may deliver that message once more (at least once).
//! Without a store everything is in memory and ends with the process.
pub use broker::{no_handlers, Backlog, Broker, BrokerConfig, BrokerStats, BUDGET_EXCEEDED};
#[cfg(feature = "nats")]
pub use nats::{NatsBroker, NatsBrokerConfig, ACTION_HEADER, FORMAT_HEADER};
pub use store::{StoreError, STORE_FILE};

mod broker;
#[cfg(feature = "nats")]
mod nats;
mod store;
