//! [`Text`]: a cheaply cloned UTF-8 string that can share a frame's bytes.

use std::{borrow::Borrow, fmt, hash, ops::Deref};

use bytes::Bytes;

/// An immutable UTF-8 string backed by [`Bytes`].
///
/// A command's action and key are usually slices of the frame they arrived
/// in: decoding them costs no allocation, and cloning one is a reference
/// count. It dereferences to `str` and compares with `str` and `String`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(bytestring::ByteString);

impl Text {
    /// A text from a static string.
    pub const fn from_static(s: &'static str) -> Self {
        Self(bytestring::ByteString::from_static(s))
    }

    /// A text sharing `bytes`, if they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        bytestring::ByteString::try_from(bytes).map(Self)
    }

    /// `s` as a text: a slice of `frame` when `s` lies within it (no copy),
    /// a copy otherwise. For protocols, whose decoders borrow from the frame.
    pub fn from_frame(frame: &Bytes, s: &str) -> Self {
        let start = (s.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
        if start <= frame.len() && s.len() <= frame.len() - start {
            // Checked once here (cheap: names and keys are short), never again.
            Self::from_utf8(frame.slice(start..start + s.len())).unwrap_or_else(|_| Self::from(s))
        } else {
            Self::from(s)
        }
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl hash::Hash for Text {
    fn hash<H: hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        t.as_str().to_owned()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, other: &Text) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        *self == other.as_str()
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
