//! File-watch tasks: `notify` events, debounced per path.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use notify::{EventKind, RecursiveMode, Watcher};
use serde_json::json;
use tokio::time::Instant;

use crate::{run, Inner, Task, TaskError};

/// Watches `path` and calls `action` once per burst of events on a file.
pub(crate) fn start(
    inner: Arc<Inner>,
    task: Task,
    path: PathBuf,
    action: String,
    debounce: Duration,
) -> Result<(), TaskError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let failed = |e: notify::Error| TaskError::Watch {
        path: path.clone(),
        reason: e.to_string(),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    })
    .map_err(failed)?;
    watcher
        .watch(&path, RecursiveMode::Recursive)
        .map_err(failed)?;
    tokio::spawn(async move {
        // Kept here: dropping it stops the watch.
        let _watcher = watcher;
        // Each path with an event: when it is due, and what happened last.
        let mut pending: HashMap<PathBuf, (Instant, &'static str)> = HashMap::new();
        loop {
            let next_due = pending.values().map(|(at, _)| *at).min();
            tokio::select! {
                event = rx.recv() => match event {
                    Some(Ok(event)) => {
                        let kind = match event.kind {
                            EventKind::Create(_) => "create",
                            EventKind::Modify(_) => "modify",
                            EventKind::Remove(_) => "remove",
                            _ => continue,
                        };
                        for p in event.paths {
                            let entry = pending.entry(p).or_insert((Instant::now(), kind));
                            entry.0 = Instant::now() + debounce;
                            // A file created then written is still created.
                            if entry.1 != "create" || kind == "remove" {
                                entry.1 = kind;
                            }
                        }
                    }
                    Some(Err(e)) => tracing::warn!(task = %task.name, error = %e, "file watch error"),
                    None => return,
                },
                () = sleep_until(next_due) => {
                    let now = Instant::now();
                    let due: Vec<PathBuf> = pending
                        .iter()
                        .filter(|(_, (at, _))| *at <= now)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in due {
                        let (_, kind) = pending.remove(&p).expect("due paths are pending");
                        let body = json!({"path": p.to_string_lossy(), "kind": kind});
                        let (inner, task, action) = (inner.clone(), task.clone(), action.clone());
                        tokio::spawn(async move { run(&inner, &task, &action, &body).await });
                    }
                }
                () = task.stop.cancelled() => return,
            }
        }
    });
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
