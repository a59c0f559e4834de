//! [`Foreign`]: what a peer's first bytes show it speaks instead.

use std::fmt;

use crate::protocol::Framing;

/// What a peer's first bytes show it speaks, when it is not this
/// connection's framing: another protocol, or HTTP. A transport yields it
/// as an item of its stream ([`Inbound::Foreign`](crate::Inbound::Foreign));
/// the connection says so (a server to its peer, a client to its calls)
/// and closes: the stream cannot be read as frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Foreign {
    /// Binary data where a line of JSON was expected: MessagePack's
    /// length-prefixed frames begin with a zero byte.
    MessagePack,
    /// JSON text where a length-prefixed frame was expected.
    Json,
    /// An HTTP request (a browser, `curl`, a WebSocket handshake).
    HttpRequest,
    /// An HTTP response (the port is an HTTP or WebSocket server).
    HttpResponse,
}

impl Foreign {
    /// What the peer speaks, in words: `MessagePack`, `JSON`, `HTTP`.
    pub fn speaks(self) -> &'static str {
        match self {
            Foreign::MessagePack => "MessagePack",
            Foreign::Json => "JSON",
            Foreign::HttpRequest | Foreign::HttpResponse => "HTTP",
        }
    }

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

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Foreign::MessagePack => "MessagePack",
            Foreign::Json => "JSON",
            Foreign::HttpRequest => "an HTTP request",
            Foreign::HttpResponse => "an HTTP response",
        })
    }
}
