//! The table of calls waiting for a reply on one connection.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    sync::{Arc, Mutex},
    task::Waker,
};

use tokio::sync::oneshot;

use crate::{
    body::{Body, DecodeError, FromBody},
    command::{ERROR, EXCEPTION},
    error::{Error, RemoteError},
    sync::lock,
};

/// Which reply arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Response,
    Error,
    Exception,
}

impl ReplyKind {
    pub(crate) fn of(action: &str) -> Self {
        match action {
            ERROR => ReplyKind::Error,
            EXCEPTION => ReplyKind::Exception,
            _ => ReplyKind::Response,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) kind: ReplyKind,
    pub(crate) body: Body,
}

impl Reply {
    pub(crate) fn into_result<R: FromBody>(self) -> Result<R, Error> {
        match self.kind {
            ReplyKind::Response => R::from_body(self.body)
                .map_err(|e| Error::Decode(DecodeError::new(format!("reply body: {e}")))),
            ReplyKind::Error => Err(Error::Remote(remote_error(&self.body))),
            ReplyKind::Exception => Err(Error::Exception(remote_error(&self.body))),
        }
    }
}

/// What a `drs.error` or `drs.exception` without a body (or with a null
/// one) says.
pub(crate) const NO_MESSAGE: &str = "(no message)";

/// Reads `{"message": …}`, or a bare string, or shows whatever else came
/// as JSON; no body at all is [`NO_MESSAGE`].
pub(crate) fn remote_error(body: &Body) -> RemoteError {
    if body.is_absent() {
        return RemoteError::new(NO_MESSAGE);
    }
    body.deserialize::<RemoteError>()
        .or_else(|_| body.deserialize::<String>().map(RemoteError::new))
        .unwrap_or_else(|_| match body.deserialize::<serde_json::Value>() {
            Ok(serde_json::Value::Null) => RemoteError::new(NO_MESSAGE),
            Ok(other) => RemoteError::new(other.to_string()),
            Err(_) => RemoteError::new(format!("{body:?}")),
        })
}

/// Call keys are sequence numbers, so hashing them is a multiply.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Who waits for a key: a plain call (one reply) or a streamed one.
enum Waiter {
    Once(oneshot::Sender<Result<Reply, Error>>),
    Stream(Arc<StreamSlot>),
}

/// A streamed call's items as the driver hands them over, and its end.
#[derive(Default)]
pub(crate) struct StreamSlot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
pub(crate) struct SlotState {
    /// Items received and not yet read; never more than the window.
    pub(crate) items: VecDeque<Body>,
    /// Items the peer may still send (granted and not yet received).
    pub(crate) credit: u64,
    /// The final reply, or why the stream failed.
    pub(crate) end: Option<Result<Reply, Error>>,
    pub(crate) waker: Option<Waker>,
}

impl StreamSlot {
    pub(crate) fn new(credit: u32) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SlotState {
                credit: u64::from(credit),
                ..SlotState::default()
            }),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        lock(&self.state)
    }

    fn end(&self, outcome: Result<Reply, Error>) {
        let waker = {
            let mut state = self.lock();
            state.end.get_or_insert(outcome);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What became of a `drs.next` item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ItemFate {
    /// Handed to its stream.
    Taken,
    /// No call waits for that key (it ended, or was never made).
    NoCall,
    /// The call did not ask for a stream.
    NotStream,
    /// The peer sent more than it was granted: the stream has failed and
    /// the peer should be told to stop.
    OverCredit,
}

#[derive(Default)]
struct State {
    closed: bool,
    map: HashMap<u64, Waiter, BuildHasherDefault<KeyHasher>>,
}

#[derive(Default)]
pub(crate) struct Pending {
    state: Mutex<State>,
}

impl Pending {
    /// Registers a call; fails if the connection is already closed.
    pub(crate) fn register(
        &self,
        key: u64,
    ) -> Result<oneshot::Receiver<Result<Reply, Error>>, Error> {
        let (tx, rx) = oneshot::channel();
        let mut state = lock(&self.state);
        if state.closed {
            return Err(Error::Closed);
        }
        state.map.insert(key, Waiter::Once(tx));
        Ok(rx)
    }

    /// Registers a streamed call; fails if the connection is already closed.
    pub(crate) fn register_stream(&self, key: u64, slot: Arc<StreamSlot>) -> Result<(), Error> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(Error::Closed);
        }
        state.map.insert(key, Waiter::Stream(slot));
        Ok(())
    }

    /// Hands one streamed item to its call.
    pub(crate) fn push_item(&self, key: &str, body: Body) -> ItemFate {
        let Ok(key) = key.parse::<u64>() else {
            return ItemFate::NoCall;
        };
        let mut state = lock(&self.state);
        let slot = match state.map.get(&key) {
            None => return ItemFate::NoCall,
            Some(Waiter::Once(_)) => return ItemFate::NotStream,
            Some(Waiter::Stream(slot)) => slot.clone(),
        };
        let mut s = slot.lock();
        if s.credit == 0 {
            drop(s);
            state.map.remove(&key);
            drop(state);
            let message = "the peer sent more stream items than it was granted";
            slot.end(Err(Error::Decode(DecodeError::new(message))));
            return ItemFate::OverCredit;
        }
        drop(state);
        s.credit -= 1;
        s.items.push_back(body);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        ItemFate::Taken
    }

    pub(crate) fn remove(&self, key: u64) {
        lock(&self.state).map.remove(&key);
    }

    /// Hands a reply to its call; false when no call waits for that key.
    pub(crate) fn complete(&self, key: &str, reply: Reply) -> bool {
        self.finish(key, Ok(reply))
    }

    /// Fails a call (its reply arrived broken); false when no call waits
    /// for that key.
    pub(crate) fn fail(&self, key: &str, error: Error) -> bool {
        self.finish(key, Err(error))
    }

    fn finish(&self, key: &str, outcome: Result<Reply, Error>) -> bool {
        let Ok(key) = key.parse::<u64>() else {
            return false;
        };
        match lock(&self.state).map.remove(&key) {
            None => false,
            Some(Waiter::Once(tx)) => tx.send(outcome).is_ok(),
            Some(Waiter::Stream(slot)) => {
                slot.end(outcome);
                true
            }
        }
    }

    /// Fails every pending call (their receivers see the sender dropped) and
    /// refuses new ones.
    /// Whether [`close`](Self::close) was called: no call can be made.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    pub(crate) fn close(&self) {
        self.close_with(|| Error::Closed);
    }

    /// [`close`](Self::close), failing the calls with what `why` makes.
    pub(crate) fn close_with(&self, why: impl Fn() -> Error) {
        let map = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.map)
        };
        for waiter in map.into_values() {
            match waiter {
                Waiter::Once(tx) => drop(tx.send(Err(why()))),
                Waiter::Stream(slot) => slot.end(Err(why())),
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.state).map.len()
    }
}

/// Removes a call's entry when its future is dropped or times out, and
/// then, if the call was sent, tells the peer with `drs.cancel`.
pub(crate) struct PendingGuard {
    pub(crate) conn: super::Conn,
    pub(crate) key: u64,
    pub(crate) armed: bool,
    pub(crate) sent: bool,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.armed {
            self.conn.shared.pending.remove(self.key);
            if self.sent {
                self.conn.send_cancel(self.key);
            }
        }
    }
}
