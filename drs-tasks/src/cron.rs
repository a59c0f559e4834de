//! Cron expressions (through `croner`: 5 fields, or 6 with seconds
//! first), their next times in a time zone, and crontab files.

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use croner::{
    parser::{CronParser, Seconds},
    Cron,
};
use serde_json::Value;

use crate::{run, Inner, Task, TaskError};

/// Parses `expr`: 5 fields, or 6 with seconds first.
pub(crate) fn parse(expr: &str) -> Result<Cron, TaskError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr.trim())
        .map_err(|e| TaskError::Cron {
            expr: expr.to_string(),
            reason: e.to_string(),
        })
}

/// The first time after `after` that `expr` names in time zone `tz`
/// (`None`: never). At a daylight-saving change (croner's rules, as
/// Vixie cron): a wall-clock time the change skips (02:30 on Europe's
/// spring-forward night) runs at the first time after the gap (03:00);
/// one that happens twice (the autumn night) runs once, the first time.
pub fn next_after(
    expr: &str,
    tz: chrono_tz::Tz,
    after: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, TaskError> {
    let cron = parse(expr)?;
    Ok(next(&cron, tz, after))
}

fn next(cron: &Cron, tz: chrono_tz::Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How long until `cron`'s next time, from the wall clock.
pub(crate) fn until_next(cron: &Cron, tz: chrono_tz::Tz) -> Option<Duration> {
    let now = Utc::now();
    let at = next(cron, tz, now)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// One good line of a crontab.
#[derive(Debug, Clone)]
pub struct CrontabLine {
    /// Its line number, from 1.
    pub line: usize,
    /// The cron expression.
    pub expr: String,
    /// The command's action.
    pub action: String,
    /// The command's body (`null` when absent).
    pub body: Value,
    cron: Cron,
}

/// Parses a crontab: lines `<cron expression> | <command JSON>` whose
/// command is `{"action": "…", "body": …}`; blank lines and lines
/// starting with `#` are skipped. Returns the good lines and, for each
/// bad one, its number (from 1) and why.
pub fn parse_crontab(text: &str) -> (Vec<CrontabLine>, Vec<(usize, String)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((expr, command)) = line.split_once('|') else {
            bad.push((
                n,
                "no `|` between the cron expression and the command".into(),
            ));
            continue;
        };
        let command: Value = match serde_json::from_str(command.trim()) {
            Ok(v) => v,
            Err(e) => {
                bad.push((n, format!("the command is not JSON: {e}")));
                continue;
            }
        };
        let Some(action) = command.get("action").and_then(Value::as_str) else {
            bad.push((n, "the command has no \"action\" string".into()));
            continue;
        };
        match parse(expr) {
            Ok(cron) => good.push(CrontabLine {
                line: n,
                expr: expr.trim().to_string(),
                action: action.to_string(),
                body: command.get("body").cloned().unwrap_or(Value::Null),
                cron,
            }),
            Err(e) => bad.push((n, e.to_string())),
        }
    }
    (good, bad)
}

/// Reads `path` every `poll`; when its text changed, parses it again and
/// schedules its lines afresh.
pub(crate) async fn run_crontab(
    inner: Arc<Inner>,
    task: Task,
    path: PathBuf,
    tz: chrono_tz::Tz,
    poll: Duration,
) {
    let mut text: Option<String> = None;
    let mut generation = task.stop.child_token();
    loop {
        let now = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(task = %task.name, error = %e, "cannot read the crontab");
                text.clone().unwrap_or_default()
            }
        };
        if text.as_deref() != Some(now.as_str()) {
            let (lines, bad) = parse_crontab(&now);
            for (n, why) in &bad {
                tracing::error!(task = %task.name, line = n, "crontab line {n} skipped: {why}");
            }
            tracing::info!(task = %task.name, lines = lines.len(), bad = bad.len(), "crontab read");
            *task.problems.lock().unwrap_or_else(|e| e.into_inner()) = bad;
            generation.cancel();
            generation = task.stop.child_token();
            for line in lines {
                tokio::spawn(schedule(
                    inner.clone(),
                    task.clone(),
                    generation.clone(),
                    line.cron,
                    tz,
                    line.action,
                    line.body,
                ));
            }
            text = Some(now);
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = task.stop.cancelled() => return,
        }
    }
}

