//! Egress in: frames queued by [`Conn`](crate::Conn) handles, and the
//! replies of handlers that finished in their own tasks, join the outbound
//! queue (a task's reply after every frame its handler queued before it).

use std::task::{Context, Poll};

use bytes::Bytes;

use super::{Driver, OUTQ_HIGH};
use crate::{close::CloseReason, transport::Transport};

impl<T: Transport> Driver<T> {
    /// Egress in: frames from handles and from finished handler tasks.
    pub(super) fn pull_outbound(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.rx_open && self.outq.len() < OUTQ_HIGH {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    self.take_handle_frame(frame);
                    progress = true;
                }
                Poll::Ready(None) => {
                    self.rx_open = false;
                    self.begin_end(CloseReason::Dropped, true);
                    progress = true;
                }
                Poll::Pending => break,
            }
        }
        while !self.tasks.is_empty() {
            let Poll::Ready(Some(done)) = self.tasks.poll_join_next(cx) else {
                break;
            };
            progress = true;
            match done {
                Ok((call, frame)) => {
                    if let Some((key, seq)) = call {
                        if !self.in_flight.finished(&key, seq) {
                            // Cancelled, and answered so, as it finished.
                            continue;
                        }
                    }
                    if let Some(frame) = frame {
                        // Frames the handler queued before it returned go first.
                        self.drain_handles();
                        self.outq.push(frame);
                    }
                }
                Err(e) if e.is_cancelled() => self.in_flight.reaped(),
                Err(_) => {}
            }
        }
        progress
    }

    /// Moves every frame queued by handles to the outbound queue.
    pub(super) fn drain_handles(&mut self) {
        while self.rx_open {
            match self.rx.try_recv() {
                Ok(frame) => self.take_handle_frame(frame),
                Err(_) => break,
            }
        }
    }

    /// A frame from a handle leaves the shared count for the driver's own.
    pub(super) fn take_handle_frame(&mut self, frame: Bytes) {
        self.shared.outbound.sub(frame.len());
        self.outq.push(frame);
    }
}
