//! The NATS side of a drs connection (the connection itself is
//! [`drs_link::LinkIo`]): what goes out, how what comes in is routed, and
//! the heartbeat.

use std::{io, time::Duration};

use async_nats::{Client as Nats, Message, RequestErrorKind, Subject};
use bytes::Bytes;
use drs_link::{Kind, Link, Out, Route};
use futures::{future::BoxFuture, StreamExt};

use crate::{control, control_headers, NatsConfig};

/// Publishes to the peer's subject: frames as they are, control messages
/// as headers on an empty payload.
pub(crate) struct NatsOut {
    pub(crate) nats: Nats,
    pub(crate) peer: Subject,
    /// The server's `max_payload`, as it was at connect.
    pub(crate) max_payload: usize,
}

fn broken(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl Out for NatsOut {
    fn send(&self, kind: Kind, payloads: Vec<Bytes>) -> BoxFuture<'static, io::Result<()>> {
        let (nats, peer) = (self.nats.clone(), self.peer.clone());
        Box::pin(async move {
            match kind {
                Kind::Data => {
                    for frame in payloads {
                        nats.publish(peer.clone(), frame).await.map_err(broken)?;
                    }
                }
                Kind::Ack => {
                    for n in payloads {
                        let value = format!("ack {}", String::from_utf8_lossy(&n));
                        let h = control_headers(&value);
                        nats.publish_with_headers(peer.clone(), h, Bytes::new())
                            .await
                            .map_err(broken)?;
                    }
                }
                Kind::Close => {
                    let h = control_headers("close");
                    nats.publish_with_headers(peer, h, Bytes::new())
                        .await
                        .map_err(broken)?;
                    // Written before the last handle on the NATS connection
                    // may go.
                    nats.flush().await.map_err(broken)?;
                }
            }
            Ok(())
        })
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.max_payload)
    }
}

/// Routes one message from the peer to its link (answering pings).
pub(crate) async fn route(nats: &Nats, link: &Link, msg: Message) -> Route {
    match control(&msg) {
        Some("ping") => {
            link.heard();
            if let Some(reply) = msg.reply {
                let _ = nats
                    .publish_with_headers(reply, control_headers("pong"), Bytes::new())
                    .await;
            }
            Route::Keep
        }
        Some("close") | Some("gone") => link.route(Kind::Close, Bytes::new()),
        Some(c) => match c.strip_prefix("ack ") {
            Some(n) => link.route(Kind::Ack, Bytes::copy_from_slice(n.as_bytes())),
            None => {
                link.heard();
                Route::Keep
            }
        },
        None => link.route(Kind::Data, msg.payload),
    }
}

/// A client connection's own reader: its inbox, until the connection or
/// the subscription goes.
pub(crate) async fn pump(nats: Nats, mut sub: async_nats::Subscriber, link: Link) {
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => {
                    if let Route::End = route(&nats, &link, msg).await {
                        break;
                    }
                }
                None => break,
            },
            _ = check.tick() => {
                if link.is_ended() {
                    break;
                }
            }
        }
    }
    let _ = sub.unsubscribe().await;
}

enum Ping {
    Alive,
    Gone,
    NoAnswer,
}

async fn ping(nats: &Nats, peer: Subject, timeout: Duration) -> Ping {
    let request = async_nats::Request::new()
        .headers(control_headers("ping"))
        .timeout(Some(timeout));
    match nats.send_request(peer, request).await {
        Ok(answer) if control(&answer) == Some("gone") => Ping::Gone,
        Ok(_) => Ping::Alive,
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Ping::Gone,
        Err(_) => Ping::NoAnswer,
    }
}

/// Ends `link` when its peer is gone: after a heartbeat with nothing heard
/// it pings; "no responders" (the peer's subscriptions went with its
/// process) ends it at once, `missed_heartbeats` pings without an answer
/// end it too.
pub(crate) async fn watch(nats: Nats, link: Link, peer: Subject, config: NatsConfig) {
    let every = config.link.heartbeat;
    let mut missed = 0;
    let mut asked = link.last_heard();
    loop {
        let due = link.last_heard().max(asked) + every;
        tokio::time::sleep_until(due.into()).await;
        if link.is_ended() {
            return;
        }
        if link.last_heard() + every > std::time::Instant::now() {
            continue;
        }
        match ping(&nats, peer.clone(), every).await {
            Ping::Alive => {
                missed = 0;
                link.heard();
            }
            Ping::Gone => {
                link.fail(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("the peer at {peer} is gone (no responders on NATS)"),
                ));
                return;
            }
            Ping::NoAnswer => {
                missed += 1;
                if missed >= config.missed_heartbeats {
                    link.fail(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no heartbeat from the peer at {peer} in {:?}",
                            every * missed
                        ),
                    ));
                    return;
                }
                asked = std::time::Instant::now();
            }
        }
    }
}
