//! The first-bytes check: what a peer's first bytes show it speaks
//! instead of this connection's framing ([`Foreign`]).

use crate::{frame::Foreign, protocol::Framing};

/// What a frame's first bytes (`head`, as many as there are) show,
/// on a stream framed as `framing` whose first frame they begin.
/// `None`: nothing foreign (yet). Garbage that is neither (a stray zero
/// byte) is left to the protocol, which answers it and goes on.
pub(super) fn sniff(framing: Framing, head: &[u8]) -> Option<Foreign> {
    let http_request = starts_http_request(head);
    match framing {
        Framing::Lines => match head {
            // A length prefix (a zero byte first: frames under 16 MiB)
            // and a MessagePack map, as a drs MessagePack frame starts.
            [0x00, _, _, _, 0x80..=0x8f | 0xde | 0xdf, ..] => Some(Foreign::MessagePack),
            _ if head.starts_with(b"HTTP/") => Some(Foreign::HttpResponse),
            _ if http_request => Some(Foreign::HttpRequest),
            _ => None,
        },
        Framing::LengthPrefixed => match head.first() {
            Some(b'{' | b'[') => Some(Foreign::Json),
            _ if head.starts_with(b"HTTP") => Some(Foreign::HttpResponse),
            _ if http_request
                || [&b"POST"[..], b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN"]
                    .iter()
                    .any(|m| head.starts_with(m)) =>
            {
                Some(Foreign::HttpRequest)
            }
            _ => None,
        },
    }
}

/// Whether `bytes` begin as an HTTP request line does (`GET `, `POST `,
/// … with its space), as a browser, `curl` or a WebSocket handshake sends.
pub fn starts_http_request(bytes: &[u8]) -> bool {
    const METHODS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
    ];
    METHODS.iter().any(|m| bytes.starts_with(m))
}
