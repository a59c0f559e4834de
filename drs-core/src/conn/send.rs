//! Frames a handle sends: calls' keys, encoding with the size check, and
//! the queue to the driver.

use super::*;

impl Conn {
    /// A new call key, and the frame of a call of `action` with it, as
    /// `extra` completes it (a stream opt-in, a delay).
    pub(super) fn keyed_frame(
        &self,
        action: &str,
        body: &impl Serialize,
        extra: impl for<'a> FnOnce(Outgoing<'a>) -> Outgoing<'a>,
    ) -> (u64, Result<Bytes, Error>) {
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let mut digits = KeyText::default();
        let frame = self.check_outbound(action).and_then(|()| {
            let out = Outgoing::new(action)
                .key(Some(digits.format(key)))
                .body(OutBody::Value(body));
            encode_frame(
                &*self.shared.protocol,
                self.shared.config.max_frame_len,
                &extra(out),
            )
        });
        (key, frame)
    }

    /// Whether the outbound jail lets us send `action`.
    pub(super) fn check_outbound(&self, action: &str) -> Result<(), Error> {
        match &self.shared.config.outbound_check {
            Some(check) if !check.allows(action) => Err(Error::NotAllowed(action.to_string())),
            _ => Ok(()),
        }
    }

    pub(super) fn encode(
        &self,
        key: Option<&str>,
        action: &str,
        body: OutBody<'_>,
    ) -> Result<Bytes, Error> {
        encode_frame(
            &*self.shared.protocol,
            self.shared.config.max_frame_len,
            &Outgoing::new(action).key(key).body(body),
        )
    }

    /// Calls `action` and receives its reply as a stream of items (docs/PROTOCOL.md
    /// §2): the call opts in with the connection's
    /// [`stream_window`](ConnConfig::stream_window) of credit, and grants
    /// more as the items are read, so a stream that is not read holds at
    /// most its window and never blocks other calls on the connection.
    ///
    /// The returned [`CallStream`] yields each item deserialized into `T`;
    /// after its last item, [`CallStream::final_value`] holds the value the
    /// handler returned. A stream that ends with `drs.error` or
    /// `drs.exception` yields that error last. Dropping the stream before
    /// its end sends `drs.cancel`, which stops the handler on the peer.
    /// Nothing is sent until the stream is first polled.
    ///
    /// ```no_run
    /// # async fn f(conn: drs_core::Conn) -> Result<(), drs_core::Error> {
    /// use futures::StreamExt;
    /// let mut items = conn.call_stream::<u64>("count", serde_json::json!({"n": 3}));
    /// while let Some(item) = items.next().await {
    ///     println!("{}", item?);
    /// }
    /// let total: Option<u64> = items.final_value()?;
    /// # Ok(()) }
    /// ```
    pub fn call_stream<T>(&self, action: &str, body: impl Serialize) -> CallStream<T> {
        let window = self.shared.config.stream_window;
        let (key, frame) = self.keyed_frame(action, &body, |out| out.stream(Some(window)));
        CallStream::new(self.clone(), key, frame, window)
    }

    /// Queues a small frame of the call machinery (`drs.cancel`,
    /// `drs.more`) without waiting: past the outbound bound (such frames
    /// are what lets the peer stop producing), and, when the channel is
    /// full, from a task of its own.
    pub(crate) fn send_control(&self, key: u64, action: &str, body: OutBody<'_>) {
        if self.is_closed() {
            return;
        }
        let mut digits = KeyText::default();
        let Ok(frame) = self.encode(Some(digits.format(key)), action, body) else {
            return;
        };
        let len = frame.len();
        self.shared.outbound.add(len);
        match self.tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    self.shared.outbound.sub(len);
                    return;
                };
                let conn = self.clone();
                rt.spawn(async move {
                    if conn.tx.send(frame).await.is_err() {
                        conn.shared.outbound.sub(len);
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.shared.outbound.sub(len),
        }
    }

    /// Tells the peer to stop serving our call `key`.
    pub(crate) fn send_cancel(&self, key: u64) {
        self.send_control(key, crate::command::CANCEL, OutBody::Absent);
    }

    /// Queues an encoded frame without waiting (used by broadcast); fails
    /// with `Full` when the queue is full in frames or bytes.
    pub(crate) fn try_send_frame(
        &self,
        frame: Bytes,
    ) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        if self.shared.outbound.is_full() {
            return Err(mpsc::error::TrySendError::Full(frame));
        }
        // Counted before it is queued: the driver may take it at once.
        let len = frame.len();
        self.shared.outbound.add(len);
        self.tx
            .try_send(frame)
            .inspect_err(|_| self.shared.outbound.sub(len))
    }
}

/// Encodes one frame, checking the maximum frame size.
pub(crate) fn encode_frame(
    protocol: &dyn Protocol,
    max_frame_len: usize,
    out: &Outgoing<'_>,
) -> Result<Bytes, Error> {
    let mut buf = BytesMut::with_capacity(128);
    encode_into(protocol, out, &mut buf)?;
    if buf.len() > max_frame_len {
        return Err(Error::FrameTooLarge {
            len: buf.len(),
            limit: max_frame_len,
        });
    }
    Ok(buf.freeze())
}

/// A call key written in decimal without allocating.
#[derive(Default)]
pub(crate) struct KeyText([u8; 20]);

impl KeyText {
    pub(crate) fn format(&mut self, mut n: u64) -> &str {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        std::str::from_utf8(&self.0[i..]).unwrap_or("0")
    }
}

#[cfg(test)]
mod tests {
    use super::KeyText;

    #[test]
    pub(super) fn key_text() {
        let mut k = KeyText::default();
        assert_eq!(k.format(0), "0");
        assert_eq!(k.format(7), "7");
        assert_eq!(k.format(1234567890), "1234567890");
        assert_eq!(k.format(u64::MAX), "18446744073709551615");
    }
}
