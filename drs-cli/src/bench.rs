//! `drs bench`: calls/s and latency percentiles of one action on any drs
//! server.

use std::{
    io::IsTerminal,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use drs::{Body, Client};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::{
    body, commands,
    exit::{self, Failure},
    Conn,
};

/// `drs bench`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    conn: Conn,
    /// The action to call
    #[arg(default_value = "echo")]
    action: String,
    /// The body of every call: JSON, @FILE, or - for stdin (default: a 64-byte string)
    body: Option<String>,
    /// Connections to call on
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    connections: u64,
    /// Calls in flight on each connection
    #[arg(long, default_value = "64", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// How many calls in all (default: 10000 unless --duration is given)
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    calls: Option<u64>,
    /// How long to call, in seconds (fractions allowed)
    #[arg(long, value_name = "SECONDS", value_parser = crate::seconds)]
    duration: Option<Duration>,
}

/// When the run ends.
#[derive(Debug, Clone, Copy)]
enum Until {
    Calls(u64),
    Deadline(Instant),
}

/// What one run measured.
struct Report {
    ok: u64,
    failed: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    first_error: Option<String>,
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), Failure> {
    let body = match body::read(args.body.as_deref())? {
        Some(body) => body,
        None => Value::String("x".repeat(64)),
    };
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        conns.push(commands::connect(&args.conn, Client::new()).await?);
    }
    // One call first: a wrong action or body fails here, not a
    // hundred thousand times.
    conns[0]
        .call::<Body>(&args.action, &body)
        .await
        .map_err(|e| {
            let mut f = Failure::from_drs(e);
            f.message = format!("the first call failed: {}", f.message);
            f
        })?;

    let until = match (args.calls, args.duration) {
        (_, Some(d)) => Until::Deadline(Instant::now() + d),
        (Some(n), None) => Until::Calls(n),
        (None, None) => Until::Calls(10_000),
    };
    let bar = progress(until, args.duration);
    let started = AtomicU64::new(0);
    let done = Arc::new((started, AtomicU64::new(0)));
    let body = Arc::new(body);
    let start = Instant::now();
    let mut workers = Vec::new();
    for conn in &conns {
        for _ in 0..args.concurrency {
            let (conn, body, done) = (conn.clone(), body.clone(), done.clone());
            let action = args.action.clone();
            workers.push(tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).expect("3 significant figures");
                let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
                loop {
                    match until {
                        Until::Calls(n) if done.0.fetch_add(1, Ordering::Relaxed) >= n => break,
                        Until::Deadline(t) if Instant::now() >= t => break,
                        _ => {}
                    }
                    let t0 = Instant::now();
                    match conn.call::<Body>(&action, &*body).await {
                        Ok(_) => {
                            ok += 1;
                            let _ = latency.record(t0.elapsed().as_micros() as u64);
                        }
                        Err(e) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                            if e.is_closed() {
                                break;
                            }
                        }
                    }
                    done.1.fetch_add(1, Ordering::Relaxed);
                }
                (ok, failed, latency, first_error)
            }));
        }
    }
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match until {
                    Until::Calls(_) => bar.set_position(done.1.load(Ordering::Relaxed)),
                    Until::Deadline(_) => bar.set_position(start.elapsed().as_millis() as u64),
                }
            }
        })
    };
    let mut report = Report {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::<u64>::new(3).expect("3 significant figures"),
        first_error: None,
    };
    for worker in workers {
        let (ok, failed, latency, first_error) = worker
            .await
            .map_err(|e| Failure::new(1, format!("a bench task failed: {e}")))?;
        report.ok += ok;
        report.failed += failed;
        let _ = report.latency.add(latency);
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    report.elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    for conn in conns {
        conn.close();
    }
    print(&args, &report);
    match (report.failed, report.first_error) {
        (0, _) => Ok(()),
        (n, first) => Err(Failure::new(
            exit::REMOTE_ERROR,
            format!("{n} calls failed; the first: {}", first.unwrap_or_default()),
        )),
    }
}

fn progress(until: Until, duration: Option<Duration>) -> ProgressBar {
    let len = match until {
        Until::Calls(n) => n,
        Until::Deadline(_) => duration.map_or(0, |d| d.as_millis() as u64),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = match until {
        Until::Calls(_) => "{bar:40} {pos}/{len} calls, {per_sec}, eta {eta}",
        Until::Deadline(_) => "{bar:40} {elapsed} of {len} ms",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn print(args: &BenchArgs, r: &Report) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let rate = (r.ok + r.failed) as f64 / secs;
    let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
    let max = r.latency.max() as f64 / 1000.0;
    let summary = serde_json::json!({
        "url": args.conn.url,
        "action": args.action,
        "connections": args.connections,
        "concurrency": args.concurrency,
        "calls": r.ok + r.failed,
        "errors": r.failed,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "calls_per_sec": rate.round(),
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "max_ms": max,
    });
    if args.conn.raw {
        println!("{summary}");
        return;
    }
    println!(
        "{} {}: {} connection(s) x {} in flight, {} calls in {:.2} s",
        args.conn.url,
        args.action,
        args.connections,
        args.concurrency,
        r.ok + r.failed,
        secs
    );
    println!(
        "{:>12} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "calls/s", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    println!(
        "{:>12.0} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        rate,
        r.failed,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        max
    );
}
