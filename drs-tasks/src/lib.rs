//! Scheduled work for a drs [`Server`], after Cocaine's drivers and
//! Cerbas's crontab: a task runs an action at times it chooses, through
//! an in-process connection to the server, so the server's router,
//! layers, jails and statistics apply to it as to a command from a peer.
//! A task's failure (a `drs.error`, a panic, a timeout) is logged and
//! counted ([`Task::failures`]); it never stops the task or the server.
//!
//! ```no_run
//! # async fn f(server: drs_core::Server) -> Result<(), drs_tasks::TaskError> {
//! use std::time::Duration;
//! let tasks = drs_tasks::Tasks::attach(&server).await?;
//! tasks.every(Duration::from_secs(60), "cache.refresh", serde_json::json!({}));
//! tasks.every_after(Duration::from_secs(5), "queue.drain", ());
//! tasks.cron("0 3 * * *", chrono_tz::Europe::Berlin, "report.nightly", ())?;
//! tasks.crontab("/etc/drs/crontab", chrono_tz::UTC);
//! tasks.watch("/var/spool/in", "file_changed", Duration::from_millis(200))?;
//! # Ok(()) }
//! ```
//!
//! | task | when |
//! |---|---|
//! | [`every`](Tasks::every) | a recurring timer: at each period from the start, whatever the runs take; runs may overlap, up to a limit ([`every_with`](Tasks::every_with), default 1: a tick that finds the limit reached is skipped and counted) |
//! | [`every_after`](Tasks::every_after) | a drifting timer: the next run starts a period after the previous one ended |
//! | [`cron`](Tasks::cron) | a cron expression (5 fields, or 6 with seconds first) in an explicit time zone, through `croner` |
//! | [`crontab`](Tasks::crontab) | a file of lines `<cron expression> \| <command JSON>` (Cerbas's CRONTAB), reloaded when it changes; a bad line is logged with its number and skipped |
//! | [`watch`](Tasks::watch) | files created or changed under a path (`notify`), debounced: a burst of events on one path is one call, `{"path": …, "kind": "create"\|"modify"\|"remove"}` |

mod cron;
mod watch;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use drs_core::{memory, Body, Client, Conn, Server};
use drs_protocol_json::Json;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use chrono_tz;
pub use cron::{next_after, parse_crontab, CrontabLine};

