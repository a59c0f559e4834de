//! Tasks against a real server: recurring and drifting timers and the
//! overlap limit on a paused clock; failures counted and survived; cron
//! and a crontab reloaded on change on the wall clock; a file-watch burst
//! debounced into one call.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use drs_core::{HandlerError, HandlerResult, Server};
use drs_tasks::Tasks;
use serde_json::{json, Value};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

/// A server whose `work` records when each run started (ms since `t0`)
/// and takes `{"ms": n}`.
fn server(t0: Instant) -> (Server, Arc<Mutex<Vec<u64>>>) {
    let server = Server::new();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let seen = starts.clone();
    server.on("work", move |args: Value| {
        seen.lock().unwrap().push(t0.elapsed().as_millis() as u64);
        async move {
            let ms = args["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            HandlerResult::Ok(ms)
        }
    });
    server.on("fail", || async {
        Err::<(), _>(HandlerError::new("on purpose"))
    });
    (server, starts)
}

/// Waits (on the paused clock) until `f` holds.
async fn until(mut f: impl FnMut() -> bool) {
    while !f() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_recurring_timer_keeps_its_period_and_a_drifting_one_waits_for_each_run() {
    let t0 = Instant::now();
    let (server, starts) = server(t0);
    let tasks = within(Tasks::attach(&server)).await.unwrap();
    let every = tasks.every(Duration::from_secs(1), "work", json!({"ms": 300}));
    within(until(|| starts.lock().unwrap().len() >= 3)).await;
    every.cancel();
    assert_eq!(*starts.lock().unwrap(), [1000, 2000, 3000]);

    let (server, starts) = self::server(Instant::now());
    let tasks = within(Tasks::attach(&server)).await.unwrap();
    let drifting = tasks.every_after(Duration::from_secs(1), "work", json!({"ms": 300}));
    within(until(|| starts.lock().unwrap().len() >= 3)).await;
    drifting.cancel();
    assert_eq!(*starts.lock().unwrap(), [1000, 2300, 3600]);
    within(until(|| drifting.runs() == 3)).await;
    assert_eq!((drifting.failures(), drifting.skipped()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn overlapping_runs_are_limited_and_skipped_ticks_counted() {
    let t0 = Instant::now();
    let (server, starts) = server(t0);
    let tasks = within(Tasks::attach(&server)).await.unwrap();
    // Ticks every 100 ms, runs of 250 ms, at most 2 at once.
    let task = tasks.every_with(Duration::from_millis(100), 2, "work", json!({"ms": 250}));
    within(until(|| starts.lock().unwrap().len() >= 7)).await;
    task.cancel();
    // Ticks at 300, 600 and 900 find two runs going.
    assert_eq!(
        *starts.lock().unwrap(),
        [100, 200, 400, 500, 700, 800, 1000]
    );
    assert_eq!(task.skipped(), 3);
}

#[tokio::test(start_paused = true)]
async fn failures_are_counted_and_the_task_goes_on() {
    let (server, _) = server(Instant::now());
    let stats = drs_stats::Stats::install(&server);
    let tasks = within(Tasks::attach(&server)).await.unwrap();
    let task = tasks.every_after(Duration::from_millis(100), "fail", ());
    let missing = tasks.every(Duration::from_millis(100), "no.such.action", ());
    within(until(|| task.failures() >= 5 && missing.failures() >= 5)).await;
    tasks.shutdown();
    assert!(task.is_cancelled() && missing.is_cancelled());
    assert_eq!(task.runs(), 0);
    // The runs went through the server's router: its statistics have them.
    assert!(
        stats
            .of("fail")
            .unwrap()
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );
}

#[tokio::test]
async fn a_cron_task_fires_on_the_wall_clock() {
    let (server, starts) = server(Instant::now());
    let tasks = within(Tasks::attach(&server)).await.unwrap();
    let task = tasks
        .cron("* * * * * *", chrono_tz::UTC, "work", json!({"ms": 0}))
        .unwrap();
    within(async {
        while task.runs() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    task.cancel();
    assert!(starts.lock().unwrap().len() >= 2);
    assert!(matches!(
        tasks.cron("not cron", chrono_tz::UTC, "work", ()),
        Err(drs_tasks::TaskError::Cron { .. })
    ));
}

#[tokio::test]
async fn a_crontab_is_reloaded_when_it_changes_and_bad_lines_are_reported() {
    let server = Server::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for action in ["tick", "tock"] {
        let tx = tx.clone();
        server.on(action, move |body: Value| {
            let _ = tx.send(format!("{action} {body}"));
            async { HandlerResult::Ok(()) }
        });
    }
    let dir = std::env::temp_dir().join(format!("drs-tasks-crontab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("crontab");
    std::fs::write(
        &path,
        "# every second\n* * * * * * | {\"action\": \"tick\", \"body\": 1}\nnot a line\n",
    )
    .unwrap();
    let tasks = within(Tasks::attach(&server)).await.unwrap();
    let task = tasks.crontab_every(&path, chrono_tz::UTC, Duration::from_millis(50));
    assert_eq!(within(rx.recv()).await.unwrap(), "tick 1");
    let problems = task.problems();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0, 3, "{problems:?}");

    std::fs::write(&path, "* * * * * * | {\"action\": \"tock\"}\n").unwrap();
    // Ticks may still come until the change is read; then only tocks.
    loop {
        if within(rx.recv()).await.unwrap() == "tock null" {
            break;
        }
    }
    for _ in 0..2 {
        assert_eq!(within(rx.recv()).await.unwrap(), "tock null");
    }
    assert!(task.problems().is_empty());
    task.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_burst_of_file_events_is_one_call() {
    let server = Server::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    server.on("file_changed", move |body: Value| {
        let _ = tx.send(body);
        async { HandlerResult::Ok(()) }
    });
    let dir = std::env::temp_dir().join(format!("drs-tasks-watch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tasks = within(Tasks::attach(&server)).await.unwrap();
    let task = tasks
        .watch(&dir, "file_changed", Duration::from_millis(300))
        .unwrap();
    let burst = dir.join("burst.txt");
    for i in 0..5 {
        std::fs::write(&burst, format!("version {i}")).unwrap();
    }
    let first = within(rx.recv()).await.unwrap();
    assert_eq!(first["path"], burst.to_string_lossy().as_ref());
    assert_eq!(first["kind"], "create");
    // Another file later: its call comes next, with none for the burst
    // in between.
    let later = dir.join("later.txt");
    std::fs::write(&later, "x").unwrap();
    let second = within(rx.recv()).await.unwrap();
    assert_eq!(second["path"], later.to_string_lossy().as_ref(), "{second}");
    assert_eq!(task.runs(), 2);
    task.cancel();
    assert!(matches!(
        tasks.watch(
            dir.join("missing/dir"),
            "file_changed",
            Duration::from_millis(10)
        ),
        Err(drs_tasks::TaskError::Watch { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
