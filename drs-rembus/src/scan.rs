//! What a CBOR frame will cost to decode, found without decoding it.
//!
//! Decoding builds a tree of values: one CBOR byte (a small integer) is a
//! value of several dozen bytes in memory, so an 8 MB array of zeros would
//! take hundreds of MiB while it is converted. Before decoding, the frame
//! is walked once, allocating nothing: a count that its bytes cannot carry
//! is refused, and so is a frame whose values would take more than
//! [`MAX_DECODED`] bytes. Decoding is synchronous, so at most one frame per
//! runtime thread is being decoded at a time: what decoding holds is
//! bounded by the threads times this.

/// The most memory one frame's decoded values may take.
pub const MAX_DECODED: usize = 32 << 20;

/// Nesting deeper than this is refused (as the other protocols do).
const MAX_DEPTH: usize = 128;

/// What one decoded value takes besides its text or bytes.
const VALUE: usize = std::mem::size_of::<ciborium::Value>();

/// Why a frame is refused before decoding: its text is the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) String);

impl Refused {
    fn malformed(what: impl std::fmt::Display) -> Self {
        Refused(format!("invalid CBOR: {what}"))
    }
}

/// Checks that `frame` holds one well-delimited CBOR item whose decoded
/// values take at most `max` bytes; returns what they take.
pub(crate) fn decoded_size(frame: &[u8], max: usize) -> Result<usize, Refused> {
    let mut scan = Scan {
        frame,
        pos: 0,
        cost: 0,
        max,
    };
    scan.item(0)?;
    Ok(scan.cost)
}

struct Scan<'a> {
    frame: &'a [u8],
    pos: usize,
    cost: usize,
    max: usize,
}

