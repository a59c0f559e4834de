//! `transport` through the public API.

use drs_core::*;

#[test]
fn query_params_are_found_and_decoded() {
    let info = ConnInfo::new("ws").with_target("/socket?token=a%20b&x=1+2&flag&bad=%zz");
    assert_eq!(info.path(), Some("/socket"));
    assert_eq!(info.query_param("token").as_deref(), Some("a b"));
    assert_eq!(info.query_param("x").as_deref(), Some("1 2"));
    assert_eq!(info.query_param("flag").as_deref(), Some(""));
    assert_eq!(info.query_param("bad").as_deref(), Some("%zz"));
    assert_eq!(info.query_param("missing"), None);
    assert_eq!(ConnInfo::new("tcp").query_param("token"), None);
}
