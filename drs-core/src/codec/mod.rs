//! The framing layer shared by byte-stream transports (TCP, IPC, tests over
//! `tokio::io::duplex`): [`FrameCodec`] delimits frames, [`FramedIo`] turns
//! any `AsyncRead + AsyncWrite` into a [`Transport`](crate::Transport).

mod foreign;

use foreign::sniff;
pub use foreign::starts_http_request;

use std::{
    fmt, io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder};

use crate::{
    budget::{BudgetExceeded, ReadMeter},
    frame::{Foreign, FrameSpec, FrameTooLarge, Inbound},
    protocol::Framing,
};

/// Why [`FrameCodec`] could not cut a frame: one over the limit (the
/// stream cannot be resynchronised after it), the peer speaking something
/// else, or the stream itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame exceeds the maximum frame size.
    #[error(transparent)]
    TooLarge(#[from] FrameTooLarge),
    /// The first bytes are another protocol's, or HTTP.
    #[error("the peer speaks {}", .0.speaks())]
    Foreign(Foreign),
    /// The stream failed or ended inside a frame.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Delimits frames on a byte stream: newline-terminated lines or 4-byte
/// big-endian length prefixes, with a maximum frame size.
///
/// Decoding lines: `\r\n` is accepted as a terminator, lines holding only
/// whitespace are skipped, and a final line without terminator at end of
/// stream is still a frame. A line (or prefix length) longer than the maximum
/// is an error ([`FrameTooLarge`]) and the stream cannot be resynchronised.
///
/// The first frame's first bytes are checked for another framing or HTTP
/// ([`Foreign`]): a zero byte where a line of JSON was expected, JSON text
/// or HTTP where a length prefix was (a length over the maximum), an HTTP
/// request or response line.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    framing: Framing,
    max_frame_len: usize,
    /// Bytes of the buffer already searched for a newline.
    scanned: usize,
    /// No frame has been cut yet: the first bytes are still checked.
    first: bool,
}

impl FrameCodec {
    /// A codec for the given framing and maximum frame size.
    pub fn new(spec: FrameSpec) -> Self {
        Self {
            framing: spec.framing,
            max_frame_len: spec.max_frame_len,
            scanned: 0,
            first: true,
        }
    }

    fn too_large(&self) -> FrameTooLarge {
        FrameTooLarge {
            limit: self.max_frame_len,
        }
    }

    fn decode_line(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if self.first {
            // MessagePack is known by its first five bytes, as no line
            // may follow; an HTTP line is a line.
            // At most 16 bytes: a long first line is not scanned again on
            // every read while it arrives.
            let head = &src[..src.len().min(16)];
            let head = &head[..memchr::memchr(b'\n', head).unwrap_or(head.len())];
            if let Some(foreign @ Foreign::MessagePack) = sniff(Framing::Lines, head) {
                return Err(FrameError::Foreign(foreign));
            }
        }
        loop {
            let Some(i) = memchr::memchr(b'\n', &src[self.scanned..]) else {
                // A frame may be `max` bytes plus an optional `\r` before its `\n`.
                if src.len() > self.max_frame_len + 1 {
                    return Err(self.too_large().into());
                }
                self.scanned = src.len();
                return Ok(None);
            };
            let end = self.scanned + i;
            self.scanned = 0;
            let mut line = src.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.len() > self.max_frame_len {
                return Err(self.too_large().into());
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if self.first {
                self.first = false;
                if let Some(foreign) = sniff(Framing::Lines, &line) {
                    return Err(FrameError::Foreign(foreign));
                }
            }
            return Ok(Some(line.freeze()));
        }
    }

    fn decode_prefixed(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame_len {
            if self.first {
                if let Some(foreign) = sniff(Framing::LengthPrefixed, &src[..4]) {
                    return Err(FrameError::Foreign(foreign));
                }
            }
            return Err(self.too_large().into());
        }
        self.first = false;
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.framing {
            Framing::Lines => self.decode_line(src),
            Framing::LengthPrefixed => self.decode_prefixed(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        match self.framing {
            Framing::Lines => {
                // A last line without newline: still a frame, unless blank.
                src.put_u8(b'\n');
                self.decode_line(src)
            }
            Framing::LengthPrefixed => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "stream ended inside a frame ({} bytes left over)",
                    src.len()
                ),
            )
            .into()),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        if frame.len() > self.max_frame_len {
            return Err(self.too_large().into_io());
        }
        match self.framing {
            Framing::Lines => {
                if memchr::memchr(b'\n', &frame).is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a line-framed frame must not contain a newline",
                    ));
                }
                dst.reserve(frame.len() + 1);
                dst.put_slice(&frame);
                dst.put_u8(b'\n');
            }
            Framing::LengthPrefixed => {
                dst.reserve(frame.len() + 4);
                dst.put_u32(frame.len() as u32);
                dst.put_slice(&frame);
            }
        }
        Ok(())
    }
}