/// Runs `action` with `body` at each of `cron`'s times in `tz` until
/// `stop`; each run in a task of its own, so a slow one delays no other.
pub(crate) async fn schedule(
    inner: Arc<Inner>,
    task: Task,
    stop: tokio_util::sync::CancellationToken,
    cron: Cron,
    tz: chrono_tz::Tz,
    action: String,
    body: Value,
) {
    loop {
        let Some(wait) = until_next(&cron, tz) else {
            tracing::warn!(task = %task.name, "the expression has no next time: task ended");
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        let (inner, task, action, body) =
            (inner.clone(), task.clone(), action.clone(), body.clone());
        tokio::spawn(async move { run(&inner, &task, &action, &body).await });
        // Past the second just fired before looking again.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn next_times_in_a_zone_and_with_seconds() {
        let berlin = chrono_tz::Europe::Berlin;
        // 03:00 Berlin in winter is 02:00 UTC.
        assert_eq!(
            next_after("0 3 * * *", berlin, utc(2026, 1, 10, 12, 0, 0)).unwrap(),
            Some(utc(2026, 1, 11, 2, 0, 0))
        );
        // Every 5 minutes.
        assert_eq!(
            next_after("*/5 * * * *", chrono_tz::UTC, utc(2026, 1, 10, 12, 3, 20)).unwrap(),
            Some(utc(2026, 1, 10, 12, 5, 0))
        );
        // Six fields: seconds first.
        assert_eq!(
            next_after(
                "*/15 * * * * *",
                chrono_tz::UTC,
                utc(2026, 1, 10, 12, 3, 20)
            )
            .unwrap(),
            Some(utc(2026, 1, 10, 12, 3, 30))
        );
        assert!(matches!(
            next_after("61 * * * *", chrono_tz::UTC, utc(2026, 1, 1, 0, 0, 0)),
            Err(TaskError::Cron { .. })
        ));
    }

    #[test]
    fn next_times_across_daylight_saving_changes() {
        let berlin = chrono_tz::Europe::Berlin;
        // Spring forward, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30
        // does not exist that night.
        // It runs at 03:00 CEST (01:00 UTC), the first time after the gap.
        assert_eq!(
            next_after("30 2 * * *", berlin, utc(2026, 3, 28, 12, 0, 0)).unwrap(),
            Some(utc(2026, 3, 29, 1, 0, 0))
        );
        // 09:00 local is 08:00 UTC before the change and 07:00 UTC after.
        assert_eq!(
            next_after("0 9 * * *", berlin, utc(2026, 3, 28, 10, 0, 0)).unwrap(),
            Some(utc(2026, 3, 29, 7, 0, 0))
        );
        // Fall back, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 is
        // twice that night, and runs once.
        // The first 02:30 (CEST, 00:30 UTC); the next run is the next
        // night's (CET, 01:30 UTC), not the repeated hour.
        let first = next_after("30 2 * * *", berlin, utc(2026, 10, 24, 12, 0, 0)).unwrap();
        assert_eq!(first, Some(utc(2026, 10, 25, 0, 30, 0)));
        assert_eq!(
            next_after("30 2 * * *", berlin, first.unwrap()).unwrap(),
            Some(utc(2026, 10, 26, 1, 30, 0))
        );
        assert_eq!(
            next_after("0 9 * * *", berlin, utc(2026, 10, 24, 10, 0, 0)).unwrap(),
            Some(utc(2026, 10, 25, 8, 0, 0))
        );
    }

    #[test]
    fn crontab_lines_parse_and_bad_ones_are_numbered() {
        let text = "# nightly\n\
                    0 3 * * * | {\"action\": \"report\", \"body\": {\"full\": true}}\n\
                    \n\
                    */5 * * * * {\"action\": \"x\"}\n\
                    99 * * * * | {\"action\": \"x\"}\n\
                    * * * * * | not json\n\
                    * * * * * | {\"body\": 1}\n\
                    */10 * * * * * | {\"action\": \"tick\"}\n";
        let (good, bad) = parse_crontab(text);
        assert_eq!(good.len(), 2);
        assert_eq!((good[0].line, good[0].action.as_str()), (2, "report"));
        assert_eq!(good[0].body, serde_json::json!({"full": true}));
        assert_eq!((good[1].line, good[1].body.clone()), (8, Value::Null));
        let lines: Vec<usize> = bad.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [4, 5, 6, 7]);
        assert!(bad[0].1.contains("no `|`"));
        assert!(bad[1].1.contains("bad cron expression"));
        assert!(bad[2].1.contains("not JSON"));
        assert!(bad[3].1.contains("\"action\""));
    }
}