impl Scan<'_> {
    fn byte(&mut self) -> Result<u8, Refused> {
        let b = *self
            .frame
            .get(self.pos)
            .ok_or_else(|| Refused::malformed("the item ends early"))?;
        self.pos += 1;
        Ok(b)
    }

    fn remaining(&self) -> usize {
        self.frame.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<(), Refused> {
        if n > self.remaining() {
            return Err(Refused::malformed("the item ends early"));
        }
        self.pos += n;
        Ok(())
    }

    fn charge(&mut self, bytes: usize) -> Result<(), Refused> {
        self.cost = self.cost.saturating_add(bytes);
        if self.cost > self.max {
            return Err(Refused(format!(
                "the frame decodes to more than {} MiB of values; send fewer, larger elements",
                self.max >> 20
            )));
        }
        Ok(())
    }

    /// The argument of an initial byte; `None` for an indefinite length.
    fn argument(&mut self, info: u8) -> Result<Option<u64>, Refused> {
        let n = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => self.be(2)?,
            26 => self.be(4)?,
            27 => self.be(8)?,
            31 => return Ok(None),
            _ => {
                return Err(Refused::malformed(format!(
                    "reserved additional information {info}"
                )))
            }
        };
        Ok(Some(n))
    }

    fn be(&mut self, n: usize) -> Result<u64, Refused> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 8) | u64::from(self.byte()?);
        }
        Ok(v)
    }

    /// A count of elements, each taking at least `min_bytes`: refused if
    /// the rest of the frame cannot carry them.
    fn count(&self, n: u64, min_bytes: usize) -> Result<usize, Refused> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n.saturating_mul(min_bytes) > self.remaining() {
            return Err(Refused::malformed(format!(
                "an item declares {n} elements that its {} bytes cannot carry",
                self.remaining()
            )));
        }
        Ok(n)
    }

    fn item(&mut self, depth: usize) -> Result<(), Refused> {
        if depth > MAX_DEPTH {
            return Err(Refused::malformed(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let initial = self.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        self.charge(VALUE)?;
        match (major, self.argument(info)?) {
            (0 | 1, Some(_)) => Ok(()),
            (2 | 3, Some(len)) => {
                let len = self.count(len, 1)?;
                self.charge(len)?;
                self.take(len)
            }
            (2 | 3, None) => loop {
                // Chunks of the same major type, until a break.
                if self.frame.get(self.pos) == Some(&0xff) {
                    self.pos += 1;
                    return Ok(());
                }
                let chunk = self.byte()?;
                if chunk >> 5 != major {
                    return Err(Refused::malformed("a string chunk of another type"));
                }
                let len = self
                    .argument(chunk & 0x1f)?
                    .ok_or_else(|| Refused::malformed("a nested indefinite string"))?;
                let len = self.count(len, 1)?;
                self.charge(len)?;
                self.take(len)?;
            },
            (4 | 5, Some(n)) => {
                let per = if major == 4 { 1 } else { 2 };
                let n = self.count(n, per)?;
                for _ in 0..n * per {
                    self.item(depth + 1)?;
                }
                Ok(())
            }
            (4 | 5, None) => loop {
                if self.frame.get(self.pos) == Some(&0xff) {
                    self.pos += 1;
                    return Ok(());
                }
                self.item(depth + 1)?;
                if major == 5 {
                    self.item(depth + 1)?;
                }
            },
            (6, Some(_)) => self.item(depth + 1),
            (7, Some(_)) => Ok(()),
            (7, None) => Err(Refused::malformed("an unexpected break")),
            (_, None) => Err(Refused::malformed("an indefinite length where none may be")),
            _ => Err(Refused::malformed("an unknown type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(v: &ciborium::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn what_decodes_is_accepted_and_priced() {
        use ciborium::Value as V;
        let v = V::Array(vec![
            V::Integer(1.into()),
            V::Text("topic".into()),
            V::Array(vec![V::Float(1.5), V::Bytes(vec![0; 10]), V::Null]),
            V::Map(vec![(V::Text("k".into()), V::Bool(true))]),
            V::Tag(80, Box::new(V::Bytes(vec![1, 2]))),
        ]);
        let bytes = cbor(&v);
        let cost = decoded_size(&bytes, MAX_DECODED).unwrap();
        assert_eq!(cost, 12 * VALUE + 5 + 10 + 1 + 2);
        // Indefinite lengths, as some encoders write them.
        let indefinite = [0x9f, 0x01, 0x7f, 0x61, b'a', 0x61, b'b', 0xff, 0xff];
        assert_eq!(
            decoded_size(&indefinite, MAX_DECODED).unwrap(),
            3 * VALUE + 2
        );
    }

    #[test]
    fn amplification_and_lies_are_refused() {
        // [1, "t", [0 × 1M]]: 1 MB that would be tens of MiB of values.
        let mut frame = vec![0x83, 0x01, 0x61, b't', 0x9a];
        frame.extend(1_000_000u32.to_be_bytes());
        frame.extend(std::iter::repeat_n(0u8, 1_000_000));
        let refused = decoded_size(&frame, 8 << 20).unwrap_err();
        assert!(refused.0.contains("more than 8 MiB"), "{refused:?}");
        assert!(decoded_size(&frame, MAX_DECODED).is_ok());
        // A count the bytes cannot carry.
        let lie = [0x9b, 0, 0, 0, 1, 0, 0, 0, 0, 0x00];
        assert!(decoded_size(&lie, MAX_DECODED)
            .unwrap_err()
            .0
            .contains("cannot carry"));
        let long_text = [0x7a, 0xff, 0xff, 0xff, 0xff, b'a'];
        assert!(decoded_size(&long_text, MAX_DECODED).is_err());
        // Too deep, truncated, a stray break, reserved bits.
        let deep = vec![0x81; 200];
        assert!(decoded_size(&deep, MAX_DECODED)
            .unwrap_err()
            .0
            .contains("deeper"));
        for bad in [&[0x82, 0x01][..], &[0xff], &[0x1c], &[0x9f, 0x01]] {
            assert!(decoded_size(bad, MAX_DECODED).is_err(), "{bad:?}");
        }
    }
}
