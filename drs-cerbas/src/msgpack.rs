//! Cerbas's MessagePack answer, as its Lua `cmsgpack.pack(cjson.decode(json))`
//! writes it: strings as `str`, whole numbers as integers, other numbers as
//! float32 when that is exact (else float64), `null` as nil, an empty
//! object as an empty array (cjson cannot tell them apart).

use serde_json::Value;

use crate::Answer;

/// The MessagePack bytes of an answer: a map of `data` and `status`.
pub(crate) fn cerbas_msgpack(answer: &Answer) -> Vec<u8> {
    let (data, status) = match answer {
        Answer::Ok(v) => (v.clone(), "ok"),
        Answer::Error(m) => (Value::String(m.clone()), "error"),
    };
    let mut out = Vec::new();
    let _ = rmp::encode::write_map_len(&mut out, 2);
    let _ = rmp::encode::write_str(&mut out, "data");
    write(&mut out, &data);
    let _ = rmp::encode::write_str(&mut out, "status");
    let _ = rmp::encode::write_str(&mut out, status);
    out
}

fn write(out: &mut Vec<u8>, v: &Value) {
    // Writing to a Vec cannot fail.
    match v {
        Value::Null => {
            let _ = rmp::encode::write_nil(out);
        }
        Value::Bool(b) => {
            let _ = rmp::encode::write_bool(out, *b);
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = rmp::encode::write_sint(out, i);
            } else if let Some(u) = n.as_u64() {
                let _ = rmp::encode::write_uint(out, u);
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                    let _ = rmp::encode::write_sint(out, f as i64);
                } else if (f as f32) as f64 == f {
                    let _ = rmp::encode::write_f32(out, f as f32);
                } else {
                    let _ = rmp::encode::write_f64(out, f);
                }
            }
        }
        Value::String(s) => {
            let _ = rmp::encode::write_str(out, s);
        }
        Value::Array(items) => {
            let _ = rmp::encode::write_array_len(out, items.len() as u32);
            for item in items {
                write(out, item);
            }
        }
        Value::Object(map) if map.is_empty() => {
            let _ = rmp::encode::write_array_len(out, 0);
        }
        Value::Object(map) => {
            let _ = rmp::encode::write_map_len(out, map.len() as u32);
            for (k, item) in map {
                let _ = rmp::encode::write_str(out, k);
                write(out, item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pack(data: Value) -> Vec<u8> {
        cerbas_msgpack(&Answer::Ok(data))
    }

    #[test]
    fn the_bytes_are_those_of_cerbas_lua() {
        // {"data": "hello world!", "status": "ok"}
        let mut want = vec![0x82, 0xa4];
        want.extend(b"data");
        want.push(0xac);
        want.extend(b"hello world!");
        want.push(0xa6);
        want.extend(b"status");
        want.push(0xa2);
        want.extend(b"ok");
        assert_eq!(pack(json!("hello world!")), want);
        // 1.5 is a float32; 3 and 3.0 are integers; null is nil.
        let body = |bytes: Vec<u8>| bytes[6..bytes.len() - 10].to_vec();
        assert_eq!(body(pack(json!(1.5))), [0xca, 0x3f, 0xc0, 0, 0]);
        assert_eq!(body(pack(json!(3))), [0x03]);
        assert_eq!(body(pack(json!(3.0))), [0x03]);
        assert_eq!(body(pack(json!(0.1))), {
            let mut v = vec![0xcb];
            v.extend(0.1f64.to_be_bytes());
            v
        });
        assert_eq!(body(pack(json!(null))), [0xc0]);
        // {} and [] are both an empty array.
        assert_eq!(body(pack(json!({}))), [0x90]);
        assert_eq!(body(pack(json!([]))), [0x90]);
        assert_eq!(body(pack(json!(-1))), [0xff]);
    }

    #[test]
    fn errors_carry_their_message() {
        let v: serde_json::Value =
            rmp_serde::from_slice(&cerbas_msgpack(&Answer::Error("timeout".into()))).unwrap();
        assert_eq!(v, json!({"data": "timeout", "status": "error"}));
    }
}