/// How long one run may take by default before it counts as failed.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a task could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The cron expression does not parse.
    #[error("bad cron expression `{expr}`: {reason}")]
    Cron {
        /// The expression.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body could not be made JSON.
    #[error("the body is not representable as JSON: {0}")]
    Body(#[from] serde_json::Error),
    /// The watch could not be set up.
    #[error("cannot watch {path}: {reason}")]
    Watch {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The in-process connection to the server failed.
    #[error(transparent)]
    Drs(#[from] drs_core::Error),
}

/// What one task did.
#[derive(Debug, Default)]
pub struct TaskStats {
    /// Runs that ended with `drs.response`.
    pub ok: AtomicU64,
    /// Runs that failed (`drs.error`, `drs.exception`, a timeout, the
    /// connection).
    pub failures: AtomicU64,
    /// Ticks of a recurring timer skipped because as many runs as allowed
    /// were still going.
    pub skipped: AtomicU64,
}

/// A scheduled task: cancel it with [`cancel`](Task::cancel); dropping
/// the handle leaves it running.
#[derive(Debug, Clone)]
pub struct Task {
    name: Arc<str>,
    stop: CancellationToken,
    stats: Arc<TaskStats>,
    problems: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Task {
    fn new(name: String, stop: CancellationToken) -> Self {
        Self {
            name: name.into(),
            stop,
            stats: Arc::default(),
            problems: Arc::default(),
        }
    }

    /// What it is, for logs: `every 60s cache.refresh`, `cron 0 3 * * * …`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops it; a run in progress finishes.
    pub fn cancel(&self) {
        self.stop.cancel();
    }

    /// Whether it was cancelled (or its [`Tasks`] shut down).
    pub fn is_cancelled(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Its counters.
    pub fn stats(&self) -> &TaskStats {
        &self.stats
    }

    /// Runs that ended with `drs.response`.
    pub fn runs(&self) -> u64 {
        self.stats.ok.load(Relaxed)
    }

    /// Runs that failed.
    pub fn failures(&self) -> u64 {
        self.stats.failures.load(Relaxed)
    }

    /// Ticks skipped for the overlap limit.
    pub fn skipped(&self) -> u64 {
        self.stats.skipped.load(Relaxed)
    }

    /// A crontab's bad lines as last read: (line number from 1, why).
    pub fn problems(&self) -> Vec<(usize, String)> {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct Inner {
    conn: Conn,
    local_addr: String,
    stop: CancellationToken,
    run_timeout: Duration,
}

/// The tasks of one server; see the [crate docs](crate).
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl Tasks {
    /// Opens the in-process connection tasks run through.
    pub async fn attach(server: &Server) -> Result<Self, TaskError> {
        Self::attach_with(server, DEFAULT_RUN_TIMEOUT).await
    }

    /// [`attach`](Tasks::attach), with the time one run may take.
    pub async fn attach_with(server: &Server, run_timeout: Duration) -> Result<Self, TaskError> {
        let (listener, dialer) = memory::listener();
        let local_addr = server
            .listen(listener, Json)
            .map_err(drs_core::Error::from)?;
        let conn = Client::new().connect(dialer, Json).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                local_addr,
                stop: CancellationToken::new(),
                run_timeout,
            }),
        })
    }

    /// The address of the in-process listener the tasks connect through,
    /// as the server's connections report it (e.g. to let it through an
    /// authenticator: `drs_auth::ListenerTokens::set`
    /// with no token).
    pub fn local_addr(&self) -> &str {
        &self.inner.local_addr
    }

    /// Runs `action` with `body` once, as a task would: whether it ended
    /// with `drs.response`.
    pub async fn run_once(
        &self,
        action: &str,
        body: impl Serialize,
    ) -> Result<Body, drs_core::Error> {
        self.inner
            .conn
            .call::<Body>(action, body)
            .timeout(self.inner.run_timeout)
            .await
    }

    fn task(&self, name: String) -> Task {
        Task::new(name, self.inner.stop.child_token())
    }

    /// A recurring timer: `action` at every `period` from now, whatever
    /// the runs take, one at a time (a tick finding the last run still
    /// going is skipped).
    pub fn every(&self, period: Duration, action: &str, body: impl Serialize) -> Task {
        self.every_with(period, 1, action, body)
    }

    /// [`every`](Tasks::every), with up to `overlap` runs at once.
    pub fn every_with(
        &self,
        period: Duration,
        overlap: usize,
        action: &str,
        body: impl Serialize,
    ) -> Task {
        let task = self.task(format!("every {period:?} {action}"));
        let body = to_value(body);
        let period = period.max(Duration::from_millis(1));
        let running = Arc::new(tokio::sync::Semaphore::new(overlap.max(1)));
        let (inner, t, action) = (self.inner.clone(), task.clone(), action.to_string());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = t.stop.cancelled() => return,
                }
                match running.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (inner, t, action, body) =
                            (inner.clone(), t.clone(), action.clone(), body.clone());
                        tokio::spawn(async move {
                            run(&inner, &t, &action, &body).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        t.stats.skipped.fetch_add(1, Relaxed);
                        tracing::debug!(task = %t.name, "the last runs are still going: tick skipped");
                    }
                }
            }
        });
        task
    }

    /// A drifting timer: `action` a `period` from now, then a `period`
    /// after each run ends.
    pub fn every_after(&self, period: Duration, action: &str, body: impl Serialize) -> Task {
        let task = self.task(format!("every_after {period:?} {action}"));
        let body = to_value(body);
        let (inner, t, action) = (self.inner.clone(), task.clone(), action.to_string());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    () = t.stop.cancelled() => return,
                }
                run(&inner, &t, &action, &body).await;
            }
        });
        task
    }

    /// `action` at the times of the cron expression `expr` (5 fields, or
    /// 6 with seconds first) in time zone `tz`.
    pub fn cron(
        &self,
        expr: &str,
        tz: chrono_tz::Tz,
        action: &str,
        body: impl Serialize,
    ) -> Result<Task, TaskError> {
        let schedule = cron::parse(expr)?;
        let task = self.task(format!("cron {expr} ({tz}) {action}"));
        tokio::spawn(cron::schedule(
            self.inner.clone(),
            task.clone(),
            task.stop.clone(),
            schedule,
            tz,
            action.to_string(),
            to_value(body),
        ));
        Ok(task)
    }

    /// The commands of the crontab file at `path` (lines `<cron
    /// expression> | <command JSON>`, the command `{"action": …, "body":
    /// …}`; blank lines and `#` comments skipped), each at its times in
    /// `tz`. The file is read again when its text changes (checked every
    /// second); a missing file is an empty crontab; a bad line is logged
    /// with its number and skipped ([`Task::problems`]).
    pub fn crontab(&self, path: impl Into<PathBuf>, tz: chrono_tz::Tz) -> Task {
        self.crontab_every(path, tz, Duration::from_secs(1))
    }

    /// [`crontab`](Tasks::crontab), reading the file every `poll`.
    pub fn crontab_every(
        &self,
        path: impl Into<PathBuf>,
        tz: chrono_tz::Tz,
        poll: Duration,
    ) -> Task {
        let path = path.into();
        let task = self.task(format!("crontab {}", path.display()));
        tokio::spawn(cron::run_crontab(
            self.inner.clone(),
            task.clone(),
            path,
            tz,
            poll,
        ));
        task
    }

    /// Calls `action` with `{"path": …, "kind": …}` when a file under
    /// `path` is created, changed or removed, once per burst of events on
    /// that file (`debounce` after its last event).
    pub fn watch(
        &self,
        path: impl Into<PathBuf>,
        action: &str,
        debounce: Duration,
    ) -> Result<Task, TaskError> {
        let path = path.into();
        let task = self.task(format!("watch {} {action}", path.display()));
        watch::start(
            self.inner.clone(),
            task.clone(),
            path,
            action.to_string(),
            debounce,
        )?;
        Ok(task)
    }

    /// Stops every task (runs in progress finish).
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }
}

fn to_value(body: impl Serialize) -> Value {
    serde_json::to_value(body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a task body is not representable as JSON: null sent");
        Value::Null
    })
}

/// One run of `action`: counted, and logged when it fails.
async fn run(inner: &Inner, task: &Task, action: &str, body: &Value) {
    match inner
        .conn
        .call::<Body>(action, body)
        .timeout(inner.run_timeout)
        .await
    {
        Ok(_) => {
            task.stats.ok.fetch_add(1, Relaxed);
        }
        Err(e) => {
            task.stats.failures.fetch_add(1, Relaxed);
            tracing::warn!(task = %task.name, action, error = %e, "a task's run failed");
        }
    }
}
