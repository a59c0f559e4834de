//! `text` through the public API.

use bytes::Bytes;
use drs_core::*;

#[test]
fn shares_and_compares() {
    let frame = Bytes::from_static(b"xxechoyy");
    let t = Text::from_utf8(frame.slice(2..6)).unwrap();
    assert_eq!(t, "echo");
    assert_eq!(t.len(), 4);
    assert_eq!(format!("{t} {t:?}"), "echo \"echo\"");
    assert!(Text::from_utf8(Bytes::from_static(b"\xff")).is_err());
    assert_eq!(Text::from(String::from("a")), Text::from_static("a"));
    let s: String = t.into();
    assert_eq!(s, "echo");
    let inside = Text::from_frame(&frame, std::str::from_utf8(&frame[2..6]).unwrap());
    assert_eq!(inside.as_bytes().as_ptr(), frame[2..].as_ptr(), "no copy");
    let outside = Text::from_frame(&frame, "echo");
    assert_eq!(outside, "echo");
}
