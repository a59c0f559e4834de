//! `ext` through the public API.

use drs_core::*;

#[test]
fn one_value_per_type() {
    let mut e = Extensions::new();
    assert!(e.is_empty());
    assert_eq!(e.insert(5u32), None);
    assert_eq!(e.insert(6u32), Some(5));
    e.insert(String::from("x"));
    assert_eq!(e.get::<u32>(), Some(&6));
    *e.get_mut::<String>().unwrap() += "y";
    assert_eq!(e.remove::<String>().as_deref(), Some("xy"));
    assert_eq!(e.get::<u64>(), None);
    assert_eq!(e.len(), 1);
}
