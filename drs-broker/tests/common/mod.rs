//! What the broker's test files share.

#![allow(dead_code, unreachable_pub)]

use drs_core::Server;
use drs_protocol_json::Json;
use drs_transport_tcp::TcpListener;
use serde_json::Value;

/// Serves `server` on a free port of 127.0.0.1 (JSON over TCP).
pub async fn listen(server: &Server) -> String {
    server
        .listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), Json)
        .unwrap()
}

/// The message of the error a call was refused with.
pub fn message(result: Result<Value, drs_core::Error>) -> String {
    match result {
        Ok(v) => panic!("accepted: {v}"),
        Err(e) => e
            .remote()
            .map(|r| r.message.clone())
            .unwrap_or_else(|| e.to_string()),
    }
}
