//! A command's body from the command line: JSON given as an argument,
//! `@FILE`, `-` for stdin, or stdin when no body is given and stdin is not
//! a terminal.

use std::io::{IsTerminal, Read};

use serde_json::Value;

use crate::exit::Failure;

/// The body `arg` stands for; `None` when there is none (no argument and
/// stdin a terminal or empty).
pub(crate) fn read(arg: Option<&str>) -> Result<Option<Value>, Failure> {
    let (text, origin) = match arg {
        Some("-") => (stdin()?, "stdin".to_string()),
        Some(file) if file.starts_with('@') => {
            let path = &file[1..];
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("cannot read the body from {path}: {e}")))?;
            (text, path.to_string())
        }
        Some(json) => (json.to_string(), "the BODY argument".to_string()),
        None if std::io::stdin().is_terminal() => return Ok(None),
        None => {
            let text = stdin()?;
            if text.trim().is_empty() {
                return Ok(None);
            }
            (text, "stdin".to_string())
        }
    };
    parse(&text, &origin).map(Some)
}

/// `text` as one JSON value.
pub(crate) fn parse(text: &str, origin: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| {
        Failure::usage(format!(
            "the body in {origin} is not JSON: {e} (a string is quoted: '\"text\"')"
        ))
    })
}

fn stdin() -> Result<String, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Failure::usage(format!("cannot read the body from stdin: {e}")))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_json_and_bad_json_is_a_usage_error() {
        assert_eq!(
            read(Some("{\"a\": 1}")).unwrap(),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(read(Some("\"hi\"")).unwrap(), Some(Value::from("hi")));
        let e = read(Some("hi")).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE);
        assert!(e.message.contains("not JSON"), "{}", e.message);
        let e = read(Some("@/nonexistent/body.json")).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE);
        assert!(
            e.message.contains("/nonexistent/body.json"),
            "{}",
            e.message
        );
    }
}
