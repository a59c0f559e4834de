//! What a frame read from the peer does: a command is held, served or
//! queued (`dispatch`); a reply completes one of our calls; `drs.next`,
//! `drs.more` and `drs.cancel` drive streams and cancellation; a frame
//! that does not decode is answered, and too many of them end the
//! connection.

use std::{task::Context, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;

use super::{control::LastWord, dispatch::truncate, Driver, MAX_NOTICE};
use crate::{
    body::DecodeError,
    close::CloseReason,
    command::{is_reply_action, Command, CANCEL, CANCELLED},
    error::Error,
    frame::Foreign,
    handler::Outcome,
    protocol::OutBody,
    transport::Transport,
};

use super::super::{ItemFate, Reply, ReplyKind};

/// Undecodable frames within [`BAD_WINDOW`] after which the peer is disconnected.
const MAX_BAD_FRAMES: u32 = 32;
/// The window in which bad frames are counted.
const BAD_WINDOW: Duration = Duration::from_secs(10);

/// A frame of the call machinery rather than a command for a handler.
enum Control {
    Reply,
    Next,
    More,
    Cancel,
}

impl Control {
    fn of(action: &str) -> Option<Control> {
        // One comparison for every command that is not one.
        let rest = action.strip_prefix("drs.")?;
        match rest {
            "response" | "error" | "exception" => Some(Control::Reply),
            "next" => Some(Control::Next),
            "more" => Some(Control::More),
            "cancel" => Some(Control::Cancel),
            _ => None,
        }
    }
}

impl<T: Transport> Driver<T> {
    pub(super) fn on_frame(&mut self, frame: Bytes, cx: &mut Context<'_>) {
        let size = frame.len();
        self.io_totals.bytes_in += size as u64;
        self.io_totals.frames_in += 1;
        self.io_published = false;
        let cmd = match self.shared.protocol.decode(frame) {
            Ok(cmd) => cmd,
            Err(e) => return self.on_bad_frame(e),
        };
        if let Some(control) = Control::of(&cmd.action) {
            return match control {
                Control::Reply => self.on_reply(cmd),
                Control::Next => self.on_item(cmd),
                Control::More => self.on_more(cmd),
                Control::Cancel => self.on_cancel(cmd),
            };
        }
        match cmd.delay.filter(|ms| *ms > 0) {
            Some(ms) if self.accept_commands => self.hold(cmd, size, ms),
            _ => self.admit(cmd, size, cx),
        }
    }

    /// A frame that did not decode. A broken call (its key and a non-reply
    /// action could be read) gets a keyed `drs.error`; a broken reply to
    /// one of our calls fails that call; anything else gets a keyless
    /// `drs.error`. The peer is disconnected past [`MAX_BAD_FRAMES`] within
    /// [`BAD_WINDOW`].
    pub(super) fn on_bad_frame(&mut self, e: DecodeError) {
        let now = Instant::now();
        match self.bad_since {
            Some(since) if now.duration_since(since) < BAD_WINDOW => self.bad_frames += 1,
            _ => {
                self.bad_since = Some(now);
                self.bad_frames = 1;
            }
        }
        tracing::warn!(error = %e, "invalid frame");
        let mut message = format!("invalid command: {}", e.message());
        truncate(&mut message, MAX_NOTICE);
        match (e.key(), e.action()) {
            (Some(key), Some(action)) if is_reply_action(action) => {
                let failed =
                    Error::Decode(DecodeError::new(format!("invalid reply: {}", e.message())));
                if !self.shared.pending.fail(key, failed) {
                    tracing::debug!(key, "invalid reply for no pending call dropped");
                }
            }
            (Some(key), Some(_)) => self.push_reply(key, &Outcome::Error(message)),
            (Some(key), None) if e.is_whole() => self.push_reply(key, &Outcome::Error(message)),
            _ => self.notice(&message),
        }
        if self.bad_frames >= MAX_BAD_FRAMES {
            let why = format!("{MAX_BAD_FRAMES} invalid commands within {BAD_WINDOW:?}");
            self.notice(&format!("too many invalid commands ({why}); disconnecting"));
            self.begin_end(CloseReason::BadPeer(why), true);
        }
    }

    fn on_reply(&mut self, cmd: Command) {
        let kind = ReplyKind::of(&cmd.action);
        match cmd.key {
            Some(key) => {
                let reply = Reply {
                    kind,
                    body: cmd.body,
                };
                if !self.shared.pending.complete(&key, reply) {
                    tracing::debug!(%key, "reply for no pending call dropped");
                }
            }
            None if kind != ReplyKind::Response => {
                let err = super::super::remote_error(&cmd.body);
                tracing::warn!(action = %cmd.action, message = %err, "peer reported an error");
                if !matches!(self.last_word, Some(LastWord::Foreign(_))) {
                    self.last_word = Some(LastWord::Notice(err.message));
                }
            }
            None => tracing::debug!("reply without key dropped"),
        }
    }

    /// The peer's first bytes are another protocol's or HTTP: a server
    /// tells the peer what this port speaks, a client fails its calls
    /// saying what the port speaks; either closes.
    pub(super) fn on_foreign(&mut self, foreign: Foreign) {
        let ours = match self.shared.protocol.name() {
            "json" => "JSON",
            "msgpack" => "MessagePack",
            other => other,
        };
        let peer = foreign.speaks();
        let message = if self.accepted() {
            let hint = match foreign {
                Foreign::MessagePack => {
                    " (MessagePack clients go to a port with ?protocol=msgpack)"
                }
                Foreign::Json => " (JSON clients go to a port without ?protocol=msgpack)",
                _ => " (HTTP and WebSocket clients go to a ws:// port)",
            };
            let message = format!("this port speaks drs {ours}, not {peer}{hint}");
            self.notice(&message);
            message
        } else {
            let hint = match foreign {
                Foreign::MessagePack => " (add ?protocol=msgpack to the URL)",
                Foreign::Json => " (drop ?protocol=msgpack from the URL)",
                _ => " (a ws:// URL, if it serves WebSocket)",
            };
            format!("this port speaks {peer}, not drs {ours}{hint}")
        };
        tracing::warn!(peer = %foreign, "{message}");
        self.last_word = Some(LastWord::Foreign(message.clone()));
        self.begin_end(CloseReason::BadPeer(message), true);
    }

    /// `drs.next`: an item of a stream we called for.
    fn on_item(&mut self, cmd: Command) {
        let Some(key) = cmd.key else {
            return tracing::debug!("stream item without key dropped");
        };
        match self.shared.pending.push_item(&key, cmd.body) {
            ItemFate::Taken => {}
            ItemFate::NoCall => tracing::debug!(%key, "stream item for no pending call dropped"),
            ItemFate::NotStream => {
                tracing::debug!(%key, "stream item for a call that asked for none dropped");
            }
            ItemFate::OverCredit => {
                tracing::warn!(%key, "the peer sent stream items beyond its credit");
                self.control(&key, CANCEL, OutBody::Absent);
            }
        }
    }

    /// `drs.more`: credit for a stream we serve. Credit for a call that is
    /// not running is ignored; a body that is not a positive integer is bad
    /// input (answered without a key: the call goes on).
    fn on_more(&mut self, cmd: Command) {
        let Some(key) = &cmd.key else {
            return tracing::debug!("credit without key dropped");
        };
        match cmd.body.deserialize::<u64>() {
            Ok(n) if n > 0 => self.in_flight.grant(key, n),
            _ => self.on_bad_frame(DecodeError::new(
                "`drs.more` needs a positive integer body (items granted)",
            )),
        }
    }

    /// `drs.cancel`: stops the handler serving the key (or drops the
    /// command if it has not started) and ends the call with `drs.error`
    /// "cancelled". A cancel for a key that is not running is ignored.
    fn on_cancel(&mut self, cmd: Command) {
        let Some(key) = &cmd.key else {
            return tracing::debug!("cancel without key dropped");
        };
        if !(self.in_flight.cancel(key)
            || self.held.remove_key(key)
            || self.waiting.remove_key(key))
        {
            return tracing::debug!(%key, "cancel for no running call ignored");
        }
        tracing::debug!(%key, "call cancelled");
        self.push_reply(key, &Outcome::Error(CANCELLED.to_owned()));
    }
}