/// Read in chunks of this size (or more when a frame needs it).
const READ_CHUNK: usize = 4 * 1024;
/// `poll_ready` writes out the buffer once it holds this much.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Buffers that grew beyond this (for a large frame) are released once empty.
const KEEP_CAPACITY: usize = 256 * 1024;

/// A byte stream framed by a [`FrameCodec`]: a [`Transport`](crate::Transport)
/// of whole frames.
///
/// Writes are batched: [`start_send`](Sink::start_send) only appends to a
/// buffer, which goes out on [`poll_flush`](Sink::poll_flush) or when it holds
/// 64 KiB. Buffers are allocated when first needed and the read buffer is
/// released while a connection is idle, so an idle connection holds no
/// buffer memory.
pub struct FramedIo<T> {
    io: T,
    codec: FrameCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    eof: bool,
    meter: ReadMeter,
    /// What was last reported to the meter (reported again only on change).
    reported: usize,
}

impl<T> FramedIo<T> {
    /// Frames `io` according to `spec`.
    pub fn new(io: T, spec: FrameSpec) -> Self {
        let meter = spec.meter.clone();
        Self {
            io,
            codec: FrameCodec::new(spec),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            eof: false,
            meter,
            reported: 0,
        }
    }

    /// Reports the memory held for an unfinished frame: the read buffer's
    /// capacity while it holds anything, nothing when it is empty.
    fn report(&mut self) {
        let held = if self.rbuf.is_empty() {
            0
        } else {
            self.rbuf.capacity()
        };
        if held != self.reported {
            self.reported = held;
            self.meter.set_partial(held);
        }
    }

    /// The underlying I/O object.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T> fmt::Debug for FramedIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramedIo")
            .field("codec", &self.codec)
            .field("buffered_read", &self.rbuf.len())
            .field("buffered_write", &self.wbuf.len())
            .finish_non_exhaustive()
    }
}

/// A frame, or why there is none, as an item of the stream.
fn inbound(cut: Result<Bytes, FrameError>) -> io::Result<Inbound> {
    match cut {
        Ok(frame) => Ok(Inbound::Frame(frame)),
        Err(FrameError::TooLarge(too_large)) => Ok(Inbound::TooLarge(too_large)),
        Err(FrameError::Foreign(foreign)) => Ok(Inbound::Foreign(foreign)),
        Err(FrameError::Io(e)) => Err(e),
    }
}

impl<T: AsyncRead + Unpin> Stream for FramedIo<T> {
    type Item = io::Result<Inbound>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.eof {
                let last = this.codec.decode_eof(&mut this.rbuf).transpose();
                this.rbuf = BytesMut::new();
                this.report();
                return Poll::Ready(last.map(inbound));
            }
            match this.codec.decode(&mut this.rbuf) {
                Ok(Some(frame)) => {
                    this.report();
                    return Poll::Ready(Some(Ok(Inbound::Frame(frame))));
                }
                Ok(None) => {}
                Err(e) => {
                    // Past a frame it cannot cut, a byte stream is out of
                    // step: nothing more is read.
                    this.eof = true;
                    this.rbuf = BytesMut::new();
                    this.report();
                    return Poll::Ready(Some(inbound(Err(e))));
                }
            }
            if this.rbuf.capacity() - this.rbuf.len() < READ_CHUNK / 4 {
                this.rbuf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rbuf) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {
                    this.report();
                    if this.meter.is_evicted() {
                        this.eof = true;
                        this.rbuf = BytesMut::new();
                        this.report();
                        return Poll::Ready(Some(Err(BudgetExceeded::io())));
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.eof = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {
                    this.report();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> FramedIo<T> {
    fn poll_write_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        if self.wbuf.capacity() > KEEP_CAPACITY {
            self.wbuf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> Sink<Bytes> for FramedIo<T> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.wbuf.len() >= WRITE_HIGH_WATER {
            ready!(this.poll_write_buf(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Bytes) -> io::Result<()> {
        let this = self.get_mut();
        this.codec.encode(frame, &mut this.wbuf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_buf(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_buf(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
