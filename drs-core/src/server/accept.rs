//! Accepting and serving connections, within the connection limit.

use super::*;

impl Server {
    pub(super) async fn accept_loop<L: Listener>(
        self,
        mut listener: L,
        protocol: Arc<dyn Protocol>,
    ) {
        let mut spec = self
            .inner
            .config
            .frame_spec(&*protocol)
            .meter(self.inner.budget.meter());
        let stop = self.inner.stop_accepting.clone();
        let mut pause = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept(spec.clone()) => accepted,
            };
            match accepted {
                Ok(handshake) => {
                    pause = Duration::from_millis(5);
                    let server = self.clone();
                    let protocol = protocol.clone();
                    let slot = ConnSlot::take(&self.inner);
                    let meter = spec.meter.clone();
                    self.inner.tasks.spawn(async move {
                        let timeout = server.inner.config.handshake_timeout;
                        let established = tokio::select! {
                            _ = server.inner.force.cancelled() => return,
                            r = tokio::time::timeout(timeout, handshake) => r,
                        };
                        match (established, slot) {
                            // Bounded by its listener, not by the server's
                            // limit.
                            (Ok(Ok((io, info))), slot) if info.one_request => {
                                drop(slot);
                                server.serve(io, info, protocol, meter, None).await
                            }
                            (Ok(Ok((io, info))), Some(slot)) => {
                                server.serve(io, info, protocol, meter, Some(slot)).await
                            }
                            (Ok(Ok((io, info))), None) => {
                                server.refuse_full(io, info, &*protocol).await
                            }
                            (Ok(Err(e)), _) => tracing::debug!(error = %e, "handshake failed"),
                            (Err(_), _) => tracing::debug!(?timeout, "handshake timed out"),
                        }
                    });
                    spec = spec.meter(self.inner.budget.meter());
                }
                Err(e) => {
                    // Out of file descriptors and the like: log, pause, retry.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Serves one established connection (from any transport) on this
    /// server, in a task of its own. For transports without a
    /// [`Listener`], and for tests.
    pub fn accept_transport<T: Transport>(
        &self,
        io: T,
        info: ConnInfo,
        protocol: Arc<dyn Protocol>,
    ) {
        let server = self.clone();
        let slot = ConnSlot::take(&self.inner);
        self.inner.tasks.spawn(async move {
            match slot {
                slot if info.one_request => {
                    drop(slot);
                    let meter = server.inner.budget.meter();
                    server.serve(io, info, protocol, meter, None).await
                }
                Some(slot) => {
                    let meter = server.inner.budget.meter();
                    server.serve(io, info, protocol, meter, Some(slot)).await
                }
                None => server.refuse_full(io, info, &*protocol).await,
            }
        });
    }

    /// Tells a connection over the limit why, and closes it.
    async fn refuse_full<T: Transport>(&self, mut io: T, info: ConnInfo, protocol: &dyn Protocol) {
        use futures::SinkExt;
        let max = self.inner.max_connections;
        tracing::warn!(
            peer = info.peer_addr.as_deref(),
            max,
            "connection limit reached; refusing"
        );
        let message = format!("the server is at its connection limit ({max}); try again later");
        let body = MessageBody(&message);
        let frame = encode_frame(
            protocol,
            usize::MAX,
            &Outgoing::new(ERROR).body(OutBody::Value(&body)),
        );
        if let Ok(frame) = frame {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                io.send(frame).await?;
                io.close().await
            })
            .await;
        }
    }

    async fn serve<T: Transport>(
        self,
        io: T,
        info: ConnInfo,
        protocol: Arc<dyn Protocol>,
        meter: ReadMeter,
        _slot: Option<ConnSlot>,
    ) {
        let inner = &self.inner;
        let router = Router::child(inner.router.clone());
        let (conn, mut driver) = Conn::new(
            io,
            info,
            protocol,
            router,
            inner.config.clone(),
            inner.force.child_token(),
            meter,
        );
        driver.set_drain(inner.drain.clone());
        if let Some(observer) = inner.observer.get() {
            driver.set_observer(observer.clone());
        }
        let hooks = read(&inner.on_connect).clone();
        let admitted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gate = {
            let conn = conn.clone();
            let server = self.clone();
            let admitted = admitted.clone();
            async move {
                for hook in hooks {
                    hook(conn.clone()).await?;
                }
                if server.inner.drain.is_cancelled() {
                    return Err(SHUTTING_DOWN.to_string());
                }
                write(&server.inner.conns).insert(conn.id(), conn.clone());
                admitted.store(true, std::sync::atomic::Ordering::Release);
                if let Some(observer) = server.inner.observer.get() {
                    observer.connected(&conn);
                }
                tracing::debug!(
                    id = conn.id(),
                    peer = conn.peer_addr(),
                    "connection admitted"
                );
                Ok(())
            }
        };
        driver.set_gate(Box::pin(gate));
        driver.run().await;
        write(&inner.conns).remove(&conn.id());
        let admitted = admitted.load(std::sync::atomic::Ordering::Acquire);
        if let Some(observer) = inner.observer.get() {
            observer.disconnected(&conn, admitted);
        }
        if admitted {
            for hook in read(&inner.on_disconnect).clone() {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&conn))).is_err() {
                    tracing::error!("an on_disconnect hook panicked");
                }
            }
        }
        for hook in read(&inner.on_disconnect_last).clone() {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&conn))).is_err() {
                tracing::error!("an on_disconnect_last hook panicked");
            }
        }
    }
}

/// One of the server's connection slots, given back when dropped.
struct ConnSlot(Arc<Inner>);

impl ConnSlot {
    fn take(inner: &Arc<Inner>) -> Option<Self> {
        let taken = inner
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max_connections).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| ConnSlot(inner.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}
