//! The table of calls waiting for a reply on one connection.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Mutex,
};

use tokio::sync::oneshot;

use crate::{
    command::{Body, FromBody, ERROR, EXCEPTION},
    error::{Error, RemoteError},
    protocol::DecodeError,
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

/// Reads `{"message": …}`, or a bare string, or shows whatever else came.
pub(crate) fn remote_error(body: &Body) -> RemoteError {
    body.deserialize::<RemoteError>()
        .or_else(|_| body.deserialize::<String>().map(RemoteError::new))
        .unwrap_or_else(|_| RemoteError::new(format!("{body:?}")))
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

#[derive(Default)]
struct State {
    closed: bool,
    map: HashMap<u64, oneshot::Sender<Result<Reply, Error>>, BuildHasherDefault<KeyHasher>>,
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
        state.map.insert(key, tx);
        Ok(rx)
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
        let Some(tx) = lock(&self.state).map.remove(&key) else {
            return false;
        };
        tx.send(outcome).is_ok()
    }

    /// Fails every pending call (their receivers see the sender dropped) and
    /// refuses new ones.
    pub(crate) fn close(&self) {
        let map = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.map)
        };
        drop(map);
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.state).map.len()
    }
}

/// Removes a call's entry when its future is dropped or times out.
pub(crate) struct PendingGuard<'a> {
    pub(crate) pending: &'a Pending,
    pub(crate) key: u64,
    pub(crate) armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending.remove(self.key);
        }
    }
}
