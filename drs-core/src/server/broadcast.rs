//! Broadcasts: one frame per protocol, queued on many connections.

use super::*;

impl Server {
    /// Fires `action` with `body` to every live connection and returns how
    /// many it was queued for.
    ///
    /// The command is encoded once per protocol and the same bytes are queued
    /// on every connection. A connection whose outbound queue is full (in
    /// frames or bytes) is a slow consumer: it is disconnected
    /// ([`CloseReason::TooSlow`], logged), so that it never stalls the
    /// broadcast nor grows memory. That is why it is not async, unlike
    /// [`Conn::fire`], which waits for its one peer. Connections whose protocol cannot encode
    /// the command (e.g. a frame over the maximum size) are skipped and
    /// logged; the count says how many it reached.
    pub fn broadcast(&self, action: &str, body: impl Serialize) -> Result<usize, Error> {
        Ok(self.broadcast_out(action, OutBody::Value(&body)))
    }

    /// [`broadcast`](Server::broadcast) of a received [`Body`](crate::Body):
    /// to connections of the protocol it arrived in, its bytes are copied
    /// as they are (numbers keep their precision, strings their escapes);
    /// to others it is transcoded.
    pub fn broadcast_body(&self, action: &str, body: &crate::Body) -> usize {
        self.broadcast_out(action, OutBody::Raw(body))
    }

    fn broadcast_out(&self, action: &str, body: OutBody<'_>) -> usize {
        fanout(&self.connections(), action, body)
    }
}

/// Fires `action` with `body` to each of `conns` and returns how many it
/// was queued for: what [`Server::broadcast`] does, for any set of
/// connections (a pub/sub broker's subscribers).
///
/// The command is encoded once per protocol and the same bytes are queued
/// on every connection, without waiting. A connection whose outbound queue
/// is full (in frames or bytes) is a slow consumer: it is disconnected
/// ([`CloseReason::TooSlow`], logged), so that it never stalls the others
/// nor grows memory. Connections whose protocol cannot encode the command
/// (e.g. a frame over their maximum size) are skipped and logged.
pub fn fanout<'c>(
    conns: impl IntoIterator<Item = &'c Conn>,
    action: &str,
    body: OutBody<'_>,
) -> usize {
    let mut encoded: Vec<(&'static str, Option<Bytes>)> = Vec::with_capacity(1);
    let mut delivered = 0;
    for conn in conns {
        let protocol = conn.protocol();
        let frame = match encoded.iter().find(|(name, _)| *name == protocol.name()) {
            Some((_, frame)) => frame.clone(),
            None => {
                let max = conn.config().max_frame_len;
                let frame = match encode_frame(protocol, max, &Outgoing::new(action).body(body)) {
                    Ok(frame) => Some(frame),
                    Err(e) => {
                        tracing::warn!(
                            protocol = protocol.name(),
                            action,
                            error = %e,
                            "cannot be encoded for this protocol; its connections are skipped"
                        );
                        None
                    }
                };
                encoded.push((protocol.name(), frame.clone()));
                frame
            }
        };
        let Some(frame) = frame else { continue };
        match conn.try_send_frame(frame) {
            Ok(()) => delivered += 1,
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    id = conn.id(),
                    peer = conn.peer_addr(),
                    "slow consumer disconnected"
                );
                conn.shared.close_for(CloseReason::TooSlow);
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }
    delivered
}
