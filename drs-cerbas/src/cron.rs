//! Cerbas's crontab: lines `<cron expression> | <request JSON>`, read again
//! when the file changes, each due minute (UTC; or second, for a 6-field
//! expression) running its requests once.

use std::{path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, Timelike, Utc};
use croner::Cron;

use crate::{run_request, Inner};

/// One line of a crontab.
#[derive(Debug)]
pub(crate) struct Entry {
    cron: Cron,
    request: String,
}

/// Parses a crontab: its entries, and each bad line's number (from 1) and
/// why. Blank lines and lines starting with `#` are skipped.
pub(crate) fn parse(text: &str) -> (Vec<Entry>, Vec<(usize, String)>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((expr, request)) = line.split_once('|') else {
            bad.push((
                i + 1,
                "no `|` between the expression and the request".into(),
            ));
            continue;
        };
        let request = request.trim();
        if serde_json::from_str::<serde_json::Value>(request).is_err() {
            bad.push((i + 1, "the request is not JSON".into()));
            continue;
        }
        match Cron::from_str(expr.trim()) {
            Ok(cron) => entries.push(Entry {
                cron,
                request: request.to_string(),
            }),
            Err(e) => bad.push((i + 1, format!("bad cron expression: {e}"))),
        }
    }
    (entries, bad)
}

/// The requests due in `minute`.
pub(crate) fn due(entries: &[Entry], minute: DateTime<Utc>) -> Vec<&str> {
    entries
        .iter()
        .filter(|e| e.cron.is_time_matching(&minute).unwrap_or(false))
        .map(|e| e.request.as_str())
        .collect()
}

fn second_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

/// Reads `path` four times a second, parsing it again when its text
/// changed, and runs what is due in each second that passed (a 5-field
/// expression is due at second 0 of its minutes; a 6-field one starts
/// with seconds). After a stall, at most the last minute is caught up.
pub(crate) async fn run(path: PathBuf, inner: Arc<Inner>, _halt: crate::Halt) {
    let mut text: Option<String> = None;
    let mut entries = Vec::new();
    let mut last = second_of(Utc::now());
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now_text = tokio::fs::read_to_string(&path).await;
        match now_text {
            Ok(t) if text.as_deref() != Some(t.as_str()) => {
                let (parsed, bad) = parse(&t);
                for (line, why) in bad {
                    tracing::warn!(path = %path.display(), line, %why, "crontab: line skipped");
                }
                tracing::info!(path = %path.display(), entries = parsed.len(), "crontab loaded");
                entries = parsed;
                text = Some(t);
            }
            Ok(_) => {}
            Err(e) => {
                if text.take().is_some() {
                    tracing::warn!(path = %path.display(), error = %e, "crontab unreadable");
                }
                entries.clear();
            }
        }
        let now = second_of(Utc::now());
        let from = (last + chrono::Duration::seconds(1)).max(now - chrono::Duration::seconds(59));
        let mut second = from;
        while second <= now {
            for request in due(&entries, second) {
                let inner = inner.clone();
                let request = request.to_string();
                tokio::spawn(async move { run_request(&inner, &request).await });
            }
            second += chrono::Duration::seconds(1);
        }
        last = last.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn lines_parse_and_bad_ones_are_numbered() {
        let text = "\
# every minute
* * * * * | {\"func\": \"echo\", \"args\": {\"message\": \"yes, sir\"}, \"source\": \"foo\" }

*/5 * * * *   | {\"func\": \"hello\", \"source\": \"foo\"}
not a cron | {\"func\": \"hello\"}
* * * * * {\"func\": \"hello\"}
* * * * * | {not json
";
        let (entries, bad) = parse(text);
        assert_eq!(entries.len(), 2);
        let lines: Vec<usize> = bad.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [5, 6, 7]);
        assert!(bad[0].1.contains("bad cron expression"), "{:?}", bad[0]);
        assert!(bad[1].1.contains("no `|`"));
        assert!(bad[2].1.contains("not JSON"));
    }

    #[test]
    fn due_requests_are_those_whose_minute_matches() {
        let (entries, _) =
            parse("* * * * * | {\"n\": 1}\n*/5 * * * * | {\"n\": 2}\n30 12 * * * | {\"n\": 3}");
        let at = |h, m| Utc.with_ymd_and_hms(2026, 12, 6, h, m, 0).unwrap();
        assert_eq!(due(&entries, at(12, 1)), ["{\"n\": 1}"]);
        assert_eq!(due(&entries, at(12, 5)), ["{\"n\": 1}", "{\"n\": 2}"]);
        assert_eq!(
            due(&entries, at(12, 30)),
            ["{\"n\": 1}", "{\"n\": 2}", "{\"n\": 3}"]
        );
    }
}
