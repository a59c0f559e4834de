//! Streams a value from a deserializer straight into a serializer, without
//! building a tree: how a body received in one protocol is re-sent in
//! another.
//!
//! Unlike `serde_transcode`, an error of the serializer is carried back as
//! it is, never turned into text on the way: erased-serde's serializer
//! errors cannot be displayed (their `Display` is `unimplemented!`), so a
//! transcoder that formats them panics whenever a nested value fails. Only
//! the deserializer's errors are ever formatted.

use std::{cell::RefCell, fmt};

use serde::{
    de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor},
    ser::{self, SerializeMap, SerializeSeq, Serializer},
    Serialize,
};

/// What the deserializer sees when the serializer failed; the real error
/// is in the slot.
const SERIALIZER_FAILED: &str = "the serializer failed";

/// Transcodes one value from `d` into `s`.
pub(crate) fn transcode<'de, D: Deserializer<'de>, S: Serializer>(
    d: D,
    s: S,
) -> Result<S::Ok, S::Error> {
    Transcoder::new(d).serialize(s)
}

/// A deserializer as a value to serialize (once).
struct Transcoder<D>(RefCell<Option<D>>);

impl<D> Transcoder<D> {
    fn new(d: D) -> Self {
        Self(RefCell::new(Some(d)))
    }
}

impl<'de, D: Deserializer<'de>> Serialize for Transcoder<D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(d) = self.0.borrow_mut().take() else {
            return Err(ser::Error::custom(
                "a transcoded value was serialized twice",
            ));
        };
        let slot = RefCell::new(None);
        match d.deserialize_any(Visit { s, slot: &slot }) {
            Ok(ok) => Ok(ok),
            Err(e) => Err(match slot.into_inner() {
                Some(ser_error) => ser_error,
                None => ser::Error::custom(e),
            }),
        }
    }
}

/// Keeps the serializer's error, and gives the deserializer one to unwind with.
fn stash<E, DE: de::Error>(slot: &RefCell<Option<E>>, e: E) -> DE {
    slot.borrow_mut().get_or_insert(e);
    DE::custom(SERIALIZER_FAILED)
}

struct Visit<'a, S: Serializer> {
    s: S,
    slot: &'a RefCell<Option<S::Error>>,
}

macro_rules! scalars {
    ($($visit:ident($t:ty) => $ser:ident;)*) => {$(
        fn $visit<E: de::Error>(self, v: $t) -> Result<S::Ok, E> {
            self.s.$ser(v).map_err(|e| stash(self.slot, e))
        }
    )*};
}

impl<'de, S: Serializer> Visitor<'de> for Visit<'_, S> {
    type Value = S::Ok;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    scalars! {
        visit_bool(bool) => serialize_bool;
        visit_i8(i8) => serialize_i8;
        visit_i16(i16) => serialize_i16;
        visit_i32(i32) => serialize_i32;
        visit_i64(i64) => serialize_i64;
        visit_i128(i128) => serialize_i128;
        visit_u8(u8) => serialize_u8;
        visit_u16(u16) => serialize_u16;
        visit_u32(u32) => serialize_u32;
        visit_u64(u64) => serialize_u64;
        visit_u128(u128) => serialize_u128;
        visit_f32(f32) => serialize_f32;
        visit_f64(f64) => serialize_f64;
        visit_char(char) => serialize_char;
        visit_str(&str) => serialize_str;
        visit_bytes(&[u8]) => serialize_bytes;
    }

    fn visit_none<E: de::Error>(self) -> Result<S::Ok, E> {
        self.s.serialize_none().map_err(|e| stash(self.slot, e))
    }

    fn visit_unit<E: de::Error>(self) -> Result<S::Ok, E> {
        self.s.serialize_unit().map_err(|e| stash(self.slot, e))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<S::Ok, D::Error> {
        self.s
            .serialize_some(&Transcoder::new(d))
            .map_err(|e| stash(self.slot, e))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<S::Ok, D::Error> {
        Transcoder::new(d)
            .serialize(self.s)
            .map_err(|e| stash(self.slot, e))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<S::Ok, A::Error> {
        let slot = self.slot;
        let mut out = self
            .s
            .serialize_seq(seq.size_hint())
            .map_err(|e| stash(slot, e))?;
        while seq
            .next_element_seed(Element {
                out: &mut out,
                slot,
            })?
            .is_some()
        {}
        out.end().map_err(|e| stash(slot, e))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<S::Ok, A::Error> {
        let slot = self.slot;
        let mut out = self
            .s
            .serialize_map(map.size_hint())
            .map_err(|e| stash(slot, e))?;
        while map
            .next_key_seed(Entry {
                out: &mut out,
                slot,
                key: true,
            })?
            .is_some()
        {
            map.next_value_seed(Entry {
                out: &mut out,
                slot,
                key: false,
            })?;
        }
        out.end().map_err(|e| stash(slot, e))
    }
}

/// Serializes one element of a sequence as the deserializer yields it.
struct Element<'a, O: SerializeSeq> {
    out: &'a mut O,
    slot: &'a RefCell<Option<O::Error>>,
}

impl<'de, O: SerializeSeq> DeserializeSeed<'de> for Element<'_, O> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.out
            .serialize_element(&Transcoder::new(d))
            .map_err(|e| stash(self.slot, e))
    }
}

/// Serializes one key or value of a map as the deserializer yields it.
struct Entry<'a, O: SerializeMap> {
    out: &'a mut O,
    slot: &'a RefCell<Option<O::Error>>,
    key: bool,
}

impl<'de, O: SerializeMap> DeserializeSeed<'de> for Entry<'_, O> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let value = Transcoder::new(d);
        let done = if self.key {
            self.out.serialize_key(&value)
        } else {
            self.out.serialize_value(&value)
        };
        done.map_err(|e| stash(self.slot, e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_to_json_through_the_transcoder() {
        let text = r#"{"a":[1,-2,3.5,null,true,"x\u00e9"],"b":{"c":[]}}"#;
        let mut de = serde_json::Deserializer::from_str(text);
        let mut out = Vec::new();
        super::transcode(&mut de, &mut serde_json::Serializer::new(&mut out)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":[1,-2,3.5,null,true,"xé"],"b":{"c":[]}}"#
        );
        // A deserializer error deep inside comes out as an error.
        let mut de = serde_json::Deserializer::from_str("[[1, 1e400]]");
        let mut out = Vec::new();
        let err =
            super::transcode(&mut de, &mut serde_json::Serializer::new(&mut out)).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}
