//! TCP keepalive is set on accepted and dialed sockets, as configured
//! (read back with `getsockopt`).

use std::time::Duration;

use drs_core::{Dialer, FrameSpec, Framing, Listener};
use drs_transport_tcp::{Keepalive, TcpDialer, TcpListener};
use socket2::SockRef;

fn check(stream: &tokio::net::TcpStream, expected: Option<&Keepalive>) {
    let sock = SockRef::from(stream);
    assert_eq!(sock.keepalive().unwrap(), expected.is_some());
    assert!(sock.tcp_nodelay().unwrap());
    if let Some(k) = expected {
        assert_eq!(sock.tcp_keepalive_time().unwrap(), k.idle);
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
        {
            assert_eq!(sock.tcp_keepalive_interval().unwrap(), k.interval);
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), k.retries);
        }
        #[cfg(target_os = "linux")]
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(k.detection_time()));
    }
}

#[tokio::test]
async fn keepalive_is_set_on_both_ends() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let spec = FrameSpec::new(Framing::Lines);
        let default = Keepalive::default();
        assert_eq!(default.detection_time(), Duration::from_secs(60));

        let mut listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Listener::local_addr(&listener).unwrap();
        let dialer = TcpDialer::new(&addr);
        let dialing = dialer.dial(spec.clone());
        let (accepted, dialed) = tokio::join!(listener.accept(spec.clone()), dialing);
        let (server_side, _) = accepted.unwrap().await.unwrap();
        let (client_side, _) = dialed.unwrap();
        check(server_side.get_ref(), Some(&default));
        check(client_side.get_ref(), Some(&default));

        // Configured, and off.
        let custom = Keepalive::default()
            .idle(Duration::from_secs(5))
            .interval(Duration::from_secs(2))
            .retries(4);
        let mut listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .keepalive(Some(custom));
        let addr = Listener::local_addr(&listener).unwrap();
        let dialer = TcpDialer::new(&addr).keepalive(None);
        let dialing = dialer.dial(spec.clone());
        let (accepted, dialed) = tokio::join!(listener.accept(spec.clone()), dialing);
        check(accepted.unwrap().await.unwrap().0.get_ref(), Some(&custom));
        check(dialed.unwrap().0.get_ref(), None);
    })
    .await
    .expect("test timed out");
}
