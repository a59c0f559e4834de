//! The driver's outbound queue: frames from handles, replies of handler
//! tasks, and replies encoded in the loop, in the order they must reach
//! the peer, with their bytes counted. Replies produced in the loop are
//! carved out of one shared buffer, which is let go while the queue is
//! empty, so an idle connection holds no reply buffer.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::{
    command::{MessageBody, ERROR, EXCEPTION, RESPONSE},
    handler::Outcome,
    protocol::{encode_into, OutBody, Outgoing},
};

use super::Shared;

/// Buffer room below which a new chunk is taken for the next reply.
const MIN_ROOM: usize = 512;
/// The chunk replies are carved out of (a split buffer would otherwise
/// reallocate at the size of each reply).
const CHUNK: usize = 4096;

#[derive(Default)]
pub(super) struct Outbound {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// `bytes` as last published to the connection's shared count.
    published: usize,
    wbuf: BytesMut,
}

impl Outbound {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes queued.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.queue.push_back(frame);
    }

    pub(super) fn pop(&mut self) -> Option<Bytes> {
        let frame = self.queue.pop_front()?;
        self.bytes -= frame.len();
        Some(frame)
    }

    /// Queues the frame `encode` writes, carved out of the shared buffer.
    pub(super) fn encode(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        if self.wbuf.capacity() - self.wbuf.len() < MIN_ROOM {
            self.wbuf = BytesMut::with_capacity(CHUNK);
        }
        encode(&mut self.wbuf);
        let frame = self.wbuf.split().freeze();
        self.push(frame);
    }

    /// The queued bytes if they changed since last asked (to publish them
    /// once per wake-up).
    pub(super) fn changed(&mut self) -> Option<usize> {
        (self.bytes != self.published).then(|| {
            self.published = self.bytes;
            self.bytes
        })
    }

    /// Idle: holds no reply buffer until there is a reply to write (one
    /// allocation per batch of replies, not per reply).
    pub(super) fn release_idle(&mut self) {
        if self.queue.is_empty() && self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
    }
}

/// Encodes the reply for `outcome` into `dst`. A value that cannot be
/// encoded, or a reply over the maximum frame size, becomes a `drs.exception`
/// saying so.
pub(crate) fn encode_reply(shared: &Shared, key: &str, outcome: &Outcome, dst: &mut BytesMut) {
    let protocol = &*shared.protocol;
    let max = shared.config.max_frame_len;
    let (action, body) = match outcome {
        Outcome::Value(v) => (RESPONSE, OutBody::Value(&**v)),
        Outcome::Body(b) => (RESPONSE, OutBody::Raw(b)),
        Outcome::Error(m) => (
            ERROR,
            OutBody::Value(&MessageBody(m) as &dyn erased_serde::Serialize),
        ),
        Outcome::Exception(m) => (
            EXCEPTION,
            OutBody::Value(&MessageBody(m) as &dyn erased_serde::Serialize),
        ),
    };
    let start = dst.len();
    let problem = match encode_into(
        protocol,
        &Outgoing::new(action).key(Some(key)).body(body),
        dst,
    ) {
        Err(e) => Some(format!("failed to encode the reply: {e}")),
        Ok(()) if dst.len() - start > max => Some(format!(
            "reply of {} bytes exceeds the maximum frame size of {max} bytes",
            dst.len() - start
        )),
        Ok(()) => None,
    };
    if let Some(message) = problem {
        dst.truncate(start);
        tracing::error!(key, "{message}");
        let body = MessageBody(&message);
        let out = Outgoing::new(EXCEPTION)
            .key(Some(key))
            .body(OutBody::Value(&body));
        if let Err(e) = encode_into(protocol, &out, dst) {
            tracing::error!(error = %e, "could not encode an exception reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_leave_in_order_with_their_bytes_counted() {
        let mut out = Outbound::default();
        out.push(Bytes::from_static(b"one"));
        out.encode(|buf| buf.extend_from_slice(b"reply"));
        out.push(Bytes::from_static(b"three"));
        assert_eq!((out.len(), out.bytes()), (3, 13));
        assert_eq!(out.changed(), Some(13));
        assert_eq!(out.changed(), None, "published once");
        let order: Vec<_> = std::iter::from_fn(|| out.pop()).collect();
        assert_eq!(order, [&b"one"[..], b"reply", b"three"]);
        assert_eq!((out.bytes(), out.changed()), (0, Some(0)));
    }

    #[test]
    fn replies_share_a_chunk_which_is_let_go_when_idle() {
        let mut out = Outbound::default();
        out.encode(|buf| buf.extend_from_slice(b"a"));
        out.encode(|buf| buf.extend_from_slice(b"b"));
        let room = out.wbuf.capacity();
        assert!(room >= CHUNK - 2, "both carved from one chunk: {room}");
        out.release_idle();
        assert!(out.wbuf.capacity() > 0, "kept while frames are queued");
        while out.pop().is_some() {}
        out.release_idle();
        assert_eq!(out.wbuf.capacity(), 0);
    }
}
