//! Errors in the words of the wire: what a handler's argument wanted,
//! said in JSON's terms rather than serde's and Rust's.

/// What a body that did not deserialize is told, from serde's message:
/// what the action wanted in JSON's words.
pub(crate) fn body_error(action: &str, absent: bool, message: &str) -> String {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        return format!("{action}'s body misses field `{field}`");
    }
    // serde_json ends with where it was: " at line L column C".
    let (message, place) = match message.rsplit_once(" at line ") {
        Some((m, p)) if p.contains(" column ") => (
            m,
            format!(" (line {})", p.replacen(" column ", ", column ", 1)),
        ),
        _ => (message, String::new()),
    };
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let expected = json_words(expected);
            let nothing = found == "unit value" || (found == "null" && place.is_empty());
            return if absent || nothing {
                format!("{action} needs a body: {expected}")
            } else {
                format!(
                    "{action}'s body has {} where {expected} was wanted{place}",
                    json_found(found)
                )
            };
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "{action}'s body has {found} elements where {} was wanted{place}",
                json_words(expected)
            );
        }
    }
    format!("invalid body for {action}: {message}{place}")
}

/// serde's name of what was expected, as JSON says it.
fn json_words(expected: &str) -> String {
    let e = expected.trim();
    let number = [
        "f64", "f32", "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64",
        "u128", "usize",
    ];
    if number.contains(&e) || e.starts_with("a number") || e.contains("integer") {
        "a number".into()
    } else if e.starts_with("struct ") || e == "a map" || e.starts_with("map") {
        "an object".into()
    } else if e == "a boolean" || e == "bool" {
        "true or false".into()
    } else if e == "a string" || e == "a borrowed string" || e == "a character" {
        "a string".into()
    } else if e == "a sequence" || e.starts_with("a sequence") {
        "an array".into()
    } else if let Some(n) = e.strip_prefix("tuple of ") {
        format!("an array of {n}")
    } else if let Some(n) = e.strip_prefix("a tuple of size ") {
        format!("an array of {n} elements")
    } else if e == "unit" {
        "nothing".into()
    } else if let Some(rest) = e.strip_prefix("struct variant ") {
        format!("the variant {rest}")
    } else {
        e.to_string()
    }
}

/// serde's name of what was found, as JSON says it.
fn json_found(found: &str) -> String {
    match found {
        "map" => "an object".into(),
        "sequence" => "an array".into(),
        "unit value" => "null".into(),
        f if f.starts_with("integer ") || f.starts_with("floating point ") => {
            format!(
                "the number {}",
                f.rsplit(' ').next().unwrap_or(f).trim_matches('`')
            )
        }
        f if f.starts_with("boolean ") => f.trim_start_matches("boolean ").trim_matches('`').into(),
        f if f.starts_with("string ") => format!("the string {}", &f["string ".len()..]),
        f => f.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::body_error;

    #[test]
    fn serde_messages_in_json_words() {
        for (absent, message, said) in [
            (
                true,
                "invalid type: unit value, expected struct Add",
                "add needs a body: an object",
            ),
            (
                false,
                "invalid type: null, expected f64",
                "add needs a body: a number",
            ),
            (
                false,
                "missing field `b` at line 1 column 7",
                "add's body misses field `b`",
            ),
            (
                false,
                "invalid type: string \"x\", expected struct Add at line 1 column 3",
                "add's body has the string \"x\" where an object was wanted (line 1, column 3)",
            ),
            (
                false,
                "invalid type: sequence, expected struct Add",
                "add's body has an array where an object was wanted",
            ),
            (
                false,
                "invalid type: integer `3`, expected a string",
                "add's body has the number 3 where a string was wanted",
            ),
            (
                false,
                "invalid length 1, expected tuple of 2 elements",
                "add's body has 1 elements where an array of 2 elements was wanted",
            ),
            (
                false,
                "invalid type: map, expected a boolean",
                "add's body has an object where true or false was wanted",
            ),
            (
                false,
                "expected value at line 1 column 1",
                "invalid body for add: expected value (line 1, column 1)",
            ),
        ] {
            assert_eq!(body_error("add", absent, message), said, "{message}");
        }
    }
}
